import CFITSIO
import Foundation
import ModelFormat
import Runtime
import XCTest

/// Streaming (row-band) restoration against the in-memory path.
final class StreamingTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    var flamary3: Network { get throws { try Network(path: repositoryRoot + "/models/flamary3.acnn") } }

    /// A sky-like image: smooth background, a few bright sources, seeded noise.
    func sky(_ w: Int, _ h: Int, seed: UInt64) -> [Double] {
        var rng = TestRNG(seed: seed)
        var v = [Double](repeating: 0, count: w * h)
        let stars = (0..<12).map { _ in (Double(rng.float(0, Float(w))), Double(rng.float(0, Float(h))), Double(rng.float(200, 3000))) }
        for y in 0..<h {
            for x in 0..<w {
                var s = 100 + 20 * sin(Double(x) / 37) * cos(Double(y) / 53) + Double(rng.float(-5, 5))
                for (sx, sy, f) in stars {
                    let d2 = (Double(x) - sx) * (Double(x) - sx) + (Double(y) - sy) * (Double(y) - sy)
                    if d2 < 100 { s += f * exp(-d2 / 8) }
                }
                v[y * w + x] = s
            }
        }
        return v
    }

    /// Small masked regions (blobs up to 5x5 and a short bad column) as on real detectors.
    func blobs(_ w: Int, _ h: Int, seed: UInt64) -> [Bool] {
        var rng = TestRNG(seed: seed)
        var m = [Bool](repeating: false, count: w * h)
        for _ in 0..<25 {
            let cx = Int(rng.float(0, Float(w - 1))), cy = Int(rng.float(0, Float(h - 1))), r = Int(rng.float(0, 2.99))
            for y in max(0, cy - r)...min(h - 1, cy + r) { for x in max(0, cx - r)...min(w - 1, cx + r) { m[y * w + x] = true } }
        }
        let col = w / 3
        for y in (h / 2)..<min(h, h / 2 + 20) { m[y * w + col] = true }
        return m
    }

    func streamed(_ path: String, network: Network, options: Restoration.Options = .init(), hdu: String? = nil) throws -> FITSImage {
        let out = dir + "/out-\(UUID().uuidString).fits"
        _ = try StreamingRestore.restoreFile(input: path, hdu: hdu, output: out, network: network, options: options)
        return try FITSIO.readImage(path: out)
    }

    func assertBitEqual(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        var diff = 0
        for i in 0..<min(a.count, b.count) where a[i].bitPattern != b[i].bitPattern && !(a[i].isNaN && b[i].isNaN) { diff += 1 }
        XCTAssertEqual(diff, 0, "\(what): \(diff) pixels differ", file: file, line: line)
    }

    func testStatisticsPassEqualsWholeImageFit() throws {
        // 1500x1400 = 2.1 M pixels: sky_mad subsamples on a stride of 2, crossing band edges.
        let w = 1500, h = 1400
        let values = sky(w, h, seed: 3)
        let mask = blobs(w, h, seed: 4)
        let path = dir + "/stats.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: values, nullMask: mask)
        let image = try FITSIO.readImage(path: path)
        let reader = try FITSReader(path: path)
        for kind in [Normalization.Kind.none, .clipMax, .minmax, .meanstd, .skyMAD, .noiseMAD, .skyVST] {
            let s = try StreamingRestore.statistics(reader, kind: kind)
            XCTAssertEqual(s.normalization, Normalization.fit(kind, pixels: image.pixels, invalid: image.invalid, width: w), "\(kind)")
            XCTAssertEqual(s.invalidPixels, image.invalidCount)
        }
    }

    func testStreamedRestoreEqualsInMemoryBitForBit() throws {
        let net = try flamary3
        let w = 700, h = 600
        let path = dir + "/plain.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: sky(w, h, seed: 1),
                          nullMask: [Bool](repeating: false, count: w * h), extraCards: ["CTYPE1  = 'RA---TAN'"])
        let image = try FITSIO.readImage(path: path)
        for (tile, threads) in [(nil, 2), (nil, 1), (96, 2)] as [(Int?, Int)] {
            let opts = Restoration.Options(threads: threads, tileSize: tile)
            let memory = try Restoration.restore(image, network: net, options: opts).pixels
            let s = try streamed(path, network: net, options: opts)
            assertBitEqual(s.pixels, memory, "tile \(tile ?? 0), \(threads) threads")
            XCTAssertEqual(s.keyword("CTYPE1"), "RA---TAN")
            XCTAssertEqual(s.keyword("ACNNICRC"), checksumString(try StreamingRestore.fileChecksum(path)))
        }
    }

    func testMasksScalingBitpixExtensionsAndCompressionStreamEqual() throws {
        let net = try flamary3
        let w = 530, h = 410
        let values = sky(w, h, seed: 7).map { $0.rounded() }
        let mask = blobs(w, h, seed: 8)
        let noMask = [Bool](repeating: false, count: w * h)
        var cases: [(String, String?)] = []
        // BITPIX 16 with BSCALE/BZERO and BLANK, in an extension.
        let p16 = dir + "/i16.fits"
        FITSFixture.write(path: p16, bitpix: 16, width: w, height: h, values: values.map { $0 * 0.5 + 10 }, nullMask: mask,
                          bscale: 0.5, bzero: 10, blank: -32768, inExtension: "SCI")
        cases.append((p16, "SCI"))
        // BITPIX 8, 32, 64, -64 and -32 with NaN blobs.
        for bp: Int32 in [8, 32, 64, -64, -32] {
            let p = dir + "/b\(bp).fits"
            let v = bp == 8 ? values.map { min(255, max(0, $0 - 50)) } : values
            FITSFixture.write(path: p, bitpix: bp, width: w, height: h, values: v, nullMask: bp < 0 ? mask : noMask)
            cases.append((p, nil))
        }
        // Tile-compressed.
        let fz = dir + "/c.fits.fz"
        FITSFixture.write(path: fz + "[compress R 100,100]", bitpix: 16, width: w, height: h, values: values, nullMask: noMask)
        cases.append((fz, nil))
        for (p, hdu) in cases {
            let image = try FITSIO.readImage(path: p, hdu: hdu)
            let opts = Restoration.Options(threads: 2)
            let memory = try Restoration.restore(image, network: net, options: opts).pixels
            let s = try streamed(p, network: net, options: opts, hdu: hdu)
            assertBitEqual(s.pixels, memory, p)
            XCTAssertEqual(s.pixels.filter(\.isNaN).count, image.invalidCount, p)
        }
        XCTAssertGreaterThan(try FITSIO.readImage(path: p16, hdu: "SCI").invalidCount, 100)
    }

    func testWindowsTileTheImageExactly() throws {
        let net = try flamary3
        let w = 600, h = 520
        let path = dir + "/win.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: sky(w, h, seed: 11), nullMask: blobs(w, h, seed: 12))
        let image = try FITSIO.readImage(path: path)
        let opts = Restoration.Options(threads: 2, tileSize: 128)
        let whole = try Restoration.restore(image, network: net, options: opts).pixels
        let reader = try FITSReader(path: path)
        let layout = try RestoreLayout(network: net, width: w, height: h, tileSize: 128)
        let stats = try StreamingRestore.statistics(reader, kind: net.normalization)
        var stitched = [Float](repeating: -1, count: w * h)
        for (rows, cols) in [(0..<256, 0..<384), (0..<256, 384..<600), (256..<520, 0..<128), (256..<520, 128..<600)] {
            try StreamingRestore.restoreWindow(reader, network: net, layout: layout, statistics: stats, rows: rows, columns: cols,
                                               options: opts) { y0, n, px in
                for y in 0..<n { for x in 0..<cols.count { stitched[(y0 + y) * w + cols.lowerBound + x] = px[y * cols.count + x] } }
            }
        }
        assertBitEqual(stitched, whole, "four windows")
        XCTAssertThrowsError(try StreamingRestore.restoreWindow(reader, network: net, layout: layout, statistics: stats, rows: 5..<100,
                                                                columns: 0..<w, options: opts) { _, _, _ in }) {
            XCTAssertTrue("\($0)".contains("tile grid"), "\($0)")
        }
    }

    func testSameNetworkStreamsInTilesWithinWinogradBound() throws {
        // A 'same' U-net: streamed with tiles, equal bit for bit to in-memory with the same tiles,
        // and to the whole-image run within Winograd rounding.
        let model = try Architectures.unet(name: "tiny-unet", widths: [8, 16], normalization: "sky_mad", initializer: randomInit(seed: 5))
        let net = try Network(model: model)
        let w = 300, h = 260
        let path = dir + "/u.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: sky(w, h, seed: 9), nullMask: [Bool](repeating: false, count: w * h))
        let image = try FITSIO.readImage(path: path)
        var opts = Restoration.Options(threads: 2, tileSize: 96)
        let tiled = try Restoration.restore(image, network: net, options: opts).pixels
        let s = try streamed(path, network: net, options: opts)
        assertBitEqual(s.pixels, tiled, "U-net, 96-pixel tiles")
        opts.tileSize = nil
        let whole = try Restoration.restore(image, network: net, options: opts).pixels
        let scale = Double(whole.map { abs($0) }.max() ?? 1)
        XCTAssertLessThanOrEqual(Double(maxAbsDiff(s.pixels, whole)), 1e-4 * scale)
    }

    /// By default a streamed 'same' network runs a frame whose maps fit the in-memory budget as
    /// one tile, so `restore` gives the bits of the in-memory whole-image run (for any thread
    /// count); with an explicit feature-map budget it streams tiles from that budget, equal to
    /// the in-memory run with the same tiles.
    func testSameNetworkStreamsWholeFramesThatFitAndTilesFromAnExplicitBudget() throws {
        let model = try Architectures.unet(name: "tiny-unet", widths: [8, 16], normalization: "sky_mad", initializer: randomInit(seed: 6))
        let net = try Network(model: model)
        let w = 280, h = 200
        let path = dir + "/whole.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: sky(w, h, seed: 10), nullMask: [Bool](repeating: false, count: w * h))
        let image = try FITSIO.readImage(path: path)
        let whole = try Restoration.restore(image, network: net, options: .init(threads: 1))
        XCTAssertEqual(whole.report.tiles, 1)
        for threads in [1, 2, 3] {
            let out = dir + "/whole-\(threads).fits"
            let r = try StreamingRestore.restoreFile(input: path, output: out, network: net, options: .init(threads: threads))
            XCTAssertEqual(r.tiles, 1, "\(threads) threads")
            assertBitEqual(try FITSIO.readImage(path: out).pixels, whole.pixels, "whole frame, \(threads) threads")
        }
        // A budget for about a 100-pixel window: tiles, as in memory with that budget.
        var opts = Restoration.Options(threads: 2)
        opts.memoryBudget = Int(net.bytesPerInputPixel * 100 * 100)
        let out = dir + "/budget.fits"
        let r = try StreamingRestore.restoreFile(input: path, output: out, network: net, options: opts)
        XCTAssertGreaterThan(r.tiles, 1)
        let tiled = try Restoration.restore(image, network: net, options: opts)
        XCTAssertEqual(tiled.report.tiles, r.tiles)
        assertBitEqual(try FITSIO.readImage(path: out).pixels, tiled.pixels, "explicit budget")
    }

    func testMemoryEstimateIsSetByWidthNotHeight() throws {
        let net = try flamary3
        func total(_ w: Int, _ h: Int) throws -> Int { try StreamingRestore.memoryEstimate(network: net, width: w, height: h, threads: 2).reduce(0) { $0 + $1.bytes } }
        let big = try total(32768, 32768)
        XCTAssertLessThan(big, 1 << 30, "32768^2 with the 3-CNN must fit in 1 GiB")
        XCTAssertEqual(try total(32768, 4096), big)
        XCTAssertGreaterThan(try total(65536, 4096), big)
    }

    func testRowBandWriterCommitsOnlyWhenDone() throws {
        let path = dir + "/bands.fits"
        let w = 5, h = 4
        let writer = try FITSWriter(path: path, width: w, height: h, headerCards: [])
        let px = (0..<(w * h)).map(Float.init)
        try px.withUnsafeBufferPointer { all in
            try writer.writeRows(2, UnsafeBufferPointer(rebasing: all[10..<20]))
            XCTAssertFalse(FileManager.default.fileExists(atPath: path))
            try writer.writeRows(0, UnsafeBufferPointer(rebasing: all[0..<10]))
            XCTAssertThrowsError(try writer.writeRows(3, UnsafeBufferPointer(rebasing: all[0..<10])))
        }
        // A rejected write leaves the file open; commit makes it appear whole.
        try writer.commit()
        XCTAssertEqual(try FITSIO.readImage(path: path).pixels, px)
        // An aborted writer leaves nothing.
        let other = dir + "/aborted.fits"
        let w2 = try FITSWriter(path: other, width: w, height: h, headerCards: [])
        try px.withUnsafeBufferPointer { try w2.writeRows(0, $0) }
        w2.abort()
        XCTAssertFalse(FileManager.default.fileExists(atPath: other))
        XCTAssertThrowsError(try FITSWriter(path: path, width: w, height: h, headerCards: [])) { XCTAssertTrue("\($0)".contains("exists"), "\($0)") }
        let r = try FITSReader(path: path)
        var p = [Float](), inv = [Bool]()
        try r.readWindow(rows: 1..<3, columns: 2..<4, pixels: &p, invalid: &inv)
        XCTAssertEqual(p, [7, 8, 12, 13])
        XCTAssertThrowsError(try r.readWindow(rows: 3..<5, columns: 0..<1, pixels: &p, invalid: &inv))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
    }
}
