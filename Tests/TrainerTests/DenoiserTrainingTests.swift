import Foundation
import Imaging
import Kernels
import ModelFormat
import Runtime
import Trainer
import XCTest

/// `DenoiserSession` (train --recipe astro-unet): determinism, resume to the same bits, metadata.
final class DenoiserTrainingTests: XCTestCase {
    static func field(_ h: Int, _ w: Int, seed: UInt64) -> LongExposure {
        var g = SplitMix64(seed: seed)
        var img = Image2D(height: h, width: w)
        for _ in 0..<30 {
            let (y, x, f) = (Double(g.next() % UInt64(h)), Double(g.next() % UInt64(w)), 200 + Double(g.next() % 2000))
            for i in max(0, Int(y) - 5)..<min(h, Int(y) + 6) { for j in max(0, Int(x) - 5)..<min(w, Int(x) + 6) {
                img[i, j] += f * exp(-((Double(i) - y) * (Double(i) - y) + (Double(j) - x) * (Double(j) - x)) / 3)
            } }
        }
        for i in 0..<img.count { img.pixels[i] += 5 * NoiseStreams.normal(&g) }
        return LongExposure(image: SourceImage(name: "field\(seed)", checksum: UInt32(seed), raw: img), gain: 2, readNoise: 3, sky: 40)
    }

    func config() -> DenoiserConfig {
        var c = DenoiserConfig()
        c.widths = [4, 8, 16]; c.cropSize = 32; c.batchSize = 3; c.trainSamples = 9; c.validationSamples = 4
        c.epochs = 2; c.learningRate = 1e-3; c.ratios = [2, 3]; c.inputSkip = true
        return c
    }

    func run(_ c: DenoiserConfig, threads: Int, interruptAfter: Int? = nil) throws -> (DenoiserSession, Model?) {
        let s = try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1), Self.field(64, 64, seed: 2)],
                                    validation: [Self.field(50, 50, seed: 3)], threads: threads)
        var batches = 0, saved: Model?
        try s.run(progress: { _ in }, interrupt: {
            batches += 1
            return interruptAfter.map { batches >= $0 } ?? false
        }, checkpoint: { saved = $0 })
        return (s, saved)
    }

    func testSameBitsForAnyThreadCountAndResume() throws {
        let c = config()
        let (full, _) = try run(c, threads: 2)
        let (one, _) = try run(c, threads: 1)
        XCTAssertTrue(one.parameters == full.parameters, "thread count changed the result")
        XCTAssertEqual(full.history.count, 2)
        XCTAssert(full.history.allSatisfy { $0.validationLoss.isFinite && $0.trainLoss.isFinite })
        // Interrupted after 4 of 6 batches (in epoch 2), written, read back and resumed.
        let (_, ckpt) = try run(c, threads: 2, interruptAfter: 4)
        let dir = NSTemporaryDirectory() + "acnn-unet-resume-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ckpt.acnn"
        try ModelWriter.write(XCTUnwrap(ckpt), to: path)
        let resumed = try DenoiserSession(checkpoint: ModelReader(path: path).model(),
                                          training: [Self.field(60, 70, seed: 1), Self.field(64, 64, seed: 2)],
                                          validation: [Self.field(50, 50, seed: 3)], threads: 3)
        XCTAssertEqual(resumed.epoch, 1)
        XCTAssertEqual(resumed.batch, 1)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertTrue(resumed.parameters == full.parameters, "resumed parameters differ")
        XCTAssertEqual(resumed.history.map(\.trainLoss), full.history.map(\.trainLoss))
        // Other images are refused; the final model states its normalisation and runs in the runtime.
        XCTAssertThrowsError(try DenoiserSession(checkpoint: ModelReader(path: path).model(), training: [Self.field(60, 70, seed: 9)],
                                                 validation: [Self.field(50, 50, seed: 3)], threads: 1))
        let m = full.finalModel()
        XCTAssertEqual(m.metadata["normalization"], .string("sky_mad"))
        XCTAssertEqual(m.metadata["training.recipe"], .string("astro-unet"))
        XCTAssertEqual(m.metadata["training.input_skip"], .bool(true))
        let net = try Network(model: m)
        XCTAssertEqual(net.runtimeParameters["exposure_ratio"], 2)
        // --latest: the latest epoch's parameters, whatever the best validation epoch.
        let latest = full.finalModel(latest: true)
        XCTAssertEqual(latest.metadata["training.written_epoch"], .int(Int64(full.history.count)))
        XCTAssertEqual(full.trainer.layout.flatten(latest), full.parameters)
        XCTAssertEqual(full.trainer.layout.flatten(m), full.bestParameters)
        XCTAssertThrowsError(try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1)], validation: [], threads: 1))
        XCTAssertThrowsError(try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1)], validation: [Self.field(60, 70, seed: 1)], threads: 1))
    }

    /// `--bias-free`: Adam never moves a bias (they stay exactly 0, through a checkpoint and a
    /// resume, and after starting from another model's weights), the weights do train, and the
    /// trained network is positively homogeneous once the ratio channel is 0: 8 times the input
    /// gives exactly 8 times the output (a power of two scales every rounding step exactly), in
    /// every convolution algorithm.
    func testBiasFreeHoldsBiasesAtZeroAndIsScaleEquivariant() throws {
        var c = config()
        c.biasFree = true
        let (s, ckpt) = try run(c, threads: 2, interruptAfter: 4)
        let resumed = try DenoiserSession(checkpoint: XCTUnwrap(ckpt), training: [Self.field(60, 70, seed: 1), Self.field(64, 64, seed: 2)],
                                          validation: [Self.field(50, 50, seed: 3)], threads: 1)
        XCTAssertTrue(resumed.config.biasFree)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        let m = resumed.finalModel()
        let biases = ParameterLayout.biasNames(m)
        XCTAssertEqual(biases.count, m.graph.nodes.filter { $0.op == .conv2d || $0.op == .convTranspose2d }.count)
        for n in biases { XCTAssert(m.tensors[n]!.values.allSatisfy { $0 == 0 }, "\(n) moved") }
        let initial = try c.initialModel()
        let weight = try XCTUnwrap(m.graph.nodes.first { $0.op == .conv2d }?.params[0])
        XCTAssertNotEqual(m.tensors[weight]!.values, initial.tensors[weight]!.values, "the weights did not train")
        XCTAssertEqual(m.metadata["training.bias_free"], .bool(true))
        XCTAssertGreaterThan(s.epoch, 0)

        let net = try Network(model: m)
        var rng = SplitMix64(seed: 5)
        let data = (0..<(32 * 32)).map { _ in rng.float(-2, 30) }
        for algorithm in [ConvAlgorithm.direct, .auto] {
            let y = try net.forward(FeatureMap(channels: 1, height: 32, width: 32, data: data), parameters: ["exposure_ratio": 0], algorithm: algorithm)
            let y8 = try net.forward(FeatureMap(channels: 1, height: 32, width: 32, data: data.map { $0 * 8 }), parameters: ["exposure_ratio": 0], algorithm: algorithm)
            XCTAssertEqual(y8.data, y.data.map { $0 * 8 }, "\(algorithm)")
            XCTAssert(y.data.contains { $0 != 0 })
        }

        // Weights from a model with biases: the biases are dropped, the weights kept.
        var biased = try c.initialModel()
        for n in biases { biased.tensors[n]!.values = biased.tensors[n]!.values.map { _ in 0.5 } }
        let warm = try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1)], validation: [Self.field(50, 50, seed: 3)], threads: 1)
        try warm.initialise(from: biased, label: "test")
        let layout = warm.trainer.layout
        for n in biases { XCTAssert(warm.parameters[layout.range(n)].allSatisfy { $0 == 0 }) }
        XCTAssertEqual(Array(warm.parameters[layout.range(weight)]), biased.tensors[weight]!.values)
    }
}
