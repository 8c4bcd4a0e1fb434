import Foundation
import Imaging
import Kernels
import ModelFormat
import Runtime
import Trainer
import XCTest

/// The fast graph trainer against the Float64 reference gradients of `GraphGradient` (which
/// GradientTests checks against central finite differences), op by op and on whole small
/// U-nets; against `ConvChainTrainer` on Flamary chains; thread-count determinism; training.
///
/// Bound: for every parameter tensor, max |fast - reference| / max |reference| < 1e-4 (Float32
/// forward and backward against Float64), and the loss within 1e-5 relative.
final class GraphTrainerTests: XCTestCase {
    static let bound = 1e-4

    func model(_ body: (inout ModelBuilder, String) -> String, channels: Int = 1, seed: UInt64 = 1) throws -> Model {
        var b = ModelBuilder(name: "t", inputChannels: channels, initializer: Initialization.he.initializer(seed: seed))
        let y = body(&b, b.input.name)
        return try withBiases(b.build(output: y), seed: seed)
    }

    /// Non-zero biases so their gradients and the activations' both branches are exercised.
    func withBiases(_ m: Model, seed: UInt64) -> Model {
        var m = m
        var rng = SplitMix64(seed: seed + 7)
        for k in m.tensors.keys.sorted() where k.hasSuffix(".bias") {
            m.tensors[k]!.values = m.tensors[k]!.values.map { _ in rng.float() * 0.1 }
        }
        return m
    }

    struct Batch {
        var inputs: [Float]
        var targets: [Float]
        var count: Int
    }

    func batch(_ t: GraphTrainer, count: Int, seed: UInt64) -> Batch {
        var rng = SplitMix64(seed: seed)
        let inputs = (0..<(count * t.inputChannels * t.inputHeight * t.inputWidth)).map { _ in rng.float(-1, 1) }
        let targets = (0..<(count * t.outputChannels * t.outputHeight * t.outputWidth)).map { _ in rng.float(-1, 1) }
        return Batch(inputs: inputs, targets: targets, count: count)
    }

    /// Loss and gradient of the batch with the Float64 reference (loss conventions of
    /// `Loss`: mean over every output value; L1's derivative sign(d), 0 at 0).
    func reference(_ m: Model, _ t: GraphTrainer, _ b: Batch, loss: Loss, runtime: [String: Double] = [:],
                   perSample: [String: [Double]] = [:]) throws -> (loss: Double, gradient: [Double]) {
        var g = try GraphGradient<Double>(model: m)
        let p = t.parameters.map(Double.init)
        var grad = [Double](repeating: 0, count: p.count)
        let inN = t.inputChannels * t.inputHeight * t.inputWidth
        let outN = t.outputChannels * t.outputHeight * t.outputWidth
        let total = Double(b.count * outN)
        var l = 0.0
        for n in 0..<b.count {
            var r = runtime
            for (k, v) in perSample { r[k] = v[n] }
            g.runtimeParameters = r
            let x = Tensor<Double>(channels: t.inputChannels, height: t.inputHeight, width: t.inputWidth,
                                   data: b.inputs[n * inN..<(n + 1) * inN].map(Double.init))
            let values = g.forward(x, p)
            let y = values[m.graph.outputs[0]]!
            var dy = y
            for i in 0..<outN {
                let d = y.data[i] - Double(b.targets[n * outN + i])
                switch loss {
                case .mse: l += d * d; dy.data[i] = 2 * d / total
                case .l1: l += abs(d); dy.data[i] = d > 0 ? 1 / total : d < 0 ? -1 / total : 0
                }
            }
            g.backward(values, outputGradient: dy, p, into: &grad)
        }
        return (l / total, grad)
    }

    /// Per tensor: max |fast - ref| / max |ref| < bound.
    func assertClose(_ fast: [Float], _ ref: [Double], _ layout: ParameterLayout, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(fast.count, ref.count, file: file, line: line)
        var worst = 0.0
        defer { print("\(what): worst per-tensor relative error \(worst)") }
        for name in layout.names {
            let r = layout.range(name)
            let scale = ref[r].map(abs).max() ?? 0
            let err = r.map { abs(Double(fast[$0]) - ref[$0]) }.max() ?? 0
            if scale == 0 {
                XCTAssertLessThan(err, 1e-9, "\(what): \(name) should have a zero gradient", file: file, line: line)
            } else {
                worst = max(worst, err / scale)
                XCTAssertLessThan(err / scale, GraphTrainerTests.bound, "\(what): \(name) relative error \(err / scale)", file: file, line: line)
            }
        }
    }

    func check(_ m: Model, height: Int, width: Int, count: Int = 3, loss: Loss = .mse, runtime: [String: Float] = [:],
               perSample: [String: [Float]] = [:], seed: UInt64 = 11, isa: KernelISA = .best, _ what: String,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let t = try GraphTrainer(model: m, inputHeight: height, inputWidth: width, isa: isa)
        let b = batch(t, count: count, seed: seed)
        let fast = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: b.count, loss: loss, threads: 2,
                                         runtimeParameters: runtime, sampleParameters: perSample)
        let ref = try reference(m, t, b, loss: loss, runtime: runtime.mapValues(Double.init),
                                perSample: perSample.mapValues { $0.map(Double.init) })
        XCTAssertEqual(fast.loss, ref.loss, accuracy: 1e-5 * max(1e-3, ref.loss), "\(what): loss", file: file, line: line)
        assertClose(fast.gradient, ref.gradient, t.layout, what, file: file, line: line)
    }

    // MARK: op by op

    func testConvolutionsSameAndValidEveryKernelSize() throws {
        // A first convolution makes a multi-channel map whose gradient the op under test must
        // compute (its data gradient), then the op, then a 1x1 head.
        for (k, pad) in [(3, Padding.same), (4, .same), (2, .same), (5, .same), (1, .same), (5, .valid), (1, .valid), (2, .valid), (3, .valid)] {
            let m = try model { b, x in
                var y = b.conv(x, out: 3, kernel: 3, padding: .same)
                y = b.conv(y, out: 5, kernel: k, padding: pad)
                return b.conv(y, out: 2, kernel: 1)
            }
            try check(m, height: 9, width: 11, "conv \(k)x\(k) \(pad)")
        }
        // Non-square kernels, more than 4 output channels in the tested layer and an odd count.
        let m = try model({ b, x in
            var y = b.conv(x, out: 6, kh: 3, kw: 2, padding: .same)
            y = b.conv(y, out: 7, kh: 2, kw: 5, padding: .valid)
            return b.conv(y, out: 1, kh: 3, kw: 1, padding: .same)
        }, channels: 2)
        try check(m, height: 10, width: 12, "non-square kernels, 2 input channels")
    }

    func testActivationsFusedAndStandalone() throws {
        // Fused: conv + ReLU, conv + LeakyReLU. Standalone: after a pool (no conv before it) and
        // after a conv whose output has two consumers (no fusion).
        let m = try model { b, x in
            var y = b.conv(x, out: 4, kernel: 3, padding: .same)
            y = b.relu(y)
            y = b.conv(y, out: 4, kernel: 3, padding: .same)
            y = b.leakyRelu(y, alpha: 0.1)
            y = b.maxpool(y)
            y = b.leakyRelu(y, alpha: 0.3)
            let c = b.conv(y, out: 4, kernel: 3, padding: .same)
            let r = b.relu(c)
            let l = b.leakyRelu(c, alpha: 0.02)
            y = b.concat([r, l])
            y = b.convTranspose(y, out: 2)
            return b.conv(y, out: 1, kernel: 1)
        }
        try check(m, height: 12, width: 8, "activations")
        try check(m, height: 12, width: 8, loss: .l1, "activations, L1 loss")
    }

    func testMaxPoolRoutesToTheFirstMaximum() throws {
        // The first convolution's channels 0 and 1 have zero weights, so their maps are constant
        // (the bias) and every pooling window ties: the gradient must go to (0,0) as in the
        // reference, which changes that convolution's weight gradient (the inputs under the
        // four window positions differ). Channels 2 and 3 are ordinary.
        var m = try model { b, x in
            var y = b.conv(x, out: 4, kernel: 3, padding: .same)
            y = b.maxpool(y)
            y = b.leakyRelu(y, alpha: 0.02)
            y = b.conv(y, out: 4, kernel: 3, padding: .same)
            y = b.convTranspose(y, out: 2)
            return b.conv(y, out: 1, kernel: 1)
        }
        let first = m.graph.nodes[0]
        for i in 0..<18 { m.tensors[first.params[0]]!.values[i] = 0 }
        m.tensors[first.params[1]]!.values = [0.3, -0.2, 0.1, -0.1]
        try check(m, height: 8, width: 8, count: 2, seed: 3, "max-pool with ties")
    }

    func testTransposedConvolution() throws {
        let m = try model { b, x in
            var y = b.conv(x, out: 5, kernel: 3, padding: .same)
            y = b.maxpool(y)
            y = b.maxpool(y)
            y = b.convTranspose(y, out: 6)
            y = b.leakyRelu(y, alpha: 0.02)
            y = b.convTranspose(y, out: 3)
            return b.conv(y, out: 1, kernel: 3, padding: .same)
        }
        try check(m, height: 8, width: 12, "transposed convolutions")
    }

    func testConcatSlicesCopiesAndSharedValues() throws {
        // a feeds a concat and a later convolution (its gradient is no slice: copy and add); the
        // graph input feeds a concat (copied); b is a slice; the output is a concat of two convs.
        let m = try model { b, x in
            let a = b.conv(x, out: 3, kernel: 3, padding: .same)
            let c = b.conv(x, out: 2, kernel: 3, padding: .same)
            let cat = b.concat([a, c, x])
            let d = b.conv(cat, out: 2, kernel: 3, padding: .same)
            let e = b.conv(a, out: 2, kernel: 1)
            let both = b.concat([d, e])
            let f = b.conv(both, out: 3, kernel: 1)
            let g = b.concat([f, a])
            return b.conv(g, out: 1, kernel: 3, padding: .same)
        }
        try check(m, height: 6, width: 10, "concat slices and copies")
    }

    func testConstantChannelPerBatchAndPerSample() throws {
        let m = try model { b, x in
            let a = b.conv(x, out: 4, kernel: 3, padding: .same)
            let r = b.constantChannel(like: a, value: 0.5, parameter: "exposure_ratio")
            let k = b.constantChannel(like: a, value: -1.5)
            let y = b.concat([a, r, k])
            return b.conv(y, out: 1, kernel: 3, padding: .same)
        }
        try check(m, height: 8, width: 8, "constant channel (defaults)")
        try check(m, height: 8, width: 8, runtime: ["exposure_ratio": 3], "constant channel (batch value)")
        try check(m, height: 8, width: 8, count: 3, runtime: ["exposure_ratio": 3], perSample: ["exposure_ratio": [0.5, 2, 7]],
                  "constant channel (per sample)")
    }

    // MARK: whole U-nets

    func testSmallUNetsMatchTheReference() throws {
        // 2, 3 and 5 levels (the paper's depth; bottom map 2x2), and widths that are no multiple
        // of 4 (the kernels' single-channel tails, forward and backward).
        for (widths, h, w) in [([4, 8], 16, 16), ([4, 8, 16], 16, 16), ([4, 8, 16], 24, 32), ([4, 8], 24, 32),
                               ([4, 8, 16, 32, 64], 32, 32), ([6, 10, 14], 16, 24)] {
            let m = withBiases(try Architectures.unet(name: "u", widths: widths, initializer: Initialization.he.initializer(seed: 5)), seed: 5)
            try check(m, height: h, width: w, count: 3, perSample: ["exposure_ratio": [1, 2.5, 0.25]], "U-net \(widths) \(h)x\(w)")
        }
        let m = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 6)), seed: 6)
        try check(m, height: 16, width: 24, count: 2, loss: .l1, runtime: ["exposure_ratio": 4], "U-net L1")
        // Every kernel set this CPU runs (AVX-512 SIMD16, AVX2 and portable SIMD8).
        for isa in KernelISA.allCases where isa.supported {
            try check(m, height: 16, width: 24, count: 2, runtime: ["exposure_ratio": 2], isa: isa, "U-net on \(isa.rawValue)")
        }
    }

    func testPredictEqualsTheRuntime() throws {
        let m = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 8)), seed: 8)
        let t = try GraphTrainer(model: m, inputHeight: 24, inputWidth: 32)
        let b = batch(t, count: 3, seed: 4)
        let out = try t.predict(inputs: b.inputs, count: 3, sampleParams: ["exposure_ratio": [1, 2, 3]], threads: 2)
        let net = try Network(model: m)
        for n in 0..<3 {
            let x = FeatureMap(channels: 1, height: 24, width: 32, data: Array(b.inputs[n * 768..<(n + 1) * 768]))
            let y = try net.forward(x, parameters: ["exposure_ratio": Float(n + 1)], algorithm: .direct)
            XCTAssertEqual(Array(out[n * 768..<(n + 1) * 768]), y.data, "sample \(n)")
        }
    }

    // MARK: Flamary chains, determinism, training

    func testFlamaryChainAgreesWithConvChainTrainer() throws {
        let flamary = try Architectures.flamary3(initializer: Initialization.glorot.initializer(seed: 2))
        let small = try model({ b, x in
            var y = b.conv(x, out: 8, kernel: 5); y = b.relu(y)
            y = b.conv(y, out: 5, kernel: 3); y = b.relu(y)
            return b.relu(b.conv(y, out: 1, kernel: 3))
        }, seed: 3)
        let linear = try Architectures.flamary1(initializer: Initialization.glorot.initializer(seed: 4))
        for (m, size) in [(withBiases(flamary, seed: 2), 32), (small, 20), (linear, 25)] {
            let chain = try XCTUnwrap(ConvChainTrainer(model: m, inputSize: size))
            chain.setParameters(chain.layout.flatten(m))
            let t = try GraphTrainer(model: m, inputHeight: size, inputWidth: size)
            XCTAssertEqual(t.layout, chain.layout)
            let b = batch(t, count: 5, seed: 9)
            for loss in [Loss.mse, .l1] {
                let a = chain.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 5, loss: loss, threads: 2)
                let g = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 5, loss: loss, threads: 2)
                // The chain trainer interleaves samples and sums the weight gradient in another
                // order, so the two agree to rounding, not bit for bit.
                XCTAssertEqual(g.loss, a.loss, accuracy: 1e-5 * max(1, abs(a.loss)), "\(m.name) \(loss)")
                let scale = max(a.gradient.map { abs($0) }.max() ?? 0, 1e-12)
                let worst = zip(g.gradient, a.gradient).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(worst / scale, 1e-4, "\(m.name) \(loss): gradients differ")
            }
            XCTAssertEqual(try t.predict(inputs: b.inputs, count: 5, threads: 2), chain.predict(b.inputs, count: 5, threads: 2))
        }
    }

    func testSameBitsForOneTwoThreeThreads() throws {
        let m = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 9)), seed: 9)
        let t = try GraphTrainer(model: m, inputHeight: 24, inputWidth: 32)
        let b = batch(t, count: 5, seed: 10)
        let ratios: [String: [Float]] = ["exposure_ratio": [1, 2, 3, 4, 5]]
        let one = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 5, loss: .l1, threads: 1, sampleParameters: ratios)
        for threads in [2, 3] {
            let r = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 5, loss: .l1, threads: threads, sampleParameters: ratios)
            XCTAssertEqual(r.loss.bitPattern, one.loss.bitPattern, "\(threads) threads: loss")
            XCTAssertEqual(r.gradient.map(\.bitPattern), one.gradient.map(\.bitPattern), "\(threads) threads: gradient")
        }
        // Repeated calls reuse the workspaces: still the same bits.
        let again = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 5, loss: .l1, threads: 2, sampleParameters: ratios)
        XCTAssertEqual(again.gradient.map(\.bitPattern), one.gradient.map(\.bitPattern))
    }

    /// Packed weights are rewritten in place by `setParameters` (on any thread count): a trainer
    /// given parameters A, then B, computes the same bits as one made with B.
    func testParametersRepackedInPlaceEqualAFreshTrainer() throws {
        let a = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 3)), seed: 3)
        let bModel = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 4)), seed: 4)
        let fresh = try GraphTrainer(model: bModel, inputHeight: 16, inputWidth: 24)
        let reused = try GraphTrainer(model: a, inputHeight: 16, inputWidth: 24)
        let b = batch(fresh, count: 3, seed: 6)
        _ = try reused.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 2)
        let want = try fresh.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 2)
        for threads in [1, 3] {
            try reused.setParameters(fresh.layout.flatten(bModel), threads: threads)
            let got = try reused.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 2)
            XCTAssertEqual(got.loss.bitPattern, want.loss.bitPattern)
            XCTAssertEqual(got.gradient.map(\.bitPattern), want.gradient.map(\.bitPattern), "packed on \(threads) threads")
            try reused.setParameters(reused.layout.flatten(a), threads: threads)
        }
    }

    // MARK: Winograd

    /// A U-net whose 16-32 channel layers on 64x64 and 32x32 maps run forward and data gradient
    /// in the Winograd domain: against the Float64 reference (same bound), against the trainer
    /// with every convolution direct, on every ISA, on 1, 2 and 3 threads (same bits), and
    /// repacked in place (same bits as a fresh trainer).
    func testWinogradLayersMatchTheReference() throws {
        let m = withBiases(try Architectures.unet(name: "u", widths: [16, 32], initializer: Initialization.he.initializer(seed: 12)), seed: 12)
        let t = try GraphTrainer(model: m, inputHeight: 64, inputWidth: 64)
        let names = t.winogradLayers.map(\.layer)
        XCTAssertEqual(names, ["down0.conv2", "bottom.conv1", "bottom.conv2", "up0.conv1", "up0.conv2"])
        XCTAssertTrue(t.winogradLayers.allSatisfy { $0.forward == .f4x3 && $0.dataGradient == .f4x3 }, "\(t.winogradLayers)")
        print("Winograd layers: \(names)")
        XCTAssertTrue(try GraphTrainer(model: m, inputHeight: 64, inputWidth: 64, winograd: false).winogradLayers.isEmpty)
        let small = ConvAlgorithm.smallestWinogradMap(.best) / 2   // every map under the rule's side
        XCTAssertTrue(try GraphTrainer(model: m, inputHeight: small, inputWidth: small).winogradLayers.isEmpty)
        let ratios: [String: [Float]] = ["exposure_ratio": [1, 2.5, 0.5]]
        try check(m, height: 64, width: 64, count: 3, loss: .l1, perSample: ratios, "Winograd U-net [16, 32] 64x64")
        for isa in KernelISA.allCases where isa.supported && isa != .best {
            try check(m, height: 64, width: 64, count: 2, runtime: ["exposure_ratio": 2], isa: isa, "Winograd U-net on \(isa.rawValue)")
        }
        let b = batch(t, count: 3, seed: 13)
        let one = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 1, sampleParameters: ratios)
        for threads in [2, 3] {
            let r = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: threads, sampleParameters: ratios)
            XCTAssertEqual(r.loss.bitPattern, one.loss.bitPattern, "\(threads) threads: loss")
            XCTAssertEqual(r.gradient.map(\.bitPattern), one.gradient.map(\.bitPattern), "\(threads) threads: gradient")
        }
        // Repacked in place (on 1 and 3 threads) after other weights: the bits of a fresh trainer.
        let other = withBiases(try Architectures.unet(name: "u", widths: [16, 32], initializer: Initialization.he.initializer(seed: 14)), seed: 14)
        let reused = try GraphTrainer(model: other, inputHeight: 64, inputWidth: 64)
        _ = try reused.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 2, sampleParameters: ratios)
        for threads in [1, 3] {
            try reused.setParameters(t.layout.flatten(m), threads: threads)
            let got = try reused.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 3, loss: .l1, threads: 1, sampleParameters: ratios)
            XCTAssertEqual(got.gradient.map(\.bitPattern), one.gradient.map(\.bitPattern), "repacked on \(threads) threads")
            try reused.setParameters(reused.layout.flatten(other), threads: threads)
        }
        // Predictions: the direct trainer's to Winograd's rounding (the output's scale).
        let direct = try GraphTrainer(model: m, inputHeight: 64, inputWidth: 64, winograd: false)
        let p = try t.predict(inputs: b.inputs, count: 3, sampleParams: ratios, threads: 2)
        let q = try direct.predict(inputs: b.inputs, count: 3, sampleParams: ratios, threads: 2)
        let scale = q.map(abs).max() ?? 1
        let worst = zip(p, q).map { abs($0 - $1) }.max() ?? 0
        print("Winograd vs direct prediction: worst \(worst / scale) of the output scale")
        XCTAssertLessThan(worst / scale, 1e-5)
        XCTAssertNotEqual(p, q)   // Winograd really ran
    }

    /// Per-sample loss weights: the batch's loss and gradient are the weighted sums of the
    /// samples' own (each over the batch's pixel count).
    func testSampleWeightsScaleEachSamplesLossAndGradient() throws {
        let m = withBiases(try Architectures.unet(name: "u", widths: [4, 8], ratioChannel: false, initializer: Initialization.he.initializer(seed: 21)), seed: 21)
        let t = try GraphTrainer(model: m, inputHeight: 16, inputWidth: 16)
        let b = batch(t, count: 2, seed: 22)
        let n = 16 * 16
        for loss in [Loss.mse, .l1] {
            let a = try t.lossAndGradient(inputs: Array(b.inputs[0..<n]), targets: Array(b.targets[0..<n]), count: 1, loss: loss, threads: 1)
            let c = try t.lossAndGradient(inputs: Array(b.inputs[n...]), targets: Array(b.targets[n...]), count: 1, loss: loss, threads: 1)
            let w = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: loss, threads: 2, sampleWeights: [3, 0.25])
            XCTAssertEqual(w.loss, (3 * a.loss + 0.25 * c.loss) / 2, accuracy: 1e-6 * abs(w.loss))
            let scale = w.gradient.map { abs($0) }.max()!
            for i in 0..<w.gradient.count {
                XCTAssertEqual(w.gradient[i], (3 * a.gradient[i] + 0.25 * c.gradient[i]) / 2, accuracy: 1e-5 * scale, "\(loss) parameter \(i)")
            }
            let ones = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: loss, threads: 1, sampleWeights: [1, 1])
            let plain = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: loss, threads: 1)
            XCTAssertEqual(ones.gradient.map(\.bitPattern), plain.gradient.map(\.bitPattern), "unit weights change nothing")
        }
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: .mse, threads: 1, sampleWeights: [1]))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: .mse, threads: 1, sampleWeights: [1, -1]))
    }

    func testAdamStepsReduceTheL1LossOnDenoising() throws {
        // Targets: a few Gaussian blobs; inputs: the targets plus noise σ 0.1.
        let m = try Architectures.unet(name: "u", widths: [4, 8], initializer: Initialization.he.initializer(seed: 12))
        let t = try GraphTrainer(model: m, inputHeight: 16, inputWidth: 16)
        var rng = SplitMix64(seed: 13)
        let count = 8
        var targets = [Float](repeating: 0, count: count * 256), inputs = targets
        for n in 0..<count {
            for _ in 0..<3 {
                let (cy, cx, a) = (rng.float(2, 14), rng.float(2, 14), rng.float(0.3, 1))
                for y in 0..<16 { for x in 0..<16 {
                    let r2 = (Float(y) - cy) * (Float(y) - cy) + (Float(x) - cx) * (Float(x) - cx)
                    targets[n * 256 + y * 16 + x] += a * Foundation.exp(-r2 / 4)
                } }
            }
            for i in 0..<256 { inputs[n * 256 + i] = targets[n * 256 + i] + 0.1 * rng.float() }
        }
        var opt = Optimizer(.adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-7), learningRate: 3e-3, parameterCount: t.layout.count)
        var p = t.parameters
        var losses: [Double] = []
        for _ in 0..<40 {
            let r = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: 2)
            losses.append(r.loss)
            opt.update(&p, r.gradient)
            try t.setParameters(p)
        }
        let final = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: 2).loss
        XCTAssertLessThan(final, 0.6 * losses[0], "L1 loss \(losses[0]) -> \(final)")
        // The network beats the identity (the noisy input itself).
        let identity = zip(inputs, targets).reduce(0.0) { $0 + Double(abs($1.0 - $1.1)) } / Double(inputs.count)
        print("Adam on denoising: L1 \(losses[0]) -> \(final) (identity \(identity))")
    }

    // MARK: errors, memory

    func testBadInputThrows() throws {
        let m = try Architectures.unet(name: "u", widths: [4, 8], initializer: Initialization.he.initializer(seed: 1))
        XCTAssertThrowsError(try GraphTrainer(model: m, inputHeight: 15, inputWidth: 16))
        XCTAssertThrowsError(try GraphTrainer(model: m, inputHeight: 0, inputWidth: 16))
        let flamary = try Architectures.flamary3(initializer: Initialization.glorot.initializer(seed: 2))
        XCTAssertThrowsError(try GraphTrainer(model: flamary, inputHeight: 10, inputWidth: 10))   // smaller than the receptive field
        var broken = m
        broken.tensors["head.weight"]!.values.removeLast()
        XCTAssertThrowsError(try GraphTrainer(model: broken, inputHeight: 16, inputWidth: 16))
        let t = try GraphTrainer(model: m, inputHeight: 16, inputWidth: 16)
        let b = batch(t, count: 2, seed: 1)
        XCTAssertThrowsError(try t.setParameters([1, 2, 3]))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs.dropLast(), targets: b.targets, count: 2, loss: .mse, threads: 1))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs, targets: b.targets.dropLast(), count: 2, loss: .mse, threads: 1))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: [], targets: [], count: 0, loss: .mse, threads: 1))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: .mse, threads: 1,
                                                   runtimeParameters: ["gain": 2]))
        XCTAssertThrowsError(try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: 2, loss: .mse, threads: 1,
                                                   sampleParameters: ["exposure_ratio": [1]]))
        XCTAssertThrowsError(try t.predict(inputs: b.inputs, count: 3, threads: 1))
        do {
            _ = try t.predict(inputs: b.inputs, count: 2, params: ["gain": 1], threads: 1)
            XCTFail("unknown parameter accepted")
        } catch let e as GraphTrainerError {
            XCTAssertTrue(e.description.contains("exposure_ratio"), e.description)
        }
    }

    func testMemoryIsSharedByLifetime() throws {
        for (widths, side) in [([32, 64, 128, 256, 512], 256), ([16, 32, 64, 128, 256], 256), ([32, 64, 128, 256, 512], 128),
                               ([16, 32, 64, 128, 256], 128)] {
            let m = try Architectures.unet(widths: widths, initializer: Initialization.he.initializer(seed: 1))
            let t = try GraphTrainer(model: m, inputHeight: side, inputWidth: side)
            let mem = t.memory
            XCTAssertLessThan(mem.arenaBytes, mem.unsharedArenaBytes)
            // At least every forward map is kept for backward: more than the runtime's maps.
            let mib = { (b: Int) in String(format: "%.1f MiB", Double(b) / 1048576) }
            print("U-net \(widths) \(side)x\(side): workspace \(mib(mem.workspaceBytes)) (arena \(mib(mem.arenaBytes)), unshared \(mib(mem.unsharedArenaBytes)), accumulator \(mib(mem.accumulatorBytes)), argmax \(mib(mem.argmaxBytes))); peak with 2 threads \(mib(t.peakBytes(threads: 2)))")
        }
    }

    /// Throughput on the paper's U-net and the 16-wide one (indicative; set
    /// ASTROCNN_GRAPHTRAIN_BENCH=1 to run).
    func testThroughputReport() throws {
        guard ProcessInfo.processInfo.environment["ASTROCNN_GRAPHTRAIN_BENCH"] != nil else {
            throw XCTSkip("set ASTROCNN_GRAPHTRAIN_BENCH=1 to measure the graph trainer's throughput")
        }
        let threads = Int(ProcessInfo.processInfo.environment["ASTROCNN_GRAPHTRAIN_THREADS"] ?? "2") ?? 2
        for widths in [[16, 32, 64, 128, 256], [32, 64, 128, 256, 512]] {
            for side in [128, 256] {
                let m = try Architectures.unet(widths: widths, initializer: Initialization.he.initializer(seed: 1))
                let t = try GraphTrainer(model: m, inputHeight: side, inputWidth: side)
                let count = 2 * threads
                let b = batch(t, count: count, seed: 1)
                // The forward pass against the runtime's direct convolution on one thread.
                let net = try Network(model: m)
                let x = FeatureMap(channels: 1, height: side, width: side, data: Array(b.inputs[0..<side * side]))
                _ = try net.forward(x, algorithm: .direct)
                var start = monotonicSeconds()
                let y = try net.forward(x, algorithm: .direct)
                let runtime = monotonicSeconds() - start
                start = monotonicSeconds()
                let p = try t.predict(inputs: Array(b.inputs[0..<side * side]), count: 1, threads: 1)
                let predict = monotonicSeconds() - start
                XCTAssertEqual(p, y.data)
                print(String(format: "U-net %@ %dx%d forward, 1 thread: runtime direct %.3f s, trainer %.3f s", "\(widths)", side, side, runtime, predict))
                _ = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: count, loss: .l1, threads: threads)
                t.collectTimings = true
                t.resetTimings()
                start = monotonicSeconds()
                _ = try t.lossAndGradient(inputs: b.inputs, targets: b.targets, count: count, loss: .l1, threads: threads)
                let s = monotonicSeconds() - start
                let steps = t.timings
                let f = steps.filter { $0.phase == "forward" }.reduce(0) { $0 + $1.seconds }
                let bw = steps.filter { $0.phase != "forward" }.reduce(0) { $0 + $1.seconds }
                let parts = ["backward", "weight-gradient", "data-gradient"].map { ph in steps.filter { $0.phase == ph }.reduce(0) { $0 + $1.seconds } / Double(count) }
                print(String(format: "U-net %@ %dx%d, %d threads: %.2f samples/s (%.3f s per batch of %d); per sample forward %.3f s, backward %.3f s (thread time: transposes/masks/routing %.3f, weight gradients %.3f, data gradients %.3f)",
                             "\(widths)", side, side, threads, Double(count) / s, s, count, f / Double(count), bw / Double(count), parts[0], parts[1], parts[2]))
                start = monotonicSeconds()
                try t.setParameters(t.parameters)
                print(String(format: "    setParameters (repacking %d parameters): %.3f s", t.layout.count, monotonicSeconds() - start))
                for st in steps.sorted(by: { $0.seconds > $1.seconds }).prefix(12) {
                    print(String(format: "    %-40@ %@ %.1f ms/sample", st.step, st.phase, 1000 * st.seconds / Double(count)))
                }
                var usage = rusage()
                getrusage(RUSAGE_SELF.rawValue, &usage)
                print(String(format: "    estimated peak %.1f MiB; process max RSS so far %.1f MiB", Double(t.peakBytes(threads: threads)) / 1048576,
                             Double(usage.ru_maxrss) / 1024))
            }
        }
    }
}

extension GraphTrainerTests {
    /// The U-net with the input concatenated before the head (`inputSkip`): the runtime equals
    /// the reference executor, and the fast gradient equals the Float64 reference.
    func testInputSkipUNet() throws {
        let m = withBiases(try Architectures.unet(name: "u", widths: [4, 8, 16], exposureRatio: 2, inputSkip: true,
                                                  initializer: Initialization.he.initializer(seed: 21)), seed: 21)
        try check(m, height: 16, width: 24, count: 3, loss: .l1, runtime: ["exposure_ratio": 3], "input-skip U-net")
        let net = try Network(model: m)
        var rng = SplitMix64(seed: 4)
        let x = FeatureMap(channels: 1, height: 16, width: 16, data: (0..<256).map { _ in rng.float() })
        let fast = try net.forward(x, parameters: ["exposure_ratio": 3], algorithm: .auto)
        let ref = try net.forward(x, parameters: ["exposure_ratio": 3], algorithm: .reference)
        let scale = ref.data.map(abs).max() ?? 1
        for i in 0..<fast.data.count { XCTAssertEqual(fast.data[i], ref.data[i], accuracy: 1e-5 * scale) }
    }
}
