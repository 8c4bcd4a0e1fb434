import Foundation
import Kernels
import ModelFormat
import Runtime

/// A problem with a `GraphTrainer`'s model or with the data handed to it.
public struct GraphTrainerError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "graph trainer: \(message)" }
}

/// Training of any `.acnn` graph (the Astro U-net, the Flamary chains, ...) on the runtime's
/// fast kernels, one sample at a time per thread.
///
/// Forward: direct convolution with bias and activation fused into the store (as the runtime
/// runs it with `--conv direct`), max-pooling that also records each window's argmax, the
/// transposed convolution's GEMM, concatenations done in place (producers write into their slice
/// of the concatenated map), constant channels filled from the run-time parameters. Everything
/// backward needs is kept: convolution inputs, fused activations' outputs (their sign gives the
/// mask), pooling argmaxes.
///
/// Backward, per op: a convolution's data gradient is a 'valid' convolution of its output
/// gradient, read through a zero margin (the 'same'/'full' padding), with the flipped, in/out
/// transposed weights on the same direct kernels; its weight gradient runs on
/// `WeightGradient` (dY transposed to pixel-major, the bias gradient summed on the way). A
/// transposed convolution's data gradient is a 2x2 stride-2 convolution: dY split into its 4
/// taps (4·O planes of the input size) then a 1x1 convolution; its weight gradient one
/// `WeightGradient` pass over the 4·O tap columns. Activations mask by the sign of their output
/// (fused) or input (standalone), pooling routes to the recorded argmax (ties to the first of
/// (0,0), (0,1), (1,0), (1,1), as `ReferenceGrad`), a concatenation's gradient is read in place by
/// its inputs' producers, and the constant channel's gradient is dropped (not even computed).
///
/// Memory: every map of one sample (forward values, gradients, scratch) is placed once in one
/// arena per worker thread, buffers whose lives on the forward+backward timeline do not overlap
/// sharing memory; nothing is allocated per sample.
///
/// Threads: a batch is cut into fixed chunks of `chunkSize` samples; each chunk's gradient is
/// accumulated in its own workspace and added to the batch sum in chunk order, so results are the
/// same bits for any thread count (and equal to `ConvChainTrainer`'s on a chain of valid
/// convolutions up to rounding: that trainer interleaves samples and sums in another order). Workspaces are made on first use and kept for the trainer's life. One call at a
/// time: `setParameters` must not run during `lossAndGradient` or `predict`.
public final class GraphTrainer: @unchecked Sendable {
    public static let chunkSize = 2

    public let layout: ParameterLayout
    public let inputChannels: Int
    public let inputHeight: Int
    public let inputWidth: Int
    public let outputChannels: Int
    public let outputHeight: Int
    public let outputWidth: Int
    public let isa: KernelISA
    /// Run-time scalars of the graph (constant_channel parameters) with their defaults.
    public let runtimeParameterDefaults: [String: Float]
    /// The current parameters (flat, `layout` order).
    public private(set) var parameters: [Float]

    let plan: Plan
    var forwardWeights: [PackedConv] = []
    var backwardWeights: [PackedConv?] = []
    /// Per weighted layer: the Winograd variant its forward convolution and its data gradient
    /// run under (nil: direct), chosen once by `winogradVariant`.
    let winogradChoice: [(forward: WinogradVariant?, backward: WinogradVariant?)]
    var winogradForward: [WinogradConv?] = []
    var winogradBackward: [WinogradConv?] = []
    /// Per layer with a Winograd data gradient: its flipped, in/out-transposed weights (OIHW),
    /// rewritten by every `setParameters` before they are transformed.
    private var flippedWeights: [UnsafeMutablePointer<Float>?] = []
    private let pool = WorkspacePool()
    /// Per step (forward then backward), seconds summed over samples and threads, when
    /// `collectTimings` is set.
    public var collectTimings = false
    /// A loss term on the error's low frequencies, added to the per-pixel loss (`LowPassLoss`;
    /// nil: none). Set between steps, not during one.
    public var lowPassLoss: LowPassLoss? = nil
    private var timingSums: [Double]
    private let timingLock = NSLock()

    /// Compiles `model` for inputs of `inputHeight` x `inputWidth` (multiples of the graph's size
    /// multiple) and loads the model's own weights. Throws for invalid graphs, graphs with more
    /// than one input or output, unsupported sizes or an ISA this CPU lacks.
    ///
    /// `winograd`: 3x3 'same' convolutions on maps of at least 32x32 with at least 16 input
    /// and a multiple of 4 output channels run forward and data-gradient in the Winograd domain
    /// (F(4x4,3x3): 4x fewer multiplications, rounding error about 1e-6 of the layer's output
    /// scale); false: every convolution direct. The default is true unless the environment sets
    /// ASTROCNN_TRAIN_CONV=direct (for comparisons).
    public init(model full: Model, inputHeight: Int, inputWidth: Int, isa: KernelISA = .best,
                winograd: Bool = ProcessInfo.processInfo.environment["ASTROCNN_TRAIN_CONV"] != "direct") throws {
        // A Wiener input step is applied by the crop source: training starts from its output.
        let model = full.withoutInputStep()
        guard isa.supported else { throw GraphTrainerError("this CPU does not support \(isa.rawValue)") }
        let g = model.graph
        guard g.inputs.count == 1, g.outputs.count == 1 else {
            throw GraphTrainerError("the graph must have one input and one output (it has \(g.inputs.count) and \(g.outputs.count))")
        }
        let analysis = try GraphAnalysis(graph: g, tensorShapes: model.tensors.mapValues { $0.shape })
        for n in g.nodes { for p in n.params {
            guard let t = model.tensors[p], t.values.count == t.count else {
                throw GraphTrainerError("tensor '\(p)' of node '\(n.name)' is missing or has the wrong number of values")
            }
        } }
        let m = analysis.geometry.sizeMultiple
        guard inputHeight > 0, inputWidth > 0, inputHeight % m == 0, inputWidth % m == 0 else {
            throw GraphTrainerError("input size \(inputHeight)x\(inputWidth) must be positive multiples of the graph's size multiple \(m)")
        }
        let shapes = try analysis.shapes(height: inputHeight, width: inputWidth)
        let out = shapes[g.outputs[0]]!
        self.isa = isa
        self.inputHeight = inputHeight
        self.inputWidth = inputWidth
        inputChannels = g.inputs[0].channels
        (outputChannels, outputHeight, outputWidth) = (out.channels, out.height, out.width)
        var defaults: [String: Float] = [:]
        for n in g.nodes where n.op == .constantChannel { if let p = n.runtimeParameter { defaults[p] = n.constantValue } }
        runtimeParameterDefaults = defaults
        layout = ParameterLayout(model: model)
        plan = try GraphTrainer.compile(model: model, analysis: analysis, height: inputHeight, width: inputWidth, isa: isa)
        timingSums = [Double](repeating: 0, count: plan.forward.count + 3 * plan.backward.count)
        var choice = [(forward: WinogradVariant?, backward: WinogradVariant?)](repeating: (nil, nil), count: plan.weighted.count)
        if winograd {
            for f in plan.forward {
                guard case let .conv(_, y, k, padding, _) = f.step else { continue }
                let w = plan.weighted[k], map = plan.buffers[y.buffer].layout
                func pick(_ c: Int, _ o: Int) -> WinogradVariant? {
                    GraphTrainer.winogradVariant(kh: w.kh, kw: w.kw, padding: padding, inChannels: c, outChannels: o,
                                                 height: map.height, width: map.width, isa: isa)
                }
                choice[k] = (pick(w.inChannels, w.outChannels), w.dxChannels.isEmpty ? nil : pick(w.outChannels, w.dxChannels.count))
            }
        }
        winogradChoice = choice
        parameters = []
        try setParameters(layout.flatten(model))
    }

    /// The Winograd variant the trainer runs a convolution of this shape under, or nil (direct):
    /// F(4x4,3x3) for 3x3 'same' convolutions with at least 16 input channels, a multiple of 4
    /// output channels and maps of at least `ConvAlgorithm.smallestWinogradMap(isa)` (32x32 with
    /// AVX-512, 16x16 otherwise: the runtime's `auto` rule). Measured on Zen 4
    /// (AVX-512) in the 16-256 U-net's training at 128x128 crops: layers on 32x32 to 128x128
    /// maps 1.2-1.6x faster than direct, forward and data gradient; F(6x6,3x3) gained less
    /// (its 64 matrices per block leave the caches; its tiles overhang 32x32 maps), F(2x2,3x3)
    /// on the 8x8 bottom nothing; on 16x16 and 8x8 maps F(4x4,3x3) is slower than direct.
    public static func winogradVariant(kh: Int, kw: Int, padding: ConvPadding, inChannels c: Int, outChannels o: Int,
                                       height: Int, width: Int, isa: KernelISA = .best) -> WinogradVariant? {
        // The data gradient of a 'same' 3x3 layer is again a 'same' 3x3 correlation; other
        // shapes (the 3-CNN's 'valid' 6x6 layer) have a 'full' one, so they stay direct here.
        guard kh == 3, kw == 3, padding == .same else { return nil }
        return ConvAlgorithm.auto.winogradVariant(outChannels: o, inChannels: c, kh: kh, kw: kw, padding: .same,
                                                  mapHeight: height, mapWidth: width, isa: isa)
    }

    /// A direct convolution, on the patch-matrix GEMM for maps narrower than a vector (same bits).
    func directConv(_ x: PlanarView, _ y: PlanarView, _ w: PackedConv, padding: ConvPadding, activation: Activation) {
        if FastOps.prefersIm2col(height: y.height, width: y.width, isa: isa) {
            FastOps.im2colConv2d(x, y, w, padding: padding, activation: activation, isa: isa)
        } else {
            FastOps.conv2d(x, y, w, padding: padding, activation: activation, isa: isa)
        }
    }

    deinit { for p in flippedWeights { p?.deallocate() } }

    /// The layers that run a convolution in the Winograd domain: their node, and the variant of
    /// the forward convolution and of the data gradient (nil: direct).
    public var winogradLayers: [(layer: String, forward: WinogradVariant?, dataGradient: WinogradVariant?)] {
        zip(plan.weighted, winogradChoice).compactMap { w, c in
            c.forward == nil && c.backward == nil ? nil : (w.node.name, c.forward, c.backward)
        }
    }

    /// Loads parameters (flat, `layout` order) into the packed forward and backward weights.
    /// The packed buffers are made once and rewritten in place (no allocation or page faults per
    /// step), one task per layer and direction on up to `threads` threads (pure copies: the
    /// result does not depend on the thread count).
    public func setParameters(_ p: [Float], threads: Int = ParallelFor.availableCores) throws {
        guard p.count == layout.count else {
            throw GraphTrainerError("expected \(layout.count) parameters, got \(p.count)")
        }
        parameters = p
        if forwardWeights.isEmpty {
            for (k, w) in plan.weighted.enumerated() {
                let (o, c) = (w.outChannels, w.inChannels)
                let (fv, bv) = winogradChoice[k]
                winogradForward.append(fv.map { WinogradConv(outChannels: o, inChannels: c, variant: $0, padding: .same) })
                winogradBackward.append(bv.map { WinogradConv(outChannels: w.dxChannels.count, inChannels: o, variant: $0, padding: .same) })
                flippedWeights.append(bv == nil ? nil : .allocate(capacity: w.dxChannels.count * o * w.kh * w.kw))
                if w.transposed {
                    forwardWeights.append(PackedConv(zeroedOutChannels: 4 * o, inChannels: c, kh: 1, kw: 1))
                    backwardWeights.append(w.dxChannels.isEmpty ? nil : PackedConv(zeroedOutChannels: w.dxChannels.count, inChannels: 4 * o, kh: 1, kw: 1))
                } else {
                    forwardWeights.append(PackedConv(zeroedOutChannels: o, inChannels: c, kh: w.kh, kw: w.kw))
                    backwardWeights.append(w.dxChannels.isEmpty ? nil : PackedConv(zeroedOutChannels: w.dxChannels.count, inChannels: o, kh: w.kh, kw: w.kw))
                }
            }
        }
        let tasks = plan.weighted.count * 2
        p.withUnsafeBufferPointer { pb in
            nonisolated(unsafe) let src = pb.baseAddress!
            ParallelFor.run(tasks, threads: threads) { k in self.pack(layer: k >> 1, backward: k & 1 == 1, src) }
        }
    }

    /// Writes layer `i`'s forward packed weights (and bias), or its backward ones, from the flat
    /// parameters. Packed layout: output channel o's tap t at `weights[(o / 4) * taps * 4 + 4 t + o % 4]`.
    private func pack(layer i: Int, backward: Bool, _ p: UnsafePointer<Float>) {
        let w = plan.weighted[i]
        let weight = p + layout.range(w.node.params[0]).lowerBound
        let bias = w.node.params.count > 1 ? p + layout.range(w.node.params[1]).lowerBound : nil
        let (o, c) = (w.outChannels, w.inChannels)
        if !backward, let wg = winogradForward[i] {
            wg.setWeights(weight, bias: bias)
            return
        }
        if backward, let wg = winogradBackward[i], let t = flippedWeights[i] {
            // T[c - lo, o, u, v] = W[o, c, 2 - u, 2 - v], transformed as an OIHW weight.
            let dc = w.dxChannels
            for ci in dc { for oc in 0..<o {
                let s = weight + (oc * c + ci) * 9, d = t + ((ci - dc.lowerBound) * o + oc) * 9
                for u in 0..<9 { d[u] = s[8 - u] }
            } }
            wg.setWeights(t, bias: nil)
            return
        }
        if !backward {
            let d = forwardWeights[i]
            if w.transposed {
                // Output channel t·O + o (tap t = 2u + v of output channel o), input channel c.
                for oc in 0..<o { for t in 0..<4 {
                    let q = t * o + oc
                    let dst = d.weights + (q / 4) * c * 4 + q % 4
                    for ci in 0..<c { dst[4 * ci] = weight[(oc * c + ci) * 4 + t] }
                    d.bias[q] = bias?[oc] ?? 0
                } }
            } else {
                let taps = c * w.kh * w.kw
                for oc in 0..<o {
                    let s = weight + oc * taps, dst = d.weights + (oc / 4) * taps * 4 + oc % 4
                    for t in 0..<taps { dst[4 * t] = s[t] }
                    d.bias[oc] = bias?[oc] ?? 0
                }
            }
            return
        }
        guard let d = backwardWeights[i] else { return }
        let dc = w.dxChannels
        if w.transposed {
            // dX[c] = sum over taps t and channels o of W[o, c, t] * dY_t[o]: a 1x1 convolution of
            // the 4·O tap planes (plane t·O + o).
            let taps = 4 * o
            for ci in dc {
                let q = ci - dc.lowerBound
                let dst = d.weights + (q / 4) * taps * 4 + q % 4
                for oc in 0..<o { for t in 0..<4 { dst[4 * (t * o + oc)] = weight[(oc * c + ci) * 4 + t] } }
            }
        } else {
            // Flipped, in/out transposed: T[c, o, u, v] = W[o, c, kh-1-u, kw-1-v].
            let (kh, kw) = (w.kh, w.kw)
            let taps = o * kh * kw
            for ci in dc {
                let q = ci - dc.lowerBound
                let dst = d.weights + (q / 4) * taps * 4 + q % 4
                for oc in 0..<o {
                    let s = weight + (oc * c + ci) * kh * kw
                    for u in 0..<kh { for v in 0..<kw {
                        dst[4 * ((oc * kh + u) * kw + v)] = s[(kh - 1 - u) * kw + (kw - 1 - v)]
                    } }
                }
            }
        }
    }

    /// Feature-map memory of the trainer: one workspace (`arenaBytes` of maps, gradients and
    /// scratch placed by lifetime, `argmaxBytes`, `accumulatorBytes` of weight-gradient sums) per
    /// worker thread; `unsharedArenaBytes` is what the arena would take without sharing.
    public struct Memory: Equatable, Sendable {
        public let arenaBytes: Int
        public let unsharedArenaBytes: Int
        public let argmaxBytes: Int
        public let accumulatorBytes: Int
        /// Bytes of one workspace.
        public var workspaceBytes: Int { arenaBytes + argmaxBytes + accumulatorBytes }
    }

    public var memory: Memory {
        Memory(arenaBytes: plan.arenaFloats * 4, unsharedArenaBytes: plan.unsharedFloats * 4, argmaxBytes: plan.argmaxBytes,
               accumulatorBytes: plan.accFloats * 4)
    }

    /// About the peak bytes the trainer holds during a `lossAndGradient` call on `threads`
    /// threads: a workspace per thread, the batch's gradient sum, the packed weights (forward
    /// and backward), the parameters and the returned gradient.
    public func peakBytes(threads: Int) -> Int {
        let weights = plan.weighted.reduce(0) { s, w in
            let taps = w.transposed ? w.inChannels * 4 : w.inChannels * w.kh * w.kw
            return s + 2 * ((w.outChannels + 3) / 4 * 4) * taps * 4
        }
        // Winograd: the n^2 transformed matrices per direction, the flipped weights, and per
        // thread the largest layer's transformed tiles and products (one block of tiles).
        var transformed = 0, scratch = 0
        let tiles = WinogradConv.blockTiles(isa)
        for (w, c) in zip(plan.weighted, winogradChoice) {
            if let v = c.forward {
                transformed += v.n * v.n * w.outChannels * w.inChannels * 4
                scratch = max(scratch, v.n * v.n * (w.inChannels + w.outChannels) * tiles * 4)
            }
            if let v = c.backward {
                transformed += (v.n * v.n + 9) * w.dxChannels.count * w.outChannels * 4
                scratch = max(scratch, v.n * v.n * (w.outChannels + w.dxChannels.count) * tiles * 4)
            }
        }
        return max(1, threads) * (memory.workspaceBytes + scratch) + plan.accFloats * 4 + weights + transformed + 2 * layout.count * 4
    }

    /// Steps with the seconds collected since the last `resetTimings` (summed over samples and
    /// threads), in execution order: each forward step ("forward"), then each backward step in
    /// three parts: "backward" (masks, dY transposes and bias sums, pooling and concatenation
    /// gradients), "weight-gradient" and "data-gradient" (with the add of an accumulated one).
    public var timings: [(step: String, phase: String, seconds: Double)] {
        timingLock.lock(); defer { timingLock.unlock() }
        let f = plan.forward.enumerated().map { ($0.element.label, "forward", timingSums[$0.offset]) }
        var b: [(String, String, Double)] = []
        for (i, s) in plan.backward.enumerated() {
            for (k, phase) in ["backward", "weight-gradient", "data-gradient"].enumerated() {
                b.append((s.label, phase, timingSums[plan.forward.count + 3 * i + k]))
            }
        }
        return f + b
    }

    public func resetTimings() {
        timingLock.lock(); defer { timingLock.unlock() }
        for i in timingSums.indices { timingSums[i] = 0 }
    }

    /// Values of every fill step for every sample (step-major): `batch` for every sample,
    /// `perSample` (count values each) overriding it, else the node's default.
    private func parameterValues(count: Int, batch: [String: Float], perSample: [String: [Float]]) throws -> [Float] {
        for k in batch.keys.sorted() where runtimeParameterDefaults[k] == nil {
            throw GraphTrainerError("the model has no run-time parameter '\(k)'" +
                                    (runtimeParameterDefaults.isEmpty ? " (it has none)" : " (it has: \(runtimeParameterDefaults.keys.sorted().joined(separator: ", ")))"))
        }
        for (k, v) in perSample.sorted(by: { $0.key < $1.key }) {
            guard runtimeParameterDefaults[k] != nil else { throw GraphTrainerError("the model has no run-time parameter '\(k)'") }
            guard v.count == count else { throw GraphTrainerError("run-time parameter '\(k)' has \(v.count) per-sample values for \(count) samples") }
        }
        // Per fill step (in forward order), per sample.
        var values: [Float] = []
        for f in plan.forward {
            guard case let .fill(_, value, parameter) = f.step else { continue }
            for n in 0..<count {
                if let p = parameter, let v = perSample[p] { values.append(v[n]) }
                else if let p = parameter, let v = batch[p] { values.append(v) }
                else { values.append(value) }
            }
        }
        return values
    }

    private func checkBatch(_ inputs: [Float], _ count: Int) throws {
        guard count > 0 else { throw GraphTrainerError("a batch needs at least one sample (count \(count))") }
        let n = inputChannels * inputHeight * inputWidth
        guard inputs.count == count * n else {
            throw GraphTrainerError("inputs hold \(inputs.count) values; \(count) samples of \(inputChannels)x\(inputHeight)x\(inputWidth) need \(count * n)")
        }
    }

    /// Network outputs for `count` samples (CHW, `inputChannels` x `inputHeight` x `inputWidth`
    /// each), outputChannels x outputHeight x outputWidth floats each. `params` sets run-time
    /// parameters (e.g. "exposure_ratio") for the batch, `sampleParams` per sample.
    public func predict(inputs: [Float], count: Int, params: [String: Float] = [:], sampleParams: [String: [Float]] = [:],
                        threads: Int) throws -> [Float] {
        try checkBatch(inputs, count)
        let fills = try parameterValues(count: count, batch: params, perSample: sampleParams)
        let inStride = inputChannels * inputHeight * inputWidth
        let outStride = outputChannels * outputHeight * outputWidth
        var out = [Float](repeating: 0, count: count * outStride)
        inputs.withUnsafeBufferPointer { ib in
            out.withUnsafeMutableBufferPointer { ob in
                fills.withUnsafeBufferPointer { fb in
                    nonisolated(unsafe) let ip = ib.baseAddress!, op = ob.baseAddress!, fp = fb.baseAddress
                    ParallelFor.run(count, threads: threads) { n in
                        let ws = self.pool.take(self)
                        defer { self.pool.give(ws) }
                        self.forward(ip + n * inStride, sample: n, count: count, fills: fp, ws)
                        let v = ws.view(self.plan.output)
                        for c in 0..<v.channels { for y in 0..<v.height {
                            (op + n * outStride + (c * v.height + y) * v.width).update(from: v.pointer(c, y, 0), count: v.width)
                        } }
                        self.mergeTimings(ws)
                    }
                }
            }
        }
        return out
    }

    /// Loss and dL/dp (flat, `layout` order) of a batch: `inputs` holds `count` samples (CHW),
    /// `targets` their outputChannels x outputHeight x outputWidth targets. The loss is the mean
    /// over every output value of the batch (as `ConvChainTrainer`). `runtimeParameters` sets
    /// run-time parameters for the whole batch, `sampleParameters` (count values each) per
    /// sample. `sampleWeights` (count values) multiplies each sample's loss terms (and so its
    /// gradient): a loss in other units than the network's, e.g. (scale_n)^2 for an MSE in units
    /// scale_n times the network's. Samples run in chunks of `chunkSize` summed in chunk order:
    /// the same bits for any thread count.
    public func lossAndGradient(inputs: [Float], targets: [Float], count: Int, loss: Loss, threads: Int,
                                runtimeParameters: [String: Float] = [:], sampleParameters: [String: [Float]] = [:],
                                sampleWeights: [Float]? = nil) throws
        -> (loss: Double, gradient: [Float]) {
        try checkBatch(inputs, count)
        if let w = sampleWeights {
            guard w.count == count, w.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw GraphTrainerError("sampleWeights: \(w.count) finite non-negative values needed for \(count) samples")
            }
        }
        let weights = sampleWeights ?? [Float](repeating: 1, count: count)
        let inStride = inputChannels * inputHeight * inputWidth
        let outStride = outputChannels * outputHeight * outputWidth
        guard targets.count == count * outStride else {
            throw GraphTrainerError("targets hold \(targets.count) values; \(count) samples of \(outputChannels)x\(outputHeight)x\(outputWidth) need \(count * outStride)")
        }
        let fills = try parameterValues(count: count, batch: runtimeParameters, perSample: sampleParameters)
        let chunks = (count + GraphTrainer.chunkSize - 1) / GraphTrainer.chunkSize
        let total = count * outStride
        var sum = [Float](repeating: 0, count: plan.accFloats)
        var losses = [Double](repeating: 0, count: chunks)
        let turn = OrderedTurn()
        inputs.withUnsafeBufferPointer { ib in
            targets.withUnsafeBufferPointer { tb in
                sum.withUnsafeMutableBufferPointer { sb in
                    losses.withUnsafeMutableBufferPointer { lb in
                        fills.withUnsafeBufferPointer { fb in
                            nonisolated(unsafe) let ip = ib.baseAddress!, tp = tb.baseAddress!, sp = sb.baseAddress!
                            nonisolated(unsafe) let lp = lb.baseAddress!, fp = fb.baseAddress
                            let accFloats = self.plan.accFloats
                            ParallelFor.run(chunks, threads: threads) { chunk in
                                let ws = self.pool.take(self)
                                defer { self.pool.give(ws) }
                                ws.acc.update(repeating: 0, count: accFloats)
                                var l = 0.0
                                for n in chunk * GraphTrainer.chunkSize..<min(count, (chunk + 1) * GraphTrainer.chunkSize) {
                                    l += self.sampleGradient(ip + n * inStride, tp + n * outStride, sample: n, count: count,
                                                             fills: fp, loss: loss, total: total, weight: weights[n], ws)
                                }
                                lp[chunk] = l
                                // Add this chunk to the batch sum after every earlier chunk.
                                turn.wait(for: chunk)
                                for i in 0..<accFloats { sp[i] += ws.acc[i] }
                                turn.done(chunk)
                                self.mergeTimings(ws)
                            }
                        }
                    }
                }
            }
        }
        return (losses.reduce(0, +) / Double(total), unpack(sum, threads: threads))
    }

    /// The accumulator (dW^T blocks, bias sums) in `layout` order, one task per layer (each
    /// writes only its own parameters).
    private func unpack(_ sum: [Float], threads: Int) -> [Float] {
        var grad = [Float](repeating: 0, count: layout.count)
        grad.withUnsafeMutableBufferPointer { gb in
            sum.withUnsafeBufferPointer { sb in
                nonisolated(unsafe) let (g, s) = (gb.baseAddress!, sb.baseAddress!)
                ParallelFor.run(plan.weighted.count, threads: threads) { k in
                    let w = self.plan.weighted[k]
                    let r = self.layout.range(w.node.params[0])
                    let (o, c) = (w.outChannels, w.inChannels)
                    if w.transposed {
                        // Accumulator row c, column t·O + o holds dW[o, c, t].
                        for ci in 0..<c {
                            let row = s + w.acc + ci * w.ldb
                            for t in 0..<4 { for oc in 0..<o { g[r.lowerBound + (oc * c + ci) * 4 + t] += row[t * o + oc] } }
                        }
                    } else {
                        let taps = c * w.kh * w.kw
                        for t in 0..<taps {
                            let row = s + w.acc + t * w.ldb
                            for oc in 0..<o { g[r.lowerBound + oc * taps + t] += row[oc] }
                        }
                    }
                    if let b = w.bias {
                        let rb = self.layout.range(w.node.params[1])
                        for oc in 0..<o { g[rb.lowerBound + oc] += s[b + oc] }
                    }
                }
            }
        }
        return grad
    }

    private func mergeTimings(_ ws: Workspace) {
        guard collectTimings else { return }
        timingLock.lock(); defer { timingLock.unlock() }
        for i in timingSums.indices { timingSums[i] += ws.timings[i]; ws.timings[i] = 0 }
    }

    /// Per-thread memory: the arena of one sample's maps, the pooling argmaxes, the chunk's
    /// weight-gradient accumulator and small scratch.
    final class Workspace {
        let arena: PlanarBuffer
        let argmax: UnsafeMutablePointer<UInt8>
        let acc: UnsafeMutablePointer<Float>
        let sums: UnsafeMutablePointer<Float>
        let lossRow: UnsafeMutablePointer<Float>
        /// Two output planes of scratch for `LowPassLoss`.
        let lowPass: UnsafeMutablePointer<Float>
        var timings: [Double]
        private let buffers: [BufferSpec]

        init(_ t: GraphTrainer) {
            let p = t.plan
            arena = PlanarBuffer(arenaOf: p.arenaFloats)
            buffers = p.buffers
            argmax = .allocate(capacity: max(1, p.argmaxBytes))
            argmax.initialize(repeating: 0, count: max(1, p.argmaxBytes))
            acc = .allocate(capacity: max(1, p.accFloats))
            acc.initialize(repeating: 0, count: max(1, p.accFloats))
            sums = .allocate(capacity: p.maxChannels)
            sums.initialize(repeating: 0, count: p.maxChannels)
            lossRow = .allocate(capacity: t.outputWidth)
            lossRow.initialize(repeating: 0, count: t.outputWidth)
            lowPass = .allocate(capacity: 3 * t.outputHeight * t.outputWidth)
            lowPass.initialize(repeating: 0, count: 3 * t.outputHeight * t.outputWidth)
            timings = [Double](repeating: 0, count: p.forward.count + 3 * p.backward.count)
        }

        deinit {
            argmax.deallocate()
            acc.deallocate()
            sums.deallocate()
            lossRow.deallocate()
            lowPass.deallocate()
        }

        @inline(__always)
        func view(_ s: Slot) -> PlanarView {
            let b = buffers[s.buffer]
            var l = b.layout
            l.channels = s.channels
            return PlanarView(base: arena.storage + b.offset + b.layout.origin + s.channelOffset * b.layout.planeStride, layout: l, owner: arena)
        }

        @inline(__always)
        func raw(_ buffer: Int) -> UnsafeMutablePointer<Float> { arena.storage + buffers[buffer].offset }

        func clearFrames(_ list: [Int]) {
            for b in list {
                let spec = buffers[b]
                view(Slot(buffer: b, channelOffset: 0, channels: spec.layout.channels)).clearMargins()
            }
        }
    }

    final class WorkspacePool: @unchecked Sendable {
        private var free: [Workspace] = []
        private let lock = NSLock()
        func take(_ t: GraphTrainer) -> Workspace {
            lock.lock()
            if let w = free.popLast() { lock.unlock(); return w }
            lock.unlock()
            return Workspace(t)
        }
        func give(_ w: Workspace) { lock.lock(); free.append(w); lock.unlock() }
    }

    /// Lets chunks add to a shared sum strictly in index order.
    final class OrderedTurn: @unchecked Sendable {
        private var next = 0
        private let condition = NSCondition()
        func wait(for i: Int) {
            condition.lock()
            while next != i { condition.wait() }
            condition.unlock()
        }
        func done(_ i: Int) {
            condition.lock()
            next = i + 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Runs the forward steps on one sample (CHW) in `ws`.
    func forward(_ sample: UnsafePointer<Float>, sample n: Int, count: Int, fills: UnsafePointer<Float>?, _ ws: Workspace) {
        let isa = self.isa
        ws.clearFrames(plan.frames[0])
        let iv = ws.view(plan.input)
        let (h, w) = (inputHeight, inputWidth)
        for c in 0..<iv.channels { for y in 0..<h { iv.pointer(c, y, 0).update(from: sample + (c * h + y) * w, count: w) } }
        var lastTime = -1
        var fill = 0
        let timed = collectTimings
        for (i, f) in plan.forward.enumerated() {
            if f.time != lastTime { ws.clearFrames(plan.frames[f.time + 1]); lastTime = f.time }
            let start = timed ? monotonicSeconds() : 0
            switch f.step {
            case let .conv(x, y, weight, padding, act):
                let yv = ws.view(y)
                if let wg = winogradForward[weight] {
                    wg.run(ws.view(x), yv, activation: act, isa: isa, tileRows: 0..<(yv.height + wg.tileSize - 1) / wg.tileSize)
                } else {
                    directConv(ws.view(x), yv, forwardWeights[weight], padding: padding, activation: act)
                }
            case let .pool(x, y, argmax):
                GraphTrainer.maxpoolForward(ws.view(x), ws.view(y), ws.argmax + argmax)
            case let .convTranspose(x, y, weight):
                FastOps.convTranspose2x2(ws.view(x), ws.view(y), forwardWeights[weight], isa: isa)
            case let .activation(x, y, act):
                FastOps.activation(ws.view(x), ws.view(y), act)
            case let .fill(y, _, _):
                FastOps.fill(ws.view(y), value: fills![fill * count + n])
                fill += 1
            case let .copy(x, y):
                FastOps.copy(ws.view(x), ws.view(y))
            }
            if timed { ws.timings[i] += monotonicSeconds() - start }
        }
    }

    /// Forward and backward of one sample; adds its weight and bias gradients to `ws.acc` and
    /// returns its loss sum.
    private func sampleGradient(_ x: UnsafePointer<Float>, _ target: UnsafePointer<Float>, sample n: Int, count: Int,
                                fills: UnsafePointer<Float>?, loss: Loss, total: Int, weight: Float = 1, _ ws: Workspace) -> Double {
        forward(x, sample: n, count: count, fills: fills, ws)
        ws.clearFrames(plan.frames[plan.lossTime + 1])
        let yv = ws.view(plan.output)
        let gv = plan.outputGradient.map { ws.view($0) }
        var l = 0.0
        let (oh, ow) = (outputHeight, outputWidth)
        for c in 0..<yv.channels { for y in 0..<yv.height {
            let g = gv?.pointer(c, y, 0) ?? ws.lossRow
            l += loss.accumulate(yv.pointer(c, y, 0), target + (c * oh + y) * ow, ow, total: total, grad: g)
            if weight != 1 { for i in 0..<ow { g[i] *= weight } }
        } }
        if let lp = lowPassLoss, lp.weight > 0 {
            let plane = oh * ow
            let (d, f, back) = (ws.lowPass, ws.lowPass + plane, ws.lowPass + 2 * plane)
            for c in 0..<yv.channels {
                for y in 0..<oh {
                    let yr = yv.pointer(c, y, 0), tr = target + (c * oh + y) * ow
                    for x in 0..<ow { d[y * ow + x] = yr[x] - tr[x] }
                }
                l += lp.accumulate(difference: d, filtered: f, back: back, height: oh, width: ow)
                guard let gv else { continue }
                let scale = lp.weight * weight / Float(total)
                for y in 0..<oh {
                    let g = gv.pointer(c, y, 0)
                    for x in 0..<ow { g[x] += scale * back[y * ow + x] }
                }
            }
        }
        backward(ws)
        return weight == 1 ? l : l * Double(weight)
    }
}
