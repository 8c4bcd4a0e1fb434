import Foundation
import ModelFormat
import XCTest

/// Seeded test data.
typealias TestRNG = SplitMix64

func randomInit(seed: UInt64) -> ModelBuilder.Initializer {
    var rng = TestRNG(seed: seed)
    return { _, shape, fanIn, _ in
        let s = Float(1 / Double(fanIn).squareRoot())
        return (0..<shape.reduce(1, *)).map { _ in rng.float(-s, s) }
    }
}

/// A small model using every op of format v1.
func everyOpModel(storage: DType = .float32) throws -> Model {
    var b = ModelBuilder(name: "every-op", normalization: "minmax", initializer: randomInit(seed: 7))
    b.storage = storage
    var x = b.conv(b.input.name, out: 4, kernel: 3, padding: .same)
    x = b.leakyRelu(x, alpha: 0.02)
    let skip = x
    x = b.maxpool(x)
    x = b.conv(x, out: 6, kh: 1, kw: 3, padding: .same)
    x = b.relu(x)
    let ratio = b.constantChannel(like: x, value: 2.5, parameter: "exposure_ratio")
    x = b.concat([x, ratio])
    x = b.convTranspose(x, out: 3)
    x = b.concat([skip, x])
    x = b.conv(x, out: 1, kernel: 1)
    var m = try b.build(output: x)
    m.metadata["description"] = .string("test model: every op")
    m.metadata["training.epochs"] = .int(3)
    m.metadata["training.losses"] = .floats([0.5, 0.25])
    m.metadata["flag"] = .bool(true)
    return m
}

final class CRCTests: XCTestCase {
    func testCheckValue() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
    }

    func testSliceBy8MatchesBytewise() {
        var rng = TestRNG(seed: 1)
        for n in [1, 7, 8, 9, 63, 64, 65, 1000] {
            let data = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var c: UInt32 = 0xFFFF_FFFF
            for b in data {
                c ^= UInt32(b)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            XCTAssertEqual(CRC32C.checksum(data), ~c, "length \(n)")
            XCTAssertEqual(data.withUnsafeBytes { CRC32C.softwareUpdate(0, $0) }, ~c, "tables, length \(n)")
            // Incremental update equals one pass.
            let split = n / 3
            let a = data.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[0..<split])) }
            let b = data.withUnsafeBytes { CRC32C.update(a, UnsafeRawBufferPointer(rebasing: $0[split...])) }
            XCTAssertEqual(b, ~c)
        }
    }

    /// The CPU-instruction path (three interleaved streams joined by polynomial shifts, for
    /// buffers of 24 KiB and more) equals the table path on every length around its block size,
    /// at odd alignments and from a non-zero running CRC.
    func testHardwareMatchesSoftware() throws {
        try XCTSkipUnless(CRC32C.hardware, "no CRC-32C instruction on this CPU")
        var rng = TestRNG(seed: 2)
        let data = (0..<(3 * 24576 + 100)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        data.withUnsafeBytes { all in
            for (start, n) in [(0, 0), (1, 1), (3, 15), (0, 24575), (0, 24576), (5, 24577), (7, 49152 + 9), (0, 3 * 24576), (11, 3 * 24576 + 89)] {
                let buf = UnsafeRawBufferPointer(rebasing: all[start..<(start + n)])
                for seed: UInt32 in [0, 0xDEAD_BEEF] {
                    XCTAssertEqual(CRC32C.update(seed, buf), CRC32C.softwareUpdate(seed, buf), "start \(start) length \(n) seed \(seed)")
                }
            }
        }
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    }
}

final class HalfFloatTests: XCTestCase {
    func testEveryHalfRoundTrips() {
        for bits in 0...UInt16.max {
            let f = HalfFloat.toFloat(bits)
            let back = HalfFloat.fromFloat(f)
            if f.isNaN { XCTAssertTrue(HalfFloat.toFloat(back).isNaN); continue }
            XCTAssertEqual(back, bits, "half 0x\(String(bits, radix: 16)) -> \(f)")
        }
    }

    func testRoundingAndRange() {
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(1.0)), 1.0)
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(65504)), 65504)
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(70000)), .infinity)
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(-1e-9)), 0)
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1.
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(1 + 0x1p-11)), 1)
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(1 + 0x1p-11 + 0x1p-20)), 1 + 0x1p-10)
        // Smallest subnormal.
        XCTAssertEqual(HalfFloat.toFloat(HalfFloat.fromFloat(0x1p-24)), 0x1p-24)
        var rng = TestRNG(seed: 3)
        for _ in 0..<10000 {
            let f = rng.float(-1000, 1000)
            let r = HalfFloat.toFloat(HalfFloat.fromFloat(f))
            XCTAssertLessThanOrEqual(abs(r - f), abs(f) * 0x1p-11 + 0x1p-25)
        }
    }
}

final class RoundTripTests: XCTestCase {
    func testEveryOpModelRoundTrips() throws {
        let m = try everyOpModel()
        let bytes = try ModelWriter.encode(m)
        XCTAssertEqual(bytes.count % 64, 0)
        let r = try ModelReader(bytes: bytes)
        let back = try r.model()
        XCTAssertEqual(back, m)
        XCTAssertEqual(r.version.major, 1)
        for e in r.tensors { XCTAssertEqual(e.fileOffset % 64, 0, "tensor \(e.name) must be 64-byte aligned") }
        // Deterministic: encoding twice gives the same bytes.
        XCTAssertEqual(try ModelWriter.encode(back), bytes)
    }

    func testFloat16Storage() throws {
        let m = try everyOpModel(storage: .float16)
        let r = try ModelReader(bytes: try ModelWriter.encode(m))
        let back = try r.model()
        for (name, t) in m.tensors {
            let b = back.tensors[name]!
            XCTAssertEqual(b.storage, .float16)
            for (x, y) in zip(t.values, b.values) { XCTAssertEqual(y, HalfFloat.toFloat(HalfFloat.fromFloat(x))) }
        }
        XCTAssertLessThan(try ModelWriter.encode(m).count, try ModelWriter.encode(try everyOpModel()).count)
    }

    func testFileRoundTripAndMapping() throws {
        let m = try everyOpModel()
        let path = NSTemporaryDirectory() + "acnn-\(UUID().uuidString).acnn"
        defer { unlink(path) }
        try ModelWriter.write(m, to: path)
        let r = try ModelReader(path: path)
        XCTAssertEqual(try r.model(), m)
        XCTAssertThrowsError(try AtomicFile.write([1, 2, 3], to: path, overwrite: false))
        XCTAssertEqual(try ModelReader(path: path).fileChecksum, r.fileChecksum)
    }

    func testGeometry() throws {
        let f = try Architectures.flamary3(initializer: randomInit(seed: 1))
        let a = try GraphAnalysis(graph: f.graph, tensorShapes: f.tensors.mapValues { $0.shape })
        XCTAssertEqual(a.geometry.receptiveField, [19, 19])
        XCTAssertEqual(a.geometry.outputOffset, [9, 9])
        XCTAssertEqual(a.geometry.sizeMultiple, 1)
        XCTAssertEqual(try a.shrink(), [18, 18])
        XCTAssertEqual(try a.outputSize(height: 32, width: 32).height, 14)
        let expectedFlops: Double = 2 * Double(64 * 100 + 16 * 64 * 36 + 16 * 25)
        XCTAssertEqual(a.flopsPerOutputPixel, expectedFlops, accuracy: 1e-6)
        XCTAssertEqual(f.metadata["receptive_field"], .ints([19, 19]))

        let u = try Architectures.unet(widths: [4, 8, 16], initializer: randomInit(seed: 2))
        let ua = try GraphAnalysis(graph: u.graph, tensorShapes: u.tensors.mapValues { $0.shape })
        XCTAssertEqual(ua.geometry.sizeMultiple, 4)
        XCTAssertEqual(ua.geometry.outputOffset, [0, 0])
        XCTAssertEqual(try ua.shrink(), [0, 0])
        XCTAssertEqual(try ua.outputSize(height: 36, width: 40).width, 40)
        XCTAssertThrowsError(try ua.outputSize(height: 34, width: 40))
        // Receptive field of the 2-level U-net: each level adds two 3x3 convs at its scale.
        XCTAssertGreaterThan(ua.geometry.receptiveField[0], 1 + 2 * 2 * (1 + 2 + 4))
        XCTAssertGreaterThanOrEqual(ua.geometry.halo.min()!, 2 * (1 + 2 + 4))
    }
}

final class ValidationTests: XCTestCase {
    func model(_ edit: (inout Model) -> Void) throws -> [UInt8] {
        var m = try everyOpModel()
        edit(&m)
        return try ModelWriter.encode(m)
    }

    func assertGraphError(_ edit: (inout Model) -> Void, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try model(edit), file: file, line: line) { e in
            XCTAssertTrue("\(e)".contains(fragment), "'\(e)' should mention '\(fragment)'", file: file, line: line)
        }
    }

    func testGraphErrors() {
        assertGraphError({ $0.graph.nodes[1].inputs = ["nowhere"] }, "nothing produces")
        assertGraphError({ $0.graph.nodes[0].inputs = [$0.graph.nodes[2].output] }, "cycle")
        assertGraphError({ $0.graph.outputs = ["missing"] }, "not produced")
        assertGraphError({ $0.graph.nodes[1].name = $0.graph.nodes[0].name }, "used twice")
        assertGraphError({ $0.tensors[$0.graph.nodes[0].params[0]]!.shape = [4, 2, 3, 3]; $0.tensors[$0.graph.nodes[0].params[0]]!.values += [Float](repeating: 0, count: 36) }, "input channels")
        assertGraphError({ $0.graph.nodes[0].attributes["stride"] = .int(2) }, "stride")
        assertGraphError({ $0.graph.nodes[0].attributes["dilation"] = .int(2) }, "unknown attribute")
        assertGraphError({ $0.graph.nodes[1].attributes["alpha"] = .float(.nan) }, "alpha")
        assertGraphError({ $0.graph.nodes[0].params[0] = "ghost" }, "not in the tensor table")
        assertGraphError({ $0.metadata["normalization"] = .string("magic") }, "normalization")
    }

    func testReaderErrors() throws {
        let good = try ModelWriter.encode(try everyOpModel())
        func expect(_ bytes: [UInt8], _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try ModelReader(bytes: bytes).model(), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "'\(e)' should mention '\(fragment)'", line: line)
            }
        }
        expect([], "truncated")
        expect(Array("SIMPLE  =                    T".utf8) + [UInt8](repeating: 32, count: 100), "bad magic")
        var v = good; v[12] = 2  // major version 2
        expect(v, "unsupported .acnn version 2")
        v = good; v[4] = 0x0A  // CR LF -> LF LF, text-mode damage
        expect(v, "text mode")
        v = good; v[8] = 0x0A; v[9] = 0x0B; v[10] = 0x0C; v[11] = 0x0D  // big-endian BOM
        expect(v, "byte-order mark")
        expect(Array(good.dropLast(64)), "truncated")
        expect(good + [0], "trailing")
        v = good; v[100] ^= 1
        expect(v, "checksum")
        v = good; v[v.count - 1] ^= 0x40  // last tensor byte or padding
        XCTAssertThrowsError(try ModelReader(bytes: v).model())
    }

    /// Thousands of corrupted copies: each must throw, none may crash.
    func testMutationsAlwaysThrow() throws {
        let good = try ModelWriter.encode(try everyOpModel())
        let header = try ModelReader(bytes: good)
        _ = header
        let headerLength = Int(good[20]) | Int(good[21]) << 8 | Int(good[22]) << 16 | Int(good[23]) << 24
        var cases = 0
        // Every truncation through the header and beyond, step 1, then every 7th byte to the end.
        var cut = 0
        while cut < good.count {
            XCTAssertThrowsError(try ModelReader(bytes: Array(good[0..<cut])).model(), "truncated at \(cut)")
            cases += 1
            cut += cut < headerLength + 64 ? 1 : 7
        }
        // Random flips anywhere.
        var rng = TestRNG(seed: 99)
        for _ in 0..<4000 {
            var v = good
            let flips = Int.random(in: 1...3, using: &rng)
            for _ in 0..<flips {
                let i = Int.random(in: 0..<v.count, using: &rng)
                v[i] ^= UInt8.random(in: 1...255, using: &rng)
            }
            XCTAssertThrowsError(try ModelReader(bytes: v).model())
            cases += 1
        }
        // Garbage of every small length.
        for n in 0..<200 {
            let v = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            XCTAssertThrowsError(try ModelReader(bytes: ModelFile.magic + v))
            cases += 1
        }
        XCTAssertGreaterThan(cases, 5000)
    }

    /// Corrupt fields with a valid CRC recomputed, so the structural checks themselves are reached.
    func testStructuralCorruptionWithValidCRC() throws {
        let good = try ModelWriter.encode(try everyOpModel())
        let headerLength = Int(good[20]) | Int(good[21]) << 8 | Int(good[22]) << 16 | Int(good[23]) << 24
        var rng = TestRNG(seed: 5)
        var threw = 0
        for _ in 0..<3000 {
            var v = good
            let i = Int.random(in: 56..<headerLength, using: &rng)
            if i >= 48 && i < 52 { continue }
            v[i] ^= UInt8.random(in: 1...255, using: &rng)
            v[48] = 0; v[49] = 0; v[50] = 0; v[51] = 0
            let crc = CRC32C.checksum(Array(v[0..<headerLength]))
            for k in 0..<4 { v[48 + k] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k))) }
            // Some flips are harmless (a metadata string byte); none may crash.
            do { _ = try ModelReader(bytes: v).model() } catch { threw += 1 }
        }
        XCTAssertGreaterThan(threw, 1000)
    }
}
