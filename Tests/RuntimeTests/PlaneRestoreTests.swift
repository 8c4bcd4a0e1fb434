import CFITSIO
import Foundation
import ModelFormat
import Runtime
import XCTest

/// An 80-character header card.
func card(_ key: String, _ value: String, _ comment: String = "") -> String {
    var c = key.padding(toLength: 8, withPad: " ", startingAt: 0) + "= " + value.padding(toLength: 20, withPad: " ", startingAt: 0)
    if !comment.isEmpty { c += " / " + comment }
    return c.padding(toLength: 80, withPad: " ", startingAt: 0)
}

/// A seeded sky: smooth background, a few Gaussian stars, Gaussian noise.
func testSky(width: Int, height: Int, seed: UInt64, level: Float = 100) -> [Float] {
    var rng = TestRNG(seed: seed)
    var p = [Float](repeating: 0, count: width * height)
    let stars = (0..<6).map { _ in (rng.float(0, Float(width)), rng.float(0, Float(height)), rng.float(50, 500)) }
    for y in 0..<height {
        for x in 0..<width {
            var v = level + 0.05 * Float(x + y)
            for (sx, sy, a) in stars {
                let d2 = (Float(x) - sx) * (Float(x) - sx) + (Float(y) - sy) * (Float(y) - sy)
                v += a * exp(-d2 / 4.5)
            }
            v += 3 * (rng.float(0, 1) + rng.float(0, 1) + rng.float(0, 1) - 1.5)
            p[y * width + x] = v
        }
    }
    return p
}

/// Writes a FITS file with an empty primary HDU, a float `SCI` image and, if given, a 16-bit
/// `DQ` extension of the same size (the HST/JWST layout).
func writeSciDQ(_ path: String, width: Int, height: Int, sci: [Float], dq: [Int16]?) throws {
    var status: Int32 = 0
    var f: UnsafeMutablePointer<fitsfile>?
    unlink(path)
    ffinit(&f, path, &status)
    var none = [Int]()
    ffcrim(f, FLOAT_IMG, 0, &none, &status)
    var ax = [width, height]
    ffcrim(f, FLOAT_IMG, 2, &ax, &status)
    ffpkys(f, "EXTNAME", "SCI", "", &status)
    ffpkyj(f, "EXTVER", 1, "", &status)
    var first = [1, 1]
    var s = sci
    ffppx(f, TFLOAT, &first, Int64(sci.count), &s, &status)
    if var d = dq {
        ffcrim(f, SHORT_IMG, 2, &ax, &status)
        ffpkys(f, "EXTNAME", "DQ", "", &status)
        ffpkyj(f, "EXTVER", 1, "", &status)
        ffppx(f, TSHORT, &first, Int64(d.count), &d, &status)
    }
    ffclos(f, &status)
    if status != 0 { throw FITSError.cfitsio(path, status, FITSIO.errorText(status)) }
}

/// Reads every plane of a float cube (or a 2-D image) as Float, NaN kept.
func readCube(_ path: String) throws -> (axes: [Int], planes: [[Float]], cards: [String]) {
    let probe = try FITSProbe(path: path)
    let planes = try probe.planeReaders(path: path, hdu: nil).map { r -> [Float] in
        var p = [Float](), v = [Bool]()
        try r.readRows(0, r.height, pixels: &p, invalid: &v)
        return p
    }
    return (probe.axes, planes, probe.headerCards)
}

/// Colour and cube planes, luminance mode, strength, masks, DQ extensions and .fz output.
final class PlaneRestoreTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let (w, h) = (40, 36)

    func network() throws -> Network {
        try Network(model: try Architectures.unet(widths: [4, 8, 16], normalization: "sky_mad", inputSkip: true, initializer: randomInit(seed: 7)))
    }

    func writeCube(_ path: String, planes: [[Float]]) throws {
        let cards = [card("OBJECT", "'M42'", "target"), card("CTYPE3", "'RGB'", "colour planes"), card("EXPTIME", "120.0")]
        let wr = try FITSWriter(path: path, width: w, height: h, planes: planes.count, headerCards: cards)
        for (k, p) in planes.enumerated() { try p.withUnsafeBufferPointer { try wr.writeRows(0, $0, plane: k) } }
        try wr.commit()
    }

    func restore2D(_ pixels: [Float], _ net: Network, name: String) throws -> [Float] {
        let p = dir + "/\(name).fits", o = dir + "/\(name)-out.fits"
        try FITSIO.writeImage(path: p, width: w, height: h, pixels: pixels, headerCards: [])
        _ = try StreamingRestore.restoreFile(input: p, output: o, network: net)
        return try FITSIO.readImage(path: o).pixels
    }

    /// A 3-plane cube is restored plane by plane: each output plane is bit for bit the restoration
    /// of that plane alone; the output keeps NAXIS3 and the header.
    func testCubePlanesRestoredOneByOne() throws {
        let net = try network()
        let planes: [[Float]] = (0..<3).map { (k: Int) -> [Float] in
            testSky(width: w, height: h, seed: UInt64(10 + k), level: Float(100 * (k + 1)))
        }
        let cube = dir + "/rgb.fits", out = dir + "/rgb-out.fits"
        try writeCube(cube, planes: planes)
        // FITSReader still refuses the cube (the 2-D path), FITSProbe sees its 3 planes.
        XCTAssertThrowsError(try FITSReader(path: cube))
        XCTAssertEqual(try FITSProbe(path: cube).axes, [w, h, 3])
        let r = try PlaneRestore.restoreFile(input: cube, output: out, network: net, extras: RestoreExtras())
        XCTAssertEqual(r.width, w)
        let got = try readCube(out)
        XCTAssertEqual(got.axes, [w, h, 3])
        for k in 0..<3 {
            XCTAssertEqual(got.planes[k], try restore2D(planes[k], net, name: "p\(k)"), "plane \(k)")
        }
        XCTAssertEqual(FITSHeader.value("OBJECT", in: got.cards), "M42")
        XCTAssertEqual(FITSHeader.value("CTYPE3", in: got.cards), "RGB")
        XCTAssertEqual(FITSHeader.value("NAXIS3", in: got.cards), "3")
        XCTAssertNotNil(FITSHeader.value("ACNNMODL", in: got.cards))
    }

    /// --luminance: the mean of the output planes is the restored luminance (the restoration of
    /// the planes' mean), and the ratios between planes (the chroma) are kept where L > 0.
    func testLuminanceKeepsChroma() throws {
        let net = try network()
        let base = testSky(width: w, height: h, seed: 21)
        let planes = [base.map { $0 * 1.2 }, base, base.map { $0 * 0.7 + 5 }]
        let cube = dir + "/rgb.fits", out = dir + "/rgb-lum.fits"
        try writeCube(cube, planes: planes)
        _ = try PlaneRestore.restoreFile(input: cube, output: out, network: net, extras: RestoreExtras(luminance: true))
        let got = try readCube(out).planes
        let lum = (0..<(w * h)).map { i -> Float in
            let sum: Double = Double(planes[0][i]) + Double(planes[1][i]) + Double(planes[2][i])
            return Float(sum / 3)
        }
        let lr = try restore2D(lum, net, name: "lum")
        for i in 0..<(w * h) {
            let mean = (got[0][i] + got[1][i] + got[2][i]) / 3
            XCTAssertEqual(mean, lr[i], accuracy: 2e-5 * max(1, abs(lr[i])), "pixel \(i)")
            XCTAssertGreaterThan(lum[i], 0)
            for j in 0..<3 {
                // out_j / out_1 == in_j / in_1: chroma kept.
                XCTAssertEqual(got[j][i] * planes[1][i], got[1][i] * planes[j][i], accuracy: 2e-5 * abs(got[1][i] * planes[j][i]) + 1e-3)
            }
        }
        // A sky-subtracted image (L <= 0 on part of the sky): there each plane is shifted by
        // L_restored - L, so the mean of the planes is still the restored luminance.
        let sub = testSky(width: w, height: h, seed: 22, level: 0)
        let subPlanes = [sub, sub.map { $0 * 0.5 }, sub.map { $0 - 2 }]
        let subCube = dir + "/sub.fits", subOut = dir + "/sub-lum.fits"
        try writeCube(subCube, planes: subPlanes)
        _ = try PlaneRestore.restoreFile(input: subCube, output: subOut, network: net, extras: RestoreExtras(luminance: true))
        let subGot = try readCube(subOut).planes
        let subLum = (0..<(w * h)).map { i -> Float in
            let sum: Double = Double(subPlanes[0][i]) + Double(subPlanes[1][i]) + Double(subPlanes[2][i])
            return Float(sum / 3)
        }
        let subLr = try restore2D(subLum, net, name: "sublum")
        var shifted = 0
        for i in 0..<(w * h) {
            let mean = (subGot[0][i] + subGot[1][i] + subGot[2][i]) / 3
            XCTAssertEqual(mean, subLr[i], accuracy: 1e-4 * max(1, abs(subLr[i])), "pixel \(i)")
            if subLum[i] <= 0 {
                shifted += 1
                for j in 0..<3 { XCTAssertEqual(subGot[j][i] - subPlanes[j][i], subLr[i] - subLum[i], accuracy: 1e-4 * max(1, abs(subLr[i]))) }
            }
        }
        XCTAssertGreaterThan(shifted, 100, "the test image has pixels with L <= 0")
        // Not a 3-plane image: refused.
        let grey = dir + "/grey.fits"
        try FITSIO.writeImage(path: grey, width: w, height: h, pixels: base, headerCards: [])
        XCTAssertThrowsError(try PlaneRestore.restoreFile(input: grey, output: dir + "/x.fits", network: net, extras: RestoreExtras(luminance: true))) {
            XCTAssertTrue(String(describing: $0).contains("3 planes"), String(describing: $0))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.fits"))
    }

    /// --strength S: output = S x restored + (1 - S) x input, NaN kept; 0 gives the input.
    func testStrengthBlendsWithInput() throws {
        let net = try network()
        var sky = testSky(width: w, height: h, seed: 31)
        sky[5 * w + 7] = .nan
        let p = dir + "/in.fits"
        try FITSIO.writeImage(path: p, width: w, height: h, pixels: sky, headerCards: [])
        let full = dir + "/full.fits"
        _ = try StreamingRestore.restoreFile(input: p, output: full, network: net)
        let r = try FITSIO.readImage(path: full).pixels
        for s in [0.0, 0.3] {
            let o = dir + "/s\(s).fits"
            _ = try PlaneRestore.restoreFile(input: p, output: o, network: net, extras: RestoreExtras(strength: s))
            let got = try FITSIO.readImage(path: o)
            XCTAssertTrue(got.pixels[5 * w + 7].isNaN)
            for i in 0..<(w * h) where i != 5 * w + 7 {
                let want = Float(s) * r[i] + (1 - Float(s)) * sky[i]
                XCTAssertEqual(got.pixels[i], want, accuracy: 1e-6 * abs(want), "strength \(s) pixel \(i)")
            }
            XCTAssertTrue(FITSHeader.value("ACNNOPTS", in: got.headerCards)?.contains("strength=\(s)") ?? false)
        }
        XCTAssertThrowsError(try PlaneRestore.restoreFile(input: p, output: dir + "/bad.fits", network: net, extras: RestoreExtras(strength: 1.5)))
    }

    /// --mask: non-zero mask pixels are treated as BLANK/NaN, exactly as NaN pixels in the input.
    func testMaskActsLikeBlankPixels() throws {
        let net = try network()
        let sky = testSky(width: w, height: h, seed: 41)
        var mask = [Float](repeating: 0, count: w * h)
        for i in [3 * w + 4, 3 * w + 5, 20 * w + 30, 35 * w + 39] { mask[i] = 4 }
        let p = dir + "/in.fits", m = dir + "/mask.fits", o = dir + "/masked.fits"
        try FITSIO.writeImage(path: p, width: w, height: h, pixels: sky, headerCards: [])
        try FITSIO.writeImage(path: m, width: w, height: h, pixels: mask, headerCards: [])
        _ = try PlaneRestore.restoreFile(input: p, output: o, network: net, extras: RestoreExtras(mask: m))
        let got = try FITSIO.readImage(path: o)
        let nanned = (0..<(w * h)).map { mask[$0] != 0 ? Float.nan : sky[$0] }
        let want = try restore2D(nanned, net, name: "nanned")
        XCTAssertEqual(got.invalidCount, 4)
        for i in 0..<(w * h) {
            if mask[i] != 0 { XCTAssertTrue(got.pixels[i].isNaN) } else { XCTAssertEqual(got.pixels[i], want[i], "pixel \(i)") }
        }
        // A mask of another size is refused.
        let small = dir + "/small.fits"
        try FITSIO.writeImage(path: small, width: 10, height: 10, pixels: [Float](repeating: 0, count: 100), headerCards: [])
        XCTAssertThrowsError(try PlaneRestore.restoreFile(input: p, output: dir + "/x.fits", network: net, extras: RestoreExtras(mask: small)))
    }

    /// An HST/JWST-style file: the DQ extension of the SCI image masks its non-zero pixels (unless
    /// turned off), and the image read is the SCI extension.
    func testDQExtensionMasksPixels() throws {
        let net = try network()
        let sky = testSky(width: w, height: h, seed: 51)
        var dq = [Int16](repeating: 0, count: w * h)
        dq[10 * w + 10] = 16; dq[11 * w + 12] = 4096
        let p = dir + "/flt.fits"
        try writeSciDQ(p, width: w, height: h, sci: sky, dq: dq)
        let probe = try FITSProbe(path: p + "[SCI]")
        XCTAssertEqual(probe.dqHDU, 2)
        XCTAssertTrue(PlaneRestore.needed(probe, RestoreExtras()))
        XCTAssertFalse(PlaneRestore.needed(probe, RestoreExtras(useDQ: false)))
        let o = dir + "/dq.fits"
        _ = try PlaneRestore.restoreFile(input: p + "[SCI]", output: o, network: net, extras: RestoreExtras())
        let got = try FITSIO.readImage(path: o)
        XCTAssertEqual(got.invalidCount, 2)
        XCTAssertTrue(got.pixels[10 * w + 10].isNaN && got.pixels[11 * w + 12].isNaN)
        let nanned = (0..<(w * h)).map { dq[$0] != 0 ? Float.nan : sky[$0] }
        let want = try restore2D(nanned, net, name: "dqref")
        for i in 0..<(w * h) where dq[i] == 0 { XCTAssertEqual(got.pixels[i], want[i]) }
        XCTAssertTrue(FITSHeader.value("ACNNOPTS", in: got.headerCards)?.contains("dq=2") ?? false)
        // Without the DQ extension's use: no pixel is invalid.
        let o2 = dir + "/nodq.fits"
        _ = try PlaneRestore.restoreFile(input: p + "[SCI]", output: o2, network: net, extras: RestoreExtras(strength: 0.99, useDQ: false))
        XCTAssertEqual(try FITSIO.readImage(path: o2).invalidCount, 0)
        // A file without DQ: nothing found.
        let plain = dir + "/plain.fits"
        try writeSciDQ(plain, width: w, height: h, sci: sky, dq: nil)
        XCTAssertNil(try FITSProbe(path: plain + "[SCI]").dqHDU)
    }

    /// Output names ending in .fz are tile-compressed (Rice, quantised as fpack does): the values
    /// are those of the uncompressed output within half a quantisation step of their tile, NaN kept.
    func testCompressedOutput() throws {
        let net = try network()
        var sky = testSky(width: w, height: h, seed: 61)
        sky[2 * w + 3] = .nan
        let p = dir + "/in.fits"
        try FITSIO.writeImage(path: p, width: w, height: h, pixels: sky, headerCards: [card("OBJECT", "'NGC 1'")])
        let plain = dir + "/out.fits", fz = dir + "/out.fits.fz"
        _ = try StreamingRestore.restoreFile(input: p, output: plain, network: net)
        _ = try StreamingRestore.restoreFile(input: p, output: fz, network: net)
        let a = try FITSIO.readImage(path: plain), b = try FITSIO.readImage(path: fz)
        XCTAssertEqual(b.hdu, 1, "the image is in the compressed extension")
        XCTAssertEqual(FITSHeader.value("OBJECT", in: b.headerCards), "NGC 1")
        // Quantisation steps per tile (one row per tile by default) from the ZSCALE column.
        var status: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        ffopen(&f, fz, READONLY, &status)
        var type: Int32 = 0
        ffmahd(f, 2, &type, &status)
        var zcmp = [CChar](repeating: 0, count: 80)
        ffgkys(f, "ZCMPTYPE", &zcmp, nil, &status)
        XCTAssertEqual(String(cString: zcmp), "RICE_1")
        var col: Int32 = 0
        var zname = Array("ZSCALE".utf8CString)
        ffgcno(f, 0, &zname, &col, &status)
        var rows = 0
        ffgnrw(f, &rows, &status)
        XCTAssertEqual(rows, h)
        var scale = [Double](repeating: 0, count: rows)
        var anynul: Int32 = 0
        ffgcvd(f, col, 1, 1, Int64(rows), 0, &scale, &anynul, &status)
        ffclos(f, &status)
        XCTAssertEqual(status, 0)
        XCTAssertTrue(b.pixels[2 * w + 3].isNaN)
        for y in 0..<h {
            for x in 0..<w where !(y == 2 && x == 3) {
                let i = y * w + x
                XCTAssertLessThanOrEqual(Double(abs(a.pixels[i] - b.pixels[i])), 0.5 * scale[y] * (1 + 1e-6) + 1e-6 * Double(abs(a.pixels[i])))
            }
        }
        XCTAssertLessThan(scale.max()!, 2, "quantisation steps are a fraction of the noise (sigma ~ 3)")
        // A cube written as .fz keeps its planes.
        let cube = dir + "/c.fits", cfz = dir + "/c-out.fits.fz"
        try writeCube(cube, planes: [sky, sky.map { $0 + 10 }])
        _ = try PlaneRestore.restoreFile(input: cube, output: cfz, network: net, extras: RestoreExtras())
        XCTAssertEqual(try FITSProbe(path: cfz).axes, [w, h, 2])
    }
}
