import Foundation
import ModelFormat
import Runtime

/// Random streams for noise simulation. Every image row draws from its own generator, seeded by
/// (seed, row), so a noise image is the same bits whatever the number of threads that make it.
public enum NoiseStreams {
    /// The generator of row `row` of a noise image drawn with `seed`.
    @inline(__always)
    public static func row(_ row: Int, seed: UInt64) -> SplitMix64 {
        var mix = SplitMix64(seed: seed ^ 0x6A09_E667_F3BC_C909)
        let a = mix.next()
        var g = SplitMix64(seed: a ^ (UInt64(truncatingIfNeeded: row) &* 0xD1B5_4A32_D192_ED03))
        _ = g.next()
        return g
    }

    /// `f(pixel, generator)` for every pixel, row y drawing from `row(y, seed:)`: the same bits
    /// for any thread count.
    public static func map(_ image: Image2D, seed: UInt64, threads: Int,
                           _ f: @escaping @Sendable (Double, inout SplitMix64) -> Double) -> Image2D {
        let (h, w) = (image.height, image.width)
        var out = [Double](repeating: 0, count: h * w)
        image.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                nonisolated(unsafe) let sp = src.baseAddress!, dp = dst.baseAddress!
                Parallel.chunks(h, threads: threads) { rows in
                    for y in rows {
                        var rng = NoiseStreams.row(y, seed: seed)
                        for x in 0..<w { dp[y * w + x] = f(sp[y * w + x], &rng) }
                    }
                }
            }
        }
        return Image2D(height: h, width: w, pixels: out)
    }

    /// A uniform deviate in [0, 1) with 53 random bits.
    @inline(__always)
    public static func uniform(_ g: inout SplitMix64) -> Double { Double(g.next() >> 11) * 0x1p-53 }

    /// A standard normal deviate (Box-Muller, one value per call: rows stay independent of how
    /// many deviates other rows use).
    @inline(__always)
    public static func normal(_ g: inout SplitMix64) -> Double {
        var u = 0.0
        repeat { u = uniform(&g) } while u <= 0
        let v = uniform(&g)
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }

    /// A Poisson deviate of mean `lambda` (lambda <= 0 gives 0): inversion by sequential search
    /// below 10, Hörmann's transformed rejection with squeeze (PTRS, 1993) above: both exact.
    public static func poisson(_ lambda: Double, _ g: inout SplitMix64) -> Double {
        guard lambda > 0 else { return 0 }
        if lambda < 10 {
            let u = uniform(&g)
            var p = exp(-lambda), cdf = p, k = 0.0
            while u > cdf && k < 1000 {
                k += 1
                p *= lambda / k
                cdf += p
            }
            return k
        }
        let slam = lambda.squareRoot(), loglam = log(lambda)
        let b = 0.931 + 2.53 * slam
        let a = -0.059 + 0.02483 * b
        let invAlpha = 1.1239 + 1.1328 / (b - 3.4)
        let vr = 0.9277 - 3.6224 / (b - 2)
        while true {
            let u = uniform(&g) - 0.5
            let v = uniform(&g)
            let us = 0.5 - abs(u)
            let k = ((2 * a / us + b) * u + lambda + 0.43).rounded(.down)
            if us >= 0.07 && v <= vr { return k }
            if k < 0 || (us < 0.013 && v > us) { continue }
            if log(v) + log(invAlpha) - log(a / (us * us) + b) <= -lambda + k * loglam - lgamma(k + 1) { return k }
        }
    }
}

/// The Astro U-net paper's short-exposure model (Vojtekova et al. 2020, eq. 1-4), made general.
///
/// The real image is the long exposure, in ADU (or any unit: `gain` is electrons per unit). With
/// exposure-time ratio r = t_long / t_short, each pixel's electrons in the short exposure are
///
///     e_short = Poisson((I + sky) * gain / r) + N(0, sqrt(dark * t_long / r)) + N(0, RON)
///
/// and the result is mapped back to the input's units: scaled to the long exposure's level,
/// `e_short * r / gain - sky` (so it compares directly with the input: same flux scale, r times
/// the photon variance), or, with `outputScale = .short`, as the short exposure itself would have
/// recorded it, `e_short / gain - sky / r`. `sky` is a sky level that was subtracted from the image
/// (its photons still count for the noise; ground images that keep their sky need 0; a negative
/// value takes a pedestal without photons, a bias level, out of the count);
/// the dark current is taken as calibrated out (zero mean, its Poisson noise in the Gaussian
/// approximation, as in the paper); `clipNegative` clips negative (I + sky) to 0 before the
/// Poisson draw, as the paper did; without it a negative expectation is kept as it is with no
/// photon noise (it carries no photons). Invalid (NaN) pixels stay NaN.
public struct ExposureNoise: Equatable, Sendable {
    public enum Scale: String, Sendable, CaseIterable { case long, short }

    public var ratio: Double
    /// Electrons per image unit.
    public var gain: Double
    /// Read-out noise, electrons RMS per pixel.
    public var readNoise: Double
    /// Dark current, electrons per pixel per second.
    public var darkRate: Double
    /// Exposure time of the long (input) image, seconds: only the dark noise needs it.
    public var exposureTime: Double
    /// Sky level subtracted from the image, image units.
    public var sky: Double
    public var clipNegative: Bool
    public var outputScale: Scale

    public init(ratio: Double, gain: Double, readNoise: Double = 0, darkRate: Double = 0, exposureTime: Double = 0,
                sky: Double = 0, clipNegative: Bool = false, outputScale: Scale = .long) {
        (self.ratio, self.gain, self.readNoise, self.darkRate) = (ratio, gain, readNoise, darkRate)
        (self.exposureTime, self.sky, self.clipNegative, self.outputScale) = (exposureTime, sky, clipNegative, outputScale)
    }

    /// Why the parameters cannot be used, or nil.
    public var problem: String? {
        if !(ratio >= 1) || !ratio.isFinite { return "the exposure-time ratio must be a finite number >= 1 (got \(ratio))" }
        if !(gain > 0) || !gain.isFinite { return "the gain must be a positive number of electrons per image unit (got \(gain))" }
        if !(readNoise >= 0) || !readNoise.isFinite { return "the read noise must be >= 0 electrons (got \(readNoise))" }
        if !(darkRate >= 0) || !darkRate.isFinite { return "the dark current must be >= 0 (got \(darkRate))" }
        if !(exposureTime >= 0) || !exposureTime.isFinite { return "the exposure time must be >= 0 s (got \(exposureTime))" }
        if darkRate > 0 && exposureTime == 0 { return "a dark current needs the exposure time (EXPTIME or --exptime)" }
        if !sky.isFinite { return "the sky level must be finite" }
        return nil
    }

    /// Variance in electrons of the Gaussian part (dark + read-out) of one short-exposure pixel.
    public var gaussianVarianceElectrons: Double { darkRate * exposureTime / ratio + readNoise * readNoise }

    /// The expected value and variance of an output pixel for an input value (the test oracle,
    /// and what a noise-aware method needs).
    public func moments(of value: Double) -> (mean: Double, variance: Double) {
        var level = value + sky
        if clipNegative { level = max(level, 0) }
        let lambda = max(level, 0) * gain / ratio
        let eMean = level * gain / ratio            // a negative expectation is kept as is
        let eVar = lambda + gaussianVarianceElectrons
        let scale = 1 / outputGain
        let offset = outputScale == .long ? sky : sky / ratio
        return (eMean * scale - offset, eVar * scale * scale)
    }

    /// Electrons per unit of the simulated short exposure (its gain): gain / ratio on the long
    /// exposure's flux scale, the gain itself on the short one's.
    public var outputGain: Double { outputScale == .long ? gain / ratio : gain }

    /// One pixel of the short exposure of a pixel of value `v` (NaN stays NaN), drawn from `rng`.
    @inline(__always)
    public func sample(_ v: Double, _ rng: inout SplitMix64) -> Double {
        if v.isNaN { return .nan }
        var level = v + sky
        if clipNegative { level = max(level, 0) }
        let mean = level * gain / ratio
        var e = mean > 0 ? NoiseStreams.poisson(mean, &rng) : mean
        let sigmaG = gaussianVarianceElectrons.squareRoot()
        if sigmaG > 0 { e += sigmaG * NoiseStreams.normal(&rng) }
        return outputScale == .long ? e * ratio / gain - sky : e / gain - sky / ratio
    }

    /// The simulated short exposure of `image` (NaN pixels stay NaN), drawn from `seed`.
    public func apply(_ image: Image2D, seed: UInt64, threads: Int = 1) -> Image2D {
        let model = self
        return NoiseStreams.map(image, seed: seed, threads: threads) { model.sample($0, &$1) }
    }

    /// A one-line description for headers and logs.
    public var description: String {
        var d = "poisson(ratio=\(fmt(ratio)), gain=\(fmt(gain)) e-/unit, read noise=\(fmt(readNoise)) e-"
        if darkRate > 0 { d += ", dark=\(fmt(darkRate * 3600)) e-/px/h over \(fmt(exposureTime)) s" }
        if sky != 0 { d += ", sky=\(fmt(sky))" }
        if clipNegative { d += ", negatives clipped" }
        return d + ", \(outputScale == .long ? "scaled to the long exposure" : "short-exposure level"))"
    }
}

/// White Gaussian noise of a fixed standard deviation, or of a multiple of the image's own sky
/// noise (the robust estimate of `SkyStatistics`).
public struct GaussianNoise: Equatable, Sendable {
    public enum Level: Equatable, Sendable {
        case absolute(Double)
        case skyMultiple(Double)
    }
    public var level: Level
    public init(_ level: Level) { self.level = level }

    /// The standard deviation used on `image`.
    public func sigma(for image: Image2D) -> Double {
        switch level {
        case .absolute(let s): return s
        case .skyMultiple(let k): return k * SkyStatistics.estimate(image).sigma
        }
    }

    /// `image` plus N(0, sigma^2) per valid pixel, drawn from `seed` (rows independent).
    public func apply(_ image: Image2D, seed: UInt64, threads: Int = 1) -> Image2D {
        let sigma = self.sigma(for: image)
        return NoiseStreams.map(image, seed: seed, threads: threads) { v, rng in v.isNaN ? .nan : v + sigma * NoiseStreams.normal(&rng) }
    }

    public var description: String {
        switch level {
        case .absolute(let s): return "gaussian(sigma=\(fmt(s)))"
        case .skyMultiple(let k): return "gaussian(sigma=\(fmt(k)) x sky noise)"
        }
    }
}

/// Robust sky level and noise of an image (`RobustSky` of the runtime, the same rule as the
/// `sky_mad` normalisation).
public struct SkyStatistics: Equatable, Sendable {
    public var median: Double
    public var sigma: Double
    public var pixels: Int

    public init(median: Double, sigma: Double, pixels: Int) {
        (self.median, self.sigma, self.pixels) = (median, sigma, pixels)
    }

    public static func estimate(_ image: Image2D, mask: [Bool]? = nil, clip: Double = 3, rounds: Int = 10) -> SkyStatistics {
        let r = RobustSky.estimate(count: image.count, clip: clip, rounds: rounds) { i in mask?[i] == true ? nil : image.pixels[i] }
        return SkyStatistics(median: r.median, sigma: r.sigma, pixels: r.pixels)
    }

    /// Median of `v` (reorders it): the mean of the two middle values for an even count.
    public static func median(_ v: inout [Double]) -> Double { RobustSky.median(&v) }
}

@inline(__always) func fmt(_ v: Double) -> String {
    if v == v.rounded() && abs(v) < 1e9 { return String(Int(v)) }
    return String(format: "%.6g", v)
}

extension ExposureNoise {
    /// The sky level (image units) that was subtracted from an image whose sky noise is `sigma`
    /// and whose remaining sky level is `median`: the level whose photon noise plus the read
    /// noise gives the measured noise, (sigma * gain)^2 = (median + sky) * gain + RON^2. It is
    /// negative when the image keeps a pedestal (a bias level) that carries no photons: the
    /// pedestal is then taken out of the photon count.
    public static func impliedSky(sigma: Double, median: Double, gain: Double, readNoise: Double) -> Double {
        let electrons = max(0, (sigma * gain) * (sigma * gain) - readNoise * readNoise)
        return electrons / gain - median
    }
}

extension ExposureNoise {
    /// The subtracted sky level to simulate an image's short exposure with, and how it was found:
    /// a header value (SKYLEVEL...) when the image's own median shows that level was subtracted
    /// (median below a tenth of it), else the level the measured sky noise implies
    /// (`impliedSky`), which also covers images that keep their sky or whose header is stale.
    public static func subtractedSky(header: ExposureKeywords, stats: SkyStatistics, gain: Double, readNoise: Double) -> (Double, String) {
        if let hs = header.sky, hs.value > 0, stats.median < 0.1 * hs.value {
            return (hs.value, "\(hs.source) \(fmt(hs.value)), subtracted (median \(String(format: "%.4g", stats.median)))")
        }
        let s = impliedSky(sigma: stats.sigma, median: stats.median, gain: gain, readNoise: readNoise)
        return (s, String(format: "%.4g implied by the sky noise %.4g at median %.4g", s, stats.sigma, stats.median))
    }
}

extension ExposureNoise {
    /// For an image without a known gain: the gain (electrons per unit) and subtracted sky (units)
    /// under which its measured sky noise `sigma` is the photon noise of a sky of `electrons`
    /// electrons per pixel (a sky-limited exposure): sigma * gain = sqrt(electrons), so
    /// gain = sqrt(electrons) / sigma, and the sky in image units is electrons / gain less the
    /// level still in the image (`median`; negative for an image that keeps a pedestal).
    public static func skyLimited(sigma: Double, median: Double, electrons: Double) -> (gain: Double, sky: Double) {
        let g = electrons.squareRoot() / sigma
        return (g, electrons / g - median)
    }
}
