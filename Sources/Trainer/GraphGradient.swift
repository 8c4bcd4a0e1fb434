import Imaging
import ModelFormat

/// One image's feature map (CHW) in any floating-point type: Float for training, Double for the
/// finite-difference gradient checks.
public struct Tensor<T: BinaryFloatingPoint>: Equatable {
    public var channels: Int
    public var height: Int
    public var width: Int
    public var data: [T]

    public init(channels: Int, height: Int, width: Int, data: [T]) {
        precondition(data.count == channels * height * width)
        (self.channels, self.height, self.width, self.data) = (channels, height, width, data)
    }

    public init(channels: Int, height: Int, width: Int, repeating v: T = 0) {
        self.init(channels: channels, height: height, width: width, data: [T](repeating: v, count: channels * height * width))
    }

    @inline(__always) public func index(_ c: Int, _ y: Int, _ x: Int) -> Int { (c * height + y) * width + x }
}

/// Forward and backward passes of every op of `.acnn` v1, in plain loops (the trainer's oracle,
/// generic so the gradient checks run in Float64). Conventions as `Kernels.Reference`.
public enum ReferenceGrad {
    public static func conv2d<T>(_ x: Tensor<T>, _ w: [T], _ b: [T]?, out o: Int, kh: Int, kw: Int, padding: Padding) -> Tensor<T> {
        let (pt, pl) = padding == .same ? ((kh - 1) / 2, (kw - 1) / 2) : (0, 0)
        let (oh, ow) = padding == .same ? (x.height, x.width) : (x.height - kh + 1, x.width - kw + 1)
        var y = Tensor<T>(channels: o, height: oh, width: ow)
        for oc in 0..<o {
            for i in 0..<oh { for j in 0..<ow {
                var s: T = b?[oc] ?? 0
                for c in 0..<x.channels { for u in 0..<kh {
                    let iy = i + u - pt
                    if iy < 0 || iy >= x.height { continue }
                    for v in 0..<kw {
                        let ix = j + v - pl
                        if ix < 0 || ix >= x.width { continue }
                        s += w[((oc * x.channels + c) * kh + u) * kw + v] * x.data[x.index(c, iy, ix)]
                    }
                } }
                y.data[y.index(oc, i, j)] = s
            } }
        }
        return y
    }

    /// Gradients of `conv2d` with respect to its input, weights and bias, given dL/dy.
    public static func conv2dBackward<T>(_ x: Tensor<T>, _ w: [T], out o: Int, kh: Int, kw: Int, padding: Padding,
                                         _ dy: Tensor<T>) -> (dx: Tensor<T>, dw: [T], db: [T]) {
        let (pt, pl) = padding == .same ? ((kh - 1) / 2, (kw - 1) / 2) : (0, 0)
        var dx = Tensor<T>(channels: x.channels, height: x.height, width: x.width)
        var dw = [T](repeating: 0, count: w.count)
        var db = [T](repeating: 0, count: o)
        for oc in 0..<o {
            for i in 0..<dy.height { for j in 0..<dy.width {
                let g = dy.data[dy.index(oc, i, j)]
                db[oc] += g
                for c in 0..<x.channels { for u in 0..<kh {
                    let iy = i + u - pt
                    if iy < 0 || iy >= x.height { continue }
                    for v in 0..<kw {
                        let ix = j + v - pl
                        if ix < 0 || ix >= x.width { continue }
                        let wi = ((oc * x.channels + c) * kh + u) * kw + v
                        dw[wi] += g * x.data[x.index(c, iy, ix)]
                        dx.data[x.index(c, iy, ix)] += g * w[wi]
                    }
                } }
            } }
        }
        return (dx, dw, db)
    }

    /// LeakyReLU with slope `alpha` below zero (ReLU is alpha = 0).
    public static func leakyRelu<T>(_ x: Tensor<T>, alpha: T) -> Tensor<T> {
        var y = x
        for i in 0..<y.data.count where y.data[i] < 0 { y.data[i] *= alpha }
        return y
    }

    /// dL/dx of LeakyReLU: dy where x > 0, alpha * dy where x < 0 (and at 0, the forward's
    /// identity branch: dy).
    public static func leakyReluBackward<T>(_ x: Tensor<T>, alpha: T, _ dy: Tensor<T>) -> Tensor<T> {
        var dx = dy
        for i in 0..<dx.data.count where x.data[i] < 0 { dx.data[i] *= alpha }
        return dx
    }

    public static func maxpool2x2<T>(_ x: Tensor<T>) -> Tensor<T> {
        var y = Tensor<T>(channels: x.channels, height: x.height / 2, width: x.width / 2)
        for c in 0..<x.channels { for i in 0..<y.height { for j in 0..<y.width {
            y.data[y.index(c, i, j)] = max(max(x.data[x.index(c, 2 * i, 2 * j)], x.data[x.index(c, 2 * i, 2 * j + 1)]),
                                           max(x.data[x.index(c, 2 * i + 1, 2 * j)], x.data[x.index(c, 2 * i + 1, 2 * j + 1)]))
        } } }
        return y
    }

    /// The gradient goes to the first maximum of each window in the order (0,0), (0,1), (1,0), (1,1).
    public static func maxpool2x2Backward<T>(_ x: Tensor<T>, _ dy: Tensor<T>) -> Tensor<T> {
        var dx = Tensor<T>(channels: x.channels, height: x.height, width: x.width)
        for c in 0..<x.channels { for i in 0..<dy.height { for j in 0..<dy.width {
            var best = x.index(c, 2 * i, 2 * j)
            for (u, v) in [(0, 1), (1, 0), (1, 1)] {
                let k = x.index(c, 2 * i + u, 2 * j + v)
                if x.data[k] > x.data[best] { best = k }
            }
            dx.data[best] += dy.data[dy.index(c, i, j)]
        } } }
        return dx
    }

    public static func convTranspose2x2<T>(_ x: Tensor<T>, _ w: [T], _ b: [T]?, out o: Int) -> Tensor<T> {
        var y = Tensor<T>(channels: o, height: 2 * x.height, width: 2 * x.width)
        for oc in 0..<o { for i in 0..<x.height { for j in 0..<x.width { for u in 0..<2 { for v in 0..<2 {
            var s: T = b?[oc] ?? 0
            for c in 0..<x.channels { s += w[((oc * x.channels + c) * 2 + u) * 2 + v] * x.data[x.index(c, i, j)] }
            y.data[y.index(oc, 2 * i + u, 2 * j + v)] = s
        } } } } }
        return y
    }

    public static func convTranspose2x2Backward<T>(_ x: Tensor<T>, _ w: [T], out o: Int, _ dy: Tensor<T>)
        -> (dx: Tensor<T>, dw: [T], db: [T]) {
        var dx = Tensor<T>(channels: x.channels, height: x.height, width: x.width)
        var dw = [T](repeating: 0, count: w.count)
        var db = [T](repeating: 0, count: o)
        for oc in 0..<o { for i in 0..<x.height { for j in 0..<x.width { for u in 0..<2 { for v in 0..<2 {
            let g = dy.data[dy.index(oc, 2 * i + u, 2 * j + v)]
            db[oc] += g
            for c in 0..<x.channels {
                let wi = ((oc * x.channels + c) * 2 + u) * 2 + v
                dw[wi] += g * x.data[x.index(c, i, j)]
                dx.data[x.index(c, i, j)] += g * w[wi]
            }
        } } } } }
        return (dx, dw, db)
    }

    public static func concat<T>(_ parts: [Tensor<T>]) -> Tensor<T> {
        Tensor(channels: parts.reduce(0) { $0 + $1.channels }, height: parts[0].height, width: parts[0].width,
               data: parts.flatMap { $0.data })
    }

    /// Splits dL/d(concat) back into its parts' gradients.
    public static func concatBackward<T>(_ channels: [Int], _ dy: Tensor<T>) -> [Tensor<T>] {
        var start = 0
        return channels.map { c in
            let n = c * dy.height * dy.width
            defer { start += n }
            return Tensor(channels: c, height: dy.height, width: dy.width, data: Array(dy.data[start..<start + n]))
        }
    }
}

/// The parameters of a model as one flat vector (tensors in name order), which optimizers,
/// checkpoints and gradient buffers share.
public struct ParameterLayout: Equatable, Sendable {
    public let names: [String]
    public let shapes: [[Int]]
    public let offsets: [Int]
    public let count: Int

    /// The tensors the graph's nodes use (other tensors, e.g. optimizer state in a checkpoint,
    /// are not parameters).
    public init(model: Model) {
        names = Set(model.graph.nodes.flatMap { $0.params }).sorted()
        shapes = names.map { model.tensors[$0]!.shape }
        var o = 0
        var offs: [Int] = []
        for s in shapes { offs.append(o); o += s.reduce(1, *) }
        offsets = offs
        count = o
    }

    /// The bias tensors of the graph's convolutions and transposed convolutions.
    public static func biasNames(_ model: Model) -> [String] {
        model.graph.nodes.filter { ($0.op == .conv2d || $0.op == .convTranspose2d) && $0.params.count > 1 }.map { $0.params[1] }
    }

    public func range(_ name: String) -> Range<Int> {
        let i = names.firstIndex(of: name)!
        return offsets[i]..<offsets[i] + shapes[i].reduce(1, *)
    }

    public func flatten(_ model: Model) -> [Float] {
        names.flatMap { model.tensors[$0]!.values }
    }

    /// `model` with its parameters replaced by `values`.
    public func apply(_ values: [Float], to model: Model) -> Model {
        var m = model
        for n in names { m.tensors[n]!.values = Array(values[range(n)]) }
        return m
    }
}

/// Forward and backward through any `.acnn` graph with the reference ops, one image at a time.
/// Slow but general (every op); the fast trainer for convolution chains is checked against it.
public struct GraphGradient<T: BinaryFloatingPoint> {
    public let model: Model
    public let layout: ParameterLayout
    let analysis: GraphAnalysis
    /// Values for runtime parameters of constant channels (e.g. "exposure_ratio").
    public var runtimeParameters: [String: Double] = [:]

    public init(model full: Model) throws {
        let model = full.withoutInputStep()
        self.model = model
        layout = ParameterLayout(model: model)
        analysis = try GraphAnalysis(graph: model.graph, tensorShapes: model.tensors.mapValues { $0.shape })
    }

    /// Every value of the graph for `input`, with parameters `p` (flat, `layout` order).
    public func forward(_ input: Tensor<T>, _ p: [T]) -> [String: Tensor<T>] {
        var v: [String: Tensor<T>] = [model.graph.inputs[0].name: input]
        func param(_ n: Node, _ i: Int) -> [T]? { i < n.params.count ? Array(p[layout.range(n.params[i])]) : nil }
        for i in analysis.order {
            let n = model.graph.nodes[i]
            let x = v[n.inputs[0]]!
            let y: Tensor<T>
            switch n.op {
            case .conv2d:
                let s = model.tensors[n.params[0]]!.shape
                y = ReferenceGrad.conv2d(x, param(n, 0)!, param(n, 1), out: s[0], kh: s[2], kw: s[3], padding: n.padding)
            case .relu: y = ReferenceGrad.leakyRelu(x, alpha: 0)
            case .leakyRelu: y = ReferenceGrad.leakyRelu(x, alpha: T(n.alpha))
            case .maxpool2d: y = ReferenceGrad.maxpool2x2(x)
            case .convTranspose2d:
                y = ReferenceGrad.convTranspose2x2(x, param(n, 0)!, param(n, 1), out: model.tensors[n.params[0]]!.shape[0])
            case .concat: y = ReferenceGrad.concat(n.inputs.map { v[$0]! })
            case .constantChannel:
                let value = n.runtimeParameter.flatMap { runtimeParameters[$0] } ?? Double(n.constantValue)
                y = Tensor(channels: 1, height: x.height, width: x.width, repeating: T(value))
            case .wienerDeconvolution:
                preconditionFailure("the input step is removed at init")
            }
            v[n.output] = y
        }
        return v
    }

    /// dL/dp for one image, given the forward values and dL/d(output); added into `grad`.
    public func backward(_ values: [String: Tensor<T>], outputGradient: Tensor<T>, _ p: [T], into grad: inout [T]) {
        var g: [String: Tensor<T>] = [model.graph.outputs[0]: outputGradient]
        func add(_ name: String, _ d: Tensor<T>) {
            if var e = g[name] { for i in 0..<e.data.count { e.data[i] += d.data[i] }; g[name] = e } else { g[name] = d }
        }
        func addParam(_ n: Node, _ i: Int, _ d: [T]) {
            guard i < n.params.count else { return }
            let r = layout.range(n.params[i])
            for (k, j) in r.enumerated() { grad[j] += d[k] }
        }
        for i in analysis.order.reversed() {
            let n = model.graph.nodes[i]
            guard let dy = g[n.output] else { continue }
            let x = values[n.inputs[0]]!
            switch n.op {
            case .conv2d:
                let s = model.tensors[n.params[0]]!.shape
                let r = ReferenceGrad.conv2dBackward(x, Array(p[layout.range(n.params[0])]), out: s[0], kh: s[2], kw: s[3],
                                                     padding: n.padding, dy)
                add(n.inputs[0], r.dx); addParam(n, 0, r.dw); addParam(n, 1, r.db)
            case .relu: add(n.inputs[0], ReferenceGrad.leakyReluBackward(x, alpha: 0, dy))
            case .leakyRelu: add(n.inputs[0], ReferenceGrad.leakyReluBackward(x, alpha: T(n.alpha), dy))
            case .maxpool2d: add(n.inputs[0], ReferenceGrad.maxpool2x2Backward(x, dy))
            case .convTranspose2d:
                let r = ReferenceGrad.convTranspose2x2Backward(x, Array(p[layout.range(n.params[0])]),
                                                               out: model.tensors[n.params[0]]!.shape[0], dy)
                add(n.inputs[0], r.dx); addParam(n, 0, r.dw); addParam(n, 1, r.db)
            case .concat:
                let parts = ReferenceGrad.concatBackward(n.inputs.map { values[$0]!.channels }, dy)
                for (name, d) in zip(n.inputs, parts) { add(name, d) }
            case .constantChannel: break  // the output does not depend on the input's values
            case .wienerDeconvolution: preconditionFailure("the input step is removed at init")
            }
        }
    }
}
