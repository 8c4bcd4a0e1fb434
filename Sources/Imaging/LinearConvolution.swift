import Foundation
import Runtime

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
