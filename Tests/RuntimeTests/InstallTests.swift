import Foundation
import ModelFormat
import Runtime
import XCTest

/// Runs `exe` in `cwd` with the environment `env`; stdout and stderr go through files (no pipe
/// can fill up).
func runIn(_ exe: String, _ args: [String], cwd: String, env: [String: String]) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    p.currentDirectoryURL = URL(fileURLWithPath: cwd)
    p.environment = env
    let o = cwd + "/.stdout-\(UUID().uuidString)", e = cwd + "/.stderr-\(UUID().uuidString)"
    FileManager.default.createFile(atPath: o, contents: nil)
    FileManager.default.createFile(atPath: e, contents: nil)
    defer { unlink(o); unlink(e) }
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: o))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: e))
    try p.run()
    p.waitUntilExit()
    let out = (try? String(contentsOfFile: o, encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: e, encoding: .utf8)) ?? ""
    return (p.terminationStatus, out, err)
}

/// `scripts/install.sh` into a temporary prefix, then the installed binary run from a folder
/// outside the repository, as a user would: `models`, the task verbs and the README's commands
/// for astrophotographers and survey pipelines.
final class InstallTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// The environment of the user: no ASTROCNN_MODELS.
    var env: [String: String] {
        var e = ProcessInfo.processInfo.environment
        e["ASTROCNN_MODELS"] = nil
        return e
    }

    func install() throws -> String {
        let exe = try astrocnnExecutable()
        let prefix = dir + "/prefix"
        var e = env
        e["ASTROCNN_BIN"] = exe  // copy the binary the tests built (no second build)
        let (s, out, err) = try runIn("/bin/bash", [repositoryRoot + "/scripts/install.sh", prefix], cwd: dir, env: e)
        XCTAssertEqual(s, 0, out + err)
        XCTAssertTrue(out.contains("installed"), out)
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: prefix + "/bin/astrocnn"))
        for m in ["astro-unet-16-vst.acnn", "deconv-unet.acnn", "deconv-unet-moffat.acnn", "flamary3.acnn"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: prefix + "/share/astrocnn/models/" + m), m)
        }
        return prefix
    }

    func modelCRC(_ prefix: String, _ file: String) throws -> String {
        checksumString(try StreamingRestore.fileChecksum(prefix + "/share/astrocnn/models/" + file))
    }

    func header(_ path: String, _ key: String) throws -> String? {
        FITSHeader.value(key, in: try FITSProbe(path: path).headerCards)
    }

    func testInstalledBinaryFindsModelsAndRunsTheREADMECommands() throws {
        let prefix = try install()
        let bin = prefix + "/bin/astrocnn"
        let work = dir + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        XCTAssertFalse(work.hasPrefix(repositoryRoot))

        // astrocnn models: every shipped model from PREFIX/share/astrocnn/models, with its task and PSF.
        let (s0, list, e0) = try runIn(bin, ["models"], cwd: work, env: env)
        XCTAssertEqual(s0, 0, e0)
        for s in ["astro-unet-16-vst.acnn", "denoise", "default for denoise", "deconv-unet-moffat.acnn", "moffat:fwhm=4,beta=3",
                  "deconv-unet.acnn", "airy:size=64,rings=5", "deconvolve", "validation", "l1 0.26 @85", prefix + "/share/astrocnn/models/astro-unet-16-vst.acnn"] {
            XCTAssertTrue(list.contains(s), "models should list '\(s)':\n\(list)")
        }
        XCTAssertFalse(list.contains(repositoryRoot + "/models"), "the installed binary must not use the source tree:\n\(list)")

        // Test images: grey, colour (3 planes), an HST-style SCI + DQ file, a mask, a folder.
        let (w, h) = (64, 64)
        let grey = testSky(width: w, height: h, seed: 1, level: 200)
        try FITSIO.writeImage(path: work + "/m31.fits", width: w, height: h, pixels: grey, headerCards: [card("OBJECT", "'M31'")])
        let rgb = try FITSWriter(path: work + "/stack.fits", width: w, height: h, planes: 3, headerCards: [card("OBJECT", "'M42'")])
        for k in 0..<3 {
            let p = testSky(width: w, height: h, seed: UInt64(2 + k), level: Float(150 + 50 * k))
            try p.withUnsafeBufferPointer { try rgb.writeRows(0, $0, plane: k) }
        }
        try rgb.commit()
        var dq = [Int16](repeating: 0, count: w * h)
        dq[7 * w + 9] = 256
        try writeSciDQ(work + "/j8xi01010_flt.fits", width: w, height: h, sci: testSky(width: w, height: h, seed: 5), dq: dq)
        var mask = [Float](repeating: 0, count: w * h)
        mask[30 * w + 31] = 1
        try FITSIO.writeImage(path: work + "/badpix.fits", width: w, height: h, pixels: mask, headerCards: [])
        try FileManager.default.createDirectory(atPath: work + "/raw", withIntermediateDirectories: true)
        for k in 0..<2 {
            try FITSIO.writeImage(path: work + "/raw/frame\(k).fits", width: w, height: h, pixels: testSky(width: w, height: h, seed: UInt64(10 + k)), headerCards: [])
        }
        func run(_ line: String) throws -> (Int32, String, String) {
            // The README's command line, split as the shell does for these (single quotes only).
            var args: [String] = [], cur = "", quoted = false, any = false
            for c in line {
                if c == "'" { quoted.toggle(); any = true; continue }
                if c == " " && !quoted { if any || !cur.isEmpty { args.append(cur) }; cur = ""; any = false; continue }
                cur.append(c)
            }
            if any || !cur.isEmpty { args.append(cur) }
            XCTAssertEqual(args.first, "astrocnn")
            return try runIn(bin, Array(args.dropFirst()), cwd: work, env: env)
        }

        // For astrophotographers (README).
        var (s, out, err) = try run("astrocnn denoise m31.fits")
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try header(work + "/m31_denoised.fits", "ACNNCRC"), try modelCRC(prefix, "astro-unet-16-vst.acnn"))
        XCTAssertEqual(try header(work + "/m31_denoised.fits", "OBJECT"), "M31")
        (s, out, err) = try run("astrocnn denoise stack.fits --luminance --strength 0.8 -o stack_nr.fits")
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try FITSProbe(path: work + "/stack_nr.fits").axes, [w, h, 3])
        XCTAssertTrue(try header(work + "/stack_nr.fits", "ACNNOPTS")?.contains("strength=0.8;luminance") ?? false)
        (s, out, err) = try run("astrocnn deconvolve stack.fits --psf moffat:fwhm=4,beta=3")
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try FITSProbe(path: work + "/stack_deconvolved.fits").axes, [w, h, 3])
        XCTAssertEqual(try header(work + "/stack_deconvolved.fits", "ACNNCRC"), try modelCRC(prefix, "deconv-unet-moffat.acnn"))
        XCTAssertTrue(out.contains("3 planes"), out)
        // A PSF no fixed-PSF model was trained for goes to the PSF-aware deconv-psf, with a note.
        (s, out, err) = try run("astrocnn deconvolve m31.fits --psf gaussian:fwhm=3")
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(err.contains("no model was trained for --psf gaussian:fwhm=3") && err.contains("takes the PSF at run time"), err)
        XCTAssertEqual(try header(work + "/m31_deconvolved.fits", "ACNNCRC"), try modelCRC(prefix, "deconv-psf.acnn"))
        try FileManager.default.removeItem(atPath: work + "/m31_deconvolved.fits")
        // One outside its family too is refused, listing those covered and why; no output.
        (s, out, err) = try run("astrocnn deconvolve m31.fits --psf gaussian:fwhm=20")
        XCTAssertNotEqual(s, 0)
        for t in ["gaussian:fwhm=20", "moffat:fwhm=4,beta=3", "airy:size=64,rings=5", "--model", "deconv-psf.acnn"] { XCTAssertTrue(err.contains(t), err) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/m31_deconvolved.fits"))
        // A 64x64 field of faint random sources: no PSF can be measured, or none a model covers.
        (s, out, err) = try run("astrocnn deconvolve m31.fits --psf auto")
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("--psf"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/m31_deconvolved.fits"))
        (s, out, err) = try run("astrocnn denoise m31.png")
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("convert this file to FITS") && err.contains("Siril"), err)
        (s, out, err) = try run("astrocnn models")
        XCTAssertEqual(s, 0, err)

        // For survey pipelines (README).
        (s, out, err) = try run("astrocnn denoise 'j8xi01010_flt.fits[SCI]' -o j8xi01010_den.fits.fz --progress json")
        XCTAssertEqual(s, 0, err)
        let den = try FITSIO.readImage(path: work + "/j8xi01010_den.fits.fz")
        XCTAssertEqual(den.invalidCount, 1)
        XCTAssertTrue(den.pixels[7 * w + 9].isNaN, "the DQ-flagged pixel is NaN")
        let lines = err.split(separator: "\n").map(String.init)
        XCTAssertGreaterThanOrEqual(lines.count, 2, err)
        var objects: [[String: Any]] = []
        for l in lines {
            guard let o = try JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any] else { XCTFail("not JSON: \(l)"); continue }
            for k in ["done", "total", "eta_s", "file"] { XCTAssertNotNil(o[k], "\(k) in \(l)") }
            objects.append(o)
        }
        XCTAssertEqual(objects.last?["status"] as? String, "written")
        XCTAssertEqual(objects.last?["done"] as? Int, w * h)
        XCTAssertEqual(objects.last?["total"] as? Int, w * h)

        (s, out, err) = try run("astrocnn denoise raw/ -o denoised/ --mask badpix.fits --progress json")
        XCTAssertEqual(s, 0, err)
        for k in 0..<2 {
            let img = try FITSIO.readImage(path: work + "/denoised/frame\(k).fits")
            XCTAssertEqual(img.invalidCount, 1)
            XCTAssertTrue(img.pixels[30 * w + 31].isNaN)
        }
        XCTAssertEqual(err.components(separatedBy: "\"status\":\"written\"").count - 1, 2, err)
        // Run again: both outputs are up to date and skipped.
        (s, out, err) = try run("astrocnn denoise raw/ -o denoised/ --mask badpix.fits --progress json")
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(err.components(separatedBy: "\"status\":\"skipped\"").count - 1, 2, err)
        // A model by name from the search path.
        (s, out, err) = try run("astrocnn restore m31.fits -m deconv-unet -o m31_airy.fits")
        XCTAssertEqual(s, 0, err)
        XCTAssertEqual(try header(work + "/m31_airy.fits", "ACNNCRC"), try modelCRC(prefix, "deconv-unet.acnn"))
        // $ASTROCNN_MODELS comes before the installed models.
        let mine = dir + "/mine"
        try FileManager.default.createDirectory(atPath: mine, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: prefix + "/share/astrocnn/models/flamary1.acnn", toPath: mine + "/flamary1.acnn")
        var e2 = env
        e2["ASTROCNN_MODELS"] = mine
        (s, out, err) = try runIn(bin, ["models"], cwd: work, env: e2)
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains(mine + "/flamary1.acnn"), out)
        XCTAssertTrue(out.contains("hidden by an earlier file"), out)
    }

    /// The demo, which needs a shipped model, runs from a folder outside the repository.
    func testInstalledDemoRuns() throws {
        let prefix = try install()
        let work = dir + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        var (s, out, err) = try runIn(prefix + "/bin/astrocnn", ["demo", "--size", "128", "--output", "demo-output"], cwd: work, env: env)
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains("deconv-unet"), out)
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/demo-output/restored.fits"))
        (s, out, err) = try runIn(prefix + "/bin/astrocnn", ["demo", "--task", "denoise", "--size", "128", "--output", "demo-denoise"], cwd: work, env: env)
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains("astro-unet"), out)
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/demo-denoise/denoised.fits"))
    }

    /// `restore` with the new options from the build folder: a cube restored plane by plane,
    /// and bad option values refused with a clear message, a non-zero exit and no output.
    func testRestoreOptionsAndErrors() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.unet(widths: [4, 8, 16], normalization: "sky_mad", initializer: randomInit(seed: 3)), to: model)
        let (w, h) = (32, 32)
        let grey = dir + "/g.fits", cube = dir + "/c.fits"
        try FITSIO.writeImage(path: grey, width: w, height: h, pixels: testSky(width: w, height: h, seed: 1), headerCards: [])
        let wr = try FITSWriter(path: cube, width: w, height: h, planes: 4, headerCards: [card("CTYPE3", "'WAVE'")])
        for k in 0..<4 { try testSky(width: w, height: h, seed: UInt64(k)).withUnsafeBufferPointer { try wr.writeRows(0, $0, plane: k) } }
        try wr.commit()
        var (s, out, err) = try runIn(exe, ["restore", cube, "-m", model, "-o", dir + "/c-out.fits", "--progress", "none"], cwd: dir, env: env)
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains("x 4 planes"), out)
        XCTAssertEqual(try FITSProbe(path: dir + "/c-out.fits").axes, [w, h, 4])
        XCTAssertEqual(try header(dir + "/c-out.fits", "CTYPE3"), "WAVE")
        let bad: [([String], String)] = [
            (["--strength", "1.5"], "--strength must be"),
            (["--progress", "xml"], "--progress must be"),
            (["--luminance"], "3 planes"),
            (["--in-memory", "--strength", "0.5"], "--in-memory works on 2-D images"),
            (["--mask", dir + "/none.fits"], "--mask"),
        ]
        for (extra, message) in bad {
            (s, out, err) = try runIn(exe, ["restore", grey, "-m", model, "-o", dir + "/x.fits"] + extra, cwd: dir, env: env)
            XCTAssertNotEqual(s, 0, extra.joined(separator: " "))
            XCTAssertTrue(err.contains(message), "\(extra): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.fits"))
        }
        (s, out, err) = try runIn(exe, ["restore", cube, "-m", model, "-o", dir + "/x.fits", "--preview", dir + "/p.png"], cwd: dir, env: env)
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("--preview shows 2-D images"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.fits"))
        // deconvolve --model checks the model's training PSF.
        (s, out, err) = try runIn(exe, ["deconvolve", grey, "--psf", "airy", "--model", model], cwd: dir, env: env)
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("records no training PSF"), err)
        (s, out, err) = try runIn(exe, ["deconvolve", grey, "--psf", "airy", "--model", repositoryRoot + "/models/deconv-unet-moffat.acnn"], cwd: dir, env: env)
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("was trained for --psf moffat:fwhm=4,beta=3, not airy:size=64,rings=5"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/g_deconvolved.fits"))
        (s, out, err) = try runIn(exe, ["denoise", dir + "/photo.jpg", "--model", model], cwd: dir, env: env)
        XCTAssertNotEqual(s, 0); XCTAssertTrue(err.contains("FITS and uncompressed TIFF"), err)
    }

    /// `install.sh --static`'s binary (built by `bash scripts/install.sh --static PREFIX`, a
    /// separate few-minute build; skipped when absent) links no Swift library and runs with an
    /// empty environment: only cfitsio, libstdc++ and the C library are needed.
    func testStaticBinaryNeedsOnlyCfitsio() throws {
        let built = repositoryRoot + "/.build-static/release/astrocnn"
        guard FileManager.default.isExecutableFile(atPath: built) else {
            throw XCTSkip(".build-static/release/astrocnn is absent (bash scripts/install.sh --static PREFIX builds it): test skipped")
        }
        let prefix = dir + "/static"
        let (s, out, err) = try runIn("/bin/bash", [repositoryRoot + "/scripts/install.sh", "--static", "--no-build", prefix], cwd: repositoryRoot, env: env)
        XCTAssertEqual(s, 0, out + err)
        let (s1, libs, e1) = try runIn("/usr/bin/ldd", [prefix + "/bin/astrocnn"], cwd: dir, env: env)
        XCTAssertEqual(s1, 0, e1)
        XCTAssertTrue(libs.contains("libcfitsio"), libs)
        XCTAssertFalse(libs.contains("libswift") || libs.contains("libFoundation") || libs.contains("libdispatch"), libs)
        let work = dir + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try FITSIO.writeImage(path: work + "/m31.fits", width: 64, height: 64, pixels: testSky(width: 64, height: 64, seed: 1), headerCards: [])
        let (s2, _, e2) = try runIn(prefix + "/bin/astrocnn", ["denoise", "m31.fits"], cwd: work, env: ["PATH": "/usr/bin:/bin"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/m31_denoised.fits"))
    }

    /// Search order and task classification, without running anything.
    func testSearchOrder() throws {
        let locs = ModelSearch.locations(explicit: ["/x/a"], environment: ["ASTROCNN_MODELS": "/y/b:/y/c"], executable: "/opt/tool/bin/astrocnn")
        XCTAssertEqual(locs.map(\.directory), ["/x/a", "/y/b", "/y/c", "/opt/tool/bin/models", "/opt/tool/share/astrocnn/models"])
        let inRepo = ModelSearch.locations(explicit: [], environment: [:], executable: repositoryRoot + "/.build/release/astrocnn")
        XCTAssertEqual(inRepo.last?.directory, repositoryRoot + "/models")
        XCTAssertEqual(ModelSearch.task(metadata: ["training.recipe": .string("astro-unet")]), .denoise)
        XCTAssertEqual(ModelSearch.task(metadata: ["training.recipe": .string("flamary3")]), .deconvolve)
        XCTAssertEqual(ModelSearch.task(metadata: ["training.task": .string("deconvolve")]), .deconvolve)
        XCTAssertEqual(ModelSearch.task(metadata: ["training.psf": .string("none")]), .denoise)
        XCTAssertEqual(ModelSearch.task(metadata: [:]), .unknown)
    }
}
