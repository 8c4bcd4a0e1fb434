import Foundation
import Runtime

/// Registration of two frames of one field by a translation: FFT phase correlation for the whole
/// pixel shift, refined to 0.01 px by evaluating the inverse transform of the normalised cross-power
/// spectrum on finer and finer grids around its peak (matrix-multiply DFT, Guizar-Sicairos et al.
/// 2008), then the reference resampled onto the frame's grid by bicubic (Keys, a = -0.5)
/// interpolation. Frames must have the same size; the scored region is their overlap.
public struct Registration: Equatable, Sendable {
    /// The shift d with frame(p) = reference(p - d), in pixels (rows, columns).
    public var dy: Double
    public var dx: Double
    /// Height of the phase-correlation peak (1 for identical frames; near 0 for unrelated ones).
    public var peak: Double
    /// Rows y0..<y1 and columns x0..<x1 where the resampled reference is defined.
    public var y0: Int, y1: Int, x0: Int, x1: Int

    public var overlapHeight: Int { max(0, y1 - y0) }
    public var overlapWidth: Int { max(0, x1 - x0) }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Shifts below this (pixels, both axes) are treated as none: the frames are used as they are.
    public static let negligibleShift = 0.02

    /// Registers `frame` on `reference`. Throws when sizes differ, when either frame has no valid
    /// pixels, or when the overlap is smaller than `minimumOverlap` pixels on a side or the
    /// correlation peak is not above the noise (the frames do not show one field).
    public static func register(frame: Image2D, reference: Image2D, minimumOverlap: Int = 32, threads: Int = 1) throws -> Registration {
        guard frame.height == reference.height && frame.width == reference.width else {
            throw Failure(description: "the frames differ in size (\(frame.width)x\(frame.height) and \(reference.width)x\(reference.height)); register them onto one grid first or crop them to the same size")
        }
        let (h, w) = (frame.height, frame.width)
        guard h >= 8 && w >= 8 else { throw Failure(description: "frames of \(w)x\(h) are too small to register") }
        func prepared(_ img: Image2D, _ what: String) throws -> ComplexImage {
            let valid = img.pixels.filter { $0.isFinite }
            guard !valid.isEmpty else { throw Failure(description: "the \(what) has no valid pixels") }
            var v = valid
            let med = SkyStatistics.median(&v)
            var c = ComplexImage(height: h, width: w)
            // A Tukey-like taper (cosine over the outer 1/8) so the frame edges do not correlate.
            let ty = max(1, h / 8), tx = max(1, w / 8)
            func taper(_ i: Int, _ n: Int, _ t: Int) -> Double {
                let d = min(i, n - 1 - i)
                return d >= t ? 1 : 0.5 - 0.5 * cos(Double.pi * (Double(d) + 0.5) / Double(t))
            }
            for y in 0..<h {
                let wy = taper(y, h, ty)
                for x in 0..<w {
                    let p = img.pixels[y * w + x]
                    c.re[y * w + x] = p.isFinite ? (p - med) * wy * taper(x, w, tx) : 0
                }
            }
            c.transform(inverse: false, threads: threads)
            return c
        }
        let a = try prepared(frame, "frame"), b = try prepared(reference, "reference")
        // Normalised cross-power spectrum R = A conj(B) / |A conj(B)| for the whole-pixel peak
        // (sharp whatever the image content); the plain cross-power spectrum A conj(B) for the
        // sub-pixel refinement (weighted by signal, so noise-dominated frequencies do not bias it).
        // The zero frequency (the frames' mean levels under the common taper) is left out.
        var r = ComplexImage(height: h, width: w)
        var spectrum = ComplexImage(height: h, width: w)
        for i in 1..<(h * w) {
            let re = a.re[i] * b.re[i] + a.im[i] * b.im[i]
            let im = a.im[i] * b.re[i] - a.re[i] * b.im[i]
            let m = (re * re + im * im).squareRoot()
            if m > 1e-300 { r.re[i] = re / m; r.im[i] = im / m }
            spectrum.re[i] = re; spectrum.im[i] = im
        }
        r.transform(inverse: true, threads: threads)
        let n = Double(h * w)
        var best = (0, 0, -Double.infinity)
        var sum = 0.0, sum2 = 0.0
        for y in 0..<h { for x in 0..<w {
            let v = r.re[y * w + x] / n
            sum += v; sum2 += v * v
            if v > best.2 { best = (y, x, v) }
        } }
        let mean = sum / n, sd = (max(0, sum2 / n - mean * mean)).squareRoot()
        var dy = Double(best.0 > h / 2 ? best.0 - h : best.0)
        var dx = Double(best.1 > w / 2 ? best.1 - w : best.1)
        // The peak of unrelated frames is a few standard deviations of the surface (up to about 8
        // for star fields whose stars coincide by chance); a real one stands tens above it.
        guard best.2 > mean + 12 * sd else {
            throw Failure(description: String(format: "the frames do not overlap or do not show the same field (phase-correlation peak %.3g is within 12 sigma of the noise)", best.2))
        }
        // Refinement: 21 x 21 points around the estimate with steps 0.1, then 0.01 px.
        let peak = best.2
        for step in [0.1, 0.01] {
            (dy, dx, _) = refine(spectrum, cy: dy, cx: dx, step: step, half: 10)
        }
        if abs(dy) < negligibleShift && abs(dx) < negligibleShift { (dy, dx) = (0, 0) }
        // Where the resampled reference is defined: p - d at least 1 pixel inside (bicubic support).
        let margin = { (d: Double) -> (Int, Int) in
            d == d.rounded() ? (max(0, Int(d)), max(0, -Int(d))) : (max(0, Int(d.rounded(.up))) + 1, max(0, Int((-d).rounded(.up))) + 1)
        }
        let (top, bottom) = margin(dy), (left, right) = margin(dx)
        let reg = Registration(dy: dy, dx: dx, peak: peak, y0: top, y1: h - bottom, x0: left, x1: w - right)
        guard reg.overlapHeight >= minimumOverlap && reg.overlapWidth >= minimumOverlap else {
            throw Failure(description: String(format: "the frames overlap on %dx%d pixels only (shift %.2f, %.2f px); at least %dx%d are needed",
                                              reg.overlapWidth, reg.overlapHeight, dy, dx, minimumOverlap, minimumOverlap))
        }
        return reg
    }

    /// The inverse DFT of `spectrum` at the (2 half + 1)^2 shifts (cy + i step, cx + j step):
    /// C = E_y R E_x^T with E(t, u) = exp(+2 pi i u' t / n) (u' the signed frequency).
    static func refine(_ s: ComplexImage, cy: Double, cx: Double, step: Double, half: Int) -> (Double, Double, Double) {
        let (h, w) = (s.height, s.width)
        let m = 2 * half + 1
        func freq(_ u: Int, _ n: Int) -> Double { Double(u > n / 2 ? u - n : u) }
        // T = R E_x^T: h x m.
        var tre = [Double](repeating: 0, count: h * m), tim = tre
        var exr = [Double](repeating: 0, count: m * w), exi = exr
        for j in 0..<m {
            let t = cx + Double(j - half) * step
            for v in 0..<w { let ph = 2 * Double.pi * freq(v, w) * t / Double(w); exr[j * w + v] = cos(ph); exi[j * w + v] = sin(ph) }
        }
        for y in 0..<h {
            for j in 0..<m {
                var sr = 0.0, si = 0.0
                for v in 0..<w {
                    let (a, b) = (s.re[y * w + v], s.im[y * w + v]), (c, d) = (exr[j * w + v], exi[j * w + v])
                    sr += a * c - b * d; si += a * d + b * c
                }
                tre[y * m + j] = sr; tim[y * m + j] = si
            }
        }
        var best = (cy, cx, -Double.infinity)
        for i in 0..<m {
            let t = cy + Double(i - half) * step
            var eyr = [Double](repeating: 0, count: h), eyi = eyr
            for u in 0..<h { let ph = 2 * Double.pi * freq(u, h) * t / Double(h); eyr[u] = cos(ph); eyi[u] = sin(ph) }
            for j in 0..<m {
                var sr = 0.0
                for u in 0..<h { sr += eyr[u] * tre[u * m + j] - eyi[u] * tim[u * m + j] }
                if sr > best.2 { best = (t, cx + Double(j - half) * step, sr) }
            }
        }
        return best
    }

    /// The reference resampled onto the frame's grid, reference(p - d), by bicubic interpolation
    /// (exact copy for whole-pixel shifts); NaN outside the overlap or where an input is NaN.
    public func aligned(_ reference: Image2D) -> Image2D {
        let (h, w) = (reference.height, reference.width)
        var out = Image2D(height: h, width: w, repeating: .nan)
        func weights(_ f: Double) -> [Double] {
            // Keys cubic convolution, a = -0.5, for offsets -1, 0, 1, 2 from floor.
            let a = -0.5
            func k(_ t: Double) -> Double {
                let x = abs(t)
                if x <= 1 { return (a + 2) * x * x * x - (a + 3) * x * x + 1 }
                if x < 2 { return a * x * x * x - 5 * a * x * x + 8 * a * x - 4 * a }
                return 0
            }
            return [k(1 + f), k(f), k(1 - f), k(2 - f)]
        }
        let sy = -dy, sx = -dx
        let fy0 = sy.rounded(.down), fx0 = sx.rounded(.down)
        let (iy, ix) = (Int(fy0), Int(fx0))
        let wy = weights(sy - fy0), wx = weights(sx - fx0)
        let whole = sy == fy0 && sx == fx0
        for y in y0..<y1 { for x in x0..<x1 {
            if whole {
                out[y, x] = reference[y + iy, x + ix]
                continue
            }
            var s = 0.0
            for a in 0..<4 {
                let yy = y + iy - 1 + a
                var row = 0.0
                for b in 0..<4 { row += wx[b] * reference[yy, x + ix - 1 + b] }
                s += wy[a] * row
            }
            out[y, x] = s
        } }
        return out
    }
}
