import ArgumentParser
import Foundation
import Imaging
import ModelFormat
import Runtime
import Trainer

struct Denoise: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Denoise FITS images with the shipped denoiser (astro-unet-16-vst) or --model; output IN_denoised.fits next to each input unless -o.")

    @Argument(help: "Input FITS files or directories (cfitsio extended syntax allowed; colour and cube images are restored plane by plane).")
    var inputs: [String]

    @Option(name: [.short, .long], help: "Output FITS file (one input; .fz: tile-compressed) or directory (several inputs). Default: IN_denoised.fits next to each input.")
    var output: String?

    @Option(name: [.short, .long], help: "Model (path or name on the search path); default: the shipped denoiser astro-unet-16-vst.")
    var model: String?

    @Option(name: .customLong("model-dir"), help: "Search this folder first for models (repeatable).")
    var modelDirs: [String] = []

    @OptionGroup var common: RestoreCommonOptions

    func run() throws {
        let spec = model ?? ShippedModels.denoiser
        if model == nil, ModelSearch.find(spec, in: modelLocations(modelDirs)) == nil {
            throw failure("the shipped denoiser \(spec) was not found; searched \(searchedText(modelLocations(modelDirs))). Install the models (scripts/install.sh PREFIX), set ASTROCNN_MODELS, or pass --model")
        }
        let network = try loadModel(spec, modelDirs: modelDirs)
        try RestoreDriver(label: "denoise", inputs: inputs, output: output, defaultName: "{stem}_denoised.fits", network: network, common: common).run()
    }
}

struct Deconvolve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Deconvolve FITS images with the shipped model trained for the given PSF; output IN_deconvolved.fits next to each input unless -o.",
        discussion: "A PSF no shipped model was trained for is refused (with the list of those covered): train one with 'astrocnn train --recipe deconv-unet --psf SPEC' and pass it with --model.")

    @Argument(help: "Input FITS files or directories (cfitsio extended syntax allowed; colour and cube images are restored plane by plane).")
    var inputs: [String]

    @Option(help: "The image's PSF: airy:size=64,rings=5, gaussian:fwhm=F, moffat:fwhm=F,beta=B (as train --psf). 'auto' measures it from the image's stars (astrocnn psf) and uses a fixed-PSF model only if its training PSF has the same profile (FWHM within 10%, beta within 25%). A PSF no fixed-PSF model was trained for goes to the shipped deconv-psf, which takes it at run time (within its family; inspect shows it).")
    var psf: String

    @Option(name: [.short, .long], help: "Output FITS file (one input; .fz: tile-compressed) or directory (several inputs). Default: IN_deconvolved.fits next to each input.")
    var output: String?

    @Option(name: [.short, .long], help: "Model (path or name on the search path) instead of the shipped choice; its training PSF must match --psf.")
    var model: String?

    @Option(name: .customLong("model-dir"), help: "Search this folder first for models (repeatable).")
    var modelDirs: [String] = []

    @OptionGroup var common: RestoreCommonOptions

    func run() throws {
        // A model that takes the PSF at run time (format 1.1, `deconv-psf`) is used when it is
        // given with --model, and where no fixed-PSF model was trained for the PSF (with a note:
        // it does not yet beat the truth-tuned classical methods on every image, docs/EVALUATION.md
        // Part 1d; a fixed-PSF model trained for the PSF beats it there).
        if model != nil, let network = try psfAwareModel() {
            try RestoreDriver(label: "deconvolve", inputs: inputs, output: output, defaultName: "{stem}_deconvolved.fits", network: network,
                              common: common, checkPSF: psf).run()
            return
        }
        if psf.lowercased() == "auto" { try runAuto(); return }
        let wanted: PSFSpec
        do { wanted = try PSFSpec(parsing: psf) } catch { throw failure("--psf: \(describe(error))") }
        let locations = modelLocations(modelDirs)
        let entries = ModelSearch.catalog(locations).entries
        let chosen: String
        if let m = model {
            let path = resolveModelPath(m, modelDirs: modelDirs)
            let reader: ModelReader
            do { reader = try ModelReader(path: path) } catch { throw failure("\(path): \(describe(error))") }
            guard reader.metadata["training.psf"] != nil || reader.metadata["training.psf_size"] != nil,
                  let trained = try? TrainingConfig.degradationSpecs(metadata: reader.metadata).psf else {
                throw failure("\(path) records no training PSF (training.psf); use 'astrocnn restore -m \(path)' to run it anyway")
            }
            guard trained == wanted else {
                throw failure("\(path) was trained for --psf \(trained.exactDescription), not \(wanted.exactDescription); use 'astrocnn restore -m \(path)' to run it anyway")
            }
            chosen = path
        } else {
            guard let e = ShippedModels.deconvolutionModels(entries).first(where: { ShippedModels.trainingPSF($0) == wanted }) else {
                // No fixed-PSF model for this PSF: the model that takes it at run time, if the
                // PSF is in its family (else the refusal says why).
                var refusal = ""
                if let aware = ShippedModels.psfAwareModel(entries) {
                    do {
                        let k: Image2D
                        do {
                            guard let kernel = try wanted.kernel() else { throw ScaleError.badInput("--psf none gives it no PSF") }
                            k = kernel
                        } catch { throw PSFAwareRefusal(message: describe(error)) }
                        try runPSFAware(aware, kernel: k, description: wanted.description, asked: wanted.exactDescription)
                        return
                    } catch let e as PSFAwareRefusal {
                        refusal = "; \(aware.file), which takes the PSF at run time, cannot take this one: \(e.message)"
                    }
                }
                let list = ShippedModels.coveredText(entries)
                throw failure("no model found was trained for --psf \(wanted.exactDescription)\(refusal); a deconvolution model run on another PSF gives wrong results, so none is used. Covered:\n\(list)\nTrain one for your PSF (astrocnn train --recipe deconv-unet --psf \(wanted.exactDescription) ...) and pass it with --model")
            }
            chosen = e.path
        }
        let network: Network
        do { network = try Network(path: chosen) } catch { throw failure(describe(error)) }
        try RestoreDriver(label: "deconvolve", inputs: inputs, output: output, defaultName: "{stem}_deconvolved.fits", network: network, common: common,
                          checkPSF: psf).run()
    }

    /// Why the PSF-aware model cannot take a PSF (outside its family, too wide for its step).
    struct PSFAwareRefusal: Error { var message: String }

    /// Runs the PSF-aware model `entry` with `kernel` bound, for a PSF no fixed-PSF model was
    /// trained for, saying so; throws `PSFAwareRefusal` when the model cannot take the PSF
    /// (before anything is read or written).
    func runPSFAware(_ entry: ModelSearch.Entry, kernel k: Image2D, description: String, asked: String) throws {
        let network: Network
        do { network = try Network(path: entry.path) } catch { throw failure("\(entry.path): \(describe(error))") }
        do {
            try network.bind(psf: PSFKernel(height: k.height, width: k.width, values: k.pixels), description: description)
        } catch { throw PSFAwareRefusal(message: describe(error)) }
        print("PSF for \(network.name): \(description)" + String(format: " (FWHM %.2f px)", network.psf!.fwhm))
        FileHandle.standardError.write(Data((ShippedModels.psfAwareNote(network, psf: asked) + "\n").utf8))
        try RestoreDriver(label: "deconvolve", inputs: inputs, output: output, defaultName: "{stem}_deconvolved.fits", network: network,
                          common: common, checkPSF: psf).run()
    }

    /// The --model given, with this PSF bound, when it has a Wiener step (`deconv-psf`: one model
    /// for a family of PSFs, the PSF given at run time); nil for a fixed-PSF model.
    func psfAwareModel() throws -> Network? {
        guard let m = model else { return nil }
        let path = resolveModelPath(m, modelDirs: modelDirs)
        let network: Network
        do { network = try Network(path: path) } catch { throw failure("\(path): \(describe(error))") }
        guard network.wienerContext != nil else { return nil }
        try bindPSF(network, spec: psf, inputs: inputs, hdu: common.hdu)
        return network
    }

    /// `--psf auto`: the PSF is measured from the stars of each input (`astrocnn psf`), and a
    /// model is used only if its training PSF has the same profile within the measurement's
    /// accuracy (Moffat fits to both kernels: FWHM within 10%, beta within 25%); else the
    /// measured PSF is written next to the input and the message says how to train for it.
    func runAuto() throws {
        guard inputs.count == 1, let input = inputs.first, !FileManager.default.fileExists(atPath: input + "/.") else {
            throw failure("--psf auto measures the PSF of one image; give one input file (images of one camera share a PSF: measure it once with 'astrocnn psf', then pass --psf PSF.fits for a batch)")
        }
        let measured: MeasuredPSF
        do {
            let img = try FITSIO.readImage(path: input, hdu: common.hdu)
            measured = try PSFEstimation.measure(pixels: img.pixels, invalid: img.invalid, width: img.width, height: img.height)
        } catch { throw failure("--psf auto: \(describe(error))") }
        print(String(format: "deconvolve: PSF measured from %d stars of %@: Moffat FWHM %.2f px, beta %.2f, ellipticity %.3f",
                     measured.stars, input, measured.fwhm, measured.beta, measured.ellipticity))
        let locations = modelLocations(modelDirs)
        var candidates: [(path: String, spec: PSFSpec)] = []
        if let m = model {
            let path = resolveModelPath(m, modelDirs: modelDirs)
            if let r = try? ModelReader(path: path), let t = try? TrainingConfig.degradationSpecs(metadata: r.metadata).psf { candidates = [(path, t)] }
        } else {
            candidates = ShippedModels.deconvolutionModels(ModelSearch.catalog(locations).entries).compactMap { e in ShippedModels.trainingPSF(e).map { (e.path, $0) } }
        }
        let close = candidates.first { c in
            guard let k = try? c.spec.kernel() else { return false }
            let fit = PSFEstimation.fitMoffat(k)
            return abs(fit.fwhm - measured.fwhm) <= 0.1 * fit.fwhm && abs(fit.beta - measured.beta) <= 0.25 * fit.beta
        }
        if close == nil, model == nil, let aware = ShippedModels.psfAwareModel(ModelSearch.catalog(locations).entries) {
            // No fixed-PSF model for the measured PSF: the model that takes it at run time.
            do {
                try runPSFAware(aware, kernel: measured.kernel,
                                description: String(format: "measured from %d stars: Moffat FWHM %.2f px, beta %.2f", measured.stars, measured.fwhm, measured.beta),
                                asked: String(format: "auto (Moffat FWHM %.2f px, beta %.2f)", measured.fwhm, measured.beta))
            } catch let e as PSFAwareRefusal { throw failure("--psf auto: \(e.message)") }
            return
        }
        guard let chosen = close else {
            let stem = (input as NSString).deletingPathExtension
            let psfPath = (stem.hasSuffix(".fits") ? String(stem.dropLast(5)) : stem) + "_psf.fits"
            let prov = FITSIO.Provenance(keywords: [("PSFFWHM", .float(measured.fwhm), "[px] Moffat FWHM"), ("PSFBETA", .float(measured.beta), "Moffat beta"),
                                                    ("PSFNSTAR", .int(Int64(measured.stars)), "stars stacked")],
                                         history: ["PSF measured by astrocnn deconvolve --psf auto from \(input)"])
            let wrote = (try? FITSIO.writeImage(path: psfPath, width: measured.kernel.width, height: measured.kernel.height,
                                                pixels: measured.kernel.pixels.map(Float.init), headerCards: [], provenance: prov, overwrite: true)) != nil
            let covered = candidates.map { c -> String in
                let f = (try? c.spec.kernel()).flatMap { $0 }.map { PSFEstimation.fitMoffat($0) }
                return "  \(c.path): \(c.spec.exactDescription)" + (f.map { String(format: " (Moffat FWHM %.2f, beta %.2f)", $0.fwhm, $0.beta) } ?? "")
            }.joined(separator: "\n")
            throw failure("no model was trained for a PSF like this image's (Moffat FWHM \(String(format: "%.2f", measured.fwhm)) px, beta \(String(format: "%.2f", measured.beta))); a deconvolution model run on another PSF gives wrong results, so none is used. Models looked at:\n\(covered.isEmpty ? "  (none)" : covered)\n"
                              + (wrote ? "The measured PSF is in \(psfPath): train for it with astrocnn train --recipe deconv-unet --psf \(psfPath) ..., then pass the model with --model" : ""))
        }
        let network: Network
        do { network = try Network(path: chosen.path) } catch { throw failure(describe(error)) }
        try RestoreDriver(label: "deconvolve", inputs: inputs, output: output, defaultName: "{stem}_deconvolved.fits", network: network, common: common,
                          checkPSF: psf).run()
    }
}
