import Foundation
import ModelFormat
import Runtime
import XCTest

/// A minimal TIFF writer written for the tests, independent of astrocnn's: either byte order,
/// 16-bit unsigned or 32-bit float samples, grey or RGB, chunky or planar, `rowsPerStrip` rows a strip.
func testTIFF(width: Int, height: Int, planes: [[Float]], float: Bool, bigEndian: Bool = false, planar: Bool = false,
              rowsPerStrip: Int = 5, compression: Int = 1) -> [UInt8] {
    var out = [UInt8]()
    func p16(_ v: Int) { out += bigEndian ? [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] : [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
    func p32(_ v: Int) {
        let b = [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24 & 0xFF)]
        out += bigEndian ? b.reversed() : b
    }
    let spp = planes.count, bps = float ? 4 : 2
    out += bigEndian ? [0x4D, 0x4D] : [0x49, 0x49]
    p16(42); p32(0)
    var offsets: [Int] = [], counts: [Int] = []
    func sample(_ v: Float) { if float { p32(Int(v.bitPattern)) } else { p16(Int(v)) } }
    let groups = planar ? (0..<spp).map { [$0] } : [Array(0..<spp)]
    for g in groups {
        var y0 = 0
        while y0 < height {
            let y1 = min(height, y0 + rowsPerStrip)
            offsets.append(out.count)
            for y in y0..<y1 { for x in 0..<width { for k in g { sample(planes[k][y * width + x]) } } }
            counts.append((y1 - y0) * width * g.count * bps)
            y0 = y1
        }
    }
    let offAt = out.count; for o in offsets { p32(o) }
    let cntAt = out.count; for c in counts { p32(c) }
    let bitsAt = out.count; for _ in 0..<spp { p16(bps * 8) }
    let fmtAt = out.count; for _ in 0..<spp { p16(float ? 3 : 1) }
    let ifd = out.count
    let entries: [(Int, Int, Int, Int)] = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, spp, spp == 1 ? bps * 8 : bitsAt),
                                           (259, 3, 1, compression), (262, 3, 1, spp == 3 ? 2 : 1), (273, 4, offsets.count, offsets.count == 1 ? offsets[0] : offAt),
                                           (277, 3, 1, spp), (278, 4, 1, rowsPerStrip), (279, 4, counts.count, counts.count == 1 ? counts[0] : cntAt),
                                           (284, 3, 1, planar ? 2 : 1), (339, 3, spp, spp == 1 ? (float ? 3 : 1) : fmtAt)]
    p16(entries.count)
    for (tag, type, count, value) in entries {
        p16(tag); p16(type); p32(count)
        if type == 3 && count == 1 { p16(value); p16(0) } else { p32(value) }
    }
    p32(0)
    let b = [UInt8(ifd & 0xFF), UInt8(ifd >> 8 & 0xFF), UInt8(ifd >> 16 & 0xFF), UInt8(ifd >> 24 & 0xFF)]
    let stored = bigEndian ? Array(b.reversed()) : b
    for i in 0..<4 { out[4 + i] = stored[i] }
    return out
}

/// The tags (first values, little-endian files) of a TIFF astrocnn wrote.
func tiffTags(_ bytes: [UInt8]) -> [Int: Int] {
    func u16(_ o: Int) -> Int { Int(bytes[o]) | Int(bytes[o + 1]) << 8 }
    func u32(_ o: Int) -> Int { u16(o) | u16(o + 2) << 16 }
    let ifd = u32(4)
    var tags: [Int: Int] = [:]
    for k in 0..<u16(ifd) {
        let e = ifd + 2 + 12 * k
        let type = u16(e + 2), count = u32(e + 4)
        switch (type, count) {
        case (3, 1): tags[u16(e)] = u16(e + 8)
        case (3, 2): tags[u16(e)] = u16(e + 8)
        case (3, _): tags[u16(e)] = u16(u32(e + 8))  // first of several shorts, stored at an offset
        default: tags[u16(e)] = u32(e + 8)
        }
    }
    return tags
}

/// TIFF in and out: `astrocnn convert` and the restoring commands on .tif files.
final class TIFFTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let (w, h) = (24, 17)

    func planes(_ n: Int, integer: Bool) -> [[Float]] {
        var out: [[Float]] = []
        for k in 0..<n {
            var p = [Float](repeating: 0, count: w * h)
            for i in 0..<(w * h) {
                p[i] = integer ? Float((i * 37 + k * 1000) % 65536) : Float(i) * 0.001 + Float(k)
            }
            out.append(p)
        }
        return out
    }

    /// Every layout the reader accepts gives the same FITS: planes in order, rows flipped.
    func testConvertReadsTIFFLayouts() throws {
        let exe = try astrocnnExecutable()
        for (float, big, planar, n) in [(false, false, false, 1), (false, true, false, 3), (true, false, true, 3), (true, true, false, 1), (false, false, true, 3)] {
            let src = planes(n, integer: !float)
            let tif = dir + "/in.tif", fits = dir + "/out.fits"
            try Data(testTIFF(width: w, height: h, planes: src, float: float, bigEndian: big, planar: planar)).write(to: URL(fileURLWithPath: tif))
            let (s, _, err) = try runProcess(exe, ["convert", tif, fits, "--overwrite"])
            XCTAssertEqual(s, 0, err)
            let probe = try FITSProbe(path: fits)
            XCTAssertEqual(probe.axes, n == 1 ? [w, h] : [w, h, n], "float \(float) big \(big) planar \(planar)")
            let got = try readCube(fits).planes
            for k in 0..<n {
                for y in 0..<h {
                    for x in 0..<w { XCTAssertEqual(got[k][(h - 1 - y) * w + x], src[k][y * w + x]) }
                }
            }
        }
        // Compressed TIFF: refused with advice.
        try Data(testTIFF(width: w, height: h, planes: planes(1, integer: true), float: false, compression: 5)).write(to: URL(fileURLWithPath: dir + "/lzw.tif"))
        let (s, _, err) = try runProcess(exe, ["convert", dir + "/lzw.tif", dir + "/lzw.fits"])
        XCTAssertNotEqual(s, 0)
        XCTAssertTrue(err.contains("compression 5") && err.contains("FITS"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/lzw.fits"))
        // Truncated or damaged files: a clear error and exit status 1, never a crash.
        let good = testTIFF(width: w, height: h, planes: planes(3, integer: true), float: false)
        var damaged: [[UInt8]] = [10, 40, 200, good.count / 2, good.count - 30].map { Array(good[0..<$0]) }
        var rng = TestRNG(seed: 5)
        for _ in 0..<12 {
            var b = good
            let at = good.count - 160 + Int(rng.float(0, 150))  // inside the IFD and its arrays
            b[at] ^= UInt8(1 + Int(rng.float(0, 254)))
            damaged.append(b)
        }
        for (k, b) in damaged.enumerated() {
            try Data(b).write(to: URL(fileURLWithPath: dir + "/bad.tif"))
            let (s, _, err) = try runProcess(exe, ["convert", dir + "/bad.tif", dir + "/bad\(k).fits"])
            XCTAssertTrue(s == 0 || (s == 1 && err.contains("astrocnn: error:")), "damaged file \(k): status \(s) \(err)")
        }
        // Not a TIFF at all.
        try Data("hello".utf8).write(to: URL(fileURLWithPath: dir + "/fake.tif"))
        let (s2, _, e2) = try runProcess(exe, ["convert", dir + "/fake.tif", dir + "/fake.fits"])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("not a TIFF"), e2)
    }

    /// FITS -> TIFF -> FITS gives the same pixels (32-bit float), and 16-bit TIFFs hold the
    /// rounded values; the files are baseline TIFF (uncompressed, the right tags).
    func testConvertWritesTIFF() throws {
        let exe = try astrocnnExecutable()
        let src = planes(3, integer: false)
        let cube = dir + "/c.fits"
        let wr = try FITSWriter(path: cube, width: w, height: h, planes: 3, headerCards: [])
        for k in 0..<3 { try src[k].withUnsafeBufferPointer { try wr.writeRows(0, $0, plane: k) } }
        try wr.commit()
        var (s, _, err) = try runProcess(exe, ["convert", cube, dir + "/c.tif"])
        XCTAssertEqual(s, 0, err)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/c.tif")))
        XCTAssertEqual(Array(bytes[0..<4]), [0x49, 0x49, 42, 0])
        let tags = tiffTags(bytes)
        XCTAssertEqual(tags[256], w); XCTAssertEqual(tags[257], h); XCTAssertEqual(tags[259], 1)
        XCTAssertEqual(tags[262], 2); XCTAssertEqual(tags[277], 3)
        (s, _, err) = try runProcess(exe, ["convert", dir + "/c.tif", dir + "/back.fits"])
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try readCube(dir + "/back.fits").planes, src)
        // 16 bits: rounded and clipped.
        let grey = dir + "/g.fits"
        let values: [Float] = (0..<(w * h)).map { (i: Int) -> Float in Float(i) * 250.3 - 1000 }
        try FITSIO.writeImage(path: grey, width: w, height: h, pixels: values, headerCards: [])
        (s, _, err) = try runProcess(exe, ["convert", grey, dir + "/g.tif", "--bits", "16"])
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(tiffTags([UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/g.tif"))))[258], 16)
        (s, _, err) = try runProcess(exe, ["convert", dir + "/g.tif", dir + "/g2.fits"])
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/g2.fits").pixels, values.map { max(0, min(65535, $0.rounded())) })
        // An existing output is kept without --overwrite.
        (s, _, err) = try runProcess(exe, ["convert", grey, dir + "/g.tif"])
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("already exists"), err)
    }

    /// `denoise photo.tif` writes photo_denoised.tif (same bit depth), the same pixels as the
    /// FITS route gives (rounded to 16 bits); `-o out.fits` from a TIFF gives FITS.
    func testDenoiseTIFF() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.unet(widths: [4, 8, 16], normalization: "sky_mad", initializer: randomInit(seed: 9)), to: model)
        let (W, H) = (32, 32)
        let src: [[Float]] = (0..<3).map { (k: Int) -> [Float] in
            testSky(width: W, height: H, seed: UInt64(k + 1), level: 3000).map { $0.rounded() }
        }
        let tif = dir + "/photo.tif"
        try Data(testTIFF(width: W, height: H, planes: src, float: false)).write(to: URL(fileURLWithPath: tif))
        var (s, _, err) = try runProcess(exe, ["denoise", tif, "--model", model, "--luminance", "--quiet"])
        XCTAssertEqual(s, 0, err)
        let outBytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/photo_denoised.tif")))
        XCTAssertEqual(tiffTags(outBytes)[258], 16)
        // The FITS route: the same image as FITS (rows flipped), restored, rounded to 16 bits.
        (s, _, err) = try runProcess(exe, ["convert", tif, dir + "/photo.fits"])
        XCTAssertEqual(s, 0, err)
        (s, _, err) = try runProcess(exe, ["denoise", dir + "/photo.fits", "--model", model, "--luminance", "--quiet"])
        XCTAssertEqual(s, 0, err)
        (s, _, err) = try runProcess(exe, ["convert", dir + "/photo_denoised.tif", dir + "/back.fits"])
        XCTAssertEqual(s, 0, err)
        let viaFITS = try readCube(dir + "/photo_denoised.fits").planes
        let viaTIFF = try readCube(dir + "/back.fits").planes
        for k in 0..<3 { XCTAssertEqual(viaTIFF[k], viaFITS[k].map { max(0, min(65535, $0.rounded())) }) }
        // TIFF in, FITS out.
        (s, _, err) = try runProcess(exe, ["denoise", tif, "--model", model, "-o", dir + "/out.fits", "--quiet"])
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try FITSProbe(path: dir + "/out.fits").axes, [W, H, 3])
        // Batches take FITS only.
        (s, _, err) = try runProcess(exe, ["denoise", tif, dir + "/photo.fits", "--model", model, "-o", dir + "/batch"])
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("one at a time"), err)
    }
}
