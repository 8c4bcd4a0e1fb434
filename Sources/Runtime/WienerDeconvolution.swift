import Foundation
import ModelFormat

/// A point-spread function as the runtime takes it: a small array whose origin is at
/// ((height - 1) / 2, (width - 1) / 2) (the degradation's convention, scipy's 'same'),
/// normalised to unit sum.
public struct PSFKernel: Sendable, Equatable {
    public let height: Int
    public let width: Int
    /// Row-major, summing to 1.
    public let values: [Double]

    public init(height: Int, width: Int, values: [Double]) throws {
        guard height >= 1, width >= 1, height <= 4096, width <= 4096, values.count == height * width else {
            throw RuntimeError.badParameter("a PSF must be a 2-D array of 1 to 4096 pixels a side")
        }
        guard values.allSatisfy({ $0.isFinite }) else { throw RuntimeError.badParameter("the PSF has non-finite values") }
        let sum = values.reduce(0, +)
        let peak = values.max() ?? 0
        guard sum > 0, peak > 0 else { throw RuntimeError.badParameter("the PSF must have a positive sum") }
        (self.height, self.width) = (height, width)
        self.values = values.map { $0 / sum }
    }

    /// The same PSF cut to at most `side` pixels a side by removing equal numbers of rows (and
    /// columns) on both sides, which keeps the origin on the same pixel; refuses a cut that
    /// loses more than `maxLoss` of the flux.
    public func fitting(side: Int, maxLoss: Double = 0.02) throws -> PSFKernel {
        let dy = max(0, (height - side + 1) / 2), dx = max(0, (width - side + 1) / 2)
        if dy == 0 && dx == 0 { return self }
        let h = height - 2 * dy, w = width - 2 * dx
        var out = [Double](repeating: 0, count: h * w)
        var kept = 0.0
        for y in 0..<h { for x in 0..<w { let v = values[(y + dy) * width + x + dx]; out[y * w + x] = v; kept += v } }
        if 1 - kept > maxLoss {
            throw RuntimeError.badParameter(String(format: "the PSF (%dx%d) does not fit the %d-pixel square this model deconvolves with: %.1f%% of its flux lies outside it", height, width, side, 100 * (1 - kept)))
        }
        return try PSFKernel(height: h, width: w, values: out)
    }

    /// Full width at half maximum (pixels) of the core: a weighted least-squares fit of
    /// ln(v / peak) = a - b r^2 over the pixels above a quarter of the peak (weights v; r from
    /// their centroid), solved for half the peak: exact for a sampled Gaussian, within a few
    /// percent for Moffat and Airy cores; an elliptical PSF gives its mean diameter. A PSF with a
    /// single pixel above a quarter of its peak gives 2 / sqrt(pi). Needs no fit of the wings.
    public var fwhm: Double {
        let peak = values.max()!
        var sw = 0.0, sy = 0.0, sx = 0.0
        for y in 0..<height { for x in 0..<width { let v = values[y * width + x]; if v >= peak / 4 { sw += v; sy += v * Double(y); sx += v * Double(x) } } }
        let cy = sy / sw, cx = sx / sw
        var s = 0.0, sr = 0.0, srr = 0.0, sl = 0.0, srl = 0.0
        for y in 0..<height { for x in 0..<width {
            let v = values[y * width + x]
            guard v >= peak / 4 else { continue }
            let r2 = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx), l = log(v / peak)
            s += v; sr += v * r2; srr += v * r2 * r2; sl += v * l; srl += v * r2 * l
        } }
        let det = s * srr - sr * sr
        guard det > 1e-12 * s * srr else { return 2 / Double.pi.squareRoot() }
        let c = (s * srl - sr * sl) / det, a = (sl - c * sr) / s
        guard c < 0 else { return 2 / Double.pi.squareRoot() }
        return 2 * max(0, (log(0.5) - a) / c).squareRoot()
    }
}

/// The model-declared Wiener step (`wiener_deconvolution`, format 1.1): Tikhonov deconvolution
/// with a Laplacian regulariser, X = conj(H) Y / (|H|^2 + lambda |L|^2), of one map with the
/// run-time PSF, on the map mirror-padded by twice the PSF (and up to a 2-3-5-smooth length), so
/// the periodic filter sees no jump at the borders; lambda chosen from the map alone by
/// generalised cross-validation (Golub, Heath & Wahba 1979), GCV(lambda) = |(I - A) y|^2 /
/// trace(I - A)^2, exact on the spectra, over quarter decades from 1e-9 to 1e3. GCV does not
/// depend on the map's units, so the step commutes with the affine normalisations. Float64
/// throughout; the result does not depend on the thread count.
public enum WienerDeconvolution {
    /// The lambda grid: 10^(e/4) for e in -36...12.
    public static let lambdaExponents = -36...12

    /// Bytes of Float64 work memory `apply` takes for a map of this size and a PSF of up to
    /// `psfSide` pixels a side: sixteen arrays on the padded grid (the spectra, |H|^2, |Y|^2, L^2, and the
    /// risk rule's windowed map, ring indices, border difference and deconvolved border, with room
    /// for its sorted copy of the map).
    public static func workBytes(height: Int, width: Int, psfSide: Int) -> Int {
        16 * 8 * FFTPlan.fastSize(atLeast: height + 2 * psfSide) * FFTPlan.fastSize(atLeast: width + 2 * psfSide)
    }

    /// The run-time parameter that fixes lambda for a whole image (`restore` sets it from the
    /// image's central square, `imageLambda`, so that every tile deconvolves alike); absent or
    /// not positive: each map chooses its own by GCV.
    public static let lambdaParameter = "wiener_lambda"

    /// The mirror-padded map's spectrum and the filter's ingredients on the padded grid (what
    /// choosing lambda and applying the filter share).
    struct Spectra {
        var y: ComplexImage
        let t: ComplexImage
        let h2: [Double], y2: [Double], l2: [Double]
        let ph: Int, pw: Int, top: Int, left: Int
        var count: Int { ph * pw }
    }

    /// Index `i` of a map of `n` mirrored half-sample symmetrically, (c b a | a b c | c b a),
    /// repeated for pads wider than `n`: how the step pads.
    static func mirror(_ i: Int, _ n: Int) -> Int {
        let p = 2 * n
        var m = i % p
        if m < 0 { m += p }
        return m < n ? m : p - 1 - m
    }

    static func spectra(_ input: UnsafePointer<Float>, inputStride: Int, height h: Int, width w: Int, psf: PSFKernel,
                        threads: Int) -> Spectra {
        let ph = FFTPlan.fastSize(atLeast: h + 2 * psf.height), pw = FFTPlan.fastSize(atLeast: w + 2 * psf.width)
        let top = (ph - h) / 2, left = (pw - w) / 2
        var y = ComplexImage(height: ph, width: pw)
        for r in 0..<ph {
            let src = input + mirror(r - top, h) * inputStride
            for c in 0..<pw {
                let v = Double(src[mirror(c - left, w)])
                y.re[r * pw + c] = v.isFinite ? v : 0
            }
        }
        y.transformReal(threads: threads)
        let t = transferFunction(psf, height: ph, width: pw, threads: threads)
        let cu = (0..<ph).map { 2 - 2 * cos(2 * Double.pi * Double($0) / Double(ph)) }
        let cv = (0..<pw).map { 2 - 2 * cos(2 * Double.pi * Double($0) / Double(pw)) }
        let n = ph * pw
        var h2 = [Double](repeating: 0, count: n), y2 = [Double](repeating: 0, count: n), l2 = [Double](repeating: 0, count: n)
        for r in 0..<ph { for c in 0..<pw {
            let i = r * pw + c
            h2[i] = t.re[i] * t.re[i] + t.im[i] * t.im[i]
            y2[i] = y.re[i] * y.re[i] + y.im[i] * y.im[i]
            let l = cu[r] + cv[c]
            l2[i] = l * l
        } }
        return Spectra(y: y, t: t, h2: h2, y2: y2, l2: l2, ph: ph, pw: pw, top: top, left: left)
    }

    /// The PSF's transfer function H on a ph x pw grid (the PSF's centre pixel at the origin,
    /// wrapped around).
    static func transferFunction(_ psf: PSFKernel, height ph: Int, width pw: Int, threads: Int) -> ComplexImage {
        var t = ComplexImage(height: ph, width: pw)
        let oy = (psf.height - 1) / 2, ox = (psf.width - 1) / 2
        for u in 0..<psf.height { for v in 0..<psf.width {
            let r = ((u - oy) % ph + ph) % ph, c = ((v - ox) % pw + pw) % pw
            t.re[r * pw + c] += psf.values[u * psf.width + v]
        } }
        t.transformReal(threads: threads)
        return t
    }

    /// GCV's lambda: the grid value minimising |(I - A) y|^2 / trace(I - A)^2 (first on ties).
    static func gcvLambda(_ s: Spectra) -> Double {
        var best = (lambda: 1.0, gcv: Double.infinity)
        for e in lambdaExponents {
            let lambda = pow(10, Double(e) / 4)
            var num = 0.0, tr = 0.0
            for i in 0..<s.count {
                let q = lambda * s.l2[i] / (s.h2[i] + lambda * s.l2[i] + 1e-300)
                num += s.y2[i] * q * q
                tr += q
            }
            let g = num / max(1e-300, tr * tr)
            if g < best.gcv { best = (lambda, g) }
        }
        return best.lambda
    }

    /// Morozov's discrepancy principle: the largest grid lambda whose residual |y - h * x|^2 per
    /// pixel does not exceed the noise variance (the smallest of the grid when none does).
    static func discrepancyLambda(_ s: Spectra, noiseVariance v: Double) -> Double {
        var best = pow(10, Double(lambdaExponents.lowerBound) / 4)
        let n2 = Double(s.count) * Double(s.count)
        for e in lambdaExponents {
            let lambda = pow(10, Double(e) / 4)
            var num = 0.0
            for i in 0..<s.count {
                let q = lambda * s.l2[i] / (s.h2[i] + lambda * s.l2[i] + 1e-300)
                num += s.y2[i] * q * q
            }
            if num / n2 <= v { best = lambda } else { break }
        }
        return best
    }

    /// How a lambda is chosen when the noise variance is known.
    public enum NoiseRule: String, Sendable, CaseIterable {
        /// Morozov's discrepancy principle (`discrepancyLambda`).
        case discrepancy
        /// The larger of GCV's and the discrepancy principle's (`restore`'s rule before the risk).
        case gcvOrDiscrepancy
        /// The smallest estimated mean squared error of the deconvolved map (`riskLambda`).
        case risk
    }

    /// The side fraction of the Tukey window `riskLambda` estimates the spectra through.
    static let riskTaper = 0.125

    /// The signal's power spectrum on rings of equal spatial frequency, estimated from the map
    /// seen through a Tukey window (what `riskLambda` describes): the ring of each frequency of
    /// the padded grid, the signal power per ring and the white noise's power per frequency, both
    /// in the window's units (only their ratio matters), and the map's median.
    static func ringSignal(_ s: Spectra, input: UnsafePointer<Float>, inputStride: Int, height h: Int, width w: Int,
                           noiseVariance v: Double, threads: Int) -> (ring: [Int], signal: [Double], noisePower: Double, sumW2: Double, median: Double) {
        let ph = s.ph, pw = s.pw
        func taper(_ n: Int) -> [Double] {
            let a = max(1, Int(riskTaper * Double(n)))
            var t = [Double](repeating: 1, count: n)
            for i in 0..<min(a, n) {
                let r = 0.5 - 0.5 * cos(Double.pi * (Double(i) + 0.5) / Double(a))
                t[i] = min(t[i], r); t[n - 1 - i] = min(t[n - 1 - i], r)
            }
            return t
        }
        let ty = taper(h), tx = taper(w)
        var finite = [Double]()
        finite.reserveCapacity(h * w)
        for r in 0..<h { for c in 0..<w { let x = Double(input[r * inputStride + c]); if x.isFinite { finite.append(x) } } }
        let median = finite.isEmpty ? 0 : RobustSky.median(&finite)
        var win = ComplexImage(height: ph, width: pw)
        var sumW2 = 0.0
        for r in 0..<h { for c in 0..<w {
            let x = Double(input[r * inputStride + c]), t = ty[r] * tx[c]
            win.re[r * pw + c] = x.isFinite ? (x - median) * t : 0
            sumW2 += t * t
        } }
        win.transformReal(threads: threads)
        let bins = max(2, min(ph, pw) / 2 + 1)
        let binScale = Double(min(ph, pw))
        var ring = [Int](repeating: 0, count: s.count)
        var sy = [Double](repeating: 0, count: bins + 1), sh = sy, m = sy
        for r in 0..<ph {
            let fy = Double(min(r, ph - r)) / Double(ph)
            for c in 0..<pw {
                let fx = Double(min(c, pw - c)) / Double(pw)
                let b = min(bins, Int(((fy * fy + fx * fx).squareRoot() * binScale).rounded()))
                let i = r * pw + c
                ring[i] = b
                sy[b] += win.re[i] * win.re[i] + win.im[i] * win.im[i]; sh[b] += s.h2[i]; m[b] += 1
            }
        }
        // Windowed units: the noise's power per frequency is v sum(w^2); the risk's two terms
        // are scaled alike, so its minimum does not depend on the window's normalisation.
        let noisePower = v * sumW2
        var signal = [Double](repeating: 0, count: bins + 1)
        var seen = true
        for b in 0...bins where m[b] > 0 {
            let meanY = sy[b] / m[b], meanH = sh[b] / m[b]
            if !(meanH > 0 && meanY > noisePower * (1 + 4 / m[b].squareRoot())) { seen = false }
            if seen { signal[b] = min((meanY - noisePower) / meanH, b > 0 ? signal[b - 1] : .infinity) }
        }
        return (ring, signal, noisePower, sumW2, median)
    }

    /// The lambda of the grid with the smallest estimated mean squared error of the deconvolved
    /// map itself (not of its re-blurred fit, which the discrepancy principle and GCV judge):
    /// R(lambda) = sum_f |1 - W H|^2 S(f) + |W|^2 P, with W = conj(H) / (|H|^2 + lambda L^2) and
    /// P the white noise's power per frequency. The noise term is exact for white noise, so a
    /// stop band of the PSF (an Airy's beyond its cut-off) is never inverted. The signal's power
    /// spectrum S is estimated from the map itself, seen through a Tukey window (cosine tapers
    /// over `riskTaper` of each side, the median subtracted, zero-padded to the same grid): the
    /// frame's borders, where the mirror padding differs from the sky outside, would otherwise
    /// add a step spectrum that passes for signal where |H| is small. On rings of equal spatial
    /// frequency, S is the ring's mean windowed |Y|^2 less the noise's (v times the window's sum
    /// of squares), over the ring's mean |H|^2, where it stands 4 standard errors out of the
    /// noise; never above the ring before it (a sky's spectrum does not rise with frequency:
    /// point sources, the sharpest it holds, are flat); 0 from the first ring where nothing is
    /// seen. To that the borders' error is added (below): the interior's dependence on the
    /// unknown sky outside the frame. Measured in docs/EVALUATION.md (Part 1d), on the training
    /// images degraded by three PSFs at two noise levels and on simulated skies.
    static func riskLambda(_ s: Spectra, input: UnsafePointer<Float>, inputStride: Int, height h: Int, width w: Int,
                           noiseVariance v: Double, threads: Int) -> Double {
        let ph = s.ph, pw = s.pw
        let (ring, signal, noisePower, sumW2, median) = ringSignal(s, input: input, inputStride: inputStride, height: h, width: w,
                                                                   noiseVariance: v, threads: threads)
        // The frame's borders: the sky outside is unknown, and the mirror padding the filter sees
        // is one guess of it; a flat sky at the median is another. Their difference d (0 inside
        // the frame), deconvolved, is how much the interior depends on that guess: its mean square
        // over the interior (the tapers left out) is added to the risk. It decides with a wide
        // PSF on a nearly noiseless frame, where inverting the PSF would spread the borders'
        // error over the image.
        var d = ComplexImage(height: ph, width: pw)
        for r in 0..<ph { for c in 0..<pw {
            let ri = r - s.top, ci = c - s.left
            guard ri < 0 || ri >= h || ci < 0 || ci >= w else { continue }
            let v = Double(input[mirror(ri, h) * inputStride + mirror(ci, w)])
            d.re[r * pw + c] = (v.isFinite ? v : 0) - median
        } }
        d.transformReal(threads: threads)
        // The interior: without the tapered margins, or the whole map when it is too thin for them.
        var my = max(1, Int(riskTaper * Double(h))), mx = max(1, Int(riskTaper * Double(w)))
        if h - 2 * my < 1 { my = 0 }
        if w - 2 * mx < 1 { mx = 0 }
        let interior = Double(max(1, (h - 2 * my) * (w - 2 * mx)))
        let n = Double(s.count)
        // One buffer for every lambda's deconvolved border difference (a fresh one per lambda
        // cost an allocation and first touch of the padded grid each time).
        var b = ComplexImage(height: ph, width: pw)
        // The risk's spectral term for lambda 10^(e/4) (a pass over the spectra), and its border
        // term (an inverse transform of the padded grid: most of the cost).
        func spectralRisk(_ e: Int) -> Double {
            let lambda = pow(10, Double(e) / 4)
            var spectral = 0.0
            for i in 0..<s.count {
                let rl = lambda * s.l2[i], den = s.h2[i] + rl
                guard den > 0 else { continue }
                let q = rl / den
                spectral += q * q * signal[ring[i]] + noisePower * s.h2[i] / (den * den)
            }
            // Per pixel: the windowed spectral sum is n sum(w^2) times the mean square error.
            return spectral / (n * max(sumW2, 1e-300))
        }
        func borderRisk(_ e: Int) -> Double {
            let lambda = pow(10, Double(e) / 4)
            for i in 0..<s.count {
                let rl = lambda * s.l2[i], den = s.h2[i] + rl
                guard den > 0 else { b.re[i] = 0; b.im[i] = 0; continue }
                let (a, bb) = (s.t.re[i], s.t.im[i]), (yr, yi) = (d.re[i], d.im[i])
                b.re[i] = (a * yr + bb * yi) / den
                b.im[i] = (a * yi - bb * yr) / den
            }
            b.inverseToReal(threads: threads)
            var border = 0.0
            for r in (s.top + my)..<(s.top + h - my) { for c in (s.left + mx)..<(s.left + w - mx) {
                let v = b.re[r * pw + c] / n
                border += v * v
            } }
            return border / interior
        }
        // `best` improved over `exponents` (ascending) as a loop over them in order would: a
        // smaller risk replaces it, an equal one only if it is a smaller exponent of this same
        // search. The border term is not negative, so the exponents are tried in the order of
        // their spectral terms and one whose spectral term alone cannot replace the best so far
        // skips its transform: the same choice as trying them all, with fewer transforms.
        var best = (e: lambdaExponents.lowerBound, risk: Double.infinity)
        func search(_ exponents: [Int]) {
            let spectral = exponents.map(spectralRisk)
            var fromThisSearch = false
            func replaces(_ r: Double, _ e: Int) -> Bool { r < best.risk || (r == best.risk && fromThisSearch && e < best.e) }
            for k in exponents.indices.sorted(by: { (spectral[$0], exponents[$0]) < (spectral[$1], exponents[$1]) }) {
                let e = exponents[k]
                guard replaces(spectral[k], e) else { continue }
                let r = spectral[k] + borderRisk(e)
                if replaces(r, e) { best = (e, r); fromThisSearch = true }
            }
        }
        // Decades first, then the quarter decades around the best (the risk is smooth in log lambda).
        search(Array(stride(from: lambdaExponents.lowerBound, through: lambdaExponents.upperBound, by: 4)))
        search((max(lambdaExponents.lowerBound, best.e - 3)...min(lambdaExponents.upperBound, best.e + 3)).filter {
            ($0 - lambdaExponents.lowerBound) % 4 != 0
        })
        return pow(10, Double(best.e) / 4)
    }

    static func noiseLambda(_ s: Spectra, input: UnsafePointer<Float>, inputStride: Int, height h: Int, width w: Int,
                            noiseVariance v: Double, rule: NoiseRule, threads: Int) -> Double {
        switch rule {
        case .discrepancy: return discrepancyLambda(s, noiseVariance: v)
        case .gcvOrDiscrepancy: return max(gcvLambda(s), discrepancyLambda(s, noiseVariance: v))
        case .risk: return riskLambda(s, input: input, inputStride: inputStride, height: h, width: w, noiseVariance: v, threads: threads)
        }
    }

    /// Deconvolves `height` x `width` Float values at `input` (rows `inputStride` apart) into
    /// `output` (rows `outputStride` apart); non-finite inputs count as 0. Returns the lambda
    /// used: `lambda` when given (positive), else the discrepancy principle's with
    /// `noiseVariance`, else GCV's on this map, times `lambdaFactor` (the trainer's jitter; 1 at
    /// run time).
    @discardableResult
    public static func apply(_ input: UnsafePointer<Float>, inputStride: Int, height h: Int, width w: Int, psf: PSFKernel,
                             output: UnsafeMutablePointer<Float>, outputStride: Int, lambda given: Double? = nil,
                             lambdaFactor: Double = 1, noiseVariance: Double? = nil, noiseRule: NoiseRule = .discrepancy,
                             threads: Int = 1) -> Double {
        var s = spectra(input, inputStride: inputStride, height: h, width: w, psf: psf, threads: threads)
        let lambda = (given ?? noiseVariance.map {
            noiseLambda(s, input: input, inputStride: inputStride, height: h, width: w, noiseVariance: $0, rule: noiseRule, threads: threads)
        } ?? gcvLambda(s)) * lambdaFactor
        for i in 0..<s.count {
            let (a, b) = (s.t.re[i], s.t.im[i])
            let d = s.h2[i] + lambda * s.l2[i]
            let (yr, yi) = (s.y.re[i], s.y.im[i])
            if d > 0 {
                s.y.re[i] = (a * yr + b * yi) / d
                s.y.im[i] = (a * yi - b * yr) / d
            } else {
                s.y.re[i] = 0; s.y.im[i] = 0
            }
        }
        s.y.inverseToReal(threads: threads)
        let scale = 1 / Double(s.count)
        for r in 0..<h {
            let o = output + r * outputStride
            for c in 0..<w { o[c] = Float(s.y.re[(r + s.top) * s.pw + c + s.left] * scale) }
        }
        return lambda
    }

    /// `apply` on an array (row-major `height` x `width`), returning the deconvolved array and
    /// the lambda used.
    public static func apply(_ input: [Float], height: Int, width: Int, psf: PSFKernel, lambda: Double? = nil, lambdaFactor: Double = 1,
                             noiseVariance: Double? = nil, noiseRule: NoiseRule = .discrepancy, threads: Int = 1) -> (image: [Float], lambda: Double) {
        var out = [Float](repeating: 0, count: height * width)
        let used = input.withUnsafeBufferPointer { ib in
            out.withUnsafeMutableBufferPointer { ob in
                apply(ib.baseAddress!, inputStride: width, height: height, width: width, psf: psf, output: ob.baseAddress!,
                      outputStride: width, lambda: lambda, lambdaFactor: lambdaFactor, noiseVariance: noiseVariance,
                      noiseRule: noiseRule, threads: threads)
            }
        }
        return (out, used)
    }

    /// The side of the central square `imageLambda` chooses lambda on.
    public static let lambdaWindow = 1024

    /// One lambda for a whole image, on its central square of at most `lambdaWindow` pixels a side
    /// (invalid pixels set to the median of the valid ones): GCV, and with the noise variance of
    /// the square's pixels `noiseRule` (by default the risk rule, `riskLambda`). Measured on the
    /// training images degraded by three PSFs at two noise levels (docs/EVALUATION.md, Part 1d):
    /// GCV and the discrepancy principle (and the larger of the two, the rule before) fell to the
    /// bottom of the grid on 1-4 of 8 images per degradation (down to -27 dB); the risk rule came
    /// within 0.13-0.44 dB of the best lambda of the grid on average and collapsed on none.
    public static func imageLambda(window: [Float], invalid: [Bool], height: Int, width: Int, psf: PSFKernel, noiseVariance: Double? = nil,
                                   noiseRule: NoiseRule = .risk, threads: Int = 1) -> Double {
        var px = window
        var valid = zip(window, invalid).compactMap { $1 || !$0.isFinite ? nil : $0 }
        let fill: Float = valid.isEmpty ? 0 : valid.withUnsafeMutableBufferPointer { b in
            RobustSky.select(b, b.count / 2)
            return b[b.count / 2]
        }
        for i in px.indices where invalid[i] || !px[i].isFinite { px[i] = fill }
        // Both rules fail by choosing too small a lambda (GCV on star-dominated images, the
        // discrepancy principle where the data hold structure its residual cannot fit), and too
        // small a lambda amplifies noise without bound while too large a one only blurs: with a
        // noise variance, the larger of the two.
        // One set of spectra for both rules (no filtered image is needed).
        return px.withUnsafeBufferPointer { pb in
            let s = spectra(pb.baseAddress!, inputStride: width, height: height, width: width, psf: psf, threads: threads)
            guard let v = noiseVariance else { return gcvLambda(s) }
            return noiseLambda(s, input: pb.baseAddress!, inputStride: width, height: height, width: width, noiseVariance: v,
                               rule: noiseRule, threads: threads)
        }
    }

    /// The central square `imageLambda` reads: (rows, columns) of an image of this size.
    public static func lambdaRegion(height: Int, width: Int) -> (rows: Range<Int>, columns: Range<Int>) {
        let sh = min(height, lambdaWindow), sw = min(width, lambdaWindow)
        let y0 = (height - sh) / 2, x0 = (width - sw) / 2
        return (y0..<(y0 + sh), x0..<(x0 + sw))
    }
}

extension Network {
    /// Header keywords and HISTORY lines naming the PSF of the Wiener step (empty without one).
    public var psfProvenance: (keywords: [(String, MetaValue, String)], history: [String]) {
        guard let k = psf, let d = psfDescription else { return ([], []) }
        let short = d.count > 60 ? String(d.prefix(57)) + "..." : d
        return ([("ACNNPSF", .string(short), "PSF of the Wiener step"),
                 ("ACNNPSFW", .float((k.fwhm * 1000).rounded() / 1000), "[px] FWHM of that PSF (half-maximum area)")],
                ["Deconvolved with the PSF \(d) (\(k.width)x\(k.height), FWHM \(String(format: "%.2f", k.fwhm)) px): Wiener step (one lambda for the image: the smallest estimated mean squared error with the image's noise, else GCV), then the network"])
    }
}
