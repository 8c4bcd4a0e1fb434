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

    @Option(help: "The image's PSF: airy:size=64,rings=5, gaussian:fwhm=F, moffat:fwhm=F,beta=B (as train --psf). 'auto' (measuring it from stars) is not available yet.")
    var psf: String

    @Option(name: [.short, .long], help: "Output FITS file (one input; .fz: tile-compressed) or directory (several inputs). Default: IN_deconvolved.fits next to each input.")
    var output: String?

    @Option(name: [.short, .long], help: "Model (path or name on the search path) instead of the shipped choice; its training PSF must match --psf.")
    var model: String?

    @Option(name: .customLong("model-dir"), help: "Search this folder first for models (repeatable).")
    var modelDirs: [String] = []

    @OptionGroup var common: RestoreCommonOptions

    func run() throws {
        if psf.lowercased() == "auto" {
            throw failure("--psf auto (measuring the PSF from the image's stars) is not available yet; pass the PSF, e.g. --psf moffat:fwhm=4,beta=3 (astrocnn models lists the PSFs the shipped models cover)")
        }
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
                let list = ShippedModels.coveredText(entries)
                throw failure("no model found was trained for --psf \(wanted.exactDescription); a deconvolution model run on another PSF gives wrong results, so none is used. Covered:\n\(list)\nTrain one for your PSF (astrocnn train --recipe deconv-unet --psf \(wanted.exactDescription) ...) and pass it with --model")
            }
            chosen = e.path
        }
        let network: Network
        do { network = try Network(path: chosen) } catch { throw failure(describe(error)) }
        try RestoreDriver(label: "deconvolve", inputs: inputs, output: output, defaultName: "{stem}_deconvolved.fits", network: network, common: common).run()
    }
}
