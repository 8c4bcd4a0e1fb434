import Foundation
import Imaging
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
        XCTAssertThrowsError(try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1)], validation: [], threads: 1))
        XCTAssertThrowsError(try DenoiserSession(config: c, training: [Self.field(60, 70, seed: 1)], validation: [Self.field(60, 70, seed: 1)], threads: 1))
    }
}
