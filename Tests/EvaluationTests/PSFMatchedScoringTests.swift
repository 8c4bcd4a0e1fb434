import Evaluation
import Imaging
import ModelFormat
import Runtime
import XCTest

/// `DenoiseEvaluator.psfMatch`: frames of one field taken at different seeing. A sharper input
/// scored against a broader reference rewards any method that blurs; matched scores do not.
final class PSFMatchedScoringTests: XCTestCase {
    /// 40 Gaussian stars of FWHM `fwhm` (same positions and fluxes for every call), sky 0, white
    /// noise of sigma 1 from `seed`.
    static func field(fwhm: Double, seed: UInt64) -> Image2D {
        let n = 192
        var img = Image2D(height: n, width: n)
        var g = SplitMix64(seed: 7)
        let s = fwhm / 2.3548
        for _ in 0..<40 {
            let span = UInt64(n - 24)
            let cy: Double = 12.3 + Double(g.next() % span)
            let cx: Double = 12.6 + Double(g.next() % span)
            let flux: Double = 3000 + Double(g.next() % 20000)
            let norm: Double = flux / (2 * Double.pi * s * s)
            for y in max(0, Int(cy) - 12)..<min(n, Int(cy) + 13) { for x in max(0, Int(cx) - 12)..<min(n, Int(cx) + 13) {
                let dy = Double(y) - cy, dx = Double(x) - cx
                let r2: Double = dy * dy + dx * dx
                img[y, x] += norm * exp(-r2 / (2 * s * s))
            } }
        }
        var h = SplitMix64(seed: seed)
        for i in 0..<img.count { img.pixels[i] += NoiseStreams.normal(&h) }
        return img
    }

    func testSharperInputIsMatchedToTheReference() throws {
        let input = Self.field(fwhm: 3, seed: 1), reference = Self.field(fwhm: 4.5, seed: 2)
        var ev = DenoiseEvaluator()
        ev.threads = 2
        ev.detection.threshold = 5
        let plain = try ev.prepare(name: "field", truth: reference)
        ev.psfMatch = true
        let matched = try ev.matched(try ev.prepare(name: "field", truth: reference), input: input)
        // The blur that takes FWHM 3 to 4.5: sigma sqrt(4.5^2 - 3^2) / 2.3548 = 1.42 px.
        XCTAssertEqual(matched.estimateBlur, (4.5 * 4.5 - 9).squareRoot() / 2.3548, accuracy: 0.2)
        XCTAssertEqual(matched.inputFWHM, 3, accuracy: 0.3)
        XCTAssertEqual(matched.referenceFWHM, 4.5, accuracy: 0.4)
        // Unmatched, the raw input loses to a Gaussian blur by many dB (the blur does the PSF
        // matching); matched, the input itself scores far better and the Gaussian's oracle sigma
        // is a small denoising one, not the matching blur.
        let rawPlain = ev.psnr(input, plain), rawMatched = ev.psnr(input, matched)
        XCTAssertGreaterThan(rawMatched, rawPlain + 5, "matched \(rawMatched) vs plain \(rawPlain)")
        let (_, params) = try ev.run(.gaussian(sigmas: [0.3, 0.5, 0.7, 1, 1.4, 2, 2.8]), noisy: input, reference: matched)
        let (_, paramsPlain) = try ev.run(.gaussian(sigmas: [0.3, 0.5, 0.7, 1, 1.4, 2, 2.8]), noisy: input, reference: plain)
        let sigma = { (p: String) in Double(p.split(separator: "=").last.map(String.init) ?? "") ?? .nan }
        XCTAssertLessThan(sigma(params), sigma(paramsPlain), "matched \(params), plain \(paramsPlain)")
        // A reference sharper than the input is blurred instead, and the estimates are not.
        let swapped = try ev.matched(try ev.prepare(name: "field", truth: input), input: reference)
        XCTAssertEqual(swapped.estimateBlur, 0)
        XCTAssertNotEqual(swapped.pixelTruth.pixels, swapped.truth.pixels)
    }
}

/// `MatchingKernel`: a kernel fitted between two renderings of one field at different seeing
/// matches Moffat profiles where a Gaussian between their FWHMs leaves residuals at the cores.
final class MatchingKernelTests: XCTestCase {
    /// 30 Moffat stars (beta 2.5) of FWHM `fwhm`, fixed positions and fluxes, sky 100, white noise
    /// of sigma `noise`.
    func moffatField(fwhm: Double, noise: Double, seed: UInt64) -> Image2D {
        let n = 160
        var img = Image2D(height: n, width: n, repeating: 100)
        var g = SplitMix64(seed: 5)
        let beta = 2.5, alpha = fwhm / (2 * (pow(2, 1 / beta) - 1).squareRoot())
        for _ in 0..<30 {
            let cy = 15.4 + Double(g.next() % UInt64(n - 30)), cx = 15.7 + Double(g.next() % UInt64(n - 30))
            let flux = 2000 + Double(g.next() % 30000)
            let norm = flux * (beta - 1) / (Double.pi * alpha * alpha)
            for y in max(0, Int(cy) - 25)..<min(n, Int(cy) + 26) { for x in max(0, Int(cx) - 25)..<min(n, Int(cx) + 26) {
                let r2 = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx)
                img[y, x] += norm * pow(1 + r2 / (alpha * alpha), -beta)
            } }
        }
        var h = SplitMix64(seed: seed)
        for i in 0..<img.count { img.pixels[i] += noise * NoiseStreams.normal(&h) }
        return img
    }

    func testFittedKernelMatchesMoffatProfilesBetterThanAGaussian() throws {
        let sharp = moffatField(fwhm: 3, noise: 1, seed: 1), broad = moffatField(fwhm: 4.5, noise: 1, seed: 2)
        let broadClean = moffatField(fwhm: 4.5, noise: 0, seed: 3)
        let k = try MatchingKernel.fit(sharp: sharp, broad: broad, halfWidth: 7)
        XCTAssertEqual(k.taps.count, 15 * 15)
        XCTAssertEqual(k.taps.reduce(0, +), 1, accuracy: 1e-9, "the kernel keeps the flux")
        // Centred: its first moments are within a tenth of a pixel of 0.
        let my = k.taps.enumerated().reduce(0.0) { $0 + $1.element * Double($1.offset / 15 - 7) }
        let mx = k.taps.enumerated().reduce(0.0) { $0 + $1.element * Double($1.offset % 15 - 7) }
        XCTAssertEqual(my, 0, accuracy: 0.1)
        XCTAssertEqual(mx, 0, accuracy: 0.1)
        let fitted = k.apply(sharp, threads: 2)
        let gaussian = Denoisers.gaussian(sharp, sigma: (4.5 * 4.5 - 9).squareRoot() / 2.3548, threads: 2)
        let fittedError = Metrics.mse(broadClean, fitted, crop: 10), gaussianError = Metrics.mse(broadClean, gaussian, crop: 10)
        // The sharp image's own noise, blurred, is part of both errors; the Gaussian also
        // leaves the profiles' difference.
        XCTAssertLessThan(fittedError, 0.5 * gaussianError, "fitted \(fittedError), Gaussian \(gaussianError)")
        // An image with no star 10 sigma above its sky is refused with a message.
        let flat = moffatField(fwhm: 3, noise: 1, seed: 4).map { _ in 100 }
        XCTAssertThrowsError(try MatchingKernel.fit(sharp: flat, broad: flat, halfWidth: 7))
    }
}

/// `DenoiseEvaluator.referenceNoise`: a real reference's own noise, estimated from its sky and
/// taken out of each method's squared error, recovers the PSNR against the noiseless field.
final class ReferenceNoiseTests: XCTestCase {
    func testNoiseRemovedScoresMatchTheNoiselessField() throws {
        // field(seed:) adds unit white noise to 40 fixed stars; the noiseless field is their
        // difference from a draw with the noise scaled away.
        let reference = PSFMatchedScoringTests.field(fwhm: 3.5, seed: 11)
        var noise = Image2D(height: reference.height, width: reference.width)
        var h = SplitMix64(seed: 11)
        for i in 0..<noise.count { noise.pixels[i] = NoiseStreams.normal(&h) }
        let clean = Image2D(height: reference.height, width: reference.width, pixels: zip(reference.pixels, noise.pixels).map { $0 - $1 })
        var ev = DenoiseEvaluator()
        ev.threads = 2
        ev.detection.threshold = 5
        ev.referenceNoise = true
        var ref = try ev.prepare(name: "field", truth: reference)
        XCTAssertNil(ref.noiseVariance)
        let sky = try XCTUnwrap(ev.referenceSky(ref))
        XCTAssertEqual(sky.level, 0, accuracy: 0.05, "the field's sky is 0")
        (ref.skyLevel, ref.noiseVariance) = (sky.level, sky.variance)
        let v = try XCTUnwrap(ref.noiseVariance)
        XCTAssertEqual(v, 1, accuracy: 0.06, "the reference's noise variance is 1")
        let ceiling = try XCTUnwrap(ref.psnrCeiling)
        XCTAssertEqual(ceiling, 10 * log10(ref.range * ref.range / v), accuracy: 1e-9)
        // An estimate with independent noise of sigma 0.5: scored against the reference, its
        // error holds both noises (variance 1.25); removed, it is close to its PSNR against the
        // noiseless field (variance 0.25), 7 dB better.
        var g = SplitMix64(seed: 99)
        let estimate = clean.map { $0 + 0.5 * NoiseStreams.normal(&g) }
        let r = try ev.score(image: "field", method: "noisy-half", estimate: estimate, reference: ref, inputSNR: nil, seconds: 0, parameters: "")
        let againstField = Metrics.psnr(clean, estimate, dataRange: ref.range)
        let removed = try XCTUnwrap(r.psnrReferenceNoiseRemoved)
        XCTAssertEqual(removed, againstField, accuracy: 0.35, "noise removed \(removed) vs against the field \(againstField)")
        XCTAssertGreaterThan(removed, r.psnr + 5)
        // Over the faint pixels (the reference below its sky + 5 sigma) the same holds.
        let faint = zip(reference.pixels, clean.pixels).map { $0.0 < sky.level + 5 * sky.variance.squareRoot() }
        let faintField = Metrics.psnr(clean, estimate, dataRange: ref.range, mask: faint)
        XCTAssertEqual(try XCTUnwrap(r.psnrFaintReferenceNoiseRemoved), faintField, accuracy: 0.35)
        // The noiseless field itself scores the ceiling as scored, and no error once removed.
        let perfect = try ev.score(image: "field", method: "field", estimate: clean, reference: ref, inputSNR: nil, seconds: 0, parameters: "")
        XCTAssertEqual(perfect.psnr, ceiling, accuracy: 0.3)
        XCTAssertGreaterThan(perfect.psnrReferenceNoiseRemoved ?? 0, ceiling + 8)
        // Without the option nothing is estimated.
        ev.referenceNoise = false
        let plain = try ev.score(image: "field", method: "field", estimate: clean, reference: try ev.prepare(name: "field", truth: reference),
                                 inputSNR: nil, seconds: 0, parameters: "")
        XCTAssertNil(plain.psnrReferenceNoiseRemoved)
    }
}

/// `DenoiseEvaluator.restoringFlux`: the low frequencies of what a denoiser removed, added back.
final class FluxRestoreTests: XCTestCase {
    func testRestoresSourceFluxAndReturnsLittleNoise() throws {
        let n = 96
        var source = Image2D(height: n, width: n)
        let s = 5.0 / 2.3548
        for y in 0..<n { for x in 0..<n {
            let dy = Double(y) - 48, dx = Double(x) - 48
            source[y, x] = 1000 / (2 * Double.pi * s * s) * exp(-(dy * dy + dx * dx) / (2 * s * s))
        } }
        var g = SplitMix64(seed: 3)
        var noise = Image2D(height: n, width: n)
        for i in 0..<noise.count { noise.pixels[i] = NoiseStreams.normal(&g) }
        let input = Image2D(height: n, width: n, pixels: zip(source.pixels, noise.pixels).map { $0 + $1 })
        // A "denoiser" that removes all the noise and 20% of the source.
        let output = Image2D(height: n, width: n, pixels: source.pixels.map { 0.8 * $0 })
        XCTAssertEqual(try DenoiseEvaluator.restoringFlux(input, input: input, sigma: 1.5).pixels, input.pixels.map { Double(Float($0)) })
        let back = try DenoiseEvaluator.restoringFlux(output, input: input, sigma: 1.5)
        func aperture(_ img: Image2D) -> Double {
            var t = 0.0
            for y in 38...58 { for x in 38...58 where (y - 48) * (y - 48) + (x - 48) * (x - 48) <= 100 { t += img[y, x] } }
            return t
        }
        let truth = aperture(source)
        XCTAssertEqual(aperture(output) / truth, 0.8, accuracy: 0.005)
        XCTAssertEqual(aperture(back) / truth, 1, accuracy: 0.03)
        // Far from the source the returned noise is the Gaussian-filtered noise: variance 1 / (4 pi s^2).
        var v = 0.0, c = 0
        for y in 4..<30 { for x in 4..<(n - 4) { v += back[y, x] * back[y, x]; c += 1 } }
        XCTAssertEqual(v / Double(c), 1 / (4 * Double.pi * 1.5 * 1.5), accuracy: 0.015)
    }
}
