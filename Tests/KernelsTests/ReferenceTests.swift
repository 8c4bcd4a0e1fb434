import Kernels
import ModelFormat
import XCTest

/// Seeded test data.
typealias TestRNG = SplitMix64

/// Checks the scalar reference (the oracle of every fast kernel) against direct evaluation of the
/// defining formulas in Float64, and against hand-computed cases.
final class ReferenceTests: XCTestCase {
    func testConv2dMatchesFormulaInFloat64() {
        var rng = TestRNG(seed: 1)
        for _ in 0..<40 {
            let c = Int.random(in: 1...4, using: &rng), o = Int.random(in: 1...5, using: &rng)
            let kh = Int.random(in: 1...6, using: &rng), kw = Int.random(in: 1...6, using: &rng)
            let h = Int.random(in: kh...(kh + 9), using: &rng), w = Int.random(in: kw...(kw + 9), using: &rng)
            let padding: ConvPadding = Bool.random(using: &rng) ? .valid : .same
            let x = FeatureMap(channels: c, height: h, width: w, data: rng.floats(c * h * w))
            let wt = rng.floats(o * c * kh * kw), b = rng.floats(o)
            let y = Reference.conv2d(x, weight: wt, bias: b, outChannels: o, kh: kh, kw: kw, padding: padding)
            let (pt, pl) = padding == .same ? ((kh - 1) / 2, (kw - 1) / 2) : (0, 0)
            XCTAssertEqual(y.height, padding == .same ? h : h - kh + 1)
            for oc in 0..<o { for i in 0..<y.height { for j in 0..<y.width {
                var s = Double(b[oc])
                for ci in 0..<c { for u in 0..<kh { for v in 0..<kw {
                    let yy = i + u - pt, xx = j + v - pl
                    if yy >= 0 && yy < h && xx >= 0 && xx < w {
                        s += Double(wt[((oc * c + ci) * kh + u) * kw + v]) * Double(x[ci, yy, xx])
                    }
                } } }
                XCTAssertEqual(Double(y[oc, i, j]), s, accuracy: 1e-5)
            } } }
        }
    }

    func testHandComputedCases() {
        // 1 channel 3x3 input, 2x2 kernel, valid: cross-correlation (not flipped).
        let x = FeatureMap(channels: 1, height: 3, width: 3, data: [1, 2, 3, 4, 5, 6, 7, 8, 9])
        let y = Reference.conv2d(x, weight: [1, 0, 0, 0], bias: [0.5], outChannels: 1, kh: 2, kw: 2, padding: .valid)
        XCTAssertEqual(y.data, [1.5, 2.5, 4.5, 5.5])
        let z = Reference.conv2d(x, weight: [0, 0, 0, 1], bias: nil, outChannels: 1, kh: 2, kw: 2, padding: .same)
        // 'same' with an even kernel pads 0 top/left and 1 bottom/right.
        XCTAssertEqual(z.data, [5, 6, 0, 8, 9, 0, 0, 0, 0])
        XCTAssertEqual(Reference.maxpool2x2(FeatureMap(channels: 1, height: 2, width: 4, data: [1, 5, -1, -2, 3, 2, -3, -4])).data, [5, -1])
        XCTAssertEqual(Reference.relu(x).data, x.data)
        XCTAssertEqual(Reference.leakyRelu(FeatureMap(channels: 1, height: 1, width: 2, data: [-2, 3]), alpha: 0.02).data, [-0.04, 3])
        // Transposed 2x2/2: each input pixel paints W[o, c, u, v] * x into a 2x2 block.
        let t = Reference.convTranspose2x2(FeatureMap(channels: 1, height: 1, width: 2, data: [1, 2]), weight: [1, 2, 3, 4], bias: [10], outChannels: 1)
        XCTAssertEqual(t.height, 2); XCTAssertEqual(t.width, 4)
        XCTAssertEqual(t.data, [11, 12, 12, 14, 13, 14, 16, 18])
        let cat = Reference.concat([x, Reference.constantChannel(height: 3, width: 3, value: 7)])
        XCTAssertEqual(cat.channels, 2); XCTAssertEqual(cat[1, 2, 2], 7); XCTAssertEqual(cat[0, 1, 1], 5)
    }

    func testConvTransposeMatchesFormula() {
        var rng = TestRNG(seed: 2)
        let c = 3, o = 2, h = 3, w = 5
        let x = FeatureMap(channels: c, height: h, width: w, data: rng.floats(c * h * w))
        let wt = rng.floats(o * c * 4), b = rng.floats(o)
        let y = Reference.convTranspose2x2(x, weight: wt, bias: b, outChannels: o)
        for oc in 0..<o { for i in 0..<(2 * h) { for j in 0..<(2 * w) {
            var s = Double(b[oc])
            for ci in 0..<c { s += Double(wt[((oc * c + ci) * 2 + i % 2) * 2 + j % 2]) * Double(x[ci, i / 2, j / 2]) }
            XCTAssertEqual(Double(y[oc, i, j]), s, accuracy: 1e-6)
        } } }
    }
}
