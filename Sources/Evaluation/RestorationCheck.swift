import Foundation
import Imaging
import Runtime

/// Checks of a deconvolved image where no truth exists (`astrocnn check`, `restore --check`):
///
/// - **Data fit.** The output blurred again by the PSF must reproduce the input within its noise:
///   the residual input - PSF * output, in units of the input's pixel noise sigma (measured from
///   second differences, as `noise_mad`), gives a reduced chi-square (the mean of the squared
///   normalised residuals) and a robust one (their median / 0.4549, the median of chi-square with
///   one degree of freedom: insensitive to the photon noise of bright stars, which exceeds the sky
///   noise). Near 1: the output explains the data down to the noise. Well above 1: flux lost or
///   invented (over-smoothing, artefacts); well below 1: the noise itself was deconvolved
///   (amplified noise fits the data too well).
/// - **Checkerboard test.** Period-2 patterns (the checkerboard and stripes that 2x2 transposed
///   convolutions leave) put their power on the Nyquist lines of the spectrum, where a real
///   scene's spectrum, sharp or not, falls smoothly. The power there relative to the ring just
///   inside, the output's over the input's (`nyquistRatio`), must not exceed 2.
///
/// Pixels within the PSF's half-size of the border or of an invalid pixel are left out of the fit.
public struct RestorationCheck: Sendable, CustomStringConvertible {
    public var reducedChiSquare: Double
    public var robustChiSquare: Double
    /// The reduced chi-square over the source pixels only (where the re-blurred output rises 5
    /// sigma above the sky): where deconvolution acts, and where leaving the input unchanged or
    /// inventing structure shows.
    public var sourceChiSquare: Double
    public var sourcePixels: Int
    public var nyquistPowerRatio: Double
    /// The input's pixel noise sigma used (image units).
    public var sigma: Double
    /// Pixels in the fit.
    public var pixels: Int

    /// Reduced chi-square within [0.7, 1.5], and on the source pixels at most 2 (where there are
    /// at least 50 of them).
    public var fitsTheData: Bool {
        reducedChiSquare >= 0.7 && reducedChiSquare <= 1.5 && (sourcePixels < 50 || sourceChiSquare <= 2)
    }
    public var noCheckerboard: Bool { nyquistPowerRatio <= 2 }
    public var passes: Bool { fitsTheData && noCheckerboard }

    public var description: String {
        var s = String(format: "data fit: reduced chi-square %.3f (robust %.3f) over %d pixels, %.3f over the %d source pixels (sky noise sigma %.4g): ",
                       reducedChiSquare, robustChiSquare, pixels, sourceChiSquare, sourcePixels, sigma)
        if fitsTheData { s += "the output blurred by the PSF reproduces the input within its noise" } else if reducedChiSquare > 1.5 || sourceChiSquare > 2 {
            s += "the output blurred by the PSF does NOT reproduce the input (flux lost or invented)"
        } else {
            s += "the residual is smaller than the noise: the noise itself was deconvolved (amplified)"
        }
        s += String(format: "\ncheckerboard test: power at period 2 against the ring inside Nyquist is %.2f x the input's: %@", nyquistPowerRatio,
                    noCheckerboard ? "no period-2 excess" : "EXCESS power at period 2 (checkerboard or stripe artefacts)")
        return s
    }

    public enum Failure: Error, CustomStringConvertible {
        case mismatch(String)
        public var description: String { switch self { case .mismatch(let s): return s } }
    }

    /// `input` and `restored` in the same units and shape; `invalid` marks masked input pixels
    /// (NaN in either image counts as invalid too); `psf` normalised (sum 1), centred as
    /// `PSFSpec` kernels are; `sigma` overrides the measured pixel noise; `gain` (electrons per
    /// image unit) adds each pixel's photon noise, (re-blurred output - sky) / gain, to the sky's
    /// variance (without it every pixel is weighed by the sky noise, which overstates the misfit of
    /// bright sources).
    public static func run(input: [Float], restored: [Float], invalid: [Bool]? = nil, width w: Int, height h: Int,
                           psf: Image2D, sigma: Double? = nil, gain: Double? = nil, threads: Int = 1) throws -> RestorationCheck {
        guard input.count == w * h, restored.count == w * h else {
            throw Failure.mismatch("the input (\(input.count) pixels) and the restored image (\(restored.count)) must both be \(w)x\(h)")
        }
        var bad = [Bool](repeating: false, count: w * h)
        for i in 0..<(w * h) { bad[i] = (invalid?[i] ?? false) || !input[i].isFinite || !restored[i].isFinite }
        func ok(_ i: Int) -> Double? { bad[i] ? nil : Double(input[i]) }
        let noise = sigma ?? RobustSky.pixelNoise(secondDifferences: RobustSky.secondDifferences(count: w * h, width: w) { ok($0) })
        guard noise > 0, noise.isFinite else { throw Failure.mismatch("the input has no measurable pixel noise; give it with --sigma") }
        // Masked pixels are filled with the input's sky so the blur stays finite; their neighbourhood is left out.
        let stride = max(1, w * h / 1_000_000)
        let sky = RobustSky.estimate(count: (w * h + stride - 1) / stride) { ok($0 * stride) }.median
        var out = Image2D(height: h, width: w)
        for i in 0..<(w * h) { out.pixels[i] = bad[i] ? sky : Double(restored[i]) }
        let reblurred = LinearConvolution(kernel: psf, height: h, width: w, threads: threads).apply(out)
        let ry = psf.height / 2 + 1, rx = psf.width / 2 + 1
        // Pixels near an invalid one: dilate the mask by the PSF's half-size (separably).
        var near = bad
        var rowPass = [Bool](repeating: false, count: w * h)
        for y in 0..<h {
            var last = -1_000_000
            for x in 0..<w { if bad[y * w + x] { last = x }; if x - last <= rx { rowPass[y * w + x] = true } }
            last = 1_000_000
            for x in Swift.stride(from: w - 1, through: 0, by: -1) { if bad[y * w + x] { last = x }; if last - x <= rx { rowPass[y * w + x] = true } }
        }
        for x in 0..<w {
            var last = -1_000_000
            for y in 0..<h { if rowPass[y * w + x] { last = y }; if y - last <= ry { near[y * w + x] = true } }
            last = 1_000_000
            for y in Swift.stride(from: h - 1, through: 0, by: -1) { if rowPass[y * w + x] { last = y }; if last - y <= ry { near[y * w + x] = true } }
        }
        var chi = [Double]()
        chi.reserveCapacity(w * h)
        var sum = 0.0, sourceSum = 0.0, sources = 0
        for y in ry..<max(ry, h - ry) { for x in rx..<max(rx, w - rx) where !near[y * w + x] {
            let model = reblurred.pixels[y * w + x]
            var variance = noise * noise
            if let g = gain, g > 0 { variance += max(0, model - sky) / g }
            let r2 = (Double(input[y * w + x]) - model) * (Double(input[y * w + x]) - model) / variance
            chi.append(r2); sum += r2
            if model - sky > 5 * noise { sourceSum += r2; sources += 1 }
        } }
        guard chi.count >= 100 else { throw Failure.mismatch("fewer than 100 pixels lie away from the border and the masked pixels; the image is too small for the check") }
        let n = chi.count
        chi.sort()
        let median = chi[n / 2]
        let ratio = nyquistRatio(input: input, restored: out.pixels, bad: bad, width: w, height: h, sky: sky, threads: threads)
        return RestorationCheck(reducedChiSquare: sum / Double(n), robustChiSquare: median / 0.45493642311957283,
                                sourceChiSquare: sources > 0 ? sourceSum / Double(sources) : 0, sourcePixels: sources,
                                nyquistPowerRatio: ratio, sigma: noise, pixels: n)
    }

    /// The checkerboard statistic: on the central square of even 2-3-5-smooth side (at most
    /// 1024), Hann-windowed, mean removed, the mean power at the period-2 frequencies ((1/2, 1/2),
    /// where the checkerboard of 2x2 transposed convolutions puts its power, or (1/2, 0) and
    /// (0, 1/2), their stripes; within 2.5 bins) over the mean power of the ring
    /// 0.35 <= max(|fx|, |fy|) < 0.45; the output's over the input's. A spectrum that falls
    /// smoothly towards Nyquist gives at most about 1; a period-2 artefact gives far more.
    static func nyquistRatio(input: [Float], restored: [Double], bad: [Bool], width w: Int, height h: Int, sky: Double, threads: Int) -> Double {
        var n = 8
        for c in Swift.stride(from: min(1024, min(w, h)) & ~1, through: 8, by: -2) where FFTPlan.fastSize(atLeast: c) == c { n = c; break }
        let y0 = (h - n) / 2, x0 = (w - n) / 2
        let edge = 0.5 - 1.5 / Double(n)
        func power(_ value: (Int) -> Double) -> Double {
            var mean = 0.0
            for y in 0..<n { for x in 0..<n { mean += value((y0 + y) * w + x0 + x) } }
            mean /= Double(n * n)
            var c = ComplexImage(height: n, width: n)
            for y in 0..<n {
                let wy = 0.5 - 0.5 * cos(2 * Double.pi * (Double(y) + 0.5) / Double(n))
                for x in 0..<n {
                    let wx = 0.5 - 0.5 * cos(2 * Double.pi * (Double(x) + 0.5) / Double(n))
                    c.re[y * n + x] = (value((y0 + y) * w + x0 + x) - mean) * wy * wx
                }
            }
            c.transform(inverse: false, threads: threads)
            // The three period-2 points: (1/2, 1/2) the checkerboard, (1/2, 0) and (0, 1/2) the
            // stripes, each with the two bins around it the window spreads it over.
            let near = 2.5 / Double(n)
            var corner = 0.0, stripes = 0.0, ring = 0.0, nc = 0, ns = 0, nr = 0
            for v in 0..<n { for u in 0..<n {
                let fy = abs(Double(v <= n / 2 ? v : v - n) / Double(n)), fx = abs(Double(u <= n / 2 ? u : u - n) / Double(n))
                let p = c.re[v * n + u] * c.re[v * n + u] + c.im[v * n + u] * c.im[v * n + u]
                let hx = fx >= 0.5 - near, hy = fy >= 0.5 - near
                if hx && hy { corner += p; nc += 1 } else if (hx && fy <= near) || (hy && fx <= near) { stripes += p; ns += 1 } else if max(fx, fy) >= 0.35 && max(fx, fy) < 0.45 { ring += p; nr += 1 }
            } }
            let r = ring / Double(max(1, nr))
            return r > 0 ? max(corner / Double(max(1, nc)), stripes / Double(max(1, ns))) / r : .infinity
        }
        let pin = power { bad[$0] ? sky : Double(input[$0]) }
        let pout = power { restored[$0] }
        return pin > 0 ? pout / pin : .infinity
    }
}
