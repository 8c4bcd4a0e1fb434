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

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore FITS images with a model; each output keeps its input's shape, units and header. Streams in row bands (bounded memory); many files or directories with -o DIR.")

    @Argument(help: "Input FITS files or directories (cfitsio extended syntax allowed, e.g. 'image.fits[SCI]', .gz, .fz; cubes and RGB images are restored plane by plane).")
    var inputs: [String]

    @Option(name: [.short, .long], help: "Model file (.acnn), or the name of a model on the search path (astrocnn models).")
    var model: String

    @Option(name: [.short, .long], help: "Output FITS file (one input; ending in .fz: tile-compressed), or output directory (several inputs, a directory input, or an existing directory).")
    var output: String

    @Option(name: .customLong("model-dir"), help: "Also search this folder for models named without a path (first on the search path; repeatable).")
    var modelDirs: [String] = []

    @Option(help: "With --check: the PSF the model deconvolves (airy:..., gaussian:fwhm=F, moffat:fwhm=F,beta=B, a FITS kernel, or auto: measured from the input's stars).")
    var psf: String?

    @OptionGroup var common: RestoreCommonOptions

    func run() throws {
        let network = try loadModel(model, modelDirs: modelDirs)
        try RestoreDriver(label: "restore", inputs: inputs, output: output, defaultName: "{stem}.fits", network: network, common: common,
                          checkPSF: psf).run()
    }
}
