import Foundation

/// A source a `SyntheticSky` put in its image, known exactly.
public struct SyntheticSource: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case star, galaxy }
    public var kind: Kind
    /// Centre (0-based pixels, pixel centres at integers).
    public var x: Double
    public var y: Double
    /// Total flux of the profile (infinite extent), in the sky's units.
    public var flux: Double
    /// Stars: the Moffat FWHM (px) and beta; galaxies: NaN.
    public var fwhm: Double
    public var beta: Double
    /// Galaxies: the Sersic effective radius along the major axis (px), index and axis ratio; stars: NaN.
    public var effectiveRadius: Double
    public var sersicIndex: Double
    public var axisRatio: Double

    public init(kind: Kind, x: Double, y: Double, flux: Double, fwhm: Double, beta: Double, effectiveRadius: Double, sersicIndex: Double, axisRatio: Double) {
        (self.kind, self.x, self.y, self.flux, self.fwhm, self.beta) = (kind, x, y, flux, fwhm, beta)
        (self.effectiveRadius, self.sersicIndex, self.axisRatio) = (effectiveRadius, sersicIndex, axisRatio)
    }

    /// Stars: the flux inside a circle of `radius` px centred on the star, exactly
    /// F (1 - (1 + r^2 / alpha^2)^(1 - beta)); galaxies: NaN.
    public func apertureFlux(radius r: Double) -> Double {
        guard kind == .star else { return .nan }
        let alpha = fwhm / (2 * (pow(2, 1 / beta) - 1).squareRoot())
        return flux * (1 - pow(1 + r * r / (alpha * alpha), 1 - beta))
    }
}
