import Foundation
import Runtime

/// A PSF measured from an image's own stars (`--psf auto`).
public struct MeasuredPSF: Sendable {
    /// The stacked star image: odd size, peak on the central pixel, sum 1, the form a PSF file
    /// takes (`PSFSpec.file`) and every classical method and `check` uses.
    public var kernel: Image2D
    /// Stars stacked.
    public var stars: Int
    /// Candidates looked at (local maxima above the detection threshold).
    public var candidates: Int
    /// That threshold, in sigma of the sky noise above the sky (30, 15 or 8).
    public var threshold: Double
    /// The Moffat profile fitted to the stacked kernel (FWHM in pixels, beta), its relative RMS
    /// misfit, and the ellipticity 1 - b/a from the kernel's second moments.
    public var fwhm: Double
    public var beta: Double
    public var fitError: Double
    public var ellipticity: Double
    /// The fitted profile as a PSF spec.
    public var moffat: PSFSpec { .moffat(fwhm: fwhm, beta: beta, size: kernel.height) }
}

/// Measures the PSF from the isolated, unsaturated point sources of an image, as astronomers do
/// by hand (or PSFEx does): candidates are local maxima well above the sky noise, away from the
/// border and masked pixels; saturated stars (flat or clipped tops at the image's ceiling),
/// crowded ones (a comparable neighbour within the stamp) and extended sources (second-moment
/// size beyond the stellar locus, the most compact third of the candidates) are rejected; each
/// star is cut out with its local background removed, recentred on its centroid by Lanczos-3
/// resampling, normalised to unit flux, and the stamps are combined by a per-pixel median
/// (robust to faint neighbours and cosmic rays). A Moffat profile is fitted to the result for
/// the record. Everything is deterministic.
public enum PSFEstimation {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `pixels` row-major in the image's own units, `invalid` marks masked pixels (NaN, BLANK).
    /// `maxStars`: the brightest this many accepted stars are stacked.
    public static func measure(pixels: [Float], invalid: [Bool], width w: Int, height h: Int, maxStars: Int = 60,
                               stampSize: Int? = nil) throws -> MeasuredPSF {
        guard w >= 32, h >= 32, pixels.count == w * h, invalid.count == w * h else {
            throw Failure(description: "the image (\(w)x\(h)) is too small to measure a PSF from its stars (at least 32x32)")
        }
        func ok(_ i: Int) -> Double? { invalid[i] || !pixels[i].isFinite ? nil : Double(pixels[i]) }
        let stride = max(1, w * h / 1_000_000)
        let sky = RobustSky.estimate(count: (w * h + stride - 1) / stride) { ok($0 * stride) }
        let noise = RobustSky.pixelNoise(secondDifferences: RobustSky.secondDifferences(count: w * h, width: w) { ok($0) })
        let sigma = noise > 0 && noise.isFinite ? noise : sky.sigma
        guard sigma > 0, sigma.isFinite else { throw Failure(description: "the image has no measurable sky noise; give the PSF with --psf SPEC") }
        var ceiling = -Double.infinity
        for i in 0..<(w * h) { if let v = ok(i) { ceiling = max(ceiling, v) } }

        // Candidates: strict local maxima over 5x5, 30 sigma above the sky; 15 where fewer than
        // 20 peaks reach 30 (small frames, short exposures), 8 where fewer than 20 reach 15 (a
        // few bright stars: a peak 8 sigma above the sky is a flux S/N of about 25 for a 3-pixel
        // FWHM, above the usual 20 for PSF stars; the median stack averages their noise down).
        var cands: [(y: Int, x: Int, peak: Double)] = []
        var level = 30.0
        for nextLevel in [30.0, 15, 8] {
            if nextLevel < level { if cands.count >= 20 { break }; level = nextLevel; cands = [] }
            let threshold = sky.median + level * sigma
            for y in 2..<(h - 2) { for x in 2..<(w - 2) {
                guard let v = ok(y * w + x), v > threshold else { continue }
                var isMax = true
                outer: for dy in -2...2 { for dx in -2...2 where dy != 0 || dx != 0 {
                    if let u = ok((y + dy) * w + x + dx), u >= v, !(u == v && (dy, dx) > (0, 0)) { isMax = false; break outer }
                } }
                if isMax { cands.append((y, x, v)) }
            } }
        }
        if cands.isEmpty { throw Failure(description: "no star rises \(Int(level)) sigma above the sky; give the PSF with --psf SPEC") }

        // Sizes from second moments within radius 4 (sky-subtracted, positive part).
        func moments(_ y: Int, _ x: Int, radius r: Int) -> (cy: Double, cx: Double, sxx: Double, syy: Double, sxy: Double, flux: Double)? {
            var s = 0.0, sy = 0.0, sx = 0.0
            var vals: [(Double, Double, Double)] = []
            for dy in -r...r { for dx in -r...r where dy * dy + dx * dx <= r * r {
                let yy = y + dy, xx = x + dx
                guard yy >= 0, yy < h, xx >= 0, xx < w, let v = ok(yy * w + xx) else { return nil }
                let f = max(0, v - sky.median)
                vals.append((Double(dy), Double(dx), f)); s += f; sy += f * Double(dy); sx += f * Double(dx)
            } }
            guard s > 0 else { return nil }
            let cy = sy / s, cx = sx / s
            var yy = 0.0, xx = 0.0, xy = 0.0
            for (dy, dx, f) in vals { yy += f * (dy - cy) * (dy - cy); xx += f * (dx - cx) * (dx - cx); xy += f * (dy - cy) * (dx - cx) }
            return (cy, cx, xx / s, yy / s, xy / s, s)
        }
        var sized: [(y: Int, x: Int, peak: Double, size: Double)] = []
        for c in cands {
            // Saturated: a clipped (flat) top, two core pixels at the peak value, or the top at the
            // image's ceiling (the brightest star is left out, saturated or not).
            if c.peak >= ceiling { continue }
            var flat = 0
            for dy in -1...1 { for dx in -1...1 { if let u = ok((c.y + dy) * w + c.x + dx), u >= c.peak - 1e-6 * abs(c.peak) { flat += 1 } } }
            if flat >= 2 { continue }
            // Cosmic rays and hot pixels: sharper than any PSF the pixels sample (the four
            // neighbours under a fifth of the peak above the sky).
            var around = 0.0
            for (dy, dx) in [(-1, 0), (1, 0), (0, -1), (0, 1)] { around += (ok((c.y + dy) * w + c.x + dx) ?? c.peak) - sky.median }
            if around / 4 < 0.2 * (c.peak - sky.median) { continue }
            guard let m = moments(c.y, c.x, radius: 4) else { continue }
            sized.append((c.y, c.x, c.peak, (m.sxx + m.syy).squareRoot()))
        }
        guard sized.count >= 3 else {
            throw Failure(description: "found only \(sized.count) unsaturated stars \(Int(level)) sigma above the sky (of \(cands.count) peaks); give the PSF with --psf SPEC")
        }
        // Stellar locus: the most common size (the size with the most candidates within 15% of
        // it, the smaller on ties): stars share one size, galaxies are larger and spread out.
        let sorted = sized.map(\.size).sorted()
        var locus = sorted[0], most = 0
        for s in sorted {
            let n = sorted.filter { abs($0 - s) <= 0.15 * s }.count
            if n > most { most = n; locus = s }
        }
        let compact = sized.filter { $0.size <= locus * 1.2 && $0.size >= locus * 0.8 }
        // Stamp: about 4.5 FWHM on each side (FWHM ~ 2.355 x the moment radius / sqrt 2).
        let fwhm0 = max(1.0, 2.355 * locus / 2.0.squareRoot())
        let side = stampSize.map { $0 | 1 } ?? min(65, max(15, 2 * Int((4.5 * fwhm0).rounded(.up)) + 1))
        let half = side / 2
        // Isolation: no other peak above half of this one within 3 FWHM. Fainter neighbours (and
        // the noise bumps on a bright star's own wings, which are local maxima too) are dealt with
        // by the median stack and the residual rejection below.
        let core = Int((3 * fwhm0).rounded(.up))
        let isolated = compact.filter { s in
            !cands.contains { c in
                guard c.y != s.y || c.x != s.x else { return false }
                let d = max(abs(c.y - s.y), abs(c.x - s.x)), rel = (c.peak - sky.median) / (s.peak - sky.median)
                return d <= core && rel > 0.5
            } && s.y - half - 4 >= 0 && s.y + half + 4 < h && s.x - half - 4 >= 0 && s.x + half + 4 < w
        }
        if ProcessInfo.processInfo.environment["ASTROCNN_PSF_DEBUG"] != nil {
            print("psf debug: sigma \(sigma) sky \(sky.median) candidates \(cands.count) sized \(sized.count) locus \(locus) compact \(compact.count) isolated \(isolated.count) side \(side) sizes \(sorted.prefix(40).map { String(format: "%.2f", $0) })")
        }
        let chosen = isolated.sorted { $0.peak > $1.peak }.prefix(maxStars)
        guard chosen.count >= 3 else {
            throw Failure(description: "found only \(chosen.count) isolated, unsaturated point sources (of \(cands.count) peaks); give the PSF with --psf SPEC")
        }

        // Stamps, recentred by Lanczos-3 on the centroid, unit flux.
        var stamps: [[Double]] = []
        for s in chosen {
            // Local background: median of a ring just outside the stamp.
            var ring: [Double] = []
            for dy in -(half + 3)...(half + 3) { for dx in -(half + 3)...(half + 3) where max(abs(dy), abs(dx)) > half + 1 {
                if let v = ok((s.y + dy) * w + s.x + dx) { ring.append(v) }
            } }
            guard ring.count > 8 else { continue }
            ring.sort()
            let bg = ring[ring.count / 2]
            guard let m = moments(s.y, s.x, radius: max(2, Int((1.5 * fwhm0).rounded()))) else { continue }
            var stamp = [Double](repeating: 0, count: side * side)
            var bad = false
            for j in 0..<side { for i in 0..<side {
                let py = Double(s.y) + m.cy + Double(j - half), px = Double(s.x) + m.cx + Double(i - half)
                guard let v = lanczos3(py, px, width: w, height: h, value: { ok($0) }) else { bad = true; break }
                stamp[j * side + i] = v - bg
            } }
            if bad { continue }
            let flux = stamp.reduce(0, +)
            guard flux > 0 else { continue }
            stamps.append(stamp.map { $0 / flux })
        }
        guard stamps.count >= 3 else { throw Failure(description: "only \(stamps.count) stars gave clean stamps; give the PSF with --psf SPEC") }
        func medianStack(_ stamps: [[Double]]) -> [Double] {
            var column = [Double](repeating: 0, count: stamps.count)
            return (0..<(side * side)).map { p in
                for (k, s) in stamps.enumerated() { column[k] = s[p] }
                column.sort()
                let n = column.count
                return n % 2 == 1 ? column[n / 2] : 0.5 * (column[n / 2 - 1] + column[n / 2])
            }
        }
        // Residual rejection: stamps that differ from the first stack within 2 FWHM of the centre
        // by more than twice the typical difference (a neighbour, a blend, a cosmic ray on the
        // star) are dropped, and the rest stacked again.
        let first = medianStack(stamps)
        let rc = Double(min(half, Int((2 * fwhm0).rounded(.up))))
        let residuals = stamps.map { st -> Double in
            var e = 0.0
            for j in 0..<side { for i in 0..<side where Double((j - half) * (j - half) + (i - half) * (i - half)) <= rc * rc {
                let d = st[j * side + i] - first[j * side + i]; e += d * d
            } }
            return e
        }
        let typical = residuals.sorted()[residuals.count / 2]
        let kept = zip(stamps, residuals).filter { $0.1 <= 4 * typical }.map(\.0)
        if kept.count >= 3 { stamps = kept }
        var kernel = Image2D(height: side, width: side, pixels: medianStack(stamps).map { max(0, $0) })
        let total = kernel.pixels.reduce(0, +)
        guard total > 0 else { throw Failure(description: "the stacked stars have no flux; give the PSF with --psf SPEC") }
        kernel = kernel.map { $0 / total }
        kernel = cleanWings(kernel)
        let fit = fitMoffat(kernel)
        // A stack of galaxies or blends is not a PSF: its profile is as wide as the stamp.
        guard fit.fwhm <= Double(side) / 3, fit.error < 0.5 else {
            throw Failure(description: String(format: "the %d sources stacked are not point-like (fitted FWHM %.1f px in a %d-pixel stamp, misfit %.0f%%): the image has too few clean stars; give the PSF with --psf SPEC", stamps.count, fit.fwhm, side, 100 * fit.error))
        }
        return MeasuredPSF(kernel: kernel, stars: stamps.count, candidates: cands.count, threshold: level, fwhm: fit.fwhm, beta: fit.beta,
                           fitError: fit.error, ellipticity: ellipticity(kernel, radius: 2 * fit.fwhm))
    }

    /// The stack with its background noise removed: pixels under 3 sigma of the noise of its
    /// outer 2-pixel frame (the stack is clipped at 0: sigma from the frame's mean square as
    /// half-normal noise) are set to 0, and so is
    /// everything not 8-connected to the central pixel through pixels above that level; then
    /// normalised to sum 1 again. A stack of a few stars keeps noise in its wings, and that noise
    /// is a floor under |H|^2 at high frequencies which a deconvolution then inverts (the
    /// runtime's Wiener step, with lambda by GCV, lost 17 dB on a synthetic sky with an
    /// uncleaned 14-star stack, against the same stack cleaned). Wings under the noise are
    /// lost, as they are not measured.
    public static func cleanWings(_ k: Image2D) -> Image2D {
        let h = k.height, w = k.width
        var frame: [Double] = []
        for y in 0..<h { for x in 0..<w where y < 2 || x < 2 || y >= h - 2 || x >= w - 2 { frame.append(k[y, x]) } }
        guard frame.count >= 8 else { return k }
        // The stack is clipped at 0, so its frame holds half-normal noise: E[x^2] = sigma^2 / 2.
        let sigma = (2 * frame.reduce(0) { $0 + $1 * $1 } / Double(frame.count)).squareRoot()
        let t = 3 * sigma
        guard t > 0 else { return k }
        var keep = [Bool](repeating: false, count: h * w)
        let c = (h / 2) * w + w / 2
        guard k.pixels[c] > t else { return k }
        var stack = [c]
        keep[c] = true
        while let i = stack.popLast() {
            let y = i / w, x = i % w
            for dy in -1...1 { for dx in -1...1 where dy != 0 || dx != 0 {
                let yy = y + dy, xx = x + dx
                guard yy >= 0, yy < h, xx >= 0, xx < w else { continue }
                let j = yy * w + xx
                if !keep[j] && k.pixels[j] > t { keep[j] = true; stack.append(j) }
            } }
        }
        var out = k
        var sum = 0.0
        for i in 0..<(h * w) { out.pixels[i] = keep[i] ? k.pixels[i] : 0; sum += out.pixels[i] }
        return sum > 0 ? out.map { $0 / sum } : k
    }

    /// Lanczos-3 interpolation at (y, x); nil if a needed pixel is masked or outside.
    static func lanczos3(_ y: Double, _ x: Double, width w: Int, height h: Int, value: (Int) -> Double?) -> Double? {
        let y0 = Int(y.rounded(.down)), x0 = Int(x.rounded(.down))
        let fy = y - Double(y0), fx = x - Double(x0)
        func kernel(_ t: Double) -> Double {
            if abs(t) < 1e-12 { return 1 }
            if abs(t) >= 3 { return 0 }
            let a = Double.pi * t
            return 3 * sin(a) * sin(a / 3) / (a * a)
        }
        if fy < 1e-9 && fx < 1e-9 { return y0 >= 0 && y0 < h && x0 >= 0 && x0 < w ? value(y0 * w + x0) : nil }
        var s = 0.0, ws = 0.0
        for j in -2...3 {
            let wy = kernel(Double(j) - fy)
            for i in -2...3 {
                let yy = y0 + j, xx = x0 + i
                guard yy >= 0, yy < h, xx >= 0, xx < w, let v = value(yy * w + xx) else { return nil }
                let wt = wy * kernel(Double(i) - fx)
                s += wt * v; ws += wt
            }
        }
        return ws != 0 ? s / ws : nil
    }

    /// The Moffat profile closest (least squares, amplitude free) to a centred kernel: FWHM on a
    /// fine logarithmic grid from 0.5 to 40 pixels, beta from 1.2 to 10, then refined.
    public static func fitMoffat(_ k: Image2D) -> (fwhm: Double, beta: Double, error: Double) {
        let cy = Double(k.height - 1) / 2, cx = Double(k.width - 1) / 2
        var r2 = [Double](repeating: 0, count: k.count)
        for y in 0..<k.height { for x in 0..<k.width { r2[y * k.width + x] = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx) } }
        let norm = k.pixels.reduce(0) { $0 + $1 * $1 }
        func misfit(_ f: Double, _ b: Double) -> Double {
            let a2 = pow(f / (2 * (pow(2, 1 / b) - 1).squareRoot()), 2)
            var mm = 0.0, km = 0.0
            var model = [Double](repeating: 0, count: k.count)
            for i in 0..<k.count { let v = pow(1 + r2[i] / a2, -b); model[i] = v; mm += v * v; km += v * k.pixels[i] }
            let amp = km / mm
            var e = 0.0
            for i in 0..<k.count { let d = k.pixels[i] - amp * model[i]; e += d * d }
            return e
        }
        var best = (f: 2.0, b: 3.0, e: Double.infinity)
        var f = 0.5
        while f <= 40 {
            for b in stride(from: 1.2, through: 10, by: 0.2) {
                let e = misfit(f, b)
                if e < best.e { best = (f, b, e) }
            }
            f *= 1.04
        }
        // Refine around the best point.
        var step = (f: best.f * 0.02, b: 0.05)
        for _ in 0..<40 {
            var moved = false
            for (df, db) in [(step.f, 0.0), (-step.f, 0), (0, step.b), (0, -step.b)] {
                let nf = best.f + df, nb = best.b + db
                guard nf > 0.3, nb > 1.01 else { continue }
                let e = misfit(nf, nb)
                if e < best.e { best = (nf, nb, e); moved = true }
            }
            if !moved { step = (step.f / 2, step.b / 2) }
        }
        return (best.f, best.b, norm > 0 ? (best.e / norm).squareRoot() : 0)
    }

    /// 1 - b/a of the kernel's second moments within `radius` of the centre (the core: the
    /// wings' noise would dominate the moments).
    public static func ellipticity(_ k: Image2D, radius: Double = .infinity) -> Double {
        let cy = Double(k.height - 1) / 2, cx = Double(k.width - 1) / 2
        var yy = 0.0, xx = 0.0, xy = 0.0, s = 0.0
        for y in 0..<k.height { for x in 0..<k.width {
            let v = k[y, x], dy = Double(y) - cy, dx = Double(x) - cx
            if dy * dy + dx * dx > radius * radius { continue }
            yy += v * dy * dy; xx += v * dx * dx; xy += v * dx * dy; s += v
        } }
        guard s > 0 else { return 0 }
        yy /= s; xx /= s; xy /= s
        let t = (xx + yy) / 2, d = (((xx - yy) / 2) * ((xx - yy) / 2) + xy * xy).squareRoot()
        let a = (t + d).squareRoot(), b = max(0, t - d).squareRoot()
        return a > 0 ? 1 - b / a : 0
    }
}
