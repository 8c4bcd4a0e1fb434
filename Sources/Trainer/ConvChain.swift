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
/// through the same kernels, weight gradients with `WeightGradient`. One image at a time per
/// thread; a batch is cut into fixed chunks of `chunkSize` samples whose gradients are summed in
/// chunk order, so results are bitwise independent of the thread count.
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
    public static let chunkSize = 2

    private var forwardWeights: [PackedConv] = []
    private var backwardWeights: [PackedConv?] = []
    private let pool = WorkspacePool()

    /// nil if `model` is not a chain of valid convolutions (+ ReLU) on a single input.
    public init?(model: Model, inputSize: Int, isa: KernelISA = .best) {
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
    }

    /// Output channels of the last layer (1 for the Flamary networks).
    public var outputChannels: Int { layers.last!.outChannels }

    /// Loads parameters (flat, `layout` order) into the packed forward and backward weights.
    public func setParameters(_ p: [Float]) {
        forwardWeights = layers.map { l in
            PackedConv(weight: Array(p[layout.range(l.weight)]), bias: l.bias.map { Array(p[layout.range($0)]) },
                       outChannels: l.outChannels, inChannels: l.inChannels, kh: l.kernel, kw: l.kernel)
        }
        backwardWeights = layers.enumerated().map { (idx, l) in
            if idx == 0 { return nil }
            let w = p[layout.range(l.weight)]
            let base = w.startIndex
            let k = l.kernel
            var t = [Float](repeating: 0, count: w.count)
            for o in 0..<l.outChannels { for c in 0..<l.inChannels { for u in 0..<k { for v in 0..<k {
                t[((c * l.outChannels + o) * k + u) * k + v] = w[base + ((o * l.inChannels + c) * k + (k - 1 - u)) * k + (k - 1 - v)]
            } } } }
            return PackedConv(weight: t, bias: nil, outChannels: l.inChannels, inChannels: l.outChannels, kh: k, kw: k)
        }
    }

    /// Per-thread buffers: activations, gradients (with the margin the next data-gradient
    /// convolution reads as zero padding) and the transposed output gradient.
    final class Workspace {
        let input: PlanarBuffer
        let acts: [PlanarBuffer]
        let grads: [PlanarBuffer]
        let dYT: [UnsafeMutablePointer<Float>]
        let ldb: [Int]
        /// Per layer, the weight-gradient kernel's tap offsets into that layer's input.
        let tapOffsets: [[Int]]

        init(_ t: ConvChainTrainer) {
            input = PlanarBuffer(PlanarLayout(channels: t.layers[0].inChannels, height: t.inputSize, width: t.inputSize))
            acts = t.layers.map { PlanarBuffer(PlanarLayout(channels: $0.outChannels, height: $0.outSize, width: $0.outSize)) }
            grads = t.layers.map { PlanarBuffer(PlanarLayout(channels: $0.outChannels, height: $0.outSize, width: $0.outSize,
                                                             margin: $0.kernel - 1)) }
            ldb = t.layers.map { WeightGradient.paddedChannels($0.outChannels, isa: t.isa) }
            let inputs = [input.layout] + acts.dropLast().map { $0.layout }
            tapOffsets = zip(inputs, t.layers).map { WeightGradient.tapOffsets($0, kh: $1.kernel, kw: $1.kernel) }
            dYT = zip(t.layers, ldb).map { (l, ldb) in
                let n = l.outSize * l.outSize * ldb
                let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
                p.initialize(repeating: 0, count: n)
                return p
            }
        }

        deinit { for p in dYT { p.deallocate() } }
    }

    final class WorkspacePool: @unchecked Sendable {
        private var free: [Workspace] = []
        private let lock = NSLock()
        func take(_ t: ConvChainTrainer) -> Workspace {
            lock.lock()
            if let w = free.popLast() { lock.unlock(); return w }
            lock.unlock()
            return Workspace(t)
        }
        func give(_ w: Workspace) { lock.lock(); free.append(w); lock.unlock() }
    }

    /// Runs the network on one sample (inputSize^2 x inChannels floats, CHW) in `ws`.
    private func forward(_ sample: UnsafePointer<Float>, _ ws: Workspace) {
        let iv = ws.input.view()
        let s = inputSize
        for c in 0..<iv.channels { for y in 0..<s { iv.pointer(c, y, 0).update(from: sample + (c * s + y) * s, count: s) } }
        var x = iv
        for (i, l) in layers.enumerated() {
            let out = ws.acts[i].view()
            FastOps.conv2d(x, out, forwardWeights[i], padding: .valid, activation: l.relu ? .relu : .none, isa: isa)
            x = out
        }
    }

    /// Network outputs for `count` samples (outputChannels x outputSize^2 floats each).
    public func predict(_ inputs: [Float], count: Int, threads: Int) -> [Float] {
        let inStride = layers[0].inChannels * inputSize * inputSize
        let outStride = outputChannels * outputSize * outputSize
        var out = [Float](repeating: 0, count: count * outStride)
        inputs.withUnsafeBufferPointer { ib in
            out.withUnsafeMutableBufferPointer { ob in
                nonisolated(unsafe) let ip = ib.baseAddress!, op = ob.baseAddress!
                ParallelFor.run((count + 7) / 8, threads: threads) { chunk in
                    let ws = self.pool.take(self)
                    defer { self.pool.give(ws) }
                    for n in chunk * 8..<min(count, chunk * 8 + 8) {
                        self.forward(ip + n * inStride, ws)
                        let v = ws.acts.last!.view()
                        for c in 0..<v.channels { for y in 0..<v.height {
                            (op + n * outStride + (c * v.height + y) * v.width).update(from: v.pointer(c, y, 0), count: v.width)
                        } }
                    }
                }
            }
        }
        return out
    }

    /// Loss and dL/dp (flat, `layout` order) of a batch: `inputs` holds `count` samples,
    /// `targets` their outputSize^2 x outputChannels targets.
    public func lossAndGradient(inputs: [Float], targets: [Float], count: Int, loss: Loss, threads: Int)
        -> (loss: Double, gradient: [Float]) {
        let chunks = (count + ConvChainTrainer.chunkSize - 1) / ConvChainTrainer.chunkSize
        let accSizes = layers.map { l in
            WeightGradient.paddedTaps(l.inChannels * l.kernel * l.kernel) * WeightGradient.paddedChannels(l.outChannels, isa: isa)
        }
        let perChunk = accSizes.reduce(0, +) + layers.reduce(0) { $0 + $1.outChannels }
        // Each layer's block in a chunk's accumulator: dW^T (accSizes[i]) then the bias sums.
        let accOffsets: [Int] = layers.indices.map { i in (0..<i).reduce(0) { $0 + accSizes[$1] + layers[$1].outChannels } }
        var acc = [Float](repeating: 0, count: chunks * perChunk)
        var losses = [Double](repeating: 0, count: chunks)
        let inStride = layers[0].inChannels * inputSize * inputSize
        let outStride = outputChannels * outputSize * outputSize
        let total = count * outStride
        inputs.withUnsafeBufferPointer { ib in
            targets.withUnsafeBufferPointer { tb in
                acc.withUnsafeMutableBufferPointer { ab in
                    losses.withUnsafeMutableBufferPointer { lb in
                        nonisolated(unsafe) let ip = ib.baseAddress!, tp = tb.baseAddress!, ap = ab.baseAddress!, lp = lb.baseAddress!
                        ParallelFor.run(chunks, threads: threads) { chunk in
                            let ws = self.pool.take(self)
                            defer { self.pool.give(ws) }
                            let a = ap + chunk * perChunk
                            var l = 0.0
                            for n in chunk * ConvChainTrainer.chunkSize..<min(count, (chunk + 1) * ConvChainTrainer.chunkSize) {
                                l += self.sampleGradient(ip + n * inStride, tp + n * outStride, loss, total, ws, a, accSizes, accOffsets)
                            }
                            lp[chunk] = l
                        }
                    }
                }
            }
        }
        // Reduce the chunks in order, then unpack dW^T into OIHW.
        var sum = [Float](repeating: 0, count: perChunk)
        for c in 0..<chunks { for i in 0..<perChunk { sum[i] += acc[c * perChunk + i] } }
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

    /// Forward and backward of one sample; adds its weight and bias gradients to `acc`.
    private func sampleGradient(_ x: UnsafePointer<Float>, _ target: UnsafePointer<Float>, _ loss: Loss, _ total: Int,
                                _ ws: Workspace, _ acc: UnsafeMutablePointer<Float>, _ accSizes: [Int],
                                _ accOffsets: [Int]) -> Double {
        forward(x, ws)
        let last = layers.count - 1
        // dL/dy of the output, masked by its ReLU.
        let yv = ws.acts[last].view(), gv = ws.grads[last].view()
        var l = 0.0
        let ow = outputSize
        for c in 0..<yv.channels { for y in 0..<yv.height {
            l += loss.accumulate(yv.pointer(c, y, 0), target + (c * ow + y) * ow, ow, total: total, grad: gv.pointer(c, y, 0))
        } }
        if layers[last].relu { mask(gv, by: yv) }
        for i in stride(from: last, through: 0, by: -1) {
            let l = layers[i]
            let g = ws.grads[i].view()
            let ldb = ws.ldb[i]
            // Transpose dY to pixel-major for the weight-gradient kernel; bias gradient on the way.
            let dyt = ws.dYT[i]
            let bias = acc + accOffsets[i] + accSizes[i]
            for c in 0..<l.outChannels {
                var s: Float = 0
                for y in 0..<l.outSize {
                    let row = g.pointer(c, y, 0)
                    for xx in 0..<l.outSize { let v = row[xx]; s += v; dyt[(y * l.outSize + xx) * ldb + c] = v }
                }
                bias[c] += s
            }
            let xin = i == 0 ? ws.input.view() : ws.acts[i - 1].view()
            WeightGradient.accumulate(input: xin, offsets: ws.tapOffsets[i], outHeight: l.outSize, outWidth: l.outSize,
                                      dYT: dyt, ldb: ldb, acc: acc + accOffsets[i], isa: isa)
            if i > 0 {
                // dX = full convolution of dY with the flipped, transposed kernel.
                let k = l.kernel
                var padded = g.layout
                padded.height += 2 * (k - 1); padded.width += 2 * (k - 1); padded.margin = 0
                let src = PlanarView(base: g.pointer(0, -(k - 1), -(k - 1)), layout: padded, owner: ws.grads[i])
                let dst = ws.grads[i - 1].view()
                FastOps.conv2d(src, dst, backwardWeights[i]!, padding: .valid, activation: .none, isa: isa)
                if layers[i - 1].relu { mask(dst, by: ws.acts[i - 1].view()) }
            }
        }
        return l
    }

    /// g = 0 where the ReLU output is 0.
    private func mask(_ g: PlanarView, by y: PlanarView) {
        for c in 0..<g.channels { for r in 0..<g.height {
            let gp = g.pointer(c, r, 0), yp = y.pointer(c, r, 0)
            for x in 0..<g.width where yp[x] <= 0 { gp[x] = 0 }
        } }
    }
}
