import Foundation
import ModelFormat
import Runtime
import XCTest

/// `denoise --cap K`: the network sees the input capped at sky + K sigma, the excess is added back.
final class BrightCapTests: XCTestCase {
    /// The cap of a streamed source equals the in-memory one (same pixels sampled); the output of
    /// `--cap 50` is the plain output of the capped image with the excess added back (same bits),
    /// then flux-restored against the original input with `--flux-restore`; the header says so;
    /// deconvolution models and --luminance are refused.
    func testDenoiseCapCLI() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let exe = try astrocnnExecutable()
        try writeTaskModels(dir, seed: 71)
        let (w, h) = (80, 96)
        var g = SplitMix64(seed: 72)
        var px = (0..<(w * h)).map { _ in 100 + 20 * (g.float() - 0.5) }
        for (sy, sx) in [(20, 30), (60, 50), (75, 12)] {
            for y in 0..<h { for x in 0..<w {
                let r2 = Float((y - sy) * (y - sy) + (x - sx) * (x - sx))
                px[y * w + x] += 8000 * exp(-r2 / 4.5)
            } }
        }
        px[3 * w + 3] = .nan
        try FITSIO.writeImage(path: dir + "/in.fits", width: w, height: h, pixels: px, headerCards: [])
        let source = try FITSReader(path: dir + "/in.fits")
        let streamed = try XCTUnwrap(try BrightCap.level(source, k: 50))
        let inMemory = try XCTUnwrap(BrightCap.level(count: px.count, k: 50) { Double(px[$0]) })
        XCTAssertEqual(streamed.cap, inMemory.cap)
        XCTAssertLessThan(streamed.cap, 1000, "sky 100, sigma about 6")
        let cap = Float(streamed.cap)
        XCTAssertGreaterThan(px.filter { $0 > cap }.count, 10, "the stars' cores are capped")
        try FITSIO.writeImage(path: dir + "/capped.fits", width: w, height: h, pixels: px.map { $0 > cap ? cap : $0 }, headerCards: [])

        func denoise(_ input: String, _ out: String, _ extra: [String]) throws -> [Float] {
            let (s, o, e) = try runProcess(exe, ["denoise", input, "-m", dir + "/d.acnn", "-o", out, "--quiet"] + extra)
            XCTAssertEqual(s, 0, o + e)
            return try FITSIO.readImage(path: out).pixels
        }
        let plainOfCapped = try denoise(dir + "/capped.fits", dir + "/p.fits", [])
        let expected = zip(plainOfCapped, px).map { o, x in x > cap && !o.isNaN ? o + (x - cap) : o }
        let capped = try denoise(dir + "/in.fits", dir + "/c1.fits", ["--cap", "50"])
        XCTAssertEqual(capped.map(\.bitPattern), expected.map(\.bitPattern))
        let both = try denoise(dir + "/in.fits", dir + "/c2.fits", ["--cap", "50", "--flux-restore", "1.5"])
        let expectedBoth = try FluxRestore.apply(restored: expected, input: px, width: w, height: h, sigma: 1.5)
        XCTAssertEqual(both.map(\.bitPattern), expectedBoth.map(\.bitPattern))
        let header = try FITSIO.readImage(path: dir + "/c2.fits")
        XCTAssertTrue(header.headerCards.contains { $0.hasPrefix("HISTORY") && $0.contains("Bright cap") })
        XCTAssertTrue(header.keyword("ACNNOPTS")?.contains("cap_sigma=50") ?? false)
        for (args, words) in [(["-m", dir + "/c.acnn", "--cap", "50"], "deconvolution model"),
                              (["-m", dir + "/d.acnn", "--cap", "-1"], "--cap"),
                              (["-m", dir + "/d.acnn", "--cap", "50", "--luminance"], "--luminance")] {
            let (s, _, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-o", dir + "/x.fits", "--quiet"] + args)
            XCTAssertNotEqual(s, 0)
            XCTAssertTrue(e.contains(words), e)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.fits"))
        }
    }
}
