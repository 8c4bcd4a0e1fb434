import ArgumentParser
import CPUFeatures
import Foundation
import Kernels
import ModelFormat
import Reporting
import Runtime

/// Where to write the peak resident memory at exit (`ASTROCNN_PEAK_RSS_FILE`, for tests).
nonisolated(unsafe) var peakRSSFile: UnsafeMutablePointer<CChar>?

@main
struct AstroCNNCommand: ParsableCommand {
    static func main() {
        if let f = ProcessInfo.processInfo.environment["ASTROCNN_PEAK_RSS_FILE"] {
            peakRSSFile = strdup(f)
            atexit {
                // VmHWM: this program's own peak (getrusage's ru_maxrss also counts the pages of
                // the parent this process was forked from, before exec).
                var peak = -1
                if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
                   let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
                   let kb = line.split(separator: " ").compactMap({ Int($0) }).first {
                    peak = kb * 1024
                }
                if peak < 0 { var u = rusage(); getrusage(RUSAGE_SELF.rawValue, &u); peak = u.ru_maxrss * 1024 }
                if let p = peakRSSFile, let fp = fopen(p, "w") { fputs("\(peak)\n", fp); fclose(fp) }
            }
        }
        _ = PhaseProfile.shared  // starts the clock of ASTROCNN_PROFILE
        // glibc malloc keeps freed memory for the next allocation instead of returning it to the
        // kernel (blocks under 32 MiB come from the heap, which is trimmed only past 256 MiB of
        // free space at its top): tiles, bands and per-run maps then reuse pages already touched
        // instead of taking fresh page faults each time (each costs microseconds on a virtual
        // machine). Larger blocks, and the plans' arenas (LargeMemory), are still mapped.
        _ = acnn_malloc_keep_freed(32 << 20, 256 << 20)
        // A write past a file-size limit must fail with an error (and leave no file), not kill us.
        signal(SIGXFSZ, SIG_IGN)
        // Line-buffered standard output, so logs of long runs (train > log) show each line as it comes.
        setvbuf(stdout, nil, _IOLBF, 0)
        do {
            var command = try parseAsRoot(try takeMemoryBudget())
            MemoryBudget.limitAddressSpace()
            PhaseProfile.shared.mark("parse arguments")
            try command.run()
            if PhaseProfile.shared.enabled { FileHandle.standardError.write(Data((PhaseProfile.shared.report() + "\n").utf8)) }
        } catch {
            exit(withError: error)
        }
    }

    /// The arguments without the global `--memory-budget SIZE` (any position, any subcommand),
    /// whose value is applied to `MemoryBudget`.
    static func takeMemoryBudget() throws -> [String] {
        var args = Array(CommandLine.arguments.dropFirst())
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--" { break }
            var value: String?
            if a == "--memory-budget" {
                guard i + 1 < args.count else { throw ValidationError("--memory-budget needs a size, e.g. 4G or 512M") }
                value = args[i + 1]
                args.removeSubrange(i...(i + 1))
            } else if a.hasPrefix("--memory-budget=") {
                value = String(a.dropFirst("--memory-budget=".count))
                args.remove(at: i)
            } else {
                i += 1
                continue
            }
            guard let v = value, let b = MemoryBudget.parse(v) else {
                throw ValidationError("--memory-budget must be a positive size such as 4G, 512M or 300000000 (got '\(value ?? "")')")
            }
            MemoryBudget.bytes = b
        }
        return args
    }

    static let configuration = CommandConfiguration(
        commandName: "astrocnn",
        abstract: "Restore astronomical images with CNNs on the CPU.",
        discussion: "Global option, for every command: --memory-budget SIZE (e.g. 4G, 512M; default half of physical memory, or ASTROCNN_MEMORY_BUDGET): work that would need more memory (a declared image size, a read, a restore's working set) is refused before it is allocated, with an error saying how much it needs.",
        version: AstroCNN.version,
        subcommands: [Restore.self, Denoise.self, Deconvolve.self, Models.self, Convert.self, Inspect.self, Bench.self, Init.self, Train.self, Evaluate.self, BenchClassical.self, Demo.self, Degrade.self, Detect.self,
                      Plan.self, RunTask.self, Stitch.self, Status.self, MeasurePSF.self, Check.self, Fuzz.self]
    )
}

/// Prints an error to standard error and exits non-zero.
func failure(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data(("astrocnn: error: " + message + "\n").utf8))
    return ExitCode(1)
}

func describe(_ error: Error) -> String {
    String(describing: error)
}

/// A progress line on standard error, rewritten in place when it is a terminal.
final class ProgressLine: @unchecked Sendable {
    let label: String
    let start = Date()
    let lock = NSLock()
    let interactive = isatty(2) != 0
    var lastPrint = Date.distantPast
    init(_ label: String) { self.label = label }

    func update(_ done: Int, _ total: Int) {
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        if done < total && now.timeIntervalSince(lastPrint) < (interactive ? 0.2 : 5) { return }
        lastPrint = now
        let t = now.timeIntervalSince(start)
        let eta = done > 0 ? t * Double(total - done) / Double(done) : 0
        let line = String(format: "%@: %d/%d tiles (%.0f%%), %.1f s elapsed, ETA %.1f s", label, done, total,
                          100 * Double(done) / Double(max(total, 1)), t, eta)
        FileHandle.standardError.write(Data(((interactive ? "\r" : "") + line + (interactive && done < total ? "" : "\n")).utf8))
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model's graph, parameters, receptive field, FLOPs, checksums and metadata.")

    @Argument(help: "Model file (.acnn).")
    var model: String

    @Option(name: .customLong("conv"), help: "Show the kernel choice for this --conv setting (auto, direct, winograd, winograd2, winograd6, reference).")
    var conv: String = "auto"

    func run() throws {
        guard let algorithm = ConvAlgorithm(rawValue: conv) else { throw failure("--conv must be auto, direct, winograd, winograd2, winograd6 or reference") }
        let reader: ModelReader
        do { reader = try ModelReader(path: model) } catch { throw failure("\(model): \(describe(error))") }
        let a = reader.analysis
        let g = a.geometry
        print("model      \(reader.metadata["name"]?.description ?? "?")  (\(model), \(reader.fileSize) bytes, format \(reader.version.major).\(reader.version.minor))")
        print("checksum   \(checksumString(reader.fileChecksum)) (CRC-32C of the file)")
        let params = reader.tensors.reduce(0) { $0 + $1.count }
        print("parameters \(params)")
        print("receptive  \(g.receptiveField[0])x\(g.receptiveField[1]) px, output offset (\(g.outputOffset[0]), \(g.outputOffset[1])), halo t/b/l/r \(g.halo.map(String.init).joined(separator: "/")), size multiple \(g.sizeMultiple)")
        print(String(format: "FLOPs      %.1f k per output pixel (%.2f GFLOP per megapixel)", a.flopsPerOutputPixel / 1e3, a.flopsPerOutputPixel / 1e3))
        print("kernels    \(KernelISA.best.rawValue) on this CPU; per-layer algorithm (--conv \(conv)) in the 'algorithm' column")
        if let net = try? Network(model: try reader.model()) {
            print(String(format: "memory     %.0f MB of feature maps per megapixel run at once (tiles are sized from this)", net.bytesPerInputPixel))
            printStreamingMemory(net)
        }
        trainingDegradationLines(reader.metadata).forEach { print($0) }
        if let c = reader.graph.nodes.first(where: { $0.op == .wienerDeconvolution })?.context {
            let m = reader.metadata
            print("PSF        given at run time (--psf SPEC|FILE|auto) to a Wiener step (context \(c) px, PSF up to \(2 * c + 1) px a side, lambda once per image: the smallest estimated mean squared error in noise_mad units)")
            if let f = m["deconvolution.psf_family"]?.stringValue { print("covers     \(f)") }
            if let r = m["deconvolution.psf_fwhm"]?.doubleArray, r.count == 2 {
                print("refuses    PSFs of FWHM outside \(String(format: "%.2f", r[0] / 1.1))-\(String(format: "%.2f", r[1] * 1.1)) px (the trained \(r[0])-\(r[1]) px with a 10% margin)")
            }
            if let r = m["deconvolution.noise"]?.doubleArray, r.count == 2 { print("noise      trained at Gaussian sigma \(r[0]) to \(r[1]) of the image peak") }
            if m["deconvolution.data_consistency"] == .bool(true) {
                print("after      the data-consistency correction by default (restore/deconvolve; --no-data-consistency turns it off)")
            }
        }
        if let declared = (try? Network(model: try reader.model()))?.declaredDenoiseSteps {
            var steps: [String] = []
            if let k = declared.capSigma { steps.append("the bright cap at sky + \(k) sigma (--cap)") }
            if let s = declared.fluxRestoreSigma { steps.append("the flux restore, Gaussian sigma \(s) px (--flux-restore)") }
            if !steps.isEmpty {
                print("defaults   " + steps.joined(separator: " and ") + " (denoise/restore; --cap 0 / --flux-restore 0 turn them off)")
            }
        }
        print("")
        print("graph: input " + reader.graph.inputs.map { "\($0.name) [\($0.channels) ch]" }.joined(separator: ", ")
              + " -> output " + reader.graph.outputs.joined(separator: ", "))
        let nodes = a.order.map { reader.graph.nodes[$0] }
        let nameWidth = max(4, nodes.map(\.name.count).max() ?? 4) + 1
        let ioWidth = max(16, nodes.map { ($0.inputs.joined(separator: ",") + " -> " + $0.output).count }.max() ?? 16) + 1
        print("  #  " + pad("node", nameWidth) + pad("op", 19) + pad("inputs -> output", ioWidth) + "out ch  kernel      params    kFLOP/px  algorithm")
        for (step, i) in a.order.enumerated() {
            let n = reader.graph.nodes[i]
            var kernel = "", pcount = 0
            if let w = n.params.first.flatMap({ a.tensorShapes[$0] }) { kernel = "\(w[2])x\(w[3])" + (n.op == .conv2d ? " \(n.padding.rawValue)" : "") }
            for p in n.params { pcount += a.tensorShapes[p]?.reduce(1, *) ?? 0 }
            var extra = ""
            if n.op == .leakyRelu { extra = " alpha=\(n.alpha)" }
            if n.op == .constantChannel { extra = " value=\(n.constantValue)" + (n.runtimeParameter.map { " param=\($0)" } ?? "") }
            if n.op == .conv2d, let w = a.tensorShapes[n.params[0]] {
                extra = "  " + algorithm.choose(outChannels: w[0], inChannels: w[1], kh: w[2], kw: w[3], padding: n.padding)
            }
            let io = (n.inputs.joined(separator: ",") + " -> " + n.output)
            print(String(format: "%3d  %@%@%@%6d  %@ %8d  %10.2f%@", step, pad(n.name, nameWidth), pad(n.op.rawValue, 19), pad(io, ioWidth),
                         a.channels[n.output] ?? 0, pad(kernel, 11), pcount, a.nodeFlopsPerOutputPixel[i] / 1e3, extra))
        }
        print("")
        print("tensors:")
        var bad = 0
        for e in reader.tensors {
            let ok = reader.verify(e)
            if !ok { bad += 1 }
            print("  \(pad(e.name, 28)) \(pad(e.dtype.name, 8)) \(pad(e.shape.map(String.init).joined(separator: "x"), 14)) crc \(checksumString(e.crc)) \(ok ? "ok" : "MISMATCH")")
        }
        print("")
        print("metadata:")
        for k in reader.metadata.keys.sorted() {
            print("  \(pad(k, 22)) \(reader.metadata[k]!)")
        }
        if bad > 0 { throw failure("\(model): \(bad) tensor(s) fail their checksum: the file is damaged") }
    }
}

func pad(_ s: String, _ n: Int) -> String {
    s.count >= n ? s : s + String(repeating: " ", count: n - s.count)
}
