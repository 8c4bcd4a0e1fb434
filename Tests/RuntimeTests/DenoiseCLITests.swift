import Foundation
import ModelFormat
import Runtime
import XCTest

/// `astrocnn detect` and `astrocnn evaluate --task denoise`, run as a user would.
final class DenoiseCLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A star field (Gaussian stars, sigma 1.5 px) on a sky of 100 with Gaussian noise; `shift`
    /// moves the stars, `stars` seeds their list.
    func field(_ w: Int, _ h: Int, noise: Float, seed: UInt64, stars: UInt64 = 1, shift: (Double, Double) = (0, 0), count: Int = 40) -> [Float] {
        var g = SplitMix64(seed: stars)
        let list = (0..<count).map { _ in (Double(g.next() % UInt64(h - 8) + 4), Double(g.next() % UInt64(w - 8) + 4), 300 + Double(g.next() % 3000)) }
        var n = SplitMix64(seed: seed)
        var px = [Float](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w {
            var v = 100.0
            for (sy, sx, f) in list {
                let dy = Double(y) - sy - shift.0, dx = Double(x) - sx - shift.1
                if dy * dy + dx * dx < 120 { v += f * exp(-(dy * dy + dx * dx) / (2 * 1.5 * 1.5)) }
            }
            var s: Float = 0
            for _ in 0..<12 { s += n.float() }
            px[y * w + x] = Float(v) + noise * s / 2
        } }
        return px
    }

    func write(_ name: String, _ px: [Float], _ w: Int, _ h: Int, gain: Bool = true) throws -> String {
        let p = dir + "/" + name
        let cards = gain ? ["GAIN    =                  2.0".padding(toLength: 80, withPad: " ", startingAt: 0)] : []
        try FITSIO.writeImage(path: p, width: w, height: h, pixels: px, headerCards: cards)
        return p
    }

    func testDetectWritesTheCatalogue() throws {
        let exe = try astrocnnExecutable()
        let img = try write("f.fits", field(120, 100, noise: 4, seed: 1), 120, 100)
        let csv = dir + "/s.csv"
        let (s, o, e) = try runProcess(exe, ["detect", img, "--csv", csv, "--back-size", "32", "--preview", dir + "/p.png"])
        XCTAssertEqual(s, 0, o + e)
        let lines = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.first, "x,y,flux,flux_err,snr,npix,peak,flags")
        XCTAssertGreaterThan(lines.count, 20, "most of the 40 stars are found")
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/p.png"))
        let nan = try write("nan.fits", [Float](repeating: .nan, count: 400), 20, 20)
        let (s2, _, e2) = try runProcess(exe, ["detect", nan, "--csv", dir + "/n.csv"])
        XCTAssertNotEqual(s2, 0); XCTAssertFalse(e2.isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/n.csv"))
    }

    func testEvaluateDenoiseSimulatedAndRealPairs() throws {
        let exe = try astrocnnExecutable()
        let (w, h) = (128, 96)
        let long = try write("long.fits", field(w, h, noise: 2, seed: 1), w, h)
        let csv = dir + "/d.csv", panel = dir + "/d.png"
        let (s, o, e) = try runProcess(exe, ["evaluate", "--task", "denoise", "--images", long, "--ratio", "2", "--back-size", "32",
                                             "--csv", csv, "--panel", panel, "--threads", "2"])
        XCTAssertEqual(s, 0, o + e)
        for m in ["noisy", "gaussian", "median", "starlet", "RFE[%]", "SNR gain", "F"] { XCTAssertTrue(o.contains(m), "table lacks \(m):\n\(o)") }
        let rows = try String(contentsOfFile: csv, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.first, "image,method,psnr,ssim,kl,tpr,precision,f,rfe,rfe_err,snr_gain,seconds,parameters,psnr_reference_noise_removed,psnr_faint_reference_noise_removed")
        XCTAssertEqual(rows.count, 5)
        // Gaussian and starlet denoising, tuned against the truth, beat the noisy input in PSNR (a
        // median filter clips these sharp stars' peaks and loses).
        let psnr = Dictionary(uniqueKeysWithValues: rows.dropFirst().map { r -> (String, Double) in
            let f = r.split(separator: ",", omittingEmptySubsequences: false)
            return (String(f[1]), Double(f[2]) ?? .nan)
        })
        for m in ["gaussian", "starlet"] { XCTAssertGreaterThan(psnr[m]!, psnr["none"]!, m) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: panel))
        // A real pair, shifted by (1.5, -2.25) px: registered and scored on the overlap.
        let short = try write("short.fits", field(w, h, noise: 4, seed: 2, shift: (1.5, -2.25)), w, h)
        let (s2, o2, e2) = try runProcess(exe, ["evaluate", "--task", "denoise", "--input", short, "--reference", long, "--back-size", "32",
                                                "--methods", "none,gaussian"])
        XCTAssertEqual(s2, 0, o2 + e2)
        let shift = try XCTUnwrap(e2.range(of: #"shift (-?[0-9.]+), (-?[0-9.]+) px"#, options: .regularExpression).map { String(e2[$0]) })
        let numbers = shift.dropFirst(6).dropLast(3).split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        XCTAssertEqual(numbers.count, 2)
        XCTAssertEqual(numbers.first ?? 0, 1.5, accuracy: 0.05, e2)
        XCTAssertEqual(numbers.last ?? 0, -2.25, accuracy: 0.05, e2)
        // A real reference has noise of its own: measured, and each method also scored without it.
        XCTAssertTrue(e2.contains("reference noise: sky sigma"), e2)
        for m in ["with the reference's own noise removed", "ceiling", "faint pixels"] { XCTAssertTrue(o2.contains(m), "lacks \(m):\n\(o2)") }
        // PSF matching by a fitted kernel runs on the same pair.
        let (s3, o3, e3) = try runProcess(exe, ["evaluate", "--task", "denoise", "--input", short, "--reference", long, "--back-size", "32",
                                                "--methods", "none,gaussian", "--psf-match", "--psf-match-fit"])
        XCTAssertEqual(s3, 0, o3 + e3)
        XCTAssertTrue(e3.contains("PSF-matched pixel scores"), e3)
    }

    func testEvaluateDenoiseBadInput() throws {
        let exe = try astrocnnExecutable()
        let (w, h) = (128, 96)
        let long = try write("long.fits", field(w, h, noise: 2, seed: 1), w, h)
        let other = try write("other.fits", field(w, h, noise: 2, seed: 3, stars: 77), w, h)
        let small = try write("small.fits", field(100, 96, noise: 2, seed: 1), 100, 96)
        let empty = try write("empty.fits", field(w, h, noise: 2, seed: 1, count: 0), w, h)
        let nan = try write("nan.fits", [Float](repeating: .nan, count: w * h), w, h)
        let cases: [([String], String)] = [
            (["--input", other, "--reference", long], "do not overlap"),
            (["--input", small, "--reference", long], "differ in size"),
            (["--images", empty, "--ratio", "2"], "no sources"),
            (["--images", nan, "--ratio", "2"], "NaN"),
            (["--input", long], "--reference"),
            (["--images", long, "--frames", long, other], "exactly one of"),
            (["--images", long, "--methods", "none,wiener"], "unknown denoising method"),
            (["--input", long, "--reference", long, "--psf-match-fit"], "--psf-match-fit needs --psf-match"),
        ]
        for (args, message) in cases {
            let (s, o, e) = try runProcess(exe, ["evaluate", "--task", "denoise", "--back-size", "32"] + args)
            XCTAssertNotEqual(s, 0, args.joined(separator: " "))
            XCTAssertTrue((o + e).contains(message), "\(args.joined(separator: " ")): expected '\(message)' in \(o + e)")
        }
    }
}
