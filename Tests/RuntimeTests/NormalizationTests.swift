import Foundation
import ModelFormat
import Runtime
import XCTest

final class NormalizationTests: XCTestCase {
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
}
