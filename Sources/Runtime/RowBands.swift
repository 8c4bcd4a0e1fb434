#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Kernels

/// Depth-first execution of a plan's steps by bands of rows (opt-in: `ASTROCNN_ROW_BANDS=1`,
/// or `Network.forward(bandRows:)`). Each band loads `bandRows` more input rows; then every
/// step, in order, makes the output rows its inputs now allow (a 3x3 'same' convolution all but
/// the last row of its input, a pooling half, a transposed convolution twice; Winograd layers
/// whole tile rows), at most a band's worth at its map's scale. Each map keeps only a window of
/// rows: those a consumer will still read and those being written. The memory is O(width), not
/// O(pixels), once the map is taller than the window: a U-net's level-0 skip must wait for the
/// up path, about 300 rows for the 32-512 U-net (the receptive field plus the Winograd tile rows
/// each deep layer waits for).
///
/// Each output value is computed by the same kernel operations as in a whole-map run (bands
/// start on tile rows; a step's rows may be split anywhere, as between threads), so the output
/// is the same bits.
///
/// A window holds rows [lo, lo + capacity) of its map in place (row y at position y - lo) with
/// the map's zero margins around; when a step must write past its end, the rows still needed
/// move to its start. Capacities come from a dry run of the same schedule (the largest span of
/// rows a map must hold at once) with half as much again, so rows move about once each.
///
/// Measured on Zen 4 (docs/PERFORMANCE.md, session 12), this does not pay as the default: every
/// band re-reads every layer's weights and the deep layers run on a few rows at a time (the
/// 32-512 U-net at 1024², 1 thread: 1.95 s against 1.71 s whole), and a 1024² frame's windows
/// are a third of its height, so a fresh process saves no page faults there.
final class RowBands {
    /// How a step's output rows depend on its input rows.
    enum Geometry {
        /// Output row y reads input rows y - top ..< y - top + taps (convolutions).
        case window(taps: Int, top: Int)
        /// Output row y reads input rows 2y, 2y + 1 (2x2 pooling).
        case halve
        /// Output rows 2y, 2y + 1 read input row y (2x2 stride-2 transposed convolution).
        case double
        /// Output row y reads input row y.
        case same
        /// No input (a constant channel).
        case none
    }

    /// A map's window of rows: its memory, the layout views use (the map's full height, the
    /// window's plane stride) and the first row held.
    struct Window {
        let buffer: PlanarBuffer
        let layout: PlanarLayout
        let capacity: Int
        var lo = 0
    }

    /// Which window a view reads or writes, and its channels there.
    struct Access {
        let window: Int
        let channel: Int
        let channels: Int

        /// Whether the two share a window and a channel.
        func overlaps(_ b: Access) -> Bool {
            window == b.window && channel < b.channel + b.channels && b.channel < channel + channels
        }
    }

    let steps: [ExecutionPlan.Step]
    let geometry: [Geometry]
    /// Rows a step's bands are rounded up to (Winograd: its tile side; transposed: 2).
    let grain: [Int]
    let stepInput: [Access?]
    let stepOutput: [Access]
    /// Per step, the steps whose outputs its input reads (-1: the plan's input).
    let producers: [[Int]]
    /// Per window, the steps writing it (-1: the plan's input) and the steps reading it.
    let writers: [[Int]]
    let readers: [[Int]]
    let input: Access
    let output: Access
    /// The steps writing the plan's output.
    let outputSteps: [Int]
    let height: Int
    let outputHeight: Int
    let bandRows: Int
    private(set) var windows: [Window] = []
    /// Per window: the map's full height and zero margin.
    let mapHeight: [Int]
    let margin: [Int]

    /// Bytes of the windows.
    var bytes: Int { windows.reduce(0) { $0 + $1.buffer.layout.allocation * 4 } }

    /// The default band: `ASTROCNN_BAND_ROWS`, else 64 input rows (4 rows at the bottom of a
    /// U-net of 4 poolings, enough for 2 threads to split).
    static var defaultBandRows: Int {
        if let s = getenv("ASTROCNN_BAND_ROWS").map({ String(cString: $0) }), let v = Int(s), v > 0 { return v }
        return 64
    }

    /// Whether `ASTROCNN_ROW_BANDS=1` turns row bands on for whole-map plans (off by default:
    /// see docs/PERFORMANCE.md, session 12).
    static var enabled: Bool { getenv("ASTROCNN_ROW_BANDS").map { String(cString: $0) } == "1" }

    /// Steps whose views are on layout-only buffers (`ExecutionPlan` before its arena); nil when
    /// a step needs whole maps (a Wiener deconvolution).
    init?(steps: [ExecutionPlan.Step], input inputView: PlanarView, output outputView: PlanarView, bandRows: Int) {
        var ids: [ObjectIdentifier: Int] = [:]
        var buffers: [PlanarBuffer] = []
        func access(_ v: PlanarView) -> Access {
            let owner = v.owner!
            let id = ObjectIdentifier(owner)
            let w = ids[id] ?? { ids[id] = buffers.count; buffers.append(owner); return buffers.count - 1 }()
            return Access(window: w, channel: (v.base - owner.base) / owner.layout.planeStride, channels: v.channels)
        }
        var geometry: [Geometry] = [], grain: [Int] = [], ins: [Access?] = [], outs: [Access] = []
        let input = access(inputView)
        for s in steps {
            switch s {
            case let .conv(x, y, p, pad, _):
                geometry.append(.window(taps: p.kh, top: pad == .same ? (p.kh - 1) / 2 : 0)); grain.append(1)
                ins.append(access(x)); outs.append(access(y))
            case let .winograd(x, y, w, _):
                let r = w.variant.r
                geometry.append(.window(taps: r, top: w.padding == .same ? (r - 1) / 2 : 0)); grain.append(w.tileSize)
                ins.append(access(x)); outs.append(access(y))
            case let .activation(x, y, _), let .copy(x, y):
                geometry.append(.same); grain.append(1); ins.append(access(x)); outs.append(access(y))
            case let .pool(x, y):
                geometry.append(.halve); grain.append(1); ins.append(access(x)); outs.append(access(y))
            case let .convTranspose(x, y, _):
                geometry.append(.double); grain.append(2); ins.append(access(x)); outs.append(access(y))
            case let .fill(y, _, _):
                geometry.append(.none); grain.append(1); ins.append(nil); outs.append(access(y))
            case .wiener:
                return nil
            }
        }
        let output = access(outputView)
        var producers: [[Int]] = []
        var writers = [[Int]](repeating: [], count: buffers.count), readers = [[Int]](repeating: [], count: buffers.count)
        writers[input.window].append(-1)
        for i in steps.indices {
            writers[outs[i].window].append(i)
            var p: [Int] = []
            if let x = ins[i] {
                readers[x.window].append(i)
                if x.overlaps(input) { p.append(-1) }
                for j in 0..<i where outs[j].overlaps(x) { p.append(j) }
            }
            producers.append(p)
        }
        self.steps = steps
        self.geometry = geometry
        self.grain = grain
        self.stepInput = ins
        self.stepOutput = outs
        self.producers = producers
        self.writers = writers
        self.readers = readers
        self.input = input
        self.output = output
        self.outputSteps = steps.indices.filter { outs[$0].overlaps(output) }
        self.height = inputView.height
        self.outputHeight = outputView.height
        self.bandRows = bandRows
        self.mapHeight = buffers.map(\.layout.height)
        self.margin = buffers.map(\.layout.margin)

        // Dry run: the largest span of rows each window must hold when something is written to it.
        var span = [Int](repeating: 1, count: buffers.count)
        var state = State(steps: steps.count)
        schedule(&state) { w, upTo, st in span[w] = max(span[w], upTo - self.lowestNeeded(w, st)) }
        windows = buffers.enumerated().map { (k, b) in
            let h = b.layout.height
            let capacity = span[k] >= h ? h : min(h, span[k] + (span[k] + 1) / 2 + 8)
            let storage = PlanarLayout(channels: b.layout.channels, height: capacity, width: b.layout.width, margin: b.layout.margin)
            var logical = storage
            logical.height = h
            return Window(buffer: PlanarBuffer(storage), layout: logical, capacity: capacity)
        }
    }

    /// Progress of a run: output rows each step has made, input rows loaded, output rows taken.
    struct State {
        var done: [Int]
        var loaded = 0
        var taken = 0
        init(steps: Int) { done = [Int](repeating: 0, count: steps) }
    }

    func stepHeight(_ i: Int) -> Int { mapHeight[stepOutput[i].window] }

    /// The lowest input row step i still reads, having made `done` output rows (Int.max when finished).
    func lowestInput(_ i: Int, _ done: Int) -> Int {
        if done >= stepHeight(i) { return .max }
        switch geometry[i] {
        case let .window(_, top): return max(0, done - top)
        case .halve: return 2 * done
        case .double: return done / 2
        case .same: return done
        case .none: return .max
        }
    }

    /// The lowest row of window w that a reader will read or a writer will write next.
    func lowestNeeded(_ w: Int, _ st: State) -> Int {
        var lo = Int.max
        for i in readers[w] { lo = min(lo, lowestInput(i, st.done[i])) }
        for i in writers[w] {
            let d = i < 0 ? st.loaded : st.done[i]
            if d < mapHeight[w] { lo = min(lo, d) }
        }
        if w == output.window && st.taken < outputHeight { lo = min(lo, st.taken) }
        return lo == .max ? mapHeight[w] : lo
    }

    /// Walks the bands: each loads `bandRows` more input rows, then every step, in order, makes
    /// all the output rows its inputs now allow (rounded down to its grain until the map ends;
    /// a constant channel keeps pace with the other writers of its map), then the output rows
    /// made are taken. `write(window, upTo, state)` comes before each load or step's rows.
    func schedule(_ st: inout State, load: ((Range<Int>) -> Void)? = nil, make: ((Int, Range<Int>) -> Void)? = nil,
                  take: ((Range<Int>) -> Void)? = nil, write: (Int, Int, State) -> Void) {
        while st.taken < outputHeight {
            let before = (st.loaded, st.done)
            if st.loaded < height {
                let to = min(height, st.loaded + bandRows)
                write(input.window, to, st)
                load?(st.loaded..<to)
                st.loaded = to
            }
            for i in steps.indices {
                let h = stepHeight(i)
                var r: Int
                if let x = stepInput[i] {
                    let hin = mapHeight[x.window]
                    let avail = producers[i].map { $0 < 0 ? st.loaded : st.done[$0] }.min() ?? hin
                    if avail >= hin {
                        r = h
                    } else {
                        switch geometry[i] {
                        case let .window(taps, top): r = max(0, avail + top - taps + 1)
                        case .halve: r = avail / 2
                        case .double: r = 2 * avail
                        case .same, .none: r = avail
                        }
                    }
                } else {
                    r = writers[stepOutput[i].window].filter { $0 != i }.map { $0 < 0 ? st.loaded : st.done[$0] }.min() ?? h
                }
                // At most a band's worth of rows at this map's scale, so that no map makes a burst
                // of rows (and needs a window) larger than the band.
                let g = grain[i]
                let most = ((bandRows * h + height - 1) / height + g - 1) / g * g
                r = min(h, r, st.done[i] + most)
                if r < h { r = r / g * g }
                if r > st.done[i] {
                    write(stepOutput[i].window, r, st)
                    make?(i, st.done[i]..<r)
                    st.done[i] = r
                }
            }
            let made = outputSteps.map { st.done[$0] }.min() ?? outputHeight
            if made > st.taken {
                take?(st.taken..<made)
                st.taken = made
            }
            precondition(st.loaded != before.0 || st.done != before.1 || st.taken >= outputHeight, "row bands: no progress")
        }
    }

    /// The view of `a` in its window as it stands (row y at position y - lo).
    func view(_ a: Access) -> PlanarView {
        let w = windows[a.window]
        var l = w.layout
        l.channels = a.channels
        return PlanarView(base: w.buffer.base + a.channel * l.planeStride - w.lo * l.rowStride, layout: l, owner: w.buffer)
    }

    /// Makes room in window w for rows up to `upTo`: moves the rows still needed to its start.
    private func reserve(_ w: Int, upTo: Int, _ st: State) {
        let win = windows[w]
        if upTo <= win.lo + win.capacity { return }
        let newLo = lowestNeeded(w, st)
        precondition(newLo >= win.lo && upTo - newLo <= win.capacity, "row bands: window \(w) too small")
        // Rows written so far by any writer (those past a slower writer's progress are moved too,
        // harmlessly: it writes them before anyone reads them); the bottom margin too once the
        // map is complete, as it was cleared then.
        var hi = newLo
        for i in writers[w] { hi = max(hi, i < 0 ? st.loaded : st.done[i]) }
        if hi >= mapHeight[w] { hi = mapHeight[w] + margin[w] }
        let l = win.layout
        let shift = newLo - win.lo
        if shift > 0 && hi > newLo {
            let rowStart = win.buffer.base - l.margin   // window position 0, column -margin
            for c in 0..<l.channels {
                let p = rowStart + c * l.planeStride
                memmove(p, p + shift * l.rowStride, (hi - newLo) * l.rowStride * 4)
            }
        }
        windows[w].lo = newLo
    }

    /// Zeroes the bottom margin rows of an access once its map is complete (the window's
    /// memory there may hold rows of before).
    private func clearBottom(_ a: Access) {
        let m = margin[a.window]
        if m == 0 { return }
        let v = view(a)
        for c in 0..<a.channels {
            v.pointer(c, v.height, -m).update(repeating: 0, count: m * v.rowStride)
        }
    }

    /// Runs the steps band by band on `input`; returns the output map.
    func run(_ inputMap: FeatureMap, parameters: [String: Float], threads: Int, isa: KernelISA, timings: UnsafeMutablePointer<Double>?) -> FeatureMap {
        for k in windows.indices { windows[k].lo = 0 }
        let outC = output.channels
        var out = [Float](repeating: 0, count: outC * outputHeight * windows[output.window].layout.width)
        let ow = windows[output.window].layout.width
        var st = State(steps: steps.count)
        inputMap.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                let sp = src.baseAddress!, dp = dst.baseAddress!
                schedule(&st, load: { rows in
                    let v = self.view(self.input)
                    for c in 0..<v.channels { for y in rows {
                        v.pointer(c, y, 0).update(from: sp + (c * v.height + y) * v.width, count: v.width)
                    } }
                    if rows.upperBound == v.height { self.clearBottom(self.input) }
                }, make: { i, rows in
                    let start = timings == nil ? 0 : monotonicSeconds()
                    self.runStep(i, rows: rows, parameters: parameters, threads: threads, isa: isa)
                    if rows.upperBound == self.stepHeight(i) { self.clearBottom(self.stepOutput[i]) }
                    if let t = timings { t[i] += monotonicSeconds() - start }
                }, take: { rows in
                    let v = self.view(self.output)
                    for c in 0..<outC { for y in rows {
                        (dp + (c * self.outputHeight + y) * ow).update(from: v.pointer(c, y, 0), count: ow)
                    } }
                }, write: { w, upTo, s in self.reserve(w, upTo: upTo, s) })
            }
        }
        return FeatureMap(channels: outC, height: outputHeight, width: ow, data: out)
    }

    /// Output rows `rows` of step i (input rows for a transposed convolution: half of them).
    private func runStep(_ i: Int, rows r: Range<Int>, parameters: [String: Float], threads: Int, isa: KernelISA) {
        let y = view(stepOutput[i])
        let x = stepInput[i].map(view)
        switch steps[i] {
        case let .conv(_, _, p, pad, act):
            ExecutionPlan.rows(r, threads) { FastOps.conv2d(x!, y, p, padding: pad, activation: act, isa: isa, rows: $0) }
        case let .winograd(_, _, w, act):
            let m = w.tileSize
            ExecutionPlan.winograd(w, x!, y, act, isa: isa, threads: threads, tileRows: (r.lowerBound / m)..<((r.upperBound + m - 1) / m))
        case let .activation(_, _, act):
            ExecutionPlan.rows(r, threads) { FastOps.activation(x!, y, act, rows: $0) }
        case .pool:
            ExecutionPlan.rows(r, threads) { FastOps.maxpool2x2(x!, y, rows: $0) }
        case let .convTranspose(_, _, p):
            ExecutionPlan.rows(r.lowerBound / 2..<(r.upperBound + 1) / 2, threads) { FastOps.convTranspose2x2(x!, y, p, isa: isa, rows: $0) }
        case let .fill(_, value, parameter):
            FastOps.fill(y, value: parameter.flatMap { parameters[$0] } ?? value, rows: r)
        case .copy:
            ExecutionPlan.rows(r, threads) { FastOps.copy(x!, y, rows: $0) }
        case .wiener:
            preconditionFailure("row bands: a Wiener step needs whole maps")
        }
    }
}
