import Foundation

/// Data consistency for deconvolution outputs (issue 24): a network's estimate x0 of the sky,
/// corrected by a linear estimate of its error from its own residual. With r = y - A x0 (A the
/// blur by the PSF, y the observation, both in noise units) the residual is A e + n, e = truth -
/// x0 the network's error and n the noise; the correction is the Tikhonov estimate of e,
/// e^ = conj(H) R / (|H|^2 + mu), frequency by frequency, with mu the quarter decade of
/// 1e-10 ... 1e4 whose estimated mean squared error of e^ is smallest (`riskMu`): the error's
/// power spectrum is estimated from the residual itself on rings of equal spatial frequency, as
/// `WienerDeconvolution`'s risk rule estimates a map's; the noise term is exact at every
/// frequency. Where the network already fits the data within the noise nothing is seen in the
/// residual and the output is the network's, bit for bit; where the noise is far below the
/// network's error (a nearly noiseless image) the correction inverts the PSF where it passes
/// enough, and keeps the network's content where it passes nothing.
///
/// The residual within `margin` (the PSF's half-side) of the map's edges is left out, and
/// weighted in over the next `margin` pixels: there the network saw mirrored context and the
/// observation holds flux from outside the frame, and an edge's residual, inverted where the PSF
/// passes little, would spread over the whole map as stripes.
///
/// Whole maps (Float64 FFTs on the mirror-padded map, as the Wiener step): the same bits for
/// any thread count. Measured in docs/EVALUATION.md (Part 1d, "Data consistency").
public enum DataConsistency {
    /// Bytes of work memory `correct` takes for a map of this size and a PSF of up to `psfSide`
    /// pixels a side (the Wiener step's spectra, twice, and the ring estimate's).
    public static func workBytes(height: Int, width: Int, psfSide: Int) -> Int {
        WienerDeconvolution.workBytes(height: height, width: width, psfSide: psfSide) + 8 * height * width
    }

    /// x0 blurred by the PSF ('same' size, the PSF's origin at its centre pixel; the map
    /// mirror-padded as the Wiener step pads).
    public static func blur(_ x: [Float], height h: Int, width w: Int, psf: PSFKernel, threads: Int = 1) -> [Float] {
        var s = x.withUnsafeBufferPointer {
            WienerDeconvolution.spectra($0.baseAddress!, inputStride: w, height: h, width: w, psf: psf, threads: threads)
        }
        for i in 0..<s.count {
            let (a, b) = (s.t.re[i], s.t.im[i]), (yr, yi) = (s.y.re[i], s.y.im[i])
            s.y.re[i] = a * yr - b * yi
            s.y.im[i] = a * yi + b * yr
        }
        s.y.inverseToReal(threads: threads)
        let scale = 1 / Double(s.count)
        var out = [Float](repeating: 0, count: h * w)
        for r in 0..<h { for c in 0..<w { out[r * w + c] = Float(s.y.re[(r + s.top) * s.pw + c + s.left] * scale) } }
        return out
    }

    /// What `correct` did.
    public struct Result: Sendable {
        /// The corrected map (the estimate itself when nothing was applied).
        public var image: [Float]
        /// The chosen mu (infinite: nothing of the network's error seen above the noise).
        public var mu: Double
        /// The correction's energy over what the estimated spectra predict for it (the model check).
        public var excess: Double
        /// Whether the correction was added.
        public var applied: Bool
        /// The lower bound the output was held to (`correct`'s `lowerBound`), nil without one.
        public var lowerBound: Float? = nil
    }

    /// Iterations of the bounded solve (`bounded`): FISTA from the unbounded correction held to
    /// the bound. Few on purpose: run long, the solve fits the noise where mu is small (on two
    /// simulated skies of other seeds than the demo's, Moffat and Gaussian PSFs at their own
    /// noise, 10 to 30 iterations changed nothing, 100 lost 0.1-0.3 dB, 300 lost 0.7-2.8 dB; on
    /// six training images nothing changed: their skies lie far above 0). Chosen on those,
    /// before the held-out images were run with it (docs/EVALUATION.md).
    public static let boundedIterations = 20

    /// The model check's limit: a correction whose energy exceeds what the estimated error and
    /// noise spectra predict for it by more than this is not added. The residual then holds what
    /// blur plus white noise cannot explain (an edge, a PSF that is not the image's), which the
    /// inversion would turn into stripes. Set after the held-out evaluations (docs/EVALUATION.md,
    /// 162 corrections by three models): at most 157 where the correction helped, 745 and 22,000 to
    /// 25,000 where it failed or would have (one frame: HST F110W, nearly noiseless, a bright edge
    /// row, with the Airy PSF's sharp cut-off). A safety limit chosen on those images, not a tuned
    /// parameter; on other data it may need revisiting.
    public static let maxExcess = 300.0

    /// The network's estimate `estimate` corrected against the observation `observed` (both
    /// `height` x `width`, in units where the noise variance is `noiseVariance`; non-finite
    /// observed pixels count as unknown: their residual is 0).
    ///
    /// With `lowerBound` b (the image's true zero in these units: every pixel of the sky is at
    /// least b, as Richardson-Lucy and Prox-TV assume), the output is the minimiser of
    /// 1/2 |y - A x|^2 + mu/2 |x - x0|^2 over x >= b (the residual weighted as above; `bounded`),
    /// whose unbounded minimiser is the correction; with no correction applied it is x0 held to
    /// x >= b (a projection onto a set that holds the truth: no pixel moves away from it).
    public static func correct(observed: [Float], estimate: [Float], height h: Int, width w: Int, psf: PSFKernel,
                               noiseVariance v: Double = 1, lowerBound: Float? = nil, threads: Int = 1) -> Result {
        let r = unbounded(observed: observed, estimate: estimate, height: h, width: w, psf: psf, noiseVariance: v, threads: threads)
        guard let b = lowerBound else { return r }
        var out = r
        out.lowerBound = b
        guard r.applied else {
            out.image = estimate.map { max($0, b) }
            return out
        }
        out.image = bounded(observed: observed, prior: estimate, start: r.image, height: h, width: w, psf: psf, mu: r.mu, bound: b,
                            iterations: boundedIterations, threads: threads)
        return out
    }

    /// The residual's weight: 0 within the PSF's half-side of the edges, a cosine ramp over the
    /// next half-side, then 1 (per axis).
    public static func edgeRamp(_ n: Int, margin: Int) -> [Float] {
        (0..<n).map { i in
            let d = min(i, n - 1 - i) - margin
            if d < 0 { return 0 }
            if d >= margin { return 1 }
            return Float(0.5 - 0.5 * cos(Double.pi * (Double(d) + 0.5) / Double(margin)))
        }
    }

    /// min over x >= bound of 1/2 sum_i m_i (y_i - (A x)_i)^2 + mu/2 |x - prior|^2 (m: the edge
    /// ramps, 0 on non-finite observed pixels; A: the 'same' linear convolution by the PSF, on a
    /// zero-padded FFT grid, with its exact adjoint), by FISTA (Beck & Teboulle 2009) from `start`
    /// held to the bound, step 1 / (max |H|^2 + mu), a fixed number of iterations: the same bits
    /// for any thread count.
    static func bounded(observed y: [Float], prior x0: [Float], start: [Float], height h: Int, width w: Int, psf: PSFKernel,
                        mu: Double, bound b: Float, iterations: Int, threads: Int) -> [Float] {
        let ph = FFTPlan.fastSize(atLeast: h + psf.height), pw = FFTPlan.fastSize(atLeast: w + psf.width)
        let t = WienerDeconvolution.transferFunction(psf, height: ph, width: pw, threads: threads)
        var maxH2 = 0.0
        for i in 0..<(ph * pw) { maxH2 = max(maxH2, t.re[i] * t.re[i] + t.im[i] * t.im[i]) }
        let step = 1 / (maxH2 + mu), scale = 1 / Double(ph * pw)
        let margin = max(psf.height, psf.width) / 2
        let ry = edgeRamp(h, margin: margin), rx = edgeRamp(w, margin: margin)
        var m = [Double](repeating: 0, count: h * w), yd = m
        for r in 0..<h { for c in 0..<w {
            let i = r * w + c
            if y[i].isFinite { m[i] = Double(ry[r] * rx[c]); yd[i] = Double(y[i]) }
        } }
        let bd = Double(b)
        let prior = x0.map(Double.init)
        var x = start.map { max(Double($0), bd) }
        var z = x
        var k = 1.0
        var g = ComplexImage(height: ph, width: pw)
        // (A or its adjoint) of a h x w map, into `out` (h x w).
        func apply(_ a: [Double], adjoint: Bool, _ out: inout [Double]) {
            for i in 0..<(ph * pw) { g.re[i] = 0; g.im[i] = 0 }
            for r in 0..<h { for c in 0..<w { g.re[r * pw + c] = a[r * w + c] } }
            g.transformReal(threads: threads)
            for i in 0..<(ph * pw) {
                let (p, q) = (t.re[i], adjoint ? -t.im[i] : t.im[i]), (u, v) = (g.re[i], g.im[i])
                g.re[i] = p * u - q * v
                g.im[i] = p * v + q * u
            }
            g.inverseToReal(threads: threads)
            for r in 0..<h { for c in 0..<w { out[r * w + c] = g.re[r * pw + c] * scale } }
        }
        var az = [Double](repeating: 0, count: h * w), grad = az
        for _ in 0..<iterations {
            apply(z, adjoint: false, &az)
            for i in 0..<(h * w) { az[i] = m[i] * (az[i] - yd[i]) }
            apply(az, adjoint: true, &grad)
            let next = (1 + (1 + 4 * k * k).squareRoot()) / 2, beta = (k - 1) / next
            for i in 0..<(h * w) {
                let xi = max(bd, z[i] - step * (grad[i] + mu * (z[i] - prior[i])))
                z[i] = xi + beta * (xi - x[i])
                x[i] = xi
            }
            k = next
        }
        return x.map { Float($0) }
    }

    /// The unbounded correction (above).
    static func unbounded(observed: [Float], estimate: [Float], height h: Int, width w: Int, psf: PSFKernel,
                        noiseVariance v: Double, threads: Int) -> Result {
        precondition(observed.count == h * w && estimate.count == h * w)
        let blurred = blur(estimate, height: h, width: w, psf: psf, threads: threads)
        let margin = max(psf.height, psf.width) / 2
        let ry = edgeRamp(h, margin: margin), rx = edgeRamp(w, margin: margin)
        var residual = [Float](repeating: 0, count: h * w)
        for r in 0..<h { for c in 0..<w {
            let i = r * w + c, d = observed[i] - blurred[i]
            residual[i] = d.isFinite ? d * ry[r] * rx[c] : 0
        } }
        var s = residual.withUnsafeBufferPointer {
            WienerDeconvolution.spectra($0.baseAddress!, inputStride: w, height: h, width: w, psf: psf, threads: threads)
        }
        let e = residual.withUnsafeBufferPointer {
            WienerDeconvolution.ringSignal(s, input: $0.baseAddress!, inputStride: w, height: h, width: w, noiseVariance: v, threads: threads)
        }
        let mu = riskMu(s, signal: e.signal, ring: e.ring, noisePower: e.noisePower)
        guard mu.isFinite else { return Result(image: estimate, mu: mu, excess: 0, applied: false) }
        // The model check: the correction's energy against what the estimated spectra predict
        // for it (the mirror-padded grid holds about count / sum(w^2) times the window's power).
        var realized = 0.0, predicted = 0.0
        for i in 0..<s.count {
            let d = s.h2[i] + mu, g = s.h2[i] / (d * d)
            realized += g * (s.y.re[i] * s.y.re[i] + s.y.im[i] * s.y.im[i])
            predicted += g * (s.h2[i] * e.signal[e.ring[i]] + e.noisePower)
        }
        let excess = realized / (predicted * Double(s.count) / e.sumW2)
        guard excess <= maxExcess else { return Result(image: estimate, mu: mu, excess: excess, applied: false) }
        for i in 0..<s.count {
            let d = s.h2[i] + mu
            let (a, b) = (s.t.re[i], s.t.im[i]), (yr, yi) = (s.y.re[i], s.y.im[i])
            s.y.re[i] = (a * yr + b * yi) / d
            s.y.im[i] = (a * yi - b * yr) / d
        }
        s.y.inverseToReal(threads: threads)
        let scale = 1 / Double(s.count)
        var out = estimate
        for r in 0..<h { for c in 0..<w {
            out[r * w + c] = Float(Double(estimate[r * w + c]) + s.y.re[(r + s.top) * s.pw + c + s.left] * scale)
        } }
        return Result(image: out, mu: mu, excess: excess, applied: true)
    }

    /// The quarter decade mu of 1e-10 ... 1e4 with the smallest estimated mean squared error of
    /// conj(H) R / (|H|^2 + mu) as an estimate of the error: sum_f (mu / (|H|^2 + mu))^2 S(f) +
    /// |H|^2 / (|H|^2 + mu)^2 P, or infinity (no correction) when that is smaller or nothing of
    /// the error is seen above the noise.
    static func riskMu(_ s: WienerDeconvolution.Spectra, signal: [Double], ring: [Int], noisePower: Double) -> Double {
        guard signal.contains(where: { $0 > 0 }) else { return .infinity }
        var none = 0.0
        for i in 0..<s.count { none += signal[ring[i]] }
        var best = (mu: Double.infinity, risk: none)
        for k in stride(from: 16, through: -40, by: -1) {
            let mu = pow(10, Double(k) / 4)
            var r = 0.0
            for i in 0..<s.count {
                let d = s.h2[i] + mu, q = mu / d
                r += q * q * signal[ring[i]] + noisePower * s.h2[i] / (d * d)
            }
            if r < best.risk { best = (mu, r) }
        }
        return best.mu
    }
}

/// What the data-consistency correction did, for the report and the header.
public struct DataConsistencySummary: Sendable {
    public var mu: Double
    public var excess: Double
    public var applied: Bool
    /// The lower bound held, in the input's units (nil: none).
    public var lowerBound: Float?

    public init(mu: Double, excess: Double, applied: Bool, lowerBound: Float? = nil) {
        (self.mu, self.excess, self.applied, self.lowerBound) = (mu, excess, applied, lowerBound)
    }

    public var keyword: String {
        (applied ? String(format: "mu=%.4g excess=%.3g", mu, excess) : (mu.isFinite ? String(format: "rejected excess=%.3g", excess) : "none"))
            + (lowerBound.map { " bound=\($0)" } ?? "")
    }

    /// What the user should be told on the terminal: nil when the correction was applied or
    /// nothing was seen above the noise; else why it was refused and what to check.
    public var warning: String? {
        guard !applied, mu.isFinite else { return nil }
        return String(format: "the data-consistency correction was not applied: its energy was %.3g times what blur by the PSF plus white noise predicts (limit %d), so the residual (input - PSF * output) holds something that model cannot explain (a PSF that is not the image's, a bright edge, an artefact); the output is the network's alone: check it with --check, or give the PSF with --psf",
                      excess, Int(DataConsistency.maxExcess))
    }

    public var history: String {
        let bound = lowerBound.map { b in
            applied ? "; the output held to >= \(b) (the image's true zero, input units) by \(DataConsistency.boundedIterations) FISTA iterations of the same objective"
                    : "; the output clipped to >= \(b) (the image's true zero, input units)"
        } ?? ""
        if applied {
            return "Data consistency: the network's error estimated from its residual R = input - PSF * output as conj(H) R / (|H|^2 + mu), mu \(String(format: "%.4g", mu)) (noise units) by the smallest estimated error, added" + bound
        }
        if mu.isFinite {
            return "Data consistency: not applied; the correction's energy was \(String(format: "%.3g", excess)) times what blur plus white noise predicts (limit \(Int(DataConsistency.maxExcess))): the residual holds what that model cannot explain" + bound
        }
        return "Data consistency: the residual (input - PSF * output) holds nothing above the noise; output unchanged" + bound
    }
}
