import Reporting
import XCTest

final class ReportingTests: XCTestCase {
    func testAsinhStretchIsMonotonicAndClamps() {
        let reference: [Float] = (0..<1000).map { Float($0) }
        let values: [Float] = [-50, 0, 10, 500, 998, 1000, 5000, 1e6, .nan]
        let g = Preview.asinhStretch(values, reference: reference)
        XCTAssertEqual(g[0], 0)
        XCTAssertEqual(g.last, 0, "NaN shows black")
        for k in 1..<(values.count - 2) { XCTAssertLessThanOrEqual(g[k - 1], g[k], "monotonic at \(values[k])") }
        XCTAssertEqual(g[6], 255); XCTAssertEqual(g[7], 255)
    }

    func testPNGStructure() {
        var c = Canvas(width: 3, height: 2)
        c.set(1, 1, RGB(10, 20, 30))
        let png = c.png()
        XCTAssertEqual(Array(png[0..<8]), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        XCTAssertEqual(Array(png[12..<16]), Array("IHDR".utf8))
        XCTAssertEqual(Array(png.suffix(8).prefix(4)), Array("IEND".utf8))
    }
}
