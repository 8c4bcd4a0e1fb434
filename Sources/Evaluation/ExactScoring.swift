import Foundation
import Imaging

/// Detection scores against an exact source list (a synthetic sky's), instead of against the
/// detections in a noisy long exposure: a faint real source that a good denoiser recovers is a
/// true positive here, not a spurious detection.
public enum ExactScoring {
    /// The truth catalogue of `sources` scaled by `scale` (image units per sky unit), inside a
    /// width x height image (centres in [0, size)): isolated stars with their flux in an aperture of
    /// `apertureRadius` (the profile's exact enclosed fraction), galaxies with flux NaN (matched
    /// and counted in TPR and precision, left out of the flux error: an aperture does not
    /// measure a galaxy's total flux).
    /// With `noiseless` (the rendered sky without noise, sky level 0, in image units), a star's
    /// flux is the aperture sum of that image at its position instead: the light of neighbours
    /// and galaxies in the aperture, which any measurement includes, is part of the truth.
    public static func catalogue(_ sources: [SyntheticSource], scale: Double, apertureRadius: Double, width: Int, height: Int,
                                 noiseless: Image2D? = nil) -> [CatalogEntry] {
        let inside = sources.filter { $0.x >= 0 && $0.y >= 0 && $0.x < Double(width) && $0.y < Double(height) }
        let galaxies = sources.filter { $0.kind == .galaxy }
        func d2(_ a: SyntheticSource, _ b: SyntheticSource) -> Double { (a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y) }
        return inside.enumerated().map { (i, s) in
            var f = Double.nan
            // Stars on a galaxy (within 2 r_e) or with another star within two aperture radii
            // have no clean aperture flux: matched and counted, left out of the flux error.
            let onGalaxy = galaxies.contains { d2($0, s) < 4 * $0.effectiveRadius * $0.effectiveRadius }
            let crowded = inside.enumerated().contains { (j, o) in j != i && o.kind == .star && d2(o, s) < 4 * apertureRadius * apertureRadius }
            if s.kind == .star && (noiseless != nil || (!onGalaxy && !crowded)) {
                f = scale * s.apertureFlux(radius: apertureRadius)
                if let img = noiseless, let a = try? SourceDetector.sumCircle(img, x: s.x, y: s.y, radius: apertureRadius) { f = a.flux }
            }
            return CatalogEntry(x: s.x, y: s.y, flux: f, fluxErr: 0)
        }
    }

    /// Scores `detected` against the exact list. Unmatched detections within `galaxyReach`
    /// effective radii of a galaxy's centre are left out (pieces of a deblended galaxy are
    /// neither right nor wrong), every other unmatched detection is spurious.
    public static func score(sources: [SyntheticSource], scale: Double, detected: [CatalogEntry], radius: Double,
                             apertureRadius: Double, width: Int, height: Int, galaxyReach: Double = 2, noiseless: Image2D? = nil) -> DetectionScore {
        let inside = sources.filter { $0.x >= 0 && $0.y >= 0 && $0.x < Double(width) && $0.y < Double(height) }
        let truth = catalogue(inside, scale: scale, apertureRadius: apertureRadius, width: width, height: height, noiseless: noiseless)
        let pairs = CrossMatch.match(reference: truth, candidates: detected, radius: radius)
        let hit = Set(pairs.map(\.candidate))
        let galaxies = inside.filter { $0.kind == .galaxy }
        let kept = detected.enumerated().filter { (j, c) in
            hit.contains(j) || !galaxies.contains { g in
                let r = galaxyReach * g.effectiveRadius
                return (c.x - g.x) * (c.x - g.x) + (c.y - g.y) * (c.y - g.y) <= r * r
            }
        }.map(\.element)
        return DetectionScore.score(truth: truth, detected: kept, radius: radius)
    }
}
