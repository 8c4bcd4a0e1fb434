import CFITSIO
import Foundation
import ModelFormat
import Runtime
import XCTest

/// Writes test FITS files directly through cfitsio, independent of the code under test.
enum FITSFixture {
    static func check(_ status: Int32, _ what: String) {
        if status != 0 {
            FileHandle.standardError.write(Data("cfitsio fixture failed (\(status)) in \(what)\n".utf8))
            fatalError("cfitsio fixture failed (\(status)) in \(what)")
        }
    }

    /// An image HDU with the given BITPIX holding `values` (physical), written with BSCALE/BZERO
    /// when given, BLANK for integer nulls; optionally preceded by an empty primary and followed
    /// by a table extension.
    static func write(path: String, bitpix: Int32, width: Int, height: Int, values: [Double], nullMask: [Bool],
                      bscale: Double? = nil, bzero: Double? = nil, blank: Int64? = nil, inExtension: String? = nil,
                      extraCards: [String] = [], appendTable: Bool = false, naxes: [Int]? = nil) {
        var s: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        unlink(path)
        ffinit(&f, path, &s); check(s, "create")
        if inExtension != nil {
            var none: [Int] = []
            ffcrim(f, 8, 0, &none, &s); check(s, "empty primary")
        }
        var axes = naxes ?? [width, height]
        ffcrim(f, bitpix, Int32(axes.count), &axes, &s); check(s, "image")
        if let e = inExtension { ffpkys(f, "EXTNAME", e, "", &s) }
        if let b = bscale { ffpkyd(f, "BSCALE", b, 12, "", &s) }
        if let z = bzero { ffpkyd(f, "BZERO", z, 12, "", &s) }
        if let bl = blank { ffpkyj(f, "BLANK", bl, "", &s) }
        for c in extraCards { ffprec(f, c, &s) }
        check(s, "keywords")
        ffrdef(f, &s)  // make cfitsio apply BSCALE/BZERO/BLANK to the writes below
        let n = values.count
        if n > 0 {
            var first = [Int](repeating: 1, count: axes.count)
            var data = values
            for i in 0..<n where nullMask[i] { data[i] = .nan }
            if bitpix > 0 && nullMask.contains(true) {
                // Integer image with nulls: write the stored integers with scaling switched off, BLANK for nulls.
                let sc = bscale ?? 1, zr = bzero ?? 0
                var raw = [Int64](repeating: 0, count: n)
                for i in 0..<n { raw[i] = nullMask[i] ? (blank ?? 0) : Int64(((values[i] - zr) / sc).rounded()) }
                ffpscl(f, 1, 0, &s)
                ffppx(f, TLONGLONG, &first, Int64(n), &raw, &s)
            } else if bitpix == 16 && bscale == nil && bzero == nil {
                // cfitsio 4.2's tile compressor only accepts the image's own type (TSHORT).
                var shorts = values.map { Int16($0) }
                ffppx(f, TSHORT, &first, Int64(n), &shorts, &s)
            } else {
                ffppx(f, TDOUBLE, &first, Int64(n), &data, &s)
            }
            check(s, "pixels")
        }
        if appendTable {
            var ttype = [strdup("FLUX")], tform = [strdup("E12.5")], tunit = [strdup("ADU")]
            ffcrtb(f, ASCII_TBL, 3, 1, &ttype, &tform, &tunit, "CATALOG", &s); check(s, "table")
            var col: [Float] = [1, 2, 3]
            ffpcle(f, 1, 1, 1, 3, &col, &s); check(s, "table data")
        }
        ffclos(f, &s); check(s, "close")
    }
}

final class FITSTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let wcs = [
        "CTYPE1  = 'RA---TAN'           / projection",
        "CTYPE2  = 'DEC--TAN'           / projection",
        "CRVAL1  =            83.822083 / [deg]",
        "CRVAL2  =            -5.391111 / [deg]",
        "CRPIX1  =                 12.5",
        "CRPIX2  =                  8.0",
        "CD1_1   =        -0.0002777778",
        "CD2_2   =         0.0002777778",
        "OBJECT  = 'Test field'",
        "COMMENT a comment card that must survive",
    ]

    func testEveryBitpixRoundTrip() throws {
        let w = 23, h = 17
        var rng = TestRNG(seed: 11)
        for (bitpix, scale, zero) in [(Int32(8), nil, nil), (16, nil, nil), (16, 1.0, 32768.0), (16, 0.5, 100.0), (32, nil, nil),
                                      (32, 2.0, -5.0), (64, nil, nil), (-32, nil, nil), (-64, nil, nil), (-32, 2.0, 1.0)] as [(Int32, Double?, Double?)] {
            let s = scale ?? 1, z = zero ?? 0
            // Values exactly representable in the stored type after scaling.
            let maxStored: Double = bitpix == 8 ? 250 : bitpix == 16 ? 30000 : 1_000_000
            var values = (0..<(w * h)).map { _ in (Double(Int.random(in: 0...Int(maxStored), using: &rng)) - (bitpix == 8 ? 0 : maxStored / 2)) * s + z }
            if bitpix < 0 { values = values.map { $0 + 0.25 * s } }
            if bitpix == 16 && zero == 32768 { values = (0..<(w * h)).map { _ in Double(Int.random(in: 1...65535, using: &rng)) } }
            var nulls = [Bool](repeating: false, count: w * h)
            for i in stride(from: 5, to: w * h, by: 37) { nulls[i] = true }
            let blank: Int64? = bitpix == 8 ? 255 : bitpix == 16 ? -32768 : bitpix == 32 ? Int64(Int32.min) : bitpix == 64 ? Int64.min : nil
            let path = "\(dir)/bitpix\(bitpix)_\(s)_\(z).fits"
            FITSFixture.write(path: path, bitpix: bitpix, width: w, height: h, values: values, nullMask: nulls,
                              bscale: scale, bzero: zero, blank: blank, extraCards: wcs)
            let img = try FITSIO.readImage(path: path)
            XCTAssertEqual(img.width, w); XCTAssertEqual(img.height, h)
            XCTAssertEqual(img.bitpix, Int(bitpix))
            for i in 0..<(w * h) {
                if nulls[i] {
                    XCTAssertTrue(img.invalid[i], "BITPIX \(bitpix): pixel \(i) should be invalid")
                    XCTAssertTrue(img.pixels[i].isNaN)
                } else {
                    XCTAssertFalse(img.invalid[i])
                    XCTAssertEqual(Double(img.pixels[i]), values[i], accuracy: abs(values[i]) * 1e-7 + 1e-9, "BITPIX \(bitpix) scale \(s) zero \(z) pixel \(i)")
                }
            }
            XCTAssertEqual(img.keyword("CTYPE1"), "RA---TAN")
            XCTAssertEqual(img.keyword("OBJECT"), "Test field")

            // Write it back as float32 and read again: values, header cards and NaNs survive.
            let out = "\(dir)/out\(bitpix)_\(s)_\(z).fits"
            try FITSIO.writeImage(path: out, width: w, height: h, pixels: img.pixels, headerCards: img.headerCards,
                                  provenance: .init(keywords: [("ACNNTEST", .int(7), "test")], history: ["round trip"]))
            let back = try FITSIO.readImage(path: out)
            XCTAssertEqual(back.bitpix, -32)
            for i in 0..<(w * h) {
                XCTAssertEqual(back.invalid[i], img.invalid[i])
                if !img.invalid[i] { XCTAssertEqual(back.pixels[i], img.pixels[i]) }
            }
            for key in ["CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD2_2", "OBJECT"] {
                XCTAssertEqual(back.keyword(key), img.keyword(key), key)
            }
            XCTAssertNil(back.keyword("BSCALE")); XCTAssertNil(back.keyword("BZERO")); XCTAssertNil(back.keyword("BLANK"))
            XCTAssertEqual(back.keyword("ACNNTEST"), "7")
            XCTAssertTrue(back.headerCards.contains { $0.hasPrefix("HISTORY round trip") })
            XCTAssertTrue(back.headerCards.contains { $0.hasPrefix("COMMENT a comment card that must survive") })
        }
    }

    /// Unscaled float32 images are read through cfitsio's Float32 reader: the same bits and
    /// flags as cfitsio's Float64 reader (which the other images go through) gives, in full-width
    /// bands and in windows: finite values keep their bits, NaN and infinities are invalid, and
    /// denormals and -0 are +0 (cfitsio's underflow rule, in both readers).
    func testFloat32ReadKeepsBitsAndFlagsNonFinite() throws {
        let w = 19, h = 7
        var rng = TestRNG(seed: 5)
        var values = (0..<(w * h)).map { _ in Float(rng.float(-1000, 1000)) }
        let special: [Float] = [.nan, .infinity, -.infinity, .leastNonzeroMagnitude, -0.0, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 1e-40]
        for (k, v) in special.enumerated() { values[k * 13 + 3] = v }
        let path = "\(dir)/float32.fits"
        var st: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        ffinit(&f, path, &st)
        var axes = [w, h]
        ffcrim(f, -32, 2, &axes, &st)
        var first = [1, 1]
        ffppx(f, TFLOAT, &first, Int64(w * h), &values, &st)
        // The Float64 reading of the same pixels, straight from cfitsio.
        var doubles = [Double](repeating: 0, count: w * h)
        var flags = [CChar](repeating: 0, count: w * h)
        var anynul: Int32 = 0
        ffgpxf(f, TDOUBLE, &first, Int64(w * h), &doubles, &flags, &anynul, &st)
        ffclos(f, &st)
        XCTAssertEqual(st, 0)
        XCTAssertEqual(Float(doubles[3 * 13 + 3]), 0, "cfitsio reads denormals as 0")
        let reader = try FITSReader(path: path)
        var pixels = [Float](), invalid = [Bool]()
        for (rows, cols) in [(0..<h, 0..<w), (2..<5, 0..<w), (1..<6, 3..<11), (0..<h, 18..<19)] {
            try reader.readWindow(rows: rows, columns: cols, pixels: &pixels, invalid: &invalid)
            XCTAssertEqual(pixels.count, rows.count * cols.count)
            for (a, y) in rows.enumerated() { for (b, x) in cols.enumerated() {
                let v = values[y * w + x], i = a * cols.count + b
                let d = doubles[y * w + x]
                if v.isFinite {
                    XCTAssertFalse(invalid[i], "(\(y), \(x))")
                    XCTAssertEqual(pixels[i].bitPattern, Float(d).bitPattern, "(\(y), \(x))")
                    if v.isNormal { XCTAssertEqual(pixels[i].bitPattern, v.bitPattern, "(\(y), \(x))") }
                } else {
                    XCTAssertTrue(flags[y * w + x] != 0 || !d.isFinite)
                    XCTAssertTrue(invalid[i], "(\(y), \(x)) holds \(v)")
                    XCTAssertTrue(pixels[i].isNaN)
                }
            } }
        }
    }

    func testExtensionsByIndexNameAndDefault() throws {
        let w = 8, h = 6
        let values = (0..<(w * h)).map { Double($0) }
        let path = "\(dir)/ext.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: values, nullMask: [Bool](repeating: false, count: w * h),
                          inExtension: "SCI", extraCards: wcs, appendTable: true)
        for img in [try FITSIO.readImage(path: path), try FITSIO.readImage(path: path, hdu: "1"),
                    try FITSIO.readImage(path: path, hdu: "SCI"), try FITSIO.readImage(path: path + "[SCI]")] {
            XCTAssertEqual(img.width, w)
            XCTAssertEqual(img.hdu, 1)
            XCTAssertEqual(img.pixels[13], 13)
            XCTAssertEqual(img.keyword("CRVAL1"), "83.822083")
        }
        XCTAssertThrowsError(try FITSIO.readImage(path: path, hdu: "0")) { XCTAssertTrue("\($0)".contains("NAXIS = 0"), "\($0)") }
        XCTAssertThrowsError(try FITSIO.readImage(path: path, hdu: "2")) { XCTAssertTrue("\($0)".contains("table"), "\($0)") }
        XCTAssertThrowsError(try FITSIO.readImage(path: path, hdu: "NOPE")) { XCTAssertTrue("\($0)".contains("no HDU"), "\($0)") }
    }

    func testCompressedAndGzipped() throws {
        let w = 40, h = 30
        let values = (0..<(w * h)).map { Double($0 % 97) }
        let plain = "\(dir)/plain.fits"
        FITSFixture.write(path: plain, bitpix: 16, width: w, height: h, values: values, nullMask: [Bool](repeating: false, count: w * h), extraCards: wcs)
        // Tile-compressed (.fz) through cfitsio's "[compress]" output syntax.
        let fz = "\(dir)/image.fits.fz"
        FITSFixture.write(path: fz + "[compress R 10,10]", bitpix: 16, width: w, height: h, values: values,
                          nullMask: [Bool](repeating: false, count: w * h), extraCards: wcs)
        let a = try FITSIO.readImage(path: fz)
        XCTAssertEqual(a.width, w)
        XCTAssertEqual(a.pixels.map(Double.init), values)
        XCTAssertEqual(a.keyword("CTYPE2"), "DEC--TAN")
        // Restored output of a compressed input keeps WCS but none of the compression cards.
        let out = "\(dir)/fromfz.fits"
        try FITSIO.writeImage(path: out, width: w, height: h, pixels: a.pixels, headerCards: a.headerCards)
        let b = try FITSIO.readImage(path: out)
        XCTAssertEqual(b.keyword("CRPIX1"), "12.5")
        XCTAssertNil(b.keyword("ZIMAGE")); XCTAssertNil(b.keyword("ZCMPTYPE")); XCTAssertNil(b.keyword("TTYPE1"))
        // gzip.
        let gz = "\(dir)/image.fits.gz"
        let (status, _, _) = try runProcess("/bin/sh", ["-c", "gzip -c '\(plain)' > '\(gz)'"])
        XCTAssertEqual(status, 0)
        XCTAssertEqual(try FITSIO.readImage(path: gz).pixels.map(Double.init), values)
    }

    func testClearErrors() throws {
        func expect(_ path: String, hdu: String? = nil, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try FITSIO.readImage(path: path, hdu: hdu), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "'\(e)' should mention '\(fragment)'", line: line)
            }
        }
        expect("\(dir)/missing.fits", "no such file")
        let text = "\(dir)/text.fits"
        try "this is not FITS\n".write(toFile: text, atomically: true, encoding: .utf8)
        expect(text, "not a readable FITS file")
        let oneD = "\(dir)/oned.fits"
        FITSFixture.write(path: oneD, bitpix: -32, width: 10, height: 1, values: [Double](repeating: 1, count: 10),
                          nullMask: [Bool](repeating: false, count: 10), naxes: [10])
        expect(oneD, "1-D")
        let cube = "\(dir)/cube.fits"
        FITSFixture.write(path: cube, bitpix: -32, width: 4, height: 3, values: [Double](repeating: 1, count: 24),
                          nullMask: [Bool](repeating: false, count: 24), naxes: [4, 3, 2])
        expect(cube, "[*,*,1:1]")
        // The suggested section syntax works.
        XCTAssertEqual(try FITSIO.readImage(path: cube + "[*,*,2:2]").width, 4)
        let empty = "\(dir)/empty.fits"
        FITSFixture.write(path: empty, bitpix: -32, width: 4, height: 0, values: [], nullMask: [], naxes: [4, 0])
        expect(empty, "no pixels")
        let onlyTable = "\(dir)/table.fits"
        FITSFixture.write(path: onlyTable, bitpix: 8, width: 0, height: 0, values: [], nullMask: [], appendTable: true, naxes: [])
        expect(onlyTable, "no image")
    }

    func testAtomicWriteRefusesOverwriteAndLeavesNoTemporary() throws {
        let path = "\(dir)/o.fits"
        try FITSIO.writeImage(path: path, width: 2, height: 2, pixels: [1, 2, 3, .nan], headerCards: [])
        XCTAssertThrowsError(try FITSIO.writeImage(path: path, width: 2, height: 2, pixels: [0, 0, 0, 0], headerCards: [])) {
            XCTAssertTrue("\($0)".contains("--overwrite"))
        }
        XCTAssertEqual(try FITSIO.readImage(path: path).pixels[1], 2)
        try FITSIO.writeImage(path: path, width: 2, height: 2, pixels: [0, 5, 0, 0], headerCards: [], overwrite: true)
        let back = try FITSIO.readImage(path: path)
        XCTAssertEqual(back.pixels[1], 5)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["o.fits"])
        XCTAssertThrowsError(try FITSIO.writeImage(path: "/nonexistent-dir/x.fits", width: 1, height: 1, pixels: [0], headerCards: []))
    }
}
