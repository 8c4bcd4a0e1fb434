import Foundation
import Imaging

/// Image quality metrics. Every function takes an optional validity mask (true = use the pixel);
/// NaN pixels in either image are always left out.
public enum Metrics {
    /// Mean squared error over the pixels at least `crop` from every border and valid in both.
    public static func mse(_ truth: Image2D, _ estimate: Image2D, crop: Int = 0, mask: [Bool]? = nil) -> Double {
        precondition(truth.height == estimate.height && truth.width == estimate.width)
        var s = 0.0, n = 0
        for y in crop..<max(crop, truth.height - crop) {
            for x in crop..<max(crop, truth.width - crop) {
                let i = y * truth.width + x
                let (a, b) = (truth.pixels[i], estimate.pixels[i])
                if a.isNaN || b.isNaN || mask?[i] == false { continue }
                s += (a - b) * (a - b); n += 1
            }
        }
        return n > 0 ? s / Double(n) : .nan
    }

    /// PSNR in dB: 10 log10(range^2 / MSE). The paper's convention is range 1 on images
    /// normalised to max 1 with a 32-pixel border crop (`paperPSNR`); for raw FITS data give the
    /// data range.
    public static func psnr(_ truth: Image2D, _ estimate: Image2D, dataRange: Double, crop: Int = 0, mask: [Bool]? = nil) -> Double {
        10 * log10(dataRange * dataRange / mse(truth, estimate, crop: crop, mask: mask))
    }

    /// Flamary 2017: range 1, 32 pixels cropped from each border.
    public static func paperPSNR(_ truth: Image2D, _ estimate: Image2D) -> Double {
        psnr(truth, estimate, dataRange: 1, crop: 32)
    }

    /// Structural similarity (Wang et al. 2004) with Gaussian weights, exactly as scikit-image's
    /// `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    /// data_range=R)`: local statistics by a Gaussian filter (sigma 1.5, truncated at 3.5 sigma:
    /// 11 taps) with mirror ('reflect') borders, K1 = 0.01, K2 = 0.03, and the mean of the SSIM
    /// map without its 5-pixel border. `sampleCovariance` applies scikit-image's N/(N-1) factor.
    /// NaN pixels are replaced by 0 for filtering and left out of the mean.
    public static func ssim(_ a: Image2D, _ b: Image2D, dataRange: Double, sampleCovariance: Bool = false, mask: [Bool]? = nil) -> Double {
        let sigma = 1.5, truncate = 3.5
        let r = Int(truncate * sigma + 0.5)
        var k = (-r...r).map { exp(-Double($0 * $0) / (2 * sigma * sigma)) }
        let ks = k.reduce(0, +)
        k = k.map { $0 / ks }
        let (h, w) = (a.height, a.width)
        let x = a.pixels.map { $0.isNaN ? 0 : $0 }, y = b.pixels.map { $0.isNaN ? 0 : $0 }
        func filter(_ v: [Double]) -> [Double] {
            let mirror = Image2D.reflectIndex
            var tmp = [Double](repeating: 0, count: v.count), out = tmp
            for yy in 0..<h { for xx in 0..<w {
                var s = 0.0
                for t in -r...r { s += k[t + r] * v[yy * w + mirror(xx + t, w)] }
                tmp[yy * w + xx] = s
            } }
            for yy in 0..<h { for xx in 0..<w {
                var s = 0.0
                for t in -r...r { s += k[t + r] * tmp[mirror(yy + t, h) * w + xx] }
                out[yy * w + xx] = s
            } }
            return out
        }
        let ux = filter(x), uy = filter(y)
        let uxx = filter(x.map { $0 * $0 }), uyy = filter(y.map { $0 * $0 }), uxy = filter(zip(x, y).map { $0 * $1 })
        let np = Double((2 * r + 1) * (2 * r + 1))
        let covNorm = sampleCovariance ? np / (np - 1) : 1
        let c1 = (0.01 * dataRange) * (0.01 * dataRange), c2 = (0.03 * dataRange) * (0.03 * dataRange)
        var s = 0.0, n = 0
        for yy in r..<max(r, h - r) { for xx in r..<max(r, w - r) {
            let i = yy * w + xx
            if a.pixels[i].isNaN || b.pixels[i].isNaN || mask?[i] == false { continue }
            let vx = covNorm * (uxx[i] - ux[i] * ux[i]), vy = covNorm * (uyy[i] - uy[i] * uy[i])
            let vxy = covNorm * (uxy[i] - ux[i] * uy[i])
            let num = (2 * ux[i] * uy[i] + c1) * (2 * vxy + c2)
            let den = (ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2)
            s += num / den; n += 1
        } }
        return n > 0 ? s / Double(n) : .nan
    }

    /// RMS of (PSF * restored - observed) over the pixels at least `crop` from the border: the
    /// data-fit residual, which needs no truth.
    public static func dataResidual(observed: Image2D, restored: Image2D, psf: Image2D, crop: Int = 0) -> Double {
        let reblurred = LinearConvolution(kernel: psf, height: restored.height, width: restored.width)
            .apply(restored.map { $0.isNaN ? 0 : $0 })
        return mse(observed, reblurred, crop: crop).squareRoot()
    }

    /// Kullback-Leibler divergence KL(P || Q) in nats between the pixel histograms of `p` (the
    /// reference) and `q`: `bins` equal bins spanning the reference's [min, max] (values of q
    /// outside are counted in the end bins), each histogram normalised to sum 1 after adding
    /// `epsilon` to every bin (so empty bins of Q stay finite).
    public static func klDivergence(_ p: Image2D, _ q: Image2D, bins: Int = 256, epsilon: Double = 1e-10, mask: [Bool]? = nil) -> Double {
        var lo = Double.infinity, hi = -Double.infinity
        for (i, v) in p.pixels.enumerated() where !v.isNaN && !q.pixels[i].isNaN && mask?[i] != false { lo = min(lo, v); hi = max(hi, v) }
        guard hi > lo else { return .nan }
        var hp = [Double](repeating: epsilon, count: bins), hq = hp
        func bin(_ v: Double) -> Int { min(bins - 1, max(0, Int((v - lo) / (hi - lo) * Double(bins)))) }
        for (i, v) in p.pixels.enumerated() where !v.isNaN && !q.pixels[i].isNaN && mask?[i] != false {
            hp[bin(v)] += 1; hq[bin(q.pixels[i])] += 1
        }
        let sp = hp.reduce(0, +), sq = hq.reduce(0, +)
        var kl = 0.0
        for i in 0..<bins { let a = hp[i] / sp, b = hq[i] / sq; kl += a * log(a / b) }
        return kl
    }
}
