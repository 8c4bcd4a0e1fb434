import Foundation
import ModelFormat
import Runtime
import XCTest

/// The command line with a model that takes the PSF at run time (format 1.1 Wiener step): restore
/// needs --psf and records it; deconvolve runs it when given with -m for PSFs in its family and
/// refuses others; inspect says what it covers; a Slurm plan binds the PSF in every
/// task and stitches to the bits of the single-process restore.
final class PSFAwareCLITests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func writeModel(_ path: String) throws {
        var m = try Architectures.unet(name: "tiny-psf", widths: [4, 6], normalization: "noise_mad", inputSkip: true, ratioChannel: false,
                                       wienerContext: 16, initializer: randomInit(seed: 2))
        m.metadata["training.task"] = .string("deconvolve")
        m.metadata["training.psf_family"] = .string("gaussian,moffat:fwhm=2-4,beta=2-3,e=0.1,noise=0.001-0.01,side=33")
        m.metadata["deconvolution.psf_fwhm"] = .floats([2, 4])
        try ModelWriter.write(m, to: path, overwrite: true)
    }

    func writeSky(_ path: String, _ w: Int, _ h: Int, seed: UInt64) throws {
        var rng = TestRNG(seed: seed)
        var v = [Float](repeating: 0, count: w * h)
        for y in 0..<h { for x in 0..<w { v[y * w + x] = 100 + 20 * Float(sin(Double(x) / 13) * cos(Double(y) / 17)) + rng.float(-3, 3) } }
        for _ in 0..<40 {
            let cy = Int(rng.float(3, Float(h - 3))), cx = Int(rng.float(3, Float(w - 3))), a = rng.float(100, 2000)
            for dy in -2...2 { for dx in -2...2 { v[(cy + dy) * w + cx + dx] += a * Float(exp(-Double(dy * dy + dx * dx) / 1.5)) } }
        }
        try FITSIO.writeImage(path: path, width: w, height: h, pixels: v, headerCards: [], overwrite: true)
    }

    /// `--data-consistency`: the correction runs after the network in memory and is recorded in
    /// the header (ACNNDC, HISTORY); the same bits on 1 and 2 threads; refused for a model without
    /// a Wiener step and with --strength, before any output is written; a batch runs it file by file.
    func testDataConsistencyOption() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/tiny-psf.acnn"
        try writeModel(model)
        let img = dir + "/sky.fits"
        try writeSky(img, 200, 180, seed: 6)
        let args = ["restore", img, "-m", model, "--psf", "moffat:fwhm=3,beta=2.5", "--data-consistency", "--quiet"]
        var (st, _, err) = try runProcess(exe, args + ["-o", dir + "/dc.fits"])
        XCTAssertEqual(st, 0, err)
        let a = try FITSIO.readImage(path: dir + "/dc.fits")
        XCTAssertTrue(a.pixels.allSatisfy { $0.isFinite })
        let header = a.headerCards.joined(separator: "\n")
        XCTAssertTrue(header.contains("ACNNDC") && header.contains("Data consistency"), header)
        (st, _, err) = try runProcess(exe, args + ["-o", dir + "/dc1.fits", "--threads", "1"])
        XCTAssertEqual(st, 0, err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/dc1.fits").pixels.map(\.bitPattern), a.pixels.map(\.bitPattern))
        try writeTaskModels(dir, seed: 3)
        (st, _, err) = try runProcess(exe, ["restore", img, "-m", dir + "/c.acnn", "--data-consistency", "-o", dir + "/x.fits", "--quiet"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("Wiener step"), err)
        (st, _, err) = try runProcess(exe, args + ["--strength", "0.5", "-o", dir + "/y.fits"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--data-consistency works in memory"), err)
        for f in ["x.fits", "y.fits"] { XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/" + f), f) }
        // Asked for in a batch: file by file, the single input's bits.
        try FileManager.default.copyItem(atPath: img, toPath: dir + "/sky-copy.fits")
        (st, _, err) = try runProcess(exe, args + [dir + "/sky-copy.fits", "-o", dir + "/out/"])
        XCTAssertEqual(st, 0, err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/out/sky.fits").pixels.map(\.bitPattern), a.pixels.map(\.bitPattern))
        XCTAssertTrue(try FITSIO.readImage(path: dir + "/out/sky-copy.fits").headerCards.joined().contains("ACNNDC"))

        // A model that declares the correction (deconvolution.data_consistency) gets it by
        // default: the same bits as asking; --no-data-consistency turns it off; where it cannot
        // run (--strength) a note says it was skipped and the restore goes on.
        var m = try ModelReader(path: model).model()
        m.metadata["deconvolution.data_consistency"] = .bool(true)
        let declared = dir + "/declared.acnn"
        try ModelWriter.write(m, to: declared, overwrite: true)
        let base = ["restore", img, "-m", declared, "--psf", "moffat:fwhm=3,beta=2.5", "--quiet"]
        (st, _, err) = try runProcess(exe, base + ["-o", dir + "/d1.fits"])
        XCTAssertEqual(st, 0, err)
        let d1 = try FITSIO.readImage(path: dir + "/d1.fits")
        XCTAssertEqual(d1.pixels.map(\.bitPattern), a.pixels.map(\.bitPattern), "the declared default is the same correction")
        XCTAssertTrue(d1.headerCards.joined().contains("ACNNDC"))
        (st, _, err) = try runProcess(exe, base + ["--no-data-consistency", "-o", dir + "/d2.fits"])
        XCTAssertEqual(st, 0, err)
        XCTAssertFalse(try FITSIO.readImage(path: dir + "/d2.fits").headerCards.joined().contains("ACNNDC"))
        (st, _, err) = try runProcess(exe, base + ["--strength", "0.5", "-o", dir + "/d3.fits"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(err.contains("declares the data-consistency correction; skipped"), err)

        // --lower-bound: the correction holds the output to at least the image's true zero
        // (recorded in ACNNDC and the HISTORY); refused where the correction does not run.
        (st, _, err) = try runProcess(exe, base + ["--lower-bound", "90", "-o", dir + "/b1.fits"])
        XCTAssertEqual(st, 0, err)
        let b1 = try FITSIO.readImage(path: dir + "/b1.fits")
        XCTAssertTrue(b1.pixels.allSatisfy { $0 >= 90 }, "\(b1.pixels.min() ?? 0)")
        XCTAssertTrue(b1.keyword("ACNNDC")?.contains("bound=90") ?? false, b1.headerCards.joined(separator: "\n"))
        XCTAssertLessThan(d1.pixels.min() ?? 0, 90, "the sky (about 100 +- 23) goes below 90 without the bound")
        (st, _, err) = try runProcess(exe, base + ["--no-data-consistency", "--lower-bound", "0", "-o", dir + "/b2.fits"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--lower-bound"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/b2.fits"))

        // A batch runs the declared correction file by file (the same bits as one input), with
        // the bound; a rerun skips the finished outputs, whose options record the correction; a
        // rerun without it does not take them for its own.
        let img2 = dir + "/sky2.fits"
        try writeSky(img2, 150, 140, seed: 7)
        let batch = ["restore", img, img2, "-m", declared, "--psf", "moffat:fwhm=3,beta=2.5", "--quiet", "--lower-bound", "90", "-o", dir + "/bb/"]
        (st, _, err) = try runProcess(exe, batch)
        XCTAssertEqual(st, 0, err)
        let bb = try FITSIO.readImage(path: dir + "/bb/sky.fits")
        XCTAssertEqual(bb.pixels.map(\.bitPattern), b1.pixels.map(\.bitPattern), "a batch gives the single-input bits")
        XCTAssertTrue(bb.keyword("ACNNOPTS")?.contains("dc;lower_bound=90") ?? false, bb.headerCards.joined(separator: "\n"))
        XCTAssertTrue(try FITSIO.readImage(path: dir + "/bb/sky2.fits").keyword("ACNNDC")?.contains("bound=90") ?? false)
        var out = ""
        (st, out, err) = try runProcess(exe, batch)
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("skipped 2 up to date"), out)
        (st, out, err) = try runProcess(exe, ["restore", img, img2, "-m", declared, "--psf", "moffat:fwhm=3,beta=2.5", "--quiet", "--no-data-consistency", "-o", dir + "/bb/"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("was not made from this input, model and options"), err)
    }

    /// `train --recipe deconv-psf` with the options of the shipped model: sparse simulated fields
    /// (--synthetic), tied upsampling and the declared data-consistency default end up in the
    /// model's metadata; --declare-data-consistency is refused for another recipe.
    func testTrainDeconvPSFOptions() throws {
        let exe = try astrocnnExecutable()
        try writeSky(dir + "/a.fits", 160, 150, seed: 8)
        try writeSky(dir + "/b.fits", 140, 130, seed: 9)
        let out = dir + "/m.acnn"
        var (st, _, err) = try runProcess(exe, ["train", "--recipe", "deconv-psf", "--images", dir + "/a.fits", dir + "/b.fits", "--validate", "b.fits",
                                               "--widths", "4,8", "--crop", "32", "--batch", "2", "--samples", "4", "--validation-samples", "2",
                                               "--epochs", "1", "--psf-family", "gaussian:fwhm=2-4,noise=1e-03-0.01,side=17", "--wiener-context", "8",
                                               "--tied-upsampling", "--synthetic", "1", "--synthetic-size", "128", "--declare-data-consistency",
                                               "--threads", "2", "--quiet", "-o", out])
        XCTAssertEqual(st, 0, err)
        let m = try ModelReader(path: out).model()
        XCTAssertEqual(m.metadata["deconvolution.data_consistency"], .bool(true))
        XCTAssertEqual(m.metadata["training.tied_upsampling"], .bool(true))
        XCTAssertTrue(m.metadata.values.contains { ($0.stringValue ?? "").contains("synthetic-sparse-128-seed1000001") }, "\(m.metadata)")
        XCTAssertTrue(try Network(path: out).declaresDataConsistency)
        let (si, text, ei) = try runProcess(exe, ["inspect", out])
        XCTAssertEqual(si, 0, ei)
        XCTAssertTrue(text.contains("data-consistency correction by default"), text)
        (st, _, err) = try runProcess(exe, ["train", "--recipe", "deconv-unet", "--images", dir + "/a.fits", dir + "/b.fits", "--validate", "b.fits",
                                           "--declare-data-consistency", "-o", dir + "/n.acnn"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--declare-data-consistency is for deconv-psf"), err)
    }

    func testRestoreDeconvolveInspectAndPlan() throws {
        let exe = try astrocnnExecutable()
        let models = dir + "/models"
        try FileManager.default.createDirectory(atPath: models, withIntermediateDirectories: true)
        let model = models + "/tiny-psf.acnn"
        try writeModel(model)
        let img = dir + "/sky.fits"
        try writeSky(img, 300, 260, seed: 4)

        var (st, out, err) = try runProcess(exe, ["restore", img, "-m", model, "-o", dir + "/a.fits", "--quiet"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--psf"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/a.fits"))

        (st, out, err) = try runProcess(exe, ["restore", img, "-m", model, "--psf", "moffat:fwhm=3,beta=2.5", "-o", dir + "/a.fits", "--quiet"])
        XCTAssertEqual(st, 0, err)
        let a = try FITSIO.readImage(path: dir + "/a.fits")
        XCTAssertTrue(a.pixels.allSatisfy { $0.isFinite })
        let header = a.headerCards.joined(separator: "\n")
        XCTAssertTrue(header.contains("ACNNPSF") && header.contains("moffat:fwhm=3,beta=2.5"), header)
        XCTAssertTrue(header.contains("wiener_lambda="), "the image's lambda is recorded")
        XCTAssertTrue(header.contains("Deconvolved with the PSF"), header)
        // The same run on one thread: the same bits.
        (st, _, err) = try runProcess(exe, ["restore", img, "-m", model, "--psf", "moffat:fwhm=3,beta=2.5", "-o", dir + "/a1.fits", "--quiet", "--threads", "1"])
        XCTAssertEqual(st, 0, err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/a1.fits").pixels.map(\.bitPattern), a.pixels.map(\.bitPattern))

        // deconvolve runs the model given by name for a PSF of its family ...
        (st, out, err) = try runProcess(exe, ["deconvolve", img, "--psf", "gaussian:fwhm=2.5", "--model-dir", models, "-m", "tiny-psf", "-o", dir + "/d.fits", "--quiet"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("tiny-psf"), out)
        // ... does not pick it on its own, and restore needs -m.
        (st, out, err) = try runProcess(exe, ["restore", img, "--psf", "gaussian:fwhm=2.5", "-o", dir + "/r.fits", "--quiet"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("-m MODEL"), err)
        // ... and refuses one outside it.
        (st, out, err) = try runProcess(exe, ["deconvolve", img, "--psf", "gaussian:fwhm=7", "-m", model, "-o", dir + "/e.fits", "--quiet"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("not trained for this PSF"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/e.fits"))

        (st, out, err) = try runProcess(exe, ["inspect", model])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("format 1.1") && out.contains("given at run time") && out.contains("fwhm=2-4"), out)

        // Slurm plan (tiles mode, no scheduler): every task binds the plan's PSF and uses the
        // plan's lambda; the stitched file equals the streaming restore.
        let work = dir + "/w"
        (st, out, err) = try runProcess(exe, ["plan", "--image", img, "--tile", "128", "-m", model, "--psf", "moffat:fwhm=3,beta=2.5",
                                              "-o", dir + "/p.fits", "--workdir", work, "--max-array", "2"])
        XCTAssertEqual(st, 0, err)
        let manifest = try String(contentsOfFile: work + "/manifest.json", encoding: .utf8)
        XCTAssertTrue(manifest.contains("wiener_lambda") && manifest.contains("moffat"), manifest)
        let planLine = out.split(separator: "\n").first { $0.hasPrefix("plan ") }.map(String.init) ?? ""
        let tasks = Int(planLine.components(separatedBy: ": ").dropFirst().first?.split(separator: " ").first ?? "0") ?? 0
        XCTAssertGreaterThan(tasks, 0, out)
        for i in 0..<tasks {
            (st, _, err) = try runProcess(exe, ["run-task", "--plan", work, "--index", "\(i)"])
            XCTAssertEqual(st, 0, err)
        }
        (st, _, err) = try runProcess(exe, ["stitch", "--plan", work])
        XCTAssertEqual(st, 0, err)
        XCTAssertEqual(try FITSIO.readImage(path: dir + "/p.fits").pixels.map(\.bitPattern), a.pixels.map(\.bitPattern))
        (st, _, err) = try runProcess(exe, ["plan", "--image", img, "-m", model, "-o", dir + "/q.fits", "--workdir", dir + "/w2"])
        XCTAssertNotEqual(st, 0)
        XCTAssertTrue(err.contains("--psf"), err)
    }
}
