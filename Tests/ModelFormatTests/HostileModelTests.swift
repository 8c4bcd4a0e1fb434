import Foundation
import ModelFormat
import XCTest

/// Damaged models that reach the parser with valid checksums (found by `astrocnn fuzz`): every
/// one throws a clear error, none traps.
final class HostileModelTests: XCTestCase {
    func model() throws -> [UInt8] {
        var rng = SplitMix64(seed: 1)
        return try ModelWriter.encode(Architectures.flamary1 { _, shape, _, _ in (0..<shape.reduce(1, *)).map { _ in rng.float() } })
    }

    /// Re-computes the header CRC after a mutation, so that the reader's other checks are what
    /// must catch it.
    func fixHeaderCRC(_ b: inout [UInt8]) {
        let headerLength = Int(UInt32(b[20]) | UInt32(b[21]) << 8 | UInt32(b[22]) << 16 | UInt32(b[23]) << 24)
        var h = Array(b[0..<headerLength])
        for i in 48..<52 { h[i] = 0 }
        let crc = CRC32C.checksum(h)
        for i in 0..<4 { b[48 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
    }

    /// dataLength = 2^64 - 1 made dataOffset + dataLength overflow (a trap) before the fix.
    func testHugeDataLengthIsAnErrorNotATrap() throws {
        for value in [UInt64.max, UInt64.max - 63, 1 << 63] {
            var b = try model()
            for i in 0..<8 { b[40 + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            fixHeaderCRC(&b)
            XCTAssertThrowsError(try ModelReader(bytes: b)) { XCTAssertTrue(String(describing: $0).contains("data offset"), "\($0)") }
        }
    }

    /// default_tile outside 1...65536 (a damaged or hostile value would size a tile's buffers).
    func testDefaultTileOutOfRangeIsRefused() throws {
        var rng = SplitMix64(seed: 2)
        var m = try Architectures.flamary1 { _, shape, _, _ in (0..<shape.reduce(1, *)).map { _ in rng.float() } }
        for bad: MetaValue in [.int(0), .int(-5), .int(1 << 40), .string("512"), .float(256)] {
            m.metadata["default_tile"] = bad
            XCTAssertThrowsError(try ModelWriter.encode(m), "\(bad)")
        }
        m.metadata["default_tile"] = .int(512)
        XCTAssertNoThrow(try ModelReader(bytes: try ModelWriter.encode(m)))
    }
}
