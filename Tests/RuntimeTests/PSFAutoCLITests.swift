import Foundation
import ModelFormat
import Runtime
import XCTest

/// `astrocnn psf`, `deconvolve --psf auto` and `check` on star fields observed through a known
/// Moffat PSF, run as a user would.
final class PSFAutoCLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A 256x256 field: 70 stars (Moffat FWHM `fwhm`, beta `beta`, 5x5 samples per pixel, at
    /// random sub-pixel positions), sky 100, Gaussian noise sigma 2, GAIN keyword.
    func field(_ path: String, fwhm: Double, beta: Double, seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let n = 256
        var px = [Double](repeating: 100, count: n * n)
        let alpha = fwhm / (2 * (pow(2, 1 / beta) - 1).squareRoot())
        let r = Int(6 * fwhm)
        for _ in 0..<70 {
            let sy = Double.random(in: 16..<Double(n - 16), using: &rng), sx = Double.random(in: 16..<Double(n - 16), using: &rng)
            let flux = exp(Double.random(in: log(3000.0)...log(80000.0), using: &rng))
            var prof: [(Int, Double)] = []
            var total = 0.0
            for y in max(0, Int(sy) - r)...min(n - 1, Int(sy) + r) { for x in max(0, Int(sx) - r)...min(n - 1, Int(sx) + r) {
                var v = 0.0
                for j in 0..<5 { for i in 0..<5 {
                    let dy = Double(y) + (Double(j) - 2) / 5 - sy, dx = Double(x) + (Double(i) - 2) / 5 - sx
                    v += pow(1 + (dy * dy + dx * dx) / (alpha * alpha), -beta)
                } }
                prof.append((y * n + x, v)); total += v
            } }
            for (i, v) in prof { px[i] += flux * v / total }
        }
        let pixels = px.map { v -> Float in
            let g = (-2 * log(max(1e-300, Double.random(in: 0..<1, using: &rng)))).squareRoot() * cos(2 * .pi * Double.random(in: 0..<1, using: &rng))
            return Float(v + 2 * g)
        }
        try FITSIO.writeImage(path: path, width: n, height: n, pixels: pixels,
                              headerCards: ["GAIN    =                  4.0 / e-/ADU".padding(toLength: 80, withPad: " ", startingAt: 0)])
    }

    func testPSFMeasuredAndAutoDeconvolutionChoosesTheMatchingModel() throws {
        let exe = try astrocnnExecutable()
        let input = dir + "/moffat4.fits"
        try field(input, fwhm: 4, beta: 3, seed: 1)
        // astrocnn psf: the kernel and its fitted profile.
        var (s, out, err) = try runProcess(exe, ["psf", input, "-o", dir + "/psf.fits"])
        XCTAssertEqual(s, 0, err)
        let k = try FITSIO.readImage(path: dir + "/psf.fits")
        XCTAssertEqual(k.width % 2, 1)
        XCTAssertEqual(Double(k.pixels.reduce(0, +)), 1, accuracy: 1e-4)
        XCTAssertEqual(Double(k.keyword("PSFFWHM") ?? "") ?? 0, 4, accuracy: 0.2, out)
        XCTAssertEqual(Double(k.keyword("PSFBETA") ?? "") ?? 0, 3, accuracy: 0.75, out)
        // deconvolve --psf auto: the shipped Moffat FWHM 4 beta 3 model is chosen and run.
        (s, out, err) = try runProcess(exe, ["deconvolve", input, "--psf", "auto", "--quiet"])
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains("PSF measured from"), out)
        let restored = dir + "/moffat4_deconvolved.fits"
        let img = try FITSIO.readImage(path: restored)
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let moffat = try ModelReader(path: repo + "/models/deconv-unet-moffat.acnn")
        XCTAssertEqual(img.keyword("ACNNCRC"), checksumString(moffat.fileChecksum), "the model trained for moffat:fwhm=4,beta=3 is the one run")
        // check prints both statistics and exits 0 (pass) or 3 (fail), never 1.
        (s, out, err) = try runProcess(exe, ["check", input, restored, "--psf", dir + "/psf.fits"])
        XCTAssertTrue(s == 0 || s == 3, err)
        XCTAssertTrue(out.contains("reduced chi-square") && out.contains("checkerboard test") && out.contains("gain 4"), out)
        // deconvolve --check and restore --check print the same checks after writing the output.
        (s, out, err) = try runProcess(exe, ["deconvolve", input, "--psf", "auto", "--check", "-o", dir + "/c1.fits", "--quiet"])
        XCTAssertTrue(s == 0 || s == 3, err)
        XCTAssertTrue(out.contains("check: P") && out.contains("checkerboard test") && FileManager.default.fileExists(atPath: dir + "/c1.fits"), out)
        print("deconvolve --psf auto --check on a Moffat FWHM 4 beta 3 field:\n" + out)
        (s, out, err) = try runProcess(exe, ["restore", input, "-m", "deconv-unet", "-o", dir + "/c2.fits", "--check", "--quiet"])
        XCTAssertEqual(s, 1); XCTAssertTrue(err.contains("--check needs the PSF"), err)
        (s, out, err) = try runProcess(exe, ["restore", input, "-m", "deconv-unet", "-o", dir + "/c2.fits", "--check", "--psf", dir + "/psf.fits", "--quiet"])
        XCTAssertTrue(s == 0 || s == 3, err)
        XCTAssertTrue(out.contains("reduced chi-square"), out)
        XCTAssertTrue(err.contains("warning") && err.contains("was trained for --psf airy"), "a model trained for another PSF is flagged: \(err)")
        print("restore -m deconv-unet (trained for the Airy PSF) --check on the Moffat field:\n" + out)
        // The input itself as a "restoration" fails the data fit on the sources.
        (s, out, err) = try runProcess(exe, ["check", input, input, "--psf", "auto"])
        XCTAssertEqual(s, 3, out + err)
        XCTAssertTrue(out.contains("does NOT reproduce the input") && out.contains("check: FAIL"), out)
    }

    /// A PSF no fixed-PSF model was trained for goes to the shipped deconv-psf (which takes the
    /// PSF at run time), with a note, for --psf auto and --psf SPEC; a PSF outside its family is
    /// refused; with no PSF-aware model visible (a file of its name hiding it), --psf auto is
    /// refused with the measured PSF written for training.
    func testAPSFNoFixedModelCoversGoesToThePSFAwareModel() throws {
        let exe = try astrocnnExecutable()
        let input = dir + "/narrow.fits"
        try field(input, fwhm: 2.2, beta: 6, seed: 2)
        let aware = try ModelReader(path: repositoryRoot + "/models/deconv-psf.acnn")
        var (s, _, err) = try runProcess(exe, ["deconvolve", input, "--psf", "auto", "--quiet"])
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(err.contains("no model was trained for --psf auto") && err.contains("takes the PSF at run time"), err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/narrow_deconvolved.fits").keyword("ACNNCRC"), checksumString(aware.fileChecksum))
        (s, _, err) = try runProcess(exe, ["deconvolve", input, "--psf", "gaussian:fwhm=2.5", "-o", dir + "/g.fits", "--quiet"])
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(err.contains("no model was trained for --psf gaussian:fwhm=2.5"), err)
        let g = try FITSIO.readImage(path: dir + "/g.fits")
        XCTAssertEqual(g.keyword("ACNNCRC"), checksumString(aware.fileChecksum))
        XCTAssertTrue(g.headerCards.joined().contains("ACNNDC"), "the model's declared correction runs")
        (s, _, err) = try runProcess(exe, ["deconvolve", input, "--psf", "gaussian:fwhm=30", "-o", dir + "/w.fits", "--quiet"])
        XCTAssertNotEqual(s, 0)
        XCTAssertTrue(err.contains("--psf"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/w.fits"))

        let hide = dir + "/hide"
        try FileManager.default.createDirectory(atPath: hide, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: repositoryRoot + "/models/deconv-unet-moffat.acnn", toPath: hide + "/deconv-psf.acnn")
        try FileManager.default.removeItem(atPath: dir + "/narrow_deconvolved.fits")
        (s, _, err) = try runProcess(exe, ["deconvolve", input, "--psf", "auto", "--model-dir", hide, "--quiet"])
        XCTAssertNotEqual(s, 0)
        XCTAssertTrue(err.contains("no model was trained for a PSF like this image's") && err.contains("--recipe deconv-unet --psf"), err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/narrow_psf.fits"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/narrow_deconvolved.fits"))
    }
}
