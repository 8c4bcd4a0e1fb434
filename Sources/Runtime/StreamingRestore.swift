import Foundation
import Kernels
import ModelFormat

/// The fixed geometry of one image's restoration: padding, padded and output sizes, and the
/// tile grid (the same grid `TiledRunner` uses in memory, so streamed tiles see the same inputs).
public struct RestoreLayout: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// Reflection padding top, bottom, left, right.
    public let padding: [Int]
    public let paddedHeight: Int
    public let paddedWidth: Int
    public let outputHeight: Int
    public let outputWidth: Int
    public let tileSize: Int
    /// Tile rows and columns covering the image (output rows/columns past the image are not run).
    public var tileRows: Int { (height + tileSize - 1) / tileSize }
    public var tileColumns: Int { (width + tileSize - 1) / tileSize }

    /// The layout for an image of this size. `tileSize` nil picks the tile as the in-memory path
    /// does, except that 'same' networks size their tiles from `memoryBudget`; with
    /// `wholeImageBudget` they run the whole image as one tile when its maps fit that budget
    /// (the in-memory path runs them whole when the image fits a quarter of RAM).
    public init(network: Network, width: Int, height: Int, tileSize: Int?, memoryBudget: Int? = nil,
                wholeImageBudget: Int? = nil) throws {
        let pads = try Restoration.padding(for: network, height: height, width: width)
        self.width = width
        self.height = height
        self.padding = pads
        self.paddedHeight = height + pads[0] + pads[1]
        self.paddedWidth = width + pads[2] + pads[3]
        let out = try network.analysis.outputSize(height: paddedHeight, width: paddedWidth)
        self.outputHeight = out.height
        self.outputWidth = out.width
        let runner = TiledRunner(network: network, tileSize: tileSize, memoryBudget: memoryBudget, wholeImageBudget: wholeImageBudget)
        self.tileSize = runner.effectiveTileSize(outputHeight: out.height, outputWidth: out.width)
    }
}

/// Restoration of images larger than memory: the input is read in row bands (one band of tiles
/// at a time, with the rows its halo and reflection padding need), each band is normalised,
/// inpainted, run tile by tile and its output rows are written at once into the temporary output
/// file, which is renamed at the end. Normalisation statistics come from a first streaming pass
/// that reproduces `Normalization.fit` exactly (same pixels, same order, same subsample for
/// `sky_mad`).
///
/// Equality with the in-memory `Restoration.restore` (same tile size): bit for bit when the image
/// has no invalid pixel. Invalid pixels are inpainted within the band's rows plus `fillMargin`
/// rows and columns on each side; the breadth-first fill then matches the whole-image fill for
/// every masked region that reaches valid pixels within that margin (tested), and can differ only
/// near larger masked regions (whose pixels are NaN in the output anyway; only valid pixels
/// within the receptive field of such a region can see the difference).
public enum StreamingRestore {
    /// Rows and columns read around a band so that inpainting sees the valid pixels around masked
    /// regions as the whole-image fill does.
    public static let fillMargin = 32

    /// Rows per band in the statistics pass (about 256 k pixels: the pass keeps one band of
    /// buffers, so a small band touches little memory; the statistics are the same for any band,
    /// pixels are taken in file order).
    static func statisticsRows(width: Int) -> Int { max(1, (256 << 10) / max(1, width)) }

    /// What the statistics pass measured.
    public struct Statistics: Sendable, Equatable {
        public var normalization: Normalization
        public var invalidPixels: Int
        /// Run-time parameters the image sets (the Wiener step's lambda), added to the options'.
        public var parameters: [String: Float] = [:]
    }

    /// The normalisation of the whole image (as `Normalization.fit` on the image in memory) and
    /// its invalid-pixel count, reading the image once in row bands (twice for `meanstd`).
    public static func statistics(_ reader: some PixelSource, kind: Normalization.Kind) throws -> Statistics {
        let w = reader.width, h = reader.height
        let count = w * h
        let band = statisticsRows(width: w)
        var pixels = [Float](), invalid = [Bool]()
        var mn = Double.infinity, mx = -Double.infinity, sum = 0.0, n = 0, bad = 0
        // sky_mad: the same regular subsample of the flat pixel index as RobustSky.estimate.
        let stride = max(1, count / 1_000_000)
        var sample: [Double] = [], differences: [Double] = []
        let robust = kind.usesRobustSky
        if robust { sample.reserveCapacity(count / stride + 1) }
        if kind == .noiseMAD { differences.reserveCapacity(count / stride + 1) }
        var y0 = 0
        while y0 < h {
            let rows = min(band, h - y0)
            try reader.readRows(y0, rows, pixels: &pixels, invalid: &invalid)
            let base = y0 * w
            pixels.withUnsafeBufferPointer { p in
                invalid.withUnsafeBufferPointer { inv in
                    for i in 0..<(rows * w) {
                        if inv[i] { bad += 1; continue }
                        let v = Double(p[i])
                        mn = min(mn, v); mx = max(mx, v); sum += v; n += 1
                    }
                    if robust {
                        var i = (base + stride - 1) / stride * stride
                        while i < base + rows * w {
                            let k = i - base
                            if !inv[k] { sample.append(Double(p[k])) }
                            // noise_mad: i - 2 ... i + 2 lie in this band's row (whole rows).
                            if kind == .noiseMAD, w > 4, i % w >= 2, i % w < w - 2, !inv[k - 2], !inv[k], !inv[k + 2] {
                                let a = Double(p[k - 2]), b = Double(p[k]), c = Double(p[k + 2])
                                if a.isFinite && b.isFinite && c.isFinite { differences.append(2 * b - a - c) }
                            }
                            i += stride
                        }
                    }
                }
            }
            y0 += rows
        }
        let norm: Normalization
        switch kind {
        case .none:
            norm = Normalization(kind: kind, offset: 0, scale: 1)
        case .clipMax:
            norm = Normalization(kind: kind, offset: 0, scale: mx > 0 ? mx : 1)
        case .minmax:
            let r = mx - mn
            norm = Normalization(kind: kind, offset: n > 0 ? mn : 0, scale: r > 0 ? r : 1)
        case .meanstd:
            let mean = n > 0 ? sum / Double(n) : 0
            var ss = 0.0
            y0 = 0
            while y0 < h {
                let rows = min(band, h - y0)
                try reader.readRows(y0, rows, pixels: &pixels, invalid: &invalid)
                for i in 0..<(rows * w) where !invalid[i] { let d = Double(pixels[i]) - mean; ss += d * d }
                y0 += rows
            }
            let sd = n > 1 ? (ss / Double(n)).squareRoot() : 0
            norm = Normalization(kind: kind, offset: mean, scale: sd > 0 ? sd : 1)
        case .skyMAD, .skyVST:
            // The subsample holds fewer than 2 million values, so the estimate takes all of them.
            let s = sample
            norm = Normalization.skyMAD(kind, sky: RobustSky.estimate(count: s.count) { s[$0] })
        case .noiseMAD:
            let s = sample
            norm = Normalization.noiseMAD(sky: RobustSky.estimate(count: s.count) { s[$0] }, differences: differences)
        }
        return Statistics(normalization: norm, invalidPixels: bad)
    }

    /// The statistics of the rule `restore` applies (the options' override, else the model's),
    /// completed with what they cannot measure (`Restoration.resolved`: sky_vst's gain from the
    /// options or the file's header).
    public static func statistics(_ reader: some PixelSource, network: Network, options: Restoration.Options) throws -> Statistics {
        var stats = try statistics(reader, kind: options.normalization ?? network.normalization)
        // noise_mad: the file's pixel noise is the normalisation's scale.
        let noiseVariance: Double? = stats.normalization.kind == .noiseMAD ? stats.normalization.scale * stats.normalization.scale : nil
        let full = try network.imageParameters(options.parameters, height: reader.height, width: reader.width, threads: options.threads,
                                               noiseVariance: noiseVariance) { rows, cols in
            var px: [Float] = [], bad: [Bool] = []
            try reader.readWindow(rows: rows, columns: cols, pixels: &px, invalid: &bad)
            return (px, bad)
        }
        for (k, v) in full where options.parameters[k] == nil { stats.parameters[k] = v }
        let cards = reader.headerCards
        stats.normalization = Restoration.resolved(stats.normalization, network: network, options: options) { FITSHeader.value($0, in: cards) }
        return stats
    }

    /// Restores the output rectangle `rows` x `columns` of the image (0-based image
    /// coordinates; lower bounds on the tile grid, upper bounds on it or at the image edge),
    /// one band of tiles at a time. `sink(firstRow, rowCount, pixels)` receives each band's
    /// finished rows in file units (NaN where invalid), row-major with the rectangle's width.
    /// Returns the number of tiles run.
    @discardableResult
    public static func restoreWindow(_ reader: some PixelSource, network: Network, layout: RestoreLayout, statistics: Statistics,
                                     rows: Range<Int>, columns: Range<Int>, options: Restoration.Options,
                                     sink: (Int, Int, [Float]) throws -> Void) throws -> Int {
        guard network.inputChannels == 1, network.outputChannels == 1 else {
            throw RuntimeError.unsupportedModel("restoring a FITS image needs a 1-channel to 1-channel model; this one maps \(network.inputChannels) to \(network.outputChannels)")
        }
        guard reader.width == layout.width, reader.height == layout.height else {
            throw ScaleError.badInput("\(reader.path) is \(reader.width)x\(reader.height); the plan expects \(layout.width)x\(layout.height)")
        }
        let T = layout.tileSize
        guard rows.lowerBound >= 0, columns.lowerBound >= 0, rows.upperBound <= layout.height, columns.upperBound <= layout.width,
              !rows.isEmpty, !columns.isEmpty, rows.lowerBound % T == 0, columns.lowerBound % T == 0 else {
            throw ScaleError.badInput("window rows \(rows) columns \(columns) is not on the \(T)-pixel tile grid of the \(layout.width)x\(layout.height) image")
        }
        try network.checkParameters(options.parameters)
        try SelfEnsemble.check(network, count: options.ensemble)
        let g = network.analysis.geometry
        let m = g.sizeMultiple
        let (w, h) = (layout.width, layout.height)
        let (top, left) = (layout.padding[0], layout.padding[2])
        let (ph, pw) = (layout.paddedHeight, layout.paddedWidth)
        let norm = statistics.normalization
        let margin = statistics.invalidPixels > 0 ? fillMargin : 0
        let tx0 = columns.lowerBound / T, tx1 = (columns.upperBound + T - 1) / T
        let ty0 = rows.lowerBound / T, ty1 = (rows.upperBound + T - 1) / T
        let outW = columns.count
        let totalTiles = (ty1 - ty0) * (tx1 - tx0)
        let threads = max(1, options.threads)
        let algorithm = options.algorithm, isa = options.isa
        let parameters = options.parameters.merging(statistics.parameters) { given, _ in given }

        // The input window of a tile, exactly as TiledRunner.run computes it.
        func span(_ start: Int, _ len: Int, _ off: Int, _ lo: Int, _ hi: Int, _ limit: Int) -> (Int, Int) {
            var s = start + off - lo
            var e = start + len + off + hi
            s = max(0, (s >= 0 ? s / m : (s - m + 1) / m) * m)
            e = min(limit, (e + m - 1) / m * m)
            return (s, e)
        }
        @inline(__always) func reflect(_ i: Int, _ n: Int) -> Int {
            if i < 0 { return -i }
            if i >= n { return 2 * (n - 1) - i }
            return i
        }

        network.runLock.lock()
        defer { network.runLock.unlock() }
        let packed = algorithm == .reference ? nil : network.packedWeights()
        let profile = PhaseProfile.shared
        profile.mark("pack weights (direct kernels)")
        var pixels = [Float](), invalid = [Bool]()
        var done = 0
        for ty in ty0..<ty1 {
            let a = ty * T, t = min(T, layout.outputHeight - a)
            let (r0, r1) = span(a, t, g.outputOffset[0], g.halo[0], g.halo[1], ph)
            var tiles: [(b: Int, u: Int, c0: Int, c1: Int)] = []
            for tx in tx0..<tx1 {
                let b = tx * T, u = min(T, layout.outputWidth - b)
                let (c0, c1) = span(b, u, g.outputOffset[1], g.halo[2], g.halo[3], pw)
                tiles.append((b, u, c0, c1))
            }
            let C0 = tiles.first!.c0, C1 = tiles.last!.c1
            // Image rows and columns the padded band reflects from, plus the fill margin.
            var iy0 = Int.max, iy1 = Int.min, ix0 = Int.max, ix1 = Int.min
            for yp in r0..<r1 { let s = reflect(yp - top, h); iy0 = min(iy0, s); iy1 = max(iy1, s) }
            for xp in C0..<C1 { let s = reflect(xp - left, w); ix0 = min(ix0, s); ix1 = max(ix1, s) }
            let ry0 = max(0, iy0 - margin), ry1 = min(h, iy1 + 1 + margin)
            let rx0 = max(0, ix0 - margin), rx1 = min(w, ix1 + 1 + margin)
            let rw = rx1 - rx0, rh = ry1 - ry0
            try reader.readWindow(rows: ry0..<ry1, columns: rx0..<rx1, pixels: &pixels, invalid: &invalid)
            profile.mark("FITS read band")
            var values = norm.apply(pixels, invalid: invalid)
            if margin > 0 { MaskFill.fill(&values, invalid: invalid, width: rw, height: rh) }
            // The padded band: rows [r0, r1), columns [C0, C1) of the padded image.
            let bw = C1 - C0, bh = r1 - r0
            var band = [Float](repeating: 0, count: bw * bh)
            var colIndex = [Int](repeating: 0, count: bw)
            for xp in C0..<C1 { colIndex[xp - C0] = reflect(xp - left, w) - rx0 }
            values.withUnsafeBufferPointer { v in
                band.withUnsafeMutableBufferPointer { dst in
                    colIndex.withUnsafeBufferPointer { ci in
                        for yp in r0..<r1 {
                            let src = v.baseAddress! + (reflect(yp - top, h) - ry0) * rw
                            let d = dst.baseAddress! + (yp - r0) * bw
                            for k in 0..<bw { d[k] = src[ci[k]] }
                        }
                    }
                }
            }
            values = []
            profile.mark("normalise, fill, reflect-pad band")
            // Output rows of this band inside the window.
            let oy0 = max(a, rows.lowerBound), oy1 = min(a + t, rows.upperBound)
            let bandRows = oy1 - oy0
            var out = [Float](repeating: 0, count: bandRows * outW)
            let window = Double((r1 - r0) * (T + g.halo[2] + g.halo[3]))
            let tileParallel = threads > 1 && packed != nil && tiles.count >= 2 * threads
                && window * network.bytesPerInputPixel * Double(threads) <= Double(options.memoryBudget ?? defaultBandBudget)
            let workers = tileParallel ? threads : 1
            let free = PlanCacheStack(network.planCaches(workers))
            let failure = FirstError()
            let bandTiles = tiles
            let counter = Counter()
            let progress = options.progress
            let doneBefore = done
            try band.withUnsafeBufferPointer { bandBuf in
                try out.withUnsafeMutableBufferPointer { outBuf in
                    nonisolated(unsafe) let src = bandBuf.baseAddress!
                    nonisolated(unsafe) let dst = outBuf.baseAddress!
                    ParallelFor.run(bandTiles.count, threads: workers) { k in
                        if failure.error != nil { return }
                        let tile = bandTiles[k]
                        let ww = tile.c1 - tile.c0
                        var input = FeatureMap(channels: 1, height: bh, width: ww)
                        input.data.withUnsafeMutableBufferPointer { d in
                            for y in 0..<bh {
                                (d.baseAddress! + y * ww).update(from: src + y * bw + tile.c0 - C0, count: ww)
                            }
                        }
                        let y: FeatureMap
                        do {
                            let cache = free.pop()
                            defer { free.push(cache) }
                            y = try TiledRunner.runWindow(input, network: network, packed: packed, cache: cache, isa: isa, algorithm: algorithm,
                                                          parameters: parameters, threads: tileParallel ? 1 : threads, ensemble: options.ensemble)
                        } catch {
                            failure.set(error)
                            return
                        }
                        if !tileParallel { profile.mark("tile input copy, plan (+ Winograd weights), graph run") }
                        // Network output row k of this window is output row r0 + k.
                        let xs0 = max(tile.b, columns.lowerBound), xs1 = min(tile.b + tile.u, columns.upperBound)
                        if xs1 > xs0 {
                            y.data.withUnsafeBufferPointer { ys in
                                for oy in oy0..<oy1 {
                                    (dst + (oy - oy0) * outW + xs0 - columns.lowerBound)
                                        .update(from: ys.baseAddress! + (oy - r0) * y.width + xs0 - tile.c0, count: xs1 - xs0)
                                }
                            }
                        }
                        progress?(doneBefore + counter.take() + 1, totalTiles)
                    }
                    if let e = failure.error { throw e }
                }
            }
            profile.mark(tileParallel ? "tiles: plans + graph runs (tile-parallel)" : "tile output copy")
            done += tiles.count
            band = []
            var restored = norm.invert(out)
            out = []
            for yy in 0..<bandRows {
                let ir = (oy0 + yy - ry0) * rw
                for xx in 0..<outW where invalid[ir + columns.lowerBound + xx - rx0] { restored[yy * outW + xx] = .nan }
            }
            profile.mark("invert band")
            try sink(oy0, bandRows, restored)
            profile.mark("FITS write band")
        }
        return totalTiles
    }

    /// The provenance cards of a restored image (the in-memory path writes the same, plus
    /// `ACNNICRC`, the CRC-32C of the input file, so that a rerun can skip finished outputs).
    public static func provenance(input: String, hdu: String?, readerHDU: Int, bitpix: Int, network: Network,
                                  statistics: Statistics, layout: RestoreLayout, options: Restoration.Options,
                                  inputChecksum: UInt32?, command: String?, extraHistory: [String] = []) -> FITSIO.Provenance {
        var keywords: [(String, MetaValue, String)] = [
            ("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
            ("ACNNMODL", .string(network.name), "restoration model"),
        ]
        if let crc = network.fileChecksum {
            keywords.append(("ACNNCRC", .string(checksumString(crc)), "CRC-32C of the model file"))
        }
        if let c = inputChecksum {
            keywords.append(("ACNNICRC", .string(checksumString(c)), "CRC-32C of the input file"))
        }
        keywords += [
            ("ACNNOPTS", .string(optionsSignature(hdu: hdu, options: options)), "options that change the result"),
            ("ACNNNORM", .string(network.normalization.rawValue), "input normalisation of the model"),
            ("ACNNHALO", .int(Int64(layout.padding.max() ?? 0)), "[px] reflection padding (receptive-field halo)"),
            ("ACNNNBAD", .int(Int64(statistics.invalidPixels)), "invalid input pixels (NaN in output)"),
            ("ACNNTILE", .int(Int64(layout.tileSize)), "[px] output tile side"),
        ]
        for (k, v) in options.parameters.merging(statistics.parameters, uniquingKeysWith: { a, _ in a }).sorted(by: { $0.key < $1.key }) {
            keywords.append(("ACNNP\(keywords.count)", .string("\(k)=\(v)"), "run-time model parameter"))
        }
        var history = [
            "Restored by astrocnn \(AstroCNN.version) with model '\(network.name)'" + (network.fileChecksum.map { " (CRC-32C \(checksumString($0)))" } ?? ""),
            "Input: \(input)" + (hdu.map { " HDU \($0)" } ?? " HDU \(readerHDU)") + ", BITPIX \(bitpix)",
            "Normalisation \(statistics.normalization), reflection padding \(layout.padding.map(String.init).joined(separator: ",")) (top,bottom,left,right)",
            "Streamed in row bands of \(layout.tileSize)-pixel tiles",
        ]
        if statistics.invalidPixels > 0 {
            history.append("\(statistics.invalidPixels) invalid pixels were filled by neighbour inpainting for the network and are NaN here")
        }
        let (pk, ph) = network.psfProvenance
        keywords += pk
        history += ph
        let (ek, eh) = SelfEnsemble.provenance(options.ensemble)
        keywords += ek
        history += eh
        history += extraHistory
        if let c = command { history.append("Command: \(c)") }
        return FITSIO.Provenance(keywords: keywords, history: history)
    }

    /// A short text of the options that change the output (HDU, tile, convolution algorithm,
    /// normalisation override, run-time parameters): outputs are reused only when it matches.
    public static func optionsSignature(hdu: String?, options: Restoration.Options) -> String {
        var parts = ["conv=\(options.algorithm.rawValue)"]
        if let t = options.tileSize { parts.append("tile=\(t)") }
        if let h = hdu { parts.append("hdu=\(h)") }
        if let n = options.normalization { parts.append("norm=\(n.rawValue)") }
        if let g = options.gain { parts.append("gain=\(g)") }
        for (k, v) in options.parameters.sorted(by: { $0.key < $1.key }) { parts.append("\(k)=\(v)") }
        if let p = options.psf { parts.append("psf=\(p)") }
        if options.dataConsistency { parts.append("dc") }
        if options.ensemble > 1 { parts.append("ensemble=\(options.ensemble)") }
        if options.dataConsistency, let b = options.lowerBound { parts.append("lower_bound=\(b)") }
        return parts.joined(separator: ";")
    }

    /// CRC-32C of a file's bytes, read in 1 MiB blocks.
    public static func fileChecksum(_ path: String) throws -> UInt32 {
        let plain = path.firstIndex(of: "[").map { String(path[..<$0]) } ?? path
        let fd = open(plain, O_RDONLY)
        if fd < 0 { throw FITSError.missingFile(plain) }
        defer { close(fd) }
        var crc: UInt32 = 0
        let size = 1 << 20
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { buf.deallocate() }
        while true {
            let n = read(fd, buf, size)
            if n < 0 {
                if errno == EINTR { continue }
                throw FITSError.io("reading \(plain): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            crc = CRC32C.update(crc, UnsafeRawBufferPointer(start: buf, count: n))
        }
        return crc
    }

    /// Restores a FITS file into `output` streaming: statistics pass, then bands written into
    /// the temporary output as they finish, renamed at the end. Same header as
    /// `Restoration.restoreFile` plus `ACNNICRC`, `ACNNOPTS` and `ACNNTILE`.
    public static func restoreFile(input: String, hdu: String? = nil, output: String, network: Network,
                                   options: Restoration.Options = Restoration.Options(), overwrite: Bool = false,
                                   command: String? = nil, inputChecksum: UInt32? = nil) throws -> RestoreReport {
        let start = Date()
        do { try AtomicFile.checkWritable(output, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(output) }
            throw FITSError.io(e.description)
        }
        let profile = PhaseProfile.shared
        profile.mark("before restore")
        let reader = try FITSReader(path: input, hdu: hdu)
        profile.mark("FITS open")
        let layout = try RestoreLayout(network: network, width: reader.width, height: reader.height, tileSize: options.tileSize,
                                       memoryBudget: options.memoryBudget ?? defaultBandBudget,
                                       wholeImageBudget: options.memoryBudget == nil ? TiledRunner.defaultMemoryBudget : nil)
        profile.mark("layout (tile choice)")
        try checkMemory(network: network, width: reader.width, height: reader.height, options: options, what: input)
        let stats = try statistics(reader, network: network, options: options)
        profile.mark("FITS statistics pass")
        let crc = try inputChecksum ?? fileChecksum(input)
        profile.mark("input file CRC-32C")
        let prov = provenance(input: input, hdu: hdu, readerHDU: reader.hdu, bitpix: reader.bitpix, network: network,
                              statistics: stats, layout: layout, options: options, inputChecksum: crc, command: command)
        let writer = try FITSWriter(path: output, width: reader.width, height: reader.height, headerCards: reader.headerCards,
                                    provenance: prov, overwrite: overwrite)
        profile.mark("output create + header")
        let tiles: Int
        do {
            tiles = try restoreWindow(reader, network: network, layout: layout, statistics: stats, rows: 0..<reader.height,
                                      columns: 0..<reader.width, options: options) { y0, _, px in
                try px.withUnsafeBufferPointer { try writer.writeRows(y0, $0) }
            }
            profile.mark("restore bands (rest)")
            try writer.commit()
            profile.mark("output close, fsync, rename")
        } catch {
            writer.abort()
            throw error
        }
        return RestoreReport(width: reader.width, height: reader.height, invalidPixels: stats.invalidPixels,
                             normalization: stats.normalization, padding: layout.padding, tiles: tiles,
                             seconds: Date().timeIntervalSince(start),
                             parameters: options.parameters.merging(stats.parameters) { a, _ in a })
    }

    /// Refuses, before the first pixel is read, a streaming restore whose peak memory
    /// (`memoryEstimate`, an upper bound) exceeds `MemoryBudget`: it says how much it would need,
    /// its largest part, and how to proceed.
    public static func checkMemory(network: Network, width: Int, height: Int, options: Restoration.Options, what: String) throws {
        let parts = try memoryEstimate(network: network, width: width, height: height, tileSize: options.tileSize,
                                       threads: options.threads, invalidPixels: true,
                                       memoryBudget: options.memoryBudget ?? defaultBandBudget,
                                       wholeImageBudget: options.memoryBudget == nil ? TiledRunner.defaultMemoryBudget : nil)
        let need = parts.reduce(0.0) { $0 + Double($1.bytes) }
        let largest = parts.max { $0.bytes < $1.bytes }!
        try MemoryBudget.check(need, "restoring \(what) (\(width)x\(height) pixels) with '\(network.name)'",
                               hint: "its largest part is the \(largest.part) at \(MemoryBudget.describe(Double(largest.bytes)))"
                                   + (largest.part.hasPrefix("execution plans") || largest.part.hasPrefix("tile") ? "; a smaller --tile or fewer --threads needs less" : ""))
    }

    /// Feature-map budget of the tiles of 'same' networks when streaming (the tile working set).
    public static let defaultBandBudget = 512 << 20

    /// Peak resident memory of a streaming restore, by part (bytes). Parts: the input rectangle
    /// of one band (read as Float64 with null flags by cfitsio, then Float32 pixels, mask and
    /// network units), the reflect-padded band, the band's output (and its copy in file units),
    /// the execution plans (one per worker thread, each holding a tile's feature maps), the tile
    /// input/output maps, the statistics pass band and the `sky_mad` subsample, the model's
    /// weights (decoded, packed, Winograd-transformed) and a fixed base (code, Swift runtime,
    /// cfitsio buffers). Parts that never live at the same time are summed: an upper bound.
    public static func memoryEstimate(network: Network, width: Int, height: Int, tileSize: Int? = nil,
                                      threads: Int = ParallelFor.availableCores, invalidPixels: Bool = false,
                                      memoryBudget: Int? = nil, wholeImageBudget: Int? = nil) throws -> [(part: String, bytes: Int)] {
        let layout = try RestoreLayout(network: network, width: width, height: height, tileSize: tileSize,
                                       memoryBudget: memoryBudget ?? defaultBandBudget, wholeImageBudget: wholeImageBudget)
        let g = network.analysis.geometry
        let m = g.sizeMultiple
        let T = layout.tileSize
        func roundUp(_ v: Int) -> Int { (v + m - 1) / m * m }
        let winRows = min(roundUp(layout.paddedHeight), roundUp(T + g.halo[0] + g.halo[1] + 2 * m))
        let winCols = min(roundUp(layout.paddedWidth), roundUp(T + g.halo[2] + g.halo[3] + 2 * m))
        let margin = invalidPixels ? fillMargin : 0
        let rectRows = min(height, winRows + 2 * margin)
        let rect = rectRows * width
        let tilesAcross = layout.tileColumns
        let budget = Double(memoryBudget ?? defaultBandBudget)
        let workers = threads > 1 && tilesAcross >= 2 * threads
            && Double(winRows * winCols) * network.bytesPerInputPixel * Double(threads) <= budget ? threads : 1
        let plan = try network.featureMapBytes(height: winRows, width: winCols)
        let statRows = min(height, statisticsRows(width: width))
        var parts: [(String, Int)] = [
            ("input band (Float64 + flags from cfitsio, Float32, mask, network units)", rect * (8 + 1 + 4 + 1 + 4) + (invalidPixels ? rect * 2 + rect * 8 : 0)),
            ("reflect-padded band", winRows * layout.paddedWidth * 4),
            ("band output (network and file units)", T * width * 4 * 2),
            ("execution plans (\(workers) x \(winRows)x\(winCols) tile)", workers * plan.shared),
            ("tile input and output maps", workers * winRows * winCols * 4 * 2),
            ("statistics pass band", statRows * width * (8 + 1 + 4 + 1)),
            // Decoded, packed and (up to 4x larger) Winograd-transformed copies of the weights.
            ("model weights (decoded, packed, Winograd-transformed)", network.weights.values.reduce(0) { $0 + $1.count } * 4 * 6),
            ("base (code, Swift runtime, cfitsio buffers)", 48 << 20),
        ]
        if network.normalization == .skyMAD || network.normalization == .skyVST { parts.append(("sky_mad subsample", 3 * 8 * min(width * height, 2_000_000))) }
        if network.normalization == .noiseMAD { parts.append(("noise_mad subsamples", 5 * 8 * min(width * height, 2_000_000))) }
        return parts
    }
}

/// Errors of streamed, batched and planned restoration.
public enum ScaleError: Error, CustomStringConvertible {
    /// The input or plan cannot be used as given (a permanent failure).
    case badInput(String)
    /// A manifest or task that does not match the files on disk (a permanent failure).
    case mismatch(String)

    public var description: String {
        switch self {
        case .badInput(let s): return s
        case .mismatch(let s): return s
        }
    }
}
