import Foundation
import Runtime
import Imaging

/// The result of a parameter search: the best image, its parameters (e.g. `sigma=1.25`) and its
/// score (the caller's, higher is better).
public struct DenoiserChoice: Sendable {
    public var image: Image2D
    public var parameters: String
    public var score: Double
    public init(image: Image2D, parameters: String, score: Double) {
        (self.image, self.parameters, self.score) = (image, parameters, score)
    }
}

/// Classical denoisers that astronomers use, as baselines for the CNNs: Gaussian smoothing, the
/// median filter and k-sigma hard thresholding of the starlet (isotropic undecimated wavelet)
/// transform. All work in Float64 with scipy.ndimage's 'reflect' borders (d c b a | a b c d |
/// d c b a, folded as often as needed, so images smaller than the kernel work too).
///
/// Missing pixels (NaN or infinite) are filled from their neighbours for filtering (breadth-first
/// from the valid pixels, each the mean of its already filled 8-neighbours) and are NaN again in
/// the output. Every output pixel is computed by the same operations in the same order whatever
/// the thread count, so results are bit-identical for any `threads`.
///
/// Parameters out of range do not trap: `sigma` <= 0 (or not finite) and `size` <= 1 leave the
/// image unchanged (scipy's behaviour for sigma 0 and size 1), `scales` <= 0 keeps the image.
/// Absurdly large values are capped where they would overflow: sigma at `maxSigma` (a 400,001-tap
/// kernel), size at `maxMedianSize`, scales at `maxScales` (holes of 2^15 pixels).
public enum DenoiserError: Error, CustomStringConvertible, Equatable {
    case shapeMismatch(String)
    public var description: String {
        switch self { case .shapeMismatch(let m): return m }
    }
}

public enum Denoisers {
    public static let maxSigma = 1e5
    public static let maxMedianSize = 4095
    public static let maxScales = 16

    // MARK: - Gaussian

    /// The normalised taps of scipy.ndimage.gaussian_filter1d (radius int(truncate * sigma + 0.5)).
    public static func gaussianTaps(sigma: Double, truncate: Double = 4) -> [Double] {
        FluxRestore.gaussianTaps(sigma: sigma.isFinite ? min(sigma, maxSigma) : sigma, truncate: truncate)
    }

    /// Gaussian smoothing, separable, sigma in pixels, kernel truncated at 4 sigma, 'reflect'
    /// borders (scipy.ndimage.gaussian_filter's default mode and truncate, equal to it).
    public static func gaussian(_ image: Image2D, sigma: Double, threads: Int = 1) -> Image2D {
        guard image.count > 0 else { return image }
        let taps = gaussianTaps(sigma: sigma)
        if taps.count == 1 { return image }
        let (filled, missing) = fillMissing(image)
        guard let src = filled else { return image }
        let r = taps.count / 2
        let out = separable(src, height: image.height, width: image.width, taps: taps, offsets: Array(-r...r), threads: threads)
        return restoreMissing(Image2D(height: image.height, width: image.width, pixels: out), missing)
    }

    // MARK: - Median

    /// Median filter over a size x size square, 'reflect' borders (scipy.ndimage.median_filter
    /// equal; for an even size the window is x - size/2 ... x + size/2 - 1 and the value is the
    /// upper median, as scipy's). Each row slides a sorted window: one step merges out the
    /// sorted column that leaves and merges in the sorted column that enters, O(size^2) per pixel
    /// with well-predicted branches.
    public static func median(_ image: Image2D, size: Int, threads: Int = 1) -> Image2D {
        guard image.count > 0, size > 1 else { return image }
        let (filled, missing) = fillMissing(image)
        guard let src = filled else { return image }
        let (h, w, s) = (image.height, image.width, min(size, maxMedianSize))
        let lo = -(s / 2)
        // The image padded by reflection: s - 1 extra rows and columns.
        let (ph, pw) = (h + s - 1, w + s - 1)
        var padded = [Double](repeating: 0, count: ph * pw)
        for py in 0..<ph {
            let y = Image2D.reflectIndex(py + lo, h)
            for px in 0..<pw { padded[py * pw + px] = src[y * w + Image2D.reflectIndex(px + lo, w)] }
        }
        var out = [Double](repeating: 0, count: h * w)
        let n = s * s, rank = n / 2
        padded.withUnsafeBufferPointer { pb in
            out.withUnsafeMutableBufferPointer { ob in
                nonisolated(unsafe) let p = pb.baseAddress!, o = ob.baseAddress!
                Parallel.chunks(h, threads: threads) { rows in
                    let cols = UnsafeMutablePointer<Double>.allocate(capacity: pw * s)
                    var win = UnsafeMutablePointer<Double>.allocate(capacity: n)
                    var next = UnsafeMutablePointer<Double>.allocate(capacity: n)
                    defer { cols.deallocate(); win.deallocate(); next.deallocate() }
                    for y in rows {
                        // Every padded column's s values of this window, sorted.
                        for c in 0..<pw {
                            let col = cols + c * s
                            for k in 0..<s { col[k] = p[(y + k) * pw + c] }
                            insertionSort(col, s)
                        }
                        // First window: the first s columns, sorted.
                        win.update(from: cols, count: n)
                        var wb = UnsafeMutableBufferPointer(start: win, count: n)
                        wb.sort()
                        o[y * w] = win[rank]
                        for x in 1..<max(1, w) {
                            let old = cols + (x - 1) * s, new = cols + (x + s - 1) * s
                            var i = 0, j = 0, k = 0, m = 0
                            while i < n {
                                let v = win[i]
                                if j < s && v == old[j] { j += 1; i += 1; continue }
                                while k < s && new[k] < v { next[m] = new[k]; m += 1; k += 1 }
                                next[m] = v; m += 1; i += 1
                            }
                            while k < s { next[m] = new[k]; m += 1; k += 1 }
                            swap(&win, &next)
                            o[y * w + x] = win[rank]
                        }
                    }
                }
            }
        }
        return restoreMissing(Image2D(height: h, width: w, pixels: out), missing)
    }

    @inline(__always)
    static func insertionSort(_ a: UnsafeMutablePointer<Double>, _ n: Int) {
        if n < 2 { return }
        for i in 1..<n {
            let v = a[i]
            var j = i - 1
            while j >= 0 && a[j] > v { a[j + 1] = a[j]; j -= 1 }
            a[j + 1] = v
        }
    }

    // MARK: - Starlet

    /// Isotropic undecimated a-trous starlet (B3 spline [1,4,6,4,1]/16, Starck & Murtagh),
    /// `scales` wavelet scales + coarse residual, hard k-sigma thresholding: a coefficient of
    /// scale j is kept if |w| > k sigma_j (`kFinest` for the finest scale, default k), and the
    /// image is the sum of the kept coefficients and the coarse scale. sigma_j = sigma *
    /// `StarletTransform.noiseFactors`[j], with sigma the image noise: `noiseSigma` if given, else
    /// MAD / 0.6745 of the finest scale's coefficients (valid pixels) divided by that scale's
    /// factor.
    public static func starlet(_ image: Image2D, scales: Int = 5, k: Double = 3, kFinest: Double? = nil,
                               noiseSigma: Double? = nil, threads: Int = 1) -> Image2D {
        guard image.count > 0, scales > 0 else { return image }
        let scales = min(scales, maxScales)
        let (filled, missing) = fillMissing(image)
        guard let src = filled else { return image }
        let ks = (0..<scales).map { $0 == 0 ? (kFinest ?? k) : k }
        let out = starletStreaming(src, height: image.height, width: image.width, scales: scales, ks: ks, noiseSigma: noiseSigma,
                                   missing: missing, threads: threads)
        return restoreMissing(Image2D(height: image.height, width: image.width, pixels: out), missing)
    }

    /// As `starlet`, with noise whose variance varies over the image (e.g. Poisson noise):
    /// `noiseVariance` is the per-pixel variance of the image's noise, and sigma_j at each pixel
    /// is the exact standard deviation of scale j's coefficient there for independent noise of
    /// that variance (`StarletTransform.noiseMaps`). Throws when the map's shape is not the
    /// image's.
    public static func starlet(_ image: Image2D, noiseVariance: Image2D, scales: Int = 5, k: Double = 3, kFinest: Double? = nil,
                               threads: Int = 1) throws -> Image2D {
        guard noiseVariance.height == image.height, noiseVariance.width == image.width else {
            throw DenoiserError.shapeMismatch("noise variance map is \(noiseVariance.height)x\(noiseVariance.width), image is \(image.height)x\(image.width)")
        }
        guard image.count > 0, scales > 0 else { return image }
        let scales = min(scales, maxScales)
        let (filled, missing) = fillMissing(image)
        guard let src = filled else { return image }
        let t = StarletTransform(Image2D(height: image.height, width: image.width, pixels: src), scales: scales, threads: threads)
        let sd = StarletTransform.noiseMaps(variance: noiseVariance, scales: scales, threads: threads)
        let ks = (0..<scales).map { $0 == 0 ? (kFinest ?? k) : k }
        return restoreMissing(t.hardThreshold(ks: ks, sigmaMaps: sd, threads: threads), missing)
    }

    /// Starlet denoising of Poisson + Gaussian data through the generalized Anscombe transform
    /// (Starck & Murtagh): for counts x = gain * Poisson + N(mean, readNoise^2),
    /// t = (2 / gain) sqrt(gain x + 3/8 gain^2 + readNoise^2 - gain mean) has unit noise; t is
    /// denoised with noise sigma 1 and mapped back by the asymptotically unbiased inverse
    /// x = gain t^2 / 4 - gain / 8 - readNoise^2 / gain + mean. Values whose radicand is
    /// negative are transformed as 0.
    public static func starletAnscombe(_ image: Image2D, gain: Double = 1, readNoise: Double = 0, mean: Double = 0,
                                       scales: Int = 5, k: Double = 3, kFinest: Double? = nil, threads: Int = 1) -> Image2D {
        guard gain.isFinite, gain > 0 else { return image }
        let c = 3.0 / 8 * gain * gain + readNoise * readNoise - gain * mean
        let t = image.map { $0.isFinite ? (2 / gain) * max(gain * $0 + c, 0).squareRoot() : .nan }
        let d = starlet(t, scales: scales, k: k, kFinest: kFinest, noiseSigma: 1, threads: threads)
        return d.map { gain * $0 * $0 / 4 - gain / 8 - readNoise * readNoise / gain + mean }
    }

    // MARK: - Shared pieces

    /// `src` (h x w, row-major) correlated with `taps` at column `offsets` along rows, then at row
    /// offsets along columns; 'reflect' borders. Each output value sums its taps in order.
    static func separable(_ src: [Double], height h: Int, width w: Int, taps: [Double], offsets: [Int], threads: Int) -> [Double] {
        var tmp = [Double](repeating: 0, count: h * w), out = tmp
        src.withUnsafeBufferPointer { sb in
            tmp.withUnsafeMutableBufferPointer { tb in
                out.withUnsafeMutableBufferPointer { ob in
                    separable(sb.baseAddress!, into: ob.baseAddress!, scratch: tb.baseAddress!, height: h, width: w,
                              taps: taps, offsets: offsets, threads: threads)
                }
            }
        }
        return out
    }

    /// The same on buffers of h x w values: `scratch` holds the row pass.
    static func separable(_ src: UnsafePointer<Double>, into dst: UnsafeMutablePointer<Double>, scratch: UnsafeMutablePointer<Double>,
                          height h: Int, width w: Int, taps: [Double], offsets: [Int], threads: Int) {
        let reach = offsets.map { abs($0) }.max() ?? 0
        let nt = taps.count
        nonisolated(unsafe) let (s, t, o) = (src, scratch, dst)
        Parallel.chunks(h, threads: threads) { rows in
            let pad = UnsafeMutablePointer<Double>.allocate(capacity: w + 2 * reach)
            defer { pad.deallocate() }
            for y in rows {
                let row = s + y * w
                for c in 0..<reach { pad[c] = row[Image2D.reflectIndex(c - reach, w)] }
                (pad + reach).update(from: row, count: w)
                for c in (w + reach)..<(w + 2 * reach) { pad[c] = row[Image2D.reflectIndex(c - reach, w)] }
                let orow = t + y * w
                let p0 = pad + reach + offsets[0], w0 = taps[0]
                for x in 0..<w { orow[x] = w0 * p0[x] }
                for q in 1..<max(1, nt) {
                    let pq = pad + reach + offsets[q], wq = taps[q]
                    for x in 0..<w { orow[x] += wq * pq[x] }
                }
            }
        }
        Parallel.chunks(h, threads: threads) { rows in
            for y in rows {
                let orow = o + y * w
                let r0 = t + Image2D.reflectIndex(y + offsets[0], h) * w, w0 = taps[0]
                for x in 0..<w { orow[x] = w0 * r0[x] }
                for q in 1..<max(1, nt) {
                    let rq = t + Image2D.reflectIndex(y + offsets[q], h) * w, wq = taps[q]
                    for x in 0..<w { orow[x] += wq * rq[x] }
                }
            }
        }
    }

    /// Starlet hard thresholding without keeping the scales: c_j and c_{j+1} in two buffers, each
    /// scale's kept coefficients added to the output as soon as it is known, then the coarse
    /// scale (the same operations in the same order as `StarletTransform.hardThreshold`, so the
    /// same bits). The finest scale is kept aside once for the noise estimate.
    static func starletStreaming(_ src: [Double], height h: Int, width w: Int, scales: Int, ks: [Double], noiseSigma: Double?,
                                 missing: [Bool]?, threads: Int) -> [Double] {
        let n = h * w
        let f = StarletTransform.noiseFactors(scales: scales)
        var out = [Double](repeating: 0, count: n)
        let a0 = UnsafeMutablePointer<Double>.allocate(capacity: n), b0 = UnsafeMutablePointer<Double>.allocate(capacity: n)
        let scratch = UnsafeMutablePointer<Double>.allocate(capacity: n)
        defer { a0.deallocate(); b0.deallocate(); scratch.deallocate() }
        src.withUnsafeBufferPointer { a0.update(from: $0.baseAddress!, count: n) }
        out.withUnsafeMutableBufferPointer { ob in
            nonisolated(unsafe) let o = ob.baseAddress!
            var (a, b) = (a0, b0)
            var thresholds: [Double] = []
            for j in 0..<scales {
                let step = 1 << j
                separable(a, into: b, scratch: scratch, height: h, width: w, taps: StarletTransform.b3,
                          offsets: [-2 * step, -step, 0, step, 2 * step], threads: threads)
                nonisolated(unsafe) let (ca, cb) = (a, b)
                if j == 0 {
                    // w_1 into the scratch, then the noise from it, then its kept coefficients.
                    nonisolated(unsafe) let w1 = scratch
                    Parallel.chunks(n, threads: threads) { r in for i in r { w1[i] = ca[i] - cb[i] } }
                    let sigma = noiseSigma ?? StarletTransform.madSigma(Array(UnsafeBufferPointer(start: scratch, count: n)), missing: missing)
                    let t = ks[0] * sigma * f[0]
                    Parallel.chunks(n, threads: threads) { r in for i in r { let v = w1[i]; o[i] = abs(v) > t ? v : 0 } }
                    if scales > 1 {
                        let rest = (1..<scales).map { ks[$0] * sigma * f[$0] }
                        thresholds = rest
                    }
                } else {
                    let t = thresholds[j - 1]
                    Parallel.chunks(n, threads: threads) { r in for i in r { let v = ca[i] - cb[i]; o[i] += abs(v) > t ? v : 0 } }
                }
                swap(&a, &b)
            }
            nonisolated(unsafe) let coarse = a
            Parallel.chunks(n, threads: threads) { r in for i in r { o[i] += coarse[i] } }
        }
        return out
    }

    /// The pixels with missing ones (not finite) filled from their neighbours, and the mask of
    /// missing pixels (nil when none). Pixels nil when no pixel is valid.
    public static func fillMissing(_ image: Image2D) -> (pixels: [Double]?, missing: [Bool]?) {
        let (h, w, n) = (image.height, image.width, image.count)
        var values = image.pixels
        var done = values.map { $0.isFinite }
        if !done.contains(false) { return (values, nil) }
        let missing = done.map { !$0 }
        if !done.contains(true) { return (nil, missing) }
        var queue: [Int] = []
        var queued = [Bool](repeating: false, count: n)
        func enqueueNeighbours(_ i: Int) {
            let y = i / w, x = i % w
            for dy in -1...1 { for dx in -1...1 where dy != 0 || dx != 0 {
                let yy = y + dy, xx = x + dx
                if yy < 0 || yy >= h || xx < 0 || xx >= w { continue }
                let j = yy * w + xx
                if !done[j] && !queued[j] { queued[j] = true; queue.append(j) }
            } }
        }
        for i in 0..<n where done[i] { enqueueNeighbours(i) }
        var head = 0
        while head < queue.count {
            let i = queue[head]; head += 1
            let y = i / w, x = i % w
            var s = 0.0, c = 0.0
            for dy in -1...1 { for dx in -1...1 where dy != 0 || dx != 0 {
                let yy = y + dy, xx = x + dx
                if yy < 0 || yy >= h || xx < 0 || xx >= w { continue }
                let j = yy * w + xx
                if done[j] { s += values[j]; c += 1 }
            } }
            values[i] = s / c   // c >= 1: i was queued by a done neighbour
            done[i] = true
            enqueueNeighbours(i)
        }
        return (values, missing)
    }

    static func restoreMissing(_ image: Image2D, _ missing: [Bool]?) -> Image2D {
        guard let m = missing else { return image }
        var out = image
        for i in 0..<out.count where m[i] { out.pixels[i] = .nan }
        return out
    }

    /// The median of `values` (the mean of the two middle values for an even count, as
    /// numpy.median); NaN for no values. Linear time (`RobustSky.median`'s selection), `values`
    /// is reordered.
    public static func median(of values: inout [Double]) -> Double { RobustSky.median(&values) }
}

/// The isotropic undecimated (a trous) starlet transform with the B3-spline kernel
/// [1, 4, 6, 4, 1] / 16 (Starck & Murtagh): c_0 = image, c_{j+1} = c_j correlated along rows
/// and columns with the kernel spread by holes of 2^j pixels ('reflect' borders), w_{j+1} =
/// c_j - c_{j+1}. The image is the sum of the wavelet scales and the coarse scale.
public struct StarletTransform: Sendable {
    /// w_1 (finest) ... w_J.
    public var wavelets: [Image2D]
    /// c_J.
    public var coarse: Image2D

    public static let b3: [Double] = [1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16]

    /// `image` must be finite (see `Denoisers.fillMissing`); `scales` is capped to 0 ...
    /// `Denoisers.maxScales`.
    public init(_ image: Image2D, scales: Int, threads: Int = 1) {
        var c = image
        var ws: [Image2D] = []
        for j in 0..<max(0, min(scales, Denoisers.maxScales)) {
            guard c.count > 0 else { ws.append(c); continue }
            let step = 1 << j
            let next = Denoisers.separable(c.pixels, height: c.height, width: c.width, taps: StarletTransform.b3,
                                           offsets: [-2 * step, -step, 0, step, 2 * step], threads: threads)
            var w = [Double](repeating: 0, count: c.count)
            c.pixels.withUnsafeBufferPointer { cb in
                next.withUnsafeBufferPointer { nb in
                    w.withUnsafeMutableBufferPointer { wb in
                        nonisolated(unsafe) let (cp, np, wp) = (cb.baseAddress!, nb.baseAddress!, wb.baseAddress!)
                        Parallel.chunks(c.count, threads: threads) { r in for i in r { wp[i] = cp[i] - np[i] } }
                    }
                }
            }
            ws.append(Image2D(height: c.height, width: c.width, pixels: w))
            c.pixels = next
        }
        (wavelets, coarse) = (ws, c)
    }

    /// Sum of the scales and the coarse scale: the image again.
    public func reconstruct() -> Image2D {
        var out = coarse
        for w in wavelets { for i in 0..<out.count { out.pixels[i] += w.pixels[i] } }
        return out
    }

    /// The 1-D scaling kernels phi_0 = delta, phi_{j+1} = phi_j convolved with the B3 kernel at
    /// holes 2^j, each centred, for j = 0...scales.
    static func scalingKernels(scales: Int) -> [[Double]] {
        var phis: [[Double]] = [[1]]
        for j in 0..<max(0, min(scales, Denoisers.maxScales)) {
            let prev = phis[j], step = 1 << j
            let r = prev.count / 2 + 2 * step
            var next = [Double](repeating: 0, count: 2 * r + 1)
            for (i, v) in prev.enumerated() {
                let pos = i - prev.count / 2
                for (t, h) in StarletTransform.b3.enumerated() { next[pos + (t - 2) * step + r] += v * h }
            }
            phis.append(next)
        }
        return phis
    }

    /// The 2-D wavelet filter of scale j (1-based) as separable parts: psi_j = a (x) a - b (x) b
    /// with a = phi_{j-1}, b = phi_j, both returned centred on b's length.
    static func waveletParts(_ phis: [[Double]], _ j: Int) -> (a: [Double], b: [Double]) {
        let b = phis[j], a0 = phis[j - 1]
        var a = [Double](repeating: 0, count: b.count)
        let off = (b.count - a0.count) / 2
        for i in a0.indices { a[i + off] = a0[i] }
        return (a, b)
    }

    /// Standard deviation of each scale's coefficients (finest first) for unit white Gaussian
    /// noise, exactly (on an unbounded grid): sqrt(sum of psi_j^2) with psi_j = a (x) a - b (x) b,
    /// i.e. sqrt(A^2 - 2 B^2 + C^2) with A = sum a^2, B = sum a b, C = sum b^2.
    public static func noiseFactors(scales: Int) -> [Double] {
        let phis = scalingKernels(scales: scales)
        guard scales > 0 else { return [] }
        return (1...min(scales, Denoisers.maxScales)).map { j in
            let (a, b) = waveletParts(phis, j)
            var aa = 0.0, ab = 0.0, bb = 0.0
            for i in a.indices { aa += a[i] * a[i]; ab += a[i] * b[i]; bb += b[i] * b[i] }
            return (aa * aa - 2 * ab * ab + bb * bb).squareRoot()
        }
    }

    /// For independent noise of per-pixel `variance`, the standard deviation of each scale's
    /// coefficients at each pixel: sqrt(variance correlated with psi_j^2), where psi_j^2 =
    /// a^2 (x) a^2 - 2 (ab) (x) (ab) + b^2 (x) b^2 (three separable filters; 'reflect' borders,
    /// which is exact away from the borders).
    public static func noiseMaps(variance: Image2D, scales: Int, threads: Int = 1) -> [Image2D] {
        let (h, w) = (variance.height, variance.width)
        guard variance.count > 0 else { return [] }
        let v = variance.pixels.map { $0.isFinite ? max($0, 0) : 0 }
        let phis = scalingKernels(scales: scales)
        return (0..<(phis.count - 1)).map { j0 in
            let (a, b) = waveletParts(phis, j0 + 1)
            let r = a.count / 2
            let offs = Array(-r...r)
            let f1 = Denoisers.separable(v, height: h, width: w, taps: a.map { $0 * $0 }, offsets: offs, threads: threads)
            let f2 = Denoisers.separable(v, height: h, width: w, taps: zip(a, b).map { $0 * $1 }, offsets: offs, threads: threads)
            let f3 = Denoisers.separable(v, height: h, width: w, taps: b.map { $0 * $0 }, offsets: offs, threads: threads)
            var out = [Double](repeating: 0, count: h * w)
            for i in 0..<out.count { out[i] = max(f1[i] - 2 * f2[i] + f3[i], 0).squareRoot() }
            return Image2D(height: h, width: w, pixels: out)
        }
    }

    /// The image noise sigma from the finest scale: MAD / 0.6745 of its coefficients (pixels not
    /// `missing`), divided by the finest scale's noise factor.
    public func estimatedNoiseSigma(missing: [Bool]? = nil) -> Double {
        guard let w1 = wavelets.first else { return 0 }
        return StarletTransform.madSigma(w1.pixels, missing: missing)
    }

    /// MAD / 0.6745 / finest factor of the finest scale's coefficients `w1` (pixels not `missing`).
    static func madSigma(_ w1: [Double], missing: [Bool]?) -> Double {
        var v: [Double]
        if let m = missing {
            v = []
            v.reserveCapacity(w1.count)
            for i in 0..<w1.count where !m[i] { v.append(w1[i]) }
        } else {
            v = w1
        }
        let m = Denoisers.median(of: &v)
        v.withUnsafeMutableBufferPointer { b in for i in b.indices { b[i] = abs(b[i] - m) } }
        let mad = Denoisers.median(of: &v)
        return mad / 0.6745 / StarletTransform.noiseFactors(scales: 1)[0]
    }

    /// Coarse scale c_J' plus the coefficients of scales 1...J' with |w_j| > ks[j] sigmas[j],
    /// J' = ks.count <= wavelets.count (c_J' is the coarse scale plus the scales past J').
    public func hardThreshold(ks: [Double], sigmas: [Double], threads: Int = 1) -> Image2D {
        threshold(constant: zip(ks, sigmas).map { $0 * $1 }, maps: nil, ks: [], threads: threads)
    }

    /// As `hardThreshold(ks:sigmas:)` with a per-pixel sigma map for each scale.
    public func hardThreshold(ks: [Double], sigmaMaps: [Image2D], threads: Int = 1) -> Image2D {
        let n = min(ks.count, sigmaMaps.count)
        return threshold(constant: nil, maps: Array(sigmaMaps.prefix(n)), ks: Array(ks.prefix(n)), threads: threads)
    }

    /// Sums, per pixel, in a fixed order: the kept coefficients of the thresholded scales
    /// (finest first), the scales past them, then the coarse scale.
    func threshold(constant: [Double]?, maps: [Image2D]?, ks: [Double], threads: Int) -> Image2D {
        let levels = min(constant?.count ?? ks.count, wavelets.count)
        var out = Image2D(height: coarse.height, width: coarse.width)
        let n = out.count
        guard n > 0 else { return out }
        let ws = wavelets, c = coarse
        out.pixels.withUnsafeMutableBufferPointer { ob in
            nonisolated(unsafe) let o = ob.baseAddress!
            Parallel.chunks(n, threads: threads) { range in
                for j in 0..<ws.count {
                    ws[j].pixels.withUnsafeBufferPointer { wb in
                        if j >= levels {
                            for i in range { o[i] += wb[i] }
                        } else if let cs = constant {
                            let t = cs[j]
                            if j == 0 { for i in range { let v = wb[i]; o[i] = abs(v) > t ? v : 0 } }
                            else { for i in range { let v = wb[i]; o[i] += abs(v) > t ? v : 0 } }
                        } else if let m = maps {
                            let k = ks[j]
                            m[j].pixels.withUnsafeBufferPointer { sb in
                                for i in range { let v = wb[i]; o[i] += abs(v) > k * sb[i] ? v : 0 }
                            }
                        }
                    }
                }
                c.pixels.withUnsafeBufferPointer { cb in for i in range { o[i] += cb[i] } }
            }
        }
        return out
    }
}

// MARK: - Parameter choice against the truth

extension Denoisers {
    /// 12 values from 0.3 to 4 in equal ratios (rounded to 3 significant digits).
    public static let defaultSigmas: [Double] = (0..<12).map { round3(0.3 * pow(4 / 0.3, Double($0) / 11)) }
    /// 1 to 5 in steps of 0.5.
    public static let defaultKs: [Double] = stride(from: 1.0, through: 5.0, by: 0.5).map { $0 }

    /// x rounded to 3 significant digits (the parameter strings print exactly the value used).
    static func round3(_ x: Double) -> Double {
        guard x.isFinite, x != 0 else { return x }
        let e = floor(log10(abs(x))) - 2
        let s = pow(10, e)
        return (x / s).rounded() * s
    }

    static func format(_ x: Double) -> String { String(format: "%g", x) }

    /// Maximises `f` over the sorted `grid` (all evaluated), then refines between the best grid
    /// point's neighbours by golden-section search on values rounded by `round`; every value is
    /// evaluated at most once. Returns the best value and its score.
    static func searchContinuous(_ grid: [Double], refine: Int = 8, round: (Double) -> Double,
                                 _ f: (Double) -> Double) -> (x: Double, score: Double) {
        var cache: [Double: Double] = [:]
        func eval(_ x: Double) -> Double {
            let r = round(x)
            if let s = cache[r] { return s }
            let s = f(r)
            cache[r] = s.isNaN ? -.infinity : s
            return cache[r]!
        }
        let g = grid.filter { $0.isFinite }.sorted()
        guard !g.isEmpty else { return (.nan, -.infinity) }
        let scores = g.map(eval)
        var best = 0
        for i in scores.indices where scores[i] > scores[best] { best = i }
        if g.count > 1 && refine > 0 {
            var lo = g[max(0, best - 1)], hi = g[min(g.count - 1, best + 1)]
            let phi = (5.0.squareRoot() - 1) / 2
            var x1 = hi - phi * (hi - lo), x2 = lo + phi * (hi - lo)
            var f1 = eval(x1), f2 = eval(x2)
            for _ in 0..<refine {
                if f1 >= f2 { hi = x2; x2 = x1; f2 = f1; x1 = hi - phi * (hi - lo); f1 = eval(x1) }
                else { lo = x1; x1 = x2; f1 = f2; x2 = lo + phi * (hi - lo); f2 = eval(x2) }
            }
        }
        // The best of everything evaluated (the smallest value on ties, for a stable answer).
        let top = cache.max { a, b in a.value < b.value || (a.value == b.value && a.key > b.key) }!
        return (top.key, top.value)
    }

    /// Gaussian smoothing with sigma chosen against the truth: the grid, then a golden-section
    /// refinement between the best point's neighbours (sigma rounded to 3 significant digits).
    public static func gaussianBest(_ noisy: Image2D, sigmas: [Double] = Denoisers.defaultSigmas, threads: Int = 1,
                                    score: (Image2D) -> Double) -> DenoiserChoice {
        let grid = sigmas.filter { $0 > 0 }
        guard !grid.isEmpty else { return DenoiserChoice(image: noisy, parameters: "sigma=0", score: score(noisy)) }
        let best = searchContinuous(grid, round: round3) { score(gaussian(noisy, sigma: $0, threads: threads)) }
        let image = gaussian(noisy, sigma: best.x, threads: threads)
        return DenoiserChoice(image: image, parameters: "sigma=" + format(best.x), score: best.score)
    }

    /// The median filter with the best of `sizes`.
    public static func medianBest(_ noisy: Image2D, sizes: [Int] = [3, 5, 7, 9], threads: Int = 1,
                                  score: (Image2D) -> Double) -> DenoiserChoice {
        var best: DenoiserChoice?
        for s in sizes where s >= 1 {
            let img = median(noisy, size: s, threads: threads)
            let sc = score(img)
            if best == nil || sc > best!.score { best = DenoiserChoice(image: img, parameters: "size=\(s)", score: sc) }
        }
        return best ?? DenoiserChoice(image: noisy, parameters: "size=1", score: score(noisy))
    }

    /// Starlet hard thresholding with k and the number of scales chosen against the truth: for
    /// each number of scales one transform, the k grid, then a golden-section refinement of k
    /// (rounded to 0.01). The noise sigma is estimated once (MAD of the finest scale, which does
    /// not depend on the number of scales). The chosen image has the same bits as
    /// `starlet(noisy, scales: J, k: k)`.
    public static func starletBest(_ noisy: Image2D, ks: [Double] = Denoisers.defaultKs, scales: [Int] = [4, 5], threads: Int = 1,
                                   score: (Image2D) -> Double) -> DenoiserChoice {
        let js = scales.filter { $0 >= 1 }.map { min($0, maxScales) }
        let grid = ks.filter { $0.isFinite }
        guard noisy.count > 0, let maxJ = js.max(), !grid.isEmpty else {
            return DenoiserChoice(image: noisy, parameters: "k=0,scales=0", score: score(noisy))
        }
        let (filled, missing) = fillMissing(noisy)
        guard let src = filled else { return DenoiserChoice(image: noisy, parameters: "k=0,scales=0", score: score(noisy)) }
        let input = Image2D(height: noisy.height, width: noisy.width, pixels: src)
        var sigma = 0.0
        let f = StarletTransform.noiseFactors(scales: maxJ)
        var transforms: [Int: StarletTransform] = [:]
        for j in Set(js) {
            let t = StarletTransform(input, scales: j, threads: threads)
            sigma = t.estimatedNoiseSigma(missing: missing)
            transforms[j] = t
        }
        func denoise(_ k: Double, _ j: Int) -> Image2D {
            restoreMissing(transforms[j]!.hardThreshold(ks: [Double](repeating: k, count: j), sigmas: (0..<j).map { sigma * f[$0] },
                                                        threads: threads), missing)
        }
        var best: (k: Double, j: Int, score: Double)?
        for j in js {
            let r = searchContinuous(grid, round: { ($0 * 100).rounded() / 100 }) { score(denoise($0, j)) }
            if best == nil || r.score > best!.score { best = (r.x, j, r.score) }
        }
        let b = best!
        return DenoiserChoice(image: denoise(b.k, b.j), parameters: "k=\(format(b.k)),scales=\(b.j)", score: b.score)
    }
}
