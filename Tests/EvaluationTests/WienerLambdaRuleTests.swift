import Evaluation
import Imaging
import Runtime
import XCTest

/// The Wiener step's lambda without a truth (`WienerDeconvolution.NoiseRule`): the risk rule
/// (`riskLambda`, `restore`'s default) against the best lambda of the grid chosen with the truth,
/// on simulated skies blurred by PSFs with and without a stop band, from the paper's noise to
/// nearly noiseless.
final class WienerLambdaRuleTests: XCTestCase {
    func psnrs(psf: String, noise: String, seed: UInt64) throws -> (blurred: Double, best: Double, risk: Double, previous: Double, riskLambda: String) {
        var ev = Evaluator()
        ev.degradation = try Degradation(psf: try PSFSpec(parsing: psf), noise: try NoiseSpec(parsing: noise))
        ev.threads = 2
        let sky = SyntheticSky.varied(size: 192, seed: seed).sourceImage()
        let (truth, observed) = try ev.degrade(sky, index: 0)
        let grid = WienerDeconvolution.lambdaExponents.map { pow(10, Double($0) / 4) }
        let best = try ev.run(.wiener(lambdas: grid), observed: observed, truth: truth).0
        let risk = try ev.run(.wienerRisk, observed: observed, truth: truth)
        let previous = try ev.run(.wienerDP, observed: observed, truth: truth).0
        return (ev.score(truth, observed).psnr, ev.score(truth, best).psnr, ev.score(truth, risk.0).psnr, ev.score(truth, previous).psnr, risk.1)
    }

    /// A 192² simulated sky blurred by an Airy PSF of 64 px (a stop band beyond its cut-off, and
    /// a third of the frame: the borders' error spreads) and by a Gaussian of FWHM 2.2 px, at σ
    /// 0.01 of the peak and at 1e-5 (nearly noiseless). Measured when written: the risk rule
    /// 0.4-0.7 dB under the truth-chosen lambda but with the Gaussian PSF at 1e-5 (68.3 dB against
    /// 75.4: the borders' term over-regularises a little there); the previous rule (the larger of
    /// GCV's and the discrepancy principle's) 24-74 dB under the blurred input with the Airy PSF
    /// and 10 dB under the risk rule with the Gaussian at σ 0.01. Asserted: above the blurred
    /// input + 1 dB everywhere, within 1 dB of the best but for the Gaussian at 1e-5, not below the
    /// previous rule there, and the previous rule's collapse with the Airy PSF at 1e-5.
    func testRiskLambdaNearTheBestWithoutATruth() throws {
        for psf in ["airy:size=64,rings=5", "gaussian:fwhm=2.2"] {
            for noise in ["gaussian:sigma=0.01", "gaussian:sigma=1e-5"] {
                let r = try psnrs(psf: psf, noise: noise, seed: 3)
                let what = "\(psf), \(noise): risk \(r.risk) dB (\(r.riskLambda)), best \(r.best), previous \(r.previous), blurred \(r.blurred)"
                print(what)
                XCTAssertGreaterThan(r.risk, r.blurred + 1, what)
                if psf.hasPrefix("airy") || noise.hasSuffix("0.01") { XCTAssertGreaterThan(r.risk, r.best - 1, what) }
                else { XCTAssertGreaterThan(r.risk, r.previous, what) }
                if psf.hasPrefix("airy"), noise.hasSuffix("1e-5") { XCTAssertLessThan(r.previous, r.blurred, what) }
            }
        }
    }

    /// The rule does not depend on the map's units (a scale and an offset give the same lambda).
    func testRiskLambdaUnitFree() throws {
        let n = 96
        let spec = try PSFSpec(parsing: "moffat:fwhm=3,beta=2.5")
        let d = try Degradation(psf: spec, noise: try NoiseSpec(parsing: "gaussian:sigma=0.003"))
        let (_, observed) = d.degrade(SyntheticSky.varied(size: n, seed: 5).render(), seed: 1)
        let k = try PSFKernel(height: d.psf.height, width: d.psf.width, values: d.psf.pixels)
        let px = observed.pixels.map { Float($0) }
        let v = 0.003 * 0.003
        let a = WienerDeconvolution.apply(px, height: n, width: n, psf: k, noiseVariance: v, noiseRule: .risk).lambda
        let b = WienerDeconvolution.apply(px.map { $0 * 250 + 7 }, height: n, width: n, psf: k, noiseVariance: v * 250 * 250,
                                          noiseRule: .risk).lambda
        XCTAssertEqual(a, b)
    }

    /// Maps too thin for the tapered margins (1 or 2 pixels a side) get a lambda of the grid, no trap.
    func testRiskLambdaOnThinMaps() throws {
        let k = try PSFKernel(height: 5, width: 5, values: [Double](repeating: 1, count: 25))
        for (h, w) in [(1, 7), (2, 9), (7, 1), (1, 1), (3, 3)] {
            let px = (0..<(h * w)).map { Float(($0 * 37) % 11) }
            let l = WienerDeconvolution.apply(px, height: h, width: w, psf: k, noiseVariance: 1, noiseRule: .risk).lambda
            XCTAssertTrue(WienerDeconvolution.lambdaExponents.contains(Int((log10(l) * 4).rounded())), "\(h)x\(w): \(l)")
        }
    }
}
