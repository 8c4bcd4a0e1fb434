import Foundation
import ModelFormat
import Runtime

/// Gaussian deviates from SplitMix64 by the Box-Muller transform (both values used).
public struct GaussianStream {
    var rng: SplitMix64
    var spare: Double?
    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }
    public mutating func next() -> Double {
        if let s = spare { spare = nil; return s }
        var u = 0.0
        repeat { u = Double(rng.next() >> 11) * 0x1p-53 } while u <= 0
        let v = Double(rng.next() >> 11) * 0x1p-53
        let r = (-2 * log(u)).squareRoot()
        spare = r * sin(2 * Double.pi * v)
        return r * cos(2 * Double.pi * v)
    }
}

/// The noise of a degradation, in the units of the normalised truth (max 1), as named on the
/// command line and recorded in model metadata (`training.noise`):
///
/// - `gaussian:sigma=S` white Gaussian noise of standard deviation S (the paper's: 0.01);
/// - `sky:k=K` Gaussian noise of K times the image's own robust sky sigma in normalised units
///   (`Degradation.skySigma(raw:)`), so each image gets noise at its own sky level (on a frame
///   filled by nebulosity that spread is the nebula's, not the noise's);
/// - `noise:k=K` Gaussian noise of K times the image's own pixel noise in normalised units
///   (`Degradation.noiseSigma(raw:)`: the `noise_mad` rule, from second differences), which a
///   nebula does not inflate;
/// - `poisson:electrons=E[,read=R][,sky=S]` photon noise plus read noise (the short-exposure
///   model of `ExposureNoise` with ratio 1): each pixel is Poisson((v + S) * E) / E - S plus
///   N(0, (R / E)^2), where E is electrons per normalised unit, R the read noise in electrons and
///   S a subtracted sky level (normalised units) whose photons still count;
/// - `none` no noise.
///
/// Any number may be a range `LO-HI`, drawn per patch (per image in evaluation) from the sample's
/// seed: sigma and electrons log-uniformly (they are scales), k, read and sky uniformly. A
/// single value draws nothing, so `gaussian:sigma=0.01` is exactly the paper's noise.
public enum NoiseSpec: Equatable, Sendable, CustomStringConvertible {
    case gaussian(sigma: ClosedRange<Double>)
    case sky(k: ClosedRange<Double>)
    case noise(k: ClosedRange<Double>)
    case poisson(electrons: ClosedRange<Double>, read: ClosedRange<Double>, sky: ClosedRange<Double>)
    case none

    public static let paper = NoiseSpec.gaussian(sigma: 0.01...0.01)

    public static let syntax = "gaussian:sigma=S, sky:k=K, noise:k=K, poisson:electrons=E[,read=R][,sky=S] or none (any number may be a range LO-HI)"

    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: .whitespaces)
        let lower = t.lowercased()
        if lower == "none" { self = .none; return }
        func fail(_ why: String) -> PSFSpec.ParseError { PSFSpec.ParseError(description: "noise '\(text)': \(why)") }
        guard let colon = lower.firstIndex(of: ":") else {
            throw PSFSpec.ParseError(description: "unknown noise '\(text)': use \(NoiseSpec.syntax)")
        }
        let kind = String(lower[..<colon])
        let allowed: [String: [String]] = ["gaussian": ["sigma"], "sky": ["k"], "noise": ["k"], "poisson": ["electrons", "read", "sky"]]
        guard let names = allowed[kind] else { throw PSFSpec.ParseError(description: "unknown noise '\(text)': use \(NoiseSpec.syntax)") }
        var values: [String: ClosedRange<Double>] = [:]
        for part in lower[lower.index(after: colon)...].split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2 else { throw fail("'\(part)' is not NAME=VALUE or NAME=LO-HI") }
            guard names.contains(kv[0]) else { throw fail("\(kind) takes \(names.joined(separator: ", ")), not '\(kv[0])'") }
            guard values[kv[0]] == nil else { throw fail("\(kv[0]) is given twice") }
            guard let r = NoiseSpec.range(kv[1]) else { throw fail("\(kv[0])=\(kv[1]) is not a number or a range LO-HI of finite numbers with LO <= HI") }
            values[kv[0]] = r
        }
        switch kind {
        case "gaussian":
            guard let s = values["sigma"] else { throw fail("gaussian needs sigma=S (normalised units, the paper's 0.01)") }
            guard s.lowerBound >= 0 else { throw fail("sigma must be >= 0") }
            guard s.lowerBound > 0 || s.lowerBound == s.upperBound else { throw fail("a sigma range is drawn log-uniformly: its low end must be > 0") }
            self = .gaussian(sigma: s)
        case "sky":
            guard let k = values["k"] else { throw fail("sky needs k=K (a multiple of the image's sky noise)") }
            guard k.lowerBound >= 0 else { throw fail("k must be >= 0") }
            self = .sky(k: k)
        case "noise":
            guard let k = values["k"] else { throw fail("noise needs k=K (a multiple of the image's own pixel noise)") }
            guard k.lowerBound >= 0 else { throw fail("k must be >= 0") }
            self = .noise(k: k)
        default:
            guard let e = values["electrons"] else { throw fail("poisson needs electrons=E (electrons per normalised unit)") }
            guard e.lowerBound > 0 else { throw fail("electrons must be > 0") }
            let read = values["read"] ?? 0...0
            guard read.lowerBound >= 0 else { throw fail("read must be >= 0 electrons") }
            let sky = values["sky"] ?? 0...0
            guard sky.lowerBound >= 0 else { throw fail("sky must be >= 0 (normalised units)") }
            self = .poisson(electrons: e, read: read, sky: sky)
        }
    }

    /// "V" or "LO-HI" (a '-' right after an exponent's 'e' belongs to the number).
    static func range(_ s: String) -> ClosedRange<Double>? {
        let chars = Array(s)
        var cut: Int?
        for i in 1..<max(1, chars.count) where chars[i] == "-" && chars[i - 1] != "e" && chars[i - 1] != "E" {
            guard cut == nil else { return nil }
            cut = i
        }
        func number(_ t: String) -> Double? {
            guard let v = Double(t.trimmingCharacters(in: .whitespaces)), v.isFinite else { return nil }
            return v
        }
        guard let c = cut else { return number(s).map { $0...$0 } }
        guard let lo = number(String(chars[..<c])), let hi = number(String(chars[(c + 1)...])), lo <= hi else { return nil }
        return lo...hi
    }

    /// Exact text of a number (integers without a decimal point, else the shortest round trip).
    static func text(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
        return "\(v)"
    }

    static func text(_ r: ClosedRange<Double>) -> String {
        r.lowerBound == r.upperBound ? text(r.lowerBound) : text(r.lowerBound) + "-" + text(r.upperBound)
    }

    /// The spec string (parses back to the same value).
    public var description: String {
        switch self {
        case .gaussian(let s): return "gaussian:sigma=\(NoiseSpec.text(s))"
        case .sky(let k): return "sky:k=\(NoiseSpec.text(k))"
        case .noise(let k): return "noise:k=\(NoiseSpec.text(k))"
        case .poisson(let e, let r, let s):
            return "poisson:electrons=\(NoiseSpec.text(e))" + (r == 0...0 ? "" : ",read=\(NoiseSpec.text(r))")
                + (s == 0...0 ? "" : ",sky=\(NoiseSpec.text(s))")
        case .none: return "none"
        }
    }

    /// Whether every value is fixed (nothing is drawn per sample).
    public var isFixed: Bool {
        switch self {
        case .gaussian(let s): return s.lowerBound == s.upperBound
        case .sky(let k), .noise(let k): return k.lowerBound == k.upperBound
        case .poisson(let e, let r, let s): return [e, r, s].allSatisfy { $0.lowerBound == $0.upperBound }
        case .none: return true
        }
    }

    /// The noise of one sample drawn with `seed`: `skySigma` is the robust sky sigma of the
    /// sample's normalised truth (only `sky` uses it). Fixed values draw nothing.
    public func level(seed: UInt64, skySigma: Double = 0) -> NoiseLevel {
        var rng = SplitMix64(seed: seed ^ 0x243F_6A88_85A3_08D3)
        func uniform(_ r: ClosedRange<Double>) -> Double {
            r.lowerBound == r.upperBound ? r.lowerBound : r.lowerBound + (r.upperBound - r.lowerBound) * NoiseStreams.uniform(&rng)
        }
        func logUniform(_ r: ClosedRange<Double>) -> Double {
            guard r.lowerBound != r.upperBound else { return r.lowerBound }
            let (a, b) = (log(r.lowerBound), log(r.upperBound))
            return min(r.upperBound, max(r.lowerBound, exp(a + (b - a) * NoiseStreams.uniform(&rng))))
        }
        switch self {
        case .gaussian(let s): return .gaussian(sigma: logUniform(s))
        case .sky(let k), .noise(let k): return .gaussian(sigma: uniform(k) * skySigma)
        case .poisson(let e, let r, let s):
            let electrons = logUniform(e)
            let read = uniform(r)
            return .poisson(electrons: electrons, read: read, sky: uniform(s))
        case .none: return .none
        }
    }
}

/// The noise of one sample, all values drawn (see `NoiseSpec.level`).
public enum NoiseLevel: Equatable, Sendable, CustomStringConvertible {
    case gaussian(sigma: Double)
    case poisson(electrons: Double, read: Double, sky: Double)
    case none

    public var description: String {
        switch self {
        case .gaussian(let s): return String(format: "gaussian sigma=%.6g", s)
        case .poisson(let e, let r, let s): return String(format: "poisson electrons=%.6g read=%.6g sky=%.6g", e, r, s)
        case .none: return "none"
        }
    }

    /// The photon + read noise model of a Poisson level (gain = electrons per normalised unit).
    public var exposure: ExposureNoise? {
        guard case .poisson(let e, let r, let s) = self else { return nil }
        return ExposureNoise(ratio: 1, gain: e, readNoise: r, sky: s)
    }

    /// `image` plus this noise drawn from `seed`. Gaussian noise is drawn in raster order from
    /// one `GaussianStream(seed:)` (the paper path, bit for bit as before); Poisson noise from
    /// per-row streams (`ExposureNoise.apply`), the same bits whatever `threads`.
    public func apply(_ image: Image2D, seed: UInt64, threads: Int = 1) -> Image2D {
        switch self {
        case .gaussian(let sigma):
            var g = GaussianStream(seed: seed)
            return image.map { $0 + sigma * g.next() }
        case .poisson(let e, let r, let s):
            return ExposureNoise(ratio: 1, gain: e, readNoise: r, sky: s).apply(image, seed: seed, threads: threads)
        case .none:
            return image
        }
    }

    /// Standard deviation of the noise at a pixel of value `v` (Poisson: photon + read).
    public func sigma(at v: Double) -> Double {
        switch self {
        case .gaussian(let s): return s
        case .poisson(let e, let r, let s): return ExposureNoise(ratio: 1, gain: e, readNoise: r, sky: s).moments(of: v).variance.squareRoot()
        case .none: return 0
        }
    }
}

/// Flamary 2017's degradation, generalised: truth = max(image, 0) / max(image); observed = truth
/// blurred by a PSF ('same' FFT convolution, `PSFSpec`; the paper's Airy 64 x 64, 5 rings by
/// default) plus noise (`NoiseSpec`; the paper's white Gaussian sigma 0.01 by default). The
/// default is bit for bit the paper path it always was.
public struct Degradation: Equatable, Sendable {
    /// The PSF as specified (`psf` is its normalised kernel).
    public private(set) var psfSpec: PSFSpec
    /// The normalised PSF kernel (a 1 x 1 delta for `none`).
    public private(set) var psf: Image2D
    public var noise: NoiseSpec

    /// A degradation with any PSF and noise (throws for a PSF file that cannot be read).
    public init(psf: PSFSpec, noise: NoiseSpec = .paper) throws {
        psfSpec = psf
        self.psf = try psf.kernel() ?? Image2D(height: 1, width: 1, pixels: [1])
        self.noise = noise
    }

    /// The paper's Airy PSF of `psfSize` and `rings` with Gaussian noise `sigma`.
    public init(psfSize: Int = 64, rings: Double = 5, sigma: Double = 0.01) {
        psfSpec = .airy(size: psfSize, rings: rings)
        psf = airyPSF(size: psfSize, rings: rings)
        noise = .gaussian(sigma: sigma...sigma)
    }

    /// Whether this is the paper's Airy PSF (any size and rings) with a fixed Gaussian sigma:
    /// the degradation the old metadata keys describe.
    public var paperSigma: Double? {
        if case .gaussian(let s) = noise, s.lowerBound == s.upperBound { return s.lowerBound }
        return nil
    }

    public var description: String {
        if case .airy(let n, let r) = psfSpec, let s = paperSigma { return "airy(size=\(n), rings=\(r)) + gaussian(sigma=\(s))" }
        return "psf \(psfSpec.exactDescription) + noise \(noise)"
    }

    /// Clips negatives and divides by the maximum (NaNs become 0).
    public static func normalise(_ image: Image2D) -> Image2D {
        let m = image.pixels.reduce(0.0) { $1.isNaN ? $0 : max($0, $1) }
        let s = m > 0 ? 1 / m : 1
        return image.map { $0.isNaN ? 0 : max($0, 0) * s }
    }

    public func blur(_ truth: Image2D, threads: Int = 1) -> Image2D {
        if psfSpec == .none { return truth }
        return LinearConvolution(kernel: psf, height: truth.height, width: truth.width, threads: threads).apply(truth)
    }

    /// Whether the noise needs the truth's sky sigma.
    public var needsSkySigma: Bool {
        switch noise {
        case .sky, .noise: return true
        default: return false
        }
    }

    /// What the image-relative noise (`sky:k`, `noise:k`) multiplies for this raw image: its sky
    /// sigma or its pixel noise, in normalised units (0 for other noise).
    public func referenceSigma(raw: Image2D) -> Double {
        switch noise {
        case .sky: return Degradation.skySigma(raw: raw)
        case .noise: return Degradation.noiseSigma(raw: raw)
        default: return 0
        }
    }

    /// The sky sigma (`sky:k`) or pixel noise (`noise:k`) of `image` in its own units.
    public func ownSigma(_ image: Image2D) -> Double {
        if case .noise = noise { return Degradation.pixelNoise(image) }
        return SkyStatistics.estimate(image).sigma
    }

    /// What `noise:k=K` multiplies: the raw image's pixel noise as the runtime's `noise_mad`
    /// measures it (1.4826 x the clipped MAD of second differences / sqrt 6, NaNs skipped; 0, not
    /// a fallback, when they have no spread), in the units of its normalised truth. Measured on
    /// the raw pixels, like `skySigma(raw:)`.
    public static func noiseSigma(raw: Image2D) -> Double {
        let m = raw.pixels.reduce(0.0) { $1.isNaN ? $0 : max($0, $1) }
        let scale = m > 0 ? 1 / m : 1
        return pixelNoise(raw) * scale
    }

    static func pixelNoise(_ image: Image2D) -> Double {
        let d = RobustSky.secondDifferences(count: image.count, width: image.width) { i in
            let v = image.pixels[i]
            return v.isFinite ? v : nil
        }
        return RobustSky.pixelNoise(secondDifferences: d)
    }

    /// What `sky:k=K` multiplies: the robust sky sigma (`SkyStatistics`: median and MAD with
    /// 3-sigma clipping, NaNs skipped) of the raw image, in the units of its normalised truth
    /// (divided by the maximum `normalise` divides by). It is measured before `normalise` clips
    /// negatives: on a sky-subtracted image the clipped truth has a median and MAD of 0 (half its
    /// sky is 0), while the raw sky still shows its noise. For an image with no negative pixels
    /// it is the robust sky sigma of the normalised truth itself.
    public static func skySigma(raw: Image2D) -> Double {
        let m = raw.pixels.reduce(0.0) { $1.isNaN ? $0 : max($0, $1) }
        let scale = m > 0 ? 1 / m : 1
        return SkyStatistics.estimate(raw).sigma * scale
    }

    /// The noise level of the image (or patch) drawn with `seed`.
    public func level(seed: UInt64, skySigma: Double = 0) -> NoiseLevel { noise.level(seed: seed, skySigma: skySigma) }

    /// Adds the noise drawn from `seed` (for `sky:k=K`, K times `skySigma`, by default the robust
    /// sky sigma of `image` itself). For the paper's noise: N(0, sigma^2) in raster order.
    public func addNoise(_ image: Image2D, seed: UInt64, skySigma: Double? = nil, threads: Int = 1) -> Image2D {
        let s = needsSkySigma ? (skySigma ?? ownSigma(image)) : 0
        return level(seed: seed, skySigma: s).apply(image, seed: seed, threads: threads)
    }

    /// (truth, observed) for a raw image; the sky-relative noise uses `skySigma(raw:)`.
    public func degrade(_ raw: Image2D, seed: UInt64, threads: Int = 1) -> (truth: Image2D, observed: Image2D) {
        let truth = Degradation.normalise(raw)
        let s = needsSkySigma ? referenceSigma(raw: raw) : nil
        return (truth, addNoise(blur(truth, threads: threads), seed: seed, skySigma: s, threads: threads))
    }

    /// Why this degradation cannot be applied to the raw image, or nil: sky-relative noise on an
    /// image without a measurable sky noise.
    public func problem(raw: Image2D, name: String) -> String? {
        guard needsSkySigma else { return nil }
        let s = referenceSigma(raw: raw)
        if !(s > 0) || !s.isFinite {
            return "\(name): no measurable sky noise (robust sigma \(s)) for --noise \(noise); use gaussian:sigma=S"
        }
        return nil
    }
}

extension PSFSpec {
    /// The spec string with every number exact (parses back to the same kernel).
    public var exactDescription: String {
        switch self {
        case .airy(let n, let r): return "airy:size=\(n),rings=\(NoiseSpec.text(r))"
        case .gaussian(let f, let n): return "gaussian:fwhm=\(NoiseSpec.text(f))" + (n.map { ",size=\($0)" } ?? "")
        case .moffat(let f, let b, let n): return "moffat:fwhm=\(NoiseSpec.text(f)),beta=\(NoiseSpec.text(b))" + (n.map { ",size=\($0)" } ?? "")
        case .file, .none: return description
        }
    }
}
