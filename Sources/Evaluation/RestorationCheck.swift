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
    /// The classical reference on the central square (at most 1024 x 1024): Wiener with the
    /// same PSF, its lambda chosen without a truth by generalised cross-validation, and the source chi-square of the output and of
    /// that Wiener on the same square. On real frames the PSF is an average over the field and
    /// bright stars are resolved far above the noise, so no restoration reaches a source
    /// chi-square of 1 there; the output is judged against what the classical method achieves.
    public var referenceLambda: Double
    public var referenceSourceChiSquare: Double
    public var centralSourceChiSquare: Double

    /// Robust chi-square within [0.7, 1.5] (the sky and faint structure are explained down to
    /// the noise), and on the source pixels of the central square at most 2, or at most 1.5
    /// times the classical reference's there (where there are at least 50 of them).
    public var fitsTheData: Bool {
        robustChiSquare >= 0.7 && robustChiSquare <= 1.5
            && (sourcePixels < 50 || centralSourceChiSquare <= max(2, 1.5 * referenceSourceChiSquare))
    }
    public var noCheckerboard: Bool { nyquistPowerRatio <= 2 }
    public var passes: Bool { fitsTheData && noCheckerboard }

    public var description: String {
        var s = String(format: "data fit: reduced chi-square %.3f (robust %.3f) over %d pixels, %.3f over the %d source pixels (sky noise sigma %.4g): ",
                       reducedChiSquare, robustChiSquare, pixels, sourceChiSquare, sourcePixels, sigma)
        s += String(format: "\n  on the central square: sources %.3f; Wiener with the same PSF (lambda %.3g by generalised cross-validation) %.3f\n  ",
                    centralSourceChiSquare, referenceLambda, referenceSourceChiSquare)
        if fitsTheData { s += "the output blurred by the PSF reproduces the input within its noise, as well as the classical reference or better" } else if robustChiSquare > 1.5 || centralSourceChiSquare > max(2, 1.5 * referenceSourceChiSquare) {
            s += "the output blurred by the PSF does NOT reproduce the input (flux lost or invented), worse than the classical reference"
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
        let full = fitStatistics(input: input, reblurred: reblurred.pixels, near: near, width: w, y: ry..<max(ry, h - ry), x: rx..<max(rx, w - rx),
                                 noise: noise, gain: gain, sky: sky)
        guard full.pixels >= 100 else { throw Failure.mismatch("fewer than 100 pixels lie away from the border and the masked pixels; the image is too small for the check") }
        // The classical reference and the output on the central square.
        let side = min(1024, w, h)
        let cy = (h - side) / 2, cx = (w - side) / 2
        var crop = Image2D(height: side, width: side)
        for y in 0..<side { for x in 0..<side { let i = (cy + y) * w + cx + x; crop.pixels[y * side + x] = bad[i] ? sky : Double(input[i]) } }
        let inner = (y: (cy + ry)..<max(cy + ry, cy + side - ry), x: (cx + rx)..<max(cx + rx, cx + side - rx))
        let central = fitStatistics(input: input, reblurred: reblurred.pixels, near: near, width: w, y: inner.y, x: inner.x,
                                    noise: noise, gain: gain, sky: sky)
        let reference = try wienerReference(crop, psf: psf, offset: (cy, cx), input: input, near: near, width: w, height: h, inner: inner,
                                        noise: noise, gain: gain, sky: sky, threads: threads)
        let ratio = nyquistRatio(input: input, restored: out.pixels, bad: bad, width: w, height: h, sky: sky, threads: threads)
        return RestorationCheck(reducedChiSquare: full.reduced, robustChiSquare: full.robust, sourceChiSquare: full.source,
                                sourcePixels: full.sources, nyquistPowerRatio: ratio, sigma: noise, pixels: full.pixels,
                                referenceLambda: reference.lambda, referenceSourceChiSquare: reference.stats.source,
                                centralSourceChiSquare: central.source)
    }

    struct FitStatistics { var reduced = 0.0, robust = 0.0, source = 0.0, sources = 0, pixels = 0 }

    /// Chi-square statistics of input - reblurred over rows `ys`, columns `xs` (full-image
    /// coordinates), pixels near invalid ones left out; variance sigma^2 plus the photon term
    /// (reblurred - sky) / gain with a gain; source pixels where the re-blurred output rises 5
    /// sigma above the sky.
    static func fitStatistics(input: [Float], reblurred: [Double], near: [Bool], width w: Int, y ys: Range<Int>, x xs: Range<Int>,
                              noise: Double, gain: Double?, sky: Double, offset: (Int, Int) = (0, 0), stride rs: Int? = nil) -> FitStatistics {
        var chi = [Double]()
        chi.reserveCapacity(ys.count * xs.count)
        var sum = 0.0, sourceSum = 0.0, sources = 0
        let rw = rs ?? w
        for y in ys { for x in xs where !near[y * w + x] {
            let model = reblurred[(y - offset.0) * rw + x - offset.1]
            var variance = noise * noise
            if let g = gain, g > 0 { variance += max(0, model - sky) / g }
            let r2 = (Double(input[y * w + x]) - model) * (Double(input[y * w + x]) - model) / variance
            chi.append(r2); sum += r2
            if model - sky > 5 * noise { sourceSum += r2; sources += 1 }
        } }
        guard !chi.isEmpty else { return FitStatistics() }
        chi.sort()
        return FitStatistics(reduced: sum / Double(chi.count), robust: chi[chi.count / 2] / 0.45493642311957283,
                             source: sources > 0 ? sourceSum / Double(sources) : 0, sources: sources, pixels: chi.count)
    }

    /// Wiener (Laplacian regulariser, mirror-padded) of the central square, lambda chosen without
    /// a truth by generalised cross-validation (Golub, Heath & Wahba 1979), the textbook rule for
    /// Tikhonov filters, over quarter decades from 1e-9 to 1e3: the runtime's own Wiener step
    /// (`WienerDeconvolution`, GCV on the square); the classical method at its best without a truth.
    static func wienerReference(_ crop: Image2D, psf: Image2D, offset: (Int, Int), input: [Float], near: [Bool], width w: Int, height h: Int,
                                inner: (y: Range<Int>, x: Range<Int>), noise: Double, gain: Double?, sky: Double,
                                threads: Int) throws -> (lambda: Double, stats: FitStatistics) {
        let side = crop.height
        let kernel = try PSFKernel(height: psf.height, width: psf.width, values: psf.pixels)
        let (px, lambda) = WienerDeconvolution.apply(crop.pixels.map { Float($0) }, height: side, width: side, psf: kernel, threads: threads)
        let x = Image2D(height: side, width: side, pixels: px.map(Double.init))
        let re = LinearConvolution(kernel: psf, height: side, width: side, threads: threads).apply(x)
        return (lambda, fitStatistics(input: input, reblurred: re.pixels, near: near, width: w, y: inner.y, x: inner.x, noise: noise,
                                      gain: gain, sky: sky, offset: offset, stride: side))
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
