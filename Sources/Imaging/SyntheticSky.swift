import Foundation
import ModelFormat

/// A synthetic sky for demos and tests, made in code from a seed:
/// - stars: Moffat profiles (beta 3.5, FWHM around 2.5 px: seeing-limited stars as in the truth
///   images of Flamary 2017) with fluxes from a truncated power-law luminosity function,
///   N(>F) proportional to F^-gamma (gamma = 1: many faint stars, few bright ones), fluxes 0.05
///   to 10 (peaks about 0.005 to 1);
/// - galaxies: Sersic profiles I0 exp(-b_n (r / r_e)^(1/n)) (index 0.5 to 4, effective radius 3
///   to 25 px, central brightness 0.05 to 0.5, axis ratio 0.3 to 1, random position angle), b_n
///   from the Ciotti-Bertin expansion;
/// - sky: a constant level with a gentle linear gradient.
public struct SyntheticSky: Sendable {
    public var size: Int
    public var stars: Int
    public var galaxies: Int
    public var seed: UInt64
    /// Diffuse emission: this many large Gaussian clouds (nebulae, galactic cirrus).
    public var clouds: Int
    public var background: Double
    /// The stars' FWHM is drawn uniformly in this range (pixels).
    public var starFWHM: ClosedRange<Double> = 2.2...2.8
    /// Whether the constant sky has a gentle linear gradient.
    public var gradient = true

    public init(size: Int = 512, stars: Int = 300, galaxies: Int = 12, clouds: Int = 0, background: Double = 0.02, seed: UInt64 = 1) {
        (self.size, self.stars, self.galaxies, self.clouds, self.background, self.seed) = (size, stars, galaxies, clouds, background, seed)
    }

    /// A sky whose content varies with the seed (for training data): 100 to 2,000 stars, 0 to
    /// 30 galaxies, 0 to 12 clouds, background 0 to 0.1.
    public static func varied(size: Int, seed: UInt64) -> SyntheticSky {
        var rng = SplitMix64(seed: seed ^ 0xC0FF_EE00_5EED)
        let u = { (r: inout SplitMix64) in Double(r.next() >> 11) * 0x1p-53 }
        let area = Double(size * size) / (512.0 * 512.0)
        return SyntheticSky(size: size, stars: Int(area * (100 + 1900 * u(&rng) * u(&rng))), galaxies: Int(area * 30 * u(&rng)),
                            clouds: Int(12 * u(&rng)), background: 0.1 * u(&rng), seed: seed)
    }

    /// A sparse field for training deconvolution (issue 24): stars and galaxies on a zero sky (no
    /// background, clouds or gradient: between the sources only their wings), as a sky-subtracted
    /// space-telescope or IFU image clipped at 0:
    /// 50 to 1,500 stars per 512² of FWHM 1-3 px (sharper than the PSFs they are blurred by),
    /// 0 to 20 galaxies. Its seeds are offset by 1,000,000 from `varied`'s and the demo's.
    public static func sparse(size: Int, seed: UInt64) -> SyntheticSky {
        var rng = SplitMix64(seed: seed ^ 0x5BA2_5E00_F1E1D)
        let u = { (r: inout SplitMix64) in Double(r.next() >> 11) * 0x1p-53 }
        let area = Double(size * size) / (512.0 * 512.0)
        var sky = SyntheticSky(size: size, stars: Int(area * (50 + 1450 * u(&rng) * u(&rng))), galaxies: Int(area * 20 * u(&rng)),
                               clouds: 0, background: 0, seed: seed &+ 1_000_000)
        sky.starFWHM = 1.0...3.0
        sky.gradient = false
        return sky
    }

    /// The rendered sky as a training image (named by its seed, checksummed by its pixels).
    public func sourceImage() -> SourceImage {
        let img = render()
        let crc = img.pixels.withUnsafeBytes { CRC32C.checksum($0) }
        return SourceImage(name: "synthetic-\(gradient || background != 0 ? "" : "sparse-")\(size)-seed\(seed)", checksum: crc, raw: img)
    }

    public func render() -> Image2D { renderWithSources().image }

    /// The rendered sky and the exact list of the stars and galaxies in it (clouds are diffuse
    /// and not listed), in the order they were drawn.
    public func renderWithSources() -> (image: Image2D, sources: [SyntheticSource]) {
        var list: [SyntheticSource] = []
        var rng = SplitMix64(seed: seed)
        func uniform(_ a: Double, _ b: Double) -> Double { a + (b - a) * Double(rng.next() >> 11) * 0x1p-53 }
        let n = size
        var img = Image2D(height: n, width: n)
        var gx = uniform(-1, 1) * 0.01, gy = uniform(-1, 1) * 0.01
        if !gradient { (gx, gy) = (0, 0) }
        for y in 0..<n { for x in 0..<n {
            img[y, x] = background + gx * Double(x) / Double(n) + gy * Double(y) / Double(n)
        } }
        // Diffuse clouds: large anisotropic Gaussians.
        for _ in 0..<clouds {
            let cx = uniform(0, Double(n)), cy = uniform(0, Double(n)), s1 = uniform(15, 150), s2 = uniform(15, 150)
            let amp = uniform(0.02, 0.4), theta = uniform(0, Double.pi)
            let (ct, st) = (cos(theta), sin(theta))
            let reach = Int(4 * max(s1, s2))
            for y in max(0, Int(cy) - reach)..<min(n, Int(cy) + reach) {
                for x in max(0, Int(cx) - reach)..<min(n, Int(cx) + reach) {
                    let dx = Double(x) - cx, dy = Double(y) - cy
                    let u = (dx * ct + dy * st) / s1, v = (-dx * st + dy * ct) / s2
                    img[y, x] += amp * exp(-0.5 * (u * u + v * v))
                }
            }
        }
        // Galaxies.
        for _ in 0..<galaxies {
            let cx = uniform(0, Double(n)), cy = uniform(0, Double(n))
            let sersic = uniform(0.5, 4), re = uniform(3, 25), q = uniform(0.3, 1), theta = uniform(0, Double.pi)
            let i0 = uniform(0.05, 0.5)
            let bn = 2 * sersic - 1.0 / 3 + 4 / (405 * sersic) + 46 / (25515 * sersic * sersic)
            // Total flux of the Sersic profile: 2 pi q re^2 I0 n e^bn Gamma(2n) / bn^2n.
            let total = 2 * Double.pi * q * re * re * i0 * sersic * exp(bn) * tgamma(2 * sersic) / pow(bn, 2 * sersic)
            list.append(SyntheticSource(kind: .galaxy, x: cx, y: cy, flux: total, fwhm: .nan, beta: .nan,
                                        effectiveRadius: re, sersicIndex: sersic, axisRatio: q))
            let reach = Int(min(Double(n), re * 8))
            let (ct, st) = (cos(theta), sin(theta))
            for y in max(0, Int(cy) - reach)..<min(n, Int(cy) + reach) {
                for x in max(0, Int(cx) - reach)..<min(n, Int(cx) + reach) {
                    let dx = Double(x) - cx, dy = Double(y) - cy
                    let u = dx * ct + dy * st, v = (-dx * st + dy * ct) / q
                    let r = (u * u + v * v).squareRoot()
                    img[y, x] += i0 * exp(-bn * pow(r / re, 1 / sersic))
                }
            }
        }
        // Stars: F = Fmin * U^(-1/gamma), truncated at Fmax (peaks from 0.005 to about 1).
        let beta = 3.5
        for _ in 0..<stars {
            let cx = uniform(0, Double(n)), cy = uniform(0, Double(n))
            let flux = 0.05 * pow(uniform(0.05 / 10, 1), -1.0)
            let fwhm = uniform(starFWHM.lowerBound, starFWHM.upperBound)
            let alpha = fwhm / (2 * (pow(2, 1 / beta) - 1).squareRoot())
            let norm = flux * (beta - 1) / (Double.pi * alpha * alpha)
            list.append(SyntheticSource(kind: .star, x: cx, y: cy, flux: flux, fwhm: fwhm, beta: beta,
                                        effectiveRadius: .nan, sersicIndex: .nan, axisRatio: .nan))
            let reach = Int(alpha * 12) + 2
            for y in max(0, Int(cy) - reach)..<min(n, Int(cy) + reach + 1) {
                for x in max(0, Int(cx) - reach)..<min(n, Int(cx) + reach + 1) {
                    let r2 = (Double(x) - cx) * (Double(x) - cx) + (Double(y) - cy) * (Double(y) - cy)
                    img[y, x] += norm * pow(1 + r2 / (alpha * alpha), -beta)
                }
            }
        }
        return (img, list)
    }
}
