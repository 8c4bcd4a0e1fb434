import Foundation
import ModelFormat
import CPUFeatures
import Runtime
#if canImport(Glibc)
import Glibc
#endif

/// An in-process fuzzer for everything that reads untrusted files: FITS images (every BITPIX,
/// scaling, BLANK, extensions, cubes, tile-compressed and gzip files) and `.acnn` models. Each
/// case mutates a seed with a deterministic generator (the case's number and the run's seed fix
/// it), writes it, and runs it through the same code as `restore`: open, statistics pass,
/// streaming restore through a small model into an atomically written output, and the
/// in-memory read; a mutated model is parsed, built into a network and run on a small image.
///
/// Each case must end with a result or a thrown error. A trap or crash is caught by a signal
/// handler that names the case and leaves its file for replay; a case that runs past the time
/// limit is reported by a watchdog thread; the process's resident memory is sampled after every
/// case, and the peak must stay within the memory budget plus the memory in use at the start.
public final class Fuzzer {
    public enum Target: String, CaseIterable, Sendable { case fits, model }

    /// FITS mutations.
    public enum FITSMutation: String, CaseIterable, Sendable {
        case none, headerBytes, dataBytes, truncate, keyword, keywords, removeEnd, insertCards, declaredHuge, tinyShape,
             nonFinite, appendGarbage, splice, compressedBytes
    }

    /// Model mutations.
    public enum ModelMutation: String, CaseIterable, Sendable {
        case none, headerBytes, headerBytesFixedCRC, fieldValue, truncate, dataBytes, metadata, weights, shapes, graph
    }

    public struct Config {
        public var seed: UInt64 = 1
        public var fitsCases = 10_000
        public var modelCases = 10_000
        /// Seconds one case may take before the run fails.
        public var timeLimit = 10.0
        public var directory: String
        /// Where a failing case's file is kept (default: `directory`).
        public var keep: String?
        /// Run only this case of each target (replay).
        public var only: Int?
        /// Start at this case number (replay of a stretch).
        public var from = 0
        public var progress: ((String) -> Void)?
        /// Only these mutation kinds (raw values); empty: all.
        public var kinds: Set<String> = []
        public init(directory: String) { self.directory = directory }
    }

    public struct Report: Sendable, CustomStringConvertible {
        public var cases: [Target: Int] = [:]
        public var results: [Target: Int] = [:]
        public var errors: [Target: Int] = [:]
        public var perKind: [String: Int] = [:]
        public var seconds: [Target: Double] = [:]
        public var slowestCase = 0.0
        public var slowestName = ""
        public var startRSS = 0
        public var peakRSS = 0
        public var peakCase = ""
        public var budget = 0
        /// The most frequent error messages (first 60 characters), counted.
        public var errorKinds: [String: Int] = [:]

        public var description: String {
            var s = ""
            for t in Target.allCases where (cases[t] ?? 0) > 0 {
                s += String(format: "%@: %d cases in %.1f s (%.2f ms each): %d ran to a result, %d ended with a clear error\n", t.rawValue,
                            cases[t]!, seconds[t] ?? 0, 1000 * (seconds[t] ?? 0) / Double(cases[t]!), results[t] ?? 0, errors[t] ?? 0)
            }
            s += "kinds: " + perKind.keys.sorted().map { "\($0) \(perKind[$0]!)" }.joined(separator: ", ") + "\n"
            s += String(format: "slowest case %.3f s (%@); resident memory %.0f MB at start, peak %.0f MB (after %@), budget %.0f MB\n",
                        slowestCase, slowestName, Double(startRSS) / 1e6, Double(peakRSS) / 1e6, peakCase, Double(budget) / 1e6)
            let top = errorKinds.sorted { $0.value > $1.value }.prefix(12)
            s += "most common errors:\n" + top.map { String(format: "  %6d  %@", $0.value, $0.key) }.joined(separator: "\n")
            return s
        }
    }

    public enum Failure: Error, CustomStringConvertible {
        case memory(String)
        public var description: String { switch self { case .memory(let s): return s } }
    }

    let config: Config
    var fitsSeeds: [(name: String, bytes: [UInt8])] = []
    var modelSeeds: [(name: String, bytes: [UInt8])] = []
    var fitsNetworks: [Network] = []
    var report = Report()

    public init(config: Config) throws {
        self.config = config
        try FileManager.default.createDirectory(atPath: config.directory, withIntermediateDirectories: true)
        fitsSeeds = Fuzzer.makeFITSSeeds(directory: config.directory)
        modelSeeds = try Fuzzer.makeModelSeeds()
        fitsNetworks = try [
            Network(model: Architectures.flamary1(initializer: Fuzzer.initializer(7))),
            Network(model: Architectures.unet(name: "fuzz-unet", widths: [2, 4], normalization: "sky_mad", initializer: Fuzzer.initializer(8))),
        ]
    }

    static func initializer(_ seed: UInt64) -> ModelBuilder.Initializer {
        var rng = SplitMix64(seed: seed)
        return { _, shape, fanIn, _ in
            let n = shape.reduce(1, *)
            let a = Float(1 / Double(max(1, fanIn)).squareRoot())
            return (0..<n).map { _ in rng.float(-a, a) }
        }
    }

    // MARK: seeds

    static func makeFITSSeeds(directory: String) -> [(name: String, bytes: [UInt8])] {
        typealias B = FITSBytes
        let c = { (k: String, v: String) in B.card(k, v) }
        var seeds: [(String, [UInt8])] = []
        let wcs = [c("CTYPE1", "'RA---TAN'"), c("CTYPE2", "'DEC--TAN'"), c("CRPIX1", "20.0"), c("CRPIX2", "15.0"),
                   c("CRVAL1", "83.8"), c("CRVAL2", "-5.4"), c("CDELT1", "-0.0002"), c("CDELT2", "0.0002"), c("GAIN", "1.5")]
        var v16 = B.sky(40, 30, seed: 1).map { ($0 - 32768) / 2 }
        for i in stride(from: 7, to: v16.count, by: 97) { v16[i] = -32768 }
        seeds.append(("int16-scaled-blank", B.image(bitpix: 16, axes: [40, 30], values: v16,
                                                     cards: [c("BSCALE", "2.0"), c("BZERO", "32768.0"), c("BLANK", "-32768")] + wcs)))
        var vf = B.sky(33, 29, seed: 2)
        vf[5] = .nan; vf[100] = .infinity; vf[200] = -.infinity
        seeds.append(("float32-nan-inf", B.image(bitpix: -32, axes: [33, 29], values: vf, cards: wcs)))
        seeds.append(("uint8", B.image(bitpix: 8, axes: [20, 20], values: B.sky(20, 20, seed: 3).map { $0 / 30 })))
        seeds.append(("int32-bzero", B.image(bitpix: 32, axes: [25, 25], values: B.sky(25, 25, seed: 4), cards: [c("BZERO", "10.0")])))
        seeds.append(("int64", B.image(bitpix: 64, axes: [17, 19], values: B.sky(17, 19, seed: 5))))
        seeds.append(("float64-bscale", B.image(bitpix: -64, axes: [21, 23], values: B.sky(21, 23, seed: 6), cards: [c("BSCALE", "0.5")])))
        seeds.append(("mef-sci-table", B.image(bitpix: 8, axes: [], values: [])
                        + B.image(bitpix: -32, axes: [30, 30], values: B.sky(30, 30, seed: 7), cards: [c("EXTNAME", "'SCI     '")], primary: false)
                        + B.table(rows: 5)))
        seeds.append(("cube-1-plane", B.image(bitpix: 16, axes: [24, 24, 1], values: B.sky(24, 24, seed: 8))))
        seeds.append(("cube-2-planes", B.image(bitpix: -32, axes: [12, 12, 2], values: B.sky(12, 24, seed: 9))))
        seeds.append(("rgb-3-planes", B.image(bitpix: 16, axes: [26, 22, 3], values: B.sky(26, 66, seed: 12))))
        seeds.append(("sci-with-dq", B.image(bitpix: 8, axes: [], values: [])
                        + B.image(bitpix: -32, axes: [28, 28], values: B.sky(28, 28, seed: 13), cards: [c("EXTNAME", "'SCI     '"), c("EXTVER", "1")], primary: false)
                        + B.image(bitpix: 16, axes: [28, 28], values: (0..<784).map { $0 % 37 == 0 ? 4 : 0 }, cards: [c("EXTNAME", "'DQ      '"), c("EXTVER", "1")], primary: false)))
        if let z = B.compressed(directory: directory, name: "seed-rice.fits", spec: "R 16,16", bitpix: 16, width: 40, height: 40,
                                values: B.sky(40, 40, seed: 10).map { $0 - 1000 }) {
            seeds.append(("rice-int16", z))
        }
        if let z = B.compressed(directory: directory, name: "seed-gzip.fits", spec: "G 37,8", bitpix: -32, width: 37, height: 31,
                                values: B.sky(37, 31, seed: 11)) {
            seeds.append(("gzip1-float", z))
        }
        // A gzip file (cfitsio decompresses it into memory when opening).
        let plain = directory + "/seed-plain.fits"
        if FileManager.default.createFile(atPath: plain, contents: Data(seeds[0].1)),
           let gz = try? gzip(plain), let d = FileManager.default.contents(atPath: gz) {
            seeds.append(("gzip-file", [UInt8](d)))
            unlink(gz)
        }
        unlink(plain)
        return seeds
    }

    /// gzip through the system's gzip (seed creation only); nil where it is missing.
    static func gzip(_ path: String) throws -> String? {
        for exe in ["/usr/bin/gzip", "/bin/gzip"] where FileManager.default.isExecutableFile(atPath: exe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = ["-f", "-k", path]
            try p.run()
            p.waitUntilExit()
            return p.terminationStatus == 0 ? path + ".gz" : nil
        }
        return nil
    }

    static func makeModelSeeds() throws -> [(name: String, bytes: [UInt8])] {
        [("flamary1", try ModelWriter.encode(Architectures.flamary1(initializer: initializer(1)))),
         ("unet-2-4", try ModelWriter.encode(Architectures.unet(name: "u", widths: [2, 4], normalization: "noise_mad", initializer: initializer(2)))),
         ("unet-input-skip", try ModelWriter.encode(Architectures.unet(name: "u2", widths: [3, 5, 6], normalization: "clip_max", inputSkip: true,
                                                                       ratioChannel: false, initializer: initializer(3)))),
         // Format 1.1: a Wiener step that needs the PSF at run time.
         ("unet-wiener", try ModelWriter.encode(Architectures.unet(name: "u3", widths: [2, 4], normalization: "noise_mad", inputSkip: true,
                                                                   ratioChannel: false, wienerContext: 4, initializer: initializer(4))))]
    }

    // MARK: running

    /// Runs every case; throws on a memory failure (a crash or a hang ends the process).
    public func run() throws -> Report {
        report.budget = MemoryBudget.bytes
        report.startRSS = Fuzzer.residentBytes()
        report.peakRSS = report.startRSS
        FuzzWatchdog.start(limit: config.timeLimit)
        for target in Target.allCases {
            let n = target == .fits ? config.fitsCases : config.modelCases
            let t0 = Date()
            let range = config.only.map { $0 < n ? $0..<($0 + 1) : 0..<0 } ?? min(config.from, n)..<n
            for k in range {
                let name: String
                let path: String
                var rng = SplitMix64(seed: config.seed &* 0x9E37_79B9 &+ UInt64(k) &* 2 &+ (target == .fits ? 0 : 1))
                if target == .fits {
                    let (bytes, kind, seedName, file) = mutateFITS(&rng)
                    name = "fits case \(k) (\(kind.rawValue) of \(seedName))"
                    path = config.directory + "/" + file
                    write(bytes, to: path)
                    report.perKind["fits." + kind.rawValue, default: 0] += 1
                } else {
                    let (bytes, kind, seedName) = try mutateModel(&rng)
                    name = "model case \(k) (\(kind.rawValue) of \(seedName))"
                    path = config.directory + "/case.acnn"
                    write(bytes, to: path)
                    report.perKind["model." + kind.rawValue, default: 0] += 1
                }
                FuzzWatchdog.begin(name + ", file " + (config.keep.map { $0 + "/" + (path as NSString).lastPathComponent } ?? path))
                let c0 = Date()
                let outcome: String? = target == .fits ? runFITS(path, &rng) : runModel(path, &rng)
                let dt = Date().timeIntervalSince(c0)
                FuzzWatchdog.end()
                report.cases[target, default: 0] += 1
                if let e = outcome {
                    report.errors[target, default: 0] += 1
                    report.errorKinds[Fuzzer.errorKind(e), default: 0] += 1
                } else {
                    report.results[target, default: 0] += 1
                }
                if dt > report.slowestCase { report.slowestCase = dt; report.slowestName = name }
                // The program's peak (VmHWM) catches what a case held only for a moment; it only
                // grows, so the case that raised it is the one that used the memory.
                let rss = max(Fuzzer.residentBytes(), Fuzzer.peakResidentBytes())
                if rss > report.peakRSS { report.peakRSS = rss; report.peakCase = name }
                if rss > report.startRSS + report.budget {
                    if let keep = config.keep { copyFile(path, to: keep) }
                    throw Failure.memory("\(name): resident memory \(rss / 1_000_000) MB exceeds the budget \(report.budget / 1_000_000) MB plus the \(report.startRSS / 1_000_000) MB in use at the start")
                }
                if (k + 1) % 2000 == 0 {
                    let used = acnn_malloc_in_use() / 1_000_000
                    config.progress?("fuzz: \(target.rawValue) \(k + 1)/\(n), resident \(rss / 1_000_000) MB, malloc in use \(used) MB")
                }
                unlink(path)
            }
            report.seconds[target] = Date().timeIntervalSince(t0)
        }
        FuzzWatchdog.stop()
        return report
    }

    static func errorKind(_ e: String) -> String {
        // Drop the file path and numbers, so that the same error groups together.
        var s = e
        if let r = s.range(of: ".fits: ") ?? s.range(of: ".fz: ") ?? s.range(of: ".gz: ") ?? s.range(of: ".acnn: ") { s = String(s[r.upperBound...]) }
        s = String(s.map { $0.isNumber ? "#" : $0 })
        return String(s.prefix(70))
    }

    func write(_ bytes: [UInt8], to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { return }
        bytes.withUnsafeBytes { var off = 0; while off < $0.count { let n = Glibc.write(fd, $0.baseAddress! + off, $0.count - off); if n <= 0 { break }; off += n } }
        Glibc.close(fd)
        if let keep = config.keep { copyFile(path, to: keep) }
    }

    func copyFile(_ path: String, to dir: String) {
        let dst = dir + "/" + (path as NSString).lastPathComponent
        unlink(dst)
        try? FileManager.default.copyItem(atPath: path, toPath: dst)
    }

    /// Opens, measures, restores (streaming, through one of two small networks) and reads the
    /// file in memory; nil when all ran, else the first error's text.
    func runFITS(_ path: String, _ rng: inout SplitMix64) -> String? {
        let hdu: String? = rng.next() % 8 == 0 ? rng.pick(["0", "1", "SCI", "2"]) : nil
        let net = fitsNetworks[Int(rng.next() % UInt64(fitsNetworks.count))]
        var options = Restoration.Options(threads: 1 + Int(rng.next() % 2))
        if rng.next() % 4 == 0 { options.tileSize = 1 + Int(rng.next() % 40) }
        let out = config.directory + "/out.fits"
        unlink(out)
        do {
            // As `restore` does: the header probe, then planes, masks and blends through
            // PlaneRestore, or the plain 2-D streaming restore.
            let probe = try FITSProbe(path: path, hdu: hdu)
            var extras = RestoreExtras()
            if rng.next() % 4 == 0 { extras.strength = 0.5 }
            if probe.planes == 3 && rng.next() % 2 == 0 { extras.luminance = true }
            if PlaneRestore.needed(probe, extras) {
                _ = try PlaneRestore.restoreFile(input: path, hdu: hdu, output: out, network: net, options: options, extras: extras, overwrite: true)
                unlink(out)
                return nil
            }
            let reader = try FITSReader(path: path, hdu: hdu)
            _ = try StreamingRestore.statistics(reader, network: net, options: options)
            reader.close()
            _ = try StreamingRestore.restoreFile(input: path, hdu: hdu, output: out, network: net, options: options, overwrite: true)
            let img = try FITSIO.readImage(path: path, hdu: hdu)
            let back = try FITSIO.readImage(path: out)
            if back.width != img.width || back.height != img.height { return "output shape differs from the input's" }
            unlink(out)
            return nil
        } catch {
            unlink(out)
            return String(describing: error)
        }
    }

    /// Parses the model (from the file, or from its bytes), builds the network and restores a
    /// small image with it in memory.
    func runModel(_ path: String, _ rng: inout SplitMix64) -> String? {
        do {
            let reader: ModelReader
            if rng.next() % 2 == 0 { reader = try ModelReader(path: path) } else {
                reader = try ModelReader(bytes: [UInt8](FileManager.default.contents(atPath: path) ?? Data()))
            }
            let net = try Network(model: try reader.model(), fileChecksum: reader.fileChecksum)
            if net.wienerContext != nil && rng.next() % 4 != 0 {
                // A 5x5 Gaussian PSF (sometimes none: the run must then be refused).
                let k = (0..<25).map { i -> Double in let y = Double(i / 5 - 2), x = Double(i % 5 - 2); return exp(-(x * x + y * y) / 2) }
                try net.bind(psf: PSFKernel(height: 5, width: 5, values: k))
            }
            let side = 24 + Int(rng.next() % 24)
            let img = FITSImage(width: side, height: side, pixels: FITSBytes.sky(side, side, seed: rng.next()).map(Float.init))
            var options = Restoration.Options(threads: 1 + Int(rng.next() % 2))
            if rng.next() % 3 == 0 { options.tileSize = 1 + Int(rng.next() % 30) }
            let (pixels, _) = try Restoration.restore(img, network: net, options: options)
            if pixels.count != side * side { return "output has \(pixels.count) pixels for a \(side)x\(side) image" }
            return nil
        } catch {
            return String(describing: error)
        }
    }

    /// Resident set size now (from /proc/self/statm), bytes.
    public static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let f = s.split(separator: " ")
        return f.count > 1 ? (Int(f[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    /// Peak resident set size of this program (VmHWM of /proc/self/status; getrusage's
    /// ru_maxrss would also count the parent's pages at the fork before exec), bytes.
    public static func peakResidentBytes() -> Int {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kb = line.split(separator: " ").compactMap({ Int($0) }).first {
            return kb * 1024
        }
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return u.ru_maxrss * 1024
    }
}
