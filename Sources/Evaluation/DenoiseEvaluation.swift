import Foundation
import Imaging
import ModelFormat
import Runtime

/// A denoising method of the comparison. Classical ones sweep their parameter and keep the value
/// that scores best against the truth (the oracle the papers gave their baselines).
public enum DenoiseMethod: Sendable, Equatable {
    case none
    case gaussian(sigmas: [Double])
    case median(sizes: [Int])
    case starlet(ks: [Double], scales: [Int])
    /// A CNN from an `.acnn` file, run by the runtime with the model's own input normalisation and
    /// the exposure-time ratio as its `exposure_ratio` parameter (when it has one).
    case network(name: String, path: String)

    public var name: String {
        switch self {
        case .none: return "none"
        case .gaussian: return "gaussian"
        case .median: return "median"
        case .starlet: return "starlet"
        case .network(let n, _): return n
        }
    }
}

/// One method's scores on one image, in the layout of the Astro U-net paper's Table 2.
public struct DenoiseResult: Sendable {
    public var image: String
    public var method: String
    public var psnr: Double
    public var ssim: Double
    public var kl: Double
    public var detection: DetectionScore
    /// Mean SNR of this image's detections over that of the noisy input's (eq. 28).
    public var snrGain: Double
    public var seconds: Double
    public var parameters: String
    public var restored: Image2D
    public var catalogue: [CatalogEntry]
    /// PSNR with the reference's own noise taken out of the squared error (`Reference.noiseVariance`;
    /// nil without an estimate, infinite where the error does not exceed that noise): an estimate
    /// of the PSNR against the noiseless field.
    public var psnrReferenceNoiseRemoved: Double? = nil
    /// The same over the faint pixels only: where the reference is below its sky + 5 sigma (the
    /// sky and faint sources, what a denoiser is for; bright cores excluded).
    public var psnrFaintReferenceNoiseRemoved: Double? = nil
}

/// The Astro U-net protocol: a truth (long exposure), a noisy image (a real or simulated short
/// exposure), every method run on the noisy image and scored against the truth by PSNR (data-range
/// form: the truth's max - min), SSIM (same range), KL divergence of the histograms, and by source
/// detection (the SExtractor method of `SourceDetector`, run on each image with the same settings):
/// true-positive rate, precision, F-measure, relative flux error of the true positives and the SNR
/// gain over the noisy input.
public struct DenoiseEvaluator {
    public var detection = DetectionOptions()
    /// Cross-match radius in pixels; nil: half the truth's measured FWHM (at least 1 px, at most 5).
    public var matchRadius: Double?
    /// Pixels dropped at each border before scoring (NaN-padded borders of registered frames are
    /// excluded anyway).
    public var crop = 0
    /// The exposure-time ratio given to networks as `exposure_ratio`.
    public var exposureRatio = 2.0
    /// Electrons per unit of the noisy image being scored (its gain), passed to `sky_vst` models;
    /// nil: the model's assumption.
    public var noisyGain: Double?
    public var threads = ParallelFor.availableCores
    /// PSF-matched pixel scores (PSNR, SSIM, KL): the sharper of the input and the reference is
    /// blurred to the other's seeing before they are compared (a Gaussian of sigma
    /// sqrt(s_broad^2 - s_sharp^2), from each image's FWHM), so that a method is not rewarded for
    /// blurring a sharper exposure to a broader reference's PSF (frames of one field taken at
    /// different seeing), nor punished for keeping it. Detection is scored on the outputs as they
    /// are. With a sharper input, every method's output is blurred alike before scoring (and the
    /// classical methods' parameters are chosen on those scores); with a sharper reference, the
    /// reference is.
    public var psfMatch = false
    /// With `psfMatch`: match by a kernel fitted between the two images (`MatchingKernel`:
    /// the profiles' shapes, not just their FWHMs) instead of the Gaussian; which image is
    /// blurred is decided by the measured FWHMs as before.
    public var psfMatchFitted = false
    /// Each network is also scored with its removed component's low frequencies added back
    /// (method `NAME+flux`): output + G_sigma * (input - output), a Gaussian of this sigma in px
    /// (0: off). What a denoiser takes from a faint source is source-shaped (low frequencies);
    /// what it takes from the sky is mostly white noise, of which a Gaussian of sigma s keeps
    /// 1 / (4 pi s^2) of the variance.
    public var fluxRestoreSigma = 0.0
    /// Each network is also run on the input capped at sky + k sigma (this k; 0: off) with the
    /// excess added back to its output (method `NAME+cap`; GraXpert's and ASTERIS's denoisers do
    /// this): bright cores, where a network trained on fainter pixels errs, pass through as
    /// measured.
    public var capSigma = 0.0
    /// Estimate the reference's own noise (`referenceSky`) and score every method also
    /// with it taken out of the squared error (`DenoiseResult.psnrReferenceNoiseRemoved`): for
    /// real references (a mean of other frames), whose noise is part of every method's error.
    public var referenceNoise = false
    /// Networks run as a self-ensemble of this many symmetries of the square (`SelfEnsemble`).
    public var ensemble = 1

    public init() {}

    /// `noisy` capped at its sky + k sigma (`BrightCap`, as `denoise --cap K`), and the cap
    /// (infinite where the sky has no spread).
    public static func capping(_ noisy: Image2D, k: Double) -> (capped: Image2D, cap: Double) {
        guard let c = BrightCap.level(count: noisy.count, k: k, value: { noisy.pixels[$0] }) else { return (noisy, .infinity) }
        return (noisy.map { $0.isFinite ? min($0, c.cap) : $0 }, c.cap)
    }

    public struct Reference: Sendable {
        public var name: String
        public var truth: Image2D
        public var valid: [Bool]
        public var range: Double
        public var catalogue: [CatalogEntry]
        public var radius: Double
        public var fwhm: Double
        /// What pixel scores compare against: the truth, blurred when `psfMatch` found it sharper.
        public var pixelTruth: Image2D
        /// Gaussian sigma (px) every estimate is blurred by before its pixel scores (0: none).
        public var estimateBlur = 0.0
        /// The fitted kernel every estimate is convolved by before its pixel scores
        /// (`psfMatchFitted`, the input sharper than the reference; nil: none).
        public var estimateKernel: MatchingKernel? = nil
        /// The FWHMs of the input and of the reference measured for `psfMatch` (nan when not matched).
        public var inputFWHM = Double.nan
        public var referenceFWHM = Double.nan
        /// The variance of the reference's own noise per pixel, as the pixel scores see it (after
        /// any matching blur), nil when not estimated (`referenceNoise`).
        public var noiseVariance: Double? = nil
        /// The reference's sky level (the clipped median beside `noiseVariance`).
        public var skyLevel: Double? = nil
        /// The PSNR the noiseless field itself would score against this reference: range^2 over
        /// the reference's noise variance (nil without an estimate).
        public var psnrCeiling: Double? {
            noiseVariance.flatMap { $0 > 0 ? 10 * log10(range * range / $0) : nil }
        }
    }

    /// A real reference's sky level and the per-pixel variance of its noise: the clipped median
    /// and the square of the sky sigma (the clipped MAD of `RobustSky`, as `restore` measures the
    /// sky) over the scored pixels of the reference as scored (`pixelTruth`: blurred when PSF
    /// matching blurred it, resampled when frames were registered; so both count). Sources'
    /// photon noise is above the sky's, so the squared error this removes is a lower bound of the
    /// reference's noise: scores corrected by it are conservative. Independent of the methods'
    /// outputs, so for each method E[(estimate - reference)^2] = E[(estimate - field)^2] + this.
    public func referenceSky(_ ref: Reference) -> (level: Double, variance: Double)? {
        let (h, w) = (ref.pixelTruth.height, ref.pixelTruth.width)
        let sky = RobustSky.estimate(count: h * w) { i in
            let (y, x) = (i / w, i % w)
            guard ref.valid[i], y >= crop, x >= crop, y < h - crop, x < w - crop else { return nil }
            let v = ref.pixelTruth.pixels[i]
            return v.isFinite ? v : nil
        }
        return sky.pixels > 0 && sky.sigma.isFinite ? (sky.median, sky.sigma * sky.sigma) : nil
    }

    /// PSNR with `noiseVariance` taken out of the mean squared error (infinite when the error is
    /// not above it).
    public static func psnrRemovingNoise(_ truth: Image2D, _ estimate: Image2D, range: Double, mask: [Bool], noiseVariance v: Double) -> Double {
        let excess = Metrics.mse(truth, estimate, mask: mask) - v
        if excess.isNaN { return .nan }
        return excess > 0 ? 10 * log10(range * range / excess) : .infinity
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// The truth with its detections and the matching radius.
    public func prepare(name: String, truth: Image2D) throws -> Reference {
        let valid = truth.pixels.map { $0.isFinite }
        let finite = truth.pixels.filter { $0.isFinite }
        guard let lo = finite.min(), let hi = finite.max(), hi > lo else {
            throw Failure(description: "\(name): the reference has no valid pixels or is constant")
        }
        let found = try SourceDetector.detect(truth, mask: valid.map { !$0 }, options: detection, threads: threads)
        guard !found.sources.isEmpty else {
            throw Failure(description: "\(name): no sources detected in the reference at \(detection.threshold) sigma: the detection metrics need some (lower --thresh?)")
        }
        let cat = DenoiseEvaluator.catalogue(found)
        let fwhm = DenoiseEvaluator.fwhm(truth, background: found.background, sources: cat)
        let radius = matchRadius ?? min(5, max(1, 0.5 * (fwhm.isFinite ? fwhm : 2)))
        return Reference(name: name, truth: truth, valid: valid, range: hi - lo, catalogue: cat, radius: radius, fwhm: fwhm, pixelTruth: truth)
    }

    /// The FWHM of the Moffat profile fitted to an image's stacked stars (`PSFEstimation`: the
    /// wings count, which second moments within a few pixels miss); nil when it refuses.
    static func psfFWHM(_ img: Image2D) -> Double? {
        let px = img.pixels.map { Float($0) }
        guard let m = try? PSFEstimation.measure(pixels: px, invalid: px.map { !$0.isFinite }, width: img.width, height: img.height),
              m.fwhm.isFinite, m.fwhm > 0 else { return nil }
        return m.fwhm
    }

    /// `ref` matched to the input's seeing (`psfMatch`): both FWHMs measured from the images'
    /// stars (`psfFWHM`), then the sharper of the two is given the Gaussian blur that brings it
    /// to the other's FWHM. Unchanged when either cannot be measured.
    public func matched(_ ref: Reference, input noisy: Image2D) throws -> Reference {
        guard psfMatch, let fr = DenoiseEvaluator.psfFWHM(ref.truth), let f = DenoiseEvaluator.psfFWHM(noisy) else { return ref }
        var r = ref
        r.inputFWHM = f
        r.referenceFWHM = fr
        let (sIn, sRef) = (f / 2.3548, fr / 2.3548)
        if psfMatchFitted {
            // Half-width 1.5 FWHM of the broader image: its profile's wings fit inside.
            let h = min(12, Int((1.5 * max(f, fr)).rounded(.up)))
            if sRef > sIn {
                r.estimateKernel = try MatchingKernel.fit(sharp: noisy, broad: ref.truth, halfWidth: h)
            } else if sIn > sRef {
                r.pixelTruth = try MatchingKernel.fit(sharp: ref.truth, broad: noisy, halfWidth: h).apply(ref.truth, threads: threads)
            }
            return r
        }
        if sRef > sIn {
            r.estimateBlur = (sRef * sRef - sIn * sIn).squareRoot()
        } else if sIn > sRef {
            r.pixelTruth = Denoisers.gaussian(ref.truth, sigma: (sIn * sIn - sRef * sRef).squareRoot(), threads: threads)
        }
        return r
    }

    /// The estimate as the pixel scores see it (blurred to the reference's seeing when matched).
    func pixelEstimate(_ img: Image2D, _ ref: Reference) -> Image2D {
        if let k = ref.estimateKernel { return k.apply(img, threads: threads) }
        return ref.estimateBlur > 0 ? Denoisers.gaussian(img, sigma: ref.estimateBlur, threads: threads) : img
    }

    static func catalogue(_ r: DetectionResult) -> [CatalogEntry] {
        r.sources.map { s in
            let (xi, yi) = (min(max(Int(s.x.rounded()), 0), r.background.width - 1), min(max(Int(s.y.rounded()), 0), r.background.height - 1))
            return CatalogEntry(x: s.x, y: s.y, flux: s.flux, fluxErr: s.fluxErr, background: Double(r.background.level[yi * r.background.width + xi]))
        }
    }

    /// The median FWHM of the 30 brightest sources with a clean core: 2.3548 sqrt((Ixx + Iyy) / 2)
    /// of the background-subtracted pixels within 6 px, weighted by their positive values.
    static func fwhm(_ img: Image2D, background: Background, sources: [CatalogEntry]) -> Double {
        var values: [Double] = []
        for s in sources.sorted(by: { $0.flux > $1.flux }).prefix(30) {
            let (cx, cy) = (Int(s.x.rounded()), Int(s.y.rounded()))
            guard cx >= 6, cy >= 6, cx < img.width - 6, cy < img.height - 6 else { continue }
            var sw = 0.0, sxx = 0.0, syy = 0.0
            for dy in -6...6 { for dx in -6...6 where dx * dx + dy * dy <= 36 {
                let v = img[cy + dy, cx + dx] - Double(background.level[(cy + dy) * background.width + cx + dx])
                guard v.isFinite, v > 0 else { continue }
                let (ox, oy) = (Double(cx + dx) - s.x, Double(cy + dy) - s.y)
                sw += v; sxx += v * ox * ox; syy += v * oy * oy
            } }
            if sw > 0 { values.append(2.3548 * ((sxx + syy) / (2 * sw)).squareRoot()) }
        }
        return values.isEmpty ? .nan : SkyStatistics.median(&values)
    }

    /// Runs `method` on `noisy`; classical methods keep the parameter with the best PSNR against
    /// the truth.
    public func run(_ method: DenoiseMethod, noisy: Image2D, reference: Reference) throws -> (Image2D, String) {
        let score = { (img: Image2D) in self.psnr(img, reference) }
        switch method {
        case .none:
            return (noisy, "")
        case .gaussian(let sigmas):
            let c = Denoisers.gaussianBest(noisy, sigmas: sigmas, threads: threads, score: score)
            return (c.image, c.parameters)
        case .median(let sizes):
            let c = Denoisers.medianBest(noisy, sizes: sizes, threads: threads, score: score)
            return (c.image, c.parameters)
        case .starlet(let ks, let scales):
            let c = Denoisers.starletBest(noisy, ks: ks, scales: scales, threads: threads, score: score)
            return (c.image, c.parameters)
        case .network(_, let path):
            let net = try Network(path: path)
            let fits = FITSImage(width: noisy.width, height: noisy.height, pixels: noisy.pixels.map { Float($0) })
            var opts = Restoration.Options(threads: threads)
            opts.gain = noisyGain
            // 'Valid' models (the Flamary 3-CNN) cannot be turned: they run once.
            opts.ensemble = (try? SelfEnsemble.check(net, count: ensemble)) != nil ? ensemble : 1
            if net.runtimeParameters["exposure_ratio"] != nil { opts.parameters["exposure_ratio"] = Float(exposureRatio) }
            let (px, _) = try Restoration.restore(fits, network: net, options: opts)
            return (Image2D(height: noisy.height, width: noisy.width, pixels: px.map(Double.init)),
                    "model=\((path as NSString).lastPathComponent)" + (opts.parameters["exposure_ratio"].map { ",exposure_ratio=\($0)" } ?? "")
                        + (opts.ensemble > 1 ? ",ensemble=\(opts.ensemble)" : ""))
        }
    }

    /// The scoring mask: valid in the truth and the estimate, `crop` pixels from the border.
    func mask(_ img: Image2D, _ ref: Reference) -> [Bool] {
        var m = ref.valid
        for y in 0..<img.height { for x in 0..<img.width {
            let i = y * img.width + x
            if !img.pixels[i].isFinite || y < crop || x < crop || y >= img.height - crop || x >= img.width - crop { m[i] = false }
        } }
        return m
    }

    public func psnr(_ img: Image2D, _ ref: Reference) -> Double {
        Metrics.psnr(ref.pixelTruth, pixelEstimate(img, ref), dataRange: ref.range, mask: mask(img, ref))
    }

    /// Scores an estimate; `inputSNR` is the noisy input's mean SNR (nil when scoring the input).
    public func score(image: String, method: String, estimate: Image2D, reference ref: Reference, inputSNR: Double?,
                      seconds: Double, parameters: String) throws -> DenoiseResult {
        let m = mask(estimate, ref)
        let found = try SourceDetector.detect(estimate, mask: estimate.pixels.map { !$0.isFinite }, options: detection, threads: threads)
        // Sources outside the scored region do not count on either side.
        let inside = { (c: CatalogEntry) -> Bool in
            let (xi, yi) = (Int(c.x.rounded()), Int(c.y.rounded()))
            return xi >= 0 && yi >= 0 && xi < estimate.width && yi < estimate.height && m[yi * estimate.width + xi]
        }
        let cat = DenoiseEvaluator.catalogue(found).filter(inside)
        let truthCat = ref.catalogue.filter(inside)
        let det = DetectionScore.score(truth: truthCat, detected: cat, radius: ref.radius)
        let pixels = pixelEstimate(estimate, ref)
        let truthMasked = Image2D(height: ref.truth.height, width: ref.truth.width, pixels: zip(ref.pixelTruth.pixels, m).map { $1 ? $0 : .nan })
        let estMasked = Image2D(height: estimate.height, width: estimate.width, pixels: zip(pixels.pixels, m).map { $1 ? $0 : .nan })
        var result = DenoiseResult(image: image, method: method,
                             psnr: Metrics.psnr(ref.pixelTruth, pixels, dataRange: ref.range, mask: m),
                             ssim: Metrics.ssim(truthMasked, estMasked, dataRange: ref.range),
                             kl: Metrics.klDivergence(truthMasked, estMasked),
                             detection: det, snrGain: inputSNR.map { det.meanSNR / $0 } ?? 1,
                             seconds: seconds, parameters: parameters, restored: estimate, catalogue: cat)
        if let v = ref.noiseVariance {
            result.psnrReferenceNoiseRemoved = DenoiseEvaluator.psnrRemovingNoise(ref.pixelTruth, pixels, range: ref.range, mask: m, noiseVariance: v)
            if let sky = ref.skyLevel {
                let limit = sky + 5 * v.squareRoot()
                let faint = zip(m, ref.pixelTruth.pixels).map { $0 && $1 < limit }
                result.psnrFaintReferenceNoiseRemoved = DenoiseEvaluator.psnrRemovingNoise(ref.pixelTruth, pixels, range: ref.range, mask: faint,
                                                                                            noiseVariance: v)
            }
        }
        return result
    }

    /// Every method on one (truth, noisy) pair; the first result is the noisy input itself.
    public func evaluate(name: String, truth: Image2D, noisy: Image2D, methods: [DenoiseMethod],
                         progress: (String) -> Void = { _ in }) throws -> (reference: Reference, results: [DenoiseResult]) {
        guard truth.height == noisy.height && truth.width == noisy.width else {
            throw Failure(description: "\(name): the noisy image is \(noisy.width)x\(noisy.height) and the reference \(truth.width)x\(truth.height)")
        }
        var ref = try matched(try prepare(name: name, truth: truth), input: noisy)
        if referenceNoise, let sky = referenceSky(ref) { (ref.skyLevel, ref.noiseVariance) = (sky.level, sky.variance) }
        var results: [DenoiseResult] = []
        let input = try score(image: name, method: "none", estimate: noisy, reference: ref, inputSNR: nil, seconds: 0, parameters: "")
        results.append(input)
        progress(line(input, ref))
        for method in methods where method != .none {
            let t0 = Date()
            let (img, params) = try run(method, noisy: noisy, reference: ref)
            let r = try score(image: name, method: method.name, estimate: img, reference: ref, inputSNR: input.detection.meanSNR,
                              seconds: Date().timeIntervalSince(t0), parameters: params)
            results.append(r)
            progress(line(r, ref))
            guard case .network = method else { continue }
            var variants = [(suffix: "", image: img, seconds: r.seconds, parameters: params)]
            if capSigma > 0 {
                let t1 = Date()
                let (capped, cap) = DenoiseEvaluator.capping(noisy, k: capSigma)
                let (out, _) = try run(method, noisy: capped, reference: ref)
                var back = out
                for i in 0..<back.count where noisy.pixels[i].isFinite { back.pixels[i] += noisy.pixels[i] - capped.pixels[i] }
                let v = (suffix: "+cap", image: back, seconds: Date().timeIntervalSince(t1),
                         parameters: params + String(format: ",cap_sigma=%g,cap=%g", capSigma, cap))
                let rc = try score(image: name, method: method.name + v.suffix, estimate: v.image, reference: ref, inputSNR: input.detection.meanSNR,
                                   seconds: v.seconds, parameters: v.parameters)
                results.append(rc)
                progress(line(rc, ref))
                variants.append(v)
            }
            if fluxRestoreSigma > 0 {
                for v in variants {
                    let t1 = Date()
                    let back = try DenoiseEvaluator.restoringFlux(v.image, input: noisy, sigma: fluxRestoreSigma)
                    let rf = try score(image: name, method: method.name + v.suffix + "+flux", estimate: back, reference: ref,
                                       inputSNR: input.detection.meanSNR, seconds: v.seconds + Date().timeIntervalSince(t1),
                                       parameters: v.parameters + String(format: ",flux_sigma=%g", fluxRestoreSigma))
                    results.append(rf)
                    progress(line(rf, ref))
                }
            }
        }
        return (ref, results)
    }

    /// `output + G_sigma * (input - output)`: the runtime's `FluxRestore` (what `denoise
    /// --flux-restore SIGMA` writes), on the images as float32.
    public static func restoringFlux(_ output: Image2D, input: Image2D, sigma: Double) throws -> Image2D {
        let back = try FluxRestore.apply(restored: output.pixels.map { Float($0) }, input: input.pixels.map { Float($0) },
                                         width: output.width, height: output.height, sigma: sigma)
        return Image2D(height: output.height, width: output.width, pixels: back.map { Double($0) })
    }

    public func line(_ r: DenoiseResult, _ ref: Reference) -> String {
        String(format: "  %@ PSNR %7.2f dB  SSIM %.4f  TPR %5.1f%%  F %.3f  RFE %5.2f%%  SNR gain %.2f  %.2f s  %@",
               r.method.padding(toLength: 10, withPad: " ", startingAt: 0), r.psnr, r.ssim, 100 * r.detection.tpr,
               r.detection.fMeasure, 100 * r.detection.relativeFluxError, r.snrGain, r.seconds, r.parameters)
    }
}

/// Real short/long pairs: frames of one field registered by translation and cut to their overlap.
public enum FramePairs {
    /// The frame and the reference on the frame's grid, both cut to their overlap.
    public static func aligned(frame: Image2D, reference: Image2D, threads: Int = 1) throws -> (frame: Image2D, reference: Image2D, registration: Registration) {
        let reg = try Registration.register(frame: frame, reference: reference, threads: threads)
        let ref = reg.aligned(reference)
        let f = frame.crop(y: reg.y0, x: reg.x0, height: reg.overlapHeight, width: reg.overlapWidth)
        let r = ref.crop(y: reg.y0, x: reg.x0, height: reg.overlapHeight, width: reg.overlapWidth)
        return (f, r, reg)
    }

    /// The mean of `frames` registered onto `frames[onto]`'s grid, excluding that frame (NaN where
    /// any registered frame is undefined), with the registrations.
    public static func meanOfOthers(_ frames: [Image2D], onto: Int, threads: Int = 1) throws -> (Image2D, [Registration]) {
        let base = frames[onto]
        var sum = Image2D(height: base.height, width: base.width)
        var regs: [Registration] = []
        var n = 0
        for (k, f) in frames.enumerated() where k != onto {
            let reg = try Registration.register(frame: base, reference: f, threads: threads)
            let a = reg.aligned(f)
            for i in 0..<sum.count { sum.pixels[i] += a.pixels[i] }
            regs.append(reg); n += 1
        }
        guard n > 0 else { throw DenoiseEvaluator.Failure(description: "give at least two frames") }
        return (sum.map { $0 / Double(n) }, regs)
    }
}
