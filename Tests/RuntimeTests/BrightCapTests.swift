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

    /// A denoiser that declares the cap and the flux restore (denoise.cap_sigma,
    /// denoise.flux_restore_sigma) gets both by default: the same bits as asking for them;
    /// `--cap 0 --flux-restore 0` give the plain output; a value given overrides the declared one;
    /// with --in-memory a note says they were skipped; inspect lists them; a deconvolution model's
    /// declaration is ignored; `train --declare-cap` writes it and refuses another recipe.
    func testDeclaredDenoiserDefaults() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let exe = try astrocnnExecutable()
        try writeTaskModels(dir, seed: 73)
        let (w, h) = (72, 64)
        var g = SplitMix64(seed: 74)
        var px = (0..<(w * h)).map { _ in 200 + 30 * (g.float() - 0.5) }
        for (sy, sx) in [(20, 30), (50, 12)] {
            for y in 0..<h { for x in 0..<w { px[y * w + x] += 9000 * exp(-Float((y - sy) * (y - sy) + (x - sx) * (x - sx)) / 4) } }
        }
        try FITSIO.writeImage(path: dir + "/in.fits", width: w, height: h, pixels: px, headerCards: [])
        var m = try ModelReader(path: dir + "/d.acnn").model()
        m.metadata["denoise.cap_sigma"] = .float(40)
        m.metadata["denoise.flux_restore_sigma"] = .float(1.2)
        try ModelWriter.write(m, to: dir + "/declared.acnn", overwrite: true)
        let net = try Network(path: dir + "/declared.acnn")
        XCTAssertEqual(net.declaredDenoiseSteps.capSigma, 40)
        XCTAssertEqual(net.declaredDenoiseSteps.fluxRestoreSigma, 1.2)
        XCTAssertNil(try Network(path: dir + "/d.acnn").declaredDenoiseSteps.capSigma)
        // Values outside a step's range are not taken (a hostile or broken file cannot make every
        // run fail or blur): NaN, negative, a flux-restore sigma over its maximum.
        var bad = m
        bad.metadata["denoise.cap_sigma"] = .float(-.infinity)
        bad.metadata["denoise.flux_restore_sigma"] = .float(1e6)
        try ModelWriter.write(bad, to: dir + "/bad.acnn", overwrite: true)
        let badNet = try Network(path: dir + "/bad.acnn")
        XCTAssertNil(badNet.declaredDenoiseSteps.capSigma)
        XCTAssertNil(badNet.declaredDenoiseSteps.fluxRestoreSigma)

        func denoise(_ model: String, _ out: String, _ extra: [String]) throws -> (pixels: [UInt32], stdout: String, stderr: String) {
            let (s, o, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-m", dir + "/" + model, "-o", dir + "/" + out, "--quiet"] + extra)
            XCTAssertEqual(s, 0, o + e)
            return (try FITSIO.readImage(path: dir + "/" + out).pixels.map(\.bitPattern), o, e)
        }
        let asked = try denoise("d.acnn", "asked.fits", ["--cap", "40", "--flux-restore", "1.2"])
        let plain = try denoise("d.acnn", "plain.fits", [])
        let byDefault = try denoise("declared.acnn", "default.fits", [])
        XCTAssertEqual(byDefault.pixels, asked.pixels, "the declared defaults are the same steps as asking")
        XCTAssertNotEqual(byDefault.pixels, plain.pixels)
        XCTAssertTrue(byDefault.stdout.contains("declared defaults --cap 40.0 --flux-restore 1.2"), byDefault.stdout)
        XCTAssertTrue(try FITSIO.readImage(path: dir + "/default.fits").keyword("ACNNOPTS")?.contains("cap_sigma=40") ?? false)
        XCTAssertEqual(try denoise("declared.acnn", "off.fits", ["--cap", "0", "--flux-restore", "0"]).pixels, plain.pixels)
        XCTAssertEqual(try denoise("declared.acnn", "cap60.fits", ["--cap", "60"]).pixels,
                       try denoise("d.acnn", "cap60b.fits", ["--cap", "60", "--flux-restore", "1.2"]).pixels, "a given value overrides")
        let inMemory = try denoise("declared.acnn", "mem.fits", ["--in-memory"])
        XCTAssertEqual(inMemory.pixels, plain.pixels)
        XCTAssertTrue(inMemory.stderr.contains("declares --cap 40.0 as its default; skipped"), inMemory.stderr)
        let (si, text, ei) = try runProcess(exe, ["inspect", dir + "/declared.acnn"])
        XCTAssertEqual(si, 0, ei)
        XCTAssertTrue(text.contains("the bright cap at sky + 40.0 sigma") && text.contains("flux restore, Gaussian sigma 1.2 px"), text)

        // A deconvolution model's declaration is not applied (neither step is for one).
        var c = try ModelReader(path: dir + "/c.acnn").model()
        c.metadata["denoise.cap_sigma"] = .float(40)
        try ModelWriter.write(c, to: dir + "/c-declared.acnn", overwrite: true)
        XCTAssertNil(try Network(path: dir + "/c-declared.acnn").declaredDenoiseSteps.capSigma)

        // train --declare-cap / --declare-flux-restore write the keys; refused for another recipe.
        try FITSIO.writeImage(path: dir + "/a.fits", width: 96, height: 96, pixels: (0..<(96 * 96)).map { _ in 100 + 10 * g.float() }, headerCards: [])
        try FITSIO.writeImage(path: dir + "/b.fits", width: 96, height: 96, pixels: (0..<(96 * 96)).map { _ in 100 + 10 * g.float() }, headerCards: [])
        let out = dir + "/t.acnn"
        var (st, _, err) = try runProcess(exe, ["train", "--recipe", "astro-unet", "--images", dir + "/a.fits", dir + "/b.fits", "--validate", "b.fits",
                                               "--widths", "4,8", "--crop", "32", "--batch", "2", "--samples", "4", "--validation-samples", "2",
                                               "--epochs", "1", "--declare-cap", "50", "--declare-flux-restore", "1.5", "--threads", "2", "--quiet", "-o", out])
        XCTAssertEqual(st, 0, err)
        let t = try ModelReader(path: out).model()
        XCTAssertEqual(t.metadata["denoise.cap_sigma"], .float(50))
        XCTAssertEqual(t.metadata["denoise.flux_restore_sigma"], .float(1.5))
        (st, _, err) = try runProcess(exe, ["train", "--recipe", "deconv-unet", "--images", dir + "/a.fits", dir + "/b.fits", "--validate", "b.fits",
                                           "--declare-cap", "50", "-o", dir + "/n.acnn"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--declare-cap"), err)
    }
}
