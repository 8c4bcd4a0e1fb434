import Foundation
import Runtime
import Imaging

/// The classical deconvolution methods of Flamary 2017's Table I, on the same operator as the
/// degradation (`LinearConvolution`: zero boundary, PSF origin at ((k - 1) / 2, (k - 1) / 2)).
public enum Deconvolution {
    // MARK: Wiener

    /// Where the PSF's origin sits in its array for the periodic (FFT-grid) Wiener filter.
    public enum PSFOrigin: Sendable {
        /// ((k - 1) / 2, (k - 1) / 2): the degradation's convention (scipy's 'same').
        case same
        /// (k / 2, k / 2): scikit-image's `ir2tf` convention (half a pixel the other way for
        /// even PSFs: one pixel off the degradation; costs Wiener 1-2.6 dB on real images).
        case fftCentre
    }

    /// The spectrum of `psf` on an h x w periodic grid with the given origin.
    static func transfer(_ psf: Image2D, _ h: Int, _ w: Int, _ origin: PSFOrigin, threads: Int) -> ComplexImage {
        let (oy, ox) = origin == .same ? ((psf.height - 1) / 2, (psf.width - 1) / 2) : (psf.height / 2, psf.width / 2)
        var k = ComplexImage(height: h, width: w)
        for u in 0..<psf.height { for v in 0..<psf.width {
            let y = ((u - oy) % h + h) % h, x = ((v - ox) % w + w) % w
            k.re[y * w + x] += psf[u, v]
        } }
        k.transform(inverse: false, threads: threads)
        return k
    }

    static func spectrum(_ img: Image2D, threads: Int) -> ComplexImage {
        var f = ComplexImage(height: img.height, width: img.width)
        f.re = img.pixels.map { $0.isNaN ? 0 : $0 }
        f.transform(inverse: false, threads: threads)
        return f
    }

    /// |L|^2 of the discrete Laplacian [0 -1 0; -1 4 -1; 0 -1 0] (scikit-image's default
    /// regulariser) at frequency (u, v) of an h x w grid.
    static func laplacian2(_ h: Int, _ w: Int) -> [Double] {
        let cu = (0..<h).map { 2 - 2 * cos(2 * Double.pi * Double($0) / Double(h)) }
        let cv = (0..<w).map { 2 - 2 * cos(2 * Double.pi * Double($0) / Double(w)) }
        var out = [Double](repeating: 0, count: h * w)
        for u in 0..<h { for v in 0..<w { let l = cu[u] + cv[v]; out[u * w + v] = l * l } }
        return out
    }

    /// How Wiener treats the image borders.
    public enum Boundary: Sendable {
        /// The image is one period (scikit-image's `wiener`): borders wrap and ring.
        case periodic
        /// The image is mirror-padded by the PSF size (and up to a fast FFT length) first, so the
        /// periodic filter sees no jump at the borders; the result is cropped back.
        case reflect
    }

    /// Mirror padding (d c b a | a b c d | d c b a) to ph x pw with the image at (top, left).
    static func mirrorPad(_ img: Image2D, _ ph: Int, _ pw: Int, _ top: Int, _ left: Int) -> Image2D {
        let m = Image2D.reflectIndex
        var out = Image2D(height: ph, width: pw)
        for y in 0..<ph { for x in 0..<pw {
            let v = img[m(y - top, img.height), m(x - left, img.width)]
            out.pixels[y * pw + x] = v.isNaN ? 0 : v
        } }
        return out
    }

    static func padGeometry(_ img: Image2D, _ psf: Image2D, _ b: Boundary) -> (ph: Int, pw: Int, top: Int, left: Int) {
        guard b == .reflect else { return (img.height, img.width, 0, 0) }
        let ph = FFTPlan.fastSize(atLeast: img.height + 2 * psf.height), pw = FFTPlan.fastSize(atLeast: img.width + 2 * psf.width)
        return (ph, pw, (ph - img.height) / 2, (pw - img.width) / 2)
    }

    /// Wiener-Tikhonov deconvolution with a Laplacian regulariser:
    /// X = conj(H) Y / (|H|^2 + lambda |L|^2) on the FFT grid.
    public static func wiener(_ observed: Image2D, psf: Image2D, lambda: Double, origin: PSFOrigin = .same,
                              boundary: Boundary = .periodic, threads: Int = 1) -> Image2D {
        let g = padGeometry(observed, psf, boundary)
        let hs = transfer(psf, g.ph, g.pw, origin, threads: threads)
        let y = spectrum(mirrorPad(observed, g.ph, g.pw, g.top, g.left), threads: threads)
        let x = wienerApply(y, hs, lambda, laplacian2(g.ph, g.pw), g.ph, g.pw, threads)
        return boundary == .periodic ? x : x.crop(y: g.top, x: g.left, height: observed.height, width: observed.width)
    }

    static func wienerApply(_ y: ComplexImage, _ hs: ComplexImage, _ lambda: Double, _ lap: [Double], _ h: Int, _ w: Int,
                            _ threads: Int) -> Image2D {
        var f = ComplexImage(height: h, width: w)
        for u in 0..<h { for v in 0..<w {
            let i = u * w + v
            let (a, b) = (hs.re[i], hs.im[i])
            let d = a * a + b * b + lambda * lap[i]
            // conj(H) * Y / d
            f.re[i] = (a * y.re[i] + b * y.im[i]) / d
            f.im[i] = (a * y.im[i] - b * y.re[i]) / d
        } }
        f.transform(inverse: true, threads: threads)
        let s = 1 / Double(h * w)
        return Image2D(height: h, width: w, pixels: f.re.map { $0 * s })
    }

    /// Wiener (mirror-padded borders) with lambda chosen against the truth: the PSNR (pixels at
    /// least `crop` from the border) of every lambda of `lambdas`, then two refinements between
    /// the best and its neighbours on a log scale. The spectra are computed once; each pair of
    /// lambdas costs one inverse FFT.
    public static func wienerBest(_ observed: Image2D, truth: Image2D, psf: Image2D, lambdas: [Double], crop: Int = 32,
                                  threads: Int = 1) -> (image: Image2D, lambda: Double) {
        let g = padGeometry(observed, psf, .reflect)
        let (h, w) = (g.ph, g.pw)
        let hs = transfer(psf, h, w, .same, threads: threads)
        let y = spectrum(mirrorPad(observed, h, w, g.top, g.left), threads: threads)
        let lap = laplacian2(h, w)
        let c = min(crop, (observed.height - 1) / 2, (observed.width - 1) / 2)
        var tried: [(lambda: Double, psnr: Double, image: Image2D)] = []
        // Two lambdas per inverse transform: both restorations are real, so the spectrum
        // X(a) + i X(b) transforms back to x(a) + i x(b).
        func attempt(_ ls: [Double]) {
            var i = 0
            while i < ls.count {
                let a = ls[i], b = i + 1 < ls.count ? ls[i + 1] : nil
                var f = ComplexImage(height: h, width: w)
                for k in 0..<(h * w) {
                    let (hr, hi) = (hs.re[k], hs.im[k])
                    let p = hr * hr + hi * hi
                    let nr = hr * y.re[k] + hi * y.im[k], ni = hr * y.im[k] - hi * y.re[k]   // conj(H) Y
                    let da = 1 / (p + a * lap[k])
                    f.re[k] = nr * da; f.im[k] = ni * da
                    if let b = b {
                        let db = 1 / (p + b * lap[k])
                        f.re[k] -= ni * db; f.im[k] += nr * db
                    }
                }
                f.transform(inverse: true, threads: threads)
                let scale = 1 / Double(h * w)
                for (l, part) in [(a, f.re)] + (b.map { [($0, f.im)] } ?? []) {
                    var x = Image2D(height: observed.height, width: observed.width)
                    for r in 0..<observed.height {
                        for q in 0..<observed.width { x.pixels[r * observed.width + q] = part[(r + g.top) * w + q + g.left] * scale }
                    }
                    tried.append((l, Metrics.psnr(truth, x, dataRange: 1, crop: c), x))
                }
                i += 2
            }
        }
        let sorted = lambdas.sorted()
        attempt(sorted)
        for _ in 0..<2 where sorted.count > 1 {
            let best = tried.max { $0.psnr < $1.psnr }!
            let below = tried.filter { $0.lambda < best.lambda }.map { $0.lambda }.max()
            let above = tried.filter { $0.lambda > best.lambda }.map { $0.lambda }.min()
            attempt([below.map { ($0 * best.lambda).squareRoot() }, above.map { ($0 * best.lambda).squareRoot() }].compactMap { $0 })
        }
        let best = tried.max { $0.psnr < $1.psnr }!
        return (best.image, best.lambda)
    }

    // MARK: Richardson-Lucy

    /// Richardson-Lucy from a constant 0.5 start: x <- x * A^T(y / (A x + 1e-12)). `onIterate`
    /// sees every iterate (1-based count) and may stop the run by returning false.
    public static func richardsonLucy(_ observed: Image2D, psf: Image2D, iterations: Int, threads: Int = 1,
                                      onIterate: ((Int, Image2D) -> Bool)? = nil) -> Image2D {
        let op = LinearConvolution(kernel: psf, height: observed.height, width: observed.width, threads: threads)
        var x = Image2D(height: observed.height, width: observed.width, repeating: 0.5)
        let y = observed.pixels.map { $0.isNaN ? 0 : $0 }
        for it in 1...max(1, iterations) {
            var ratio = op.apply(x)
            for i in 0..<ratio.count { ratio.pixels[i] = y[i] / (ratio.pixels[i] + 1e-12) }
            let c = op.adjoint(ratio)
            for i in 0..<x.count { x.pixels[i] *= c.pixels[i] }
            if let f = onIterate, !f(it, x) { break }
        }
        return x
    }

    /// Richardson-Lucy keeping the iterate with the best PSNR against the truth (pixels at least
    /// `crop` from the border: the paper's 32 by default), up to `maxIterations`.
    public static func richardsonLucyBest(_ observed: Image2D, truth: Image2D, psf: Image2D, maxIterations: Int, crop: Int = 32,
                                          threads: Int = 1) -> (image: Image2D, iterations: Int) {
        var best = (img: observed, it: 0, psnr: -Double.infinity)
        _ = richardsonLucy(observed, psf: psf, iterations: maxIterations, threads: threads) { it, x in
            let p = Metrics.psnr(truth, x, dataRange: 1, crop: crop)
            if p > best.psnr { best = (x, it, p) }
            return true
        }
        return (best.img, best.it)
    }

    // MARK: Prox-TV (Condat 2014)

    /// min_x 0.5 ||A x - y||^2 + mu TV(x) subject to x >= 0 (isotropic TV, forward differences),
    /// by Condat's primal-dual algorithm (2014, Algorithm 3.1 with rho = 1) for a fixed number of
    /// iterations from x = y. Steps: sigma = 0.5, tau = 0.99 / (beta / 2 + 8 sigma), beta = 1
    /// (||A||^2 <= 1 for a PSF of sum 1), so 1/tau - sigma ||D||^2 >= beta / 2 holds.
    public static func proxTV(_ observed: Image2D, psf: Image2D, mu: Double, iterations: Int, threads: Int = 1) -> Image2D {
        let (h, w) = (observed.height, observed.width)
        let op = LinearConvolution(kernel: psf, height: h, width: w, threads: threads)
        let sigma = 0.5, tau = 0.99 / (0.5 + 8 * sigma)
        let y = observed.map { $0.isNaN ? 0 : $0 }
        var x = y
        var u1 = [Double](repeating: 0, count: h * w), u2 = u1
        for _ in 0..<iterations {
            var r = op.apply(x)
            for i in 0..<r.count { r.pixels[i] -= y.pixels[i] }
            let g = op.adjoint(r)
            // D^T u (adjoint of forward differences with zero last difference).
            var xt = x
            for yy in 0..<h { for xx in 0..<w {
                let i = yy * w + xx
                var dtu = 0.0
                dtu += (xx > 0 ? u1[i - 1] : 0) - (xx < w - 1 ? u1[i] : 0)
                dtu += (yy > 0 ? u2[i - w] : 0) - (yy < h - 1 ? u2[i] : 0)
                xt.pixels[i] = max(0, x.pixels[i] - tau * (g.pixels[i] + dtu))
            } }
            for yy in 0..<h { for xx in 0..<w {
                let i = yy * w + xx
                let d = 2 * xt.pixels[i] - x.pixels[i]
                let dx = xx < w - 1 ? (2 * xt.pixels[i + 1] - x.pixels[i + 1]) - d : 0
                let dy = yy < h - 1 ? (2 * xt.pixels[i + w] - x.pixels[i + w]) - d : 0
                let a = u1[i] + sigma * dx, b = u2[i] + sigma * dy
                let n = max(1, (a * a + b * b).squareRoot() / mu)
                u1[i] = a / n; u2[i] = b / n
            } }
            x = xt
        }
        return x
    }
}
