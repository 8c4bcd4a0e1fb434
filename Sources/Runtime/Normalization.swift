/// Maps image pixels to the units the network was trained on, and back. The rule is named by the
/// model's `normalization` metadata; its statistics come from the valid pixels of the whole image.
public struct Normalization: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case none
        /// Flamary 2017: negatives set to 0, divided by the image maximum.
        case clipMax = "clip_max"
        case minmax
        case meanstd
        /// The sky level and noise: (pixel - sky median) / sky sigma, both robust (a 3-sigma
        /// clipped median and 1.4826 x MAD, `RobustSky`): a rule that ties the network's units to
        /// the image's noise rather than to its brightest pixel, so it holds across instruments
        /// and units (ADU, e-/s, MJy/sr).
        case skyMAD = "sky_mad"
        /// The sky level and the noise: (pixel - sky median) / noise sigma, the sky median as
        /// `sky_mad`'s and the noise sigma from neighbouring pixels as the DER_SNR estimator
        /// (Stoehr et al. 2008) takes it: 1.4826 x MAD (3-sigma clipped) of the second
        /// differences 2 x[y, x] - x[y, x-2] - x[y, x+2], divided by sqrt 6
        /// (`RobustSky.secondDifferences`). Unlike the spread of the pixel values, that sees the
        /// noise and not the structure (gradients cancel; a spacing of 2 steps over the
        /// correlation of resampled pixels): a nebula that fills the frame keeps the noise at 1
        /// in network units, as a dark sky does.
        case noiseMAD = "noise_mad"
        /// `sky_mad`'s units, then the variance-stabilising transform of Poisson + Gaussian noise
        /// (the generalised Anscombe transform, made linear below the sky): with v the pixel in
        /// sky-sigma units and q the sky noise in electrons (gain x sky sigma), the noise variance
        /// is 1 + v / q, and u = 2q (sqrt(1 + v/q) - 1) for v >= 0, u = v below (continuous with
        /// its slope at 0). The noise is then about 1 at every level, so the network sees how far
        /// a bright pixel can move: structure 1000 sigma above the sky is not taken for noise.
        /// q comes from the gain (header or option) or, without one, from the model's
        /// `normalization.noise_electrons`.
        case skyVST = "sky_vst"

        /// Rules whose units follow the image itself (any offset and scale of the pixel values
        /// gives the same network input): what a model trained across instruments declares.
        public var isAffineInvariant: Bool { self == .skyMAD || self == .noiseMAD || self == .meanstd || self == .minmax }
        /// Rules measured on the sky's robust statistics (the sky median and sigma).
        public var usesRobustSky: Bool { self == .skyMAD || self == .noiseMAD || self == .skyVST }
    }

    public let kind: Kind
    /// network = (pixel - offset) / scale (after clipping for clip_max).
    public let offset: Double
    public let scale: Double
    /// `sky_vst`: the sky noise in electrons, q (0 for the other rules).
    public let noiseElectrons: Double

    public init(kind: Kind, offset: Double, scale: Double, noiseElectrons: Double = 0) {
        (self.kind, self.offset, self.scale, self.noiseElectrons) = (kind, offset, scale, noiseElectrons)
    }

    /// `sky_vst` with its q: `gain` (electrons per image unit) times the sky sigma, or `fallback`
    /// (electrons) when the gain is unknown. Other rules are returned unchanged.
    public func resolvingNoise(gain: Double?, fallback: Double) -> Normalization {
        guard kind == .skyVST else { return self }
        let q = gain.map { $0 * scale } ?? fallback
        return Normalization(kind: kind, offset: offset, scale: scale, noiseElectrons: q > 0 && q.isFinite ? q : fallback)
    }

    /// The variance-stabilising transform of `sky_vst` on sky-sigma units, and its inverse.
    @inline(__always)
    public static func stabilise(_ v: Double, q: Double) -> Double {
        v < 0 ? v : 2 * q * ((1 + v / q).squareRoot() - 1)
    }
    @inline(__always)
    public static func unstabilise(_ u: Double, q: Double) -> Double {
        if u < 0 { return u }
        let a = u / (2 * q) + 1
        return q * (a * a - 1)
    }

    public var description: String {
        switch kind {
        case .none: return "none"
        case .clipMax: return "clip_max (max \(scale))"
        case .minmax: return "minmax (min \(offset), range \(scale))"
        case .meanstd: return "meanstd (mean \(offset), std \(scale))"
        case .skyMAD: return "sky_mad (sky \(offset), sky sigma \(scale))"
        case .noiseMAD: return "noise_mad (sky \(offset), noise sigma \(scale))"
        case .skyVST: return "sky_vst (sky \(offset), sky sigma \(scale), sky noise \(noiseElectrons) e-)"
        }
    }

    /// Measures the statistics the rule needs on the valid pixels (`width`: the image's row
    /// length, which `noise_mad` needs for its neighbour differences).
    public static func fit(_ kind: Kind, pixels: [Float], invalid: [Bool], width: Int) -> Normalization {
        var mn = Double.infinity, mx = -Double.infinity, sum = 0.0, n = 0
        for i in 0..<pixels.count where !invalid[i] {
            let v = Double(pixels[i])
            mn = min(mn, v); mx = max(mx, v); sum += v; n += 1
        }
        switch kind {
        case .none:
            return Normalization(kind: kind, offset: 0, scale: 1)
        case .clipMax:
            return Normalization(kind: kind, offset: 0, scale: mx > 0 ? mx : 1)
        case .minmax:
            let r = mx - mn
            return Normalization(kind: kind, offset: n > 0 ? mn : 0, scale: r > 0 ? r : 1)
        case .meanstd:
            let mean = n > 0 ? sum / Double(n) : 0
            var ss = 0.0
            for i in 0..<pixels.count where !invalid[i] { let d = Double(pixels[i]) - mean; ss += d * d }
            let sd = n > 1 ? (ss / Double(n)).squareRoot() : 0
            return Normalization(kind: kind, offset: mean, scale: sd > 0 ? sd : 1)
        case .skyMAD, .skyVST:
            let sky = RobustSky.estimate(count: pixels.count) { i in invalid[i] ? nil : Double(pixels[i]) }
            return skyMAD(kind, sky: sky)
        case .noiseMAD:
            let sky = RobustSky.estimate(count: pixels.count) { i in invalid[i] ? nil : Double(pixels[i]) }
            let d = RobustSky.secondDifferences(count: pixels.count, width: width) { i in invalid[i] ? nil : Double(pixels[i]) }
            return noiseMAD(sky: sky, differences: d)
        }
    }

    /// `sky_mad` or `sky_vst` (q still 0: `resolvingNoise`) from the sky estimate.
    public static func skyMAD(_ kind: Kind, sky: (median: Double, sigma: Double, pixels: Int)) -> Normalization {
        Normalization(kind: kind, offset: sky.median.isFinite ? sky.median : 0, scale: sky.sigma > 0 && sky.sigma.isFinite ? sky.sigma : 1)
    }

    /// `noise_mad` from the sky estimate and the sampled second differences (the in-memory and
    /// the streaming statistics both end here). Falls back to the sky sigma when the differences
    /// have no spread (a constant or piecewise-linear image), then to 1.
    public static func noiseMAD(sky: (median: Double, sigma: Double, pixels: Int), differences d: [Double]) -> Normalization {
        let noise = RobustSky.pixelNoise(secondDifferences: d)
        let scale = noise > 0 && noise.isFinite ? noise : (sky.sigma > 0 && sky.sigma.isFinite ? sky.sigma : 1)
        return Normalization(kind: .noiseMAD, offset: sky.median.isFinite ? sky.median : 0, scale: scale)
    }

    /// Pixels in network units; invalid pixels are left as they are (NaN) for the filler.
    public func apply(_ pixels: [Float], invalid: [Bool]) -> [Float] {
        var out = [Float](repeating: .nan, count: pixels.count)
        let inv = 1 / scale
        for i in 0..<pixels.count where !invalid[i] {
            var v = Double(pixels[i])
            if kind == .clipMax { v = max(v, 0) }
            v = (v - offset) * inv
            out[i] = Float(kind == .skyVST ? Normalization.stabilise(v, q: noiseElectrons) : v)
        }
        return out
    }

    /// Network output back to the image's units.
    public func invert(_ values: [Float]) -> [Float] {
        if kind == .skyVST {
            return values.map { Float(Normalization.unstabilise(Double($0), q: noiseElectrons) * scale + offset) }
        }
        return values.map { Float(Double($0) * scale + offset) }
    }
}

/// Gives invalid (NaN/BLANK) pixels values the network can digest: each takes the mean of its
/// already-filled 8-neighbours, filling inward from the valid pixels in breadth-first order
/// (nearest-neighbour inpainting, O(n)). An image with no valid pixel is filled with 0.
/// The pixels are NaN again in the output.
public enum MaskFill {
    public static func fill(_ values: inout [Float], invalid: [Bool], width: Int, height: Int) {
        let n = width * height
        if !invalid.contains(true) { return }   // nothing to fill (the usual case)
        var done = invalid.map { !$0 }
        var queue: [Int] = []
        queue.reserveCapacity(n / 8)
        var queued = [Bool](repeating: false, count: n)
        func enqueueNeighbours(_ i: Int) {
            let y = i / width, x = i % width
            for dy in -1...1 {
                for dx in -1...1 where dy != 0 || dx != 0 {
                    let yy = y + dy, xx = x + dx
                    if yy < 0 || yy >= height || xx < 0 || xx >= width { continue }
                    let j = yy * width + xx
                    if !done[j] && !queued[j] { queued[j] = true; queue.append(j) }
                }
            }
        }
        var any = false
        for i in 0..<n where done[i] {
            any = true
            // Only valid pixels touching an invalid one seed the queue.
            enqueueNeighbours(i)
        }
        if !any {
            for i in 0..<n { values[i] = 0 }
            return
        }
        var head = 0
        while head < queue.count {
            let i = queue[head]; head += 1
            let y = i / width, x = i % width
            var s: Float = 0, c: Float = 0
            for dy in -1...1 {
                for dx in -1...1 where dy != 0 || dx != 0 {
                    let yy = y + dy, xx = x + dx
                    if yy < 0 || yy >= height || xx < 0 || xx >= width { continue }
                    let j = yy * width + xx
                    if done[j] { s += values[j]; c += 1 }
                }
            }
            values[i] = c > 0 ? s / c : 0
            done[i] = true
            enqueueNeighbours(i)
        }
    }
}

/// Reflection padding (numpy's 'reflect': the edge pixel is not repeated).
public enum ReflectPad {
    /// Pads a single-channel image. Each pad must be smaller than the image side.
    public static func pad(_ v: [Float], width: Int, height: Int,
                           top: Int, bottom: Int, left: Int, right: Int) -> [Float] {
        precondition(top < height && bottom < height && left < width && right < width, "ReflectPad: pad larger than image")
        let ow = width + left + right, oh = height + top + bottom
        var out = [Float](repeating: 0, count: ow * oh)
        @inline(__always) func reflect(_ i: Int, _ n: Int) -> Int {
            if i < 0 { return -i }
            if i >= n { return 2 * (n - 1) - i }
            return i
        }
        for y in 0..<oh {
            let sy = reflect(y - top, height)
            for x in 0..<ow {
                out[y * ow + x] = v[sy * width + reflect(x - left, width)]
            }
        }
        return out
    }
}

/// Robust sky level and noise of an image: the median and 1.4826 x the median absolute deviation
/// of the valid pixels, iterated with `clip`-sigma clipping about the median (up to `rounds`
/// rounds, until no pixel is removed), so stars and galaxies do not inflate the estimate. Images
/// of more than a million pixels are subsampled on a regular stride (as good, and far faster).
public enum RobustSky {
    public static func estimate(count: Int, clip: Double = 3, rounds: Int = 10, value: (Int) -> Double?) -> (median: Double, sigma: Double, pixels: Int) {
        var v: [Double] = []
        let stride = max(1, count / 1_000_000)
        v.reserveCapacity(count / stride + 1)
        for i in Swift.stride(from: 0, to: count, by: stride) {
            if let p = value(i), p.isFinite { v.append(p) }
        }
        guard !v.isEmpty else { return (.nan, .nan, 0) }
        var med = 0.0, sig = 0.0
        var count = v.count
        // The rounds work in place: the kept values are compacted to the front of `v` (their
        // order does not change a median), the deviations go to one reused buffer.
        var dev = [Double](repeating: 0, count: count)
        v.withUnsafeMutableBufferPointer { vb in
            dev.withUnsafeMutableBufferPointer { db in
                for _ in 0..<max(1, rounds) {
                    med = median(UnsafeMutableBufferPointer(rebasing: vb[0..<count]))
                    for i in 0..<count { db[i] = abs(vb[i] - med) }
                    sig = 1.4826 * median(UnsafeMutableBufferPointer(rebasing: db[0..<count]))
                    guard sig > 0 else { break }
                    var kept = 0
                    for i in 0..<count where abs(vb[i] - med) <= clip * sig { vb[kept] = vb[i]; kept += 1 }
                    if kept == count || kept == 0 { break }
                    count = kept
                }
            }
        }
        return (med, sig, count)
    }

    /// Median of `v` (reorders it): the mean of the two middle values for an even count.
    /// The horizontal second differences `2 value(i) - value(i - 2) - value(i + 2)` at the flat
    /// indices the sky estimate samples (every `max(1, count / 10^6)`-th), skipping the two
    /// first and last columns and triples with an invalid pixel: the sample `Normalization`'s
    /// `noise_mad` measures the noise on (for white noise of sigma s their sigma is sqrt(6) s).
    public static func secondDifferences(count: Int, width: Int, value: (Int) -> Double?) -> [Double] {
        let stride = max(1, count / 1_000_000)
        var d: [Double] = []
        guard width > 4 else { return d }
        d.reserveCapacity(count / stride + 1)
        for i in Swift.stride(from: 0, to: count, by: stride) {
            let x = i % width
            guard x >= 2, x < width - 2 else { continue }
            if let a = value(i - 2), let b = value(i), let c = value(i + 2), a.isFinite, b.isFinite, c.isFinite { d.append(2 * b - a - c) }
        }
        return d
    }

    /// The white-noise sigma the second differences imply: 1.4826 x their clipped MAD / sqrt 6
    /// (0 when they have no spread).
    public static func pixelNoise(secondDifferences d: [Double]) -> Double {
        let s = estimate(count: d.count) { d[$0] }.sigma / 6.0.squareRoot()
        return s.isFinite ? s : 0
    }

    public static func median(_ v: inout [Double]) -> Double {
        v.withUnsafeMutableBufferPointer { median($0) }
    }

    /// The same for a buffer (reordered).
    static func median(_ b: UnsafeMutableBufferPointer<Double>) -> Double {
        let n = b.count
        guard n > 0 else { return .nan }
        select(b, n / 2)
        guard n % 2 == 0 else { return b[n / 2] }
        var lower = b[0]   // the largest of the values before the upper middle one
        for i in 1..<(n / 2) { lower = max(lower, b[i]) }
        return 0.5 * (lower + b[n / 2])
    }

    /// Reorders `v` so that `v[k]` holds the value a sort would put there, none larger before it
    /// and none smaller after it (quickselect with median-of-three pivots, in linear time on
    /// average; a sort of what is left if the partitions stop shrinking). The order statistics,
    /// and so the medians, are those of a sort: the same values, several times faster on the
    /// million-pixel samples of the statistics pass.
    @inline(__always)
    static func select<T: Comparable>(_ v: UnsafeMutableBufferPointer<T>, _ k: Int) {
        precondition(k >= 0 && k < v.count)
        var lo = 0, hi = v.count - 1
        var budget = 2 * (Int.bitWidth - v.count.leadingZeroBitCount) + 8
        while hi > lo {
            if budget == 0 {
                var rest = UnsafeMutableBufferPointer(rebasing: v[lo...hi])
                rest.sort()
                return
            }
            budget -= 1
            let mid = lo + (hi - lo) / 2
            if v[mid] < v[lo] { v.swapAt(mid, lo) }
            if v[hi] < v[lo] { v.swapAt(hi, lo) }
            if v[hi] < v[mid] { v.swapAt(hi, mid) }
            let pivot = v[mid]
            var i = lo, j = hi
            while i <= j {
                while v[i] < pivot { i += 1 }
                while pivot < v[j] { j -= 1 }
                if i <= j { v.swapAt(i, j); i += 1; j -= 1 }
            }
            // [lo, j] <= pivot, [i, hi] >= pivot, and whatever lies between equals it.
            if k <= j { hi = j } else if k >= i { lo = i } else { return }
        }
    }
}
