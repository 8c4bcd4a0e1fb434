import Foundation
import ModelFormat
import Runtime
import XCTest

/// A real single-node Slurm cluster (Debian's slurm-wlm and munge), started inside the test:
/// munged with its key and socket in a temporary directory, slurmctld and slurmd in the
/// foreground (-D) as background processes, stopped by their PIDs.
final class SlurmCluster {
    let dir: String
    let conf: String
    private var pids: [Int32] = []

    static let binaries = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/scancel", "/usr/bin/sinfo"]

    init() throws {
        let missing = SlurmCluster.binaries.filter { !FileManager.default.isExecutableFile(atPath: $0) }
        if !missing.isEmpty {
            throw XCTSkip("Slurm is not installed (missing \(missing.joined(separator: ", "))); .ci/run installs slurm-wlm and munge: test skipped")
        }
        // /tmp is world-executable, and so is this directory (munged and slurmd check the parents).
        dir = "/tmp/acnn-slurm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        conf = dir + "/slurm.conf"
        for sub in ["", "/state", "/spool"] { try FileManager.default.createDirectory(atPath: dir + sub, withIntermediateDirectories: true) }
        chmod(dir, 0o755)
        var key = [UInt8](repeating: 0, count: 1024)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<key.count { key[i] = UInt8.random(in: 0...255, using: &rng) }
        _ = FileManager.default.createFile(atPath: dir + "/munge.key", contents: Data(key), attributes: [.posixPermissions: 0o400])
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        let port = Int.random(in: 20000..<40000)
        let text = """
        ClusterName=acnntest
        SlurmctldHost=\(host)(127.0.0.1)
        SlurmUser=root
        SlurmdUser=root
        SlurmctldPort=\(port)
        SlurmdPort=\(port + 1)
        AuthType=auth/munge
        AuthInfo=socket=\(dir)/munge.sock
        CredType=cred/munge
        StateSaveLocation=\(dir)/state
        SlurmdSpoolDir=\(dir)/spool
        SlurmctldPidFile=\(dir)/slurmctld.pid
        SlurmdPidFile=\(dir)/slurmd.pid
        SlurmctldLogFile=\(dir)/slurmctld.log
        SlurmdLogFile=\(dir)/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        JobCompType=jobcomp/none
        SchedulerType=sched/backfill
        SelectType=select/cons_tres
        SelectTypeParameters=CR_CPU
        DependencyParameters=kill_invalid_depend
        ReturnToService=2
        MpiDefault=none
        MaxArraySize=1001
        NodeName=acnn0 NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
        PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP

        """
        try text.write(toFile: conf, atomically: true, encoding: .utf8)
        do {
            try start("/usr/sbin/munged", ["--foreground", "--force", "--key-file=\(dir)/munge.key", "--socket=\(dir)/munge.sock",
                                           "--pid-file=\(dir)/munged.pid", "--seed-file=\(dir)/munge.seed"], log: "munged.out")
            try waitFor(5) { FileManager.default.fileExists(atPath: self.dir + "/munge.sock") }
            try start("/usr/sbin/slurmctld", ["-D", "-i", "-f", conf], log: "slurmctld.out")
            try start("/usr/sbin/slurmd", ["-D", "-N", "acnn0", "-f", conf], log: "slurmd.out")
            try waitFor(20) { (try? self.run("/usr/bin/sinfo", ["-h", "-o", "%T"]).1.contains("idle")) ?? false }
        } catch {
            let logs = ["munged.out", "slurmctld.out", "slurmd.out"].map { name in
                "\(name): " + ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8))?.split(separator: "\n").suffix(3).joined(separator: " | ") ?? "")
            }
            stop()
            throw XCTSkip("a single-node Slurm cluster could not be started here (\(error)); \(logs.joined(separator: "; ")): test skipped")
        }
    }

    struct Timeout: Error, CustomStringConvertible { var description: String { "timed out" } }

    func waitFor(_ seconds: Double, _ ok: () -> Bool) throws {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if ok() { return }
            usleep(100_000)
        }
        throw Timeout()
    }

    /// Starts a daemon as a child with posix_spawn: standard input from /dev/null, output to a
    /// log, and every other descriptor closed (Foundation's Process keeps a descriptor of each
    /// client it runs; a daemon inheriting one would keep that client from ever looking finished).
    private func start(_ exe: String, _ args: [String], log: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, dir + "/" + log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in open where fd > 2 && fcntl(fd, F_GETFD) >= 0 { posix_spawn_file_actions_addclose(&actions, fd) }
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var env = ProcessInfo.processInfo.environment
        env["SLURM_CONF"] = conf
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for e in envp { free(e) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, nil, argv, envp)
        if rc != 0 { throw Failure(message: "could not start \(exe): \(String(cString: strerror(rc)))") }
        pids.append(pid)
    }

    struct Failure: Error, CustomStringConvertible { var message: String; var description: String { message } }

    /// Runs a client command against this cluster: (status, stdout, stderr).
    @discardableResult
    func run(_ exe: String, _ args: [String]) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["SLURM_CONF"] = conf
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// Jobs still in the queue (any state).
    func queued() -> [String] {
        ((try? run("/usr/bin/squeue", ["-h", "-r", "-o", "%i %T"]))?.1 ?? "").split(separator: "\n").map(String.init)
    }

    func waitUntilIdle(_ seconds: Double) throws { try waitFor(seconds) { self.queued().isEmpty } }

    /// Stops the daemons by their PIDs (SIGTERM, then SIGKILL) in reverse order, and reaps them.
    func stop() {
        for pid in pids.reversed() {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            let end = Date().addingTimeInterval(5)
            var reaped = false
            while Date() < end {
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid || r < 0 { reaped = true; break }
                usleep(50_000)
            }
            if !reaped { kill(pid, SIGKILL); waitpid(pid, &status, 0) }
        }
        pids = []
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

final class SlurmTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let model = repositoryRoot + "/models/flamary3.acnn"

    func writeSky(_ path: String, _ w: Int, _ h: Int, seed: UInt64, masked: Bool = false) {
        var rng = TestRNG(seed: seed)
        var v = [Double](repeating: 0, count: w * h)
        var mask = [Bool](repeating: false, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                v[y * w + x] = 100 + 30 * sin(Double(x) / 29) * cos(Double(y) / 41) + Double(rng.float(-5, 5))
                    + ((x * 7 + y * 13) % 211 == 0 ? 800 : 0)
                if masked && (x / 3 + y / 3) % 97 == 0 && x % 50 < 3 { mask[y * w + x] = true }
            }
        }
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: v, nullMask: mask,
                          extraCards: ["CTYPE1  = 'RA---TAN'", "CRPIX1  =                 12.5", "OBJECT  = 'test field'"])
    }

    func bits(_ path: String) throws -> [UInt32] { try FITSIO.readImage(path: path).pixels.map(\.bitPattern) }

    /// The tiled restore of one image and a many-file batch as Slurm job arrays with dependent
    /// stitch jobs; one task is killed and resubmitted; results equal the single-process restore.
    func testJobArraysOnARealSlurmCluster() throws {
        let cluster = try SlurmCluster()
        defer { cluster.stop() }
        let exe = try astrocnnExecutable()

        // Tiled: a 2048x1536 image in 512-pixel windows (12 tasks).
        let big = dir + "/big.fits"
        writeSky(big, 2048, 1536, seed: 1, masked: true)
        let single = dir + "/single.fits"
        var (st, out, err) = try runProcess(exe, ["restore", big, "-m", model, "-o", single, "--threads", "2", "--quiet"])
        XCTAssertEqual(st, 0, err)
        let work = dir + "/work"
        let stitched = dir + "/stitched.fits"
        (st, out, err) = try cluster.run(exe, ["plan", "--image", big, "--tile", "512", "-m", model, "-o", stitched, "--workdir", work, "--slurm"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("12 tasks"), out)
        let manifest = try PlanManifest.load(work)
        XCTAssertEqual(manifest.tasks.count, 12)
        XCTAssertEqual(manifest.halo, try Network(path: model).analysis.geometry.halo)
        XCTAssertNotNil(manifest.images[0].normalization)
        let script = try String(contentsOfFile: work + "/slurm/submit.sh", encoding: .utf8)
        XCTAssertTrue(script.contains("--dependency=afterok"), script)

        (st, out, err) = try cluster.run("/bin/bash", [work + "/slurm/submit.sh"])
        XCTAssertEqual(st, 0, err)
        let ids = out.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
        XCTAssertEqual(ids.count, 2, out)
        let arrayJob = ids[0]
        // Kill one task: the last one, right away (12 tasks on 2 CPUs: it cannot have finished);
        // scancel kills it whether it is already running or still waiting for a CPU.
        (st, _, err) = try cluster.run("/usr/bin/scancel", ["\(arrayJob)_11"])
        XCTAssertEqual(st, 0, err)
        try cluster.waitUntilIdle(120)
        // The stitch job never ran (its afterok dependency failed); status reports the task.
        XCTAssertFalse(FileManager.default.fileExists(atPath: stitched))
        (st, out, err) = try cluster.run(exe, ["status", "--plan", work, "--resubmit"])
        XCTAssertEqual(st, 3, out + err)
        XCTAssertTrue(out.contains("task 11: missing"), out)
        XCTAssertTrue(out.contains("11 done"), out)
        (st, out, err) = try cluster.run("/bin/bash", [work + "/slurm/resubmit.sh"])
        XCTAssertEqual(st, 0, err)
        try cluster.waitUntilIdle(120)
        (st, out, err) = try cluster.run(exe, ["status", "--plan", work])
        XCTAssertEqual(st, 0, out + err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: stitched), (try? String(contentsOfFile: work + "/logs/stitch.out", encoding: .utf8)) ?? "")
        XCTAssertEqual(try bits(stitched), try bits(single), "stitched Slurm result equals the single-process restore")
        let s = try FITSIO.readImage(path: stitched)
        XCTAssertEqual(s.keyword("CTYPE1"), "RA---TAN")
        XCTAssertEqual(s.keyword("ACNNPLAN"), manifest.id)
        XCTAssertTrue(s.headerCards.contains { $0.hasPrefix("HISTORY Plan \(manifest.id)") })
        // A rerun of a finished task exits at once.
        (st, out, _) = try runProcess(exe, ["run-task", "--plan", work + "/manifest.json", "--index", "3"])
        XCTAssertEqual(st, 0); XCTAssertTrue(out.contains("verified result exists"), out)

        // Many files: 10 frames, at most 4 array tasks (3 files per task), then the check job.
        let frames = dir + "/frames"
        try FileManager.default.createDirectory(atPath: frames, withIntermediateDirectories: true)
        for i in 0..<10 { writeSky(frames + "/frame\(i).fits", 160 + 8 * i, 120, seed: UInt64(10 + i)) }
        let batchOut = dir + "/batch", reference = dir + "/reference", work2 = dir + "/work2"
        (st, out, err) = try cluster.run(exe, ["plan", frames, "-m", model, "-o", batchOut, "--workdir", work2, "--slurm", "--max-array", "4"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("4 tasks, 10 files"), out)
        (st, out, err) = try cluster.run("/bin/bash", [work2 + "/slurm/submit.sh"])
        XCTAssertEqual(st, 0, err)
        try cluster.waitUntilIdle(120)
        (st, out, err) = try runProcess(exe, ["restore", frames, "-m", model, "-o", reference, "--threads", "2", "--quiet"])
        XCTAssertEqual(st, 0, err)
        for i in 0..<10 {
            XCTAssertEqual(try bits(batchOut + "/frame\(i).fits"), try bits(reference + "/frame\(i).fits"), "frame \(i)")
        }
        XCTAssertTrue((try? String(contentsOfFile: work2 + "/logs/stitch.out", encoding: .utf8))?.contains("10 outputs verified") ?? false)
    }

    /// run-task's exit codes and atomic results, without a scheduler.
    func testRunTaskExitCodesAndResume() throws {
        let exe = try astrocnnExecutable()
        let img = dir + "/img.fits"
        writeSky(img, 600, 400, seed: 3)
        let work = dir + "/w"
        var (st, out, err) = try runProcess(exe, ["plan", "--image", img, "--tile", "256", "-m", model, "-o", dir + "/out.fits", "--workdir", work, "--max-array", "3"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(out.contains("3 tasks, 6 windows"), out)   // 6 windows batched 2 per task
        // Retryable: the pieces directory is not writable (a file is in its place).
        try FileManager.default.removeItem(atPath: work + "/pieces")
        _ = FileManager.default.createFile(atPath: work + "/pieces", contents: Data("x".utf8))
        (st, _, err) = try runProcess(exe, ["run-task", "--plan", work, "--index", "0"])
        XCTAssertEqual(st, TaskExit.retryable.rawValue, err)
        (st, out, _) = try runProcess(exe, ["status", "--plan", work])
        XCTAssertEqual(st, 3); XCTAssertTrue(out.contains("task 0: failed"), out)
        try FileManager.default.removeItem(atPath: work + "/pieces")
        for i in 0..<3 {
            (st, _, err) = try runProcess(exe, ["run-task", "--plan", work, "--index", "\(i)"])
            XCTAssertEqual(st, 0, err)
        }
        (st, out, _) = try runProcess(exe, ["status", "--plan", work])
        XCTAssertEqual(st, 0, out)
        (st, _, err) = try runProcess(exe, ["stitch", "--plan", work])
        XCTAssertEqual(st, 0, err)
        (st, _, err) = try runProcess(exe, ["restore", img, "-m", model, "-o", dir + "/single.fits", "--quiet"])
        XCTAssertEqual(try bits(dir + "/out.fits"), try bits(dir + "/single.fits"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: work + "/pieces").filter { $0.contains(".tmp-") }, [])
        // Permanent: an index outside the plan, and an input changed since planning.
        (st, _, err) = try runProcess(exe, ["run-task", "--plan", work, "--index", "7"])
        XCTAssertEqual(st, TaskExit.permanent.rawValue, err)
        try FileManager.default.removeItem(atPath: work + "/pieces/piece-000000.fits")
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: img))
        h.seekToEndOfFile(); h.write(Data(repeating: 0, count: 2880)); h.closeFile()
        (st, _, err) = try runProcess(exe, ["run-task", "--plan", work, "--index", "0"])
        XCTAssertEqual(st, TaskExit.permanent.rawValue, err)
        XCTAssertTrue(err.contains("changed since it was planned"), err)
    }

    /// A batch restore resumes: outputs made from the same input, model and options are skipped;
    /// a bad file is reported with a non-zero exit while the others are written.
    func testBatchRestoreSkipsFinishedOutputsAndSummarisesFailures() throws {
        let exe = try astrocnnExecutable()
        let frames = dir + "/frames"
        try FileManager.default.createDirectory(atPath: frames, withIntermediateDirectories: true)
        for i in 0..<4 { writeSky(frames + "/f\(i).fits", 150, 140, seed: UInt64(i)) }
        try Data("not FITS".utf8).write(to: URL(fileURLWithPath: frames + "/broken.fits"))
        let out = dir + "/out"
        var (st, o, err) = try runProcess(exe, ["restore", frames, "-m", model, "-o", out, "--name", "{stem}_r.fits"])
        XCTAssertEqual(st, 1, err)
        XCTAssertTrue(err.contains("1 of 5 files failed"), err)
        XCTAssertTrue(err.contains("broken.fits"), err)
        XCTAssertEqual(err.components(separatedBy: "\n").filter { $0.hasPrefix("restore: 5/5 files") }.count, 1, err)
        XCTAssertTrue(o.contains("restored 4 files"), o)
        let first = try bits(out + "/f2_r.fits")
        try FileManager.default.removeItem(atPath: frames + "/broken.fits")
        try FileManager.default.removeItem(atPath: out + "/f1_r.fits")   // as if interrupted before f1
        (st, o, err) = try runProcess(exe, ["restore", frames, "-m", model, "-o", out, "--name", "{stem}_r.fits"])
        XCTAssertEqual(st, 0, err)
        XCTAssertTrue(o.contains("restored 1 files, skipped 3 up to date, 0 failed"), o)
        XCTAssertEqual(try bits(out + "/f2_r.fits"), first)
        // Different options: the existing outputs do not match and are not replaced silently.
        (st, o, err) = try runProcess(exe, ["restore", frames, "-m", model, "-o", out, "--name", "{stem}_r.fits", "--conv", "direct"])
        XCTAssertEqual(st, 1)
        XCTAssertTrue(err.contains("--overwrite"), err)
    }
}
