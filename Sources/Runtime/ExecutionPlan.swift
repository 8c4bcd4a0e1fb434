import Kernels
import ModelFormat

/// Which convolution implementation a network uses.
public enum ConvAlgorithm: String, Sendable, CaseIterable {
    /// Per layer by `ConvAlgorithm.winogradVariant`: Winograd where it pays (at least 16 input
    /// channels; F(4x4,3x3) for 3x3 kernels on maps of at least 32x32, F(3x3,6x6) for 6x6),
    /// direct otherwise.
    case auto
    /// The scalar reference ops (the test oracle).
    case reference
    /// Register-blocked SIMD direct convolution everywhere.
    case direct
    /// Winograd wherever a variant applies (output channels a multiple of 4): F(4x4,3x3) for
    /// 3x3 kernels, F(3x3,6x6) for 6x6; direct elsewhere.
    case winograd
    /// As `winograd` with F(2x2,3x3) for 3x3 kernels (2.25x fewer multiplications, smaller error).
    case winograd2
    /// As `winograd` with F(6x6,3x3) for 3x3 kernels (5.06x fewer multiplications, larger error).
    case winograd6

    /// The Winograd variant a convolution of this shape runs under this setting, or nil for
    /// direct (or reference) convolution.
    /// `mapHeight` x `mapWidth`: the output map the layer computes (per tile); `auto` runs 3x3
    /// layers direct on maps smaller than `smallestWinogradMap(isa)`.
    public func winogradVariant(outChannels o: Int, inChannels c: Int, kh: Int, kw: Int, padding: Padding,
                                mapHeight: Int = .max, mapWidth: Int = .max, isa: KernelISA = .best) -> WinogradVariant? {
        let pad: ConvPadding = padding == .same ? .same : .valid
        func ok(_ v: WinogradVariant) -> WinogradVariant? {
            WinogradConv.supports(v, outChannels: o, inChannels: c, kh: kh, kw: kw, padding: pad) ? v : nil
        }
        let large = ok(.f3x6)
        switch self {
        case .reference, .direct: return nil
        case .winograd: return ok(.f4x3) ?? large
        case .winograd2: return ok(.f2x3) ?? large
        case .winograd6: return ok(.f6x3) ?? large
        case .auto:
            guard c >= 16 else { return nil }
            if kh == 3 && kw == 3 { return min(mapHeight, mapWidth) >= ConvAlgorithm.smallestWinogradMap(isa) ? ok(.f4x3) : nil }
            return large
        }
    }

    /// The kernel a convolution of this shape runs under this setting: "direct", "reference" or
    /// "winograd F(4x4,3x3)" etc.
    public func choose(outChannels o: Int, inChannels c: Int, kh: Int, kw: Int, padding: Padding) -> String {
        if self == .reference { return "reference" }
        if self == .auto, let v = winogradVariant(outChannels: o, inChannels: c, kh: kh, kw: kw, padding: padding), kh == 3, kw == 3 {
            let side = ConvAlgorithm.smallestWinogradMap(.best)
            return "winograd \(v.label) on maps of \(side)x\(side) or more, direct below"
        }
        return winogradVariant(outChannels: o, inChannels: c, kh: kh, kw: kw, padding: padding).map { "winograd \($0.label)" } ?? "direct"
    }
}

extension ConvAlgorithm {
    /// `auto` runs 3x3 convolutions direct on output maps narrower or shorter than this side.
    /// Measured per layer (16-256 U-net, 128x128 tile, one thread, Zen 4): with AVX-512 the
    /// direct kernel beats F(4x4,3x3) by 10-30% on 16x16 maps and 2x on 8x8 (its 16-lane rows
    /// fill; the transforms and partial tiles outweigh 4x fewer multiplications), Winograd wins
    /// by 15-40% from 32x32; with AVX2 and the portable kernels F(4x4,3x3) is 2.5-3x faster
    /// on 16x16 maps and about a tie (AVX2) or 1.5x slower (portable) on 8x8.
    public static func smallestWinogradMap(_ isa: KernelISA) -> Int { isa == .avx512 ? 32 : 16 }
}

/// Weights repacked once per network for the fast kernels, each layer on first use (a layer
/// that runs Winograd never needs its direct packing, so it is never made).
final class PackedWeights: @unchecked Sendable {
    private var direct: [String: PackedConv] = [:]
    private var winograd: [String: WinogradConv] = [:]
    private let lock = NSLockShim()
    private unowned let network: Network

    /// A convolution's or transposed convolution's weights packed for the direct kernels, made
    /// on first use (thread-safe).
    func conv(_ n: Node) -> PackedConv? {
        lock.locked {
            if let p = direct[n.name] { return p }
            guard let wname = n.params.first, let shape = network.analysis.tensorShapes[wname] else { return nil }
            let w = network.weights[wname]!
            let b = n.params.count > 1 ? network.weights[n.params[1]]! : nil
            let p: PackedConv
            switch n.op {
            case .conv2d:
                p = PackedConv(weight: w, bias: b, outChannels: shape[0], inChannels: shape[1], kh: shape[2], kw: shape[3])
            case .convTranspose2d:
                p = FastOps.packTransposed(weight: w, bias: b, outChannels: shape[0], inChannels: shape[1])
            default:
                return nil
            }
            direct[n.name] = p
            return p
        }
    }

    /// Winograd-transformed weights of a convolution, made on first use (thread-safe).
    func winogradConv(_ n: Node, variant: WinogradVariant) -> WinogradConv {
        lock.locked {
            let key = "\(n.name)#\(variant.rawValue)"
            if let w = winograd[key] { return w }
            let shape = network.analysis.tensorShapes[n.params[0]]!
            let w = WinogradConv(weight: network.weights[n.params[0]]!, bias: n.params.count > 1 ? network.weights[n.params[1]]! : nil,
                                 outChannels: shape[0], inChannels: shape[1], variant: variant,
                                 padding: n.padding == .same ? .same : .valid)
            winograd[key] = w
            return w
        }
    }

    init(network: Network) {
        self.network = network
    }
}

/// A network compiled for one input size: buffers allocated, activations fused into the
/// convolutions before them, concatenations done in place (producers write straight into
/// their channel slice of the concatenated map), and a list of steps to run. A plan is used by
/// one thread at a time.
final class ExecutionPlan {
    enum Step {
        case conv(PlanarView, PlanarView, PackedConv, ConvPadding, Activation)
        case winograd(PlanarView, PlanarView, WinogradConv, Activation)
        case activation(PlanarView, PlanarView, Activation)
        case pool(PlanarView, PlanarView)
        case convTranspose(PlanarView, PlanarView, PackedConv)
        case fill(PlanarView, Float, String?)
        case copy(PlanarView, PlanarView)
        /// `wiener_deconvolution` with the PSF bound when the plan was made (nil in layout-only plans).
        case wiener(PlanarView, PlanarView, PSFKernel?)

        /// Every view the step reads or writes.
        var views: [PlanarView] {
            switch self {
            case let .conv(x, y, _, _, _), let .winograd(x, y, _, _), let .activation(x, y, _), let .pool(x, y), let .convTranspose(x, y, _), let .copy(x, y),
                 let .wiener(x, y, _):
                return [x, y]
            case let .fill(y, _, _): return [y]
            }
        }

        /// The step with every view mapped by `f`.
        func rebased(_ f: (PlanarView) -> PlanarView) -> Step {
            switch self {
            case let .conv(x, y, p, pad, act): return .conv(f(x), f(y), p, pad, act)
            case let .winograd(x, y, w, act): return .winograd(f(x), f(y), w, act)
            case let .activation(x, y, act): return .activation(f(x), f(y), act)
            case let .pool(x, y): return .pool(f(x), f(y))
            case let .convTranspose(x, y, p): return .convTranspose(f(x), f(y), p)
            case let .fill(y, v, name): return .fill(f(y), v, name)
            case let .copy(x, y): return .copy(f(x), f(y))
            case let .wiener(x, y, psf): return .wiener(f(x), f(y), psf)
            }
        }
    }

    /// The weights of every convolution step of a layout-only plan.
    private static let standIn = PackedConv(weight: [0], bias: nil, outChannels: 1, inChannels: 1, kh: 1, kw: 1)

    let height: Int
    let width: Int
    let steps: [Step]
    /// Per step: the node(s) it runs and its FLOPs (multiply-adds x 2) for this input size.
    let stepInfo: [(name: String, op: String, flops: Double)]
    /// All feature maps, in one allocation (see init).
    private let arena: PlanarBuffer
    private let arenaFloats: Int
    /// Views whose zero margins are cleared before step i (frames[i]) or before the input is
    /// loaded.
    private let frames: [[PlanarView]]
    private let inputFrames: [PlanarView]
    let inputView: PlanarView
    let outputView: PlanarView
    let isa: KernelISA

    /// Row bands (`RowBands`): the steps run depth-first by bands of rows, each map in a window
    /// of rows, when `bandRows` > 0 is given or `ASTROCNN_ROW_BANDS=1` is set (off by default);
    /// nil when the plan runs whole maps in its arena (the default; measuring plans, maps of at
    /// most two bands, a Wiener step).
    let bands: RowBands?

    /// With `measureOnly`, buffers get layouts but no memory: the plan can report `bytes` but
    /// must not run. `bandRows`: input rows per band of a row-band run (nil: the environment's
    /// choice, see `bands`; 0: whole maps).
    init(network: Network, packed: PackedWeights?, height: Int, width: Int, isa: KernelISA, algorithm: ConvAlgorithm = .auto,
         measureOnly: Bool = false, bandRows: Int? = nil) throws {
        self.height = height
        self.width = width
        self.isa = isa
        let graph = network.graph
        let analysis = network.analysis
        let shapes = try analysis.shapes(height: height, width: width)
        let nodes = analysis.order.map { graph.nodes[$0] }
        var consumers: [String: [Node]] = [:]
        for n in nodes { for v in n.inputs { consumers[v, default: []].append(n) } }
        let outputs = Set(graph.outputs)

        // Fuse conv -> activation when the activation is the conv's only consumer.
        var fusedInto: [String: Node] = [:]  // conv node name -> activation node
        var skipped = Set<String>()  // activation nodes absorbed by a conv
        for n in nodes where n.op == .conv2d {
            guard !outputs.contains(n.output), let cs = consumers[n.output], cs.count == 1,
                  cs[0].op == .relu || cs[0].op == .leakyRelu else { continue }
            fusedInto[n.name] = cs[0]
            skipped.insert(cs[0].name)
        }
        /// The value a node's result is finally stored as (after fusion).
        func resultValue(_ n: Node) -> String { fusedInto[n.name]?.output ?? n.output }

        // Zero margins each value needs: the largest 'same' padding among its consumers (the
        // bottom/right side, k - 1 - (k - 1) / 2, which is one more than the top/left for even k).
        var margin: [String: Int] = [:]
        for n in nodes where n.op == .conv2d && n.padding == .same {
            let s = analysis.tensorShapes[n.params[0]]!
            margin[n.inputs[0]] = max(margin[n.inputs[0]] ?? 0, max(s[2], s[3]) / 2)
        }

        // Concat slices: a concat input produced by a node (not a graph input), consumed by only
        // this concat among concats, becomes a view into the concat's buffer.
        var sliceOf: [String: (concat: String, offset: Int)] = [:]
        var concatCount: [String: Int] = [:]
        for n in nodes where n.op == .concat { for v in n.inputs { concatCount[v, default: 0] += 1 } }
        let graphInputs = Set(graph.inputs.map(\.name))
        for n in nodes where n.op == .concat {
            var offset = 0
            for v in n.inputs {
                if !graphInputs.contains(v) && concatCount[v] == 1 && !outputs.contains(v) && sliceOf[v] == nil {
                    sliceOf[v] = (n.output, offset)
                }
                offset += shapes[v]!.channels
            }
        }
        // Concat buffers need the largest margin of their slices.
        for (v, s) in sliceOf { margin[s.concat] = max(margin[s.concat] ?? 0, margin[v] ?? 0) }

        var views: [String: PlanarView] = [:]
        var buffers: [PlanarBuffer] = []
        var steps: [Step] = []
        var info: [(name: String, op: String, flops: Double)] = []
        func allocate(_ v: String) -> PlanarView {
            if let view = views[v] { return view }
            if let s = sliceOf[v] {
                let view = allocate(s.concat).slice(channelOffset: s.offset, channels: shapes[v]!.channels)
                views[v] = view
                return view
            }
            let sh = shapes[v]!
            let layout = PlanarLayout(channels: sh.channels, height: sh.height, width: sh.width, margin: margin[v] ?? 0)
            let buffer = PlanarBuffer(layoutOnly: layout)
            buffers.append(buffer)
            let view = buffer.view()
            views[v] = view
            return view
        }
        /// Packed weights, or (measuring: the steps never run) one tiny stand-in.
        func packedConv(_ n: Node) -> PackedConv {
            if let p = packed?.conv(n) { return p }
            return ExecutionPlan.standIn
        }
        let inputView = allocate(graph.inputs[0].name)
        for n in nodes where !skipped.contains(n.name) {
            let x = allocate(n.inputs[0])
            let before = steps.count
            switch n.op {
            case .conv2d:
                let out = allocate(resultValue(n))
                let act: Activation
                switch fusedInto[n.name]?.op {
                case .relu?: act = .relu
                case .leakyRelu?: act = .leakyRelu(fusedInto[n.name]!.alpha)
                default: act = .none
                }
                let shape = analysis.tensorShapes[n.params[0]]!
                let variant = algorithm.winogradVariant(outChannels: shape[0], inChannels: shape[1], kh: shape[2], kw: shape[3], padding: n.padding,
                                                        mapHeight: out.height, mapWidth: out.width, isa: isa)
                if let packed = packed, let variant = variant {
                    steps.append(.winograd(x, out, packed.winogradConv(n, variant: variant), act))
                } else {
                    let p = packedConv(n)
                    steps.append(.conv(x, out, p, n.padding == .same ? .same : .valid, act))
                }
            case .relu:
                steps.append(.activation(x, allocate(n.output), .relu))
            case .leakyRelu:
                steps.append(.activation(x, allocate(n.output), .leakyRelu(n.alpha)))
            case .maxpool2d:
                steps.append(.pool(x, allocate(n.output)))
            case .convTranspose2d:
                steps.append(.convTranspose(x, allocate(n.output), packedConv(n)))
            case .concat:
                let out = allocate(n.output)
                var offset = 0
                for v in n.inputs {
                    let c = shapes[v]!.channels
                    if sliceOf[v]?.concat != n.output {
                        steps.append(.copy(allocate(v), out.slice(channelOffset: offset, channels: c)))
                    }
                    offset += c
                }
            case .constantChannel:
                steps.append(.fill(allocate(n.output), n.constantValue, n.runtimeParameter))
            case .wienerDeconvolution:
                let side = 2 * n.context + 1
                wienerScratch = max(wienerScratch, WienerDeconvolution.workBytes(height: shapes[n.inputs[0]]!.height,
                                                                                  width: shapes[n.inputs[0]]!.width, psfSide: side))
                if network.psf == nil && !measureOnly {
                    throw RuntimeError.badParameter("\(network.name) deconvolves with the image's PSF: give it (--psf SPEC, --psf FILE.fits or --psf auto)")
                }
                steps.append(.wiener(x, allocate(n.output), network.psf))
            }
            let out = shapes[n.output]!
            var flops = 0.0
            if n.op == .conv2d || n.op == .convTranspose2d {
                let w = analysis.tensorShapes[n.params[0]]!
                let taps = n.op == .conv2d ? w[2] * w[3] : 1
                flops = 2 * Double(w[0] * w[1] * taps * out.height * out.width)
            }
            let label = fusedInto[n.name].map { "\(n.op.rawValue)+\($0.op.rawValue)" } ?? n.op.rawValue
            for _ in before..<steps.count { info.append((n.name, label, flops / Double(max(1, steps.count - before)))) }
        }
        let outputView = allocate(graph.outputs[0])
        if !measureOnly { PhaseProfile.shared.mark("plan: steps (+ Winograd weights)") }
        let bandRows = bandRows ?? (RowBands.enabled ? RowBands.defaultBandRows : 0)
        if bandRows > 0 && !measureOnly && height > 2 * bandRows,
           let b = RowBands(steps: steps, input: inputView, output: outputView, bandRows: bandRows) {
            PhaseProfile.shared.mark("plan: row-band windows")
            bands = b
            arenaFloats = 0
            unsharedBytes = buffers.reduce(0) { $0 + ($1.layout.allocation + 15) / 16 * 16 } * 4
            arena = PlanarBuffer(arenaOf: 0)
            frames = [[PlanarView]](repeating: [], count: steps.count)
            inputFrames = []
            self.inputView = inputView
            self.outputView = outputView
            self.steps = steps
            self.stepInfo = info
            return
        }
        bands = nil

        // Memory: every buffer lives from the first to the last step that touches it (the input
        // from before the first step, the output to the end); buffers whose lives do not overlap
        // share memory in one arena (placed largest first at the lowest free offset). A
        // concatenation's buffer is made of parts, one per input slice (whole channel planes),
        // each with its own life: a U-net's skip slice lives from the down path to the up path,
        // but the slice its transposed convolution fills only from then on, so until then other
        // maps use that memory (the buffer keeps its shape: its parts sit at fixed offsets).
        struct Part { let root: ObjectIdentifier; let channels: Range<Int>; var first = Int.max, last = Int.min }
        var parts: [ObjectIdentifier: [Part]] = [:]
        for b in buffers {
            let id = ObjectIdentifier(b)
            var cuts = Set([0, b.layout.channels])
            for (v, sl) in sliceOf where views[sl.concat]?.owner === b { cuts.insert(sl.offset); cuts.insert(sl.offset + shapes[v]!.channels) }
            let c = cuts.sorted()
            parts[id] = zip(c, c.dropFirst()).map { Part(root: id, channels: $0..<$1) }
        }
        func touch(_ v: PlanarView, _ i: Int) {
            let owner = v.owner!
            let id = ObjectIdentifier(owner)
            let c0 = (v.base - owner.base) / owner.layout.planeStride
            let range = c0..<(c0 + v.channels)
            for k in parts[id]!.indices where parts[id]![k].channels.overlaps(range) {
                parts[id]![k].first = min(parts[id]![k].first, i)
                parts[id]![k].last = max(parts[id]![k].last, i)
            }
        }
        touch(inputView, -1)
        for (i, step) in steps.enumerated() { for v in step.views { touch(v, i) } }
        touch(outputView, steps.count)
        func firstUse(_ b: PlanarBuffer) -> Int? {
            let f = parts[ObjectIdentifier(b)]!.map(\.first).min()!
            return f == Int.max ? nil : f
        }
        let order = buffers.filter { firstUse($0) != nil }
            .sorted { ($0.layout.allocation, firstUse($0)!) > ($1.layout.allocation, firstUse($1)!) }
        var placed: [(start: Int, end: Int, first: Int, last: Int)] = []
        var offset: [ObjectIdentifier: Int] = [:]
        for b in order {
            let id = ObjectIdentifier(b)
            // Float ranges of the parts from the buffer's start: channel planes (the last part
            // also holds the slack after the last plane), each with its life.
            let ps = parts[id]!.filter { $0.first != Int.max }
            let spans = ps.map { p -> (r0: Int, r1: Int, first: Int, last: Int) in
                let r0 = p.channels.lowerBound * b.layout.planeStride
                let r1 = p.channels.upperBound == b.layout.channels ? (b.layout.allocation + 15) / 16 * 16 : p.channels.upperBound * b.layout.planeStride
                return (r0, r1, p.first, p.last)
            }
            // Lowest offset (a multiple of 16 floats) at which no part meets a placed part whose
            // life overlaps its own.
            var at = 0
            var moved = true
            while moved {
                moved = false
                for sp in spans {
                    for c in placed where c.first <= sp.last && sp.first <= c.last && c.start < at + sp.r1 && at + sp.r0 < c.end {
                        at = (c.end - sp.r0 + 15) / 16 * 16
                        moved = true
                    }
                }
            }
            offset[id] = at
            for sp in spans { placed.append((at + sp.r0, at + sp.r1, sp.first, sp.last)) }
        }
        arenaFloats = placed.map(\.end).max() ?? 0
        unsharedBytes = order.reduce(0) { $0 + ($1.layout.allocation + 15) / 16 * 16 } * 4 + wienerScratch
        if !measureOnly { PhaseProfile.shared.mark("plan: memory layout") }
        let arena = PlanarBuffer(arenaOf: measureOnly ? 0 : arenaFloats)
        if !measureOnly { PhaseProfile.shared.mark("plan: arena allocation") }
        func rebase(_ v: PlanarView) -> PlanarView {
            let owner = v.owner!
            let at = arena.storage + offset[ObjectIdentifier(owner)]! + owner.layout.origin
            return PlanarView(base: at + (v.base - owner.base), layout: v.layout, owner: arena)
        }
        // Buffers with zero margins get them cleared when the life of each part starts (the arena
        // may hold an earlier buffer's values there); everything else they hold is written before
        // it is read.
        var frames = [[PlanarView]](repeating: [], count: steps.count)
        var inputFrames: [PlanarView] = []
        for b in order where b.layout.margin > 0 {
            for p in parts[ObjectIdentifier(b)]! where p.first != Int.max {
                let view = rebase(b.view(channelOffset: p.channels.lowerBound, channels: p.channels.count))
                if p.first < 0 { inputFrames.append(view) } else { frames[p.first].append(view) }
            }
        }
        self.inputView = rebase(inputView)
        self.outputView = rebase(outputView)
        self.steps = steps.map { $0.rebased(rebase) }
        self.stepInfo = info
        self.frames = frames
        self.inputFrames = inputFrames
        self.arena = arena
    }

    /// Runs the plan on one input map with `threads` threads splitting the rows of every layer;
    /// returns the output map. With `timings`, the seconds of each step are added to it.
    /// The result does not depend on the thread count: every output value is computed by the
    /// same operations whichever thread computes it.
    func run(_ input: FeatureMap, parameters: [String: Float], threads: Int = 1, timings: UnsafeMutablePointer<Double>? = nil,
             psf psfOverride: PSFKernel? = nil) -> FeatureMap {
        if let b = bands { return b.run(input, parameters: parameters, threads: threads, isa: isa, timings: timings) }
        for v in inputFrames { v.clearMargins() }
        inputView.load(input)
        let isa = self.isa
        for (i, step) in steps.enumerated() {
            let start = timings == nil ? 0 : monotonicSeconds()
            defer { if let t = timings { t[i] += monotonicSeconds() - start } }
            for v in frames[i] { v.clearMargins() }
            switch step {
            case let .conv(x, y, p, pad, act):
                // Work per row grows with channels x kernel taps; split finely enough to balance.
                Self.rows(y.height, threads) { FastOps.conv2d(x, y, p, padding: pad, activation: act, isa: isa, rows: $0) }
            case let .winograd(x, y, w, act):
                Self.winograd(w, x, y, act, isa: isa, threads: threads, tileRows: 0..<(y.height + w.tileSize - 1) / w.tileSize)
            case let .activation(x, y, act):
                Self.rows(y.height, threads) { FastOps.activation(x, y, act, rows: $0) }
            case let .pool(x, y):
                Self.rows(y.height, threads) { FastOps.maxpool2x2(x, y, rows: $0) }
            case let .convTranspose(x, y, p):
                Self.rows(x.height, threads) { FastOps.convTranspose2x2(x, y, p, isa: isa, rows: $0) }
            case let .fill(y, value, parameter):
                FastOps.fill(y, value: parameter.flatMap { parameters[$0] } ?? value)
            case let .copy(x, y):
                Self.rows(y.height, threads) { FastOps.copy(x, y, rows: $0) }
            case let .wiener(x, y, psf):
                let fixed = parameters[WienerDeconvolution.lambdaParameter].flatMap { $0 > 0 ? Double($0) : nil }
                WienerDeconvolution.apply(x.pointer(0, 0, 0), inputStride: x.rowStride, height: y.height, width: y.width, psf: psfOverride ?? psf!,
                                          output: y.pointer(0, 0, 0), outputStride: y.rowStride, lambda: fixed, threads: threads)
            }
        }
        return outputView.featureMap()
    }

    /// Splits 0..<n into contiguous row ranges over `threads` threads (several ranges per thread
    /// for balance), or runs it whole on one thread.
    static func rows(_ n: Int, _ threads: Int, _ body: @escaping @Sendable (Range<Int>) -> Void) {
        rows(0..<n, threads, body)
    }

    /// The same for the rows `r`.
    static func rows(_ r: Range<Int>, _ threads: Int, _ body: @escaping @Sendable (Range<Int>) -> Void) {
        let n = r.count
        if threads <= 1 || n < 2 {
            body(r)
            return
        }
        let chunks = min(n, threads * 4)
        ParallelFor.run(chunks, threads: threads) { k in
            body((r.lowerBound + k * n / chunks)..<(r.lowerBound + (k + 1) * n / chunks))
        }
    }

    /// A Winograd step over the tile rows `tileRows` of y: contiguous ranges of tile rows
    /// (Winograd batches tile rows into GEMMs), taken by the threads in order: up to 4 per thread
    /// while each still fills two GEMM blocks, so that a thread slowed by its neighbours on a
    /// shared host does not hold the other at the end of every layer.
    static func winograd(_ w: WinogradConv, _ x: PlanarView, _ y: PlanarView, _ act: Activation, isa: KernelISA, threads: Int,
                         tileRows: Range<Int>) {
        let tr = tileRows.count, t0 = tileRows.lowerBound
        let tiles = tr * ((y.width + w.tileSize - 1) / w.tileSize)
        let fillingTwoBlocks = tiles / (2 * WinogradConv.blockTiles(isa))
        let wanted = threads <= 1 ? 1 : max(threads, min(4 * threads, fillingTwoBlocks))
        let parts = max(1, min(tr, wanted))
        ParallelFor.run(parts, threads: threads) { k in
            w.run(x, y, activation: act, isa: isa, tileRows: (t0 + k * tr / parts)..<(t0 + (k + 1) * tr / parts))
        }
    }

    /// Bytes of feature-map memory the plan holds.
    var bytes: Int { bands?.bytes ?? arenaFloats * 4 + wienerScratch }

    /// Float64 work memory of the largest Wiener step (`WienerDeconvolution.workBytes`), which
    /// tiles must leave room for as for feature maps.
    private(set) var wienerScratch = 0

    /// Bytes the plan's maps would take without sharing memory.
    let unsharedBytes: Int
}
