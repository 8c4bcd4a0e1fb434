import ArgumentParser
import Evaluation
import Foundation
import Kernels
import ModelFormat
import Reporting
import Runtime

/// The options of every command that restores images (`restore`, `denoise`, `deconvolve`).
struct RestoreCommonOptions: ParsableArguments {
    @Option(help: "Batch: output name pattern ({stem}: name without .fits/.fz/.gz, {name}, {dir}). Default: {stem}.fits in the -o folder; without -o (task verbs) {stem}_denoised.fits / {stem}_deconvolved.fits next to each input.")
    var name: String?

    @Option(help: "Batch: comma-separated globs of the files taken from input directories.")
    var glob: String = "*.fits,*.fit,*.fts,*.fits.fz,*.fits.gz"

    @Option(help: "HDU to read: index (0 = primary) or EXTNAME. Default: the first HDU holding an image.")
    var hdu: String?

    @Flag(help: "Deconvolution, one 2-D input: check the output without a truth (as 'astrocnn check': re-blurred by the PSF it must reproduce the input within its noise, and show no checkerboard); exit status 3 if a check fails (the output is still written). restore needs --psf with it.")
    var check = false

    @Option(help: "Worker threads (default: all cores).")
    var threads: Int?

    @Option(help: "Output tile side in pixels (default: the model's default_tile, else 256).")
    var tile: Int?

    @Option(name: .customLong("param"), help: "Run-time model parameter NAME=VALUE (e.g. exposure_ratio=4). Repeatable.")
    var params: [String] = []

    @Option(help: "Self-ensemble: run each tile in 1, 2, 4 or 8 symmetries of the square (turns and flips), turn the outputs back and average them (N times the time; 'same' models without a PSF step, such as the denoisers). Default 1.")
    var ensemble: Int = 1

    @Flag(help: "Replace output files that exist (a batch skips outputs already made from the same input, model and options).")
    var overwrite = false

    @Flag(help: "No progress line (as --progress none).")
    var quiet = false

    @Option(help: "Progress on standard error: human (a line, the default), json (one JSON object per line: done, total, eta_s, file, ...) or none.")
    var progress: String = "human"

    @Flag(help: "Hold the whole image in memory (the path before streaming; 'same' networks then run whole images when they fit; 2-D images without --strength, --mask, DQ, --luminance, --flux-restore or --cap).")
    var inMemory = false

    @Option(name: .customLong("conv"), help: "Convolution algorithm: auto (per layer: Winograd for layers with >= 16 input channels, F(4x4,3x3) for 3x3 kernels and F(3x3,6x6) for 6x6, direct otherwise; default), direct, winograd (Winograd wherever it applies), winograd2 / winograd6 (as winograd with F(2x2,3x3) / F(6x6,3x3) for 3x3 kernels), or reference (scalar oracle, slow).")
    var conv: String = "auto"

    @Option(help: "Gain of the input, electrons per image unit, for sky_vst models (default: the header's GAIN, EGAIN, CCDGAIN or GAINEFF, else the model's assumed sky noise).")
    var gain: Double?

    @Option(help: "Blend with the input: output = S x restored + (1 - S) x input, in the input's units (0 to 1, default 1).")
    var strength: Double = 1

    @Option(help: "Bad-pixel mask FITS file (cfitsio syntax, e.g. 'mask.fits[1]'), the image's size: non-zero pixels are treated as BLANK/NaN.")
    var mask: String?

    @Flag(name: .customLong("no-dq"), help: "Ignore the file's DQ extension (by default an HST/JWST DQ extension with the image's EXTVER marks non-zero pixels invalid).")
    var noDQ = false

    @Flag(help: "Colour (3-plane) images: restore the luminance (mean of the planes) and keep the chroma, instead of each plane on its own.")
    var luminance = false

    @Option(help: "Also write a PNG preview: input and restored image side by side, same asinh stretch (one 2-D input only).")
    var preview: String?

    @Option(name: .customLong("flux-restore"), help: "Denoisers: add back the Gaussian low-pass (this sigma in pixels, about the PSF's: FWHM / 2.355) of what the network removed, so faint sources keep their flux (docs/EVALUATION.md); 0: off. Default: the model's declared value (denoise.flux_restore_sigma; the shipped astro-unet-16-vst: 1.5), else off.")
    var fluxRestore: Double?

    @Option(help: "Denoisers: the network sees the input capped at sky + K sigma and the excess is added back, so bright cores pass through as measured (GraXpert and ASTERIS do this; K = 50 was chosen on training images, docs/EVALUATION.md); 0: off. Default: the model's declared value (denoise.cap_sigma; the shipped astro-unet-16-vst: 50), else off.")
    var cap: Double?

    @Flag(name: .customLong("data-consistency"), help: "Deconvolution models with a Wiener step (deconv-psf): correct the network's output against the input, the error estimated from the residual (input - PSF * output) where it stands above the noise (docs/EVALUATION.md, Part 1d: large gains on nearly noiseless images, not everywhere); one 2-D input, in memory. The default of a model that declares it (deconvolution.data_consistency, e.g. the shipped deconv-psf), where the image allows.")
    var dataConsistency = false

    @Option(name: .customLong("lower-bound"), help: "With the data-consistency correction: the image's true zero in its own units (e.g. 0 for bias-subtracted counts with their sky, or a nearly noiseless sky-subtracted image; on a noisy sky-subtracted frame it adds flux to the sky): no output pixel goes below it (the correction is then solved under that bound, as Richardson-Lucy and Prox-TV hold positivity; docs/EVALUATION.md).")
    var lowerBound: Float?

    @Flag(name: .customLong("no-data-consistency"), help: "Do not apply the data-consistency correction a model declares as its default.")
    var noDataConsistency = false

    /// The extras of this run: the options given, and for a denoiser the bright cap and flux
    /// restore it declares as its defaults where they were not given (`Network.declaredDenoiseSteps`),
    /// with a note for each declared step skipped (--luminance, --in-memory: neither runs there).
    func extras(for network: Network) -> (extras: RestoreExtras, applied: String?, notes: [String]) {
        let declared = network.declaredDenoiseSteps
        var notes: [String] = []
        var applied: [String] = []
        func pick(_ given: Double?, _ declared: Double?, _ flag: String) -> Double {
            if let g = given { return g }
            guard let d = declared else { return 0 }
            if luminance || inMemory {
                notes.append("note: '\(network.name)' declares \(flag) \(d) as its default; skipped (\(luminance ? "--luminance" : "--in-memory") runs without it)")
                return 0
            }
            applied.append("\(flag) \(d)")
            return d
        }
        let capSigma = pick(cap, declared.capSigma, "--cap")
        let fluxSigma = pick(fluxRestore, declared.fluxRestoreSigma, "--flux-restore")
        let e = RestoreExtras(strength: strength, mask: mask, useDQ: !noDQ, luminance: luminance, fluxSigma: fluxSigma, capSigma: capSigma)
        return (e, applied.isEmpty ? nil : applied.joined(separator: " "), notes)
    }
}

/// Inputs this command cannot read, refused with what to do instead.
func refuseUnsupportedFormat(_ input: String) throws {
    let plain = (input.firstIndex(of: "[").map { String(input[..<$0]) } ?? input).lowercased()
    for ext in [".png", ".jpg", ".jpeg", ".xisf", ".cr2", ".cr3", ".nef", ".arw"] where plain.hasSuffix(ext) {
        throw ScaleError.badInput("\(input): astrocnn reads FITS and uncompressed TIFF images; convert this file to FITS first (e.g. in Siril: load it, then File > Save As > FITS, or the script command 'savefits NAME')")
    }
}

/// One restoring run: single image or batch, shared by `restore` and the task verbs.
struct RestoreDriver {
    var label: String
    var inputs: [String]
    /// nil: the output goes next to each input, named by `name` (default `{stem}<suffix>.fits`).
    var output: String?
    var defaultName: String
    var network: Network
    var common: RestoreCommonOptions
    /// The PSF `--check` tests against (`deconvolve`'s --psf, `restore`'s --psf).
    var checkPSF: String? = nil

    func run() throws {
        let c = common
        if c.check && checkPSF == nil { throw failure("--check needs the PSF the image was deconvolved for: --psf SPEC|auto|PSF.fits") }
        if let t = c.threads, t < 1 { throw failure("--threads must be at least 1") }
        if let t = c.tile, t < 1 { throw failure("--tile must be at least 1") }
        guard ["human", "json", "none"].contains(c.progress) else { throw failure("--progress must be human, json or none") }
        let (extras, declaredSteps, extrasNotes) = c.extras(for: network)
        do { try PlaneRestore.validate(extras, network: network) } catch { throw failure(describe(error)) }
        for n in extrasNotes { FileHandle.standardError.write(Data((n + "\n").utf8)) }
        if let d = declaredSteps {
            print("\(label): the model's declared defaults \(d) (docs/EVALUATION.md; --cap 0 / --flux-restore 0 turn them off)")
        }
        for i in inputs { do { try refuseUnsupportedFormat(i) } catch { throw failure(describe(error)) } }
        let parameters = try parseParameters(c.params)
        guard let algorithm = ConvAlgorithm(rawValue: c.conv) else { throw failure("--conv must be auto, direct, winograd, winograd2, winograd6 or reference") }
        var isDir: ObjCBool = false
        let outputIsDir = output.map { FileManager.default.fileExists(atPath: $0, isDirectory: &isDir) && isDir.boolValue } ?? false
        let anyDirInput = inputs.contains { var d: ObjCBool = false; return FileManager.default.fileExists(atPath: $0, isDirectory: &d) && d.boolValue }
        let batch = inputs.count > 1 || anyDirInput || outputIsDir || (output?.hasSuffix("/") ?? false)
        var options = Restoration.Options(threads: c.threads ?? ParallelFor.availableCores, tileSize: c.tile, parameters: parameters,
                                          algorithm: algorithm)
        options.psf = network.psfDescription
        do { try SelfEnsemble.check(network, count: c.ensemble) } catch { throw failure(describe(error)) }
        options.ensemble = c.ensemble
        if c.dataConsistency && c.noDataConsistency { throw failure("--data-consistency and --no-data-consistency contradict each other") }
        if c.dataConsistency {
            guard network.wienerContext != nil, network.normalization == .noiseMAD else {
                throw failure("--data-consistency corrects a deconvolution model's output with the PSF it deconvolved by; '\(network.name)' has no Wiener step (use a PSF-aware model such as deconv-psf with --psf)")
            }
        }
        // Asked for, or the model's declared default (then only where it can run: one 2-D image
        // without the streamed-only options, in memory; otherwise a note says it was skipped).
        let declaredDC = network.declaresDataConsistency && !c.noDataConsistency && !c.dataConsistency && network.normalization == .noiseMAD
        if let g = c.gain {
            guard g > 0, g.isFinite else { throw failure("--gain must be a positive number of electrons per image unit") }
            options.gain = g
        }
        var maskCRC: UInt32?
        if let m = extras.mask {
            do {
                let r = try FITSReader(path: m)
                r.close()
                maskCRC = try StreamingRestore.fileChecksum(m)
            } catch { throw failure("--mask: \(describe(error))") }
        }
        let mode = c.quiet ? "none" : c.progress
        let command = CommandLine.arguments.joined(separator: " ")
        // Next to the inputs the verbs add a suffix; into an output folder names are kept.
        let pattern = c.name ?? (output == nil ? defaultName : "{stem}.fits")
        if batch, let t = inputs.first(where: TIFFImage.isTIFFName) {
            throw failure("\(t): TIFF files are restored one at a time (or convert them with 'astrocnn convert IN.tif OUT.fits' and run the batch on the FITS files)")
        }
        if !batch {
            guard let original = inputs.first else { throw failure("no input file") }
            var input = original
            var out = output ?? nextToInput(input, pattern)
            // TIFF in or out: through a temporary FITS file (removed at the end).
            var tiffIn: TIFFImage?
            var tiffOut: String?
            var scratch: String?
            defer { if let d = scratch { try? FileManager.default.removeItem(atPath: d) } }
            do {
                if TIFFImage.isTIFFName(original) || TIFFImage.isTIFFName(out) {
                    let d = NSTemporaryDirectory() + "astrocnn-tiff-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
                    scratch = d
                }
                if TIFFImage.isTIFFName(original) {
                    if c.hdu != nil { throw ScaleError.badInput("--hdu applies to FITS inputs, not TIFF") }
                    let t = try TIFFImage(path: original)
                    tiffIn = t
                    input = scratch! + "/input.fits"
                    try t.writeFITS(to: input, source: original)
                    if output == nil {
                        // IN.tif -> IN_denoised.tif next to it.
                        let plainName = (original as NSString).lastPathComponent
                        let stem = (plainName as NSString).deletingPathExtension
                        let name = pattern.replacingOccurrences(of: "{stem}", with: stem).replacingOccurrences(of: "{name}", with: plainName)
                        let tifName = name.hasSuffix(".fits") ? String(name.dropLast(5)) + "." + (plainName as NSString).pathExtension : name
                        let dir = (original as NSString).deletingLastPathComponent
                        out = dir.isEmpty ? tifName : (dir as NSString).appendingPathComponent(tifName)
                    }
                }
                if TIFFImage.isTIFFName(out) {
                    do { try AtomicFile.checkWritable(out, overwrite: c.overwrite) } catch let e as AtomicFile.Failure {
                        if case .exists = e { throw FITSError.exists(out) }
                        throw FITSError.io(e.description)
                    }
                    tiffOut = out
                    out = scratch! + "/output.fits"
                }
            } catch { throw failure(describe(error)) }
            do {
                let probe = try FITSProbe(path: input, hdu: c.hdu)
                let special = PlaneRestore.needed(probe, extras)
                if c.preview != nil && probe.planes > 1 {
                    throw ScaleError.badInput("--preview shows 2-D images; this one has \(probe.planes) planes")
                }
                if c.dataConsistency && special {
                    throw ScaleError.badInput("--data-consistency works in memory, on 2-D images without --strength, --mask, a DQ extension (--no-dq), --luminance, --flux-restore or --cap")
                }
                var dc = c.dataConsistency
                if declaredDC {
                    if special {
                        FileHandle.standardError.write(Data("note: '\(network.name)' declares the data-consistency correction; skipped (it runs on 2-D images without --strength, --mask, DQ, --luminance, --flux-restore or --cap)\n".utf8))
                    } else {
                        let need = dataConsistencyBytes(probe)
                        if need <= Double(MemoryBudget.bytes) {
                            dc = true
                        } else {
                            FileHandle.standardError.write(Data(String(format: "note: '%@' declares the data-consistency correction; skipped: the %dx%d image would need %.1f GB in memory (budget %.1f GB); the output is the network's, streamed\n",
                                                                      network.name, probe.width, probe.height, need / 1e9, Double(MemoryBudget.bytes) / 1e9).utf8))
                        }
                    }
                }
                options.dataConsistency = dc
                if let b = c.lowerBound {
                    guard b.isFinite else { throw ScaleError.badInput("--lower-bound must be a finite number in the image's units") }
                    guard dc else {
                        throw ScaleError.badInput("--lower-bound is held by the data-consistency correction, which does not run here (a PSF-aware model with --data-consistency or its declared default, one 2-D image in memory)")
                    }
                    options.lowerBound = b
                }
                if c.inMemory && special {
                    throw ScaleError.badInput("--in-memory works on 2-D images without --strength, --mask, a DQ extension (--no-dq), --luminance, --flux-restore or --cap")
                }
                let json = mode == "json" ? JSONProgress(files: [original], pixels: [Double(probe.width * probe.height * probe.planes)]) : nil
                json?.begin(0)
                let human = mode == "human" ? ProgressLine(label) : nil
                if let p = human { options.progress = { p.update($0, $1) } }
                if let j = json { options.progress = { j.tile($0, $1) } }
                let r: RestoreReport
                if special {
                    r = try PlaneRestore.restoreFile(input: input, hdu: c.hdu, output: out, network: network, options: options, extras: extras,
                                                     overwrite: c.overwrite, command: command, maskChecksum: maskCRC)
                } else if c.inMemory || dc {
                    r = try Restoration.restoreFile(input: input, hdu: c.hdu, output: out, network: network, options: options,
                                                    overwrite: c.overwrite, command: command)
                } else {
                    r = try StreamingRestore.restoreFile(input: input, hdu: c.hdu, output: out, network: network, options: options,
                                                         overwrite: c.overwrite, command: command)
                }
                if let t = tiffOut {
                    let bits = tiffIn?.bits == 16 ? 16 : 32
                    try TIFFImage(fits: out, bits: bits, isFloat: bits == 32)
                        .write(to: t, overwrite: c.overwrite, description: "restored by astrocnn \(AstroCNN.version) with model '\(network.name)'")
                    out = t
                }
                json?.finish(0, status: "written", output: out)
                let planes = probe.planes > 1 ? (extras.luminance ? " x 3 planes (luminance)" : " x \(probe.planes) planes") : ""
                print(String(format: "restored %dx%d pixels%@ (%d invalid) with '%@' in %.2f s (%d tiles, %d threads) -> %@",
                             r.width, r.height, planes, r.invalidPixels, network.name, r.seconds, r.tiles, options.threads, out))
                if let warning = r.dataConsistency?.warning { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
                if let png = c.preview {
                    let after = try FITSIO.readImage(path: tiffOut == nil ? out : scratch! + "/output.fits")
                    let before = try FITSIO.readImage(path: input, hdu: c.hdu)
                    try Preview.sideBySide([("input", before.pixels), ("restored: " + network.name, after.pixels)],
                                           width: before.width, height: before.height).write(to: png)
                    print("wrote \(png)")
                }
            } catch {
                throw failure(describe(error))
            }
            if c.check, let psf = checkPSF {
                let report: RestorationCheck
                do {
                    guard tiffOut == nil else { throw ScaleError.badInput("--check works on FITS outputs") }
                    let a = try FITSIO.readImage(path: input, hdu: c.hdu), b = try FITSIO.readImage(path: out)
                    let (kernel, what) = try resolvePSF(psf, image: a)
                    let g = c.gain ?? ExposureKeywords(keyword: a.keyword).gain?.value
                    report = try RestorationCheck.run(input: a.pixels, restored: b.pixels, invalid: a.invalid, width: a.width, height: a.height,
                                                      psf: kernel, gain: g, threads: options.threads)
                    print("check: PSF \(what)")
                    print(report)
                } catch { throw failure("--check: " + describe(error)) }
                print(report.passes ? "check: PASS" : "check: FAIL")
                if !report.passes { throw ExitCode(3) }
            }
            return
        }
        if c.check { throw failure("--check works with one input; run 'astrocnn check' on each output of a batch") }
        if c.preview != nil { throw failure("--preview works with one input; run it on the file you want to look at") }
        if c.inMemory { throw failure("--in-memory works with one input") }
        if let b = c.lowerBound {
            guard b.isFinite else { throw failure("--lower-bound must be a finite number in the images' units") }
            guard c.dataConsistency || declaredDC else {
                throw failure("--lower-bound is held by the data-consistency correction, which does not run here (a PSF-aware model with --data-consistency or its declared default)")
            }
        }
        let files: [String]
        do {
            files = try expandInputs(inputs, patterns: c.glob.split(separator: ",").map(String.init))
            for f in files { try refuseUnsupportedFormat(f) }
            if let o = output { try FileManager.default.createDirectory(atPath: o, withIntermediateDirectories: true) }
        } catch { throw failure(describe(error)) }
        if files.isEmpty { throw failure("no FITS files found in \(inputs.joined(separator: " ")) (globs \(c.glob))") }
        // Outputs must be distinct.
        var targets: [String] = []
        var seen: [String: String] = [:]
        for f in files {
            let out = output.map { ($0 as NSString).appendingPathComponent(PlanRunner.outputName(for: f, pattern: pattern)) } ?? nextToInput(f, pattern)
            if let other = seen[out] { throw failure("\(f) and \(other) would both be written to \(out); use --name with {dir}") }
            seen[out] = f
            targets.append(out)
        }
        // Headers only: pixel counts for the progress line (unreadable files count as 0 here and fail below).
        let probes = files.map { try? FITSProbe(path: $0, hdu: c.hdu) }
        let sizes = probes.map { p -> Double in p.map { Double($0.width * $0.height * $0.planes) } ?? 0 }
        let human = mode == "human" ? BatchProgress(label, total: files.count, totalPixels: sizes.reduce(0, +)) : nil
        let json = mode == "json" ? JSONProgress(files: files, pixels: sizes) : nil
        if let p = human { options.progress = { p.tile($0, $1) } }
        if let j = json { options.progress = { j.tile($0, $1) } }
        let modelCRC = network.fileChecksum.map(checksumString) ?? ""
        let base = StreamingRestore.optionsSignature(hdu: c.hdu, options: options)
        var failures: [(String, String)] = []
        var written = 0, skipped = 0
        let start = Date()
        for (k, f) in files.enumerated() {
            let out = targets[k]
            human?.begin(pixels: sizes[k])
            json?.begin(k)
            // A run killed between linking its output into place and removing the temporary
            // leaves both; the output is whole (and verified below), the temporary is litter.
            AtomicFile.removeStaleTemporaries(for: out)
            do {
                let probe = try probes[k] ?? FITSProbe(path: f, hdu: c.hdu)
                let extra = PlaneRestore.signature(probe, extras, maskChecksum: maskCRC)
                let special = PlaneRestore.needed(probe, extras)
                // The data-consistency correction, asked for or declared, runs file by file in
                // memory where it can (as for one input); asked for, a file it cannot run on fails.
                var dc = false
                if c.dataConsistency || declaredDC {
                    if special {
                        if c.dataConsistency { throw ScaleError.badInput("--data-consistency works in memory, on 2-D images without --strength, --mask, a DQ extension (--no-dq), --luminance, --flux-restore or --cap") }
                        FileHandle.standardError.write(Data("note: \(f): '\(network.name)' declares the data-consistency correction; skipped (it runs on 2-D images without --strength, --mask, DQ, --luminance, --flux-restore or --cap)\n".utf8))
                    } else if dataConsistencyFits(probe) {
                        dc = true
                    } else if c.dataConsistency {
                        throw ScaleError.badInput("the data-consistency correction of the \(probe.width)x\(probe.height) image does not fit the memory budget")
                    } else {
                        FileHandle.standardError.write(Data("note: \(f): '\(network.name)' declares the data-consistency correction; skipped: the image does not fit the memory budget (the output is the network's, streamed)\n".utf8))
                    }
                }
                var dcOptions = options
                dcOptions.dataConsistency = true
                dcOptions.lowerBound = c.lowerBound
                let signature = dc ? StreamingRestore.optionsSignature(hdu: c.hdu, options: dcOptions) : (extra.isEmpty ? base : base + ";" + extra)
                let crc = try StreamingRestore.fileChecksum(f)
                if !c.overwrite && access(out, F_OK) == 0 {
                    if isVerifiedOutput(out, inputCRC: checksumString(crc), modelCRC: modelCRC, options: signature) {
                        skipped += 1
                        human?.finish(skipped: true)
                        json?.finish(k, status: "skipped", output: out)
                        continue
                    }
                    throw ScaleError.mismatch("\(out) exists but was not made from this input, model and options (pass --overwrite to replace it)")
                }
                if dc {
                    let r = try Restoration.restoreFile(input: f, hdu: c.hdu, output: out, network: network, options: dcOptions, overwrite: c.overwrite,
                                                        command: command, inputChecksum: crc)
                    if let warning = r.dataConsistency?.warning { FileHandle.standardError.write(Data("warning: \(f): \(warning)\n".utf8)) }
                } else if special {
                    _ = try PlaneRestore.restoreFile(input: f, hdu: c.hdu, output: out, network: network, options: options, extras: extras,
                                                     overwrite: c.overwrite, command: command, inputChecksum: crc, maskChecksum: maskCRC)
                } else {
                    _ = try StreamingRestore.restoreFile(input: f, hdu: c.hdu, output: out, network: network, options: options,
                                                         overwrite: c.overwrite, command: command, inputChecksum: crc)
                }
                written += 1
                human?.finish()
                json?.finish(k, status: "written", output: out)
            } catch {
                failures.append((f, describe(error)))
                human?.finish(failed: true)
                json?.finish(k, status: "failed", output: out, error: describe(error))
            }
        }
        print(String(format: "restored %d files, skipped %d up to date, %d failed, with '%@' in %.2f s -> %@",
                     written, skipped, failures.count, network.name, Date().timeIntervalSince(start), output ?? "next to each input"))
        if !failures.isEmpty {
            var text = "astrocnn: error: \(failures.count) of \(files.count) files failed (the others were written):\n"
            for (f, e) in failures { text += "  \(f): \(e)\n" }
            FileHandle.standardError.write(Data(text.utf8))
            throw ExitCode(1)
        }
    }

    /// Memory the in-memory restore with the data-consistency correction takes for this image
    /// (the correction's spectra, the image's copies, the network's maps).
    func dataConsistencyBytes(_ probe: FITSProbe) -> Double {
        Double(DataConsistency.workBytes(height: probe.height, width: probe.width, psfSide: network.psf.map { max($0.height, $0.width) } ?? 65))
            + Double(probe.width) * Double(probe.height) * (16 + network.bytesPerInputPixel)
    }

    func dataConsistencyFits(_ probe: FITSProbe) -> Bool { dataConsistencyBytes(probe) <= Double(MemoryBudget.bytes) }

    /// `pattern` applied to `input`, in the input's folder.
    func nextToInput(_ input: String, _ pattern: String) -> String {
        let plain = input.firstIndex(of: "[").map { String(input[..<$0]) } ?? input
        let dir = (plain as NSString).deletingLastPathComponent
        let name = PlanRunner.outputName(for: input, pattern: pattern)
        return dir.isEmpty ? name : (dir as NSString).appendingPathComponent(name)
    }

    /// Whether `path` (2-D or a cube) is a finished output of this input, model and options.
    func isVerifiedOutput(_ path: String, inputCRC: String, modelCRC: String, options: String) -> Bool {
        guard access(path, R_OK) == 0, let p = try? FITSProbe(path: path) else { return false }
        let cards = p.headerCards
        return FITSHeader.value("ACNNICRC", in: cards) == inputCRC && FITSHeader.value("ACNNCRC", in: cards) == modelCRC
            && FITSHeader.value("ACNNOPTS", in: cards) == options
    }
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

    let label: String
    init(_ label: String = "restore", total: Int, totalPixels: Double) { self.label = label; self.total = total; self.totalPixels = max(1, totalPixels) }

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
        let line = String(format: "%@: %d/%d files (%d skipped, %d failed), %.0f%% of pixels, %.1f s elapsed, ETA %.1f s",
                          label, files, total, skipped, failed, 100 * frac, t, eta)
        FileHandle.standardError.write(Data(((interactive ? "\r" : "") + line + (interactive && !final ? "" : "\n")).utf8))
    }
}

/// Machine-readable progress (`--progress json`): one JSON object per line on standard error,
/// for GUIs and scripts. `done` and `total` count pixels (planes included) over the whole run;
/// `eta_s` is the estimated time left, `file` the image being restored. Lines come when a file
/// starts, at most every 0.2 s while it runs, and when it ends (with `status`: written, skipped
/// or failed, `output`, and `error` for a failure).
final class JSONProgress: @unchecked Sendable {
    let files: [String]
    let pixels: [Double]
    let total: Double
    let start = Date()
    let lock = NSLock()
    var lastPrint = Date.distantPast
    var donePixels = 0.0
    var current = 0
    var fraction = 0.0
    var filesDone = 0

    init(files: [String], pixels: [Double]) {
        self.files = files
        self.pixels = pixels
        self.total = pixels.reduce(0, +)
    }

    func begin(_ k: Int) {
        lock.lock(); current = k; fraction = 0; lock.unlock()
        emit(force: true, extra: ["event": "start"])
    }

    func tile(_ done: Int, _ of: Int) {
        lock.lock(); fraction = Double(done) / Double(max(of, 1)); lock.unlock()
        emit(force: done == of, extra: ["event": "progress"])
    }

    func finish(_ k: Int, status: String, output: String, error: String? = nil) {
        lock.lock(); donePixels += pixels[k]; fraction = 0; filesDone += 1; lock.unlock()
        var extra: [String: Any] = ["event": "file", "status": status, "output": output]
        if let e = error { extra["error"] = e }
        emit(force: true, extra: extra)
    }

    func emit(force: Bool, extra: [String: Any]) {
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        if !force && now.timeIntervalSince(lastPrint) < 0.2 { return }
        lastPrint = now
        let done = min(total, donePixels + (current < pixels.count ? pixels[current] * fraction : 0))
        let t = now.timeIntervalSince(start)
        let eta = done > 0 ? t * (total - done) / done : -1
        var object: [String: Any] = ["done": Int(done.rounded()), "total": Int(total.rounded()), "eta_s": eta >= 0 ? (eta * 10).rounded() / 10 : NSNull(),
                                     "elapsed_s": (t * 10).rounded() / 10, "file": files[min(current, files.count - 1)],
                                     "files_done": filesDone, "files_total": files.count]
        for (k, v) in extra { object[k] = v }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        FileHandle.standardError.write(data + Data("\n".utf8))
    }
}
