import Foundation
import ModelFormat

/// Where `astrocnn` finds its models when it is not given a path: the same binary works from the
/// source tree, from an installed prefix (`PREFIX/bin/astrocnn` with `PREFIX/share/astrocnn/models`)
/// and with a folder named by the user.
///
/// Search order (the first folder holding a file wins; `astrocnn models` lists them all):
/// 1. `--model-dir DIR` (each given folder, in order);
/// 2. `$ASTROCNN_MODELS` (one folder, or several separated by ':');
/// 3. next to the executable: `BIN/models`, then `BIN/../share/astrocnn/models` (an installed prefix);
/// 4. the source tree the executable was built in: the first folder above the executable that holds
///    `Package.swift` and `models/` (e.g. `.build/release/astrocnn` finds `models/`).
public enum ModelSearch {
    /// One folder of the search path and why it is on it.
    public struct Location: Equatable, Sendable {
        public var directory: String
        public var origin: String
        public init(directory: String, origin: String) { self.directory = directory; self.origin = origin }
    }

    /// The running executable's real path (symbolic links resolved), from /proc/self/exe, else argv[0].
    public static func executablePath() -> String? {
        if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
        guard let a = CommandLine.arguments.first, !a.isEmpty else { return nil }
        let url = URL(fileURLWithPath: a, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath))
        return url.resolvingSymlinksInPath().path
    }

    /// The folders searched, in order, without duplicates. Folders that do not exist are kept
    /// (the listing says which exist); `executable` nil uses the running one.
    public static func locations(explicit: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment,
                                 executable: String? = executablePath()) -> [Location] {
        var out: [Location] = []
        func add(_ dir: String, _ origin: String) {
            let d = URL(fileURLWithPath: dir).standardizedFileURL.path
            if !out.contains(where: { $0.directory == d }) { out.append(Location(directory: d, origin: origin)) }
        }
        for d in explicit where !d.isEmpty { add(d, "--model-dir") }
        if let env = environment["ASTROCNN_MODELS"] {
            for d in env.split(separator: ":") where !d.isEmpty { add(String(d), "$ASTROCNN_MODELS") }
        }
        if let exe = executable {
            let bin = URL(fileURLWithPath: exe).deletingLastPathComponent()
            add(bin.appendingPathComponent("models").path, "next to the executable")
            add(bin.deletingLastPathComponent().appendingPathComponent("share/astrocnn/models").path, "installed prefix (BIN/../share/astrocnn/models)")
            var dir = bin
            while dir.path != "/" && !dir.path.isEmpty {
                let fm = FileManager.default
                if fm.fileExists(atPath: dir.appendingPathComponent("Package.swift").path),
                   fm.fileExists(atPath: dir.appendingPathComponent("models").path) {
                    add(dir.appendingPathComponent("models").path, "source tree of the executable")
                    break
                }
                dir = dir.deletingLastPathComponent()
            }
        }
        return out
    }

    /// The first `name` (a file name such as `astro-unet-16-vst.acnn`) found on the search path.
    public static func find(_ name: String, in locations: [Location]) -> String? {
        for l in locations {
            let p = (l.directory as NSString).appendingPathComponent(name)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue { return p }
        }
        return nil
    }

    /// What a model is for, read from its metadata.
    public enum Task: String, Sendable {
        case denoise, deconvolve, unknown
    }

    /// One model file found on the search path.
    public struct Entry: Sendable {
        public var file: String
        public var path: String
        public var location: Location
        public var name: String
        public var task: Task
        public var recipe: String?
        /// The training PSF as recorded (`training.psf`; the legacy `airy` with its size and rings).
        public var psf: String?
        /// The training noise as recorded (`training.noise`, `training.noise_sigma` or the noise model's text).
        public var noise: String?
        public var normalization: String
        public var parameters: Int
        public var bytes: Int
        public var checksum: UInt32
        /// Models with the same file name earlier on the search path hide this one.
        public var shadowed: Bool
        public var metadata: [String: MetaValue]
    }

    /// The task of a model: `training.task` when recorded, else from the recipe (astro-unet:
    /// denoise; flamary1/3 and deconv-unet: deconvolve), else from the training PSF (none: denoise).
    public static func task(metadata m: [String: MetaValue]) -> Task {
        if let t = m["training.task"]?.stringValue, let task = Task(rawValue: t) { return task }
        switch m["training.recipe"]?.stringValue {
        case "astro-unet": return .denoise
        case "flamary1", "flamary3", "deconv-unet": return .deconvolve
        default: break
        }
        if let p = m["training.psf"]?.stringValue { return p.lowercased() == "none" ? .denoise : .deconvolve }
        return .unknown
    }

    /// Every `.acnn` file in the searched folders (not checkpoints `*.ckpt.acnn`), in search
    /// order, then by file name. Files that cannot be read are returned in `unreadable`.
    public static func catalog(_ locations: [Location]) -> (entries: [Entry], unreadable: [(String, String)]) {
        var entries: [Entry] = [], bad: [(String, String)] = []
        var seen = Set<String>()
        for l in locations {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: l.directory) else { continue }
            for f in names.sorted() where f.hasSuffix(".acnn") && !f.hasSuffix(".ckpt.acnn") {
                let p = (l.directory as NSString).appendingPathComponent(f)
                do {
                    let r = try ModelReader(path: p)
                    let m = r.metadata
                    var psf = m["training.psf"]?.stringValue
                    if psf == "airy", let s = m["training.psf_size"]?.doubleValue, let k = m["training.psf_rings"]?.doubleValue {
                        psf = "airy:size=\(Int(s)),rings=\(k == k.rounded() ? String(Int(k)) : String(k))"
                    }
                    var noise = m["training.noise"]?.stringValue
                    if let f = m["training.psf_family"]?.stringValue {
                        // A PSF-aware model (Wiener step): any member of its family, given at run time.
                        let parts = f.split(separator: ":", maxSplits: 1)
                        psf = "given at run time: " + String(parts[0])
                            + (m["deconvolution.psf_fwhm"]?.doubleArray.map { " FWHM \($0[0])-\($0[1]) px" } ?? "")
                        if let r = m["deconvolution.noise"]?.doubleArray, r.count == 2 { noise = "gaussian:sigma=\(r[0])-\(r[1]) of the peak" }
                    }
                    if noise == nil, let s = m["training.noise_sigma"]?.doubleValue { noise = "gaussian:sigma=\(s)" }
                    if noise == nil, m["training.noise_model"] != nil {
                        let ratios = m["training.ratios"].map { "\($0)" } ?? "?"
                        noise = "Poisson + read noise, exposure ratios \(ratios)"
                    }
                    entries.append(Entry(file: f, path: p, location: l, name: m["name"]?.stringValue ?? f,
                                         task: task(metadata: m), recipe: m["training.recipe"]?.stringValue, psf: psf, noise: noise,
                                         normalization: m["normalization"]?.stringValue ?? "none",
                                         parameters: r.tensors.reduce(0) { $0 + $1.count }, bytes: r.fileSize,
                                         checksum: r.fileChecksum, shadowed: seen.contains(f), metadata: m))
                    seen.insert(f)
                } catch {
                    bad.append((p, String(describing: error)))
                }
            }
        }
        return (entries, bad)
    }
}
