import Foundation
import Imaging
import ModelFormat
import Runtime

/// An artificial point source added to an image: position (0-based pixels, pixel centres at
/// integers), total flux, and the flux the injected stamp itself puts in the photometry aperture
/// (the truth a forced aperture measurement should give: the PSF's enclosed fraction included).
public struct InjectedSource: Sendable, Equatable {
    public var x: Double
    public var y: Double
    public var flux: Double
    public var apertureFlux: Double
    /// Magnitude relative to the 5-sigma limit: -2.5 log10(flux / limitFlux) (0 at the limit,
    /// positive fainter).
    public var magnitude: Double

    public init(x: Double, y: Double, flux: Double, apertureFlux: Double, magnitude: Double) {
        (self.x, self.y, self.flux, self.apertureFlux, self.magnitude) = (x, y, flux, apertureFlux, magnitude)
    }
}

/// Where and how bright the artificial sources are, and the PSF they are drawn with.
public struct InjectionPlan: Sendable {
    public struct Settings: Sendable, Equatable {
        public var count = 200
        public var seed: UInt64 = 1
        /// Fluxes log-uniform between these multiples of the 5-sigma point-source limit flux.
        public var minFactor = 0.3
        public var maxFactor = 30.0
        /// Real sources are masked out to this many FWHM beyond their extent (3 a).
        public var exclusionFWHM = 3.0
        /// Injected sources are at least this many FWHM apart.
        public var separationFWHM = 4.0
        /// Pixels kept free at each border (nil: the PSF stamp's half size, at least 3 FWHM).
        public var border: Int?
        /// Photometry aperture radius (pixels).
        public var apertureRadius = 5.0
        public init() {}
    }

    public var sources: [InjectedSource]
    /// The PSF stamp (odd size, centred, sum 1), its FWHM, and where it came from.
    public var psf: Image2D
    public var fwhm: Double
    public var psfNote: String
    /// The sky noise per pixel, the PSF's effective area 1 / sum(p^2) and the 5-sigma limit
    /// flux 5 sigma sqrt(area) (matched-filter detection of an isolated point source).
    public var sigma: Double
    public var effectiveArea: Double
    public var limitFlux: Double
    /// 2.5 log10(limitFlux): magnitudes are zeropoint - 2.5 log10(flux), 0 at the 5-sigma limit.
    public var zeropoint: Double
    /// Pixels where injected sources may lie and where spurious detections are counted:
    /// valid, away from the borders and from real sources.
    public var clean: [Bool]
    public var width: Int
    public var height: Int

    public init(sources: [InjectedSource], psf: Image2D, fwhm: Double, psfNote: String, sigma: Double, effectiveArea: Double,
                limitFlux: Double, zeropoint: Double, clean: [Bool], width: Int, height: Int) {
        (self.sources, self.psf, self.fwhm, self.psfNote, self.sigma) = (sources, psf, fwhm, psfNote, sigma)
        (self.effectiveArea, self.limitFlux, self.zeropoint, self.clean, self.width, self.height) = (effectiveArea, limitFlux, zeropoint, clean, width, height)
    }

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    /// A normalised circular Gaussian stamp of the given FWHM (odd side about 4 FWHM, at least 9).
    public static func gaussianPSF(fwhm: Double) -> Image2D {
        let s = fwhm / 2.3548
        let half = max(4, Int((2 * fwhm).rounded(.up)))
        var k = Image2D(height: 2 * half + 1, width: 2 * half + 1)
        for y in 0..<k.height { for x in 0..<k.width {
            let (dy, dx) = (Double(y - half), Double(x - half))
            k[y, x] = exp(-0.5 * (dx * dx + dy * dy) / (s * s))
        } }
        let t = k.pixels.reduce(0, +)
        return k.map { $0 / t }
    }

    /// The image's PSF measured from its own stars (`PSFEstimation.measure`), else a Gaussian of
    /// `fallbackFWHM` (the detection catalogue's FWHM).
    public static func psf(of image: Image2D, fallbackFWHM: Double) throws -> (kernel: Image2D, fwhm: Double, note: String) {
        do {
            let m = try PSFEstimation.measure(pixels: image.pixels.map { Float($0) }, invalid: image.pixels.map { !$0.isFinite },
                                              width: image.width, height: image.height)
            return (m.kernel, m.fwhm, String(format: "measured from %d stars: %dx%d, Moffat FWHM %.2f px, beta %.2f",
                                              m.stars, m.kernel.width, m.kernel.height, m.fwhm, m.beta))
        } catch {
            guard fallbackFWHM.isFinite, fallbackFWHM > 0 else {
                throw Failure(description: "no PSF for the injection: \(error) and no FWHM measured from the detections")
            }
            return (gaussianPSF(fwhm: fallbackFWHM), fallbackFWHM,
                    String(format: "Gaussian of the catalogue's FWHM %.2f px (measurement failed: %@)", fallbackFWHM, "\(error)"))
        }
    }

    /// `v` shifted by `f` samples by the Fourier shift theorem (band-limited interpolation:
    /// sum and centroid move exactly), `v` zero-padded by `pad` at each end first (odd length, so
    /// there is no Nyquist term).
    static func fourierShift(_ v: [Double], _ f: Double, pad: Int) -> [Double] {
        let x = [Double](repeating: 0, count: pad) + v + [Double](repeating: 0, count: pad)
        let n = x.count
        precondition(n % 2 == 1)
        let h = n / 2
        var out = [Double](repeating: 0, count: n)
        for k in -h...h {
            var re = 0.0, im = 0.0
            for j in 0..<n where x[j] != 0 {
                let a = -2 * Double.pi * Double(k * j) / Double(n)
                re += x[j] * cos(a); im += x[j] * sin(a)
            }
            // Multiply by exp(-2 pi i k f / n), then the inverse transform's row.
            let p = -2 * Double.pi * Double(k) * f / Double(n)
            let (sr, si) = (re * cos(p) - im * sin(p), re * sin(p) + im * cos(p))
            for j in 0..<n {
                let a = 2 * Double.pi * Double(k * j) / Double(n)
                out[j] += (sr * cos(a) - si * sin(a)) / Double(n)
            }
        }
        return out
    }

    /// The PSF shifted by (fx, fy) pixels (|f| <= 0.5) by separable Fourier interpolation, on a
    /// stamp 6 pixels wider, renormalised to sum 1.
    public static func shifted(_ k: Image2D, fx: Double, fy: Double) -> Image2D {
        let pad = 3
        let n = k.width + 2 * pad
        var rows = Image2D(height: k.height, width: n)
        for y in 0..<k.height {
            let r = fourierShift((0..<k.width).map { k[y, $0] }, fx, pad: pad)
            for x in 0..<n { rows[y, x] = r[x] }
        }
        var out = Image2D(height: n, width: n)
        for x in 0..<n {
            let c = fourierShift((0..<k.height).map { rows[$0, x] }, fy, pad: pad)
            for y in 0..<n { out[y, x] = c[y] }
        }
        let t = out.pixels.reduce(0, +)
        return out.map { $0 / t }
    }

    /// Chooses `settings.count` positions in the clean area (valid pixels away from the borders
    /// and from `real` sources, each masked to 3 a + exclusionFWHM FWHM) at least
    /// separationFWHM FWHM apart, with fluxes log-uniform across the detection limit, and
    /// computes each one's true aperture flux. Deterministic for a seed.
    public static func make(width w: Int, height h: Int, valid: [Bool], psf: Image2D, fwhm: Double, psfNote: String = "",
                            sigma: Double, real: [DetectedSource], settings: Settings) throws -> InjectionPlan {
        guard psf.width % 2 == 1, psf.height == psf.width else { throw Failure(description: "the PSF stamp must be square with an odd side") }
        guard sigma > 0, sigma.isFinite else { throw Failure(description: "the sky noise cannot be measured") }
        guard settings.count > 0, settings.minFactor > 0, settings.maxFactor > settings.minFactor else {
            throw Failure(description: "give a positive count and a flux range min < max")
        }
        let total = psf.pixels.reduce(0, +)
        let p = psf.map { $0 / total }
        let area = 1 / p.pixels.reduce(0) { $0 + $1 * $1 }
        let limit = 5 * sigma * area.squareRoot()
        let border = settings.border ?? max(psf.width / 2 + 3, Int((3 * fwhm).rounded(.up)))
        var clean = valid
        for y in 0..<h { for x in 0..<w where y < border || x < border || y >= h - border || x >= w - border { clean[y * w + x] = false } }
        // Invalid pixels spoil stamps that touch them: dilate the invalid area by the stamp's half size.
        // (A separable box dilation: rows, then columns, by running counts.)
        let hs = psf.width / 2 + 3
        var rowHit = [Bool](repeating: false, count: w * h)
        for y in 0..<h {
            var prefix = [Int](repeating: 0, count: w + 1)
            for x in 0..<w { prefix[x + 1] = prefix[x] + (valid[y * w + x] ? 0 : 1) }
            for x in 0..<w where prefix[min(w, x + hs + 1)] - prefix[max(0, x - hs)] > 0 { rowHit[y * w + x] = true }
        }
        for x in 0..<w {
            var prefix = [Int](repeating: 0, count: h + 1)
            for y in 0..<h { prefix[y + 1] = prefix[y] + (rowHit[y * w + x] ? 1 : 0) }
            for y in 0..<h where prefix[min(h, y + hs + 1)] - prefix[max(0, y - hs)] > 0 { clean[y * w + x] = false }
        }
        for s in real where s.x.isFinite && s.y.isFinite {
            let r = 3 * (s.a.isFinite ? s.a : 0) + settings.exclusionFWHM * fwhm
            let ri = Int(r.rounded(.up))
            let (cx, cy) = (Int(s.x.rounded()), Int(s.y.rounded()))
            for yy in max(0, cy - ri)...max(0, min(h - 1, cy + ri)) { for xx in max(0, cx - ri)...max(0, min(w - 1, cx + ri)) {
                let (dx, dy) = (Double(xx) - s.x, Double(yy) - s.y)
                if dx * dx + dy * dy <= r * r { clean[yy * w + xx] = false }
            } }
        }
        let free = (0..<(w * h)).filter { clean[$0] }
        guard !free.isEmpty else { throw Failure(description: "no room for artificial sources: every pixel is near a real source, a border or an invalid pixel") }
        var rng = SplitMix64(seed: settings.seed ^ 0x1A7E_C7ED_50C1)
        func u() -> Double { Double(rng.next() >> 11) * 0x1p-53 }
        let minSep = settings.separationFWHM * fwhm
        var placed: [(Double, Double)] = []
        var tries = 0
        while placed.count < settings.count && tries < 200 * settings.count {
            tries += 1
            let i = free[Int(rng.next() % UInt64(free.count))]
            let x = Double(i % w) + u() - 0.5, y = Double(i / w) + u() - 0.5
            let (xi, yi) = (Int(x.rounded()), Int(y.rounded()))
            guard xi >= 0, yi >= 0, xi < w, yi < h, clean[yi * w + xi] else { continue }
            if placed.contains(where: { ($0.0 - x) * ($0.0 - x) + ($0.1 - y) * ($0.1 - y) < minSep * minSep }) { continue }
            placed.append((x, y))
        }
        guard !placed.isEmpty else { throw Failure(description: "no room for artificial sources") }
        let lo = log(settings.minFactor * limit), hi = log(settings.maxFactor * limit)
        var sources: [InjectedSource] = []
        for (x, y) in placed {
            let f = exp(lo + (hi - lo) * u())
            sources.append(InjectedSource(x: x, y: y, flux: f, apertureFlux: .nan, magnitude: -2.5 * log10(f / limit)))
        }
        var plan = InjectionPlan(sources: sources, psf: p, fwhm: fwhm, psfNote: psfNote, sigma: sigma, effectiveArea: area, limitFlux: limit,
                                 zeropoint: 2.5 * log10(limit), clean: clean, width: w, height: h)
        // The true aperture fluxes: forced photometry of the noiseless injected image.
        let stamps = plan.stamps()
        for k in plan.sources.indices {
            plan.sources[k].apertureFlux = try SourceDetector.sumCircle(stamps, x: plan.sources[k].x, y: plan.sources[k].y,
                                                                         radius: settings.apertureRadius).flux
        }
        return plan
    }

    /// The injected sources alone (zero elsewhere), each the PSF shifted to its sub-pixel
    /// position and scaled to its flux.
    public func stamps() -> Image2D {
        var out = Image2D(height: height, width: width)
        for s in sources {
            let (xi, yi) = (Int(s.x.rounded()), Int(s.y.rounded()))
            let k = InjectionPlan.shifted(psf, fx: s.x - Double(xi), fy: s.y - Double(yi))
            let c = k.width / 2
            for dy in 0..<k.height { for dx in 0..<k.width {
                let (y, x) = (yi + dy - c, xi + dx - c)
                guard y >= 0, x >= 0, y < height, x < width else { continue }
                out[y, x] += s.flux * k[dy, dx]
            } }
        }
        return out
    }

    /// `image` with the sources added (NaN pixels stay NaN).
    public func inject(into image: Image2D) -> Image2D {
        precondition(image.width == width && image.height == height)
        let s = stamps()
        return Image2D(height: height, width: width, pixels: zip(image.pixels, s.pixels).map { $0 + $1 })
    }
}

/// How a method's output recovers the injected sources at one detection threshold.
public struct ThresholdRecovery: Sendable {
    public var threshold: Double
    /// Injected sources matched, per magnitude bin and overall.
    public var recovered: [Int]
    public var recoveredTotal: Int
    /// Injected sources per magnitude bin.
    public var injected: [Int]
    /// Detections in the clean area that match no injected source.
    public var spurious: Int
    /// recovered / (recovered + spurious) (NaN when nothing is detected there).
    public var purity: Double
    public var completeness: [Double]
    /// Faintest magnitude where the completeness is still >= 50% / 90% (linear interpolation
    /// between bin centres, from the bright end); NaN when the brightest bin is below the level;
    /// the faintest bin's centre when it never falls below (`depth50Bound`: a lower bound).
    public var depth50: Double
    public var depth90: Double
    public var depth50Bound: Bool
    public var depth90Bound: Bool
    /// Per injected source: matched at this threshold.
    public var matched: [Bool]
}

/// One method's injection-recovery result.
public struct InjectionScore: Sendable {
    public var image: String
    public var method: String
    public var thresholds: [ThresholdRecovery]
    /// Index of the threshold chosen: the deepest 50% completeness among those with purity >= the
    /// required purity (nil: none reaches it).
    public var chosen: Int?
    /// Magnitude bin edges (bright to faint), shared by all methods of a plan.
    public var binEdges: [Double]
    /// Relative flux error (measured - true) / true of forced aperture photometry at the true
    /// positions on the method's output (background subtracted), per injected source.
    public var relativeFluxErrors: [Double]
    /// Over the sources above the 5-sigma limit recovered at the chosen threshold (all above the
    /// limit when no threshold is chosen): median |error|, median error (bias), mean error, count.
    public var fluxMedianAbsError: Double
    public var fluxMedianBias: Double
    public var fluxMeanBias: Double
    public var fluxCount: Int
    /// Per magnitude bin: median |error| and median error of the recovered sources (chosen threshold).
    public var binMedianAbsError: [Double]
    public var binMedianBias: [Double]

    public var chosenRecovery: ThresholdRecovery? { chosen.map { thresholds[$0] } }
}

public enum InjectionRecovery {
    /// Magnitude bin edges spanning the plan's flux range, `bins` equal steps, bright to faint.
    public static func binEdges(_ plan: InjectionPlan, settings: InjectionPlan.Settings, bins: Int) -> [Double] {
        let bright = plan.zeropoint - 2.5 * log10(settings.maxFactor * plan.limitFlux)
        let faint = plan.zeropoint - 2.5 * log10(settings.minFactor * plan.limitFlux)
        return (0...bins).map { bright + (faint - bright) * Double($0) / Double(bins) }
    }

    static func median(_ v: [Double]) -> Double {
        var a = v.filter { $0.isFinite }
        return a.isEmpty ? .nan : SkyStatistics.median(&a)
    }

    /// The faintest magnitude where `completeness` (per bin, bright to faint) is still >= level.
    static func depth(_ completeness: [Double], centres: [Double], level: Double) -> (Double, Bool) {
        let pts = zip(centres, completeness).filter { $0.1.isFinite }
        guard let first = pts.first else { return (.nan, false) }
        if first.1 < level { return (.nan, false) }
        for i in 1..<max(1, pts.count) where pts[i].1 < level {
            let (m0, c0) = pts[i - 1], (m1, c1) = pts[i]
            return (m0 + (m1 - m0) * (c0 - level) / (c0 - c1), false)
        }
        return (pts.last!.0, true)
    }

    /// Detects sources on `image` (a method's output, the same size as the plan) with the
    /// project's extractor at every threshold (its own background and RMS maps, `detection`'s
    /// other settings), matches the detections to the injected sources within `radius`, counts
    /// the unmatched ones in the clean area as spurious, and measures the injected sources'
    /// fluxes by forced aperture photometry.
    public static func score(image: Image2D, imageName: String, method: String, plan: InjectionPlan, settings: InjectionPlan.Settings,
                             detection: DetectionOptions, thresholds: [Double], radius: Double, bins: Int = 10,
                             requiredPurity: Double = 0.9, threads: Int = 1) throws -> InjectionScore {
        guard image.width == plan.width, image.height == plan.height else {
            throw InjectionPlan.Failure(description: "\(method): output is \(image.width)x\(image.height), the plan \(plan.width)x\(plan.height)")
        }
        let invalid = image.pixels.map { !$0.isFinite }
        let bkg = try SourceDetector.background(image, mask: invalid, options: detection, threads: threads)
        let edges = binEdges(plan, settings: settings, bins: bins)
        let centres = (0..<bins).map { 0.5 * (edges[$0] + edges[$0 + 1]) }
        func bin(_ m: Double) -> Int? {
            guard m >= edges[0], m <= edges[bins] else { return nil }
            return min(bins - 1, Int((m - edges[0]) / (edges[bins] - edges[0]) * Double(bins)))
        }
        var perBin = [Int](repeating: 0, count: bins)
        for s in plan.sources { if let b = bin(s.magnitude) { perBin[b] += 1 } }
        let truth = plan.sources.map { CatalogEntry(x: $0.x, y: $0.y, flux: $0.flux, fluxErr: 0) }
        var rows: [ThresholdRecovery] = []
        for t in thresholds {
            var o = detection
            o.threshold = t
            let objs = try SourceDetector.extract(image, mask: invalid, background: bkg, options: o)
            let cands = objs.map { CatalogEntry(x: $0.x, y: $0.y, flux: 0, fluxErr: 0) }
            let pairs = CrossMatch.match(reference: truth, candidates: cands, radius: radius)
            var matched = [Bool](repeating: false, count: truth.count)
            var hitC = Set<Int>()
            for p in pairs { matched[p.reference] = true; hitC.insert(p.candidate) }
            var spurious = 0
            for (j, c) in cands.enumerated() where !hitC.contains(j) {
                let (xi, yi) = (Int(c.x.rounded()), Int(c.y.rounded()))
                if xi >= 0, yi >= 0, xi < plan.width, yi < plan.height, plan.clean[yi * plan.width + xi] { spurious += 1 }
            }
            var rec = [Int](repeating: 0, count: bins)
            for (k, s) in plan.sources.enumerated() where matched[k] { if let b = bin(s.magnitude) { rec[b] += 1 } }
            let comp = (0..<bins).map { perBin[$0] > 0 ? Double(rec[$0]) / Double(perBin[$0]) : .nan }
            let total = pairs.count
            let (d50, b50) = depth(comp, centres: centres, level: 0.5)
            let (d90, b90) = depth(comp, centres: centres, level: 0.9)
            rows.append(ThresholdRecovery(threshold: t, recovered: rec, recoveredTotal: total, injected: perBin, spurious: spurious,
                                          purity: total + spurious > 0 ? Double(total) / Double(total + spurious) : .nan,
                                          completeness: comp, depth50: d50, depth90: d90, depth50Bound: b50, depth90Bound: b90,
                                          matched: matched))
        }
        // The threshold: deepest 50% completeness at the required purity (then deepest 90%, then the higher threshold).
        var chosen: Int?
        for (i, r) in rows.enumerated() where r.purity >= requiredPurity && r.depth50.isFinite {
            guard let c = chosen else { chosen = i; continue }
            let a = rows[c]
            let key = { (x: ThresholdRecovery) in (x.depth50, x.depth90.isFinite ? x.depth90 : -.infinity, x.threshold) }
            if key(r) > key(a) { chosen = i }
        }
        // Forced photometry at the true positions, on a background estimated with the real
        // sources (outside the clean area) and the injected ones (3 FWHM discs) masked, so that
        // the error measured is the method's, not the background mesh's bias from source wings.
        var photMask = (0..<image.count).map { invalid[$0] || !plan.clean[$0] }
        let r3 = 3 * plan.fwhm, ri = Int(r3.rounded(.up))
        for src in plan.sources {
            let (cx, cy) = (Int(src.x.rounded()), Int(src.y.rounded()))
            for y in max(0, cy - ri)...min(plan.height - 1, cy + ri) { for x in max(0, cx - ri)...min(plan.width - 1, cx + ri) {
                if (Double(x) - src.x) * (Double(x) - src.x) + (Double(y) - src.y) * (Double(y) - src.y) <= r3 * r3 { photMask[y * plan.width + x] = true }
            } }
        }
        let photBkg = (try? SourceDetector.background(image, mask: photMask, options: detection, threads: threads)) ?? bkg
        let sub = Image2D(height: image.height, width: image.width, pixels: (0..<image.count).map { image.pixels[$0] - Double(photBkg.level[$0]) })
        var errors: [Double] = []
        for s in plan.sources {
            let f = try SourceDetector.sumCircle(sub, x: s.x, y: s.y, radius: settings.apertureRadius, mask: invalid)
            errors.append(s.apertureFlux > 0 ? (f.flux - s.apertureFlux) / s.apertureFlux : .nan)
        }
        let use = plan.sources.indices.filter { k in plan.sources[k].flux >= plan.limitFlux && (chosen.map { rows[$0].matched[k] } ?? true) }
        let sel = use.map { errors[$0] }.filter { $0.isFinite }
        var binAbs = [Double](repeating: .nan, count: bins), binBias = [Double](repeating: .nan, count: bins)
        for b in 0..<bins {
            let e = plan.sources.indices.filter { k in bin(plan.sources[k].magnitude) == b && (chosen.map { rows[$0].matched[k] } ?? true) }.map { errors[$0] }
            binAbs[b] = median(e.map { abs($0) }); binBias[b] = median(e)
        }
        return InjectionScore(image: imageName, method: method, thresholds: rows, chosen: chosen, binEdges: edges, relativeFluxErrors: errors,
                              fluxMedianAbsError: median(sel.map { abs($0) }), fluxMedianBias: median(sel),
                              fluxMeanBias: sel.isEmpty ? .nan : sel.reduce(0, +) / Double(sel.count), fluxCount: sel.count,
                              binMedianAbsError: binAbs, binMedianBias: binBias)
    }
}

extension DenoiseEvaluator {
    /// The median FWHM of the brightest detections (see `fwhm`), from a detector's output.
    public static func measuredFWHM(_ img: Image2D, background: Background, sources: [DetectedSource]) -> Double {
        fwhm(img, background: background, sources: sources.map { CatalogEntry(x: $0.x, y: $0.y, flux: $0.flux, fluxErr: $0.fluxErr) })
    }
}
