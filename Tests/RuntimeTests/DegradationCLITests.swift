import Foundation
import ModelFormat
import Runtime
import XCTest

/// `train` and `evaluate` with `--psf` and `--noise`, run as a user would (kept fast: tiny images
/// and a few samples).
final class DegradationCLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func image(_ name: String, side: Int, seed: UInt64) throws -> String {
        var rng = SplitMix64(seed: seed)
        var px = [Float](repeating: 0, count: side * side)
        for i in 0..<px.count { px[i] = 100 + Float(rng.next() % 1000) / 100 }
        for _ in 0..<20 { px[Int(rng.next() % UInt64(px.count))] += 500 }
        let path = dir + "/" + name
        try FITSIO.writeImage(path: path, width: side, height: side, pixels: px, headerCards: [])
        return path
    }

    func testBadSpecsAreClearErrors() throws {
        let exe = try astrocnnExecutable()
        let img = try image("a.fits", side: 80, seed: 1)
        let cases: [([String], String)] = [
            (["train", "--images", img, "-o", dir + "/m.acnn", "--noise", "gauss:sigma=1"], "unknown noise"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--noise", "gaussian:sigma=0.03-0.003"], "LO <= HI"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--noise", "poisson:read=5"], "needs electrons"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--psf", "moffat:fwhm=0"], "fwhm"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--psf", "nosuch.fits"], "nosuch.fits"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--noise", "gaussian:sigma=0.01", "--sigma", "0.01"], "not both"),
            (["train", "--images", img, "-o", dir + "/m.acnn", "--resume", dir + "/c.acnn", "--noise", "none"], "checkpoint's PSF"),
            (["evaluate", "--images", img, "--methods", "none", "--noise", "sky:k=x"], "not a number"),
            (["evaluate", "--images", img, "--methods", "none", "--psf", "airy:size=0"], "size"),
        ]
        for (args, why) in cases {
            let (s, o, e) = try runProcess(exe, args)
            XCTAssertNotEqual(s, 0, args.joined(separator: " "))
            XCTAssertTrue((o + e).contains(why), "\(args.joined(separator: " ")): \(o + e)")
            XCTAssertFalse((o + e).contains("Fatal error"), "no trap")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m.acnn"))
    }

    func testTrainRecordsPSFAndNoiseAndInspectShowsThem() throws {
        let exe = try astrocnnExecutable()
        let img = try image("a.fits", side: 160, seed: 2)
        let out = dir + "/m.acnn"
        let (s, o, e) = try runProcess(exe, ["train", "--recipe", "flamary1", "--images", img, "-o", out, "--psf", "gaussian:fwhm=2.5",
                                             "--noise", "gaussian:sigma=0.005-0.02", "--samples", "20", "--validation-samples", "10",
                                             "--batch", "10", "--epochs", "1", "--threads", "2", "--quiet"])
        XCTAssertEqual(s, 0, o + e)
        let m = try ModelReader(path: out).model()
        XCTAssertEqual(m.metadata["training.psf"], .string("gaussian:fwhm=2.5"))
        XCTAssertEqual(m.metadata["training.noise"], .string("gaussian:sigma=0.005-0.02"))
        let (s2, o2, e2) = try runProcess(exe, ["inspect", out])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(o2.contains("trained    for psf gaussian:fwhm=2.5, noise gaussian:sigma=0.005-0.02"), o2)
        // evaluate with the same degradation scores the classical methods with that kernel.
        let (s3, o3, e3) = try runProcess(exe, ["evaluate", "--images", img, "--methods", "none,wiener", "--psf", "gaussian:fwhm=2.5",
                                                "--noise", "sky:k=1.5", "--threads", "2"])
        XCTAssertEqual(s3, 0, o3 + e3)
        XCTAssertTrue(e3.contains("noise gaussian sigma="), e3)
        XCTAssertTrue(o3.contains("PSNR"), o3)
    }

    /// `train --recipe deconv-unet` as a user runs it: a held-out validation image, the PSF and
    /// noise recorded and shown by inspect with the input units, `evaluate` running the model,
    /// `restore` on a FITS file in other units, refusals with clear messages.
    func testDeconvolutionUNetTrainInspectEvaluateRestore() throws {
        let exe = try astrocnnExecutable()
        let a = try image("a.fits", side: 96, seed: 3), b = try image("b.fits", side: 80, seed: 4)
        let out = dir + "/d.acnn"
        let args = ["train", "--recipe", "deconv-unet", "--images", a, b, "--validate", "b.fits", "--widths", "4,8,16", "--crop", "32",
                    "--samples", "8", "--validation-samples", "4", "--batch", "4", "--epochs", "2", "--psf", "moffat:fwhm=3,beta=3",
                    "--noise", "sky:k=1", "--threads", "2", "-o", out, "--quiet"]
        let (s, o, e) = try runProcess(exe, args)
        XCTAssertEqual(s, 0, o + e)
        let m = try ModelReader(path: out).model()
        XCTAssertEqual(m.metadata["training.task"], .string("deconvolve"))
        XCTAssertEqual(m.metadata["normalization"], .string("noise_mad"))
        let (s2, o2, e2) = try runProcess(exe, ["inspect", out])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(o2.contains("trained    for psf moffat:fwhm=3,beta=3, noise sky:k=1; input in noise_mad units"), o2)
        let (s3, o3, e3) = try runProcess(exe, ["evaluate", "--images", a, "--methods", "none,wiener,unet", "--models", "unet=" + out,
                                                "--psf", "moffat:fwhm=3,beta=3", "--noise", "sky:k=1", "--threads", "2"])
        XCTAssertEqual(s3, 0, o3 + e3)
        XCTAssertTrue(o3.contains("unet"), o3)
        let restored = dir + "/r.fits"
        let (s4, o4, e4) = try runProcess(exe, ["restore", a, "-m", out, "-o", restored, "--quiet"])
        XCTAssertEqual(s4, 0, o4 + e4)
        let r = try FITSIO.readImage(path: restored)
        XCTAssertEqual(r.width, 96)
        XCTAssertTrue(r.headerCards.contains { $0.contains("noise_mad") }, "the normalisation is recorded")
        // Refusals: a denoiser option on the deconvolution recipe's resume, no validation image,
        // --init-weights with --resume, weights of another width.
        let bad: [([String], String)] = [
            (["train", "--recipe", "deconv-unet", "--images", a, b, "-o", dir + "/x.acnn"], "--validate"),
            (["train", "--recipe", "astro-unet", "--images", a, b, "--validate", "b.fits", "--psf", "moffat:fwhm=3", "-o", dir + "/x.acnn"], "--psf"),
            (["train", "--recipe", "deconv-unet", "--images", a, b, "--validate", "b.fits", "--resume", dir + "/d.ckpt.acnn",
              "--init-weights", out, "-o", dir + "/x.acnn"], "--init-weights"),
            (["train", "--recipe", "deconv-unet", "--images", a, b, "--validate", "b.fits", "--widths", "4,8", "--crop", "32",
              "--init-weights", out, "-o", dir + "/x.acnn"], "do not match"),
        ]
        for (args, why) in bad {
            let (s, o, e) = try runProcess(exe, args)
            XCTAssertNotEqual(s, 0, args.joined(separator: " "))
            XCTAssertTrue((o + e).contains(why), "\(args.joined(separator: " ")): \(o + e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.acnn"))
    }
}
