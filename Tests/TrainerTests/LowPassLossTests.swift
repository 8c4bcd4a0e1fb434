import Foundation
import Kernels
import ModelFormat
import Runtime
import Trainer
import XCTest

/// `LowPassLoss`: its Float64 derivative against central finite differences, the trainer's Float32
/// path against that reference, and a U-net's parameter gradients with the term against the
/// Float64 graph gradient (same bound as GraphTrainerTests), the same bits on 1-3 threads.
final class LowPassLossTests: XCTestCase {
    func testReferenceGradientMatchesFiniteDifferences() throws {
        let lp = try LowPassLoss(weight: 0.7, sigma: 1.3)
        let (h, w) = (9, 11)
        var rng = SplitMix64(seed: 4)
        let d = (0..<(h * w)).map { _ in Double(rng.float(-1, 1)) }
        let (_, grad) = lp.reference(d, height: h, width: w)
        let eps = 1e-6
        for i in stride(from: 0, to: h * w, by: 7) {
            var p = d, m = d
            p[i] += eps; m[i] -= eps
            let numeric = (lp.reference(p, height: h, width: w).value - lp.reference(m, height: h, width: w).value) / (2 * eps)
            XCTAssertEqual(grad[i], numeric, accuracy: 1e-6 * max(1, abs(numeric)), "pixel \(i)")
        }
        XCTAssertThrowsError(try LowPassLoss(weight: -1, sigma: 1.5))
        XCTAssertThrowsError(try LowPassLoss(weight: 1, sigma: 0))
    }

    /// A Float64 reference of a batch with per-pixel L1 plus the term (GraphTrainerTests'
    /// conventions: every term over the batch's output values).
    func reference(_ m: Model, _ t: GraphTrainer, inputs: [Float], targets: [Float], count: Int, lp: LowPassLoss,
                   ratios: [Double]) throws -> (loss: Double, gradient: [Double]) {
        var g = try GraphGradient<Double>(model: m)
        let p = t.parameters.map(Double.init)
        var grad = [Double](repeating: 0, count: p.count)
        let inN = t.inputChannels * t.inputHeight * t.inputWidth
        let plane = t.outputHeight * t.outputWidth, outN = t.outputChannels * plane
        let total = Double(count * outN)
        var l = 0.0
        for n in 0..<count {
            g.runtimeParameters = ["exposure_ratio": ratios[n]]
            let x = Tensor<Double>(channels: t.inputChannels, height: t.inputHeight, width: t.inputWidth,
                                   data: inputs[n * inN..<(n + 1) * inN].map(Double.init))
            let values = g.forward(x, p)
            let y = values[m.graph.outputs[0]]!
            var dy = y
            for c in 0..<t.outputChannels {
                let d = (0..<plane).map { y.data[c * plane + $0] - Double(targets[n * outN + c * plane + $0]) }
                let term = lp.reference(d, height: t.outputHeight, width: t.outputWidth)
                l += term.value
                for i in 0..<plane {
                    l += abs(d[i])
                    dy.data[c * plane + i] = ((d[i] > 0 ? 1 : d[i] < 0 ? -1 : 0) + term.gradient[i]) / total
                }
            }
            g.backward(values, outputGradient: dy, p, into: &grad)
        }
        return (l / total, grad)
    }

    func testUNetWithTheTermMatchesTheReferenceOnAnyThreadCount() throws {
        var rngW = SplitMix64(seed: 19)
        var m = try Architectures.unet(name: "u", widths: [4, 8, 16], initializer: Initialization.he.initializer(seed: 9))
        for k in m.tensors.keys.sorted() where k.hasSuffix(".bias") { m.tensors[k]!.values = m.tensors[k]!.values.map { _ in rngW.float() * 0.1 } }
        let t = try GraphTrainer(model: m, inputHeight: 24, inputWidth: 32)
        var rng = SplitMix64(seed: 3)
        let count = 3
        let inputs = (0..<(count * t.inputChannels * t.inputHeight * t.inputWidth)).map { _ in rng.float(-1, 1) }
        let targets = (0..<(count * t.outputChannels * t.outputHeight * t.outputWidth)).map { _ in rng.float(-1, 1) }
        let ratios: [Float] = [2, 3, 4]
        let lp = try LowPassLoss(weight: 2, sigma: 1.5)
        let plain = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: 2,
                                          sampleParameters: ["exposure_ratio": ratios])
        t.lowPassLoss = lp
        let fast = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: 1,
                                         sampleParameters: ["exposure_ratio": ratios])
        let ref = try reference(m, t, inputs: inputs, targets: targets, count: count, lp: lp, ratios: ratios.map(Double.init))
        XCTAssertEqual(fast.loss, ref.loss, accuracy: 1e-5 * ref.loss)
        XCTAssertGreaterThan(fast.loss, plain.loss, "the term adds to the loss")
        for name in t.layout.names {
            let r = t.layout.range(name)
            let scale = ref.gradient[r].map(abs).max()!
            let err = r.map { abs(Double(fast.gradient[$0]) - ref.gradient[$0]) }.max()!
            XCTAssertLessThan(err / max(scale, 1e-12), 1e-4, name)
        }
        for threads in [2, 3] {
            let other = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: threads,
                                              sampleParameters: ["exposure_ratio": ratios])
            XCTAssertEqual(other.loss.bitPattern, fast.loss.bitPattern)
            XCTAssertEqual(other.gradient.map(\.bitPattern), fast.gradient.map(\.bitPattern), "\(threads) threads")
        }
        t.lowPassLoss = nil
        let back = try t.lossAndGradient(inputs: inputs, targets: targets, count: count, loss: .l1, threads: 2,
                                         sampleParameters: ["exposure_ratio": ratios])
        XCTAssertEqual(back.gradient, plain.gradient, "without the term, the plain gradient")
    }
}
