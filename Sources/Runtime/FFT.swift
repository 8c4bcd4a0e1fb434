import Foundation

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
        case 3: butterfly3(oRe, oIm, fstride, m, c, s, sign)
        case 5: butterfly5(oRe, oIm, fstride, m, c, s, sign)
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

    @inline(__always)
    private func butterfly3(_ re: UnsafeMutablePointer<Double>, _ im: UnsafeMutablePointer<Double>, _ fs: Int, _ m: Int,
                            _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        let h = sign * 0.866_025_403_784_438_6  // sin(2 pi / 3)
        for k in 0..<m {
            let w1r = c[k * fs], w1i = sign * s[k * fs], w2r = c[2 * k * fs], w2i = sign * s[2 * k * fs]
            let a0r = re[k], a0i = im[k]
            let a1r = re[k + m] * w1r - im[k + m] * w1i, a1i = re[k + m] * w1i + im[k + m] * w1r
            let a2r = re[k + 2 * m] * w2r - im[k + 2 * m] * w2i, a2i = re[k + 2 * m] * w2i + im[k + 2 * m] * w2r
            let t1r = a1r + a2r, t1i = a1i + a2i
            let t2r = a0r - 0.5 * t1r, t2i = a0i - 0.5 * t1i
            // -i * sign * sin(2 pi / 3) * (a1 - a2)
            let t3r = h * (a1i - a2i), t3i = -h * (a1r - a2r)
            re[k] = a0r + t1r; im[k] = a0i + t1i
            re[k + m] = t2r + t3r; im[k + m] = t2i + t3i
            re[k + 2 * m] = t2r - t3r; im[k + 2 * m] = t2i - t3i
        }
    }

    @inline(__always)
    private func butterfly5(_ re: UnsafeMutablePointer<Double>, _ im: UnsafeMutablePointer<Double>, _ fs: Int, _ m: Int,
                            _ c: UnsafePointer<Double>, _ s: UnsafePointer<Double>, _ sign: Double) {
        let c1 = 0.309_016_994_374_947_45, c2 = -0.809_016_994_374_947_5
        let s1 = sign * 0.951_056_516_295_153_5, s2 = sign * 0.587_785_252_292_473_1
        for k in 0..<m {
            let a0r = re[k], a0i = im[k]
            var xr = (0.0, 0.0, 0.0, 0.0), xi = (0.0, 0.0, 0.0, 0.0)
            for q in 1...4 {
                let t = q * k * fs
                let wr = c[t], wi = sign * s[t]
                let vr = re[k + q * m] * wr - im[k + q * m] * wi, vi = re[k + q * m] * wi + im[k + q * m] * wr
                switch q {
                case 1: xr.0 = vr; xi.0 = vi
                case 2: xr.1 = vr; xi.1 = vi
                case 3: xr.2 = vr; xi.2 = vi
                default: xr.3 = vr; xi.3 = vi
                }
            }
            let b1r = xr.0 + xr.3, b1i = xi.0 + xi.3, d1r = xr.0 - xr.3, d1i = xi.0 - xi.3
            let b2r = xr.1 + xr.2, b2i = xi.1 + xi.2, d2r = xr.1 - xr.2, d2i = xi.1 - xi.2
            let r1r = a0r + c1 * b1r + c2 * b2r, r1i = a0i + c1 * b1i + c2 * b2i
            let r2r = a0r + c2 * b1r + c1 * b2r, r2i = a0i + c2 * b1i + c1 * b2i
            // v1 = s1 d1 + s2 d2, v2 = s2 d1 - s1 d2 (signs folded into s1, s2); -i v = (v.im, -v.re)
            let v1r = s1 * d1r + s2 * d2r, v1i = s1 * d1i + s2 * d2i
            let v2r = s2 * d1r - s1 * d2r, v2i = s2 * d1i - s1 * d2i
            re[k] = a0r + b1r + b2r; im[k] = a0i + b1i + b2i
            re[k + m] = r1r + v1i; im[k + m] = r1i - v1r
            re[k + 4 * m] = r1r - v1i; im[k + 4 * m] = r1i + v1r
            re[k + 2 * m] = r2r + v2i; im[k + 2 * m] = r2i - v2r
            re[k + 3 * m] = r2r - v2i; im[k + 3 * m] = r2i + v2r
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

    /// The forward 2-D DFT of a real image (`im` must hold zeros): `transform(inverse: false)`'s
    /// result to rounding, at about half its cost. Rows two at a time: row y in the real part
    /// and row y + 1 in the imaginary part of one complex transform, separated by the symmetry
    /// of a real row's spectrum (X[k] = conj(X[w - k])); columns 0...w/2 only, the others being
    /// the conjugates of the mirrored ones (X[r][c] = conj(X[h - r][w - c])). The same bits on
    /// any thread count.
    public mutating func transformReal(threads: Int = 1) {
        let rowPlan = FFTPlan(width), colPlan = height == width ? rowPlan : FFTPlan(height)
        let (h, w) = (height, width)
        let half = w / 2
        re.withUnsafeMutableBufferPointer { rb in
            im.withUnsafeMutableBufferPointer { ib in
                nonisolated(unsafe) let r = rb.baseAddress!, i = ib.baseAddress!
                Parallel.chunks((h + 1) / 2, threads: threads) { range in
                    let tmp = UnsafeMutablePointer<Double>.allocate(capacity: 2 * w)
                    defer { tmp.deallocate() }
                    for pair in range {
                        let y = 2 * pair
                        let ra = r + y * w, ia = i + y * w
                        guard y + 1 < h else {
                            rowPlan.transform(ra, ia, inStride: 1, tmp, tmp + w, inverse: false)
                            ra.update(from: tmp, count: w); ia.update(from: tmp + w, count: w)
                            continue
                        }
                        let rb2 = r + (y + 1) * w, ib2 = i + (y + 1) * w
                        // z = row y + i row y+1 (row y+1 goes into row y's imaginary part).
                        ia.update(from: rb2, count: w)
                        rowPlan.transform(ra, ia, inStride: 1, tmp, tmp + w, inverse: false)
                        let zr = tmp, zi = tmp + w
                        for k in 0...half {
                            let m = k == 0 ? 0 : w - k
                            let (pr, pi) = (zr[k], zi[k]), (qr, qi) = (zr[m], -zi[m])   // Z[k], conj(Z[w - k])
                            ra[k] = 0.5 * (pr + qr); ia[k] = 0.5 * (pi + qi)
                            rb2[k] = 0.5 * (pi - qi); ib2[k] = -0.5 * (pr - qr)
                        }
                    }
                }
                Self.columns(r, i, height: h, width: w, count: half + 1, plan: colPlan, inverse: false, threads: threads)
                // The other columns by symmetry.
                if half + 1 < w {
                    Parallel.chunks(h, threads: threads) { range in
                        for y in range {
                            let my = y == 0 ? 0 : h - y
                            for c in (half + 1)..<w {
                                r[y * w + c] = r[my * w + w - c]
                                i[y * w + c] = -i[my * w + w - c]
                            }
                        }
                    }
                }
            }
        }
    }

    /// The inverse 2-D DFT (without 1/N) of a spectrum with Hermitian symmetry (X[r][c] =
    /// conj(X[h - r][w - c]): the transform of a real image, times that of a real kernel), whose
    /// result is real: written to `re` (`im` is set to zero). `transform(inverse: true)`'s real
    /// part to rounding, at about half its cost: columns 0...w/2 only (the others are the
    /// conjugates of the mirrored ones), then rows two at a time in one complex transform. The
    /// same bits on any thread count.
    public mutating func inverseToReal(threads: Int = 1) {
        let rowPlan = FFTPlan(width), colPlan = height == width ? rowPlan : FFTPlan(height)
        let (h, w) = (height, width)
        let half = w / 2
        re.withUnsafeMutableBufferPointer { rb in
            im.withUnsafeMutableBufferPointer { ib in
                nonisolated(unsafe) let r = rb.baseAddress!, i = ib.baseAddress!
                Self.columns(r, i, height: h, width: w, count: half + 1, plan: colPlan, inverse: true, threads: threads)
                Parallel.chunks((h + 1) / 2, threads: threads) { range in
                    let tmp = UnsafeMutablePointer<Double>.allocate(capacity: 4 * w)
                    defer { tmp.deallocate() }
                    let zr = tmp + 2 * w, zi = tmp + 3 * w
                    for pair in range {
                        let y = 2 * pair
                        let ra = r + y * w, ia = i + y * w
                        let second = y + 1 < h
                        let rb2 = r + (y + 1) * w, ib2 = i + (y + 1) * w
                        // Each row is Hermitian after the column pass: Y[c] = conj(Y[w - c]).
                        // z = row y + i row y+1, whose inverse is (row y's) + i (row y+1's).
                        for c in 0..<w {
                            let (src, sign) = c <= half ? (c, 1.0) : (w - c, -1.0)
                            let (ar, ai) = (ra[src], sign * ia[src])
                            if second {
                                let (br, bi) = (rb2[src], sign * ib2[src])
                                zr[c] = ar - bi; zi[c] = ai + br
                            } else {
                                zr[c] = ar; zi[c] = ai
                            }
                        }
                        rowPlan.transform(zr, zi, inStride: 1, tmp, tmp + w, inverse: true)
                        ra.update(from: tmp, count: w)
                        ia.update(repeating: 0, count: w)
                        if second {
                            rb2.update(from: tmp + w, count: w)
                            ib2.update(repeating: 0, count: w)
                        }
                    }
                }
            }
        }
    }

    /// Column transforms of columns 0..<count, 8 at a time: each block of 8 columns is copied row
    /// by row (one cache line per row) into contiguous columns, transformed, and copied back the
    /// same way.
    static func columns(_ r: UnsafeMutablePointer<Double>, _ i: UnsafeMutablePointer<Double>, height h: Int, width w: Int, count: Int,
                        plan colPlan: FFTPlan, inverse: Bool, threads: Int) {
        let block = 8
        nonisolated(unsafe) let r = r, i = i
        Parallel.chunks((count + block - 1) / block, threads: threads) { range in
            let cols = UnsafeMutablePointer<Double>.allocate(capacity: 2 * h * block)
            let out = UnsafeMutablePointer<Double>.allocate(capacity: 2 * h * block)
            defer { cols.deallocate(); out.deallocate() }
            for b in range {
                let x0 = b * block, n = min(block, count - x0)
                for y in 0..<h {
                    for k in 0..<n {
                        cols[k * h + y] = r[y * w + x0 + k]
                        cols[(block + k) * h + y] = i[y * w + x0 + k]
                    }
                }
                for k in 0..<n {
                    colPlan.transform(cols + k * h, cols + (block + k) * h, inStride: 1, out + k * h, out + (block + k) * h,
                                      inverse: inverse)
                }
                for y in 0..<h {
                    for k in 0..<n {
                        r[y * w + x0 + k] = out[k * h + y]
                        i[y * w + x0 + k] = out[(block + k) * h + y]
                    }
                }
            }
        }
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
                Self.columns(r, i, height: h, width: w, count: w, plan: colPlan, inverse: inverse, threads: threads)
            }
        }
    }
}
