import Foundation
import ModelFormat

/// Bessel function of the first kind of order 1, in Float64: the power series below |x| = 12,
/// Hankel's asymptotic expansion above (absolute error below 5e-12, tested against libm).
public func besselJ1(_ x: Double) -> Double {
    let ax = abs(x)
    if ax < 12 {
        // J1(x) = sum_k (-1)^k (x/2)^(2k+1) / (k! (k+1)!)
        let h = x / 2, h2 = h * h
        var term = h, sum = h
        var k = 0.0
        while true {
            k += 1
            term *= -h2 / (k * (k + 1))
            sum += term
            if abs(term) <= 1e-17 * abs(sum) || k > 60 { break }
        }
        return sum
    }
    // J1(x) ~ sqrt(2/(pi x)) (P cos(chi) - Q sin(chi)), chi = x - 3 pi / 4, mu = 4.
    let mu = 4.0
    var p = 1.0, q = 0.0, term = 1.0
    var k = 1.0
    let z8 = 8 * ax
    while k < 30 {
        term *= (mu - (2 * k - 1) * (2 * k - 1)) / (k * z8)
        if Int(k) % 2 == 1 { q += term * (Int(k) % 4 == 1 ? 1 : -1) } else { p += term * (Int(k) % 4 == 2 ? -1 : 1) }
        if abs(term) < 1e-17 { break }
        k += 1
    }
    let chi = ax - 0.75 * Double.pi
    let r = (2 / (Double.pi * ax)).squareRoot() * (p * cos(chi) - q * sin(chi))
    return x < 0 ? -r : r
}

/// The paper's Airy PSF: on an n x n grid over linspace(-1, 1, n), r = hypot(x, y) * pi * rings,
/// PSF = (J1(r) / r)^2 (limit 1/4 at r = 0), normalised to sum 1.
public func airyPSF(size n: Int = 64, rings: Double = 5) -> Image2D {
    var psf = Image2D(height: n, width: n)
    let step = n > 1 ? 2.0 / Double(n - 1) : 0
    for i in 0..<n {
        for j in 0..<n {
            let y = -1 + Double(i) * step, x = -1 + Double(j) * step
            let r = (x * x + y * y).squareRoot() * Double.pi * rings
            let v = r < 1e-8 ? 0.5 : besselJ1(r) / r
            psf[i, j] = v * v
        }
    }
    let s = psf.pixels.reduce(0, +)
    return psf.map { $0 / s }
}

/// 'same'-size linear convolution with zero boundary, through the FFT:
///     out[i, j] = sum_(u, v) image[i + oy - u, j + ox - v] * kernel[u, v]
/// with the kernel origin (oy, ox) = ((kh - 1) / 2, (kw - 1) / 2): the convention of
/// scipy.signal.fftconvolve(mode='same') that Flamary 2017 degraded its images with (for the
/// 64x64 PSF the origin is pixel 31, half a pixel before the PSF's centre at 31.5). Every
/// classical method applies exactly this operator and its exact adjoint, so no offset arises.
public final class LinearConvolution: @unchecked Sendable {
    public let height: Int
    public let width: Int
    public let kernelHeight: Int
    public let kernelWidth: Int
    let top: Int          // rows of the top half (the bottom half has height - top)
    let ph: Int
    let pw: Int
    let oy: Int
    let ox: Int
    let spectrum: ComplexImage
    public var threads: Int

    /// Both halves of the image (top rows in the real part, bottom rows in the imaginary part)
    /// are convolved by one complex FFT on a grid of about half the rows: the kernel is real, so
    /// the two never mix, and each half's contribution spreads into the other's rows by at most
    /// the kernel's extent, where the two are summed.
    public init(kernel: Image2D, height: Int, width: Int, threads: Int = 1) {
        (self.height, self.width, self.threads) = (height, width, threads)
        (kernelHeight, kernelWidth) = (kernel.height, kernel.width)
        top = (height + 1) / 2
        ph = FFTPlan.fastSize(atLeast: top + kernel.height - 1)
        pw = FFTPlan.fastSize(atLeast: width + kernel.width - 1)
        oy = (kernel.height - 1) / 2
        ox = (kernel.width - 1) / 2
        var k = ComplexImage(height: ph, width: pw)
        for u in 0..<kernel.height {
            for v in 0..<kernel.width {
                let y = (u - oy + ph) % ph, x = (v - ox + pw) % pw
                k.re[y * pw + x] += kernel[u, v]
            }
        }
        k.transform(inverse: false, threads: threads)
        spectrum = k
    }

    /// The blurred image (same size).
    public func apply(_ image: Image2D) -> Image2D { run(image, adjoint: false) }

    /// The adjoint operator (correlation with the kernel), as Richardson-Lucy and gradient
    /// methods need.
    public func adjoint(_ image: Image2D) -> Image2D { run(image, adjoint: true) }

    private func run(_ image: Image2D, adjoint: Bool) -> Image2D {
        precondition(image.height == height && image.width == width)
        var f = ComplexImage(height: ph, width: pw)
        let bottom = height - top
        for y in 0..<top { for x in 0..<width { f.re[y * pw + x] = image.pixels[y * width + x] } }
        for y in 0..<bottom { for x in 0..<width { f.im[y * pw + x] = image.pixels[(top + y) * width + x] } }
        f.transform(inverse: false, threads: threads)
        let sign: Double = adjoint ? -1 : 1
        for i in 0..<f.re.count {
            let (a, b) = (f.re[i], f.im[i])
            let (c, d) = (spectrum.re[i], sign * spectrum.im[i])
            f.re[i] = a * c - b * d
            f.im[i] = a * d + b * c
        }
        f.transform(inverse: true, threads: threads)
        let scale = 1 / Double(ph * pw)
        // Rows a half starting at row s reaches: (i - s) in [lo, len + span) with the kernel's
        // extent before (lo < 0, wrapped to the end of the grid) and after.
        let (before, after) = adjoint ? (kernelHeight - 1 - oy, oy) : (oy, kernelHeight - 1 - oy)
        var out = Image2D(height: height, width: width)
        func add(_ part: [Double], start: Int, len: Int) {
            for i in max(0, start - before)..<min(height, start + len + after) {
                let row = (((i - start) % ph) + ph) % ph
                for x in 0..<width { out.pixels[i * width + x] += part[row * pw + x] * scale }
            }
        }
        add(f.re, start: 0, len: top)
        add(f.im, start: top, len: bottom)
        // Columns: the kernel's column origin is handled by the spectrum (wrapped at 0).
        return out
    }
}

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

/// Flamary 2017's degradation: truth = max(image, 0) / max(image); observed = truth blurred by the
/// Airy PSF ('same' FFT convolution) plus white Gaussian noise of standard deviation sigma.
public struct Degradation: Equatable, Sendable {
    public var psfSize: Int
    public var rings: Double
    public var sigma: Double

    public init(psfSize: Int = 64, rings: Double = 5, sigma: Double = 0.01) {
        (self.psfSize, self.rings, self.sigma) = (psfSize, rings, sigma)
    }

    public var psf: Image2D { airyPSF(size: psfSize, rings: rings) }

    public var description: String { "airy(size=\(psfSize), rings=\(rings)) + gaussian(sigma=\(sigma))" }

    /// Clips negatives and divides by the maximum (NaNs become 0).
    public static func normalise(_ image: Image2D) -> Image2D {
        let m = image.pixels.reduce(0.0) { $1.isNaN ? $0 : max($0, $1) }
        let s = m > 0 ? 1 / m : 1
        return image.map { $0.isNaN ? 0 : max($0, 0) * s }
    }

    public func blur(_ truth: Image2D, threads: Int = 1) -> Image2D {
        LinearConvolution(kernel: psf, height: truth.height, width: truth.width, threads: threads).apply(truth)
    }

    /// Adds N(0, sigma^2) noise drawn from `seed`.
    public func addNoise(_ image: Image2D, seed: UInt64) -> Image2D {
        var g = GaussianStream(seed: seed)
        return image.map { $0 + sigma * g.next() }
    }

    /// (truth, observed) for a raw image.
    public func degrade(_ raw: Image2D, seed: UInt64, threads: Int = 1) -> (truth: Image2D, observed: Image2D) {
        let truth = Degradation.normalise(raw)
        return (truth, addNoise(blur(truth, threads: threads), seed: seed))
    }
}
