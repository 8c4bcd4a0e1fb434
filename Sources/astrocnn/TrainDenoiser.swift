import ArgumentParser
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime
import Trainer

/// The options of `train --recipe astro-unet`.
struct UNetTrainOptions: ParsableArguments {
    @Option(help: "astro-unet: channel widths per level, e.g. 32,64,128,256,512 (the paper's) or 16,32,64,128,256.")
    var widths: String = "32,64,128,256,512"
    @Option(help: "astro-unet: crop side in pixels (the paper: 256).") var crop: Int = 256
    @Option(help: "astro-unet: exposure-time ratios of the simulated short exposures, drawn per crop (the paper's Network 1: 2; Network 2: 2,3,4,5).")
    var ratios: String = "2"
    @Option(name: .long, parsing: .upToNextOption, help: "astro-unet: images held out for validation, by file name (never trained on).")
    var validate: [String] = []
    @Option(help: "astro-unet: gain (e-/unit) for images whose header has none; default: assume their sky noise is the photon noise of a sky of --assumed-sky electrons.")
    var fallbackGain: Double?
    @Option(help: "astro-unet: electrons of sky per pixel assumed for images without a gain (gain = sqrt(N) / sigma_sky).")
    var assumedSky: Double = 1000
    @Option(help: "astro-unet: multiply the learning rate by --decay-factor after this many epochs (0: never).") var decayEpochs: Int = 0
    @Option(help: "astro-unet: learning-rate decay factor.") var decayFactor: Double = 0.1
    @Flag(help: "astro-unet: clip negative pixels before the Poisson draw (as the paper did).") var clipNegative = false
    @Option(help: "deconv-unet: units of the loss: peak (the max-normalised truth's, as the PSNR: each crop weighted by its image's sky sigma squared) or network (the sky_mad units).")
    var lossUnits: String = "peak"
    @Option(help: "astro-unet, deconv-unet: start from this model's weights (same widths) instead of a random initialisation, e.g. to fine-tune the shipped model for another PSF or noise.")
    var initWeights: String?
    @Option(help: "astro-unet: the network's units: sky_mad ((pixel - sky) / sky sigma, the default) or sky_vst (then variance-stabilised for Poisson + Gaussian noise with the gain, so a bright pixel's noise is 1 as the sky's).")
    var normalization: String = "sky_mad"
    @Option(help: "astro-unet: brightness augmentation: half of the crops have their signal above the sky multiplied by a factor drawn log-uniformly in [1, B] (sources at higher signal-to-noise than the images hold; 1 = off).")
    var brightnessBoost: Double = 1
    @Option(help: "astro-unet: recorrupted targets (recorrupted-to-recorrupted, Pang et al. 2021) with this alpha: the short exposure is drawn from the long one plus alpha z, the target is the long one minus z / alpha (z: white noise of the long exposure's sky sigma), so the long exposure's own noise is not learnt as signal (0 = off).")
    var recorrupt: Double = 0
    @Option(help: "astro-unet, deconv recipes: add W x the L1 norm of the error's low frequencies (the error Gaussian-filtered, --low-pass-sigma) to the training loss, so that flux taken from or added to sources (source-shaped, low-frequency errors) costs more than the per-pixel loss alone makes it (0 = off; the validation loss stays the per-pixel one).")
    var lowPassLoss: Double = 0
    @Option(help: "The Gaussian sigma (px) of --low-pass-loss.")
    var lowPassSigma: Double = 1.5
    @Flag(help: "astro-unet, deconv-unet: bias-free convolutions (every bias held at 0: the network is scale-equivariant, so sources brighter than any in training are not extrapolated through biases; Mohan et al. 2020).")
    var biasFree = false
    @Flag(help: "deconv-psf: the model written declares the data-consistency correction (restore --data-consistency, docs/EVALUATION.md) as its run-time default (also with --finish).")
    var declareDataConsistency = false
    @Option(help: "astro-unet: the model written declares the bright cap at sky + K sigma (denoise --cap K) as its run-time default (also with --finish; 0: none).")
    var declareCap: Double = 0
    @Option(help: "astro-unet: the model written declares the flux restore with this Gaussian sigma in pixels (denoise --flux-restore S) as its run-time default (also with --finish; 0: none).")
    var declareFluxRestore: Double = 0
    @Flag(help: "U-net recipes: tied upsampling: each 2x2 transposed convolution keeps its four taps equal (nearest-neighbour upsampling then a 1x1 convolution: resize-convolution), against checkerboard and stripe artefacts; with --init-weights each channel pair starts from its mean tap.")
    var tiedUpsampling = false
    @Option(help: "deconv-psf: the PSFs and noise levels to train over, e.g. airy,gaussian,moffat:fwhm=1.5-8,beta=1.5-6,e=0.15,noise=1e-06-0.1,side=65 (keys left out keep these defaults).")
    var psfFamily: String = PSFFamily().description
    @Option(help: "deconv-psf: context in pixels each side of the model's Wiener step (at least the PSF's half-side).")
    var wienerContext: Int = 32
    @Flag(help: "astro-unet, deconv-unet, deconv-psf: after training, print where the steps' time went (data, forward/backward per layer, optimizer, weight repacking).")
    var profile = false
    @Flag(help: "astro-unet: also concatenate the input to the last level's features before the 1x1 head (residual learning; not in the paper).") var inputSkip = false
}

extension Train {
    /// A long exposure with the detector parameters of its header, or the fallback.
    static func longExposure(path: String, fallbackGain: Double?, assumedSky: Double) throws -> (LongExposure, String) {
        let src = try SourceImage.load(path: path)
        let fits = try FITSIO.readImage(path: path)
        let header = ExposureKeywords(keyword: fits.keyword)
        let stats = SkyStatistics.estimate(src.raw)
        guard stats.sigma > 0, stats.sigma.isFinite else { throw ValidationError("\(path): the sky noise cannot be measured (constant or empty image)") }
        let ron = header.readNoise?.value ?? 0
        if let g = header.gain?.value ?? fallbackGain {
            let (sky, skyHow) = ExposureNoise.subtractedSky(header: header, stats: stats, gain: g, readNoise: ron)
            let how = header.gain.map { "gain \($0.value) (\($0.source))" } ?? "gain \(g) (--fallback-gain)"
            return (LongExposure(image: src, gain: g, readNoise: ron, sky: sky), "\(how), read noise \(ron) e-, sky \(skyHow)")
        }
        // No gain: the measured sky noise is taken as the photon noise of a sky of `assumedSky` e-.
        let (g, sky) = ExposureNoise.skyLimited(sigma: stats.sigma, median: stats.median, electrons: assumedSky)
        return (LongExposure(image: src, gain: g, readNoise: 0, sky: sky),
                String(format: "no gain: sky-limited, %.0f e- sky -> gain %.4g e-/unit, sky %.4g", assumedSky, g, sky))
    }

    /// The model written: the best validation epoch, declaring the data-consistency correction
    /// as its run-time default when asked (`--declare-data-consistency`).
    func written(_ session: DenoiserSession) -> Model {
        var m = session.finalModel(latest: latest)
        if unet.declareDataConsistency { m.metadata["deconvolution.data_consistency"] = .bool(true) }
        if unet.declareCap > 0 { m.metadata["denoise.cap_sigma"] = .float(unet.declareCap) }
        if unet.declareFluxRestore > 0 { m.metadata["denoise.flux_restore_sigma"] = .float(unet.declareFluxRestore) }
        return m
    }

    func trainUNet() throws {
        let deconvolution = recipe == "deconv-unet" || recipe == "deconv-psf"
        if recipe == "deconv-psf" && (psf != nil || noise != nil || sigma != nil) {
            throw ValidationError("deconv-psf draws every crop's PSF and noise from --psf-family: drop --psf, --noise and --sigma")
        }
        guard !images.isEmpty else { throw ValidationError("give training images with --images DIR|FILES") }
        guard synthetic == 0 || recipe == "deconv-psf" else { throw ValidationError("--synthetic is for the flamary and deconv-psf recipes") }
        if !deconvolution && (psf != nil || noise != nil || sigma != nil) {
            throw ValidationError("astro-unet simulates short exposures with the paper's noise model: --psf, --noise and --sigma are for the deconvolution recipes")
        }
        if (unet.declareCap != 0 || unet.declareFluxRestore != 0) && recipe != "astro-unet" {
            throw ValidationError("--declare-cap and --declare-flux-restore are for denoisers (astro-unet)")
        }
        guard unet.declareCap >= 0, unet.declareCap.isFinite else { throw ValidationError("--declare-cap takes K >= 0") }
        if unet.declareFluxRestore != 0 {
            do { _ = try FluxRestore(width: 1, height: 1, sigma: unet.declareFluxRestore) } catch { throw ValidationError("--declare-flux-restore: \(describe(error))") }
        }
        if unet.declareDataConsistency && recipe != "deconv-psf" { throw ValidationError("--declare-data-consistency is for deconv-psf models (a Wiener step with the PSF at run time)") }
        if resume != nil && unet.initWeights != nil { throw ValidationError("--init-weights starts a new run: it cannot be combined with --resume") }
        if resume != nil && (psf != nil || noise != nil || sigma != nil) {
            throw ValidationError("--resume continues with the checkpoint's PSF and noise: drop --psf, --noise and --sigma")
        }
        var paths = try SourceImage.expand(images)
        if let out = leaveOut { paths.removeAll { ($0 as NSString).lastPathComponent == out || $0 == out } }
        let name = { (p: String) in (p as NSString).lastPathComponent }
        let valPaths = paths.filter { unet.validate.contains(name($0)) }
        let missing = unet.validate.filter { v in !paths.contains { name($0) == v } }
        guard missing.isEmpty else { throw ValidationError("--validate: \(missing.joined(separator: ", ")) not among the images") }
        guard !valPaths.isEmpty else { throw ValidationError("\(recipe) needs held-out validation images: --validate NAME [NAME...] (file names among --images)") }
        let trainPaths = paths.filter { !unet.validate.contains(name($0)) }
        guard !trainPaths.isEmpty else { throw ValidationError("no training images left after holding out \(unet.validate)") }
        let nThreads = max(1, threads ?? ParallelFor.availableCores)
        func load(_ ps: [String]) throws -> [LongExposure] {
            try ps.map { p in
                let (e, how) = try Train.longExposure(path: p, fallbackGain: unet.fallbackGain, assumedSky: unet.assumedSky)
                if !quiet { print("  \(e.image.name) \(e.image.raw.width)x\(e.image.raw.height): \(how)") }
                return e
            }
        }
        let base = output.hasSuffix(".acnn") ? String(output.dropLast(5)) : output
        let ckptPath = checkpoint ?? base + ".ckpt.acnn"
        let logPath = base + ".log.csv", plotPath = base + ".loss.png"
        if !overwrite && resume == nil {
            for p in [output, ckptPath] where FileManager.default.fileExists(atPath: p) {
                throw ValidationError("\(p) exists (use --overwrite, or --resume \(ckptPath))")
            }
        }
        let session: DenoiserSession
        var training: [LongExposure] = [], validation: [LongExposure] = []
        var trainImages: [SourceImage] = [], valImages: [SourceImage] = []
        if deconvolution {
            trainImages = try trainPaths.map { try SourceImage.load(path: $0) }
            // deconv-psf: sparse simulated fields (a zero sky, sharp stars) beside the real images.
            trainImages += (0..<synthetic).map { SyntheticSky.sparse(size: syntheticSize, seed: UInt64($0 + 1)).sourceImage() }
            valImages = try valPaths.map { try SourceImage.load(path: $0) }
            if !quiet {
                print("training images: " + trainImages.map { "\($0.name) \($0.raw.width)x\($0.raw.height)" }.joined(separator: ", "))
                print("validation images (held out): " + valImages.map(\.name).joined(separator: ", "))
            }
        } else {
            if !quiet { print("training images:") }
            training = try load(trainPaths)
            if !quiet { print("validation images (held out):") }
            validation = try load(valPaths)
        }
        if let r = resume {
            let m = try ModelReader(path: r).model()
            guard (m.metadata["training.task"]?.stringValue == "deconvolve") == deconvolution else {
                throw ValidationError("\(r) is not a \(recipe) checkpoint (recipe \(m.metadata["training.recipe"]?.stringValue ?? "?"))")
            }
            session = deconvolution
                ? try DenoiserSession(checkpoint: m, trainingImages: trainImages, validationImages: valImages, threads: nThreads)
                : try DenoiserSession(checkpoint: m, training: training, validation: validation, threads: nThreads)
            if let e = extendEpochs { session.extend(epochs: e) }
            if let r = resumeLr { try session.continueWith(learningRate: r) }
            if !quiet { print("resuming \(r) at epoch \(session.epoch + 1), batch \(session.batch)") }
        } else {
            var c: DenoiserConfig
            if recipe == "deconv-psf" {
                let f: PSFFamily
                do { f = try PSFFamily(parsing: unet.psfFamily) } catch { throw ValidationError("--psf-family: \(error)") }
                guard unet.wienerContext >= f.side / 2, unet.wienerContext <= GraphAnalysis.maxWienerContext else {
                    throw ValidationError("--wiener-context must be at least the PSF half-side \(f.side / 2) and at most \(GraphAnalysis.maxWienerContext)")
                }
                c = DenoiserConfig.psfAware(f, context: unet.wienerContext)
            } else {
                c = deconvolution
                    ? DenoiserConfig.deconvolution(try DegradationOptions.make(psf: psf ?? PSFSpec.paper.description, noise: noise, sigma: sigma))
                    : DenoiserConfig()
            }
            let w = unet.widths.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard w.count == unet.widths.split(separator: ",").count else { throw ValidationError("--widths: comma-separated integers") }
            let rs = unet.ratios.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard !rs.isEmpty, rs.count == unet.ratios.split(separator: ",").count else { throw ValidationError("--ratios: comma-separated numbers") }
            c.widths = w; c.cropSize = unet.crop
            if !deconvolution { c.ratios = rs }
            c.batchSize = batch ?? 4; c.learningRate = lr ?? 1e-4; c.epochs = epochs ?? 100
            c.trainSamples = samples ?? 160; c.validationSamples = validationSamples ?? 32
            c.decayEpochs = unet.decayEpochs; c.decayFactor = unet.decayFactor; c.seed = seed; c.clipNegative = unet.clipNegative
            c.inputSkip = unet.inputSkip || deconvolution
            c.biasFree = unet.biasFree
            c.tiedUpsampling = unet.tiedUpsampling
            guard unet.brightnessBoost >= 1, unet.brightnessBoost.isFinite else { throw ValidationError("--brightness-boost must be >= 1") }
            c.brightnessBoost = unet.brightnessBoost
            guard unet.recorrupt >= 0, unet.recorrupt.isFinite else { throw ValidationError("--recorrupt must be >= 0") }
            guard unet.recorrupt == 0 || !deconvolution else { throw ValidationError("--recorrupt is for the astro-unet denoiser") }
            c.recorruption = unet.recorrupt
            if unet.lowPassLoss != 0 {
                _ = try LowPassLoss(weight: Float(unet.lowPassLoss), sigma: unet.lowPassSigma)   // its ranges, before any work
                c.lowPassLossWeight = unet.lowPassLoss
                c.lowPassLossSigma = unet.lowPassSigma
            }
            if !deconvolution {
                guard let n = Normalization.Kind(rawValue: unet.normalization), n == .skyMAD || n == .skyVST else {
                    throw ValidationError("--normalization must be sky_mad or sky_vst")
                }
                c.normalization = n
            }
            if recipe == "deconv-unet" {
                guard let u = DenoiserConfig.LossUnits(rawValue: unet.lossUnits), u != .wiener else { throw ValidationError("--loss-units must be peak or network") }
                c.lossUnits = u
            }
            guard let l = Loss(rawValue: loss ?? (deconvolution ? "mse" : "l1")) else { throw ValidationError("--loss must be mse or l1") }
            guard let i = Initialization(rawValue: initialization ?? "he") else { throw ValidationError("--initialization must be glorot or he") }
            guard c.batchSize > 0, c.trainSamples > 0, c.validationSamples > 0, c.epochs > 0 else { throw ValidationError("batch, samples, validation samples and epochs must be positive") }
            guard optimizer == "sgd" || optimizer == "adam" else { throw ValidationError("--optimizer: astro-unet trains with Adam") }
            c.loss = l; c.initialization = i
            session = deconvolution
                ? try DenoiserSession(config: c, trainingImages: trainImages, validationImages: valImages, threads: nThreads)
                : try DenoiserSession(config: c, training: training, validation: validation, threads: nThreads)
            if let p = unet.initWeights {
                let source = try ModelReader(path: p).model()
                let crc = (try? StreamingRestore.fileChecksum(p)).map(checksumString) ?? "?"
                try session.initialise(from: source, label: "\((p as NSString).lastPathComponent) (\(source.name), crc32c \(crc))")
                if !quiet { print("starting from the weights of \(p)") }
            }
        }
        let c = session.config
        if !quiet {
            let what = c.psfFamily.map { "PSF family \($0), Wiener context \(c.wienerContext), loss relative to the Wiener step's" }
                ?? c.degradation.map { "psf \($0.psfSpec.exactDescription), noise \($0.noise)" } ?? "ratios \(c.ratios)"
            print("training \(c.recipe) \(c.widths.map(String.init).joined(separator: "-")) on \(deconvolution ? trainImages.count : trainPaths.count) images, validating on \(valPaths.count): "
                  + "\(c.trainSamples) crops of \(c.cropSize)^2/epoch, batch \(c.batchSize), adam lr \(c.learningRate), \(what), "
                  + "\(c.loss.rawValue) loss, \(nThreads) threads, \(session.trainer.peakBytes(threads: nThreads) >> 20) MiB planned")
        }
        if finish {
            guard resume != nil, session.bestEpoch > 0 else { throw ValidationError("--finish needs --resume with a checkpoint after at least one epoch") }
            try ModelWriter.write(written(session), to: output, overwrite: overwrite)
            if latest {
                print(String(format: "wrote %@ from the checkpoint: the latest epoch, %d, validation loss %.4e (best %d: %.4e)", output,
                             session.history.count, session.history.last?.validationLoss ?? .nan, session.bestEpoch, session.bestValidation))
            } else {
                print(String(format: "wrote %@ from the checkpoint: best epoch %d of %d, validation loss %.4e", output, session.bestEpoch,
                             session.history.count, session.bestValidation))
            }
            return
        }
        guard !latest else { throw ValidationError("--latest goes with --resume CKPT --finish") }
        session.trainer.collectTimings = unet.profile
        try runTraining(session, unit: "crops", rateFormat: "%.2f", checkpointPath: ckptPath, logPath: logPath, plotPath: plotPath,
                        title: "\(c.recipe) \(c.widths.map(String.init).joined(separator: "-")): \(c.loss.rawValue) loss", quiet: quiet)
        if unet.profile { Train.printProfile(session) }
        try ModelWriter.write(written(session), to: output, overwrite: true)
        if !quiet {
            print(String(format: "wrote %@: best epoch %d of %d, validation loss %.4e; log %@, plot %@, checkpoint %@",
                         output, session.bestEpoch, session.history.count, session.bestValidation, logPath, plotPath, ckptPath))
        }
    }
}

extension Train {
    /// Where the training steps' time went: wall seconds per part of the step, then the
    /// forward/backward thread-seconds per layer (summed over samples and threads), largest first.
    static func printProfile(_ session: DenoiserSession) {
        let t = session.stepSeconds
        let wall = t.data + t.gradient + t.optimizer + t.repack
        print(String(format: "profile: %.2f s of steps: data %.1f%%, forward+backward %.1f%%, optimizer %.1f%%, weight repacking %.1f%%",
                     wall, 100 * t.data / wall, 100 * t.gradient / wall, 100 * t.optimizer / wall, 100 * t.repack / wall))
        let steps = session.trainer.timings
        let total = steps.reduce(0) { $0 + $1.seconds }
        var byPhase: [String: Double] = [:]
        for s in steps { byPhase[s.phase, default: 0] += s.seconds }
        print("profile: thread-seconds by phase: " + byPhase.sorted { $0.value > $1.value }
            .map { String(format: "%@ %.2f s (%.1f%%)", $0.key, $0.value, 100 * $0.value / max(total, 1e-12)) }.joined(separator: ", "))
        let wg = session.trainer.winogradLayers
        print("profile: Winograd " + (wg.isEmpty ? "on no layer (ASTROCNN_TRAIN_CONV=direct, or no 3x3 layer on maps of 32x32 or more)"
            : "forward on \(wg.filter { $0.forward != nil }.count) layers, data gradient on \(wg.filter { $0.dataGradient != nil }.count): "
              + wg.map(\.layer).joined(separator: ", ")))
        for s in steps.sorted(by: { $0.seconds > $1.seconds }).prefix(30) where s.seconds > 0 {
            print(String(format: "profile:   %-28@ %-16@ %8.3f s %5.1f%%", s.step, s.phase, s.seconds, 100 * s.seconds / max(total, 1e-12)))
        }
    }
}
