import Foundation
import Imaging
import Runtime

/// Errors of background estimation, source extraction and photometry.
public enum DetectionError: Error, CustomStringConvertible, Equatable {
    case noValidPixels
    case imageTooSmall(width: Int, height: Int, minimum: Int)
    case zeroRMS
    case badParameter(String)
    case maskSize(expected: Int, got: Int)
    case tooManySubObjects(limit: Int)

    public var description: String {
        switch self {
        case .noValidPixels: return "the image has no valid (finite, unmasked) pixel"
        case .imageTooSmall(let w, let h, let m):
            return "image \(w)x\(h) is too small: both sides must be at least \(m) pixels"
        case .zeroRMS: return "the background RMS is zero everywhere (constant image?)"
        case .badParameter(let s): return s
        case .maskSize(let e, let g): return "mask has \(g) entries, the image \(e) pixels"
        case .tooManySubObjects(let l): return "deblending found more than \(l) sub-objects at one level"
        }
    }
}

/// Value sep and SExtractor use for "no value" (masked pixels, bad meshes).
let sepBig: Float = 1e30

/// Background level and RMS of an image on a mesh, the SExtractor/sep way (`sep.Background`):
/// per mesh of `boxWidth` x `boxHeight` pixels (the last column and row of meshes hold what is
/// left), a 2-sigma clipped mean and sigma fix a histogram, whose mode (2.5 median - 1.5 mean
/// after iterative 3-sigma clipping about the median, or the median when the two differ by more
/// than 0.3 sigma) is the level and whose clipped sigma is the RMS; meshes with under half their
/// pixels valid take the average of the nearest valid meshes; the mesh grid is median filtered;
/// full-resolution maps come from natural bicubic splines through the mesh centres. Single
/// precision throughout, in sep's order of operations, so the maps match sep's.
public struct Background: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public let boxWidth: Int
    public let boxHeight: Int
    /// Meshes along x and y.
    public let nx: Int
    public let ny: Int
    /// Mesh values after filtering (row-major, nx * ny).
    public let meshLevel: [Float]
    public let meshRMS: [Float]
    /// Median of the filtered mesh levels / RMS (sep's `globalback`, `globalrms`).
    public let globalLevel: Double
    public let globalRMS: Double
    /// Full-resolution maps, row-major width * height.
    public let level: [Float]
    public let rms: [Float]

    /// Estimates the background of `image`; `mask` true = invalid; NaN and infinite pixels are
    /// invalid too. `filterThreshold` is sep's fthresh (a mesh is replaced by the median of its
    /// neighbourhood only when they differ by at least this much).
    public static func estimate(_ image: Image2D, mask: [Bool]? = nil, boxWidth: Int = 64, boxHeight: Int? = nil,
                                filterWidth: Int = 3, filterHeight: Int? = nil, filterThreshold: Double = 0,
                                threads: Int = 1) throws -> Background {
        let bw = boxWidth, bh = boxHeight ?? boxWidth
        let fw = filterWidth, fh = filterHeight ?? filterWidth
        guard bw >= 1, bh >= 1 else { throw DetectionError.badParameter("background box size must be at least 1") }
        guard fw >= 1, fh >= 1 else { throw DetectionError.badParameter("background filter size must be at least 1") }
        let w = image.width, h = image.height
        if let m = mask, m.count != w * h { throw DetectionError.maskSize(expected: w * h, got: m.count) }
        let minSide = 3
        guard w >= minSide, h >= minSide else { throw DetectionError.imageTooSmall(width: w, height: h, minimum: minSide) }
        let (data, valid) = floatPixels(image, mask: mask)
        guard valid.contains(true) else { throw DetectionError.noValidPixels }

        let nx = (w - 1) / bw + 1, ny = (h - 1) / bh + 1
        var back = [Float](repeating: 0, count: nx * ny), sigma = [Float](repeating: 0, count: nx * ny)
        // Mesh statistics: each mesh is independent.
        let results = UnsafeMutableBufferPointer<(Float, Float)>.allocate(capacity: nx * ny)
        defer { results.deallocate() }
        let resultsBase = UncheckedSendable(results.baseAddress!)
        data.withUnsafeBufferPointer { dp in
            valid.withUnsafeBufferPointer { vp in
                let d = UncheckedSendable(dp.baseAddress!), v = UncheckedSendable(vp.baseAddress!)
                Parallel.chunks(nx * ny, threads: threads) { range in
                    for k in range {
                        let mx = k % nx, my = k / nx
                        let x0 = mx * bw, y0 = my * bh
                        let mw = min(bw, w - x0), mh = min(bh, h - y0)
                        resultsBase.value[k] = meshStatistics(d.value, v.value, stride: w, x0: x0, y0: y0, width: mw, height: mh)
                    }
                }
            }
        }
        for k in 0..<nx * ny { (back[k], sigma[k]) = results[k] }

        let (gback, grms) = filterMeshes(&back, &sigma, nx: nx, ny: ny, fw: fw, fh: fh, fthresh: Float(filterThreshold))
        guard sigma.contains(where: { $0 > 0 }) else { throw DetectionError.zeroRMS }
        let dback = ySpline(back, nx: nx, ny: ny), dsigma = ySpline(sigma, nx: nx, ny: ny)

        let backMesh = back, sigmaMesh = sigma
        var level = [Float](repeating: 0, count: w * h), rmsMap = [Float](repeating: 0, count: w * h)
        level.withUnsafeMutableBufferPointer { lp in
            rmsMap.withUnsafeMutableBufferPointer { rp in
                let l = UncheckedSendable(lp.baseAddress!), r = UncheckedSendable(rp.baseAddress!)
                let grid = Grid(nx: nx, ny: ny, bw: bw, bh: bh, width: w)
                Parallel.chunks(h, threads: threads) { rows in
                    var scratch = SplineScratch(nx: nx)
                    for y in rows {
                        grid.line(y: y, values: backMesh, dvalues: dback, out: l.value + y * w, scratch: &scratch)
                        grid.line(y: y, values: sigmaMesh, dvalues: dsigma, out: r.value + y * w, scratch: &scratch)
                    }
                }
            }
        }
        return Background(width: w, height: h, boxWidth: bw, boxHeight: bh, nx: nx, ny: ny, meshLevel: back, meshRMS: sigma,
                          globalLevel: Double(gback), globalRMS: Double(grms), level: level, rms: rmsMap)
    }

    /// Pixels in single precision and their validity (finite and not masked).
    static func floatPixels(_ image: Image2D, mask: [Bool]?) -> ([Float], [Bool]) {
        var data = [Float](repeating: 0, count: image.count), valid = [Bool](repeating: false, count: image.count)
        for i in 0..<image.count {
            let f = Float(image.pixels[i])
            let ok = f.isFinite && !(mask?[i] ?? false)
            data[i] = f; valid[i] = ok
        }
        return (data, valid)
    }

    // MARK: - Mesh statistics (sep's backstat, backhisto, backguess)

    static func meshStatistics(_ d: UnsafePointer<Float>, _ v: UnsafePointer<Bool>, stride: Int,
                               x0: Int, y0: Int, width mw: Int, height mh: Int) -> (Float, Float) {
        // Pass 1: mean and sigma of the valid pixels.
        var sum = 0.0, sum2 = 0.0, n = 0
        for y in y0..<y0 + mh {
            let row = y * stride
            for x in x0..<x0 + mw where v[row + x] {
                let p = Double(d[row + x]); sum += p; sum2 += p * p; n += 1
            }
        }
        if Float(n) < Float(Double(mw * mh) * 0.5) { return (-sepBig, -sepBig) }
        var mean = sum / Double(n)
        var sig = sum2 / Double(n) - mean * mean
        var sigma = sig > 0 ? sig.squareRoot() : 0
        let lcut = Float(mean - 2 * sigma), hcut = Float(mean + 2 * sigma)
        // Pass 2: within mean +- 2 sigma.
        sum = 0; sum2 = 0; n = 0
        for y in y0..<y0 + mh {
            let row = y * stride
            for x in x0..<x0 + mw where v[row + x] {
                let p = d[row + x]
                if p <= hcut && p >= lcut { let q = Double(p); sum += q; sum2 += q * q; n += 1 }
            }
        }
        mean = sum / Double(n)
        sig = sum2 / Double(n) - mean * mean
        sigma = sig > 0 ? sig.squareRoot() : 0
        let meshMean = Float(mean), meshSigma = Float(sigma)
        let step = (2 / Double.pi).squareRoot() * 5 / 4
        let nlevels = min(Int(step * Double(n) + 1), 4096)
        let qscale: Float = sigma > 0 ? Float(2 * 5 * sigma / Double(nlevels)) : 1
        let qzero = Float(mean - 5 * sigma)

        // Histogram.
        var histo = [Int](repeating: 0, count: nlevels)
        let cste = Float(0.499999 - Double(qzero / qscale))
        let top = Float(nlevels)
        for y in y0..<y0 + mh {
            let row = y * stride
            for x in x0..<x0 + mw where v[row + x] {
                let b = d[row + x] / qscale + cste
                // C truncates toward zero: (-1, 0) lands in bin 0.
                if b > -1 && b < top { histo[Int(b)] += 1 }
            }
        }
        return histogramMode(histo, meshMean: meshMean, meshSigma: meshSigma, qzero: qzero, qscale: qscale)
    }

    /// Mode and sigma of a mesh histogram by iterative 3-sigma clipping about the median.
    static func histogramMode(_ histo: [Int], meshMean: Float, meshSigma: Float, qzero: Float, qscale: Float) -> (Float, Float) {
        let nlevelsm1 = histo.count - 1
        var lcut = 0, hcut = nlevelsm1
        var sig = 10.0 * Double(nlevelsm1), sig1 = 1.0
        var mea = Double(meshMean), med = Double(meshMean)
        @inline(__always) func at(_ i: Int) -> Double { i >= 0 && i < histo.count ? Double(histo[i]) : 0 }
        var iterations = 100
        while iterations > 0 && sig >= 0.1 && abs(sig / sig1 - 1) > 1e-4 {
            iterations -= 1
            sig1 = sig
            var sum = 0, lowsum = 0, highsum = 0
            mea = 0; sig = 0
            var hilow = lcut, hihigh = hcut
            if lcut <= hcut {
                for i in lcut...hcut {
                    if lowsum < highsum { lowsum += histo[hilow]; hilow += 1 } else { highsum += histo[hihigh]; hihigh -= 1 }
                    let pix = histo[i]
                    sum += pix
                    let dpix = Double(pix) * Double(i)
                    mea += dpix
                    sig += dpix * Double(i)
                }
            }
            if hihigh >= 0 {
                let a = at(hilow), b = at(hihigh)
                med = Double(hihigh) + 0.5 + (Double(highsum) - Double(lowsum)) / (2.0 * (a > b ? a : b))
            } else {
                med = 0
            }
            if sum != 0 {
                mea /= Double(sum)
                sig = sig / Double(sum) - mea * mea
            }
            sig = sig > 0 ? sig.squareRoot() : 0
            let lo = med - 3 * sig, hi = med + 3 * sig
            lcut = lo > 0 ? clampedInt(lo + 0.5) : 0
            hcut = hi < Double(nlevelsm1) ? clampedInt(hi > 0 ? hi + 0.5 : hi - 0.5) : nlevelsm1
        }
        let qz = Double(qzero), qs = Double(qscale)
        let mode: Double
        if abs(sig) > 0 {
            mode = abs((mea - med) / sig) < 0.3 ? qz + (2.5 * med - 1.5 * mea) * qs : qz + med * qs
        } else {
            mode = qz + mea * qs
        }
        return (Float(mode), Float(sig * qs))
    }

    @inline(__always) static func clampedInt(_ v: Double) -> Int {
        if !(v.magnitude < 1e15) { return v > 0 ? Int(1e15) : (v < 0 ? -Int(1e15) : 0) }
        return Int(v)
    }

    // MARK: - Mesh grid filtering (sep's filterback)

    /// Replaces bad meshes by their nearest valid ones, median filters the grid, and returns the
    /// global level and RMS.
    static func filterMeshes(_ back: inout [Float], _ sigma: inout [Float], nx: Int, ny: Int, fw: Int, fh: Int,
                             fthresh: Float) -> (Float, Float) {
        var back2 = back
        for py in 0..<ny {
            for px in 0..<nx {
                let i = py * nx + px
                guard back[i] <= -sepBig else { continue }
                var d2min = sepBig, val: Float = 0, sval: Float = 0, nmin = 0
                for y in 0..<ny {
                    for x in 0..<nx {
                        let j = y * nx + x
                        guard back[j] > -sepBig else { continue }
                        let d2 = Float((x - px) * (x - px) + (y - py) * (y - py))
                        if d2 < d2min { val = back[j]; sval = sigma[j]; nmin = 1; d2min = d2 }
                        else if d2 == d2min { val += back[j]; sval += sigma[j]; nmin += 1 }
                    }
                }
                back2[i] = nmin > 0 ? val / Float(nmin) : 0
                sigma[i] = nmin > 0 ? sval / Float(nmin) : 1
            }
        }
        back = back2
        var sigma2 = sigma
        let hx = fw / 2, hy = fh / 2
        var bwin = [Float](), swin = [Float]()
        for py in 0..<ny {
            let ry = min(hy, ny - 1 - py, py)
            for px in 0..<nx {
                let rx = min(hx, nx - 1 - px, px)
                bwin.removeAll(keepingCapacity: true); swin.removeAll(keepingCapacity: true)
                for y in py - ry...py + ry {
                    for x in px - rx...px + rx { bwin.append(back[y * nx + x]); swin.append(sigma[y * nx + x]) }
                }
                let i = py * nx + px
                let med = median(&bwin)
                if abs(med - back[i]) >= fthresh {
                    back2[i] = med
                    sigma2[i] = median(&swin)
                } else {
                    back2[i] = back[i]; sigma2[i] = sigma[i]
                }
            }
        }
        back = back2
        var sorted = back2
        let global = median(&sorted)
        sigma = sigma2
        var sortedSigma = sigma2
        var globalRMS = median(&sortedSigma)
        if globalRMS <= 0 {
            // Median of the positive values (sortedSigma is sorted ascending).
            if let firstPositive = sortedSigma.firstIndex(where: { $0 > 0 }) {
                var tail = Array(sortedSigma[firstPositive...])
                globalRMS = median(&tail)
            } else {
                globalRMS = 1
            }
        }
        return (global, globalRMS)
    }

    /// sep's fqmedian: sorts `a` and returns its median (mean of the two central values when even).
    static func median(_ a: inout [Float]) -> Float {
        a.sort()
        let n = a.count
        if n < 2 { return a.first ?? 0 }
        return n & 1 == 1 ? a[n / 2] : (a[n / 2 - 1] + a[n / 2]) / 2
    }

    // MARK: - Splines (sep's makebackspline and bkg_line_flt_internal)

    /// Second derivatives along y of a natural cubic spline through each column of meshes.
    static func ySpline(_ map: [Float], nx: Int, ny: Int) -> [Float] {
        var d = [Float](repeating: 0, count: nx * ny)
        guard ny > 1 else { return d }
        var u = [Float](repeating: 0, count: ny)
        for x in 0..<nx {
            d[x] = 0; u[0] = 0
            if ny > 2 {
                for y in 1..<ny - 1 {
                    var temp: Float = -1 / (d[(y - 1) * nx + x] + 4)
                    d[y * nx + x] = temp
                    let curv: Float = map[(y + 1) * nx + x] + map[(y - 1) * nx + x] - 2 * map[y * nx + x]
                    temp *= u[y - 1] - 6 * curv
                    u[y] = temp
                }
            }
            d[(ny - 1) * nx + x] = 0
            var y = ny - 2
            while y >= 1 {
                d[y * nx + x] = Float(Double(d[y * nx + x] * d[(y + 1) * nx + x] + u[y]) / 6.0)
                y -= 1
            }
        }
        return d
    }

    struct SplineScratch {
        var node: [Float], dnode: [Float], u: [Float]
        init(nx: Int) { node = [Float](repeating: 0, count: nx); dnode = node; u = node }
    }

    struct Grid: Sendable {
        let nx: Int, ny: Int, bw: Int, bh: Int, width: Int

        /// One full-resolution line of the map: spline along y at every mesh column, then a
        /// natural spline along x.
        func line(y: Int, values: [Float], dvalues: [Float], out: UnsafeMutablePointer<Float>, scratch s: inout SplineScratch) {
            if ny > 1 {
                var dy: Float = Float(y) / Float(bh) - 0.5
                var yl = Int(dy)
                dy -= Float(yl)
                if yl < 0 { yl = 0; dy -= 1 } else if yl >= ny - 1 { yl = ny < 2 ? 0 : ny - 2; dy += 1 }
                let cdy: Float = 1 - dy
                let dy3: Float = dy * dy * dy - dy
                let cdy3: Float = cdy * cdy * cdy - cdy
                let lo = nx * yl, hi = lo + nx
                for x in 0..<nx {
                    let a: Float = cdy * values[lo + x] + dy * values[hi + x]
                    let b: Float = a + cdy3 * dvalues[lo + x]
                    s.node[x] = b + dy3 * dvalues[hi + x]
                }
                s.dnode[0] = 0
                if nx > 1 {
                    s.u[0] = 0
                    if nx > 2 {
                        for k in 1..<nx - 1 {
                            var temp: Float = -1 / (s.dnode[k - 1] + 4)
                            s.dnode[k] = temp
                            let curv: Float = s.node[k + 1] + s.node[k - 1] - 2 * s.node[k]
                            temp *= s.u[k - 1] - 6 * curv
                            s.u[k] = temp
                        }
                    }
                    s.dnode[nx - 1] = 0
                    var k = nx - 2
                    while k >= 1 {
                        s.dnode[k] = Float(Double(s.dnode[k] * s.dnode[k + 1] + s.u[k]) / 6.0)
                        k -= 1
                    }
                }
            } else {
                // One row of meshes: no new second derivatives (sep uses the y ones, all zero).
                for x in 0..<nx { s.node[x] = values[x]; s.dnode[x] = dvalues[x] }
            }
            if nx > 1 {
                let xstep: Float = Float(1.0 / Double(bw))
                let changepoint = bw / 2
                var dx: Float = (xstep - 1) / 2
                let dx0: Float = Float((bw + 1) % 2) * xstep / 2
                var lo = 0, xNode = 0, i = 0
                for j in 0..<width {
                    if i == changepoint && xNode > 0 && xNode < nx - 1 { lo += 1; dx = dx0 }
                    let cdx: Float = 1 - dx
                    let blo = s.node[lo], bhi = s.node[lo + 1], dblo = s.dnode[lo], dbhi = s.dnode[lo + 1]
                    let left: Float = cdx * (blo + (cdx * cdx - 1) * dblo)
                    let right: Float = dx * (bhi + (dx * dx - 1) * dbhi)
                    out[j] = left + right
                    if i == bw { xNode += 1; i = 0 }
                    i += 1
                    dx += xstep
                }
            } else {
                for j in 0..<width { out[j] = s.node[0] }
            }
        }
    }
}

/// A value moved into a @Sendable closure whose users guarantee disjoint access.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
