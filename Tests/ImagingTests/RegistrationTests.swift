import Foundation
import Imaging
import ModelFormat
import XCTest

final class RegistrationTests: XCTestCase {
    /// A field of Gaussian stars (sigma 1.3 px) with its origin moved by (oy, ox), plus noise.
    func field(_ h: Int, _ w: Int, oy: Double, ox: Double, noise: Double, seed: UInt64, stars: UInt64 = 1) -> Image2D {
        var g = SplitMix64(seed: stars)
        let list = (0..<60).map { _ in (Double(g.next() % UInt64(h)), Double(g.next() % UInt64(w)), 50 + Double(g.next() % 500)) }
        var img = Image2D(height: h, width: w)
        var n = NoiseStreams.row(0, seed: seed)
        for y in 0..<h { for x in 0..<w {
            var v = 0.0
            for (sy, sx, f) in list {
                let d2 = (Double(y) - sy - oy) * (Double(y) - sy - oy) + (Double(x) - sx - ox) * (Double(x) - sx - ox)
                if d2 < 100 { v += f * exp(-d2 / (2 * 1.3 * 1.3)) }
            }
            img[y, x] = v + noise * NoiseStreams.normal(&n)
        } }
        return img
    }

    func testSubpixelShiftIsRecoveredAndTheReferenceAligned() throws {
        let reference = field(120, 150, oy: 0, ox: 0, noise: 0.5, seed: 1)
        for (oy, ox) in [(3.37, -5.81), (-0.45, 0.2), (0.0, 0.0), (7.0, 2.0)] {
            let frame = field(120, 150, oy: oy, ox: ox, noise: 2, seed: 2)
            let reg = try Registration.register(frame: frame, reference: reference)
            XCTAssertEqual(reg.dy, oy, accuracy: 0.03, "shift (\(oy), \(ox))")
            XCTAssertEqual(reg.dx, ox, accuracy: 0.03, "shift (\(oy), \(ox))")
            XCTAssertGreaterThan(reg.peak, 0.05)
            // The aligned reference matches the frame's noiseless content in the overlap.
            let aligned = reg.aligned(reference)
            let clean = field(120, 150, oy: oy, ox: ox, noise: 0, seed: 0)
            var worst = 0.0, n = 0
            for y in reg.y0..<reg.y1 { for x in reg.x0..<reg.x1 {
                XCTAssertFalse(aligned[y, x].isNaN)
                worst = max(worst, abs(aligned[y, x] - clean[y, x])); n += 1
            } }
            XCTAssertEqual(n, reg.overlapHeight * reg.overlapWidth)
            // Bicubic resampling of 1.3-px stars (peaks up to 550) loses a few percent at the peaks.
            XCTAssertLessThan(worst, reg.dy == reg.dy.rounded() && reg.dx == reg.dx.rounded() ? 3 : 40, "shift (\(oy), \(ox))")
            XCTAssert(aligned[0, 0].isNaN || reg.y0 == 0)
        }
    }

    func testUnrelatedOrMismatchedFramesAreRefused() {
        let a = field(100, 100, oy: 0, ox: 0, noise: 1, seed: 1, stars: 1)
        let b = field(100, 100, oy: 0, ox: 0, noise: 1, seed: 2, stars: 99)
        XCTAssertThrowsError(try Registration.register(frame: a, reference: b)) { e in
            XCTAssertTrue("\(e)".contains("do not overlap"), "\(e)")
        }
        XCTAssertThrowsError(try Registration.register(frame: a, reference: field(100, 90, oy: 0, ox: 0, noise: 1, seed: 1))) { e in
            XCTAssertTrue("\(e)".contains("differ in size"), "\(e)")
        }
        XCTAssertThrowsError(try Registration.register(frame: a, reference: field(100, 100, oy: 0, ox: 80, noise: 1, seed: 3))) { e in
            XCTAssertTrue("\(e)".contains("overlap"), "\(e)")
        }
        let nan = Image2D(height: 100, width: 100, repeating: .nan)
        XCTAssertThrowsError(try Registration.register(frame: nan, reference: a))
    }
}
