import Foundation
import ModelFormat
import Runtime
import Imaging

/// One restoration method of the comparison.
public enum Method: Sendable, Equatable {
    case none
    case wiener(lambdas: [Double])
    /// Wiener with lambda by generalised cross-validation on the image (no truth): the runtime's
    /// own Wiener step (`WienerDeconvolution`), what a PSF-aware model starts from.
    case wienerGCV
    /// Wiener with the image lambda `restore` took before the risk rule (the larger of GCV's and
    /// the discrepancy principle's, the noise from the image; no truth).
    case wienerDP
    /// Wiener with lambda by the smallest estimated mean squared error (`WienerDeconvolution`'s
    /// risk rule, the noise from the image; no truth): the runtime's image lambda for noise_mad
    /// models, a PSF-aware model's input.
    case wienerRisk
    case richardsonLucy(maxIterations: Int)
    case proxTV(mus: [Double], iterations: Int)
    /// A CNN from an `.acnn` file, run by the runtime on the degraded image (truth normalised to
    /// max 1): as it is for the flamary models, through the model's own sky_mad rule for U-nets.
    case network(name: String, path: String)

    /// A model name with this suffix (`psf+dc`) runs the model with the runtime's data-consistency
    /// correction (`DataConsistency`, `restore --data-consistency`).
    public static let dataConsistencySuffix = "+dc"
    /// After `+dc` (`psf+dc+pos`): the correction holds the output to at least 0, the truth's
    /// zero (`restore --data-consistency --lower-bound 0`).
    public static let lowerBoundSuffix = "+pos"

    public var name: String {
        switch self {
        case .none: return "none"
        case .wiener: return "wiener"
        case .wienerGCV: return "wiener-gcv"
        case .wienerDP: return "wiener-dp"
        case .wienerRisk: return "wiener-risk"
        case .richardsonLucy: return "rl"
        case .proxTV: return "tv"
        case .network(let n, _): return n
        }
    }
}

/// A method's result on one image.
public struct MethodResult: Sendable {
    public var image: String
    public var method: String
    public var psnr: Double
    public var ssim: Double
    public var kl: Double
    public var seconds: Double
    public var parameters: String
    public var restored: Image2D

    public init(image: String, method: String, psnr: Double, ssim: Double, kl: Double, seconds: Double, parameters: String, restored: Image2D) {
        (self.image, self.method, self.psnr, self.ssim, self.kl) = (image, method, psnr, ssim, kl)
        (self.seconds, self.parameters, self.restored) = (seconds, parameters, restored)
    }
}

/// A degradation that cannot be applied to an image.
public struct EvaluationError: Error, CustomStringConvertible {
    public let description: String
}

/// Flamary 2017's protocol: degrade each image (the trainer's `Degradation`, one seed per
/// image), run every method, score against the truth with the paper's PSNR (max 1, 32-pixel
/// crop), SSIM (data range 1, same crop) and the histogram KL divergence.
public struct Evaluator {
    public var degradation = Degradation()
    public var seed: UInt64 = 1
    public var threads = ParallelFor.availableCores
    public var crop = 32
    /// Networks run as a self-ensemble of this many symmetries of the square (`SelfEnsemble`).
    public var ensemble = 1

    public init() {}

    /// The truth and observation of image `index` (seed + index; a noise range is drawn once per
    /// image from that seed). The classical methods use the same PSF kernel, `degradation.psf`.
    public func degrade(_ image: SourceImage, index: Int) throws -> (truth: Image2D, observed: Image2D) {
        if let why = degradation.problem(raw: image.raw, name: image.name) {
            throw EvaluationError(description: why)
        }
        return degradation.degrade(image.raw, seed: seed &+ UInt64(index), threads: threads)
    }

    /// The noise level image `index` is degraded with (for logs and the no-truth residual).
    public func noiseLevel(_ image: SourceImage, index: Int) -> NoiseLevel {
        degradation.level(seed: seed &+ UInt64(index), skySigma: degradation.referenceSigma(raw: image.raw))
    }

    public func run(_ method: Method, observed: Image2D, truth: Image2D?) throws -> (Image2D, String) {
        let psf = degradation.psf
        switch method {
        case .none:
            return (observed, "")
        case .wiener(let lambdas):
            if let t = truth, lambdas.count > 1 {
                let r = Deconvolution.wienerBest(observed, truth: t, psf: psf, lambdas: lambdas, threads: threads)
                return (r.image, "lambda=\(r.lambda)")
            }
            return (Deconvolution.wiener(observed, psf: psf, lambda: lambdas[0], boundary: .reflect, threads: threads), "lambda=\(lambdas[0])")
        case .wienerGCV:
            return try runtimeWiener(observed, psf: psf, noiseVariance: nil)
        case .wienerDP, .wienerRisk:
            // The noise as restore measures it for noise_mad models.
            let px = observed.pixels.map { Float($0) }
            let nm = Normalization.fit(.noiseMAD, pixels: px, invalid: [Bool](repeating: false, count: px.count), width: observed.width)
            return try runtimeWiener(observed, psf: psf, noiseVariance: nm.scale * nm.scale,
                                     rule: method == .wienerRisk ? .risk : .gcvOrDiscrepancy)
        case .richardsonLucy(let n):
            if let t = truth {
                let r = Deconvolution.richardsonLucyBest(observed, truth: t, psf: psf, maxIterations: n, threads: threads)
                return (r.image, "iterations=\(r.iterations)")
            }
            return (Deconvolution.richardsonLucy(observed, psf: psf, iterations: n, threads: threads), "iterations=\(n)")
        case .proxTV(let mus, let iters):
            var best: (Image2D, Double, Double)?
            for mu in (truth == nil ? [mus[0]] : mus) {
                let x = Deconvolution.proxTV(observed, psf: psf, mu: mu, iterations: iters, threads: threads)
                let p = truth.map { Metrics.paperPSNR($0, x) } ?? 0
                if best == nil || p > best!.2 { best = (x, mu, p) }
            }
            return (best!.0, "mu=\(best!.1),iterations=\(iters)")
        case .network(let name, let path):
            let net = try Network(path: path)
            if net.wienerContext != nil {
                // A PSF-aware model deconvolves with the degradation's own PSF, given at run time.
                try net.bind(psf: PSFKernel(height: psf.height, width: psf.width, values: psf.pixels),
                             description: degradation.psfSpec.exactDescription)
            }
            let fits = FITSImage(width: observed.width, height: observed.height, pixels: observed.pixels.map { Float($0) })
            var opts = Restoration.Options(threads: threads)
            // A max-normalised model (clip_max) gets the degraded image as it is, already in its
            // units; a sky_mad or noise_mad model normalises it by its own sky and noise and inverts that, as restore does.
            opts.normalization = net.normalization == .clipMax ? Normalization.Kind.none : net.normalization
            // NAME+dc: the runtime's data-consistency correction after the network (restore --data-consistency).
            // NAME+dc+pos: the same with the truth's zero held (the degraded images' truths are at
            // least 0, which Richardson-Lucy and Prox-TV assume too).
            opts.dataConsistency = name.hasSuffix(Method.dataConsistencySuffix) || name.hasSuffix(Method.dataConsistencySuffix + Method.lowerBoundSuffix)
            if name.hasSuffix(Method.dataConsistencySuffix + Method.lowerBoundSuffix) { opts.lowerBound = 0 }
            // 'Valid' models (the Flamary 3-CNN) cannot be turned: they run once.
            opts.ensemble = (try? SelfEnsemble.check(net, count: ensemble)) != nil ? ensemble : 1
            let (px, report) = try Restoration.restore(fits, network: net, options: opts)
            return (Image2D(height: observed.height, width: observed.width, pixels: px.map(Double.init)),
                    "model=\((path as NSString).lastPathComponent)" + (report.dataConsistency.map { ",dc=\($0.keyword)" } ?? "")
                        + (opts.ensemble > 1 ? ",ensemble=\(opts.ensemble)" : ""))
        }
    }

    /// The runtime's Wiener step on the whole image with the lambda `restore` chooses on its
    /// central square (`WienerDeconvolution.imageLambda`; with a noise variance, the larger of
    /// GCV's and the discrepancy principle's, or `rule`).
    func runtimeWiener(_ observed: Image2D, psf: Image2D, noiseVariance: Double?,
                       rule: WienerDeconvolution.NoiseRule = .gcvOrDiscrepancy) throws -> (Image2D, String) {
        let k = try PSFKernel(height: psf.height, width: psf.width, values: psf.pixels)
        let px = observed.pixels.map { Float($0) }
        let r = WienerDeconvolution.lambdaRegion(height: observed.height, width: observed.width)
        var window = [Float]()
        for y in r.rows { for x in r.columns { window.append(px[y * observed.width + x]) } }
        let lambda = WienerDeconvolution.imageLambda(window: window, invalid: [Bool](repeating: false, count: window.count),
                                                     height: r.rows.count, width: r.columns.count, psf: k, noiseVariance: noiseVariance,
                                                     noiseRule: rule, threads: threads)
        let out = WienerDeconvolution.apply(px, height: observed.height, width: observed.width, psf: k, lambda: lambda, threads: threads).image
        return (Image2D(height: observed.height, width: observed.width, pixels: out.map(Double.init)), "lambda=\(lambda)")
    }

    /// Scores `estimate` against `truth` (paper conventions).
    public func score(_ truth: Image2D, _ estimate: Image2D) -> (psnr: Double, ssim: Double, kl: Double) {
        let inner = { (img: Image2D) in img.crop(y: crop, x: crop, height: img.height - 2 * crop, width: img.width - 2 * crop) }
        return (Metrics.psnr(truth, estimate, dataRange: 1, crop: crop),
                Metrics.ssim(inner(truth), inner(estimate), dataRange: 1),
                Metrics.klDivergence(inner(truth), inner(estimate)))
    }
}
