import Evaluation
import Foundation
import ModelFormat
import Imaging
import XCTest

/// Metrics and classical methods against scikit-image (values from tools/evaluation_reference.py
/// on the same generated arrays), and their own properties.
final class EvaluationTests: XCTestCase {
    /// The arrays of tools/evaluation_reference.py.
    func pattern(_ h: Int, _ w: Int, _ a: Double, _ b: Double, _ c: Double) -> Image2D {
        var img = Image2D(height: h, width: w)
        for y in 0..<h { for x in 0..<w {
            let (fy, fx) = (Double(y), Double(x))
            img[y, x] = 0.5 + 0.3 * sin(a * fy + b * fx) * cos(c * fx - 0.05 * fy * fy / Double(h)) + 0.15 * cos(0.9 * fx * fy / Double(w))
        } }
        return img
    }

    func psf(_ k: Int, _ s: Double) -> Image2D {
        var p = Image2D(height: k, width: k)
        for y in 0..<k { for x in 0..<k {
            let (dy, dx) = (Double(y) - Double(k - 1) / 2, Double(x) - Double(k - 1) / 2)
            p[y, x] = exp(-(dx * dx + dy * dy) / (2 * s * s)) * (1 + 0.1 * dx)
        } }
        let t = p.pixels.reduce(0, +)
        return p.map { $0 / t }
    }

    func testPSNRAndSSIMEqualScikitImage() {
        let t = pattern(48, 40, 0.31, 0.17, 0.23), e = pattern(48, 40, 0.29, 0.18, 0.22)
        XCTAssertEqual(Metrics.psnr(t, e, dataRange: 1), SkimageReference.psnr, accuracy: 1e-3)
        XCTAssertEqual(Metrics.ssim(t, e, dataRange: 1), SkimageReference.ssim, accuracy: 1e-4)
        XCTAssertEqual(Metrics.ssim(t, e, dataRange: 1, sampleCovariance: true), SkimageReference.ssimSampleCovariance, accuracy: 1e-4)
        XCTAssertEqual(Metrics.ssim(t, t, dataRange: 1), 1, accuracy: 1e-12)
    }

    func testRichardsonLucyAndWienerEqualScikitImage() {
        let img = pattern(40, 36, 0.21, 0.33, 0.12), k = psf(5, 1.2)
        let rl = Deconvolution.richardsonLucy(img, psf: k, iterations: 10)
        let worstRL = zip(rl.pixels, SkimageReference.richardsonLucy10).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worstRL, 1e-9)
        // scikit-image's Wiener: periodic grid, PSF origin at k / 2 (the same as (k - 1) / 2 for odd k).
        let w = Deconvolution.wiener(img, psf: k, lambda: 0.05, origin: .fftCentre)
        let worstW = zip(w.pixels, SkimageReference.wiener005).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worstW, 1e-9)
    }

    /// PSNR honours NaN masks and the paper's crop; KL is zero for identical images and
    /// positive otherwise.
    func testMasksCropAndKL() {
        var t = pattern(80, 80, 0.3, 0.2, 0.1)
        var e = t
        for i in 0..<e.count { e.pixels[i] += 0.01 }
        XCTAssertEqual(Metrics.paperPSNR(t, e), 40, accuracy: 1e-9)
        // A wild border (inside the crop) and a NaN change nothing.
        e[0, 0] = 100; e[79, 5] = -50
        t[40, 40] = .nan
        XCTAssertEqual(Metrics.paperPSNR(t, e), 40, accuracy: 1e-9)
        var mask = [Bool](repeating: true, count: t.count)
        e[50, 50] = 3; mask[50 * 80 + 50] = false
        XCTAssertEqual(Metrics.psnr(t, e, dataRange: 1, crop: 32, mask: mask), 40, accuracy: 1e-9)
        let u = pattern(80, 80, 0.3, 0.2, 0.1)
        XCTAssertEqual(Metrics.klDivergence(u, u), 0, accuracy: 1e-12)
        XCTAssertGreaterThan(Metrics.klDivergence(u, u.map { $0 * 0.7 }), 0.05)
    }

    /// On a blurred, noise-free image every method moves toward the truth; Wiener's Parseval
    /// lambda choice is the sweep's best by direct MSE; Prox-TV decreases its objective.
    func testClassicalMethodsRestore() {
        var rng = SplitMix64(seed: 1)
        var truth = Image2D(height: 72, width: 64, repeating: 0.02)
        for _ in 0..<30 {
            let (y, x) = (Int(rng.next() % 60) + 6, Int(rng.next() % 52) + 6)
            truth[y, x] = Double(rng.float(0.2, 1))
        }
        let d = Degradation(psfSize: 16, rings: 2, sigma: 0.002)
        let observed = d.addNoise(d.blur(truth), seed: 3)
        let before = Metrics.psnr(truth, observed, dataRange: 1, crop: 4)
        let lambdas = [1e-4, 1e-3, 1e-2, 0.1]
        let w = Deconvolution.wienerBest(observed, truth: truth, psf: d.psf, lambdas: lambdas, crop: 4)
        // The choice (sweep plus refinement) restores at least as well as the best lambda of the sweep.
        let direct = lambdas.map { Metrics.psnr(truth, Deconvolution.wiener(observed, psf: d.psf, lambda: $0, boundary: .reflect), dataRange: 1, crop: 4) }
        XCTAssertGreaterThan(Metrics.psnr(truth, w.image, dataRange: 1, crop: 4), direct.max()! - 0.05)
        XCTAssertGreaterThan(Metrics.psnr(truth, w.image, dataRange: 1, crop: 4), before)
        let rl = Deconvolution.richardsonLucyBest(observed, truth: truth, psf: d.psf, maxIterations: 30, crop: 4)
        XCTAssertGreaterThan(Metrics.psnr(truth, rl.image, dataRange: 1, crop: 4), before + 0.5)
        let tv = Deconvolution.proxTV(observed, psf: d.psf, mu: 1e-3, iterations: 200)
        XCTAssertGreaterThan(Metrics.psnr(truth, tv, dataRange: 1, crop: 4), before)
        XCTAssertGreaterThanOrEqual(tv.pixels.min()!, 0)
    }
}
