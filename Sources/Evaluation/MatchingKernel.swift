import Foundation
import Imaging
import Runtime

/// A PSF-matching kernel fitted between two images of one field (the non-parametric kernels of
/// image subtraction, Alard & Lupton 1998, with one kernel for the whole image): the k of side
/// 2 h + 1 that minimises sum over p of ((k * S)(p) - B(p))^2 with sum(k) = 1, S the sharper
/// image and B the broader one, each less its sky (the clipped median). Unlike a Gaussian blur
/// between two measured FWHMs it matches the profiles' shapes (Moffat wings, a core that is not
/// Gaussian), so the residual at bright stars is what the images really differ by. The sum
/// constraint keeps the flux scale: the kernel matches shapes, not transparencies.
///
/// The sum runs over the pixels near sources (within h of a pixel of B 10 sigma above its sky)
/// whose whole window of S is finite; S's white-noise variance is taken off the normal
/// equations' diagonal, so that the noise does not make the kernel a smoothing filter.
public struct MatchingKernel: Sendable {
    /// Half-width h: the kernel is (2 h + 1)^2 taps, tap (u, v) the offset (u - h, v - h).
    public let halfWidth: Int
    /// Row-major taps, summing to 1.
    public let taps: [Double]

    public init(halfWidth: Int, taps: [Double]) {
        precondition(taps.count == (2 * halfWidth + 1) * (2 * halfWidth + 1))
        (self.halfWidth, self.taps) = (halfWidth, taps)
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// Fits the kernel taking `sharp` to `broad` (same size).
    public static func fit(sharp: Image2D, broad: Image2D, halfWidth h: Int) throws -> MatchingKernel {
        precondition(sharp.height == broad.height && sharp.width == broad.width && h >= 0)
        let (height, width) = (sharp.height, sharp.width)
        guard height > 4 * h + 2, width > 4 * h + 2 else {
            throw Failure(description: "matching kernel: a \(width)x\(height) image is too small for a kernel of half-width \(h)")
        }
        func skyLess(_ img: Image2D) -> (pixels: [Double], sigma: Double) {
            let sky = RobustSky.estimate(count: img.count) { img.pixels[$0].isFinite ? img.pixels[$0] : nil }
            return (img.pixels.map { $0.isFinite ? $0 - sky.median : .nan }, sky.sigma.isFinite ? sky.sigma : 0)
        }
        let (s, noiseS) = skyLess(sharp), (b, noiseB) = skyLess(broad)
        let k = 2 * h + 1, n = k * k
        // Pixels whose whole window of S is finite, and B too: the fit's sum runs over these.
        var bad = [Int](repeating: 0, count: (height + 1) * (width + 1))   // integral image of non-finite S
        for y in 0..<height { for x in 0..<width {
            bad[(y + 1) * (width + 1) + x + 1] = (s[y * width + x].isFinite ? 0 : 1) + bad[y * (width + 1) + x + 1]
                + bad[(y + 1) * (width + 1) + x] - bad[y * (width + 1) + x]
        } }
        // The fit runs over the windows of the sources (pixels within h of one where B is 10
        // sigma above its sky), where the profiles are measured; the sky between them only
        // adds noise to the normal equations.
        var brightSum = [Int](repeating: 0, count: (height + 1) * (width + 1))
        for y in 0..<height { for x in 0..<width {
            let v = b[y * width + x]
            brightSum[(y + 1) * (width + 1) + x + 1] = (v.isFinite && v > 10 * noiseB ? 1 : 0) + brightSum[y * (width + 1) + x + 1]
                + brightSum[(y + 1) * (width + 1) + x] - brightSum[y * (width + 1) + x]
        } }
        func boxCount(_ table: [Int], _ y: Int, _ x: Int) -> Int {
            let (y0, x0, y1, x1) = (max(0, y - h), max(0, x - h), min(height, y + h + 1), min(width, x + h + 1))
            return table[y1 * (width + 1) + x1] - table[y0 * (width + 1) + x1] - table[y1 * (width + 1) + x0] + table[y0 * (width + 1) + x0]
        }
        var inside: [Int] = []
        for y in h..<(height - h) { for x in h..<(width - h) where b[y * width + x].isFinite {
            if boxCount(bad, y, x) == 0 && boxCount(brightSum, y, x) > 0 { inside.append(y * width + x) }
        } }
        guard inside.count > 4 * n else {
            throw Failure(description: "matching kernel: \(inside.count) pixels near sources for \(n) taps (too few stars 10 sigma above the sky)")
        }
        // Normal equations over those pixels: G = X^T X, r = X^T B, X's rows the windows of S.
        let offsets = (0..<n).map { ($0 / k - h) * width + ($0 % k - h) }
        var g = [Double](repeating: 0, count: n * n), r = [Double](repeating: 0, count: n)
        var row = [Double](repeating: 0, count: n)
        for p in inside {
            for a in 0..<n { row[a] = s[p - offsets[a]] }
            let bp = b[p]
            for a in 0..<n {
                let ra = row[a]
                r[a] += ra * bp
                for c in 0...a { g[a * n + c] += ra * row[c] }
            }
        }
        for a in 0..<n { for c in 0..<a { g[c * n + a] = g[a * n + c] } }
        // S's own noise (white: the sky sigma squared on the diagonal) would act as a ridge that
        // turns the fit into a smoothing filter, blurring more than the profiles differ by: it
        // is taken out where that leaves the equations definite. (A registered mean's noise is
        // correlated between neighbours too; only its diagonal part is removed.)
        var corrected = g
        for a in 0..<n { corrected[a * n + a] -= Double(inside.count) * noiseS * noiseS }
        guard let chol = cholesky(corrected, n) ?? cholesky(g, n) else {
            throw Failure(description: "matching kernel: the normal equations are singular")
        }
        let gr = solve(chol, n, r), g1 = solve(chol, n, [Double](repeating: 1, count: n))
        let mu = (gr.reduce(0, +) - 1) / g1.reduce(0, +)
        let taps = zip(gr, g1).map { $0 - mu * $1 }
        guard taps.allSatisfy({ $0.isFinite }) else { throw Failure(description: "matching kernel: the fit did not converge") }
        return MatchingKernel(halfWidth: h, taps: taps)
    }

    /// `image` convolved by the kernel ('reflect' borders as `Denoisers.gaussian`; missing pixels
    /// filled for the convolution and missing again after it).
    public func apply(_ image: Image2D, threads: Int = 1) -> Image2D {
        let (height, width) = (image.height, image.width)
        let (filled, missing) = Denoisers.fillMissing(image)
        guard let src = filled, height > 0, width > 0 else { return image }
        let h = halfWidth, k = 2 * h + 1, taps = taps
        // Reflected source columns of every (x, v) and rows of every (y, u).
        let cols = (0..<width).flatMap { x in (0..<k).map { v in MatchingKernel.reflect(x - (v - h), width) } }
        let rows = (0..<height).flatMap { y in (0..<k).map { u in MatchingKernel.reflect(y - (u - h), height) * width } }
        var out = [Double](repeating: 0, count: height * width)
        out.withUnsafeMutableBufferPointer { ob in
            nonisolated(unsafe) let op = ob.baseAddress!
            ParallelFor.run(height, threads: threads) { y in
                for x in 0..<width {
                    var acc = 0.0
                    for u in 0..<k {
                        let yy = rows[y * k + u]
                        for v in 0..<k { acc += taps[u * k + v] * src[yy + cols[x * k + v]] }
                    }
                    op[y * width + x] = acc
                }
            }
        }
        return Denoisers.restoreMissing(Image2D(height: height, width: width, pixels: out), missing)
    }

    /// i reflected into 0 ..< n ('reflect': ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...).
    static func reflect(_ i: Int, _ n: Int) -> Int {
        var j = i
        while j < 0 || j >= n { j = j < 0 ? -j - 1 : 2 * n - j - 1 }
        return j
    }

    /// Lower-triangular L with L L^T = a (n x n, row-major), nil if a is not positive definite.
    static func cholesky(_ a: [Double], _ n: Int) -> [Double]? {
        var l = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0...i {
                var s = a[i * n + j]
                for q in 0..<j { s -= l[i * n + q] * l[j * n + q] }
                if i == j {
                    guard s > 0 else { return nil }
                    l[i * n + i] = s.squareRoot()
                } else {
                    l[i * n + j] = s / l[j * n + j]
                }
            }
        }
        return l
    }

    /// x with L L^T x = b.
    static func solve(_ l: [Double], _ n: Int, _ b: [Double]) -> [Double] {
        var y = b
        for i in 0..<n {
            var s = y[i]
            for q in 0..<i { s -= l[i * n + q] * y[q] }
            y[i] = s / l[i * n + i]
        }
        for i in stride(from: n - 1, through: 0, by: -1) {
            var s = y[i]
            for q in (i + 1)..<n { s -= l[q * n + i] * y[q] }
            y[i] = s / l[i * n + i]
        }
        return y
    }
}
