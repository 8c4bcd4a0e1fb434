import Foundation
import Imaging
import ModelFormat
import Runtime
import Trainer
import XCTest

final class CropSamplerTests: XCTestCase {
    /// The inputs and targets of `specs` (32 x 32 crops).
    static func fill(_ s: CropSampler, _ specs: [CropSpec]) -> ([Float], [Float]) {
        var inputs = [Float](repeating: 0, count: specs.count * 32 * 32), targets = inputs
        inputs.withUnsafeMutableBufferPointer { ib in targets.withUnsafeMutableBufferPointer { tb in
            s.fill(specs[...], inputs: ib.baseAddress!, targets: tb.baseAddress!)
        } }
        return (inputs, targets)
    }

    /// A sky of level 0 (sky 50 subtracted), noise-free, with bright sources in the top-left
    /// 40 x 40 pixels only.
    func image() -> SourceImage {
        var img = Image2D(height: 120, width: 100)
        for y in 0..<120 { for x in 0..<100 { img[y, x] = Double((x * 7 + y * 3) % 5) * 0.01 } }
        for y in stride(from: 3, to: 40, by: 6) { for x in stride(from: 3, to: 40, by: 6) { img[y, x] = 400 } }
        return SourceImage(name: "t", checksum: 0, raw: img)
    }

    func testPlanRejectsEmptyCropsAndIsAPureFunctionOfTheSeed() throws {
        let s = try CropSampler(images: [LongExposure(image: image(), gain: 2, readNoise: 3, sky: 50)], ratios: [2, 3], cropSize: 32)
        let a = s.plan(count: 200, seed: 5, stream: 1), b = s.plan(count: 200, seed: 5, stream: 1)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, s.plan(count: 200, seed: 5, stream: 2))
        // Crops must touch the source region (top-left 40 x 40), since all others are empty.
        XCTAssert(a.allSatisfy { $0.y < 40 && $0.x < 40 }, "empty crops were drawn")
        XCTAssertEqual(Set(a.map(\.ratio)), [2, 3])
        XCTAssertEqual(Set(a.map(\.variant)).count, 8)
    }

    func testFillGivesTheOrientedTruthAndTheNoiseModelInNetworkUnits() throws {
        let src = image()
        let long = LongExposure(image: src, gain: 2, readNoise: 3, sky: 50)
        let s = try CropSampler(images: [long], ratios: [4], cropSize: 32)
        let (offset, scale, _) = s.units[0][0]
        // The short exposure's sky noise at ratio 4: (r/g) sqrt(sky g / r + RON^2) in image units.
        let expectSigma = (4.0 / 2) * (50 * 2 / 4 + 9.0).squareRoot()
        XCTAssertEqual(scale, expectSigma, accuracy: 0.04 * expectSigma)
        XCTAssertEqual(offset, 0.02, accuracy: 0.3)
        let specs = s.plan(count: 16, seed: 1, stream: 1)
        var inputs = [Float](repeating: 0, count: 16 * 32 * 32), targets = inputs
        inputs.withUnsafeMutableBufferPointer { ib in targets.withUnsafeMutableBufferPointer { tb in
            s.fill(specs[...], inputs: ib.baseAddress!, targets: tb.baseAddress!)
        } }
        var diffs: [Double] = []
        for (k, sp) in specs.enumerated() {
            let crop = src.raw.crop(y: sp.y, x: sp.x, height: 32, width: 32).dihedral(sp.variant)
            for i in 0..<(32 * 32) {
                XCTAssertEqual(Double(targets[k * 1024 + i]), (crop.pixels[i] - offset) / scale, accuracy: 1e-5)
                if crop.pixels[i] < 1 { diffs.append(Double(inputs[k * 1024 + i] - targets[k * 1024 + i])) }
            }
        }
        // On the sky the input minus the target is the short exposure's noise: unit variance.
        let m = diffs.reduce(0, +) / Double(diffs.count)
        let sd = (diffs.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(diffs.count)).squareRoot()
        XCTAssertEqual(sd, 1, accuracy: 0.05)
        XCTAssertEqual(m, 0, accuracy: 0.05)
        XCTAssertThrowsError(try CropSampler(images: [long], ratios: [2], cropSize: 200))
        XCTAssertThrowsError(try CropSampler(images: [long], ratios: [0.5], cropSize: 32))
        XCTAssertThrowsError(try CropSampler(images: [LongExposure(image: src, gain: 0)], ratios: [2], cropSize: 32))
    }

    /// sky_vst crops: the sky_mad crops variance-stabilised with q = the short exposure's sky
    /// noise in electrons (sky sigma x gain / ratio); the noise on the sources (about 30 sky sigma
    /// here, where sky_mad units give it a spread of 2.6) is then 1, as on the sky.
    func testSkyVSTCropsStabiliseTheNoiseOnSources() throws {
        let long = LongExposure(image: image(), gain: 2, readNoise: 3, sky: 50)
        let mad = try CropSampler(images: [long], ratios: [4], cropSize: 32)
        let vst = try CropSampler(images: [long], ratios: [4], cropSize: 32, normalization: .skyVST)
        let (_, scale, q) = vst.units[0][0]
        XCTAssertEqual(q, scale * 2 / 4, accuracy: 1e-12)
        XCTAssertEqual(vst.assumedNoiseElectrons, q)
        XCTAssertNil(mad.assumedNoiseElectrons)
        let specs = vst.plan(count: 64, seed: 1, stream: 1)
        let (mi, mt) = Self.fill(mad, specs), (vi, vt) = Self.fill(vst, specs)
        var onSources: [Double] = [], plain: [Double] = []
        for i in 0..<vi.count {
            XCTAssertEqual(Double(vi[i]), Normalization.stabilise(Double(mi[i]), q: q), accuracy: 1e-4 * max(1, abs(Double(vi[i]))))
            XCTAssertEqual(Double(vt[i]), Normalization.stabilise(Double(mt[i]), q: q), accuracy: 1e-4 * max(1, abs(Double(vt[i]))))
            if mt[i] > 10 { onSources.append(Double(vi[i] - vt[i])); plain.append(Double(mi[i] - mt[i])) }
        }
        func sd(_ a: [Double]) -> Double {
            let m = a.reduce(0, +) / Double(a.count)
            return (a.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(a.count - 1)).squareRoot()
        }
        XCTAssertGreaterThan(onSources.count, 300)
        XCTAssertEqual(sd(onSources), 1, accuracy: 0.12)
        XCTAssertGreaterThan(sd(plain), 2.2)
        XCTAssertThrowsError(try CropSampler(images: [long], ratios: [4], cropSize: 32, normalization: .noiseMAD))
    }

    /// --brightness-boost: half of the crops keep their pixels bit for bit; the others have the
    /// signal above the sky median multiplied by their factor (log-uniform in [1, B]), the sky
    /// below it untouched.
    func testBrightnessBoostScalesTheSignalOfHalfTheCrops() throws {
        let long = LongExposure(image: image(), gain: 2, readNoise: 3, sky: 50)
        let plain = try CropSampler(images: [long], ratios: [2], cropSize: 32)
        let boosted = try CropSampler(images: [long], ratios: [2], cropSize: 32, brightnessBoost: 100)
        let specs = plain.plan(count: 40, seed: 3, stream: 1)
        XCTAssertEqual(specs, boosted.plan(count: 40, seed: 3, stream: 1))
        let (pi, pt) = Self.fill(plain, specs), (bi, bt) = Self.fill(boosted, specs)
        let (offset, scale, _) = plain.units[0][0]
        let sky0 = RobustSky.estimate(count: long.image.raw.count) { long.image.raw.pixels[$0] }.median
        var kept = 0
        for (k, sp) in specs.enumerated() {
            let f = boosted.brightnessFactor(sp)
            XCTAssert(f >= 1 && f <= 100)
            XCTAssertEqual(plain.brightnessFactor(sp), 1)
            let r = (k * 1024)..<((k + 1) * 1024)
            if f == 1 {
                kept += 1
                XCTAssertEqual(Array(bi[r]), Array(pi[r])); XCTAssertEqual(Array(bt[r]), Array(pt[r]))
                continue
            }
            let crop = long.image.raw.crop(y: sp.y, x: sp.x, height: 32, width: 32).dihedral(sp.variant)
            for i in 0..<1024 {
                let v = crop.pixels[i]
                let expect = ((v > sky0 ? sky0 + (v - sky0) * f : v) - offset) / scale
                XCTAssertEqual(Double(bt[k * 1024 + i]), expect, accuracy: 1e-5 * max(1, abs(expect)))
            }
        }
        XCTAssert(kept > 8 && kept < 32, "\(kept) of 40 crops kept")
        XCTAssertThrowsError(try CropSampler(images: [long], ratios: [2], cropSize: 32, brightnessBoost: 0.5))
    }

    /// Recorrupted targets: on a long exposure with its own white noise (sigma 5 on a flat sky),
    /// the short exposure's noise and the target's are correlated as the plain sampler draws them
    /// (both hold the long exposure's noise: correlation 0.55 here) and uncorrelated with
    /// recorruption; the target's noise variance is then s^2 (1 + 1/alpha^2), and the sampler
    /// without it keeps its bits.
    func testRecorruptionDecorrelatesInputAndTargetNoise() throws {
        var img = Image2D(height: 96, width: 96)
        var g = SplitMix64(seed: 11)
        for i in 0..<img.count { img.pixels[i] = 5 * NoiseStreams.normal(&g) }
        let long = LongExposure(image: SourceImage(name: "n", checksum: 0, raw: img), gain: 2, readNoise: 3, sky: 50)
        func stats(_ alpha: Double) throws -> (corr: Double, targetSD: Double, inputs: [Float]) {
            let s = try CropSampler(images: [long], ratios: [2], cropSize: 32, minimumSourceFraction: 0, recorruption: alpha)
            let specs = s.plan(count: 60, seed: 3, stream: 1)
            let (x, t) = CropSamplerTests.fill(s, specs)
            let scale = s.units[0][0].scale
            // Network units; the truth is 0: subtract each array's mean and correlate.
            let mx = x.reduce(0.0) { $0 + Double($1) } / Double(x.count), mt = t.reduce(0.0) { $0 + Double($1) } / Double(t.count)
            var sxy = 0.0, sxx = 0.0, syy = 0.0
            for i in x.indices {
                let a = Double(x[i]) - mx, b = Double(t[i]) - mt
                sxy += a * b; sxx += a * a; syy += b * b
            }
            return (sxy / (sxx * syy).squareRoot(), (syy / Double(t.count)).squareRoot() * scale, x)
        }
        let plain = try stats(0), r2r = try stats(1), half = try stats(2)
        XCTAssertGreaterThan(plain.corr, 0.4)
        XCTAssertEqual(plain.targetSD, 5, accuracy: 0.3)
        XCTAssertEqual(r2r.corr, 0, accuracy: 0.02)
        XCTAssertEqual(half.corr, 0, accuracy: 0.02)
        XCTAssertEqual(r2r.targetSD, 5 * 2.0.squareRoot(), accuracy: 0.4)
        XCTAssertEqual(half.targetSD, 5 * 1.25.squareRoot(), accuracy: 0.35)
        // Off: the same bits as a sampler built without the argument.
        let s0 = try CropSampler(images: [long], ratios: [2], cropSize: 32, minimumSourceFraction: 0)
        XCTAssertEqual(CropSamplerTests.fill(s0, s0.plan(count: 60, seed: 3, stream: 1)).0, plain.inputs)
        XCTAssertThrowsError(try CropSampler(images: [long], ratios: [2], cropSize: 32, recorruption: -1))
    }
}
