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
        let norm = Normalization.fit(.skyMAD, pixels: px, invalid: invalid)
        XCTAssertEqual(norm.offset, 1000, accuracy: 0.2)
        XCTAssertEqual(norm.scale, 5, accuracy: 0.15)
        let net = norm.apply(px, invalid: invalid)
        XCTAssert(net[5].isNaN)
        let back = norm.invert(net)
        for i in 0..<n where !invalid[i] { XCTAssertEqual(back[i], px[i], accuracy: 1e-3) }
        XCTAssertEqual(Normalization.Kind(rawValue: "sky_mad"), .skyMAD)
        // A constant image has no noise: the scale falls back to 1.
        let flat = Normalization.fit(.skyMAD, pixels: [Float](repeating: 7, count: 100), invalid: [Bool](repeating: false, count: 100))
        XCTAssertEqual(flat.offset, 7); XCTAssertEqual(flat.scale, 1)
    }
}
