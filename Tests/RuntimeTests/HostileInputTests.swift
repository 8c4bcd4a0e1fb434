import Foundation
import ModelFormat
import Runtime
import XCTest

/// Hostile and damaged input, and faults during writes, as an observatory pipeline meets them:
/// every command refuses a file that declares more than it holds within bounded time and memory,
/// the in-process fuzzer runs clean, and killed, full or read-only writes leave no partial file.
final class HostileInputTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A 23 KB file whose header declares 2,000,000,000 x 2,000,000,000 pixels (BITPIX 16), and
    /// one that declares 200,000 x 200,000 (under the pixel cap, far more than the file holds).
    func declaredHugeFiles() throws -> [String] {
        func card(_ s: String) -> String { s.padding(toLength: 80, withPad: " ", startingAt: 0) }
        var paths: [String] = []
        for (n, side) in [(0, "2000000000"), (1, "200000")] {
            let header = [card("SIMPLE  =                    T"), card("BITPIX  =                   16"), card("NAXIS   =                    2"),
                          card("NAXIS1  = " + String(repeating: " ", count: 20 - side.count) + side),
                          card("NAXIS2  = " + String(repeating: " ", count: 20 - side.count) + side), card("END")].joined()
            var bytes = Array(header.utf8)
            while bytes.count % 2880 != 0 { bytes.append(0x20) }
            bytes += [UInt8](repeating: 0, count: 23 * 1024 - bytes.count)
            let p = dir + "/huge\(n).fits"
            try Data(bytes).write(to: URL(fileURLWithPath: p))
            paths.append(p)
        }
        return paths
    }

    /// Runs the CLI with its peak resident memory written to a file; (status, stderr, seconds, peak bytes).
    func runMeasured(_ args: [String]) throws -> (Int32, String, Double, Int) {
        let exe = try astrocnnExecutable()
        let rssFile = dir + "/rss-\(UUID().uuidString)"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["ASTROCNN_PEAK_RSS_FILE"] = rssFile
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let t0 = Date()
        try p.run()
        _ = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let dt = Date().timeIntervalSince(t0)
        let peak = Int((try? String(contentsOfFile: rssFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
        return (p.terminationStatus, String(decoding: e, as: UTF8.self), dt, peak)
    }

    /// Every command that reads a FITS file refuses the declared-huge files at once: a clear
    /// error, a non-zero exit, under a second and under 100 MB resident.
    func testDeclaredHugeFileRefusedByEveryCommandFastAndSmall() throws {
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.flamary1(initializer: randomInit(seed: 3)), to: model)
        let batchDir = dir + "/batch"
        try FileManager.default.createDirectory(atPath: batchDir, withIntermediateDirectories: true)
        for f in try declaredHugeFiles() {
            try? FileManager.default.removeItem(atPath: batchDir + "/in.fits")
            try FileManager.default.copyItem(atPath: f, toPath: batchDir + "/in.fits")
            let commands: [[String]] = [
                ["restore", f, "-m", model, "-o", dir + "/o1.fits"],
                ["restore", f, "-m", model, "-o", dir + "/o2.fits", "--in-memory"],
                ["restore", batchDir, "-m", model, "-o", dir + "/outdir/"],
                ["detect", f, "--csv", dir + "/d.csv"],
                ["degrade", f, "-o", dir + "/dg.fits", "--noise", "gaussian", "--sigma", "1"],
                ["evaluate", "--images", f, "--methods", "none"],
                ["evaluate", "--task", "denoise", "--input", f, "--reference", f, "--methods", "none"],
                ["train", "--recipe", "flamary1", "--images", f, "-o", dir + "/t.acnn", "--epochs", "1"],
                ["plan", "--image", f, "-m", model, "-o", dir + "/plan-out.fits", "--workdir", dir + "/plan"],
            ]
            for c in commands {
                let (status, err, seconds, peak) = try runMeasured(c)
                let what = c.joined(separator: " ")
                XCTAssertNotEqual(status, 0, what)
                XCTAssertTrue(err.contains("error") && (err.contains("declares") || err.contains("2^40")), "\(what): \(err)")
                XCTAssertFalse(err.contains("Fatal error") || err.contains("Backtrac"), "\(what): \(err)")
                XCTAssertLessThan(seconds, 1.0, what)
                XCTAssertGreaterThan(peak, 0, what)
                XCTAssertLessThan(peak, 100_000_000, "\(what): peak resident \(peak) bytes")
            }
            for out in ["o1.fits", "o2.fits", "dg.fits", "t.acnn", "outdir/in.fits"] {
                XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/" + out), out)
            }
        }
    }

    /// Tile-compressed headers that crash cfitsio 4.2 inside its open (ZTILE1 = 0 divides by
    /// zero), also when the header has lost its END card, are refused with an error first.
    func testCompressedHeadersThatCrashCfitsioAreRefused() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.flamary1(initializer: randomInit(seed: 3)), to: model)
        let good = dir + "/good.fits.fz"
        let w = 64, h = 48
        try FITSIO.writeImage(path: good, width: w, height: h, pixels: (0..<(w * h)).map { Float($0 % 29) }, headerCards: [])
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: good)))
        func card(_ key: String) -> Int? {
            stride(from: 0, to: bytes.count - 80, by: 80).first { String(decoding: bytes[$0..<($0 + 8)], as: UTF8.self) == key.padding(toLength: 8, withPad: " ", startingAt: 0) }
        }
        guard let ztile = card("ZTILE1"), let end = stride(from: ztile, to: bytes.count - 80, by: 80).first(where: { bytes[$0..<($0 + 3)].elementsEqual("END".utf8) }) else {
            return XCTFail("the .fz writer made no ZTILE1/END cards")
        }
        for (name, removeEnd) in [("zero.fits.fz", false), ("zero-no-end.fits.fz", true)] {
            var b = bytes
            let value = Array("ZTILE1  =                    0 / damaged".padding(toLength: 80, withPad: " ", startingAt: 0).utf8)
            b.replaceSubrange(ztile..<(ztile + 80), with: value)
            if removeEnd { b.replaceSubrange(end..<(end + 3), with: Array("   ".utf8)) }
            let path = dir + "/" + name
            try Data(b).write(to: URL(fileURLWithPath: path))
            for args in [["restore", path, "-m", model, "-o", dir + "/o.fits"], ["detect", path, "--csv", dir + "/d.csv"], ["psf", path, "-o", dir + "/p.fits"]] {
                let (s, _, err) = try runProcess(exe, args)
                XCTAssertEqual(s, 1, "\(args): \(err)")
                XCTAssertTrue(err.contains("ZTILE1"), "\(args): \(err)")
            }
        }
    }

    /// A restore whose working set exceeds --memory-budget is refused before it starts, saying
    /// how much it needs and how to proceed; with the budget raised it runs.
    func testMemoryBudgetRefusesWorkBeforeAllocating() throws {
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.flamary1(initializer: randomInit(seed: 3)), to: model)
        let input = dir + "/in.fits"
        let w = 2000, h = 300
        try FITSIO.writeImage(path: input, width: w, height: h, pixels: (0..<(w * h)).map { Float($0 % 17) }, headerCards: [])
        let (s1, e1, _, _) = try runMeasured(["restore", input, "-m", model, "-o", dir + "/o.fits", "--memory-budget", "20M"])
        XCTAssertNotEqual(s1, 0)
        XCTAssertTrue(e1.contains("would need") && e1.contains("budget") && e1.contains("--memory-budget"), e1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.fits"))
        let (s2, e2, _, _) = try runMeasured(["restore", input, "-m", model, "-o", dir + "/o.fits", "--memory-budget", "2G"])
        XCTAssertEqual(s2, 0, e2)
        let (s3, e3, _, _) = try runMeasured(["detect", input, "--csv", dir + "/d.csv", "--memory-budget", "1M"])
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(e3.contains("would need"), e3)
        XCTAssertEqual(MemoryBudget.parse("4G"), 4 << 30)
        XCTAssertEqual(MemoryBudget.parse("512M"), 512 << 20)
        XCTAssertEqual(MemoryBudget.parse("1.5k"), 1536)
        XCTAssertEqual(MemoryBudget.parse("300000000"), 300_000_000)
        XCTAssertNil(MemoryBudget.parse("-1G"))
        XCTAssertNil(MemoryBudget.parse("lots"))
    }

    /// The fuzzer of the FITS and model readers, in one process with a fixed seed: 10^4 mutated
    /// FITS files and 10^4 mutated models each end with a result or a clear error, with no crash,
    /// no hang and the resident memory within the budget.
    func testFuzzTenThousandFITSAndTenThousandModels() throws {
        let exe = try astrocnnExecutable()
        let t0 = Date()
        let (status, out, err) = try runProcess(exe, ["fuzz", "--seed", "1", "--fits", "10000", "--models", "10000",
                                                      "--memory-budget", "256M", "--time-limit", "10", "--keep", dir + "/failing"])
        XCTAssertEqual(status, 0, "fuzz failed (3: crash, 4: hang, 5: memory); the case's file is kept in \(dir)/failing:\n\(err.suffix(2000))")
        XCTAssertTrue(out.contains("fits: 10000 cases") && out.contains("model: 10000 cases"), out)
        XCTAssertTrue(out.contains("no crash, no hang, within the memory budget"), out)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 120)
    }

    /// A restore killed mid-write leaves no output (only its hidden temporary, which the next
    /// run removes); a batch restored again after a kill redoes only the files not finished.
    func testKilledRestoreLeavesNoOutputAndBatchResumes() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.flamary3(initializer: randomInit(seed: 5)), to: model)
        let inDir = dir + "/in", outDir = dir + "/out"
        try FileManager.default.createDirectory(atPath: inDir, withIntermediateDirectories: true)
        let n = 6, side = 700
        for k in 0..<n {
            try FITSIO.writeImage(path: "\(inDir)/f\(k).fits", width: side, height: side,
                                  pixels: (0..<(side * side)).map { Float(($0 * (k + 3)) % 101) }, headerCards: [])
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = ["restore", inDir, "-m", model, "-o", outDir + "/", "--threads", "1", "--quiet"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Kill it while it writes the third file (two finished, a temporary of the third present).
        let deadline = Date().addingTimeInterval(120)
        var finishedBeforeKill: [String] = []
        while Date() < deadline {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: outDir)) ?? []
            let done = names.filter { !$0.hasPrefix(".") }
            if done.count >= 2 && names.contains(where: { $0.hasPrefix(".") }) { finishedBeforeKill = done; break }
            usleep(2000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let after = try FileManager.default.contentsOfDirectory(atPath: outDir)
        let finished = after.filter { !$0.hasPrefix(".") }
        XCTAssertGreaterThanOrEqual(finishedBeforeKill.count, 2, "the batch did not reach its third file in time")
        XCTAssertLessThan(finished.count, n, "the kill came after the batch finished")
        for f in finished {
            let img = try FITSIO.readImage(path: outDir + "/" + f)
            XCTAssertEqual(img.width, side, "a finished output is whole")
        }
        // Run again: the finished files are skipped as verified, the rest restored, and the killed
        // run's temporary is gone.
        let (s, out, err) = try runProcess(exe, ["restore", inDir, "-m", model, "-o", outDir + "/", "--quiet"])
        XCTAssertEqual(s, 0, err)
        XCTAssertTrue(out.contains("restored \(n - finished.count) files, skipped \(finished.count) up to date, 0 failed"), out)
        let final = try FileManager.default.contentsOfDirectory(atPath: outDir)
        XCTAssertEqual(final.sorted(), (0..<n).map { "f\($0).fits" }, "no temporary may remain: \(final)")
    }

    /// A training killed (SIGKILL) at arbitrary moments, checkpoints being written every epoch,
    /// always leaves a checkpoint that reads back whole (or none yet), from which `--resume
    /// --finish` writes a model.
    func testKilledTrainingLeavesAValidCheckpoint() throws {
        let exe = try astrocnnExecutable()
        let n = 256
        var rng = SplitMix64(seed: 11)
        let sky = (0..<(n * n)).map { i -> Float in Float(100 + 5 * rng.float() + ((i % n) % 37 == 0 && (i / n) % 41 == 0 ? 3000 : 0)) }
        try FITSIO.writeImage(path: dir + "/img.fits", width: n, height: n, pixels: sky, headerCards: [])
        let ckpt = dir + "/m.ckpt.acnn"
        var sawCheckpoint = 0
        for (k, delay) in [0.35, 0.6, 0.85, 1.1, 1.5].enumerated() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            var args = ["train", "--recipe", "flamary1", "--images", dir + "/img.fits", "--samples", "400", "--validation-samples", "100",
                        "--epochs", "400", "--patience", "400", "--lr", "0.0001", "-o", dir + "/m.acnn", "--threads", "1"]
            if k > 0 && access(ckpt, F_OK) == 0 { args += ["--resume", ckpt, "--extend-epochs", "2000"] }
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(useconds_t(delay * 1e6))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            if access(ckpt, F_OK) == 0 {
                sawCheckpoint += 1
                XCTAssertNoThrow(try ModelReader(path: ckpt), "checkpoint after kill \(k) must read back whole")
            }
        }
        XCTAssertGreaterThan(sawCheckpoint, 0, "no checkpoint was ever written: the kills came too early")
        let (s, out, err) = try runProcess(exe, ["train", "--recipe", "flamary1", "--images", dir + "/img.fits", "--resume", ckpt, "--finish",
                                                 "-o", dir + "/final.acnn"])
        XCTAssertEqual(s, 0, out + err)
        XCTAssertNoThrow(try ModelReader(path: dir + "/final.acnn"))
        // Temporaries of the killed runs are gone once the names were written again.
        let litter = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".m.ckpt.acnn.tmp-") }
        XCTAssertTrue(litter.count <= 1, "\(litter)")
    }

    /// Writes into a read-only folder or onto a full file system fail with a clear error and
    /// leave no file. Needs a small tmpfs (as root the permission bits do not stop writes, so a
    /// read-only mount is used); skips where mounting is not allowed.
    func testReadOnlyFolderAndFullFileSystemLeaveNothing() throws {
        let exe = try astrocnnExecutable()
        let model = dir + "/m.acnn"
        try ModelWriter.write(try Architectures.flamary1(initializer: randomInit(seed: 3)), to: model)
        let input = dir + "/in.fits"
        let w = 400, h = 400
        try FITSIO.writeImage(path: input, width: w, height: h, pixels: (0..<(w * h)).map { Float($0 % 13) }, headerCards: [])
        let ro = dir + "/ro", full = dir + "/full"
        for d in [ro, full] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        func mount(_ args: [String]) -> Bool { ((try? runProcess("/bin/mount", args))?.0 ?? 1) == 0 }
        guard mount(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro]) else {
            throw XCTSkip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the file-size-limit test in CLITests covers full disks")
        }
        defer { _ = try? runProcess("/bin/umount", [ro]) }
        let (s1, _, e1) = try runProcess(exe, ["restore", input, "-m", model, "-o", ro + "/o.fits", "--quiet"])
        XCTAssertNotEqual(s1, 0)
        XCTAssertTrue(e1.contains("error") && (e1.contains("Read-only") || e1.contains("cannot write")), e1)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: ro), [])
        // 128 kB: the header fits, the 640 kB of pixels do not.
        guard mount(["-t", "tmpfs", "-o", "size=128k", "tmpfs", full]) else { throw XCTSkip("cannot mount a second tmpfs") }
        defer { _ = try? runProcess("/bin/umount", [full]) }
        let (s2, _, e2) = try runProcess(exe, ["restore", input, "-m", model, "-o", full + "/o.fits", "--quiet"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(e2.contains("error"), e2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: full), [], "no partial or temporary file on the full file system")
        // A model (or checkpoint) written onto the full file system: an error, nothing left.
        let big = try Architectures.unet(widths: [16, 32, 64], initializer: randomInit(seed: 4))
        XCTAssertThrowsError(try ModelWriter.write(big, to: full + "/big.acnn"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: full), [])
    }
}
