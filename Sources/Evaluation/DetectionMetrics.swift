import Foundation

/// A source of a catalogue as the denoising metrics need it: position (0-based pixels), aperture
/// flux and its error, and the background level under it (SExtractor's BACKGROUND).
public struct CatalogEntry: Equatable, Sendable {
    public var x: Double
    public var y: Double
    public var flux: Double
    public var fluxErr: Double
    public var background: Double

    public init(x: Double, y: Double, flux: Double, fluxErr: Double, background: Double = 0) {
        (self.x, self.y, self.flux, self.fluxErr, self.background) = (x, y, flux, fluxErr, background)
    }

    /// The paper's per-source signal-to-noise ratio (Vojtekova et al. 2020, eq. 26):
    /// F / sqrt(E^2 + B^2).
    public var snr: Double { flux / (fluxErr * fluxErr + background * background).squareRoot() }
}

/// One-to-one cross-matching of two catalogues within a radius, nearest pairs first: all pairs
/// closer than `radius` are sorted by distance (ties by reference index, then candidate index)
/// and taken in that order when neither source is taken yet.
public enum CrossMatch {
    public struct Pair: Equatable, Sendable {
        public var reference: Int
        public var candidate: Int
        public var distance: Double
    }

    public static func match(reference: [CatalogEntry], candidates: [CatalogEntry], radius: Double) -> [Pair] {
        guard radius > 0, !reference.isEmpty, !candidates.isEmpty else { return [] }
        // Grid of cells of side `radius` over the candidates.
        var cells: [Int64: [Int]] = [:]
        func key(_ cx: Int, _ cy: Int) -> Int64 { Int64(cx) << 32 ^ Int64(UInt32(bitPattern: Int32(truncatingIfNeeded: cy))) }
        for (j, c) in candidates.enumerated() where c.x.isFinite && c.y.isFinite {
            cells[key(Int((c.x / radius).rounded(.down)), Int((c.y / radius).rounded(.down))), default: []].append(j)
        }
        var pairs: [Pair] = []
        for (i, r) in reference.enumerated() where r.x.isFinite && r.y.isFinite {
            let cx = Int((r.x / radius).rounded(.down)), cy = Int((r.y / radius).rounded(.down))
            for dy in -1...1 { for dx in -1...1 {
                for j in cells[key(cx + dx, cy + dy)] ?? [] {
                    let d = ((r.x - candidates[j].x) * (r.x - candidates[j].x) + (r.y - candidates[j].y) * (r.y - candidates[j].y)).squareRoot()
                    if d <= radius { pairs.append(Pair(reference: i, candidate: j, distance: d)) }
                }
            } }
        }
        pairs.sort { ($0.distance, $0.reference, $0.candidate) < ($1.distance, $1.reference, $1.candidate) }
        var usedR = Set<Int>(), usedC = Set<Int>(), out: [Pair] = []
        for p in pairs where !usedR.contains(p.reference) && !usedC.contains(p.candidate) {
            usedR.insert(p.reference); usedC.insert(p.candidate); out.append(p)
        }
        return out.sorted { $0.reference < $1.reference }
    }
}

/// The Astro U-net paper's source-detection metrics (Vojtekova et al. 2020, eq. 22-28) of one
/// restored (or noisy) image against the truth.
public struct DetectionScore: Equatable, Sendable {
    /// Sources in the truth, in the image, and matched.
    public var truthCount: Int
    public var detectedCount: Int
    public var truePositives: Int
    /// Recall: TP / (TP + FN), the paper's true-positive rate.
    public var tpr: Double
    /// TP / (TP + FP).
    public var precision: Double
    /// 2 P R / (P + R) (0 when nothing matches).
    public var fMeasure: Double
    /// Mean over the true positives of |F_GT - F_O| / F_GT (eq. 25, as a fraction), and its
    /// standard error (standard deviation / sqrt(TP)).
    public var relativeFluxError: Double
    public var relativeFluxErrorUncertainty: Double
    /// The signed mean of (F_GT - F_O) / F_GT: positive when fluxes come out low.
    public var relativeFluxBias: Double
    /// Mean per-source SNR of the image's own detections (eq. 26).
    public var meanSNR: Double

    /// Scores `detected` against `truth`; `snrGain` is computed by the caller as the ratio of two
    /// images' `meanSNR` (eq. 28).
    public static func score(truth: [CatalogEntry], detected: [CatalogEntry], radius: Double) -> DetectionScore {
        let pairs = CrossMatch.match(reference: truth, candidates: detected, radius: radius)
        let tp = pairs.count
        let recall = truth.isEmpty ? Double.nan : Double(tp) / Double(truth.count)
        let precision = detected.isEmpty ? (truth.isEmpty ? Double.nan : 0) : Double(tp) / Double(detected.count)
        let f = (recall + precision) > 0 ? 2 * precision * recall / (precision + recall) : 0
        var abs: [Double] = [], signed: [Double] = []
        for p in pairs {
            let ft = truth[p.reference].flux
            guard ft > 0, ft.isFinite else { continue }
            let e = (ft - detected[p.candidate].flux) / ft
            signed.append(e); abs.append(Swift.abs(e))
        }
        let n = Double(abs.count)
        let mean = n > 0 ? abs.reduce(0, +) / n : .nan
        let sd = n > 1 ? (abs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)).squareRoot() : .nan
        let snrs = detected.map(\.snr).filter { $0.isFinite }
        return DetectionScore(truthCount: truth.count, detectedCount: detected.count, truePositives: tp, tpr: recall,
                              precision: precision, fMeasure: f, relativeFluxError: mean,
                              relativeFluxErrorUncertainty: n > 1 ? sd / n.squareRoot() : .nan,
                              relativeFluxBias: n > 0 ? signed.reduce(0, +) / n : .nan,
                              meanSNR: snrs.isEmpty ? .nan : snrs.reduce(0, +) / Double(snrs.count))
    }
}
