import ArgumentParser
import Foundation
import Kernels
import ModelFormat
import Runtime

/// The path of this executable (what the job scripts run).
func selfExecutable() -> String {
    if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
    let a = CommandLine.arguments[0]
    return a.hasPrefix("/") ? a : FileManager.default.currentDirectoryPath + "/" + a
}

/// FITS files named on the command line, directories expanded to the files in them matching
/// one of `patterns` (shell globs on the file name), sorted by name.
func expandInputs(_ inputs: [String], patterns: [String]) throws -> [String] {
    var files: [String] = []
    for input in inputs {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: input, isDirectory: &isDir), isDir.boolValue {
            let names = try FileManager.default.contentsOfDirectory(atPath: input).sorted()
            let matched = names.filter { n in patterns.contains { fnmatch($0, n, 0) == 0 } }
            files += matched.map { (input as NSString).appendingPathComponent($0) }
        } else {
            files.append(input)
        }
    }
    return files
}

func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// Slurm scripts of a plan: a job array of run-task and a stitch job that depends on it.
enum SlurmScripts {
    struct Settings {
        var partition: String?
        var cpusPerTask: Int
        var memoryMB: Int
        var time: String?
        var extra: [String]
    }

    static func arrayScript(_ m: PlanManifest, _ s: Settings, exe: String) -> String {
        var lines = ["#!/bin/bash",
                     "#SBATCH --job-name=acnn-\(m.id)",
                     "#SBATCH --array=0-\(m.tasks.count - 1)",
                     "#SBATCH --cpus-per-task=\(s.cpusPerTask)",
                     "#SBATCH --mem=\(s.memoryMB)M",
                     "#SBATCH --output=\(m.workdir)/logs/task-%a.out"]
        if let p = s.partition { lines.append("#SBATCH --partition=\(p)") }
        if let t = s.time { lines.append("#SBATCH --time=\(t)") }
        lines += s.extra.map { "#SBATCH \($0)" }
        lines += [
            "# One task of plan \(m.id) (\(m.tasks.count) tasks, mode \(m.mode)).",
            "# run-task exits 0 when done (or already done), \(TaskExit.retryable.rawValue) on a retryable failure (retried here),",
            "# \(TaskExit.permanent.rawValue) on a permanent one.",
            "rc=0",
            "for attempt in 1 2 3; do",
            "  \(shellQuote(exe)) run-task --plan \(shellQuote(m.manifestPath)) --index \"$SLURM_ARRAY_TASK_ID\" --threads \"${SLURM_CPUS_PER_TASK:-1}\"",
            "  rc=$?",
            "  [ \"$rc\" -ne \(TaskExit.retryable.rawValue) ] && exit \"$rc\"",
            "  [ \"$attempt\" -lt 3 ] && sleep $((attempt * 20))",
            "done",
            "exit \"$rc\"",
        ]
        return lines.joined(separator: "\n") + "\n"
    }

    static func stitchScript(_ m: PlanManifest, _ s: Settings, exe: String) -> String {
        var lines = ["#!/bin/bash",
                     "#SBATCH --job-name=acnn-\(m.id)-stitch",
                     "#SBATCH --cpus-per-task=1",
                     "#SBATCH --mem=\(max(256, s.memoryMB / 2))M",
                     "#SBATCH --output=\(m.workdir)/logs/stitch.out"]
        if let p = s.partition { lines.append("#SBATCH --partition=\(p)") }
        if let t = s.time { lines.append("#SBATCH --time=\(t)") }
        lines += s.extra.map { "#SBATCH \($0)" }
        lines.append("exec \(shellQuote(exe)) stitch --plan \(shellQuote(m.manifestPath))")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Submits the array (all tasks, or `indices`) and the stitch job after it (afterok).
    static func submitScript(_ m: PlanManifest, indices: [Int]? = nil) -> String {
        let array = indices.map { " --array=" + compress($0) } ?? ""
        return """
        #!/bin/bash
        # Submits plan \(m.id): the job array, then the stitch job once every array task succeeded.
        set -euo pipefail
        array=$(sbatch --parsable\(array) \(shellQuote(m.workdir + "/slurm/array.sh")))
        array=${array%%;*}
        stitch=$(sbatch --parsable --dependency=afterok:"$array" \(shellQuote(m.workdir + "/slurm/stitch.sh")))
        stitch=${stitch%%;*}
        echo "$array $stitch"

        """
    }

    /// 1,2,3,7 -> "1-3,7".
    static func compress(_ v: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        let s = v.sorted()
        while i < s.count {
            var j = i
            while j + 1 < s.count && s[j + 1] == s[j] + 1 { j += 1 }
            parts.append(i == j ? "\(s[i])" : "\(s[i])-\(s[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// MaxArraySize of the local Slurm (scontrol), or nil.
    static func maxArraySize() -> Int? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["scontrol", "show", "config"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { return nil }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MaxArraySize") {
            if let v = line.split(separator: "=").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }) { return v }
        }
        return nil
    }

    static func write(_ text: String, to path: String) throws {
        try AtomicFile.write(Array(text.utf8), to: path, overwrite: true)
        chmod(path, 0o755)
    }
}

func parseParameters(_ params: [String]) throws -> [String: Float] {
    var parameters: [String: Float] = [:]
    for p in params {
        let parts = p.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let v = Float(parts[1]), v.isFinite else { throw failure("--param expects NAME=VALUE, got '\(p)'") }
        parameters[parts[0]] = v
    }
    return parameters
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plan restoration work for any scheduler: a manifest of tasks (and, with --slurm, a job array and a dependent stitch job).")

    @Argument(help: "FITS files or directories to restore, one output each (files mode).")
    var inputs: [String] = []

    @Option(help: "One large image to restore in windows (tiles mode).")
    var image: String?

    @Option(help: "Window side of a task in tiles mode, in pixels (rounded up to the model's tile grid).")
    var tile: Int = 4096

    @Option(name: [.short, .long], help: "Model file (.acnn).")
    var model: String

    @Option(name: [.short, .long], help: "Output: the stitched FITS file (tiles mode) or a directory (files mode).")
    var output: String

    @Option(help: "Work directory: manifest.json, pieces/, status/, logs/, slurm/.")
    var workdir: String

    @Option(help: "Files mode: output name pattern ({stem}, {name}, {dir}).")
    var name: String = "{stem}.fits"

    @Option(help: "Files mode: comma-separated globs of the files taken from directories.")
    var glob: String = "*.fits,*.fit,*.fts,*.fits.fz,*.fits.gz"

    @Option(help: "HDU to read: index or EXTNAME.")
    var hdu: String?

    @Option(help: "Network tile side (default: as restore).")
    var networkTile: Int?

    @Option(name: .customLong("conv"), help: "Convolution algorithm (as restore).")
    var conv: String = "auto"

    @Option(help: "Models with a Wiener step (deconv-psf): the PSF, a spec (moffat:fwhm=F,beta=B, ...) or a FITS kernel; 'auto' (tiles mode) measures it from the image's stars and writes it into the work directory.")
    var psf: String?

    @Option(name: .customLong("param"), help: "Run-time model parameter NAME=VALUE. Repeatable.")
    var params: [String] = []

    @Option(help: "Most tasks in the plan (default: Slurm's MaxArraySize when scontrol answers, else 1001); files are batched to fit.")
    var maxArray: Int?

    @Option(help: "Files mode: at least this many files per task.")
    var filesPerTask: Int?

    @Flag(help: "Also write Slurm scripts: slurm/array.sh, slurm/stitch.sh and slurm/submit.sh.")
    var slurm = false

    @Option(help: "Slurm partition.")
    var partition: String?

    @Option(help: "CPUs per Slurm task (run-task threads).")
    var cpusPerTask: Int = 1

    @Option(help: "Slurm time limit per task (e.g. 01:00:00).")
    var time: String?

    @Option(name: .customLong("sbatch"), help: "Extra #SBATCH line for both jobs, e.g. --sbatch=--account=astro. Repeatable.")
    var sbatch: [String] = []

    func run() throws {
        if (image == nil) == inputs.isEmpty { throw failure("give either FILES/DIRECTORIES (files mode) or --image BIG.fits (tiles mode)") }
        if cpusPerTask < 1 { throw failure("--cpus-per-task must be at least 1") }
        guard let algorithm = ConvAlgorithm(rawValue: conv) else { throw failure("--conv must be auto, direct, winograd, winograd2, winograd6 or reference") }
        do {
            let network = try Network(path: model)
            // What the model declares for `restore` beyond the network is not run by the tasks.
            let declared = network.declaredDenoiseSteps
            var skipped: [String] = []
            if let k = declared.capSigma { skipped.append("--cap \(k)") }
            if let s = declared.fluxRestoreSigma { skipped.append("--flux-restore \(s)") }
            if network.declaresDataConsistency { skipped.append("--data-consistency") }
            if !skipped.isEmpty {
                FileHandle.standardError.write(Data("note: '\(network.name)' declares \(skipped.joined(separator: " ")) as its restore defaults; planned tasks run the network alone (astrocnn denoise/restore on each file applies them)\n".utf8))
            }
            try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
            if network.wienerContext != nil {
                guard var spec = psf else { throw ScaleError.badInput("\(network.name) deconvolves with the image's PSF: give it with --psf SPEC|PSF.fits|auto") }
                if spec.lowercased() == "auto" {
                    guard let big = image else { throw ScaleError.badInput("--psf auto measures one image's PSF (tiles mode); for files measure it once with 'astrocnn psf' and pass --psf PSF.fits") }
                    let img = try FITSIO.readImage(path: big, hdu: hdu)
                    let (kernel, what) = try resolvePSF("auto", image: img)
                    spec = PlanRunner.absolute(workdir + "/psf.fits")
                    try FITSIO.writeImage(path: spec, width: kernel.width, height: kernel.height, pixels: kernel.pixels.map(Float.init), headerCards: [],
                                          provenance: .init(history: ["PSF \(what) of \(big), measured by astrocnn plan --psf auto"]), overwrite: true)
                } else if FileManager.default.fileExists(atPath: spec) {
                    spec = PlanRunner.absolute(spec)   // tasks may run in another directory
                }
                try bindPSF(network, spec: spec, inputs: [], hdu: nil)
            } else if psf != nil {
                throw ScaleError.badInput("\(network.name) has no Wiener step: it does not take --psf")
            }
            var options = Restoration.Options(threads: 1, tileSize: networkTile, parameters: try parseParameters(params), algorithm: algorithm)
            options.psf = network.psfDescription
            options.memoryBudget = nil
            let maxTasks = maxArray ?? SlurmScripts.maxArraySize() ?? 1001
            try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
            let m: PlanManifest
            if let big = image {
                m = try PlanRunner.planTiles(input: big, output: output, workdir: workdir, modelPath: model, network: network,
                                             options: options, hdu: hdu, window: tile, maxTasks: maxTasks)
            } else {
                let files = try expandInputs(inputs, patterns: glob.split(separator: ",").map(String.init))
                if files.isEmpty { throw failure("no FITS files found in \(inputs.joined(separator: " "))") }
                try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
                m = try PlanRunner.planFiles(inputs: files, outputDirectory: output, namePattern: name, workdir: workdir, modelPath: model,
                                             network: network, options: options, hdu: hdu, maxTasks: maxTasks, filesPerTask: filesPerTask)
            }
            for sub in ["pieces", "status", "logs", "slurm"] {
                try FileManager.default.createDirectory(atPath: m.workdir + "/" + sub, withIntermediateDirectories: true)
            }
            try m.write()
            let units = m.tasks.reduce(0) { $0 + $1.units.count }
            print("plan \(m.id): \(m.tasks.count) tasks, \(units) \(m.mode == "tiles" ? "windows" : "files") -> \(m.manifestPath)")
            if slurm {
                let width = m.images.map(\.width).max() ?? 1
                let est = try StreamingRestore.memoryEstimate(network: network, width: m.mode == "tiles" ? min(width, tile) : width,
                                                              height: m.images.map(\.height).max() ?? 1, tileSize: networkTile,
                                                              threads: cpusPerTask).reduce(0) { $0 + $1.bytes }
                let settings = SlurmScripts.Settings(partition: partition, cpusPerTask: cpusPerTask,
                                                     memoryMB: max(256, Int(Double(est) * 1.5) >> 20), time: time, extra: sbatch)
                let exe = selfExecutable()
                try SlurmScripts.write(SlurmScripts.arrayScript(m, settings, exe: exe), to: m.workdir + "/slurm/array.sh")
                try SlurmScripts.write(SlurmScripts.stitchScript(m, settings, exe: exe), to: m.workdir + "/slurm/stitch.sh")
                try SlurmScripts.write(SlurmScripts.submitScript(m), to: m.workdir + "/slurm/submit.sh")
                print("slurm: bash \(m.workdir)/slurm/submit.sh  (array of \(m.tasks.count), then stitch with --dependency=afterok)")
            }
        } catch let e as ExitCode {
            throw e
        } catch {
            throw failure(describe(error))
        }
    }
}

struct RunTask: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run-task",
        abstract: "Run one task of a plan (exit 0 done, \(TaskExit.retryable.rawValue) retryable failure, \(TaskExit.permanent.rawValue) permanent failure).")

    @Option(help: "The plan's manifest.json (or its work directory).")
    var plan: String

    @Option(help: "Task index (e.g. $SLURM_ARRAY_TASK_ID).")
    var index: Int

    @Option(help: "Worker threads.")
    var threads: Int = 1

    func run() throws {
        func fail(_ error: Error) -> ExitCode {
            let code = TaskExit.classify(error)
            FileHandle.standardError.write(Data("astrocnn: run-task \(index): \(code == .retryable ? "retryable" : "permanent") failure: \(describe(error))\n".utf8))
            return ExitCode(code.rawValue)
        }
        let m: PlanManifest
        do { m = try PlanManifest.load(plan) } catch { throw fail(error) }
        if index < 0 || index >= m.tasks.count { throw fail(ScaleError.badInput("task index \(index) is outside 0..\(m.tasks.count - 1)")) }
        if PlanRunner.isDone(m, index: index) {
            print("task \(index): verified result exists, nothing to do")
            return
        }
        do {
            let network = try Network(path: m.model.path)
            if let p = m.options.psf { try bindPSF(network, spec: p, inputs: [], hdu: nil) }
            let start = Date()
            try PlanRunner.runTask(m, index: index, network: network, threads: max(1, threads),
                                   command: CommandLine.arguments.joined(separator: " "))
            print(String(format: "task %d: done in %.2f s (%d units)", index, Date().timeIntervalSince(start), m.tasks[index].units.count))
        } catch {
            throw fail(error)
        }
    }
}

struct Stitch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream the pieces of a tiled plan into one FITS file (input header and WCS, HISTORY with the plan).")

    @Option(help: "The plan's manifest.json (or its work directory).")
    var plan: String

    func run() throws {
        do {
            let m = try PlanManifest.load(plan)
            let network = try? Network(path: m.model.path)
            if let n = network, let p = m.options.psf { try bindPSF(n, spec: p, inputs: [], hdu: nil) }
            let out = try PlanRunner.stitch(m, network: network, command: CommandLine.arguments.joined(separator: " "))
            print("stitched plan \(m.id): \(out)")
        } catch {
            throw failure(describe(error))
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a plan's missing and failed tasks; --resubmit writes the Slurm resubmission (exit 0 when all done, 3 otherwise).")

    @Option(help: "The plan's work directory (or its manifest.json).")
    var plan: String

    @Flag(help: "Write slurm/resubmit.sh: an array of the unfinished tasks and the stitch job after it.")
    var resubmit = false

    @Flag(help: "List every task, not only the unfinished ones.")
    var all = false

    func run() throws {
        let m: PlanManifest
        do { m = try PlanManifest.load(plan) } catch { throw failure(describe(error)) }
        let states = PlanRunner.status(m)
        var counts: [PlanRunner.TaskState: Int] = [:]
        for s in states {
            counts[s.state, default: 0] += 1
            if all || s.state != .done { print("task \(s.index): \(s.state.rawValue)" + (s.message.map { " (\($0))" } ?? "")) }
        }
        let pending = states.filter { $0.state != .done }.map(\.index)
        print("plan \(m.id): \(counts[.done] ?? 0) done, \(counts[.failed] ?? 0) failed, \(counts[.missing] ?? 0) missing of \(m.tasks.count)")
        if resubmit && !pending.isEmpty {
            let path = m.workdir + "/slurm/resubmit.sh"
            do {
                try FileManager.default.createDirectory(atPath: m.workdir + "/slurm", withIntermediateDirectories: true)
                try SlurmScripts.write(SlurmScripts.submitScript(m, indices: pending), to: path)
            } catch { throw failure(describe(error)) }
            print("resubmit: bash \(path)  (array \(SlurmScripts.compress(pending)), then stitch)")
        }
        if !pending.isEmpty { throw ExitCode(3) }
    }
}
