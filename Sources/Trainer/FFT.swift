import Foundation
import Runtime

/// A complex discrete Fourier transform of one length, any length (mixed radix 4, 2, 3, 5 and a
/// generic odd-radix butterfly for other prime factors), in Float64 with split real/imaginary
/// arrays. Forward: X[k] = sum_n x[n] exp(-2 pi i n k / N); inverse without the 1/N (callers
/// scale). Recursive decimation in time; the twiddles are computed once per plan.
public final class FFTPlan: @unchecked Sendable {
    public let n: Int
    let factors: [Int]
    let cosTable: [Double]
    let sinTable: [Double]

    public init(_ n: Int) {
        precondition(n >= 1)
        self.n = n
        var f: [Int] = []
        var m = n
        while m % 4 == 0 { f.append(4); m /= 4 }
        while m % 2 == 0 { f.append(2); m /= 2 }
        var p = 3
        while m > 1 {
            while m % p == 0 { f.append(p); m /= p }
            p += 2
            if p * p > m && m > 1 { f.append(m); m = 1 }
        }
        factors = f
        cosTable = (0..<n).map { cos(-2 * Double.pi * Double($0) / Double(n)) }
        sinTable = (0..<n).map { sin(-2 * Double.pi * Double($0) / Double(n)) }
    }

    /// Lengths that are products of 2, 3 and 5 (fast to transform).
    public static func fastSize(atLeast n: Int) -> Int {
        var best = Int.max
        var p2 = 1
        while p2 < 2 * n {
            var p3 = p2
            while p3 < 2 * n {
                var p5 = p3
                while p5 < 2 * n {
                    if p5 >= n && p5 < best { best = p5 }
                    p5 *= 5
                }
                p3 *= 3
            }
            p2 *= 2
        }
        return best
    }

    /// Transforms `count` elements read with stride `inStride` from (inRe, inIm) into contiguous
    /// (outRe, outIm). `inverse` conjugates the twiddles. Input and output must not overlap.
    public func transform(_ inRe: UnsafePointer<Double>, _ inIm: UnsafePointer<Double>, inStride: Int,
                          _ outRe: UnsafeMutablePointer<Double>, _ outIm: UnsafeMutablePointer<Double>, inverse: Bool) {
        let sign: Double = inverse ? -1 : 1
        cosTable.withUnsafeBufferPointer { c in
            sinTable.withUnsafeBufferPointer { s in
                work(outRe, outIm, inRe, inIm, fstride: 1, inStride: inStride, level: 0, c.baseAddress!, s.baseAddress!, sign)
            }
        }
    }

    private func work(_ oRe: UnsafeMutablePointer<Double>, _ oIm: UnsafeMutablePointer<Double>,
                      _ iRe: UnsafePointer<Double>, _ iIm: UnsafePointer<Double>, fstride: Int, inStride: Int, level: Int,
                      _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        let p = factors.isEmpty ? 1 : factors[level]
        if factors.isEmpty { oRe[0] = iRe[0]; oIm[0] = iIm[0]; return }
        let m = n / (fstride * p)
        if m == 1 {
            for q in 0..<p { oRe[q] = iRe[q * fstride * inStride]; oIm[q] = iIm[q * fstride * inStride] }
        } else {
            for q in 0..<p {
                work(oRe + q * m, oIm + q * m, iRe + q * fstride * inStride, iIm + q * fstride * inStride,
                     fstride: fstride * p, inStride: inStride, level: level + 1, c, s, sign)
            }
        }
        switch p {
        case 2: butterfly2(oRe, oIm, fstride, m, c, s, sign)
        case 4: butterfly4(oRe, oIm, fstride, m, c, s, sign)
        default: butterflyGeneric(oRe, oIm, fstride, m, p, c, s, sign)
        }
    }

    @inline(__always)
    private func butterfly2(_ re: UnsafeMutablePointer<Double>, _ im: UnsafeMutablePointer<Double>, _ fs: Int, _ m: Int,
                            _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        for k in 0..<m {
            let wr = c[k * fs], wi = sign * s[k * fs]
            let br = re[k + m] * wr - im[k + m] * wi, bi = re[k + m] * wi + im[k + m] * wr
            let ar = re[k], ai = im[k]
            re[k] = ar + br; im[k] = ai + bi
            re[k + m] = ar - br; im[k + m] = ai - bi
        }
    }

    @inline(__always)
    private func butterfly4(_ re: UnsafeMutablePointer<Double>, _ im: UnsafeMutablePointer<Double>, _ fs: Int, _ m: Int,
                            _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        for k in 0..<m {
            let w1r = c[k * fs], w1i = sign * s[k * fs]
            let w2r = c[2 * k * fs], w2i = sign * s[2 * k * fs]
            let w3r = c[3 * k * fs], w3i = sign * s[3 * k * fs]
            let x0r = re[k], x0i = im[k]
            let x1r = re[k + m] * w1r - im[k + m] * w1i, x1i = re[k + m] * w1i + im[k + m] * w1r
            let x2r = re[k + 2 * m] * w2r - im[k + 2 * m] * w2i, x2i = re[k + 2 * m] * w2i + im[k + 2 * m] * w2r
            let x3r = re[k + 3 * m] * w3r - im[k + 3 * m] * w3i, x3i = re[k + 3 * m] * w3i + im[k + 3 * m] * w3r
            let t0r = x0r + x2r, t0i = x0i + x2i, t1r = x0r - x2r, t1i = x0i - x2i
            let t2r = x1r + x3r, t2i = x1i + x3i, t3r = x1r - x3r, t3i = x1i - x3i
            // (x1 - x3) * (-i * sign): forward multiplies by -i.
            let ur = sign * t3i, ui = -sign * t3r
            re[k] = t0r + t2r; im[k] = t0i + t2i
            re[k + 2 * m] = t0r - t2r; im[k + 2 * m] = t0i - t2i
            re[k + m] = t1r + ur; im[k + m] = t1i + ui
            re[k + 3 * m] = t1r - ur; im[k + 3 * m] = t1i - ui
        }
    }

    private func butterflyGeneric(_ re: UnsafeMutablePointer<Double>, _ im: UnsafeMutablePointer<Double>, _ fs: Int, _ m: Int,
                                  _ p: Int, _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        var tr = [Double](repeating: 0, count: p), ti = [Double](repeating: 0, count: p)
        for k in 0..<m {
            for q in 0..<p {
                let t = (q * k * fs) % n
                let wr = c[t], wi = sign * s[t]
                let xr = re[k + q * m], xi = im[k + q * m]
                tr[q] = xr * wr - xi * wi; ti[q] = xr * wi + xi * wr
            }
            for q2 in 0..<p {
                var sr = 0.0, si = 0.0
                for q in 0..<p {
                    let t = (q * q2 * fs * m) % n
                    let wr = c[t], wi = sign * s[t]
                    sr += tr[q] * wr - ti[q] * wi; si += tr[q] * wi + ti[q] * wr
                }
                re[k + q2 * m] = sr; im[k + q2 * m] = si
            }
        }
    }
}

/// A 2-D complex array (row-major, split real/imaginary) and its in-place 2-D transforms.
public struct ComplexImage {
    public var height: Int
    public var width: Int
    public var re: [Double]
    public var im: [Double]

    public init(height: Int, width: Int) {
        (self.height, self.width) = (height, width)
        re = [Double](repeating: 0, count: height * width)
        im = re
    }

    /// 2-D DFT (rows then columns) on up to `threads` threads.
    public mutating func transform(inverse: Bool, threads: Int = 1) {
        let rowPlan = FFTPlan(width), colPlan = height == width ? rowPlan : FFTPlan(height)
        let (h, w) = (height, width)
        re.withUnsafeMutableBufferPointer { rb in
            im.withUnsafeMutableBufferPointer { ib in
                nonisolated(unsafe) let r = rb.baseAddress!, i = ib.baseAddress!
                // Rows: each row into a scratch, then back.
                Parallel.chunks(h, threads: threads) { range in
                    let tmp = UnsafeMutablePointer<Double>.allocate(capacity: 2 * w)
                    defer { tmp.deallocate() }
                    for y in range {
                        rowPlan.transform(r + y * w, i + y * w, inStride: 1, tmp, tmp + w, inverse: inverse)
                        (r + y * w).update(from: tmp, count: w); (i + y * w).update(from: tmp + w, count: w)
                    }
                }
                // Columns: strided reads into a scratch, strided writes back.
                Parallel.chunks(w, threads: threads) { range in
                    let tmp = UnsafeMutablePointer<Double>.allocate(capacity: 2 * h)
                    defer { tmp.deallocate() }
                    for x in range {
                        colPlan.transform(r + x, i + x, inStride: w, tmp, tmp + h, inverse: inverse)
                        for y in 0..<h { r[y * w + x] = tmp[y]; i[y * w + x] = tmp[h + y] }
                    }
                }
            }
        }
    }
}
