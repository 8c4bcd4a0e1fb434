import Foundation
import ModelFormat
import Runtime
import XCTest

/// The `astrocnn` command line, run as a user would.
final class CLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func writeModel(_ m: Model) throws -> String {
        let p = dir + "/model.acnn"
        try ModelWriter.write(m, to: p)
        return p
    }

    func testInspectShowsGraphAndFailsOnDamage() throws {
        let exe = try astrocnnExecutable()
        let path = try writeModel(try Architectures.unet(widths: [4, 8, 16], initializer: randomInit(seed: 1)))
        let (ok, out, _) = try runProcess(exe, ["inspect", path])
        XCTAssertEqual(ok, 0)
        for s in ["receptive", "size multiple 4", "leaky_relu", "conv_transpose2d", "constant_channel", "param=exposure_ratio", "FLOPs", "ok"] {
            XCTAssertTrue(out.contains(s), "inspect output should mention '\(s)':\n\(out)")
        }
        // Damage a tensor byte: inspect reports the mismatch and exits non-zero.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 100] ^= 0xFF
        let bad = dir + "/bad.acnn"
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        let (s1, o1, e1) = try runProcess(exe, ["inspect", bad])
        XCTAssertNotEqual(s1, 0)
        XCTAssertTrue((o1 + e1).contains("MISMATCH") || e1.contains("damaged") || e1.contains("non-zero"), o1 + e1)
        // A truncated file, a header flip and a missing file: clear errors, non-zero exit.
        let cut = dir + "/cut.acnn"
        try Data(bytes[0..<300]).write(to: URL(fileURLWithPath: cut))
        let (s2, _, e2) = try runProcess(exe, ["inspect", cut])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("truncated"), e2)
        bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[80] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        let (s3, _, e3) = try runProcess(exe, ["inspect", bad])
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("checksum"), e3)
        let (s4, _, e4) = try runProcess(exe, ["inspect", dir + "/none.acnn"])
        XCTAssertNotEqual(s4, 0); XCTAssertTrue(e4.contains("No such file"), e4)
    }

    func testRestoreErrors() throws {
        let exe = try astrocnnExecutable()
        let model = try writeModel(try Architectures.flamary3(initializer: randomInit(seed: 2)))
        let small = dir + "/small.fits"
        try FITSIO.writeImage(path: small, width: 12, height: 40, pixels: [Float](repeating: 1, count: 480), headerCards: [])
        let (s1, _, e1) = try runProcess(exe, ["restore", small, "-m", model, "-o", dir + "/o.fits"])
        XCTAssertNotEqual(s1, 0); XCTAssertTrue(e1.contains("receptive field"), e1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.fits"))
        let (s2, _, e2) = try runProcess(exe, ["restore", dir + "/missing.fits", "-m", model, "-o", dir + "/o.fits"])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("no such file"), e2)
        let (s3, _, e3) = try runProcess(exe, ["restore", small, "-m", dir + "/nomodel.acnn", "-o", dir + "/o.fits"])
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("cannot read model"), e3)
    }

    /// train, evaluate and demo refuse images too small for their patches or metrics with a
    /// clear message and a non-zero exit (no trap), and missing inputs likewise.
    func testTrainEvaluateDemoBadInput() throws {
        let exe = try astrocnnExecutable()
        let tiny = dir + "/tiny.fits"
        try FITSIO.writeImage(path: tiny, width: 40, height: 40, pixels: (0..<1600).map { Float($0 % 17) }, headerCards: [])
        let (s1, _, e1) = try runProcess(exe, ["train", "--images", tiny, "-o", dir + "/t.acnn"])
        XCTAssertNotEqual(s1, 0); XCTAssertTrue(e1.contains("too small"), e1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/t.acnn"))
        let (s2, _, e2) = try runProcess(exe, ["evaluate", "--images", tiny, "--methods", "none"])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("at least 75x75"), e2)
        let (s3, _, e3) = try runProcess(exe, ["train", "--images", dir + "/missing.fits", "-o", dir + "/t.acnn"])
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("no such file"), e3)
        let (s4, _, e4) = try runProcess(exe, ["demo", "--size", "64", "--output", dir + "/demo"])
        XCTAssertNotEqual(s4, 0); XCTAssertTrue(e4.contains("at least 128"), e4)
    }

    /// `demo` with its defaults (the shipped deconvolution model, then the shipped denoiser):
    /// exit 0, the comparison lines, the restored image above the degraded one in PSNR, and the
    /// files it names.
    func testDemoBothTasks() throws {
        let exe = try astrocnnExecutable()
        let (s, out, err) = try runProcess(exe, ["demo", "--size", "256", "--output", dir + "/demo"])
        XCTAssertEqual(s, 0, err)
        for needle in ["Wiener", "Richardson-Lucy", "gain"] { XCTAssertTrue(out.contains(needle), out) }
        func psnr(_ prefix: String) -> Double? {
            out.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(prefix) }
                .flatMap { l in l.range(of: "PSNR").flatMap { Double(l[$0.upperBound...].split(separator: " ")[0]) } }
        }
        let degraded = try XCTUnwrap(psnr("degraded"))
        let line = try XCTUnwrap(out.split(separator: "\n").first { $0.contains("(gain") })
        let restored = try XCTUnwrap(line.range(of: "PSNR").flatMap { Double(line[$0.upperBound...].split(separator: " ")[0]) })
        XCTAssertGreaterThan(restored, degraded + 3, out)
        for f in ["truth.fits", "degraded.fits", "restored.fits", "wiener.fits", "rl.fits", "demo.png", "demo-zoom.png"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/demo/" + f), f)
        }
        let (s2, out2, err2) = try runProcess(exe, ["demo", "--task", "denoise", "--size", "256", "--output", dir + "/demo2"])
        XCTAssertEqual(s2, 0, err2)
        XCTAssertFalse(out2.isEmpty)
        // The shipped denoiser's declared steps are scored by default.
        XCTAssertTrue(out2.contains("astro-unet+cap+flux"), out2)
        // A PSF the default model was not trained for: the PSF-aware model, and it restores.
        let (s3, out3, err3) = try runProcess(exe, ["demo", "--size", "256", "--psf", "moffat:fwhm=3,beta=2.5", "--output", dir + "/demo3"])
        XCTAssertEqual(s3, 0, err3)
        XCTAssertTrue(out3.contains("using deconv-psf.acnn") && out3.contains("deconv-psf"), out3)
        let line3 = try XCTUnwrap(out3.split(separator: "\n").first { $0.contains("(gain") })
        XCTAssertTrue(line3.contains("deconv-psf"), String(line3))
    }

    /// A write that hits a file-size limit (as on a full disk) fails with an error and leaves
    /// neither the output nor a temporary file.
    func testFullDiskLeavesNoFile() throws {
        let exe = try astrocnnExecutable()
        let model = try writeModel(try Architectures.flamary1(initializer: randomInit(seed: 3)))
        let input = dir + "/in.fits"
        let w = 200, h = 200
        try FITSIO.writeImage(path: input, width: w, height: h, pixels: (0..<(w * h)).map { Float($0 % 13) }, headerCards: [])
        let outDir = dir + "/out"
        try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        // 100 blocks of 512 bytes: less than the 160 kB output.
        let (status, _, err) = try runProcess("/bin/sh", ["-c", "ulimit -f 100; exec '\(exe)' restore '\(input)' -m '\(model)' -o '\(outDir)/o.fits' --quiet"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("error"), err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outDir), [], "no partial or temporary file may remain")
    }

    /// The shared HorseHead plate (it also carries an ASCII table extension) restored with the
    /// published Flamary weights: same shape, WCS cards kept, provenance added, values finite.
    func testRestoreHorseHeadWithPublishedWeights() throws {
        let data = try requireSharedData()
        let exe = try astrocnnExecutable()
        let model = dir + "/flamary-M51a.acnn"
        try ModelWriter.write(try publishedFlamaryModel("M51a", data: data), to: model)
        let input = data + "/fits/HorseHead.fits"
        let output = dir + "/restored.fits"
        let (status, out, err) = try runProcess(exe, ["restore", input, "-m", model, "-o", output, "--threads", "2"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("restored"), out)
        let a = try FITSIO.readImage(path: input), b = try FITSIO.readImage(path: output)
        XCTAssertEqual(b.width, a.width); XCTAssertEqual(b.height, a.height)
        XCTAssertTrue(b.pixels.allSatisfy { $0.isFinite })
        for key in ["CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "OBJECT", "DATE-OBS"] where a.keyword(key) != nil {
            XCTAssertEqual(b.keyword(key), a.keyword(key), key)
        }
        XCTAssertEqual(b.keyword("ACNNMODL"), "flamary2017-M51a")
        XCTAssertEqual(b.keyword("ACNNHALO"), "9")
        XCTAssertNotNil(b.keyword("ACNNCRC"))
        XCTAssertTrue(b.headerCards.contains { $0.hasPrefix("HISTORY Restored by astrocnn") })
        // Output is in the input's units (the sky level is kept), and not a copy of the input.
        let medA = a.pixels.sorted()[a.pixels.count / 2], medB = b.pixels.sorted()[b.pixels.count / 2]
        XCTAssertEqual(Double(medB), Double(medA), accuracy: 0.25 * Double(medA))
        XCTAssertNotEqual(a.pixels, b.pixels)
        // No overwrite without --overwrite.
        let (again, _, e2) = try runProcess(exe, ["restore", input, "-m", model, "-o", output])
        XCTAssertNotEqual(again, 0); XCTAssertTrue(e2.contains("--overwrite"), e2)
    }
}
