import Imaging
import Foundation
import Kernels
import ModelFormat
import Runtime

/// Losses over a batch of network outputs and targets (mean over every pixel of every sample).
public enum Loss: String, Sendable, CaseIterable {
    case mse
    case l1

    /// Adds the loss terms of `n` values to the returned sum and writes dL/dy (already divided by
    /// `total`, the batch's pixel count) into `grad`.
    @inline(__always)
    func accumulate(_ y: UnsafePointer<Float>, _ t: UnsafePointer<Float>, _ n: Int, total: Int,
                    grad: UnsafeMutablePointer<Float>) -> Double {
        var s = 0.0
        let inv = 1 / Float(total)
        switch self {
        case .mse:
            for i in 0..<n {
                let d = y[i] - t[i]
                s += Double(d * d)
                grad[i] = 2 * d * inv
            }
        case .l1:
            for i in 0..<n {
                let d = y[i] - t[i]
                s += Double(abs(d))
                grad[i] = d > 0 ? inv : (d < 0 ? -inv : 0)
            }
        }
        return s
    }
}

/// Training of networks that are chains of 'valid' convolutions, each optionally followed by a
/// ReLU (the Flamary 3-CNN and 1-CNN), on the fast kernels: forward with the direct-convolution
/// micro-kernels, data gradients as 'full' convolutions with the flipped, transposed weights
/// through the same kernels, weight gradients with `WeightGradient`.
///
/// Training patches are small (32 pixels wide, outputs 23, 18 and 14 wide for the 3-CNN), so one
/// image per call would leave most vector lanes idle (18 pixels in two 16-lane vectors). A batch
/// is cut instead into groups of at most `maxGroup` samples (sizes as equal as possible, fixed
/// by the batch size alone) whose feature maps are interleaved pixel by pixel: element
/// (c, y, x * g + n) is pixel (y, x) of sample n, and the kernels step g floats between
/// horizontal taps (`FastOps.conv2d(tapStep:)`), so every vector holds real pixels. Each group
/// runs forward and backward on one thread, in buffers of its own (which stay in that core's
/// caches; splitting a group's layers between threads made every kernel 20% slower from the
/// traffic between cores, and the barriers left cores idle), into an accumulator of its own;
/// the groups' gradients are summed in group order, so results are bitwise independent of the
/// thread count.
///
/// Layers with 6x6 kernels and at least 16 input and output channels (the 3-CNN's conv2, 84% of
/// its FLOPs) run their forward pass and data gradient in training as F(3x3,6x6) Winograd
/// convolutions on the runtime's `WinogradConv` (5.1x fewer multiplications): the group's
/// samples are laid side by side in one planar map (sample n's columns from n * inSize), so the
/// tiles of a row run across all of them; forward, the output columns between two samples are
/// computed and dropped; the data gradient's 'full' correlation needs no waste, since each
/// sample's zero padding is the gap before the next one. `predict` stays direct (the bits of
/// `GraphTrainer` and the runtime's direct path).
public final class ConvChainTrainer: @unchecked Sendable {
    public struct Layer: Sendable {
        public let inChannels: Int, outChannels: Int, kernel: Int
        public let relu: Bool
        public let weight: String, bias: String?
        public let inSize: Int, outSize: Int
    }

    public let layers: [Layer]
    public let layout: ParameterLayout
    public let inputSize: Int
    public let outputSize: Int
    public let isa: KernelISA
    /// The most samples interleaved in one group.
    public static let maxGroup = 8

    /// Per layer, the Winograd variant its training forward pass and data gradient run under
    /// (nil: direct); see `winogradVariant`.
    public let winogradVariants: [WinogradVariant?]
    private var forwardWeights: [PackedConv] = []
    private var backwardWeights: [PackedConv?] = []
    private var winogradForward: [WinogradConv?] = []
    private var winogradBackward: [WinogradConv?] = []
    /// Per layer after the first, its data gradient's OIHW kernel (flipped, in and out swapped).
    private var flippedWeights: [UnsafeMutablePointer<Float>?] = []
    private var workspaces: [Int: [Workspace]] = [:]
    private let workspaceLock = NSLock()

    /// nil if `model` is not a chain of valid convolutions (+ ReLU) on a single input.
    /// `winograd`: layers `winogradVariant` accepts train in the Winograd domain;
    /// ASTROCNN_TRAIN_CONV=direct turns it off (for comparisons).
    public init?(model: Model, inputSize: Int, isa: KernelISA = .best,
                 winograd: Bool = ProcessInfo.processInfo.environment["ASTROCNN_TRAIN_CONV"] != "direct") {
        let g = model.graph
        guard g.inputs.count == 1, g.outputs.count == 1 else { return nil }
        var prev = g.inputs[0].name
        var channels = g.inputs[0].channels
        var size = inputSize
        var ls: [Layer] = []
        var i = 0
        let nodes = g.nodes
        while i < nodes.count {
            let n = nodes[i]
            guard n.op == .conv2d, n.inputs == [prev], n.padding == .valid, let s = model.tensors[n.params[0]]?.shape,
                  s[1] == channels, s[2] == s[3] else { return nil }
            var relu = false
            var out = n.output
            if i + 1 < nodes.count, nodes[i + 1].op == .relu, nodes[i + 1].inputs == [n.output] {
                relu = true
                out = nodes[i + 1].output
                i += 1
            }
            let o = size - s[2] + 1
            guard o > 0 else { return nil }
            ls.append(Layer(inChannels: channels, outChannels: s[0], kernel: s[2], relu: relu, weight: n.params[0],
                            bias: n.params.count > 1 ? n.params[1] : nil, inSize: size, outSize: o))
            (prev, channels, size) = (out, s[0], o)
            i += 1
        }
        guard prev == g.outputs[0], !ls.isEmpty else { return nil }
        layers = ls
        layout = ParameterLayout(model: model)
        self.inputSize = inputSize
        outputSize = size
        self.isa = isa
        winogradVariants = ls.map { winograd ? ConvChainTrainer.winogradVariant(kernel: $0.kernel, inChannels: $0.inChannels, outChannels: $0.outChannels) : nil }
    }

    /// F(3x3,6x6) for 6x6 layers with at least 16 input and output channels, both multiples of 4
    /// (the data gradient is a convolution with in and out swapped); nil (direct) otherwise.
    /// Measured on the 3-CNN's conv2 (64 -> 16 channels, 23x23 -> 18x18 maps, groups of 6-8
    /// samples); other kernel sizes were not measured here and stay direct.
    public static func winogradVariant(kernel: Int, inChannels c: Int, outChannels o: Int) -> WinogradVariant? {
        kernel == 6 && c >= 16 && o >= 16 && c % 4 == 0 && o % 4 == 0 ? .f3x6 : nil
    }

    deinit { for t in flippedWeights { t?.deallocate() } }

    /// Output channels of the last layer (1 for the Flamary networks).
    public var outputChannels: Int { layers.last!.outChannels }

    /// The sizes of the groups a batch of `count` samples is cut into: ceil(count / maxGroup)
    /// groups, made even when there are several (so two cores share them equally), whose sizes
    /// differ by at most one (the larger ones first): 50 samples run as 7, 7 and six groups of 6. They
    /// depend on the batch size only, never on the thread count.
    public static func groupSizes(_ count: Int) -> [Int] {
        var groups = (count + maxGroup - 1) / maxGroup
        if groups == 0 { return [] }
        if groups > 1 && groups % 2 == 1 && groups < count { groups += 1 }
        let base = count / groups, extra = count % groups
        return (0..<groups).map { $0 < extra ? base + 1 : base }
    }

    /// Loads parameters (flat, `layout` order) into the packed forward and backward weights and
    /// the Winograd layers' transformed matrices, rewritten in place after the first call (a
    /// training step allocates nothing). Must not run during `lossAndGradient` or `predict`.
    public func setParameters(_ p: [Float]) {
        precondition(p.count == layout.count)
        if forwardWeights.isEmpty {
            for (idx, l) in layers.enumerated() {
                let (o, c, k) = (l.outChannels, l.inChannels, l.kernel)
                forwardWeights.append(PackedConv(zeroedOutChannels: o, inChannels: c, kh: k, kw: k))
                backwardWeights.append(idx == 0 ? nil : PackedConv(zeroedOutChannels: c, inChannels: o, kh: k, kw: k))
                flippedWeights.append(idx == 0 ? nil : UnsafeMutablePointer<Float>.allocate(capacity: o * c * k * k))
                winogradForward.append(winogradVariants[idx].map { WinogradConv(outChannels: o, inChannels: c, variant: $0, padding: .valid) })
                winogradBackward.append(idx == 0 ? nil : winogradVariants[idx].map {
                    WinogradConv(outChannels: c, inChannels: o, variant: $0, padding: .valid)
                })
            }
        }
        p.withUnsafeBufferPointer { pb in
            let base = pb.baseAddress!
            for (idx, l) in layers.enumerated() {
                let (o, c, k) = (l.outChannels, l.inChannels, l.kernel)
                let w = base + layout.range(l.weight).lowerBound
                let b = l.bias.map { base + layout.range($0).lowerBound }
                ConvChainTrainer.pack(w, bias: b, into: forwardWeights[idx])
                winogradForward[idx]?.setWeights(w, bias: b)
                guard let t = flippedWeights[idx], let back = backwardWeights[idx] else { continue }
                // The data gradient's kernel: flipped, in and out swapped (OIHW, O = c, I = o).
                for oc in 0..<o { for ic in 0..<c { for u in 0..<k { for v in 0..<k {
                    t[((ic * o + oc) * k + u) * k + v] = w[((oc * c + ic) * k + (k - 1 - u)) * k + (k - 1 - v)]
                } } } }
                ConvChainTrainer.pack(UnsafePointer(t), bias: nil, into: back)
                winogradBackward[idx]?.setWeights(t, bias: nil)
            }
        }
    }

    /// OIHW weights and a bias (nil: zero) into `PackedConv`'s layout, in place.
    private static func pack(_ w: UnsafePointer<Float>, bias: UnsafePointer<Float>?, into pc: PackedConv) {
        let taps = pc.inChannels * pc.kh * pc.kw
        for o in 0..<pc.outChannels {
            let s = w + o * taps, d = pc.weights + (o / 4) * taps * 4 + o % 4
            for t in 0..<taps { d[4 * t] = s[t] }
            pc.bias[o] = bias?[o] ?? 0
        }
    }

    /// The layout of a map of `channels` x `height` x `pixels` pixels of g interleaved samples
    /// (rows of pixels * g floats, element (c, y, x * g + n) is pixel x of sample n) with a zero
    /// frame of `margin` pixels: `margin` rows above and below, margin * g floats left and right.
    static func interleavedLayout(channels: Int, height: Int, pixels: Int, group g: Int, margin m: Int) -> PlanarLayout {
        var l = PlanarLayout(channels: channels, height: height, width: pixels * g, margin: m * g)
        l.planeStride = l.rowStride * (height + 2 * m)
        l.origin = m * l.rowStride + m * g
        l.allocation = l.planeStride * channels + 2 * l.rowStride + 64
        return l
    }

    /// Buffers for one group of `g` samples: interleaved activations, output gradients (with
    /// the zero frame the next data-gradient convolution reads as padding), the targets and dY^T
    /// (pixel-major).
    final class Workspace {
        let g: Int
        let input: PlanarBuffer
        let acts: [PlanarBuffer]
        let grads: [PlanarBuffer]
        let targets: PlanarBuffer
        let ldb: [Int]
        let dYT: [UnsafeMutablePointer<Float>]
        let dYTCount: [Int]
        /// Per layer, the weight-gradient kernel's tap offsets into that layer's input.
        let tapOffsets: [UnsafeMutablePointer<Int>]
        let tapCount: [Int]
        /// Per layer, the output rows of each weight-gradient row block (a block's dY^T is at most
        /// 512 KiB, so it stays in L2 while every tap block reads it).
        let rowBlocks: [[Range<Int>]]
        /// Per Winograd layer, its planar maps with the group's samples side by side (sample n's
        /// columns from n * inSize): the forward's input and output, the data gradient's input
        /// (dY with a zero frame of kernel - 1 rows above and below and kernel - 1 columns before
        /// each sample and after the last: never written, so zero) and output.
        let sideBySide: [(forwardIn: PlanarBuffer, forwardOut: PlanarBuffer, backwardIn: PlanarBuffer, backwardOut: PlanarBuffer)?]
        /// For `firstLayerGradient`: one vector width of channels of one row of the first layer's
        /// output gradient, and its channel sums.
        let firstRows: UnsafeMutablePointer<Float>
        let firstSums: UnsafeMutablePointer<Float>

        init(_ t: ConvChainTrainer, group g: Int) {
            self.g = g
            let ls = t.layers
            input = PlanarBuffer(interleavedLayout(channels: ls[0].inChannels, height: t.inputSize, pixels: t.inputSize, group: g, margin: 0))
            acts = ls.map { PlanarBuffer(interleavedLayout(channels: $0.outChannels, height: $0.outSize, pixels: $0.outSize, group: g, margin: 0)) }
            grads = ls.enumerated().map { (i, l) in
                PlanarBuffer(interleavedLayout(channels: l.outChannels, height: l.outSize, pixels: l.outSize, group: g,
                                               margin: i == 0 ? 0 : l.kernel - 1))
            }
            let last = ls[ls.count - 1]
            targets = PlanarBuffer(interleavedLayout(channels: last.outChannels, height: last.outSize, pixels: last.outSize, group: g, margin: 0))
            let ldb = ls.map { WeightGradient.paddedChannels($0.outChannels, isa: t.isa) }
            self.ldb = ldb
            let inputs = [input.layout] + acts.dropLast().map { $0.layout }
            let offsets = zip(inputs, ls).map { WeightGradient.tapOffsets($0, kh: $1.kernel, kw: $1.kernel, tapStep: g) }
            tapCount = offsets.map(\.count)
            tapOffsets = offsets.map { o in
                let p = UnsafeMutablePointer<Int>.allocate(capacity: o.count)
                p.initialize(from: o, count: o.count)
                return p
            }
            dYTCount = zip(ls, ldb).map { $0.outChannels < 4 ? 1 : $0.outSize * $0.outSize * g * $1 }   // none for layers of < 4 channels
            let rowBlocks = zip(ls, ldb).map { (l, ldb) in
                let rowBytes = l.outSize * g * ldb * MemoryLayout<Float>.stride
                let rows = max(1, min(l.outSize, (512 << 10) / rowBytes))
                return stride(from: 0, to: l.outSize, by: rows).map { $0..<min(l.outSize, $0 + rows) }
            }
            self.rowBlocks = rowBlocks
            func zeroed(_ n: Int) -> UnsafeMutablePointer<Float> {
                let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
                p.initialize(repeating: 0, count: n)
                return p
            }
            dYT = dYTCount.map(zeroed)
            firstRows = zeroed(t.isa.vectorWidth * ls[0].outSize * g)
            firstSums = zeroed(ls[0].outChannels)
            sideBySide = zip(ls, t.winogradVariants).map { l, v in
                guard v != nil else { return nil }
                let (s, k) = (l.inSize, l.kernel)
                return (PlanarBuffer(PlanarLayout(channels: l.inChannels, height: s, width: g * s)),
                        PlanarBuffer(PlanarLayout(channels: l.outChannels, height: l.outSize, width: g * s - (k - 1))),
                        PlanarBuffer(PlanarLayout(channels: l.outChannels, height: l.outSize + 2 * (k - 1), width: g * s + (k - 1))),
                        PlanarBuffer(PlanarLayout(channels: l.inChannels, height: s, width: g * s)))
            }
        }

        deinit {
            for p in dYT { p.deallocate() }
            firstRows.deallocate()
            firstSums.deallocate()
            for p in tapOffsets { p.deallocate() }
        }
    }

    /// A free workspace for groups of `g` (made on first need; kept for later batches).
    private func takeWorkspace(_ g: Int) -> Workspace {
        workspaceLock.lock()
        if let w = workspaces[g]?.popLast() { workspaceLock.unlock(); return w }
        workspaceLock.unlock()
        return Workspace(self, group: g)
    }

    private func giveWorkspace(_ w: Workspace) {
        workspaceLock.lock()
        workspaces[w.g, default: []].append(w)
        workspaceLock.unlock()
    }

    /// Copies g samples (channels x size x size floats each, CHW) into an interleaved view.
    private static func interleave(_ src: UnsafePointer<Float>, into v: PlanarView, channels: Int, size s: Int, group g: Int) {
        let stride = channels * s * s
        for c in 0..<channels { for y in 0..<s {
            let row = v.pointer(c, y, 0)
            for n in 0..<g {
                let sp = src + n * stride + (c * s + y) * s
                for x in 0..<s { row[x * g + n] = sp[x] }
            }
        } }
    }

    /// Runs the network on the group's samples (CHW each, consecutive) in `ws`; `winograd`: the
    /// Winograd layers run in the Winograd domain (training), else every layer direct.
    private func forward(_ samples: UnsafePointer<Float>, _ ws: Workspace, winograd: Bool) {
        let iv = ws.input.view()
        ConvChainTrainer.interleave(samples, into: iv, channels: layers[0].inChannels, size: inputSize, group: ws.g)
        var x = iv
        for (i, l) in layers.enumerated() {
            let out = ws.acts[i].view()
            let activation: Activation = l.relu ? .relu : .none
            if winograd, let wg = winogradForward[i], let sb = ws.sideBySide[i] {
                let (pin, pout) = (sb.forwardIn.view(), sb.forwardOut.view())
                ConvChainTrainer.sideBySide(x, into: pin, stride: l.inSize, pixels: l.inSize, group: ws.g, offset: 0)
                wg.run(pin, pout, activation: activation, isa: isa, tileRows: 0..<((l.outSize + wg.tileSize - 1) / wg.tileSize))
                ConvChainTrainer.interleaveSideBySide(pout, stride: l.inSize, into: out, pixels: l.outSize, group: ws.g)
            } else {
                FastOps.conv2d(x, out, forwardWeights[i], padding: .valid, activation: activation, isa: isa, tapStep: ws.g)
            }
            x = out
        }
    }

    /// Interleaved (c, y, x * g + n) -> side by side (c, y + offset, n * stride + offset + x), for
    /// x < pixels.
    private static func sideBySide(_ src: PlanarView, into dst: PlanarView, stride: Int, pixels: Int, group g: Int, offset: Int) {
        for c in 0..<src.channels { for y in 0..<src.height {
            let s = src.pointer(c, y, 0), d = dst.pointer(c, y + offset, offset)
            for n in 0..<g {
                let dn = d + n * stride
                for x in 0..<pixels { dn[x] = s[x * g + n] }
            }
        } }
    }

    /// Side by side (c, y, n * stride + x) -> interleaved (c, y, x * g + n), for x < pixels.
    private static func interleaveSideBySide(_ src: PlanarView, stride: Int, into dst: PlanarView, pixels: Int, group g: Int) {
        for c in 0..<dst.channels { for y in 0..<dst.height {
            let s = src.pointer(c, y, 0), d = dst.pointer(c, y, 0)
            for n in 0..<g {
                let sn = s + n * stride
                for x in 0..<pixels { d[x * g + n] = sn[x] }
            }
        } }
    }

    /// Network outputs for `count` samples (outputChannels x outputSize^2 floats each).
    public func predict(_ inputs: [Float], count: Int, threads: Int) -> [Float] {
        let inStride = layers[0].inChannels * inputSize * inputSize
        let ow = outputSize
        let outStride = outputChannels * ow * ow
        var out = [Float](repeating: 0, count: count * outStride)
        let sizes = ConvChainTrainer.groupSizes(count)
        let starts = sizes.indices.map { sizes[0..<$0].reduce(0, +) }
        inputs.withUnsafeBufferPointer { ib in
            out.withUnsafeMutableBufferPointer { ob in
                nonisolated(unsafe) let ip = ib.baseAddress!, op = ob.baseAddress!
                ParallelFor.run(sizes.count, threads: threads) { gi in
                    let (g, start) = (sizes[gi], starts[gi])
                    let ws = self.takeWorkspace(g)
                    defer { self.giveWorkspace(ws) }
                    self.forward(ip + start * inStride, ws, winograd: false)
                    let v = ws.acts[self.layers.count - 1].view()
                    for c in 0..<v.channels { for y in 0..<ow {
                        let row = v.pointer(c, y, 0)
                        for n in 0..<g {
                            let dst = op + (start + n) * outStride + (c * ow + y) * ow
                            for x in 0..<ow { dst[x] = row[x * g + n] }
                        }
                    } }
                }
            }
        }
        return out
    }

    /// Loss and dL/dp (flat, `layout` order) of a batch: `inputs` holds `count` samples,
    /// `targets` their outputSize^2 x outputChannels targets. Each group (`groupSizes`) adds its
    /// weight and bias gradients to an accumulator of its own; they are summed in group order.
    public func lossAndGradient(inputs: [Float], targets: [Float], count: Int, loss: Loss, threads: Int)
        -> (loss: Double, gradient: [Float]) {
        let accSizes = layers.map { l in
            WeightGradient.paddedTaps(l.inChannels * l.kernel * l.kernel) * WeightGradient.paddedChannels(l.outChannels, isa: isa)
        }
        // Each layer's block in a group's accumulator: dW^T (accSizes[i]) then the bias sums.
        let accOffsets: [Int] = layers.indices.map { i in (0..<i).reduce(0) { $0 + accSizes[$1] + layers[$1].outChannels } }
        let perGroup = accSizes.reduce(0, +) + layers.reduce(0) { $0 + $1.outChannels }
        let sizes = ConvChainTrainer.groupSizes(count)
        let starts = sizes.indices.map { sizes[0..<$0].reduce(0, +) }
        var acc = [Float](repeating: 0, count: sizes.count * perGroup)
        var losses = [Double](repeating: 0, count: sizes.count)
        let inStride = layers[0].inChannels * inputSize * inputSize
        let outStride = outputChannels * outputSize * outputSize
        let total = count * outStride
        inputs.withUnsafeBufferPointer { ib in
            targets.withUnsafeBufferPointer { tb in
                acc.withUnsafeMutableBufferPointer { ab in
                    losses.withUnsafeMutableBufferPointer { lb in
                        nonisolated(unsafe) let ip = ib.baseAddress!, tp = tb.baseAddress!, ap = ab.baseAddress!, lp = lb.baseAddress!
                        ParallelFor.run(sizes.count, threads: threads) { gi in
                            let ws = self.takeWorkspace(sizes[gi])
                            defer { self.giveWorkspace(ws) }
                            lp[gi] = self.groupGradient(ip + starts[gi] * inStride, tp + starts[gi] * outStride, loss, total, ws,
                                                        ap + gi * perGroup, accSizes, accOffsets)
                        }
                    }
                }
            }
        }
        // Sum the groups in order, then unpack dW^T into OIHW.
        var sum = [Float](repeating: 0, count: perGroup)
        for gi in 0..<sizes.count { for i in 0..<perGroup { sum[i] += acc[gi * perGroup + i] } }
        var grad = [Float](repeating: 0, count: layout.count)
        var off = 0
        for (li, l) in layers.enumerated() {
            let ldb = WeightGradient.paddedChannels(l.outChannels, isa: isa)
            let r = layout.range(l.weight)
            let taps = l.inChannels * l.kernel * l.kernel
            for o in 0..<l.outChannels { for t in 0..<taps { grad[r.lowerBound + o * taps + t] = sum[off + t * ldb + o] } }
            off += accSizes[li]
            if let b = l.bias {
                let rb = layout.range(b)
                for o in 0..<l.outChannels { grad[rb.lowerBound + o] = sum[off + o] }
            }
            off += l.outChannels
        }
        return (losses.reduce(0, +) / Double(total), grad)
    }

    /// Forward and backward of one group; adds its weight and bias gradients to `acc`.
    private func groupGradient(_ x: UnsafePointer<Float>, _ target: UnsafePointer<Float>, _ loss: Loss, _ total: Int,
                               _ ws: Workspace, _ acc: UnsafeMutablePointer<Float>, _ accSizes: [Int], _ accOffsets: [Int]) -> Double {
        forward(x, ws, winograd: true)
        let g = ws.g
        let last = layers.count - 1
        // dL/dy of the output (interleaved like it), masked by its ReLU.
        let yv = ws.acts[last].view(), tv = ws.targets.view(), gv = ws.grads[last].view()
        ConvChainTrainer.interleave(target, into: tv, channels: outputChannels, size: outputSize, group: g)
        var l = 0.0
        for c in 0..<yv.channels { for y in 0..<yv.height {
            l += loss.accumulate(yv.pointer(c, y, 0), tv.pointer(c, y, 0), yv.width, total: total, grad: gv.pointer(c, y, 0))
        } }
        if layers[last].relu { ConvChainTrainer.mask(gv, by: yv) }
        // Set when the second layer's Winograd data gradient has already made the first layer's
        // dY^T and bias sums (`firstLayerGradient`).
        var firstDone = false
        for i in stride(from: last, through: 0, by: -1) {
            let li = layers[i]
            let dy = ws.grads[i].view()
            let ldb = ws.ldb[i], width = dy.width
            // dY^T (pixel-major) for the weight gradient (layers of fewer than 4 channels read dY
            // in place instead); the bias gradient.
            let dyt = ws.dYT[i]
            let singles = li.outChannels < 4
            let bias = acc + accOffsets[i] + accSizes[i]
            if !(i == 0 && firstDone) {
                for y in 0..<li.outSize where !singles {
                    WeightGradient.transpose(dy.pointer(0, y, 0), srcStride: dy.layout.planeStride, rows: li.outChannels, cols: width,
                                             into: dyt + y * width * ldb, dstStride: ldb, isa: isa)
                }
                for c in 0..<li.outChannels { bias[c] += ConvChainTrainer.channelSum(dy, c) }
            }
            // dW^T by row blocks (each block's dY^T stays in L2 while every tap reads it); the
            // rows of each tap are summed in order, as in one call over the whole map.
            let xin = i == 0 ? ws.input.view() : ws.acts[i - 1].view()
            let offsets = UnsafePointer(ws.tapOffsets[i])
            let a = acc + accOffsets[i]
            if singles {
                for c in 0..<li.outChannels {
                    WeightGradient.accumulateSingleChannel(input: UnsafePointer(xin.base), rowStride: xin.rowStride,
                                                           offsets: UnsafeBufferPointer(start: offsets, count: ws.tapCount[i]),
                                                           outHeight: li.outSize, outWidth: width, dY: dy.pointer(c, 0, 0),
                                                           dYRow: dy.rowStride, acc: a + c, accStride: ldb, isa: isa)
                }
            }
            for rows in ws.rowBlocks[i] where !singles {
                WeightGradient.accumulate(input: UnsafePointer(xin.base + rows.lowerBound * xin.rowStride), rowStride: xin.rowStride,
                                          offsets: UnsafeBufferPointer(start: offsets, count: ws.tapCount[i]),
                                          outHeight: rows.count, outWidth: width, dYT: dyt + rows.lowerBound * width * ldb,
                                          ldb: ldb, acc: a, isa: isa)
            }
            if i > 0 {
                // dX = full convolution of dY with the flipped, transposed kernel, masked by the
                // previous layer's ReLU.
                let k = li.kernel
                let dst = ws.grads[i - 1].view()
                if let wg = winogradBackward[i], let sb = ws.sideBySide[i] {
                    let (pin, pout) = (sb.backwardIn.view(), sb.backwardOut.view())
                    ConvChainTrainer.sideBySide(dy, into: pin, stride: li.inSize, pixels: li.outSize, group: g, offset: k - 1)
                    wg.run(pin, pout, activation: .none, isa: isa, tileRows: 0..<((li.inSize + wg.tileSize - 1) / wg.tileSize))
                    if i == 1 && layers[0].outChannels >= 4 {
                        // The first layer needs only dY^T and its sums: made from here, the
                        // interleaved map is not written.
                        firstLayerGradient(pout, stride: li.inSize, ws: ws, bias: acc + accOffsets[0] + accSizes[0])
                        firstDone = true
                        continue
                    }
                    ConvChainTrainer.interleaveSideBySide(pout, stride: li.inSize, into: dst, pixels: li.inSize, group: g)
                } else {
                    var padded = dy.layout
                    padded.height += 2 * (k - 1); padded.width += 2 * (k - 1) * g; padded.margin = 0
                    let src = PlanarView(base: dy.pointer(0, -(k - 1), -(k - 1) * g), layout: padded, owner: ws.grads[i])
                    FastOps.conv2d(src, dst, backwardWeights[i]!, padding: .valid, activation: .none, isa: isa, tapStep: g)
                }
                if layers[i - 1].relu { ConvChainTrainer.mask(dst, by: ws.acts[i - 1].view()) }
            }
        }
        return l
    }

    /// The first layer's output gradient from the second layer's side-by-side data gradient
    /// `src` (sample n's column x at n * stride + x), masked by the first layer's ReLU, written
    /// straight to its pixel-major copy dY^T (`ws.dYT[0]`), its channel sums added to `bias`:
    /// row by row, a vector width of channels at a time through `ws.firstRows` (what
    /// `interleaveSideBySide`, `mask`, the transpose and `channelSum` do over the whole
    /// interleaved map, in one pass that stays in cache). Each channel's sum runs over the rows
    /// in order (16 lanes per row, then the row's tail): the same bits on any thread count.
    private func firstLayerGradient(_ src: PlanarView, stride: Int, ws: Workspace, bias: UnsafeMutablePointer<Float>) {
        let l0 = layers[0], g = ws.g
        let (pixels, channels) = (l0.outSize, l0.outChannels)
        let width = pixels * g, ldb = ws.ldb[0], vw = isa.vectorWidth
        let y0 = ws.acts[0].view(), dyt = ws.dYT[0], buf = ws.firstRows, sums = ws.firstSums
        sums.update(repeating: 0, count: channels)
        let zero = SIMD16<Float>(repeating: 0)
        for y in 0..<pixels {
            var c0 = 0
            while c0 < channels {
                let cn = min(vw, channels - c0)
                for j in 0..<cn {
                    let c = c0 + j
                    let s = src.pointer(c, y, 0), a = y0.pointer(c, y, 0), d = buf + j * width
                    for n in 0..<g {
                        let sn = s + n * stride
                        for x in 0..<pixels { d[x * g + n] = sn[x] }
                    }
                    var acc = zero
                    var tail: Float = 0
                    var x = 0
                    while x + 16 <= width {
                        let v = UnsafeRawPointer(d + x).loadUnaligned(as: SIMD16<Float>.self)
                        let av = UnsafeRawPointer(a + x).loadUnaligned(as: SIMD16<Float>.self)
                        let m = l0.relu ? v.replacing(with: zero, where: av .<= zero) : v
                        UnsafeMutableRawPointer(d + x).storeBytes(of: m, as: SIMD16<Float>.self)
                        acc += m
                        x += 16
                    }
                    while x < width {
                        if l0.relu && a[x] <= 0 { d[x] = 0 }
                        tail += d[x]
                        x += 1
                    }
                    sums[c] += acc.sum() + tail
                }
                WeightGradient.transpose(buf, srcStride: width, rows: cn, cols: width, into: dyt + y * width * ldb + c0, dstStride: ldb, isa: isa)
                c0 += cn
            }
        }
        for c in 0..<channels { bias[c] += sums[c] }
    }

    /// The sum of one channel of a map, in a fixed order (16 running sums over each row's
    /// vectors, then the rest).
    private static func channelSum(_ v: PlanarView, _ c: Int) -> Float {
        var s = SIMD16<Float>(repeating: 0)
        var tail: Float = 0
        for y in 0..<v.height {
            let p = v.pointer(c, y, 0)
            var x = 0
            while x + 16 <= v.width { s += UnsafeRawPointer(p + x).loadUnaligned(as: SIMD16<Float>.self); x += 16 }
            while x < v.width { tail += p[x]; x += 1 }
        }
        return s.sum() + tail
    }

    /// g = 0 where the ReLU output is 0 (16 at a time, then the rest).
    private static func mask(_ g: PlanarView, by y: PlanarView) {
        let zero = SIMD16<Float>(repeating: 0)
        for c in 0..<g.channels { for r in 0..<g.height {
            let gp = g.pointer(c, r, 0), yp = y.pointer(c, r, 0)
            var x = 0
            while x + 16 <= g.width {
                let yv = UnsafeRawPointer(yp + x).loadUnaligned(as: SIMD16<Float>.self)
                let gv = UnsafeRawPointer(gp + x).loadUnaligned(as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(gp + x).storeBytes(of: gv.replacing(with: zero, where: yv .<= zero), as: SIMD16<Float>.self)
                x += 16
            }
            while x < g.width { if yp[x] <= 0 { gp[x] = 0 }; x += 1 }
        } }
    }
}
