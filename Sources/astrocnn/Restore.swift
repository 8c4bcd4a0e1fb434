import ArgumentParser
import Foundation
import Kernels
import ModelFormat
import Reporting
import Runtime

/// `inspect`'s lines on streaming memory: the estimate is affine in the image width and does
/// not depend on the height.
func printStreamingMemory(_ net: Network, threads: Int = ParallelFor.availableCores) {
    func total(_ w: Int) -> Int? {
        (try? StreamingRestore.memoryEstimate(network: net, width: w, height: 65536, threads: threads))?.reduce(0) { $0 + $1.bytes }
    }
    guard let a = total(16384), let b = total(32768), let c8 = total(8192), let c100 = total(100_000) else { return }
    let perColumn = Double(b - a) / 16384
    let fixed = Double(a) - perColumn * 16384
    print(String(format: "streaming  restore peak ~ %.0f MB + %.1f kB x image width, whatever the height (%d threads): %.0f MB at 8192 wide, %.0f MB at 32768, %.0f MB at 100000",
                 fixed / 1e6, perColumn / 1e3, threads, Double(c8) / 1e6, Double(b) / 1e6, Double(c100) / 1e6))
}

/// One progress line for a whole batch, weighted by pixels.
final class BatchProgress: @unchecked Sendable {
    let total: Int
    let totalPixels: Double
    let start = Date()
    let lock = NSLock()
    let interactive = isatty(2) != 0
    var lastPrint = Date.distantPast
    var files = 0, skipped = 0, failed = 0
    var donePixels = 0.0
    var currentPixels = 0.0
    var currentFraction = 0.0

    init(total: Int, totalPixels: Double) { self.total = total; self.totalPixels = max(1, totalPixels) }

    func begin(pixels: Double) { lock.lock(); currentPixels = pixels; currentFraction = 0; lock.unlock() }

    func tile(_ done: Int, _ of: Int) {
        lock.lock(); currentFraction = Double(done) / Double(max(of, 1)); lock.unlock()
        show(final: false)
    }

    func finish(skipped s: Bool = false, failed f: Bool = false) {
        lock.lock()
        files += 1
        if s { skipped += 1 }
        if f { failed += 1 }
        donePixels += currentPixels
        currentPixels = 0; currentFraction = 0
        lock.unlock()
        show(final: files == total)
    }

    func show(final: Bool) {
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        if !final && now.timeIntervalSince(lastPrint) < (interactive ? 0.2 : 5) { return }
        lastPrint = now
        let frac = min(1, (donePixels + currentPixels * currentFraction) / totalPixels)
        let t = now.timeIntervalSince(start)
        let eta = frac > 0 ? t * (1 - frac) / frac : 0
        let line = String(format: "restore: %d/%d files (%d skipped, %d failed), %.0f%% of pixels, %.1f s elapsed, ETA %.1f s",
                          files, total, skipped, failed, 100 * frac, t, eta)
        FileHandle.standardError.write(Data(((interactive ? "\r" : "") + line + (interactive && !final ? "" : "\n")).utf8))
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore FITS images with a model; each output keeps its input's shape, units and header. Streams in row bands (bounded memory); many files or directories with -o DIR.")

    @Argument(help: "Input FITS files or directories (cfitsio extended syntax allowed, e.g. 'image.fits[SCI]', .gz, .fz).")
    var inputs: [String]

    @Option(name: [.short, .long], help: "Model file (.acnn).")
    var model: String

    @Option(name: [.short, .long], help: "Output FITS file (one input), or output directory (several inputs, a directory input, or an existing directory).")
    var output: String

    @Option(help: "Batch: output name pattern ({stem}: name without .fits/.fz/.gz, {name}, {dir}).")
    var name: String = "{stem}.fits"

    @Option(help: "Batch: comma-separated globs of the files taken from input directories.")
    var glob: String = "*.fits,*.fit,*.fts,*.fits.fz,*.fits.gz"

    @Option(help: "HDU to read: index (0 = primary) or EXTNAME. Default: the first HDU holding an image.")
    var hdu: String?

    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    @Option(help: "Output tile side in pixels (default: the model's default_tile, else 256).")
    var tile: Int?

    @Option(name: .customLong("param"), help: "Run-time model parameter NAME=VALUE (e.g. exposure_ratio=4). Repeatable.")
    var params: [String] = []

    @Flag(help: "Replace output files that exist (a batch skips outputs already made from the same input, model and options).")
    var overwrite = false

    @Flag(help: "No progress line.")
    var quiet = false

    @Flag(help: "Hold the whole image in memory (the path before streaming; 'same' networks then run whole images when they fit).")
    var inMemory = false

    @Option(name: .customLong("conv"), help: "Convolution algorithm: auto (per layer: Winograd for layers with >= 16 input channels, F(4x4,3x3) for 3x3 kernels and F(3x3,6x6) for 6x6, direct otherwise; default), direct, winograd (Winograd wherever it applies), winograd2 / winograd6 (as winograd with F(2x2,3x3) / F(6x6,3x3) for 3x3 kernels), or reference (scalar oracle, slow).")
    var conv: String = "auto"

    @Option(help: "Gain of the input, electrons per image unit, for sky_vst models (default: the header's GAIN, EGAIN, CCDGAIN or GAINEFF, else the model's assumed sky noise).")
    var gain: Double?

    @Option(help: "Also write a PNG preview: input and restored image side by side, same asinh stretch (one input only).")
    var preview: String?

    func run() throws {
        if let t = threads, t < 1 { throw failure("--threads must be at least 1") }
        if let t = tile, t < 1 { throw failure("--tile must be at least 1") }
        let parameters = try parseParameters(params)
        guard let algorithm = ConvAlgorithm(rawValue: conv) else { throw failure("--conv must be auto, direct, winograd, winograd2, winograd6 or reference") }
        var isDir: ObjCBool = false
        let outputIsDir = FileManager.default.fileExists(atPath: output, isDirectory: &isDir) && isDir.boolValue
        let anyDirInput = inputs.contains { var d: ObjCBool = false; return FileManager.default.fileExists(atPath: $0, isDirectory: &d) && d.boolValue }
        let batch = inputs.count > 1 || anyDirInput || outputIsDir || output.hasSuffix("/")
        let network: Network
        do { network = try Network(path: model) } catch { throw failure(describe(error)) }
        var options = Restoration.Options(threads: threads ?? ParallelFor.availableCores, tileSize: tile, parameters: parameters,
                                          algorithm: algorithm)
        if let g = gain {
            guard g > 0, g.isFinite else { throw failure("--gain must be a positive number of electrons per image unit") }
            options.gain = g
        }
        let command = CommandLine.arguments.joined(separator: " ")
        if !batch {
            guard let input = inputs.first else { throw failure("no input file") }
            do {
                let progress = quiet ? nil : ProgressLine("restore")
                if let p = progress { options.progress = { p.update($0, $1) } }
                let r = inMemory
                    ? try Restoration.restoreFile(input: input, hdu: hdu, output: output, network: network, options: options,
                                                  overwrite: overwrite, command: command)
                    : try StreamingRestore.restoreFile(input: input, hdu: hdu, output: output, network: network, options: options,
                                                       overwrite: overwrite, command: command)
                print(String(format: "restored %dx%d pixels (%d invalid) with '%@' in %.2f s (%d tiles, %d threads) -> %@",
                             r.width, r.height, r.invalidPixels, network.name, r.seconds, r.tiles, options.threads, output))
                if let png = preview {
                    let before = try FITSIO.readImage(path: input, hdu: hdu), after = try FITSIO.readImage(path: output)
                    try Preview.sideBySide([("input", before.pixels), ("restored: " + network.name, after.pixels)],
                                           width: before.width, height: before.height).write(to: png)
                    print("wrote \(png)")
                }
            } catch {
                throw failure(describe(error))
            }
            return
        }
        if preview != nil { throw failure("--preview works with one input; run it on the file you want to look at") }
        if inMemory { throw failure("--in-memory works with one input") }
        let files: [String]
        do {
            files = try expandInputs(inputs, patterns: glob.split(separator: ",").map(String.init))
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch { throw failure(describe(error)) }
        if files.isEmpty { throw failure("no FITS files found in \(inputs.joined(separator: " ")) (globs \(glob))") }
        // Outputs must be distinct.
        var targets: [String] = []
        var seen: [String: String] = [:]
        for f in files {
            let out = (output as NSString).appendingPathComponent(PlanRunner.outputName(for: f, pattern: name))
            if let other = seen[out] { throw failure("\(f) and \(other) would both be written to \(out); use --name with {dir}") }
            seen[out] = f
            targets.append(out)
        }
        // Pixel counts for the progress line (headers only; unreadable files count as 0 here and fail below).
        let sizes = files.map { f -> Double in (try? FITSReader(path: f, hdu: hdu)).map { Double($0.width * $0.height) } ?? 0 }
        let progress = quiet ? nil : BatchProgress(total: files.count, totalPixels: sizes.reduce(0, +))
        if let p = progress { options.progress = { p.tile($0, $1) } }
        let modelCRC = network.fileChecksum.map(checksumString) ?? ""
        let signature = StreamingRestore.optionsSignature(hdu: hdu, options: options)
        var failures: [(String, String)] = []
        var written = 0, skipped = 0
        let start = Date()
        for (k, f) in files.enumerated() {
            let out = targets[k]
            progress?.begin(pixels: sizes[k])
            do {
                let crc = try StreamingRestore.fileChecksum(f)
                if !overwrite && access(out, F_OK) == 0 {
                    if PlanRunner.isVerifiedOutput(out, inputCRC: checksumString(crc), modelCRC: modelCRC, options: signature) {
                        skipped += 1
                        progress?.finish(skipped: true)
                        continue
                    }
                    throw ScaleError.mismatch("\(out) exists but was not made from this input, model and options (pass --overwrite to replace it)")
                }
                _ = try StreamingRestore.restoreFile(input: f, hdu: hdu, output: out, network: network, options: options,
                                                     overwrite: overwrite, command: command, inputChecksum: crc)
                written += 1
                progress?.finish()
            } catch {
                failures.append((f, describe(error)))
                progress?.finish(failed: true)
            }
        }
        print(String(format: "restored %d files, skipped %d up to date, %d failed, with '%@' in %.2f s -> %@",
                     written, skipped, failures.count, network.name, Date().timeIntervalSince(start), output))
        if !failures.isEmpty {
            var text = "astrocnn: error: \(failures.count) of \(files.count) files failed (the others were written):\n"
            for (f, e) in failures { text += "  \(f): \(e)\n" }
            FileHandle.standardError.write(Data(text.utf8))
            throw ExitCode(1)
        }
    }
}
