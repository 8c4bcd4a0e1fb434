import Foundation
import Kernels
import ModelFormat

/// An engine-neutral plan of restoration work (`astrocnn plan`): what to restore, how it is cut
/// into tasks, and everything a task needs to run alone on any machine that sees the files
/// (model and input checksums, the normalisation fixed once for a tiled image, the tile grid).
/// Any scheduler (Slurm job arrays, HTCondor, Dask, a shell loop) runs task `i` as
/// `astrocnn run-task --plan manifest.json --index i`, then `astrocnn stitch`.
public struct PlanManifest: Codable, Sendable, Equatable {
    public static let formatName = "astrocnn-plan"
    public static let formatVersion = 1

    public struct ModelRef: Codable, Sendable, Equatable {
        public var path: String
        public var name: String
        /// CRC-32C of the model file (hex).
        public var crc: String
    }

    public struct Options: Codable, Sendable, Equatable {
        public var conv: String
        public var tile: Int?
        public var parameters: [String: Float]
        public var hdu: String?
        /// The PSF bound to a model with a Wiener step (a spec or an absolute FITS path), as
        /// `Network.psfDescription` says it; absent for other models.
        public var psf: String?
    }

    public struct Norm: Codable, Sendable, Equatable {
        public var kind: String
        public var offset: Double
        public var scale: Double
        /// `sky_vst`: the sky noise in electrons (absent for the other rules).
        public var noiseElectrons: Double?
    }

    public struct Image: Codable, Sendable, Equatable {
        public var input: String
        public var crc: String
        public var bytes: Int64
        public var width: Int
        public var height: Int
        /// Output file (files mode) or the stitched output (tiles mode).
        public var output: String
        /// Tiles mode: the whole image's statistics, fixed at planning time.
        public var normalization: Norm?
        public var invalidPixels: Int?
        public var tileSize: Int?
    }

    /// One unit of work: a whole file, or a window of a tiled image written as a piece.
    public struct Unit: Codable, Sendable, Equatable {
        public var image: Int
        public var rows: [Int]?
        public var columns: [Int]?
        public var piece: String?
    }

    public struct Task: Codable, Sendable, Equatable {
        public var index: Int
        public var units: [Unit]
    }

    public var format: String
    public var version: Int
    public var astrocnn: String
    /// Identifier of this plan (CRC-32C of its tasks and inputs), written into every result.
    public var id: String
    /// "tiles" (one image cut into windows) or "files" (many images).
    public var mode: String
    public var workdir: String
    public var model: ModelRef
    public var options: Options
    public var receptiveField: [Int]
    public var halo: [Int]
    public var images: [Image]
    public var tasks: [Task]

    public var manifestPath: String { workdir + "/manifest.json" }

    public func restorationOptions(threads: Int) throws -> Restoration.Options {
        guard let algorithm = ConvAlgorithm(rawValue: options.conv) else { throw ScaleError.badInput("manifest: unknown convolution algorithm '\(options.conv)'") }
        var o = Restoration.Options(threads: threads, tileSize: options.tile, parameters: options.parameters, algorithm: algorithm)
        o.psf = options.psf
        // Planned tasks run within the memory the plan requested (`memoryEstimate`, from the band
        // budget), on whatever node they land: 'same' networks tile from the band budget even
        // where a whole frame would fit the node's in-memory budget.
        o.memoryBudget = StreamingRestore.defaultBandBudget
        return o
    }

    public static func load(_ path: String) throws -> PlanManifest {
        let file = path.hasSuffix(".json") ? path : path + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: file) else { throw ScaleError.badInput("\(file): no such plan (run astrocnn plan first)") }
        let m: PlanManifest
        do { m = try JSONDecoder().decode(PlanManifest.self, from: data) } catch {
            throw ScaleError.badInput("\(file) is not an astrocnn plan: \(error)")
        }
        guard m.format == formatName else { throw ScaleError.badInput("\(file) is not an astrocnn plan (format '\(m.format)')") }
        guard m.version <= formatVersion else { throw ScaleError.badInput("\(file): plan version \(m.version) is newer than this astrocnn (\(formatVersion))") }
        return m
    }

    public func write() throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(Array(try enc.encode(self)), to: manifestPath, overwrite: true)
    }
}

/// How a task ended, as the process exit status schedulers see.
public enum TaskExit: Int32, Sendable {
    case done = 0
    /// Worth retrying (I/O trouble: a full or unavailable file system, a lost input).
    case retryable = 75
    /// Retrying cannot help (bad input, changed input or model, bad plan or index).
    case permanent = 65

    /// Classifies an error of a task.
    public static func classify(_ error: Error) -> TaskExit {
        if let e = error as? FITSError {
            switch e {
            case .io, .missingFile: return .retryable
            case .cfitsio(let what, _, _): return what.hasPrefix("writing") || what.hasPrefix("creating") ? .retryable : .permanent
            default: return .permanent
            }
        }
        if error is AtomicFile.Failure { return .retryable }
        return .permanent
    }
}

/// Planning, running, stitching and checking of planned work.
public enum PlanRunner {
    /// Plans the tiled restoration of one large image: one statistics pass (the normalisation
    /// is then fixed for every task), windows of `window` pixels (rounded up to the model's
    /// tile grid), grouped so that there are at most `maxTasks` tasks.
    public static func planTiles(input: String, output: String, workdir: String, modelPath: String, network: Network,
                                 options: Restoration.Options, hdu: String?, window: Int, maxTasks: Int) throws -> PlanManifest {
        guard window > 0, maxTasks > 0 else { throw ScaleError.badInput("--tile and --max-array must be positive") }
        let reader = try FITSReader(path: input, hdu: hdu)
        let layout = try RestoreLayout(network: network, width: reader.width, height: reader.height, tileSize: options.tileSize,
                                       memoryBudget: options.memoryBudget ?? StreamingRestore.defaultBandBudget)
        let stats = try StreamingRestore.statistics(reader, network: network, options: options)
        // What the image sets (the Wiener step's lambda) is fixed for every task, as the normalisation.
        var options = options
        for (k, v) in stats.parameters where options.parameters[k] == nil { options.parameters[k] = v }
        let T = layout.tileSize
        let side = (window + T - 1) / T * T
        var units: [PlanManifest.Unit] = []
        var y = 0
        while y < reader.height {
            var x = 0
            while x < reader.width {
                let k = units.count
                units.append(.init(image: 0, rows: [y, min(reader.height, y + side)], columns: [x, min(reader.width, x + side)],
                                   piece: "pieces/piece-\(String(format: "%06d", k)).fits"))
                x += side
            }
            y += side
        }
        let image = PlanManifest.Image(input: absolute(input), crc: checksumString(try StreamingRestore.fileChecksum(input)),
                                       bytes: fileSize(input), width: reader.width, height: reader.height, output: absolute(output),
                                       normalization: .init(kind: stats.normalization.kind.rawValue, offset: stats.normalization.offset,
                                                            scale: stats.normalization.scale,
                                                            noiseElectrons: stats.normalization.kind == .skyVST ? stats.normalization.noiseElectrons : nil),
                                       invalidPixels: stats.invalidPixels, tileSize: T)
        return try finish(mode: "tiles", workdir: workdir, modelPath: modelPath, network: network, options: options, hdu: hdu,
                          images: [image], units: units, maxTasks: maxTasks)
    }

    /// Plans the restoration of many files into `outputDirectory` (names from `namePattern`),
    /// as many files per task as needed to stay within `maxTasks` (or `filesPerTask`).
    public static func planFiles(inputs: [String], outputDirectory: String, namePattern: String, workdir: String, modelPath: String,
                                 network: Network, options: Restoration.Options, hdu: String?, maxTasks: Int,
                                 filesPerTask: Int? = nil) throws -> PlanManifest {
        guard !inputs.isEmpty else { throw ScaleError.badInput("no input files to plan") }
        guard maxTasks > 0 else { throw ScaleError.badInput("--max-array must be positive") }
        var images: [PlanManifest.Image] = []
        var seen: [String: String] = [:]
        for input in inputs {
            let reader = try FITSReader(path: input, hdu: hdu)
            let out = absolute(outputDirectory + "/" + outputName(for: input, pattern: namePattern))
            if let other = seen[out] { throw ScaleError.badInput("\(input) and \(other) would both be written to \(out); use a --name pattern with {dir} or rename") }
            seen[out] = input
            images.append(.init(input: absolute(input), crc: checksumString(try StreamingRestore.fileChecksum(input)),
                                bytes: fileSize(input), width: reader.width, height: reader.height, output: out,
                                normalization: nil, invalidPixels: nil, tileSize: nil))
        }
        let units = images.indices.map { PlanManifest.Unit(image: $0, rows: nil, columns: nil, piece: nil) }
        return try finish(mode: "files", workdir: workdir, modelPath: modelPath, network: network, options: options, hdu: hdu,
                          images: images, units: units, maxTasks: maxTasks, perTask: filesPerTask)
    }

    static func finish(mode: String, workdir: String, modelPath: String, network: Network, options: Restoration.Options, hdu: String?,
                       images: [PlanManifest.Image], units: [PlanManifest.Unit], maxTasks: Int, perTask: Int? = nil) throws -> PlanManifest {
        let per = max(perTask ?? 1, (units.count + maxTasks - 1) / maxTasks)
        var tasks: [PlanManifest.Task] = []
        var i = 0
        while i < units.count {
            tasks.append(.init(index: tasks.count, units: Array(units[i..<min(units.count, i + per)])))
            i += per
        }
        guard let crc = network.fileChecksum else { throw ScaleError.badInput("the model has no file checksum (load it from a file)") }
        let g = network.analysis.geometry
        var m = PlanManifest(format: PlanManifest.formatName, version: PlanManifest.formatVersion, astrocnn: AstroCNN.version, id: "",
                             mode: mode, workdir: absolute(workdir),
                             model: .init(path: absolute(modelPath), name: network.name, crc: checksumString(crc)),
                             options: .init(conv: options.algorithm.rawValue, tile: options.tileSize, parameters: options.parameters, hdu: hdu,
                                            psf: network.psfDescription),
                             receptiveField: g.receptiveField, halo: g.halo, images: images, tasks: tasks)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        m.id = checksumString(CRC32C.checksum(Array(try enc.encode(m))))
        return m
    }

    /// The output name of `input` under `pattern`: `{stem}` (file name without .fits/.fit/.fts
    /// and .fz/.gz), `{name}` (file name), `{dir}` (name of the folder holding it).
    public static func outputName(for input: String, pattern: String) -> String {
        let plain = input.firstIndex(of: "[").map { String(input[..<$0]) } ?? input
        let name = (plain as NSString).lastPathComponent
        var stem = name
        for ext in [".gz", ".fz", ".fits", ".fit", ".fts", ".FITS", ".FIT"] where stem.hasSuffix(ext) { stem = String(stem.dropLast(ext.count)) }
        let dir = ((plain as NSString).deletingLastPathComponent as NSString).lastPathComponent
        return pattern.replacingOccurrences(of: "{stem}", with: stem).replacingOccurrences(of: "{name}", with: name)
            .replacingOccurrences(of: "{dir}", with: dir)
    }

    public static func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return (p as NSString).standardizingPath }
        return ((FileManager.default.currentDirectoryPath + "/" + p) as NSString).standardizingPath
    }

    static func fileSize(_ p: String) -> Int64 {
        let plain = p.firstIndex(of: "[").map { String(p[..<$0]) } ?? p
        return ((try? FileManager.default.attributesOfItem(atPath: plain))?[.size] as? NSNumber)?.int64Value ?? -1
    }

    // MARK: results

    /// Whether `path` is a finished output of this input, model and options (header keywords).
    public static func isVerifiedOutput(_ path: String, inputCRC: String, modelCRC: String, options: String, plan: String? = nil,
                                        unit: Int? = nil) -> Bool {
        guard access(path, R_OK) == 0, let r = try? FITSReader(path: path) else { return false }
        let cards = r.headerCards
        guard FITSHeader.value("ACNNICRC", in: cards) == inputCRC, FITSHeader.value("ACNNCRC", in: cards) == modelCRC,
              FITSHeader.value("ACNNOPTS", in: cards) == options else { return false }
        if let p = plan, FITSHeader.value("ACNNPLAN", in: cards) != p { return false }
        if let u = unit, FITSHeader.value("ACNNUNIT", in: cards) != String(u) { return false }
        return true
    }

    static func unitIndex(_ m: PlanManifest, task: Int, unit: Int) -> Int {
        m.tasks[..<task].reduce(0) { $0 + $1.units.count } + unit
    }

    static func verified(_ m: PlanManifest, task: PlanManifest.Task, unitNumber: Int, unit: PlanManifest.Unit) -> Bool {
        let image = m.images[unit.image]
        let sig = optionsSignature(m)
        if let piece = unit.piece {
            return isVerifiedOutput(m.workdir + "/" + piece, inputCRC: image.crc, modelCRC: m.model.crc, options: sig, plan: m.id, unit: unitNumber)
        }
        return isVerifiedOutput(image.output, inputCRC: image.crc, modelCRC: m.model.crc, options: sig)
    }

    static func optionsSignature(_ m: PlanManifest) -> String {
        let opts = (try? m.restorationOptions(threads: 1)) ?? Restoration.Options()
        return StreamingRestore.optionsSignature(hdu: m.options.hdu, options: opts)
    }

    /// Whether every unit of task `index` has a verified result.
    public static func isDone(_ m: PlanManifest, index: Int) -> Bool {
        guard index >= 0, index < m.tasks.count else { return false }
        let t = m.tasks[index]
        return t.units.enumerated().allSatisfy { verified(m, task: t, unitNumber: unitIndex(m, task: index, unit: $0.offset), unit: $0.element) }
    }

    static func statusPath(_ m: PlanManifest, _ index: Int) -> String { m.workdir + "/status/task-\(index).failed" }

    /// Runs task `index`; returns false when it was already done (verified results exist).
    /// Errors are recorded in `status/task-N.failed` (removed on success) and rethrown.
    @discardableResult
    public static func runTask(_ m: PlanManifest, index: Int, network: Network, threads: Int, command: String? = nil,
                               progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> Bool {
        guard index >= 0, index < m.tasks.count else {
            throw ScaleError.badInput("task index \(index) is outside the plan's 0..\(m.tasks.count - 1)")
        }
        if isDone(m, index: index) { unlink(statusPath(m, index)); return false }
        do {
            guard let crc = network.fileChecksum, checksumString(crc) == m.model.crc else {
                throw ScaleError.mismatch("the model \(m.model.path) is not the one planned (CRC-32C \(network.fileChecksum.map(checksumString) ?? "?") instead of \(m.model.crc))")
            }
            let options = try m.restorationOptions(threads: threads)
            let task = m.tasks[index]
            for (k, unit) in task.units.enumerated() {
                let unitNumber = unitIndex(m, task: index, unit: k)
                if verified(m, task: task, unitNumber: unitNumber, unit: unit) { continue }
                let image = m.images[unit.image]
                if fileSize(image.input) != image.bytes {
                    throw ScaleError.mismatch("\(image.input) changed since it was planned (\(fileSize(image.input)) bytes, planned \(image.bytes)); plan again")
                }
                if unit.piece == nil {
                    let crc = try StreamingRestore.fileChecksum(image.input)
                    if checksumString(crc) != image.crc { throw ScaleError.mismatch("\(image.input) changed since it was planned (CRC-32C \(checksumString(crc)), planned \(image.crc)); plan again") }
                    try? FileManager.default.createDirectory(atPath: (image.output as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                    _ = try StreamingRestore.restoreFile(input: image.input, hdu: m.options.hdu, output: image.output, network: network,
                                                         options: options, overwrite: true, command: command, inputChecksum: crc)
                    continue
                }
                try runWindow(m, image: image, unit: unit, unitNumber: unitNumber, network: network, options: options)
            }
            unlink(statusPath(m, index))
            return true
        } catch {
            try? FileManager.default.createDirectory(atPath: m.workdir + "/status", withIntermediateDirectories: true)
            let text = "exit \(TaskExit.classify(error).rawValue) (\(TaskExit.classify(error))): \(error)\n"
            try? AtomicFile.write(Array(text.utf8), to: statusPath(m, index), overwrite: true)
            throw error
        }
    }

    static func runWindow(_ m: PlanManifest, image: PlanManifest.Image, unit: PlanManifest.Unit, unitNumber: Int,
                          network: Network, options: Restoration.Options) throws {
        guard let rows = unit.rows, let cols = unit.columns, rows.count == 2, cols.count == 2, let n = image.normalization,
              let kind = Normalization.Kind(rawValue: n.kind) else {
            throw ScaleError.badInput("manifest: unit \(unitNumber) lacks its window or the image's normalisation")
        }
        let reader = try FITSReader(path: image.input, hdu: m.options.hdu)
        let layout = try RestoreLayout(network: network, width: reader.width, height: reader.height, tileSize: options.tileSize,
                                       memoryBudget: options.memoryBudget ?? StreamingRestore.defaultBandBudget)
        if layout.tileSize != image.tileSize {
            throw ScaleError.mismatch("the tile grid (\(layout.tileSize) px) differs from the planned one (\(image.tileSize ?? 0) px)")
        }
        let stats = StreamingRestore.Statistics(normalization: Normalization(kind: kind, offset: n.offset, scale: n.scale, noiseElectrons: n.noiseElectrons ?? 0),
                                                invalidPixels: image.invalidPixels ?? 0)
        let piece = m.workdir + "/" + (unit.piece ?? "")
        let pieceDir = (piece as NSString).deletingLastPathComponent
        do { try FileManager.default.createDirectory(atPath: pieceDir, withIntermediateDirectories: true) } catch {
            throw FITSError.io("cannot create the directory \(pieceDir): \(error.localizedDescription)")
        }
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: pieceDir, isDirectory: &isDir) || !isDir.boolValue {
            throw FITSError.io("\(pieceDir) is not a directory")
        }
        let keywords: [(String, MetaValue, String)] = [
            ("ACNNICRC", .string(image.crc), "CRC-32C of the input file"),
            ("ACNNCRC", .string(m.model.crc), "CRC-32C of the model file"),
            ("ACNNOPTS", .string(optionsSignature(m)), "options that change the result"),
            ("ACNNPLAN", .string(m.id), "plan this piece belongs to"),
            ("ACNNUNIT", .int(Int64(unitNumber)), "unit of the plan"),
            ("ACNNROW0", .int(Int64(rows[0])), "first image row (0-based)"),
            ("ACNNCOL0", .int(Int64(cols[0])), "first image column (0-based)"),
        ]
        let writer = try FITSWriter(path: piece, width: cols[1] - cols[0], height: rows[1] - rows[0], headerCards: [],
                                    provenance: .init(keywords: keywords), overwrite: true)
        do {
            try StreamingRestore.restoreWindow(reader, network: network, layout: layout, statistics: stats, rows: rows[0]..<rows[1],
                                               columns: cols[0]..<cols[1], options: options) { y0, _, px in
                try px.withUnsafeBufferPointer { try writer.writeRows(y0 - rows[0], $0) }
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
    }

    /// State of each task: done (verified results), failed (the last run recorded an error), or missing.
    public enum TaskState: String, Sendable { case done, failed, missing }

    public static func status(_ m: PlanManifest) -> [(index: Int, state: TaskState, message: String?)] {
        m.tasks.map { t in
            if isDone(m, index: t.index) { return (t.index, .done, nil) }
            if let d = FileManager.default.contents(atPath: statusPath(m, t.index)) {
                return (t.index, .failed, String(decoding: d, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            }
            return (t.index, .missing, nil)
        }
    }

    /// Streams the pieces of a tiled plan into the output FITS file (the input's header and WCS,
    /// provenance and HISTORY naming the plan); in files mode checks that every output exists.
    /// Throws listing the tasks whose results are missing.
    public static func stitch(_ m: PlanManifest, network: Network?, overwrite: Bool = true, command: String? = nil) throws -> String {
        let pending = status(m).filter { $0.state != .done }.map(\.index)
        if !pending.isEmpty {
            throw ScaleError.mismatch("\(pending.count) of \(m.tasks.count) tasks have no verified result: \(pending.prefix(20).map(String.init).joined(separator: ","))\(pending.count > 20 ? ",..." : ""); run them (astrocnn status --plan \(m.workdir) --resubmit)")
        }
        if m.mode == "files" { return "\(m.images.count) outputs verified" }
        let image = m.images[0]
        let reader = try FITSReader(path: image.input, hdu: m.options.hdu)
        var units: [(unit: PlanManifest.Unit, number: Int)] = []
        for (ti, t) in m.tasks.enumerated() { for (k, u) in t.units.enumerated() { units.append((u, unitIndex(m, task: ti, unit: k))) } }
        let bands = Dictionary(grouping: units) { $0.unit.rows?[0] ?? 0 }
        var keywords: [(String, MetaValue, String)] = [
            ("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
            ("ACNNMODL", .string(m.model.name), "restoration model"),
            ("ACNNCRC", .string(m.model.crc), "CRC-32C of the model file"),
            ("ACNNICRC", .string(image.crc), "CRC-32C of the input file"),
            ("ACNNOPTS", .string(optionsSignature(m)), "options that change the result"),
            ("ACNNPLAN", .string(m.id), "plan that produced this image"),
            ("ACNNNBAD", .int(Int64(image.invalidPixels ?? 0)), "invalid input pixels (NaN in output)"),
            ("ACNNTILE", .int(Int64(image.tileSize ?? 0)), "[px] output tile side"),
        ]
        if let n = network { keywords.insert(("ACNNNORM", .string(n.normalization.rawValue), "input normalisation of the model"), at: 2) }
        var history = [
            "Restored by astrocnn \(AstroCNN.version) with model '\(m.model.name)' (CRC-32C \(m.model.crc))",
            "Input: \(image.input)" + (m.options.hdu.map { " HDU \($0)" } ?? " HDU \(reader.hdu)") + ", BITPIX \(reader.bitpix)",
            "Plan \(m.id): \(m.tasks.count) tasks, \(units.count) windows, \(m.workdir)/manifest.json",
        ]
        if let n = image.normalization { history.append("Normalisation \(n.kind) (offset \(n.offset), scale \(n.scale)), fixed for the whole image") }
        if let c = command { history.append("Command: \(c)") }
        let writer = try FITSWriter(path: image.output, width: image.width, height: image.height, headerCards: reader.headerCards,
                                    provenance: .init(keywords: keywords, history: history), overwrite: overwrite)
        do {
            let block = 64
            var row = [Float](repeating: .nan, count: image.width * block)
            var px = [Float](), inv = [Bool]()
            for y0 in bands.keys.sorted() {
                let band = bands[y0]!.sorted { ($0.unit.columns?[0] ?? 0) < ($1.unit.columns?[0] ?? 0) }
                let y1 = band[0].unit.rows?[1] ?? y0
                let readers = try band.map { try FITSReader(path: m.workdir + "/" + ($0.unit.piece ?? "")) }
                var y = y0
                while y < y1 {
                    let n = min(block, y1 - y)
                    for (k, b) in band.enumerated() {
                        let c0 = b.unit.columns?[0] ?? 0, c1 = b.unit.columns?[1] ?? 0
                        guard readers[k].width == c1 - c0, readers[k].height == y1 - y0 else {
                            throw ScaleError.mismatch("piece \(b.unit.piece ?? "") is \(readers[k].width)x\(readers[k].height), not the planned \(c1 - c0)x\(y1 - y0)")
                        }
                        try readers[k].readRows(y - y0, n, pixels: &px, invalid: &inv)
                        for r in 0..<n {
                            for x in 0..<(c1 - c0) { row[r * image.width + c0 + x] = px[r * (c1 - c0) + x] }
                        }
                    }
                    try row.withUnsafeBufferPointer { try writer.writeRows(y, UnsafeBufferPointer(rebasing: $0[0..<(n * image.width)])) }
                    y += n
                }
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
        return image.output
    }
}
