import ArgumentParser
import Foundation
import Trainer
import Imaging
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

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore FITS images with a model; each output keeps its input's shape, units and header. Streams in row bands (bounded memory); many files or directories with -o DIR.")

    @Argument(help: "Input FITS files or directories (cfitsio extended syntax allowed, e.g. 'image.fits[SCI]', .gz, .fz; cubes and RGB images are restored plane by plane).")
    var inputs: [String]

    @Option(name: [.short, .long], help: "Model file (.acnn), or the name of a model on the search path (astrocnn models).")
    var model: String?

    @Option(name: [.short, .long], help: "Output FITS file (one input; ending in .fz: tile-compressed), or output directory (several inputs, a directory input, or an existing directory).")
    var output: String

    @Option(name: .customLong("model-dir"), help: "Also search this folder for models named without a path (first on the search path; repeatable).")
    var modelDirs: [String] = []

    @Option(help: "The image's PSF (airy:..., gaussian:fwhm=F, moffat:fwhm=F,beta=B, a FITS kernel, or auto: measured from the input's stars): what --check tests against; a model trained for another PSF gets a warning.")
    var psf: String?

    @OptionGroup var common: RestoreCommonOptions

    func run() throws {
        let network: Network
        if let m = model {
            network = try loadModel(m, modelDirs: modelDirs)
        } else {
            throw failure("give the model with -m MODEL (astrocnn models lists them; deconv-psf takes any PSF of its family with --psf), or use 'astrocnn denoise' / 'astrocnn deconvolve --psf SPEC|auto', which choose the shipped one")
        }
        if network.wienerContext != nil && network.psf == nil {
            guard let p = psf else {
                throw failure("\(network.name) deconvolves with the image's own PSF: give it with --psf SPEC, --psf PSF.fits or --psf auto")
            }
            try bindPSF(network, spec: p, inputs: inputs, hdu: common.hdu)
        }
        // A model that says what it is for: a deconvolution model run on another PSF is flagged
        // before it runs (restore -m stays the expert path that runs any model).
        if let p = psf, p.lowercased() != "auto", let wanted = try? PSFSpec(parsing: p), let wk = try? wanted.kernel(),
           network.metadata["training.psf"] != nil || network.metadata["training.psf_size"] != nil,
           let trained = try? TrainingConfig.degradationSpecs(metadata: network.metadata).psf, let tk = try? trained.kernel() {
            let a = PSFEstimation.fitMoffat(wk), b = PSFEstimation.fitMoffat(tk)
            if abs(a.fwhm - b.fwhm) > 0.1 * b.fwhm || abs(a.beta - b.beta) > 0.25 * b.beta {
                FileHandle.standardError.write(Data(String(format: "astrocnn: warning: '%@' was trained for --psf %@ (Moffat FWHM %.2f, beta %.2f), not for this PSF (FWHM %.2f, beta %.2f): its output will not be a deconvolution by this PSF\n",
                                                           network.name, trained.description, b.fwhm, b.beta, a.fwhm, a.beta).utf8))
            }
        }
        try RestoreDriver(label: "restore", inputs: inputs, output: output, defaultName: "{stem}.fits", network: network, common: common,
                          checkPSF: psf).run()
    }
}
