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
        s.y.transform(inverse: true, threads: threads)
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
    }

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
    public static func correct(observed: [Float], estimate: [Float], height h: Int, width w: Int, psf: PSFKernel,
                               noiseVariance v: Double = 1, threads: Int = 1) -> Result {
        precondition(observed.count == h * w && estimate.count == h * w)
        let blurred = blur(estimate, height: h, width: w, psf: psf, threads: threads)
        let margin = max(psf.height, psf.width) / 2
        func ramp(_ n: Int) -> [Float] {
            (0..<n).map { i in
                let d = min(i, n - 1 - i) - margin
                if d < 0 { return 0 }
                if d >= margin { return 1 }
                return Float(0.5 - 0.5 * cos(Double.pi * (Double(d) + 0.5) / Double(margin)))
            }
        }
        let ry = ramp(h), rx = ramp(w)
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
        s.y.transform(inverse: true, threads: threads)
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

    public var keyword: String {
        applied ? String(format: "mu=%.4g excess=%.3g", mu, excess) : (mu.isFinite ? String(format: "rejected excess=%.3g", excess) : "none")
    }

    public var history: String {
        if applied {
            return "Data consistency: the network's error estimated from its residual R = input - PSF * output as conj(H) R / (|H|^2 + mu), mu \(String(format: "%.4g", mu)) (noise units) by the smallest estimated error, added"
        }
        if mu.isFinite {
            return "Data consistency: not applied; the correction's energy was \(String(format: "%.3g", excess)) times what blur plus white noise predicts (limit \(Int(DataConsistency.maxExcess))): the residual holds what that model cannot explain"
        }
        return "Data consistency: the residual (input - PSF * output) holds nothing above the noise; output unchanged"
    }
}
