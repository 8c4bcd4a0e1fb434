import Foundation
import ModelFormat
import Runtime
import XCTest

final class NormalizationTests: XCTestCase {
    /// The clipped sky estimate (in place, medians by selection) equals the plain one (sorted
    /// medians, a filtered copy per round) on skies with stars, constant and tiny samples.
    func testRobustSkyEqualsThePlainClippedEstimate() {
        func plain(_ values: [Double], clip: Double = 3, rounds: Int = 10) -> (Double, Double, Int) {
            var v = values.filter(\.isFinite)
            guard !v.isEmpty else { return (.nan, .nan, 0) }
            func med(_ a: [Double]) -> Double { let s = a.sorted(), n = s.count; return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]) }
            var m = 0.0, sg = 0.0
            for _ in 0..<rounds {
                m = med(v)
                sg = 1.4826 * med(v.map { abs($0 - m) })
                let kept = sg > 0 ? v.filter { abs($0 - m) <= clip * sg } : v
                if kept.count == v.count || kept.isEmpty { break }
                v = kept
            }
            return (m, sg, v.count)
        }
        var rng = SplitMix64(seed: 12)
        var cases: [[Double]] = [[7], [1, 2], [3, 3, 3, 3], [1, .nan, 2, .infinity, 3]]
        for n in [10, 101, 5_000, 200_000] {
            cases.append((0..<n).map { i in 100 + Double(rng.float(-1, 1)) * 3 + (i % 37 == 0 ? Double(rng.float(0, 5_000)) : 0) })
        }
        for c in cases {
            let got = RobustSky.estimate(count: c.count) { c[$0] }
            let want = plain(c)
            XCTAssertEqual(got.median.bitPattern, want.0.bitPattern, "n = \(c.count)")
            XCTAssertEqual(got.sigma.bitPattern, want.1.bitPattern, "n = \(c.count)")
            XCTAssertEqual(got.pixels, want.2, "n = \(c.count)")
        }
    }

    /// The median (by selection, not a sort) equals the sorted array's: odd and even counts,
    /// duplicates, sorted, reversed and constant inputs, and the sizes of the statistics pass.
    func testMedianBySelectionEqualsTheSortedMedian() {
        var rng = SplitMix64(seed: 11)
        var cases: [[Double]] = [[1], [2, 1], [3, 1, 2], [5, 5, 5, 5], Array(0..<1000).map(Double.init),
                                 Array((0..<1001).reversed()).map(Double.init)]
        for n in [2, 3, 4, 7, 10, 33, 100, 1_001, 4_096, 100_000] {
            cases.append((0..<n).map { _ in Double(rng.float(-1, 1)) })
            cases.append((0..<n).map { _ in Double(Int(rng.float(0, 5))) })   // many duplicates
        }
        for c in cases {
            let sorted = c.sorted(), n = c.count
            let expected = n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
            var v = c
            XCTAssertEqual(RobustSky.median(&v).bitPattern, expected.bitPattern, "n = \(n)")
            XCTAssertEqual(v.sorted(), sorted, "the values are only reordered")
        }
    }

    /// sky_mad measures the sky and its noise, not the sources, and inverts exactly.
    func testSkyMADIgnoresSourcesAndRoundTrips() {
        var g = SplitMix64(seed: 3)
        let n = 200 * 150
        var px = [Float](repeating: 0, count: n)
        for i in 0..<n {
            // Sky 1000 with noise 5 (sum of 12 uniforms: variance 12 * (2^2 / 12) = 4 -> x 2.5).
            var s: Float = 0
            for _ in 0..<12 { s += g.float() }
            px[i] = 1000 + 2.5 * s
            if i % 13 == 0 { px[i] += 3000 }
        }
        var invalid = [Bool](repeating: false, count: n)
        invalid[5] = true; px[5] = .nan
        let norm = Normalization.fit(.skyMAD, pixels: px, invalid: invalid, width: 200)
        XCTAssertEqual(norm.offset, 1000, accuracy: 0.2)
        XCTAssertEqual(norm.scale, 5, accuracy: 0.15)
        let net = norm.apply(px, invalid: invalid)
        XCTAssert(net[5].isNaN)
        let back = norm.invert(net)
        for i in 0..<n where !invalid[i] { XCTAssertEqual(back[i], px[i], accuracy: 1e-3) }
        XCTAssertEqual(Normalization.Kind(rawValue: "sky_mad"), .skyMAD)
        // A constant image has no noise: the scale falls back to 1.
        let flat = Normalization.fit(.skyMAD, pixels: [Float](repeating: 7, count: 100), invalid: [Bool](repeating: false, count: 100), width: 10)
        XCTAssertEqual(flat.offset, 7); XCTAssertEqual(flat.scale, 1)
    }

    /// noise_mad measures the noise from neighbouring pixels: on a frame filled by smooth
    /// structure (a nebula, where sky_mad's spread is the structure's) it still finds the noise,
    /// stars and NaNs do not move it, it inverts exactly, and any a x + b of the image gives the
    /// same network input.
    func testNoiseMADSeesTheNoiseNotTheStructure() {
        var g = SplitMix64(seed: 5)
        let (w, h) = (300, 200)
        var px = [Float](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w {
            var s: Float = 0
            for _ in 0..<12 { s += g.float() }
            // Nebula: a wave of amplitude 400 (gradients up to 17 per pixel) over a pedestal, noise sigma 5.
            px[y * w + x] = 1000 + 400 * Float(sin(Double(x) / 23) * cos(Double(y) / 31)) + 2.5 * s
            if (y * w + x) % 97 == 0 { px[y * w + x] += 5000 }
        } }
        var invalid = [Bool](repeating: false, count: w * h)
        for i in stride(from: 7, to: w * h, by: 501) { invalid[i] = true; px[i] = .nan }
        let sky = Normalization.fit(.skyMAD, pixels: px, invalid: invalid, width: w)
        let noise = Normalization.fit(.noiseMAD, pixels: px, invalid: invalid, width: w)
        XCTAssertGreaterThan(sky.scale, 50, "sky_mad's spread is the nebula's")
        XCTAssertEqual(noise.scale, 5, accuracy: 0.25)
        XCTAssertEqual(noise.offset, sky.offset)
        let back = noise.invert(noise.apply(px, invalid: invalid))
        for i in 0..<px.count where !invalid[i] { XCTAssertEqual(back[i], px[i], accuracy: 1e-3) }
        let other = Normalization.fit(.noiseMAD, pixels: px.map { 0.01 * $0 - 3 }, invalid: invalid, width: w)
        XCTAssertEqual(other.scale, 0.01 * noise.scale, accuracy: 1e-4 * noise.scale)
        XCTAssertEqual(other.offset, 0.01 * noise.offset - 3, accuracy: 1e-3)
        XCTAssertEqual(Normalization.Kind(rawValue: "noise_mad"), .noiseMAD)
        XCTAssertTrue(Normalization.Kind.noiseMAD.isAffineInvariant)
        // No spread in the second differences (rows that are linear ramps): the sky sigma, then 1.
        let steps = (0..<100).map { Float($0 % 10 + $0 / 10) }
        XCTAssertEqual(Normalization.fit(.noiseMAD, pixels: steps, invalid: [Bool](repeating: false, count: 100), width: 10).scale,
                       Normalization.fit(.skyMAD, pixels: steps, invalid: [Bool](repeating: false, count: 100), width: 10).scale)
        XCTAssertEqual(Normalization.fit(.noiseMAD, pixels: [Float](repeating: 7, count: 100), invalid: [Bool](repeating: false, count: 100), width: 10).scale, 1)
    }

    /// sky_vst: Poisson + read noise at any level comes out with a standard deviation near 1
    /// (sky_mad's grows as sqrt(1 + v/q)); the transform is continuous with slope 1 at the sky,
    /// and the inverse gives the pixels back.
    func testSkyVSTStabilisesPhotonNoiseAndRoundTrips() {
        var rng = SplitMix64(seed: 11)
        func normal() -> Double {
            let u1 = max(Double(rng.next() >> 11) / 9007199254740992, 1e-300), u2 = Double(rng.next() >> 11) / 9007199254740992
            return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
        }
        // Gain 2 e-/unit, sky 400 e-, read noise 5 e-: sky noise q = sqrt(425) e-. Five patches
        // of 4000 pixels: the sky, then sources of 1e3 ... 1e6 electrons per pixel.
        let gain = 2.0, sky = 400.0, ron = 5.0
        let levels = [0.0, 1e3, 1e4, 1e5, 1e6], m = 4000
        var px: [Float] = []
        for l in levels { for _ in 0..<(l == 0 ? 5 * m : m) {
            let e = sky + l
            px.append(Float((e + (e + ron * ron).squareRoot() * normal()) / gain))
        } }
        let invalid = [Bool](repeating: false, count: px.count)
        let fitted = Normalization.fit(.skyVST, pixels: px, invalid: invalid, width: 100)
        XCTAssertEqual(fitted.noiseElectrons, 0, "q needs the gain")
        let norm = fitted.resolvingNoise(gain: gain, fallback: 7)
        XCTAssertEqual(norm.noiseElectrons, (sky + ron * ron).squareRoot(), accuracy: 0.04 * 20.6)
        XCTAssertEqual(fitted.resolvingNoise(gain: nil, fallback: 7).noiseElectrons, 7)
        XCTAssertEqual(Normalization.fit(.skyMAD, pixels: px, invalid: invalid, width: 100).resolvingNoise(gain: gain, fallback: 7).noiseElectrons, 0)
        let u = norm.apply(px, invalid: invalid).map(Double.init)
        let plain = Normalization.fit(.skyMAD, pixels: px, invalid: invalid, width: 100).apply(px, invalid: invalid).map(Double.init)
        func sd(_ a: ArraySlice<Double>) -> Double {
            let mean = a.reduce(0, +) / Double(a.count)
            return (a.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(a.count - 1)).squareRoot()
        }
        var start = 0
        for l in levels {
            let n = l == 0 ? 5 * m : m
            XCTAssertEqual(sd(u[start..<start + n]), 1, accuracy: 0.06, "level \(l) e-")
            if l >= 1e4 { XCTAssertGreaterThan(sd(plain[start..<start + n]), 4, "sky_mad units keep the photon noise") }
            start += n
        }
        let back = norm.invert(norm.apply(px, invalid: invalid))
        for i in stride(from: 0, to: px.count, by: 7) { XCTAssertEqual(back[i], px[i], accuracy: 2e-6 * max(1, abs(px[i]))) }
        for q in [0.5, 20.0, 3000.0] {
            XCTAssertEqual(Normalization.stabilise(0, q: q), 0)
            XCTAssertEqual(Normalization.stabilise(1e-7, q: q) / 1e-7, 1, accuracy: 1e-6)
            for v in [-3.0, 0.25, 7, 1e3, 1e6] { XCTAssertEqual(Normalization.unstabilise(Normalization.stabilise(v, q: q), q: q), v, accuracy: 1e-9 * max(1, abs(v))) }
        }
        XCTAssertEqual(Normalization.Kind(rawValue: "sky_vst"), .skyVST)
    }

    /// restore takes sky_vst's gain from the option, else the header, else the model, records
    /// q in its report, and an identity network gives the image back in its own units.
    func testRestoreResolvesTheGainForSkyVST() throws {
        var b = ModelBuilder(name: "identity-vst", normalization: "sky_vst") { _, shape, _, _ in
            shape.count == 4 ? [1] : [Float](repeating: 0, count: shape.reduce(1, *))
        }
        let y = b.conv(b.input.name, out: 1, kernel: 1, name: "id")
        var model = try b.build(output: y)
        model.metadata["normalization.noise_electrons"] = .float(33)
        let net = try Network(model: model)
        XCTAssertEqual(net.assumedNoiseElectrons, 33)
        var rng = SplitMix64(seed: 2)
        let w = 64, h = 48
        let px = (0..<(w * h)).map { i in 100 + 4 * rng.float() + (i % 97 == 0 ? 5000 : 0) }
        let image = FITSImage(width: w, height: h, pixels: px, invalid: [Bool](repeating: false, count: w * h),
                              headerCards: ["GAIN    =                  2.5 / e-/ADU"])
        let sigma = Normalization.fit(.skyMAD, pixels: px, invalid: image.invalid, width: w).scale
        let fromHeader = try Restoration.restore(image, network: net)
        XCTAssertEqual(fromHeader.report.normalization.noiseElectrons, 2.5 * sigma, accuracy: 1e-9)
        for i in 0..<px.count { XCTAssertEqual(fromHeader.pixels[i], px[i], accuracy: 1e-3) }
        var opts = Restoration.Options(threads: 1)
        opts.gain = 4
        XCTAssertEqual(try Restoration.restore(image, network: net, options: opts).report.normalization.noiseElectrons, 4 * sigma, accuracy: 1e-9)
        let bare = FITSImage(width: w, height: h, pixels: px, invalid: image.invalid)
        XCTAssertEqual(try Restoration.restore(bare, network: net).report.normalization.noiseElectrons, 33)
        model.metadata["normalization.noise_electrons"] = .float(-1)
        XCTAssertThrowsError(try Network(model: model))
    }
}
