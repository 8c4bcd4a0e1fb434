import Foundation
import ModelFormat

/// Gaussian deviates from SplitMix64 by the Box-Muller transform (both values used).
public struct GaussianStream {
    var rng: SplitMix64
    var spare: Double?
    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }
    public mutating func next() -> Double {
        if let s = spare { spare = nil; return s }
        var u = 0.0
        repeat { u = Double(rng.next() >> 11) * 0x1p-53 } while u <= 0
        let v = Double(rng.next() >> 11) * 0x1p-53
        let r = (-2 * log(u)).squareRoot()
        spare = r * sin(2 * Double.pi * v)
        return r * cos(2 * Double.pi * v)
    }
}

/// Flamary 2017's degradation: truth = max(image, 0) / max(image); observed = truth blurred by the
/// Airy PSF ('same' FFT convolution) plus white Gaussian noise of standard deviation sigma.
public struct Degradation: Equatable, Sendable {
    public var psfSize: Int
    public var rings: Double
    public var sigma: Double

    public init(psfSize: Int = 64, rings: Double = 5, sigma: Double = 0.01) {
        (self.psfSize, self.rings, self.sigma) = (psfSize, rings, sigma)
    }

    public var psf: Image2D { airyPSF(size: psfSize, rings: rings) }

    public var description: String { "airy(size=\(psfSize), rings=\(rings)) + gaussian(sigma=\(sigma))" }

    /// Clips negatives and divides by the maximum (NaNs become 0).
    public static func normalise(_ image: Image2D) -> Image2D {
        let m = image.pixels.reduce(0.0) { $1.isNaN ? $0 : max($0, $1) }
        let s = m > 0 ? 1 / m : 1
        return image.map { $0.isNaN ? 0 : max($0, 0) * s }
    }

    public func blur(_ truth: Image2D, threads: Int = 1) -> Image2D {
        LinearConvolution(kernel: psf, height: truth.height, width: truth.width, threads: threads).apply(truth)
    }

    /// Adds N(0, sigma^2) noise drawn from `seed`.
    public func addNoise(_ image: Image2D, seed: UInt64) -> Image2D {
        var g = GaussianStream(seed: seed)
        return image.map { $0 + sigma * g.next() }
    }

    /// (truth, observed) for a raw image.
    public func degrade(_ raw: Image2D, seed: UInt64, threads: Int = 1) -> (truth: Image2D, observed: Image2D) {
        let truth = Degradation.normalise(raw)
        return (truth, addNoise(blur(truth, threads: threads), seed: seed))
    }
}
