import Kernels
import ModelFormat

/// The compiled form of a `GraphTrainer`: every feature map and gradient map of one sample,
/// placed in one arena by lifetime, and the forward and backward steps that read and write them.
/// Built once per trainer; each worker thread's `Workspace` allocates one arena of `arenaFloats`.
extension GraphTrainer {
    /// How a backward step stores its contribution to an input's gradient: the first
    /// contribution (in backward order) writes, later ones add.
    enum Mode { case write, accumulate }

    /// A channel range of one arena buffer.
    struct Slot {
        var buffer: Int
        var channelOffset: Int
        var channels: Int
    }

    /// One arena buffer: its layout, its life on the step timeline (forward step k of the
    /// topological order is time k, the input load -1, the loss N, the backward step of node k
    /// is 2N - k) and its place in the arena.
    struct BufferSpec {
        var layout: PlanarLayout
        var first: Int
        var last: Int
        var offset = 0
        /// Plain scratch floats (no planar layout, no margin).
        var raw = false
        var floats: Int { (layout.allocation + 15) / 16 * 16 }
    }

    enum ForwardStep {
        case conv(x: Slot, y: Slot, weight: Int, padding: ConvPadding, activation: Activation)
        case pool(x: Slot, y: Slot, argmax: Int)
        case convTranspose(x: Slot, y: Slot, weight: Int)
        case activation(x: Slot, y: Slot, Activation)
        case fill(y: Slot, value: Float, parameter: String?)
        case copy(x: Slot, y: Slot)
    }

    /// Backward of a convolution (with the activation fused into it, if any).
    struct ConvBackward {
        var x: Slot              // forward input (weight gradient)
        var dy: Slot             // gradient of the stored output (masked in place first when fused)
        var y: Slot?             // stored output, when an activation is fused
        var activation: Activation
        var kh: Int, kw: Int, padding: ConvPadding
        var outHeight: Int, outWidth: Int
        var weight: Int          // index into the trainer's packed weights
        var acc: Int, bias: Int? // offsets of dW^T and db in the accumulator
        var ldb: Int
        var tapOffsets: [Int]
        var dyt: Int             // raw scratch buffer: dY pixel-major
        var dx: Slot?            // input gradient target (channels restricted to the needed range)
        var mode: Mode
        var scratch: Slot?       // when accumulating: the convolution's result before it is added
    }

    struct ConvTransposeBackward {
        var x: Slot, dy: Slot
        var weight: Int, acc: Int, bias: Int?
        var ldb: Int
        var tapOffsets: [Int]
        var phases: Slot         // dY split into its 4 taps: 4 x O planes of the input size
        var dyt: Int
        var dx: Slot?, mode: Mode, scratch: Slot?
    }

    enum BackwardStep {
        case conv(ConvBackward)
        case convTranspose(ConvTransposeBackward)
        case activation(x: Slot, dy: Slot, dx: Slot, mode: Mode, alpha: Float)
        case pool(dy: Slot, dx: Slot, argmax: Int, mode: Mode)
        case copy(dy: Slot, dx: Slot, mode: Mode)
    }

    /// A node with parameters, in `layout` order of its tensors.
    struct Weighted {
        var node: Node
        var transposed: Bool
        var outChannels: Int, inChannels: Int, kh: Int, kw: Int
        /// Input channels whose gradient the backward convolution computes.
        var dxChannels: Range<Int>
        var acc: Int, bias: Int?
        var ldb: Int
    }

    struct Plan {
        var buffers: [BufferSpec] = []
        var forward: [(time: Int, label: String, step: ForwardStep)] = []
        var backward: [(time: Int, label: String, step: BackwardStep)] = []
        /// Buffers whose zero margins are cleared when their life starts, by time + 1.
        var frames: [[Int]] = []
        var input: Slot
        var output: Slot
        var outputGradient: Slot?
        var weighted: [Weighted] = []
        var accFloats = 0
        var argmaxBytes = 0
        var arenaFloats = 0
        var unsharedFloats = 0
        var maxChannels = 1
        var lossTime = 0
    }

    /// Margin a 'same' convolution's input needs on its widest side (top/left pad (k-1)/2, the
    /// rest bottom/right), also what its weight gradient reads.
    static func sameMargin(_ kh: Int, _ kw: Int) -> Int { max(kh / 2, kw / 2) }

    static func compile(model: Model, analysis: GraphAnalysis, height: Int, width: Int, isa: KernelISA) throws -> Plan {
        let graph = model.graph
        let shapes = try analysis.shapes(height: height, width: width)
        let nodes = analysis.order.map { graph.nodes[$0] }
        let count = nodes.count
        let inputName = graph.inputs[0].name, outputName = graph.outputs[0]
        var position: [String: Int] = [:]   // node name -> order index
        var producer: [String: Int] = [:]   // value -> order index of its node
        var consumers: [String: [Int]] = [:]
        for (k, n) in nodes.enumerated() {
            position[n.name] = k
            producer[n.output] = k
            for v in n.inputs { consumers[v, default: []].append(k) }
        }
        func wshape(_ n: Node) -> [Int] { analysis.tensorShapes[n.params[0]]! }

        // Fusion as the runtime: a conv whose only consumer is a ReLU/LeakyReLU stores the
        // activation's output; its backward masks from that output's sign, which needs alpha >= 0.
        var fused: [Int: Int] = [:]      // conv index -> activation index
        var absorbed = Set<Int>()
        for (k, n) in nodes.enumerated() where n.op == .conv2d && n.output != outputName {
            guard let cs = consumers[n.output], cs.count == 1 else { continue }
            let a = nodes[cs[0]]
            if a.op == .relu || (a.op == .leakyRelu && a.alpha >= 0) { fused[k] = cs[0]; absorbed.insert(cs[0]) }
        }
        func activation(_ a: Node) -> Activation { a.op == .relu ? .relu : .leakyRelu(a.alpha) }
        func result(_ k: Int) -> String { fused[k].map { nodes[$0].output } ?? nodes[k].output }

        // Which values depend on parameters (want a gradient), and which get one from the loss.
        var wants: [String: Bool] = [inputName: false]
        for n in nodes {
            switch n.op {
            case .conv2d, .convTranspose2d: wants[n.output] = true
            case .constantChannel: wants[n.output] = false
            default: wants[n.output] = n.inputs.contains { wants[$0] ?? false }
            }
        }
        var has: [String: Bool] = [outputName: wants[outputName] ?? false]
        for n in nodes.reversed() where has[n.output] == true && n.op != .constantChannel {
            for v in n.inputs where wants[v] == true { has[v] = true }
        }
        func needsGradient(_ v: String) -> Bool { wants[v] == true && has[v] == true }

        // Forward margins: the widest 'same' padding among a value's convolution consumers.
        var fMargin: [String: Int] = [:]
        for n in nodes where n.op == .conv2d && n.padding == .same {
            let s = wshape(n)
            fMargin[n.inputs[0]] = max(fMargin[n.inputs[0]] ?? 0, sameMargin(s[2], s[3]))
        }
        // Gradient margins: what the producer's data-gradient convolution reads around dY.
        var gMargin: [String: Int] = [:]
        for (k, n) in nodes.enumerated() where n.op == .conv2d {
            let s = wshape(n)
            gMargin[result(k)] = n.padding == .same ? sameMargin(s[2], s[3]) : max(s[2], s[3]) - 1
        }

        // Concat slices. Forward (as the runtime): a concat input that is no graph input or
        // output and feeds only this concat among concats is a view into the concat's map.
        // Gradient: the same, and every other consumer of the input comes before the concat, so
        // the concat's gradient is complete (written) before they add to the slice.
        var concatUses: [String: Int] = [:]
        for n in nodes where n.op == .concat { for v in n.inputs { concatUses[v, default: 0] += 1 } }
        var fSlice: [String: (concat: String, offset: Int)] = [:]
        var gSlice: [String: (concat: String, offset: Int)] = [:]
        for (k, n) in nodes.enumerated() where n.op == .concat {
            var offset = 0
            for v in n.inputs {
                if v != inputName && v != outputName && concatUses[v] == 1 {
                    if fSlice[v] == nil { fSlice[v] = (n.output, offset) }
                    if gSlice[v] == nil && (consumers[v] ?? []).allSatisfy({ $0 == k || $0 < k }) { gSlice[v] = (n.output, offset) }
                }
                offset += shapes[v]!.channels
            }
        }
        func root(_ v: String, _ slices: [String: (concat: String, offset: Int)]) -> (String, Int) {
            var (r, off) = (v, 0)
            while let s = slices[r] { off += s.offset; r = s.concat }
            return (r, off)
        }
        for v in fSlice.keys { let r = root(v, fSlice).0; fMargin[r] = max(fMargin[r] ?? 0, fMargin[v] ?? 0) }
        for v in gSlice.keys { let r = root(v, gSlice).0; gMargin[r] = max(gMargin[r] ?? 0, gMargin[v] ?? 0) }

        var plan = Plan(input: Slot(buffer: 0, channelOffset: 0, channels: 0), output: Slot(buffer: 0, channelOffset: 0, channels: 0))
        func newBuffer(_ layout: PlanarLayout, raw: Bool = false) -> Int {
            plan.buffers.append(BufferSpec(layout: layout, first: Int.max, last: Int.min, raw: raw))
            return plan.buffers.count - 1
        }
        func touch(_ s: Slot, _ t: Int) {
            plan.buffers[s.buffer].first = min(plan.buffers[s.buffer].first, t)
            plan.buffers[s.buffer].last = max(plan.buffers[s.buffer].last, t)
        }
        var fSlots: [String: Slot] = [:], gSlots: [String: Slot] = [:]
        func slot(_ v: String, _ slices: [String: (concat: String, offset: Int)], _ margins: [String: Int],
                  _ slots: inout [String: Slot]) -> Slot {
            if let s = slots[v] { return s }
            let (r, off) = root(v, slices)
            let rs: Slot
            if let s = slots[r] { rs = s } else {
                let sh = shapes[r]!
                let b = newBuffer(PlanarLayout(channels: sh.channels, height: sh.height, width: sh.width, margin: margins[r] ?? 0))
                rs = Slot(buffer: b, channelOffset: 0, channels: sh.channels)
                slots[r] = rs
            }
            let s = Slot(buffer: rs.buffer, channelOffset: rs.channelOffset + off, channels: shapes[v]!.channels)
            slots[v] = s
            return s
        }
        func fwd(_ v: String) -> Slot { slot(v, fSlice, fMargin, &fSlots) }
        func grad(_ v: String) -> Slot { slot(v, gSlice, gMargin, &gSlots) }
        func temporary(_ layout: PlanarLayout, _ t: Int, raw: Bool = false) -> Int {
            let b = newBuffer(layout, raw: raw)
            touch(Slot(buffer: b, channelOffset: 0, channels: 0), t)
            return b
        }
        func rawLayout(_ floats: Int) -> PlanarLayout {
            var l = PlanarLayout(channels: 1, height: 1, width: 1)
            l.origin = 0
            l.allocation = floats
            return l
        }

        // Parameters: accumulator blocks in node order.
        var weightIndex: [Int: Int] = [:]
        for (k, n) in nodes.enumerated() where n.op == .conv2d || n.op == .convTranspose2d {
            let s = wshape(n)
            let t = n.op == .convTranspose2d
            let x = n.inputs[0]
            // Input channels whose gradient is needed: all of a plain map; the span of the parts
            // that want one for a concatenation (the exposure-ratio channel's is dropped).
            var dx = 0..<0
            if needsGradient(x) {
                dx = 0..<s[1]
                if let p = producer[x], nodes[p].op == .concat {
                    var lo = Int.max, hi = 0, off = 0
                    for v in nodes[p].inputs {
                        let c = shapes[v]!.channels
                        if wants[v] == true { lo = min(lo, off); hi = max(hi, off + c) }
                        off += c
                    }
                    dx = lo < hi ? lo..<hi : 0..<0
                }
            }
            let taps = t ? s[1] : s[1] * s[2] * s[3]
            let ldb = WeightGradient.paddedChannels(t ? 4 * s[0] : s[0], isa: isa)
            let acc = plan.accFloats
            plan.accFloats += WeightGradient.paddedTaps(taps) * ldb
            var bias: Int?
            if n.params.count > 1 { bias = plan.accFloats; plan.accFloats += s[0] }
            weightIndex[k] = plan.weighted.count
            plan.weighted.append(Weighted(node: n, transposed: t, outChannels: s[0], inChannels: s[1], kh: t ? 2 : s[2],
                                          kw: t ? 2 : s[3], dxChannels: dx, acc: acc, bias: bias, ldb: ldb))
            plan.maxChannels = max(plan.maxChannels, s[0])
        }

        // Forward steps.
        plan.input = fwd(inputName)
        touch(plan.input, -1)
        for (k, n) in nodes.enumerated() where !absorbed.contains(k) {
            let x = fwd(n.inputs[0])
            let step: ForwardStep
            var reads = [x]
            switch n.op {
            case .conv2d:
                let act = fused[k].map { activation(nodes[$0]) } ?? .none
                step = .conv(x: x, y: fwd(result(k)), weight: weightIndex[k]!, padding: n.padding == .same ? .same : .valid, activation: act)
            case .relu, .leakyRelu:
                step = .activation(x: x, y: fwd(n.output), activation(n))
            case .maxpool2d:
                let out = shapes[n.output]!
                step = .pool(x: x, y: fwd(n.output), argmax: plan.argmaxBytes)
                plan.argmaxBytes += (out.count + 63) / 64 * 64
            case .convTranspose2d:
                step = .convTranspose(x: x, y: fwd(n.output), weight: weightIndex[k]!)
            case .wienerDeconvolution:
                throw GraphTrainerError("node '\(n.name)': a Wiener step is trained from its output (Model.withoutInputStep); it must read the graph input")
            case .constantChannel:
                reads = []
                step = .fill(y: fwd(n.output), value: n.constantValue, parameter: n.runtimeParameter)
            case .concat:
                let out = fwd(n.output)
                reads = []
                var offset = 0
                for v in n.inputs {
                    let c = shapes[v]!.channels
                    let part = Slot(buffer: out.buffer, channelOffset: out.channelOffset + offset, channels: c)
                    let src = fwd(v)
                    touch(part, k)
                    if src.buffer != out.buffer || src.channelOffset != part.channelOffset {
                        touch(src, k)
                        plan.forward.append((k, "\(n.name) copy \(v)", .copy(x: src, y: part)))
                    }
                    offset += c
                }
                continue
            }
            for r in reads { touch(r, k) }
            switch step {
            case let .conv(_, y, _, _, _), let .activation(_, y, _), let .pool(_, y, _), let .convTranspose(_, y, _), let .fill(y, _, _):
                touch(y, k)
            case .copy: break
            }
            let label = fused[k].map { "\(n.name) (\(n.op.rawValue)+\(nodes[$0].op.rawValue))" } ?? "\(n.name) (\(n.op.rawValue))"
            plan.forward.append((k, label, step))
        }
        plan.output = fwd(outputName)
        plan.lossTime = count
        touch(plan.output, count)

        // Backward steps, in reverse topological order; writes vs adds decided as they come.
        var initialised = Set<String>()
        var slicesOf: [String: [String]] = [:]
        for (v, s) in gSlice { slicesOf[s.concat, default: []].append(v) }
        func contribute(_ v: String, _ t: Int) -> (Slot, Mode) {
            let s = grad(v)
            touch(s, t)
            if initialised.contains(v) { return (s, .accumulate) }
            var stack = [v]
            while let u = stack.popLast() { initialised.insert(u); stack += slicesOf[u] ?? [] }
            return (s, .write)
        }
        if needsGradient(outputName) {
            let (g, _) = contribute(outputName, count)
            plan.outputGradient = g
        }
        for k in stride(from: count - 1, through: 0, by: -1) where !absorbed.contains(k) {
            let n = nodes[k]
            let out = n.op == .conv2d ? result(k) : n.output
            guard has[out] == true, needsGradient(out) || n.op == .conv2d || n.op == .convTranspose2d else { continue }
            let t = 2 * count - k
            let dy = grad(out)
            touch(dy, t)
            let x = n.inputs[0]
            switch n.op {
            case .conv2d:
                let w = plan.weighted[weightIndex[k]!]
                let xs = fwd(x)
                touch(xs, t)
                var ys: Slot?
                var act = Activation.none
                if let a = fused[k] { ys = fwd(out); touch(ys!, t); act = activation(nodes[a]) }
                let o = shapes[out]!
                let dyt = temporary(rawLayout(o.height * o.width * w.ldb), t, raw: true)
                var target: Slot?, mode = Mode.write, scratch: Slot?
                if !w.dxChannels.isEmpty {
                    let (g, m) = contribute(x, t)
                    target = Slot(buffer: g.buffer, channelOffset: g.channelOffset + w.dxChannels.lowerBound, channels: w.dxChannels.count)
                    mode = m
                    if m == .accumulate {
                        let sx = shapes[x]!
                        let b = temporary(PlanarLayout(channels: w.dxChannels.count, height: sx.height, width: sx.width), t)
                        scratch = Slot(buffer: b, channelOffset: 0, channels: w.dxChannels.count)
                    }
                }
                let xl = plan.buffers[xs.buffer].layout
                var xview = xl
                xview.channels = xs.channels
                let step = ConvBackward(x: xs, dy: dy, y: ys, activation: act, kh: w.kh, kw: w.kw,
                                        padding: n.padding == .same ? .same : .valid, outHeight: o.height, outWidth: o.width,
                                        weight: weightIndex[k]!, acc: w.acc, bias: w.bias, ldb: w.ldb,
                                        tapOffsets: WeightGradient.tapOffsets(xview, kh: w.kh, kw: w.kw), dyt: dyt,
                                        dx: target, mode: mode, scratch: scratch)
                plan.backward.append((t, "\(n.name) backward", .conv(step)))
            case .convTranspose2d:
                let w = plan.weighted[weightIndex[k]!]
                let xs = fwd(x)
                touch(xs, t)
                let sx = shapes[x]!
                let phases = temporary(PlanarLayout(channels: 4 * w.outChannels, height: sx.height, width: sx.width), t)
                let dyt = temporary(rawLayout(sx.height * sx.width * w.ldb), t, raw: true)
                var target: Slot?, mode = Mode.write, scratch: Slot?
                if !w.dxChannels.isEmpty {
                    let (g, m) = contribute(x, t)
                    target = Slot(buffer: g.buffer, channelOffset: g.channelOffset + w.dxChannels.lowerBound, channels: w.dxChannels.count)
                    mode = m
                    if m == .accumulate {
                        let b = temporary(PlanarLayout(channels: w.dxChannels.count, height: sx.height, width: sx.width), t)
                        scratch = Slot(buffer: b, channelOffset: 0, channels: w.dxChannels.count)
                    }
                }
                var xview = plan.buffers[xs.buffer].layout
                xview.channels = xs.channels
                let step = ConvTransposeBackward(x: xs, dy: dy, weight: weightIndex[k]!, acc: w.acc, bias: w.bias, ldb: w.ldb,
                                                 tapOffsets: WeightGradient.tapOffsets(xview, kh: 1, kw: 1),
                                                 phases: Slot(buffer: phases, channelOffset: 0, channels: 4 * w.outChannels),
                                                 dyt: dyt, dx: target, mode: mode, scratch: scratch)
                plan.backward.append((t, "\(n.name) backward", .convTranspose(step)))
            case .relu, .leakyRelu:
                guard needsGradient(x) else { continue }
                let xs = fwd(x)
                touch(xs, t)
                let (g, m) = contribute(x, t)
                plan.backward.append((t, "\(n.name) backward", .activation(x: xs, dy: dy, dx: g, mode: m, alpha: n.op == .relu ? 0 : n.alpha)))
            case .maxpool2d:
                guard needsGradient(x) else { continue }
                guard case let .pool(_, _, argmax)? = plan.forward.first(where: { $0.time == k })?.step else { continue }
                let (g, m) = contribute(x, t)
                plan.backward.append((t, "\(n.name) backward", .pool(dy: dy, dx: g, argmax: argmax, mode: m)))
            case .concat:
                var offset = 0
                for v in n.inputs {
                    let c = shapes[v]!.channels
                    defer { offset += c }
                    guard needsGradient(v) else { continue }
                    let part = Slot(buffer: dy.buffer, channelOffset: dy.channelOffset + offset, channels: c)
                    if gSlice[v]?.concat == n.output { touch(grad(v), t); continue }
                    let (g, m) = contribute(v, t)
                    plan.backward.append((t, "\(n.name) backward \(v)", .copy(dy: part, dx: g, mode: m)))
                }
            case .constantChannel, .wienerDeconvolution:
                continue
            }
        }
        place(&plan, count: count)
        return plan
    }

    /// Places the buffers in one arena: each lives from its first to its last step; buffers whose
    /// lives do not overlap share memory (largest first, lowest free offset), as the runtime's
    /// execution plan does. Margins are cleared when a buffer's life starts.
    private static func place(_ plan: inout Plan, count: Int) {
        let used = plan.buffers.indices.filter { plan.buffers[$0].first <= plan.buffers[$0].last }
        let order = used.sorted { (plan.buffers[$0].floats, -plan.buffers[$0].first) > (plan.buffers[$1].floats, -plan.buffers[$1].first) }
        var placed: [(start: Int, end: Int, first: Int, last: Int)] = []
        for b in order {
            let spec = plan.buffers[b]
            let size = spec.floats
            let clash = placed.filter { $0.first <= spec.last && spec.first <= $0.last }.sorted { $0.start < $1.start }
            var at = 0
            for c in clash where c.start < at + size { if c.end > at { at = c.end } }
            plan.buffers[b].offset = at
            placed.append((at, at + size, spec.first, spec.last))
        }
        plan.arenaFloats = placed.map(\.end).max() ?? 0
        plan.unsharedFloats = placed.reduce(0) { $0 + $1.end - $1.start }
        plan.frames = [[Int]](repeating: [], count: 2 * count + 2)
        for b in used where plan.buffers[b].layout.margin > 0 && !plan.buffers[b].raw {
            plan.frames[plan.buffers[b].first + 1].append(b)
        }
    }
}
