import Imaging
import ArgumentParser
import Evaluation
import Foundation
import ModelFormat
import Reporting
import Runtime
import Trainer

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a synthetic sky, degrade it as Flamary 2017, restore it with the shipped deconvolution U-net, and show the gain.",
        discussion: """
        Stars (Moffat profiles, power-law luminosity function), Sersic galaxies and a sky gradient are \
        rendered from a seed, normalised to max 1, blurred by the 64x64 Airy PSF and given Gaussian noise \
        (sigma 0.01). The model (models/deconv-unet.acnn by default, else models/flamary3.acnn) restores the \
        degraded image; Wiener (lambda chosen against the truth) and Richardson-Lucy (iterations chosen against \
        the truth) are shown for comparison. Writes truth, degraded \
        and restored FITS files and a side-by-side PNG into the output folder.
        """)

    @Option(name: [.short, .long], help: "Model (default: models/deconv-unet.acnn, else models/flamary3.acnn, next to the working directory or the executable).")
    var model: String?
    @Option(help: "Output folder.") var output: String = "demo-output"
    @Option(help: "Image side in pixels.") var size: Int = 512
    @Option(help: "Random seed for the sky and the noise.") var seed: UInt64 = 1
    @Option(help: "Threads (default: all cores).") var threads: Int?
    @Option(help: "deconvolve (Flamary 2017: the 3-CNN against Wiener) or denoise (the Astro U-net: a short exposure against the classical denoisers).")
    var task: String = "deconvolve"
    @Option(help: "denoise: a real FITS image to use as the long exposure instead of the simulated sky (its header gain, else sky-limited).")
    var input: String?
    @Option(help: "denoise: exposure-time ratio of the short exposure.") var ratio: Double = 2
    @Option(help: "denoise: also score the network with bright pixels capped at sky + K sigma, the excess added back (as denoise --cap K); 0: off. Default: the model's declared value (the shipped denoiser: 50).") var cap: Double?
    @Option(name: .customLong("flux-restore"), help: "denoise: also score the network with the Gaussian low-pass (sigma px) of what it removed added back (as denoise --flux-restore); 0: off. Default: the model's declared value (the shipped denoiser: 1.5).") var fluxRestore: Double?
    @Option(help: ArgumentHelp(stringLiteral: "deconvolve: the PSF that blurs the sky (default the paper's airy:size=64,rings=5; a model that takes the PSF at run time is given it); 'auto': blur by the paper's PSF and deconvolve with the PSF measured from the degraded sky's stars. " + DegradationOptions.psfHelp)) var psf: String?
    @Option(help: ArgumentHelp(stringLiteral: "deconvolve: the noise (default the paper's gaussian:sigma=0.01). " + DegradationOptions.noiseHelp)) var noise: String?

    func run() throws {
        do {
            switch task {
            case "deconvolve": try demo()
            case "denoise": try denoiseDemo()
            default: throw ValidationError("--task must be deconvolve or denoise")
            }
        } catch let e as ExitCode { throw e } catch let e as ValidationError { throw e } catch { throw failure(describe(error)) }
    }

    /// A shipped model by file name: ./models first (the working directory), then the model
    /// search path (astrocnn models: $ASTROCNN_MODELS, next to the executable, the installed
    /// prefix, the source tree).
    /// The deconvolution models `demo` prefers, in order (then flamary3).
    static let defaultDeconvolutionModels = ["deconv-unet.acnn"]

    static func defaultModel(_ file: String = "flamary3.acnn") -> String? {
        if FileManager.default.fileExists(atPath: "models/" + file) { return "models/" + file }
        return ModelSearch.find(file, in: ModelSearch.locations())
    }

    func demo() throws {
        guard size >= 128 else { throw ValidationError("--size must be at least 128 (the PSNR excludes a 32-pixel border)") }
        guard var modelPath = model ?? Demo.defaultDeconvolutionModels.lazy.compactMap({ Demo.defaultModel($0) }).first ?? Demo.defaultModel() else {
            throw ValidationError("no model: models/deconv-unet.acnn or models/flamary3.acnn not found on the model search path (see astrocnn models --paths; install with scripts/install.sh PREFIX, or give --model)")
        }
        // A PSF the default model was not trained for (--psf other than the paper's): the shipped
        // model that takes the PSF at run time, as `deconvolve --psf` chooses it. (`--psf auto`
        // blurs by the paper's PSF, the default model's own.)
        if model == nil, let p = psf, p.lowercased() != "auto" {
            let trained = (try? ModelReader(path: modelPath)).flatMap { try? TrainingConfig.degradationSpecs(metadata: $0.metadata).psf }
            let wanted = try? PSFSpec(parsing: p)
            if wanted != trained, let aware = Demo.defaultModel(ShippedModels.psfAware) {
                print("--psf \(p): \((modelPath as NSString).lastPathComponent) was trained for another PSF; using \(ShippedModels.psfAware), which takes the PSF at run time")
                modelPath = aware
            }
        }
        let nThreads = max(1, threads ?? ParallelFor.availableCores)
        let t0 = monotonicSeconds()
        let sky = SyntheticSky(size: size, seed: seed).render()
        // --psf auto: the sky is blurred by the paper's PSF, and every method deconvolves with the
        // PSF measured from the degraded sky's own stars (as on a real image).
        let autoPSF = psf?.lowercased() == "auto"
        let degradation = psf == nil && noise == nil ? Degradation()
            : try DegradationOptions.make(psf: autoPSF ? PSFSpec.paper.description : psf ?? PSFSpec.paper.description, noise: noise, sigma: nil)
        let (truth, observed) = degradation.degrade(sky, seed: seed &+ 1000, threads: nThreads)
        var methodPSF = degradation.psf, psfText = degradation.psfSpec.exactDescription
        if autoPSF {
            let px = observed.pixels.map { Float($0) }
            let m: MeasuredPSF
            do { m = try PSFEstimation.measure(pixels: px, invalid: [Bool](repeating: false, count: px.count), width: size, height: size) }
            catch { throw ValidationError("--psf auto: \(describe(error))") }
            methodPSF = m.kernel
            psfText = String(format: "measured from %d stars of the degraded sky (peaks %.0f sigma above the sky or more): Moffat FWHM %.2f px, beta %.2f",
                             m.stars, m.threshold, m.fwhm, m.beta)
            print("PSF \(psfText) (the sky was blurred by \(degradation.psfSpec.exactDescription))")
        }
        let tSim = monotonicSeconds()

        let network = try Network(path: modelPath)
        if network.wienerContext != nil {
            let k = methodPSF
            do {
                try network.bind(psf: PSFKernel(height: k.height, width: k.width, values: k.pixels), description: psfText)
            } catch { throw ValidationError("\(modelPath): \(describe(error))") }
        }
        var opts = Restoration.Options(threads: nThreads)
        // The degraded image is already in a max-normalised model's units; a sky_mad or
        // noise_mad model (deconv-unet) normalises it by its own sky and noise, as restore does.
        opts.normalization = network.normalization == .clipMax ? Normalization.Kind.none : network.normalization
        let fits = FITSImage(width: size, height: size, pixels: observed.pixels.map { Float($0) })
        let (restoredPixels, report) = try Restoration.restore(fits, network: network, options: opts)
        let restored = Image2D(height: size, width: size, pixels: restoredPixels.map(Double.init))
        let tCNN = monotonicSeconds()
        let lambdas = [1e-4, 1e-3, 1e-2, 0.1, 1, 10]
        let wiener = Deconvolution.wienerBest(observed, truth: truth, psf: methodPSF, lambdas: lambdas, threads: nThreads)
        let tWiener = monotonicSeconds()
        let rl = Deconvolution.richardsonLucyBest(observed, truth: truth, psf: methodPSF, maxIterations: 50, threads: nThreads)
        let tRL = monotonicSeconds()
        let pDeg = Metrics.paperPSNR(truth, observed), pCNN = Metrics.paperPSNR(truth, restored)
        let pW = Metrics.paperPSNR(truth, wiener.image), pRL = Metrics.paperPSNR(truth, rl.image)
        print("synthetic sky \(size)x\(size) (seed \(seed)): \(degradation.description)   [\(String(format: "%.2f", tSim - t0)) s]")
        print(String(format: "  degraded          PSNR %6.2f dB", pDeg))
        print(String(format: "  Wiener (λ=%g)  PSNR %6.2f dB   %.2f s  (λ chosen against the truth)", wiener.lambda, pW, tWiener - tCNN))
        print(String(format: "  Richardson-Lucy   PSNR %6.2f dB   %.2f s  (%d iterations, chosen against the truth)", pRL, tRL - tWiener, rl.iterations))
        print(String(format: "  %@  PSNR %6.2f dB   %.2f s  (gain %+.2f dB over the degraded image)",
                     network.name.padding(toLength: 16, withPad: " ", startingAt: 0), pCNN, report.seconds, pCNN - pDeg))

        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        func write(_ name: String, _ img: Image2D, _ history: [String]) throws {
            let path = (output as NSString).appendingPathComponent(name)
            try FITSIO.writeImage(path: path, width: size, height: size, pixels: img.pixels.map { Float($0) },
                                  headerCards: [], provenance: FITSIO.Provenance(keywords: [
                                      ("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
                                      ("ACNNSEED", .int(Int64(seed)), "sky and noise seed"),
                                  ], history: history), overwrite: true)
        }
        try write("truth.fits", truth, ["astrocnn demo: synthetic sky (stars, Sersic galaxies, sky gradient), normalised to max 1"])
        try write("degraded.fits", observed, ["astrocnn demo: truth blurred by \(degradation.description)"])
        try write("restored.fits", restored, ["astrocnn demo: degraded restored by \(network.name) (\((modelPath as NSString).lastPathComponent))"])
        try write("wiener.fits", wiener.image, ["astrocnn demo: Wiener-Laplacian deconvolution, lambda \(wiener.lambda)"])
        try write("rl.fits", rl.image, ["astrocnn demo: Richardson-Lucy deconvolution, \(rl.iterations) iterations"])
        let panels: [(title: String, pixels: [Float])] = [
            ("truth", truth.pixels.map { Float($0) }),
            (String(format: "degraded %.1f dB", pDeg), observed.pixels.map { Float($0) }),
            (String(format: "Wiener %.1f dB", pW), wiener.image.pixels.map { Float($0) }),
            (String(format: "RL %.1f dB", pRL), rl.image.pixels.map { Float($0) }),
            (String(format: "CNN %.1f dB", pCNN), restored.pixels.map { Float($0) }),
        ]
        let png = (output as NSString).appendingPathComponent("demo.png")
        try Preview.sideBySide(panels, width: size, height: size, maxSide: 400).write(to: png)
        // A zoom on the brightest galaxy region, same stretch.
        let z = min(128, size / 2)
        var best = (0, 0, -1.0)
        for y in stride(from: 32, to: size - z - 32, by: 16) { for x in stride(from: 32, to: size - z - 32, by: 16) {
            var s = 0.0
            for i in stride(from: 0, to: z, by: 4) { for j in stride(from: 0, to: z, by: 4) { s += min(truth[y + i, x + j], 0.2) } }
            if s > best.2 { best = (y, x, s) }
        } }
        let zoomed = panels.map { p in
            (title: p.title, pixels: (0..<(z * z)).map { k in p.pixels[(best.0 + k / z) * size + best.1 + k % z] })
        }
        let zpng = (output as NSString).appendingPathComponent("demo-zoom.png")
        try Preview.sideBySide(zoomed, width: z, height: z, maxSide: 400).write(to: zpng)
        print("wrote \(output)/: truth.fits degraded.fits restored.fits wiener.fits rl.fits demo.png demo-zoom.png  [total \(String(format: "%.2f", monotonicSeconds() - t0)) s]")
    }
}
