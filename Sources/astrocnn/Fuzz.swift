import ArgumentParser
import Foundation
import Fuzzing
import Runtime
import CPUFeatures

struct Fuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fuzz the FITS and model readers and the restore path in this process: mutated files (header and data bytes, truncation, structural keywords, declared-huge sizes, tiny shapes, NaN/Inf, compressed and gzip files, extensions; damaged models) must each give a result or a clear error, within the memory budget and the time limit. Exit 3: a case crashed; 4: a case hung; 5: memory over budget.")

    @Option(help: "Seed of the run (cases are a pure function of it and their number).")
    var seed: UInt64 = 1

    @Option(help: "Mutated FITS files to run.")
    var fits: Int = 10_000

    @Option(help: "Mutated models to run.")
    var models: Int = 10_000

    @Option(help: "Seconds a case may take.")
    var timeLimit: Double = 10

    @Option(help: "Working folder (default: a new folder under /dev/shm, else the temporary folder).")
    var directory: String?

    @Option(help: "Keep the file of a failing case in this folder (for replay with --case).")
    var keep: String?

    @Option(help: "Only these mutation kinds, comma-separated (e.g. keyword,truncate; default: all).")
    var kinds: String?

    @Option(name: .customLong("case"), help: "Replay only this case number (of each target).")
    var only: Int?

    func run() throws {
        let base = FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let dir = directory ?? base + "/astrocnn-fuzz-\(getpid())"
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: dir) } }
        var config = Fuzzer.Config(directory: dir)
        config.seed = seed
        config.fitsCases = max(0, fits)
        config.modelCases = max(0, models)
        config.timeLimit = timeLimit
        config.keep = keep
        config.only = only
        config.kinds = Set((kinds ?? "").split(separator: ",").map(String.init))
        config.progress = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        if let k = keep { try FileManager.default.createDirectory(atPath: k, withIntermediateDirectories: true) }
        // Return freed memory to the kernel (restore keeps up to 256 MiB of it for speed), so
        // that the resident size measures what the cases hold, not what malloc keeps.
        _ = acnn_malloc_keep_freed(1 << 20, 1 << 20)
        let start = Date()
        do {
            let report = try Fuzzer(config: config).run()
            print(report)
            print(String(format: "fuzz: seed %llu, %d cases, no crash, no hang, within the memory budget, in %.1f s", seed,
                         (report.cases.values.reduce(0, +)), Date().timeIntervalSince(start)))
        } catch let e as Fuzzer.Failure {
            FileHandle.standardError.write(Data(("fuzz: MEMORY: \(e)\n").utf8))
            throw ExitCode(5)
        }
    }
}
