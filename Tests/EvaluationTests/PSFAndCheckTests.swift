import Evaluation
import Foundation
import Imaging
import ModelFormat
import Runtime
import XCTest

/// `--psf auto` (the PSF measured from an image's stars) and the no-truth checks of a
/// deconvolution (`astrocnn check`): on star fields made with a known PSF.
final class PSFAndCheckTests: XCTestCase {
    /// A field observed through `psf`: point sources at random sub-pixel positions (each the PSF
    /// sampled at its offset, 5x5 per pixel), a few extended galaxies (blurred Sersic-like blobs),
    /// two saturated stars clipped at a ceiling, a sky of 100 and Gaussian noise sigma 1.
    /// Returns (observed pixels, noiseless blurred pixels).
    static func starField(size n: Int, psf spec: PSFSpec, seed: UInt64, stars: Int = 120, noise: Double = 1) throws -> ([Float], [Double]) {
        var rng = SplitMix64(seed: seed)
        var img = [Double](repeating: 100, count: n * n)
        let k = try spec.kernel()!
        let r = k.height / 2
        func addStar(_ sy: Double, _ sx: Double, _ flux: Double) {
            // The PSF's profile at sub-pixel offset: bilinear resampling of the kernel is too soft;
            // evaluate the analytic profile by shifting the 5x5-sampled kernel's centre.
            let iy = Int(sy.rounded()), ix = Int(sx.rounded())
            let fy = sy - Double(iy), fx = sx - Double(ix)
            for dy in -r...r { for dx in -r...r {
                let y = iy + dy, x = ix + dx
                guard y >= 0, y < n, x >= 0, x < n else { continue }
                // Lanczos-3 shift of the kernel by (fy, fx).
                var v = 0.0
                for j in -3...3 { for i in -3...3 {
                    let ky = dy - j + r, kx = dx - i + r
                    guard ky >= 0, ky < k.height, kx >= 0, kx < k.width else { continue }
                    v += k[ky, kx] * lanczos(Double(j) - fy) * lanczos(Double(i) - fx)
                } }
                img[y * n + x] += flux * v
            } }
        }
        for _ in 0..<stars {
            let y = Double.random(in: 20..<Double(n - 20), using: &rng), x = Double.random(in: 20..<Double(n - 20), using: &rng)
            addStar(y, x, exp(Double.random(in: log(2000.0)...log(60000.0), using: &rng)))
        }
        // Galaxies: many faint point sources spread over an exponential disc (extended, blurred).
        for _ in 0..<8 {
            let gy = Double.random(in: 40..<Double(n - 40), using: &rng), gx = Double.random(in: 40..<Double(n - 40), using: &rng)
            let re = Double.random(in: 4...8, using: &rng)
            for _ in 0..<300 {
                let rr = -re * log(max(1e-9, Double.random(in: 0..<1, using: &rng))), t = Double.random(in: 0..<(2 * .pi), using: &rng)
                addStar(gy + rr * sin(t) * 0.6, gx + rr * cos(t), 40)
            }
        }
        // Two stars far over the ceiling.
        for _ in 0..<2 { addStar(Double.random(in: 30..<Double(n - 30), using: &rng), Double.random(in: 30..<Double(n - 30), using: &rng), 3e6) }
        let ceiling = 30000.0
        let clean = img.map { min($0, ceiling) }
        var observed = [Float](repeating: 0, count: n * n)
        for i in 0..<(n * n) {
            let g = (-2 * log(max(1e-300, Double.random(in: 0..<1, using: &rng)))).squareRoot() * cos(2 * .pi * Double.random(in: 0..<1, using: &rng))
            observed[i] = Float(min(ceiling, clean[i] + noise * g))
        }
        return (observed, clean)
    }

    static func lanczos(_ t: Double) -> Double {
        if abs(t) < 1e-12 { return 1 }
        if abs(t) >= 3 { return 0 }
        let a = Double.pi * t
        return 3 * sin(a) * sin(a / 3) / (a * a)
    }

    /// The measured kernel matches the true PSF: Moffat FWHM within 5% and beta within 25% of
    /// the truth, the kernel's L1 distance to the true kernel under 0.12 (of 2), for a Moffat and
    /// a Gaussian PSF not centred on pixels, with galaxies, saturated stars and noise present.
    func testMeasuredPSFMatchesTheTrueOne() throws {
        for (spec, fwhm, beta, seed) in [(PSFSpec.moffat(fwhm: 3, beta: 2.5, size: 31), 3.0, 2.5, UInt64(1)),
                                          (PSFSpec.moffat(fwhm: 5, beta: 4, size: 41), 5.0, 4.0, 2),
                                          (PSFSpec.gaussian(fwhm: 2.2, size: 21), 2.2, nil, 3)] as [(PSFSpec, Double, Double?, UInt64)] {
            let n = 400
            let (observed, _) = try PSFAndCheckTests.starField(size: n, psf: spec, seed: seed)
            let m = try PSFEstimation.measure(pixels: observed, invalid: [Bool](repeating: false, count: n * n), width: n, height: n)
            XCTAssertGreaterThanOrEqual(m.stars, 10, "\(spec)")
            XCTAssertEqual(m.fwhm, fwhm, accuracy: 0.05 * fwhm, "\(spec): measured FWHM \(m.fwhm)")
            if let b = beta { XCTAssertEqual(m.beta, b, accuracy: 0.25 * b, "\(spec): measured beta \(m.beta)") } else {
                XCTAssertGreaterThan(m.beta, 5, "a Gaussian is a Moffat of large beta: \(m.beta)")
            }
            XCTAssertLessThan(m.ellipticity, 0.05, "\(spec)")
            // Compare with the true kernel on the measured kernel's grid.
            let truth = try PSFSpec.moffatOrGaussian(spec, size: m.kernel.height)
            var l1 = 0.0
            for i in 0..<truth.count { l1 += abs(truth.pixels[i] - m.kernel.pixels[i]) }
            XCTAssertLessThan(l1, 0.12, "\(spec): L1 distance \(l1) of the measured kernel to the truth")
        }
    }

    /// A field with few bright stars (2 or 3 peaks 15 sigma above the sky, about 8 at 8 sigma, as
    /// the demo's sky under the paper's noise): measured from the fainter stars, FWHM within 10%.
    func testFewBrightStarsUseFainterOnes() throws {
        let n = 400
        let spec = PSFSpec.moffat(fwhm: 3, beta: 2.5, size: 31)
        let (observed, _) = try PSFAndCheckTests.starField(size: n, psf: spec, seed: 4, stars: 25, noise: 200)
        let m = try PSFEstimation.measure(pixels: observed, invalid: [Bool](repeating: false, count: n * n), width: n, height: n)
        print("few bright stars: \(m.stars) stars of \(m.candidates) candidates, FWHM \(m.fwhm), beta \(m.beta)")
        XCTAssertEqual(m.threshold, 8, "the field has fewer than 20 peaks 15 sigma above the sky")
        XCTAssertGreaterThanOrEqual(m.stars, 3)
        XCTAssertEqual(m.fwhm, 3, accuracy: 0.3)
    }

    /// An image without stars, or too small, is refused with a message that says to give --psf.
    func testNoStarsGivesAClearError() throws {
        var rng = SplitMix64(seed: 9)
        let n = 200
        let px = (0..<(n * n)).map { _ in Float(100 + rng.float(-1, 1)) }
        XCTAssertThrowsError(try PSFEstimation.measure(pixels: px, invalid: [Bool](repeating: false, count: n * n), width: n, height: n)) {
            XCTAssertTrue(String(describing: $0).contains("--psf"), "\($0)")
        }
    }

    /// The checks on a field whose truth is known: the truth itself fits the data (chi-square near
    /// 1, no Nyquist excess); the input left unchanged does not fit the sources; a checkerboard
    /// added to the truth fails the checkerboard test; Wiener's output passes the checkerboard test.
    func testCheckSeparatesGoodAndBadRestorations() throws {
        let n = 256
        let spec = PSFSpec.moffat(fwhm: 3, beta: 2.5, size: 31)
        let psf = try spec.kernel()!
        // The truth: the same field at the sharpest resolution the pixels sample (a Gaussian PSF of
        // FWHM 2 px), what a deconvolution can aim at.
        let (_, sharp) = try PSFAndCheckTests.starField(size: n, psf: .gaussian(fwhm: 2, size: 13), seed: 5, stars: 80, noise: 0)
        let truth = Image2D(height: n, width: n, pixels: sharp)
        let blurred = LinearConvolution(kernel: psf, height: n, width: n).apply(truth)
        var rng = SplitMix64(seed: 6)
        let input = blurred.pixels.map { v -> Float in
            let g = (-2 * log(max(1e-300, Double.random(in: 0..<1, using: &rng)))).squareRoot() * cos(2 * .pi * Double.random(in: 0..<1, using: &rng))
            return Float(v + g)
        }
        let good = try RestorationCheck.run(input: input, restored: truth.pixels.map(Float.init), width: n, height: n, psf: psf, sigma: 1)
        XCTAssertEqual(good.reducedChiSquare, 1, accuracy: 0.1, good.description)
        XCTAssertEqual(good.sourceChiSquare, 1, accuracy: 0.25, good.description)
        XCTAssertTrue(good.passes, good.description)
        let same = try RestorationCheck.run(input: input, restored: input, width: n, height: n, psf: psf, sigma: 1)
        XCTAssertGreaterThan(same.sourceChiSquare, 4, same.description)
        XCTAssertFalse(same.fitsTheData, same.description)
        // The artefact of a 2x2 transposed convolution: a period-2 pattern modulating the signal
        // by 10% and the sky by 2 sigma.
        let checker = truth.pixels.enumerated().map { i, v -> Float in
            let s: Double = (i / n + i % n) % 2 == 0 ? 1 : -1
            return Float(v + s * (0.1 * (v - 100) + 2))
        }
        let bad = try RestorationCheck.run(input: input, restored: checker, width: n, height: n, psf: psf, sigma: 1)
        XCTAssertGreaterThan(bad.nyquistPowerRatio, 4, bad.description)
        XCTAssertFalse(bad.noCheckerboard, bad.description)
        let observed = Image2D(height: n, width: n, pixels: input.map(Double.init))
        let wiener = Deconvolution.wienerBest(observed, truth: truth, psf: psf, lambdas: [1e-4, 1e-3, 1e-2, 1e-1, 1]).image
        let w = try RestorationCheck.run(input: input, restored: wiener.pixels.map(Float.init), width: n, height: n, psf: psf)
        XCTAssertTrue(w.noCheckerboard, w.description)
        // (Wiener tuned for the best PSNR against the truth smooths the bright stars: its source
        // chi-square is about 23, so it fails the data fit. The check measures consistency with
        // the data, not closeness to a truth it does not have.)
        XCTAssertGreaterThan(w.sourceChiSquare, 2, w.description)
        // The classical reference (Wiener, lambda by generalised cross-validation) fits the sources.
        XCTAssertLessThan(good.referenceSourceChiSquare, 2, good.description)
        // Measured from the input's second differences; 23% of this field's pixels lie on sources,
        // which raise the estimate a little.
        XCTAssertEqual(w.sigma, 1, accuracy: 0.15, "the pixel noise is measured from the input")
    }
}

extension PSFSpec {
    /// The analytic kernel of a Moffat or Gaussian spec on a grid of `size` (odd).
    static func moffatOrGaussian(_ s: PSFSpec, size: Int) throws -> Image2D {
        switch s {
        case .moffat(let f, let b, _): return try PSFSpec.moffat(fwhm: f, beta: b, size: size).kernel()!
        case .gaussian(let f, _): return try PSFSpec.gaussian(fwhm: f, size: size).kernel()!
        default: return try s.kernel()!
        }
    }
}
