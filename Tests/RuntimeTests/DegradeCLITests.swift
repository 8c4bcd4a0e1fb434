import Foundation
import ModelFormat
import Runtime
import XCTest

/// `astrocnn degrade`, run as a user would.
final class DegradeCLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func card(_ key: String, _ value: String) -> String {
        let c = key.padding(toLength: 8, withPad: " ", startingAt: 0) + "= " + value.leftPad(20)
        return c.padding(toLength: 80, withPad: " ", startingAt: 0)
    }

    func testDegradeWritesTheShortExposureWithItsProvenance() throws {
        let exe = try astrocnnExecutable()
        let (w, h) = (64, 48)
        var px = [Float](repeating: 200, count: w * h)
        for i in 0..<px.count where i % 7 == 0 { px[i] = 5000 }
        px[10] = .nan
        let input = dir + "/long.fits"
        try FITSIO.writeImage(path: input, width: w, height: h, pixels: px,
                              headerCards: [card("GAIN", "2.5"), card("EXPTIME", "300."), card("RDNOISE", "5."), card("CRVAL1", "83.82")])
        let out = dir + "/short.fits"
        let (s, o, e) = try runProcess(exe, ["degrade", input, "-o", out, "--ratio", "4", "--seed", "3"])
        XCTAssertEqual(s, 0, o + e)
        let img = try FITSIO.readImage(path: out)
        XCTAssertEqual(img.keyword("CRVAL1"), "83.82", "the WCS is kept")
        XCTAssertEqual(img.keyword("ACNNRATI").flatMap(Double.init), 4)
        XCTAssertEqual(img.keyword("ACNNGAIN").flatMap(Double.init), 2.5)
        XCTAssertEqual(img.keyword("ACNNRON").flatMap(Double.init), 5)
        XCTAssert(img.headerCards.contains { $0.hasPrefix("HISTORY") && $0.contains("Poisson") }, "HISTORY states the model")
        XCTAssertTrue(img.invalid[10], "NaN stays NaN")
        // Long-exposure scale: mean preserved, variance (r/g)^2 (I g / r + RON^2) at each level.
        for level in [Float(200), 5000] {
            let v = (0..<px.count).filter { px[$0] == level }.map { Double(img.pixels[$0]) }
            let m = v.reduce(0, +) / Double(v.count)
            let expectVar = (4.0 / 2.5) * (4.0 / 2.5) * (Double(level) * 2.5 / 4 + 25)
            XCTAssertEqual(m, Double(level), accuracy: 5 * (expectVar / Double(v.count)).squareRoot(), "level \(level)")
        }
        // Same seed, same bits; refuses to overwrite without --overwrite.
        let (s2, _, e2) = try runProcess(exe, ["degrade", input, "-o", out, "--ratio", "4", "--seed", "3"])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("exists"), e2)
        let again = dir + "/again.fits"
        _ = try runProcess(exe, ["degrade", input, "-o", again, "--ratio", "4", "--seed", "3", "--threads", "1"])
        XCTAssertEqual(try FITSIO.readImage(path: again).pixels.map(\.bitPattern), img.pixels.map(\.bitPattern))
    }

    func testDegradeErrors() throws {
        let exe = try astrocnnExecutable()
        let input = dir + "/nogain.fits"
        try FITSIO.writeImage(path: input, width: 20, height: 20, pixels: [Float](repeating: 1, count: 400), headerCards: [])
        let cases: [([String], String)] = [
            (["degrade", input, "-o", dir + "/o.fits", "--ratio", "2"], "no gain"),
            (["degrade", input, "-o", dir + "/o.fits", "--ratio", "0.5", "--gain", "1"], "ratio"),
            (["degrade", input, "-o", dir + "/o.fits", "--noise", "gaussian"], "exactly one of"),
            (["degrade", input, "-o", dir + "/o.fits", "--noise", "poisson"], "--ratio"),
            (["degrade", input, "-o", dir + "/o.fits", "--noise", "gaussian", "--sigma", "1", "--psf", "gauss:2"], "unknown PSF"),
            (["degrade", dir + "/missing.fits", "-o", dir + "/o.fits", "--ratio", "2"], "no such file"),
        ]
        for (args, message) in cases {
            let (s, o, e) = try runProcess(exe, args)
            XCTAssertNotEqual(s, 0, args.joined(separator: " "))
            XCTAssertTrue((o + e).contains(message), "\(args.joined(separator: " ")): \(o + e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.fits"))
        // Gaussian noise by a multiple of the sky noise, after a Moffat PSF.
        var g = SplitMix64(seed: 4)
        let noisy = (0..<400).map { _ in Float(10 + g.float()) }
        let sky = dir + "/sky.fits"
        try FITSIO.writeImage(path: sky, width: 20, height: 20, pixels: noisy, headerCards: [])
        let (s, o, e) = try runProcess(exe, ["degrade", sky, "-o", dir + "/g.fits", "--noise", "gaussian", "--sigma-sky", "2", "--psf", "moffat:fwhm=2.5,beta=3"])
        XCTAssertEqual(s, 0, o + e)
        let img = try FITSIO.readImage(path: dir + "/g.fits")
        XCTAssertEqual(img.keyword("ACNNPSF"), "moffat:fwhm=2.5,beta=3")
        XCTAssertNotNil(img.keyword("ACNNSIGM").flatMap(Double.init))
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
