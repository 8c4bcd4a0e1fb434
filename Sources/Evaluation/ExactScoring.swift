import Foundation
import Imaging

/// Detection scores against an exact source list (a synthetic sky's), instead of against the
/// detections in a noisy long exposure: a faint real source that a good denoiser recovers is a
/// true positive here, not a spurious detection.
public enum ExactScoring {
    /// The truth catalogue of `sources` scaled by `scale` (image units per sky unit), inside a
    /// width x height image (centres in [0, size)): stars with their flux in an aperture of
    /// `apertureRadius` (the profile's exact enclosed fraction), galaxies with flux NaN (matched
    /// and counted in TPR and precision, left out of the flux error: an aperture does not
    /// measure a galaxy's total flux).
    public static func catalogue(_ sources: [SyntheticSource], scale: Double, apertureRadius: Double, width: Int, height: Int) -> [CatalogEntry] {
        sources.filter { $0.x >= 0 && $0.y >= 0 && $0.x < Double(width) && $0.y < Double(height) }.map {
            CatalogEntry(x: $0.x, y: $0.y, flux: $0.kind == .star ? scale * $0.apertureFlux(radius: apertureRadius) : .nan, fluxErr: 0)
        }
    }

    /// Scores `detected` against the exact list. Unmatched detections within `galaxyReach`
    /// effective radii of a galaxy's centre are left out (pieces of a deblended galaxy are
    /// neither right nor wrong), every other unmatched detection is spurious.
    public static func score(sources: [SyntheticSource], scale: Double, detected: [CatalogEntry], radius: Double,
                             apertureRadius: Double, width: Int, height: Int, galaxyReach: Double = 2) -> DetectionScore {
        let inside = sources.filter { $0.x >= 0 && $0.y >= 0 && $0.x < Double(width) && $0.y < Double(height) }
        let truth = catalogue(inside, scale: scale, apertureRadius: apertureRadius, width: width, height: height)
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
