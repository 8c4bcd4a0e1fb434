import Imaging
import Kernels
import ModelFormat
import Trainer
import XCTest

/// Backward passes against central finite differences in Float64 (relative error, cs231n style),
/// and the fast convolution-chain trainer against the reference gradients.
final class GradientTests: XCTestCase {
    func randomTensor(_ c: Int, _ h: Int, _ w: Int, _ rng: inout SplitMix64) -> Tensor<Double> {
        Tensor(channels: c, height: h, width: w, data: (0..<(c * h * w)).map { _ in Double(rng.float()) })
    }

    func relError(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(1e-8, abs(a) + abs(b)) }

    /// Checks dL/dp and dL/dx of L = sum(r * f(x, p)) for random r.
    func checkModel(_ model: Model, input: Tensor<Double>, runtime: [String: Double] = [:], file: StaticString = #filePath, line: UInt = #line) throws {
        var g = try GraphGradient<Double>(model: model)
        g.runtimeParameters = runtime
        var rng = SplitMix64(seed: 99)
        let p = g.layout.flatten(model).map(Double.init)
        let out0 = g.forward(input, p)[model.graph.outputs[0]]!
        let r = out0.data.map { _ in Double(rng.float()) }
        func loss(_ p: [Double]) -> Double {
            let o = g.forward(input, p)[model.graph.outputs[0]]!
            return zip(o.data, r).reduce(0) { $0 + $1.0 * $1.1 }
        }
        var grad = [Double](repeating: 0, count: p.count)
        let values = g.forward(input, p)
        g.backward(values, outputGradient: Tensor(channels: out0.channels, height: out0.height, width: out0.width, data: r), p, into: &grad)
        let h = 1e-5
        var worst = 0.0
        var worstAt = (0, 0.0, 0.0)
        // Every parameter for small models, a sample of 300 otherwise.
        let idx = p.count <= 300 ? Array(0..<p.count) : (0..<300).map { _ in Int(rng.next() % UInt64(p.count)) }
        for i in idx {
            var a = p, b = p
            a[i] += h; b[i] -= h
            let fd = (loss(a) - loss(b)) / (2 * h)
            let e = relError(fd, grad[i])
            if e > worst { worst = e; worstAt = (i, fd, grad[i]) }
        }
        XCTAssertLessThan(worst, 1e-6, "worst relative error \(worst) at \(worstAt)", file: file, line: line)
    }

    func tinyModel(_ body: (inout ModelBuilder, String) -> String, seed: UInt64 = 1) throws -> Model {
        var b = ModelBuilder(name: "t", initializer: Initialization.glorot.initializer(seed: seed))
        let y = body(&b, b.input.name)
        var m = try b.build(output: y)
        // Non-zero biases so their gradients are exercised with realistic values.
        var rng = SplitMix64(seed: seed + 7)
        for (k, t) in m.tensors where k.hasSuffix(".bias") { m.tensors[k]!.values = t.values.map { _ in rng.float() * 0.1 } }
        return m
    }

    func testConvValidAndSame() throws {
        var rng = SplitMix64(seed: 1)
        for (k, pad) in [(3, Padding.same), (4, .same), (5, .valid), (1, .valid), (2, .same)] {
            let m = try tinyModel { b, x in b.conv(x, out: 3, kernel: k, padding: pad) }
            try checkModel(m, input: randomTensor(1, 7, 6, &rng))
        }
    }

    func testMultiChannelConvWithReluLeakyPoolUpConcat() throws {
        var rng = SplitMix64(seed: 2)
        // A miniature U-net: every op of .acnn v1 in one graph.
        let m = try Architectures.unet(name: "u", widths: [3, 4], alpha: 0.02, initializer: Initialization.he.initializer(seed: 3))
        try checkModel(m, input: randomTensor(1, 8, 8, &rng), runtime: ["exposure_ratio": 2.5])
    }

    func testFlamaryChainWholeNetwork() throws {
        var rng = SplitMix64(seed: 3)
        let m = try tinyModel { b, x in
            var y = b.conv(x, out: 4, kernel: 3); y = b.relu(y)
            y = b.conv(y, out: 3, kernel: 2); y = b.relu(y)
            return b.conv(y, out: 1, kernel: 3)
        }
        try checkModel(m, input: randomTensor(1, 9, 9, &rng))
    }

    func testMaxpoolAndLeakyReluGradientsDirect() throws {
        var rng = SplitMix64(seed: 4)
        let x = randomTensor(2, 6, 4, &rng)
        let dy = randomTensor(2, 3, 2, &rng)
        let dx = ReferenceGrad.maxpool2x2Backward(x, dy)
        // Each window passes its gradient to exactly one element, its maximum.
        for c in 0..<2 { for i in 0..<3 { for j in 0..<2 {
            let vals = [(0, 0), (0, 1), (1, 0), (1, 1)].map { x.data[x.index(c, 2 * i + $0.0, 2 * j + $0.1)] }
            let arg = vals.firstIndex(of: vals.max()!)!
            for (k, (u, v)) in [(0, 0), (0, 1), (1, 0), (1, 1)].enumerated() {
                XCTAssertEqual(dx.data[x.index(c, 2 * i + u, 2 * j + v)], k == arg ? dy.data[dy.index(c, i, j)] : 0)
            }
        } } }
        let lr = ReferenceGrad.leakyReluBackward(x, alpha: 0.1, dx)
        for i in 0..<x.data.count { XCTAssertEqual(lr.data[i], x.data[i] < 0 ? 0.1 * dx.data[i] : dx.data[i]) }
    }

    /// The fast trainer's loss and gradient equal the reference graph gradient (Float), for
    /// several shapes, batch sizes that run as one group or several (samples interleaved within a
    /// group) and thread counts, and are bitwise identical across thread counts; predictions
    /// equal the reference network per sample.
    func testFastChainMatchesReference() throws {
        for (seed, size, spec) in [(UInt64(5), 20, [(8, 5, true), (5, 3, true), (1, 3, true)]),
                                   (6, 19, [(1, 7, false)]),
                                   (7, 17, [(6, 4, true), (3, 2, false), (2, 3, true)])] {
            let m = try tinyModel({ b, x in
                var y = x
                for (o, k, relu) in spec { y = b.conv(y, out: o, kernel: k); if relu { y = b.relu(y) } }
                return y
            }, seed: seed)
            let t = try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size))
            XCTAssertTrue(t.winogradVariants.allSatisfy { $0 == nil })
            let p = t.layout.flatten(m)
            t.setParameters(p)
            let g = try GraphGradient<Double>(model: m)
            let pd = p.map(Double.init)
            for batch in [5, 17] {
                var rng = SplitMix64(seed: seed &+ UInt64(batch))
                let inputs = (0..<(batch * size * size)).map { _ in rng.float(0, 1) }
                let outN = t.outputChannels * t.outputSize * t.outputSize
                let targets = (0..<(batch * outN)).map { _ in rng.float(0, 1) }
                let fast1 = t.lossAndGradient(inputs: inputs, targets: targets, count: batch, loss: .mse, threads: 1)
                for threads in [2, 3] {
                    let f = t.lossAndGradient(inputs: inputs, targets: targets, count: batch, loss: .mse, threads: threads)
                    XCTAssertEqual(f.gradient.map(\.bitPattern), fast1.gradient.map(\.bitPattern), "\(threads) threads changed the gradient")
                    XCTAssertEqual(f.loss.bitPattern, fast1.loss.bitPattern)
                }
                let (refLoss, ref, refOutputs) = chainReference(m, g, pd, size: size, inputs: inputs, targets: targets, batch: batch, outN: outN)
                XCTAssertEqual(fast1.loss, refLoss, accuracy: 1e-5 * max(1, refLoss))
                let scale = ref.map(abs).max()!
                for i in 0..<p.count {
                    XCTAssertEqual(Double(fast1.gradient[i]), ref[i], accuracy: 2e-5 * scale, "batch \(batch): parameter \(i) of \(t.layout.names)")
                }
                let pred = t.predict(inputs, count: batch, threads: 2)
                XCTAssertEqual(pred.count, refOutputs.count)
                var worst = 0.0
                for i in 0..<pred.count { worst = max(worst, abs(Double(pred[i]) - refOutputs[i])) }
                XCTAssertLessThan(worst, 1e-4, "batch \(batch): predictions")
                XCTAssertEqual(t.predict(inputs, count: batch, threads: 1), pred)
            }
        }
    }

    /// Loss (MSE), gradient and outputs of a chain in Float64, sample by sample.
    func chainReference(_ m: Model, _ g: GraphGradient<Double>, _ pd: [Double], size: Int, inputs: [Float], targets: [Float],
                        batch: Int, outN: Int) -> (loss: Double, gradient: [Double], outputs: [Double]) {
        var ref = [Double](repeating: 0, count: pd.count)
        var refLoss = 0.0
        var refOutputs = [Double]()
        for n in 0..<batch {
            let x = Tensor<Double>(channels: 1, height: size, width: size, data: inputs[n * size * size..<(n + 1) * size * size].map(Double.init))
            let v = g.forward(x, pd)
            let y = v[m.graph.outputs[0]]!
            refOutputs += y.data
            var dy = y
            for i in 0..<outN {
                let d = y.data[i] - Double(targets[n * outN + i])
                refLoss += d * d
                dy.data[i] = 2 * d / Double(batch * outN)
            }
            g.backward(v, outputGradient: dy, pd, into: &ref)
        }
        return (refLoss / Double(batch * outN), ref, refOutputs)
    }

    /// A chain whose 6x6 layer trains in the Winograd domain (F(3x3,6x6), forward and data
    /// gradient): per tensor within 1e-4 of the Float64 reference (the bound of the graph
    /// trainer's Winograd layers), on every ISA and for groups of every size 1-8 (batches of
    /// 1, 5, 8 and 13); bitwise the same on 1, 2 and 3 threads and after the weights are
    /// re-transformed in place; predictions stay direct (equal to the direct trainer's);
    /// ASTROCNN_TRAIN_CONV's switch (`winograd: false`) gives the direct path.
    func testWinogradChainMatchesReference() throws {
        let size = 21
        let m = try tinyModel({ b, x in
            var y = b.relu(b.conv(x, out: 16, kernel: 4))
            y = b.relu(b.conv(y, out: 20, kernel: 6))
            return b.relu(b.conv(y, out: 1, kernel: 3))
        }, seed: 21)
        let flamary = try Architectures.flamary3(initializer: Initialization.glorot.initializer(seed: 2))
        XCTAssertEqual(try XCTUnwrap(ConvChainTrainer(model: flamary, inputSize: 32)).winogradVariants, [nil, .f3x6, nil])
        XCTAssertEqual(try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size, winograd: false)).winogradVariants, [nil, nil, nil])
        let g = try GraphGradient<Double>(model: m)
        let p = try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size)).layout.flatten(m)
        let outN = (size - 3 - 5 - 2) * (size - 3 - 5 - 2)
        let batches = [1, 5, 8, 13].map { batch in
            var rng = SplitMix64(seed: UInt64(batch) &+ 77)
            let inputs = (0..<(batch * size * size)).map { _ in rng.float(0, 1) }
            let targets = (0..<(batch * outN)).map { _ in rng.float(0, 1) }
            let ref = chainReference(m, g, p.map(Double.init), size: size, inputs: inputs, targets: targets, batch: batch, outN: outN)
            return (batch, inputs, targets, ref)
        }
        for isa in KernelISA.allCases where isa.supported {
            let t = try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size, isa: isa))
            XCTAssertEqual(t.winogradVariants, [nil, .f3x6, nil])
            let direct = try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size, isa: isa, winograd: false))
            XCTAssertEqual(t.outputChannels * t.outputSize * t.outputSize, outN)
            // Other weights first, then these: the in-place re-transform must leave no trace.
            t.setParameters(p.map { $0 * 0.5 + 0.01 })
            t.setParameters(p)
            direct.setParameters(p)
            for (batch, inputs, targets, ref) in batches {
                let fast = t.lossAndGradient(inputs: inputs, targets: targets, count: batch, loss: .mse, threads: 1)
                for threads in [2, 3] {
                    let f = t.lossAndGradient(inputs: inputs, targets: targets, count: batch, loss: .mse, threads: threads)
                    XCTAssertEqual(f.gradient.map(\.bitPattern), fast.gradient.map(\.bitPattern), "\(isa) batch \(batch): \(threads) threads")
                    XCTAssertEqual(f.loss.bitPattern, fast.loss.bitPattern)
                }
                XCTAssertEqual(fast.loss, ref.loss, accuracy: 1e-5 * max(1e-3, ref.loss))
                var worst = 0.0
                for name in t.layout.names {
                    let r = t.layout.range(name)
                    let scale = ref.gradient[r].map(abs).max()!
                    let err = r.map { abs(Double(fast.gradient[$0]) - ref.gradient[$0]) }.max()!
                    worst = max(worst, err / scale)
                    XCTAssertLessThan(err / scale, 1e-4, "\(isa) batch \(batch): \(name)")
                }
                print("Winograd chain on \(isa.rawValue), batch \(batch): worst per-tensor relative error \(worst)")
                let d = direct.lossAndGradient(inputs: inputs, targets: targets, count: batch, loss: .mse, threads: 2)
                XCTAssertNotEqual(d.gradient, fast.gradient)   // Winograd really ran
                XCTAssertEqual(t.predict(inputs, count: batch, threads: 2), direct.predict(inputs, count: batch, threads: 2))
            }
        }
    }

    /// Groups: ceil(count / maxGroup) of them, an even number when several, sizes differing by at
    /// most one, larger first, covering the batch; independent of anything but the count.
    func testGroupSizes() {
        XCTAssertEqual(ConvChainTrainer.groupSizes(0), [])
        XCTAssertEqual(ConvChainTrainer.groupSizes(1), [1])
        let mg = ConvChainTrainer.maxGroup
        XCTAssertEqual(ConvChainTrainer.groupSizes(mg), [mg])
        for count in 1...300 {
            let s = ConvChainTrainer.groupSizes(count)
            XCTAssertEqual(s.reduce(0, +), count)
            XCTAssertTrue(s.allSatisfy { $0 >= 1 && $0 <= mg }, "\(count): \(s)")
            XCTAssertLessThanOrEqual(s.max()! - s.min()!, 1)
            XCTAssertEqual(s, s.sorted(by: >))
            if s.count > 1 { XCTAssertEqual(s.count % 2, 0, "\(count): \(s)") }
            XCTAssertGreaterThanOrEqual(s.count, (count + mg - 1) / mg)
        }
    }

    func testOptimizers() {
        // Minimise (p - 3)^2: every optimizer converges; Nesterov matches the Keras formula by hand.
        for kind in [Optimizer.Kind.sgd(momentum: 0.9, nesterov: true), .sgd(momentum: 0.5, nesterov: false),
                     .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-7)] {
            var o = Optimizer(kind, learningRate: kind == .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-7) ? 0.1 : 0.05, parameterCount: 1)
            var p: [Float] = [0]
            for _ in 0..<500 { o.update(&p, [2 * (p[0] - 3)]) }
            XCTAssertEqual(p[0], 3, accuracy: 1e-2, "\(kind)")
        }
        var o = Optimizer(.sgd(momentum: 0.9, nesterov: true), learningRate: 0.1, parameterCount: 1)
        var p: [Float] = [1]
        o.update(&p, [2])   // v = -0.2; p = 1 + 0.9 * -0.2 - 0.2 = 0.62
        XCTAssertEqual(p[0], 0.62, accuracy: 1e-6)
        o.update(&p, [1])   // v = 0.9 * -0.2 - 0.1 = -0.28; p = 0.62 - 0.252 - 0.1 = 0.268
        XCTAssertEqual(p[0], 0.268, accuracy: 1e-6)
    }

    /// The vectorised, threaded step equals the scalar formula bit for bit, on sizes with SIMD
    /// tails and task splits (1..3 threads, sizes around 16, 64 and the 2^16 threading cut).
    func testOptimizerStepEqualsTheScalarFormulaOnAnyThreadCount() {
        var rng = SplitMix64(seed: 5)
        for count in [1, 15, 17, 63, 65, 1000, 65_535, 65_536 + 37, 200_003] {
            let g0 = (0..<count).map { _ in Float.random(in: -1..<1, using: &rng) }
            let g1 = (0..<count).map { _ in Float.random(in: -1..<1, using: &rng) }
            let p0 = (0..<count).map { _ in Float.random(in: -1..<1, using: &rng) }
            for kind in [Optimizer.Kind.sgd(momentum: 0.9, nesterov: true), .sgd(momentum: 0.8, nesterov: false),
                         .adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-7)] {
                // The scalar formula, two steps.
                var p = p0, f = [Float](repeating: 0, count: count), sq = f
                for (step, g) in [g0, g1].enumerated() {
                    switch kind {
                    case .sgd(let mom, let nesterov):
                        let (m, lr) = (Float(mom), Float(0.05))
                        for i in 0..<count {
                            let v = m * f[i] - lr * g[i]
                            f[i] = v
                            p[i] += nesterov ? m * v - lr * g[i] : v
                        }
                    case .adam(let b1, let b2, let eps):
                        let (f1, f2, lr, e) = (Float(b1), Float(b2), Float(0.05), Float(eps))
                        var (q1, q2) = (1.0, 1.0)
                        for _ in 0...step { q1 *= b1; q2 *= b2 }
                        let (c1, c2) = (Float(1 - q1), Float(1 - q2))
                        for i in 0..<count {
                            f[i] = f1 * f[i] + (1 - f1) * g[i]
                            sq[i] = f2 * sq[i] + (1 - f2) * g[i] * g[i]
                            p[i] -= lr * (f[i] / c1) / ((sq[i] / c2).squareRoot() + e)
                        }
                    }
                }
                for threads in [1, 2, 3] {
                    var o = Optimizer(kind, learningRate: 0.05, parameterCount: count)
                    var q = p0
                    o.update(&q, g0, threads: threads)
                    o.update(&q, g1, threads: threads)
                    XCTAssertEqual(q.map(\.bitPattern), p.map(\.bitPattern), "\(kind), \(count) parameters, \(threads) threads")
                    XCTAssertEqual(o.first.map(\.bitPattern), f.map(\.bitPattern), "\(kind), \(count): first moment")
                }
            }
        }
    }
}
