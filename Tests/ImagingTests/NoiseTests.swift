import Foundation
import Imaging
import Runtime
import ModelFormat
import XCTest

final class NoiseTests: XCTestCase {
    /// Sample mean and (unbiased) variance.
    func moments(_ v: [Double]) -> (mean: Double, variance: Double) {
        let n = Double(v.count)
        let m = v.reduce(0, +) / n
        let s2 = v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / (n - 1)
        return (m, s2)
    }

    func testPoissonDeviatesHaveTheirMeanVarianceAndDistribution() {
        for lambda in [0.3, 3, 9.99, 10, 25, 150, 10_000] {
            var g = NoiseStreams.row(0, seed: UInt64(lambda * 100))
            let n = 200_000
            let v = (0..<n).map { _ in NoiseStreams.poisson(lambda, &g) }
            XCTAssert(v.allSatisfy { $0 >= 0 && $0 == $0.rounded() }, "lambda \(lambda): non-integer or negative deviate")
            let (m, s2) = moments(v)
            // Standard errors of the sample mean and variance of a Poisson(lambda) sample.
            let seMean = (lambda / Double(n)).squareRoot()
            let seVar = ((lambda + 2 * lambda * lambda) / Double(n)).squareRoot()
            XCTAssertEqual(m, lambda, accuracy: 5 * seMean, "mean at lambda \(lambda)")
            XCTAssertEqual(s2, lambda, accuracy: 5 * seVar, "variance at lambda \(lambda)")
            if lambda <= 25 {
                // Chi-square against the probability mass function, bins with >= 20 expected.
                var counts: [Int: Int] = [:]
                for k in v { counts[Int(k), default: 0] += 1 }
                var chi2 = 0.0, dof = -1
                var pmf = exp(-lambda), tail = 1.0
                var k = 0
                while tail * Double(n) > 20 {
                    let e = pmf * Double(n)
                    if e >= 20 {
                        let o = Double(counts[k] ?? 0)
                        chi2 += (o - e) * (o - e) / e
                        dof += 1
                    }
                    tail -= pmf
                    k += 1
                    pmf *= lambda / Double(k)
                }
                // 99.99th percentile of chi-square is below dof + 6 sqrt(2 dof) + 10 for these dofs.
                XCTAssertLessThan(chi2, Double(dof) + 6 * (2 * Double(dof)).squareRoot() + 10, "lambda \(lambda): chi2 \(chi2) with \(dof) dof")
            }
        }
        var g = NoiseStreams.row(0, seed: 1)
        XCTAssertEqual(NoiseStreams.poisson(0, &g), 0)
        XCTAssertEqual(NoiseStreams.poisson(-3, &g), 0)
    }

    /// The short-exposure model's mean and variance per signal level equal the formulas:
    /// mean = I (long scale), variance = (r/g)^2 ((I + sky) g / r + dark t / r + RON^2).
    func testShortExposureStatisticsPerSignalLevel() {
        let levels: [Double] = [-30, 0, 2, 40, 900]
        let perLevel = 40_000
        var image = Image2D(height: levels.count * 200, width: perLevel / 200)
        for (li, level) in levels.enumerated() { for y in (li * 200)..<((li + 1) * 200) { for x in 0..<image.width { image[y, x] = level } } }
        for scale in ExposureNoise.Scale.allCases {
            for clip in [false, true] {
                let model = ExposureNoise(ratio: 3, gain: 2.5, readNoise: 4, darkRate: 0.02, exposureTime: 600, sky: 12,
                                          clipNegative: clip, outputScale: scale)
                XCTAssertNil(model.problem)
                let out = model.apply(image, seed: 7, threads: 2)
                for (li, level) in levels.enumerated() {
                    let v = Array(out.pixels[(li * 200 * image.width)..<((li + 1) * 200 * image.width)])
                    let (m, s2) = moments(v)
                    let expect = model.moments(of: level)
                    // Closed form, independently of `moments(of:)`.
                    var l = level + 12
                    if clip { l = max(l, 0) }
                    let eVar = max(l, 0) * 2.5 / 3 + 0.02 * 600 / 3 + 16
                    let k = scale == .long ? 3 / 2.5 : 1 / 2.5
                    XCTAssertEqual(expect.variance, eVar * k * k, accuracy: 1e-9 * eVar * k * k)
                    XCTAssertEqual(expect.mean, scale == .long ? l - 12 : l / 3 - 4, accuracy: 1e-9)
                    let n = Double(v.count)
                    XCTAssertEqual(m, expect.mean, accuracy: 5 * (expect.variance / n).squareRoot(), "\(scale) clip \(clip) level \(level): mean")
                    // Variance of the sample variance: about 2 sigma^4 / n (+ the Poisson excess kurtosis).
                    let seVar = ((2 * expect.variance * expect.variance + expect.variance * k * k) / n).squareRoot()
                    XCTAssertEqual(s2, expect.variance, accuracy: 5 * seVar, "\(scale) clip \(clip) level \(level): variance")
                }
            }
        }
    }

    func testNoiseIsTheSameBitsWhateverTheThreadCountAndKeepsNaN() {
        var image = Image2D(height: 67, width: 45)
        for i in 0..<image.count { image.pixels[i] = Double(i % 97) * 3.7 }
        image.pixels[100] = .nan
        let model = ExposureNoise(ratio: 2, gain: 1.7, readNoise: 3)
        let one = model.apply(image, seed: 11, threads: 1)
        for t in [2, 3, 8] {
            let other = model.apply(image, seed: 11, threads: t)
            XCTAssert(zip(one.pixels, other.pixels).allSatisfy { $0.bitPattern == $1.bitPattern }, "threads \(t)")
        }
        XCTAssert(one.pixels[100].isNaN)
        XCTAssertNotEqual(model.apply(image, seed: 12).pixels, one.pixels)
        let gaussian = GaussianNoise(.absolute(0.5))
        let g1 = gaussian.apply(image, seed: 3, threads: 1), g3 = gaussian.apply(image, seed: 3, threads: 3)
        XCTAssert(zip(g1.pixels, g3.pixels).allSatisfy { $0.bitPattern == $1.bitPattern })
        XCTAssert(g1.pixels[100].isNaN)
    }

    func testInvalidParametersAreNamed() {
        XCTAssertNotNil(ExposureNoise(ratio: 0.5, gain: 1).problem)
        XCTAssertNotNil(ExposureNoise(ratio: 2, gain: 0).problem)
        XCTAssertNotNil(ExposureNoise(ratio: 2, gain: 1, readNoise: -1).problem)
        XCTAssertNotNil(ExposureNoise(ratio: 2, gain: 1, darkRate: 1, exposureTime: 0).problem)
        XCTAssertNil(ExposureNoise(ratio: 1, gain: 1).problem)
    }

    /// The robust sky noise ignores sources: Gaussian sky of sigma 2 with bright stars on 10% of
    /// the pixels.
    func testSkyStatisticsAndGaussianNoiseBySkyMultiple() {
        var image = Image2D(height: 300, width: 300)
        var g = SplitMix64(seed: 5)
        for i in 0..<image.count {
            image.pixels[i] = 100 + 2 * NoiseStreams.normal(&g)
            if g.next() % 10 == 0 { image.pixels[i] += 50 + Double(g.next() % 5000) }
        }
        let s = SkyStatistics.estimate(image)
        XCTAssertEqual(s.median, 100, accuracy: 0.1)
        XCTAssertEqual(s.sigma, 2, accuracy: 0.06)
        let noisy = GaussianNoise(.skyMultiple(1.5))
        XCTAssertEqual(noisy.sigma(for: image), 1.5 * s.sigma, accuracy: 1e-12)
        let added = noisy.apply(image, seed: 9)
        let diff = zip(added.pixels, image.pixels).map { $0 - $1 }
        XCTAssertEqual(moments(diff).variance.squareRoot(), 1.5 * s.sigma, accuracy: 0.02)
        // A sky-subtracted image whose noise is the photon noise of a sky of 400 units at gain 2.
        XCTAssertEqual(ExposureNoise.impliedSky(sigma: (400.0 * 2 + 9).squareRoot() / 2, median: 0, gain: 2, readNoise: 3), 400, accuracy: 1e-9)
        // A pedestal of 300 without photons: the photon-bearing level is 100, so the sky is -200.
        XCTAssertEqual(ExposureNoise.impliedSky(sigma: (100.0 * 2).squareRoot() / 2, median: 300, gain: 2, readNoise: 0), -200, accuracy: 1e-9)
        // Without a gain: sky-limited at 1000 e-; the short exposure's sky noise at ratio r is then
        // sqrt(r) times the measured one, whatever the units (here 4e-12 per pixel).
        let (gain, sky) = ExposureNoise.skyLimited(sigma: 4e-12, median: 3e-13, electrons: 1000)
        XCTAssertEqual(gain * 4e-12, 1000.0.squareRoot(), accuracy: 1e-9)
        let model = ExposureNoise(ratio: 3, gain: gain, sky: sky)
        XCTAssertEqual(model.moments(of: 3e-13).variance.squareRoot(), 3.0.squareRoot() * 4e-12, accuracy: 1e-15)
    }

    func testHeaderKeywords() {
        let cards = ["GAIN": "3.98", "EXPTIME": "330.0", "RDNOISE": "11.8"]
        let k = ExposureKeywords { cards[$0] }
        XCTAssertEqual(k.gain?.value, 3.98)
        XCTAssertEqual(k.gain?.source, "GAIN")
        XCTAssertEqual(k.exposureTime?.value, 330)
        XCTAssertEqual(k.readNoise?.value, 11.8)
        let eps = ExposureKeywords { ["BUNIT": "ELECTRONS/S", "EXPTIME": "500"][$0] }
        XCTAssertEqual(eps.gain?.value, 500)
        XCTAssertNil(ExposureKeywords { ["BUNIT": "MJy/sr"][$0] }.gain)
    }

    func testPSFSpecs() throws {
        XCTAssertEqual(try PSFSpec(parsing: "airy:size=64,rings=5"), .paper)
        XCTAssertEqual(try PSFSpec(parsing: "moffat:fwhm=3,beta=2.5"), .moffat(fwhm: 3, beta: 2.5, size: nil))
        XCTAssertEqual(try PSFSpec(parsing: "psf.fits"), .file("psf.fits"))
        for bad in ["gauss:fwhm=2", "gaussian", "gaussian:fwhm=-1", "moffat:fwhm=2,beta=1", "airy:size=x", "gaussian:fwhm=2,beta=3"] {
            XCTAssertThrowsError(try PSFSpec(parsing: bad), bad)
        }
        for spec in [PSFSpec.gaussian(fwhm: 3, size: nil), .moffat(fwhm: 3, beta: 3, size: nil), .gaussian(fwhm: 5, size: 41)] {
            let k = try XCTUnwrap(try spec.kernel())
            XCTAssertEqual(k.height % 2, 1)
            XCTAssertEqual(k.pixels.reduce(0, +), 1, accuracy: 1e-12)
            let c = k.height / 2
            XCTAssertEqual(k.pixels.max(), k[c, c], "\(spec): peak at the origin pixel")
            switch spec {
            case .gaussian(let f, _):
                // Pixel averaging (5 x 5 samples) adds (1 - 1/25) / 12 to the variance of each axis.
                let sigma = f / (8 * log(2.0)).squareRoot()
                var m2 = 0.0
                for i in 0..<k.height { for j in 0..<k.width { m2 += k[i, j] * Double((j - c) * (j - c)) } }
                XCTAssertEqual(m2, sigma * sigma + (1 - 1.0 / 25) / 12, accuracy: 2e-3 * sigma * sigma, "\(spec)")
            case .moffat(let f, let beta, _):
                // Far from the core the pixel average is the profile: (1 + r^2/alpha^2)^-beta.
                let alpha = f / (2 * (pow(2, 1 / beta) - 1).squareRoot())
                let ratio = pow((1 + 64 / (alpha * alpha)) / (1 + 36 / (alpha * alpha)), beta)
                XCTAssertEqual(k[c, c + 6] / k[c, c + 8], ratio, accuracy: 0.01 * ratio, "\(spec)")
            default: break
            }
        }
        XCTAssertNil(try PSFSpec.none.kernel())
    }
}
