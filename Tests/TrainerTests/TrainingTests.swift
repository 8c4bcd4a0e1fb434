import Imaging
import Foundation
import ModelFormat
import Trainer
import XCTest

/// Training runs: reproducible whatever the thread count, resumable to the same bits, and the
/// loss goes down on a learnable problem.
final class TrainingTests: XCTestCase {
    /// A small synthetic sky: a few Gaussian stars on a gradient.
    static func sky(_ h: Int, _ w: Int, seed: UInt64) -> SourceImage {
        var rng = SplitMix64(seed: seed)
        var img = Image2D(height: h, width: w)
        for y in 0..<h { for x in 0..<w { img[y, x] = 0.05 + 0.02 * Double(x) / Double(w) } }
        for _ in 0..<25 {
            let cy = Double(rng.float(0, Float(h))), cx = Double(rng.float(0, Float(w))), a = Double(rng.float(0.1, 1))
            for y in 0..<h { for x in 0..<w {
                let r2 = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx)
                img[y, x] += a * exp(-r2 / 3)
            } }
        }
        return SourceImage(name: "sky\(seed)", checksum: UInt32(seed), raw: img)
    }

    func config(_ recipe: String = "flamary3") -> TrainingConfig {
        var c = TrainingConfig(recipe: recipe)
        c.trainSamples = 40
        c.validationSamples = 30
        c.batchSize = 8
        c.epochs = 2
        c.patience = 5
        c.degradation = Degradation(psfSize: 8, rings: 2, sigma: 0.01)
        c.validationFraction = 0.45
        return c
    }

    func train(_ c: TrainingConfig, threads: Int, interruptAfter: Int? = nil) throws -> (TrainingSession, Model?) {
        let images = [TrainingTests.sky(80, 70, seed: 1), TrainingTests.sky(84, 90, seed: 2)]
        let s = try TrainingSession(config: c, images: images, threads: threads)
        var batches = 0
        var saved: Model?
        try s.run(progress: { _ in }, interrupt: {
            batches += 1
            return interruptAfter.map { batches >= $0 } ?? false
        }, checkpoint: { saved = $0 })
        return (s, saved)
    }

    func testSameBitsWhateverTheThreadCount() throws {
        let (a, _) = try train(config(), threads: 1)
        let (b, _) = try train(config(), threads: 2)
        XCTAssertTrue(a.parameters == b.parameters, "parameters differ")
        XCTAssertEqual(a.history.map { $0.validationLoss }, b.history.map { $0.validationLoss })
        XCTAssertTrue(a.finalModel().tensors == b.finalModel().tensors, "final weights differ")
    }

    func testResumeGivesTheUninterruptedBits() throws {
        let c = config()
        let (full, _) = try train(c, threads: 2)
        // Interrupt in the middle of epoch 1 (after 3 of 5 batches), write the checkpoint to a
        // file, read it back, resume.
        let (_, ckpt) = try train(c, threads: 2, interruptAfter: 3)
        let dir = NSTemporaryDirectory() + "acnn-resume-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ckpt.acnn"
        try ModelWriter.write(XCTUnwrap(ckpt), to: path)
        let images = [TrainingTests.sky(80, 70, seed: 1), TrainingTests.sky(84, 90, seed: 2)]
        let resumed = try TrainingSession(checkpoint: ModelReader(path: path).model(), images: images, threads: 1)
        XCTAssertEqual(resumed.epoch, 0)
        XCTAssertEqual(resumed.batch, 3)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertTrue(resumed.parameters == full.parameters, "resumed parameters differ")
        XCTAssertEqual(resumed.history.map { $0.trainLoss }, full.history.map { $0.trainLoss })
        XCTAssertTrue(resumed.finalModel().tensors == full.finalModel().tensors)
        // A checkpoint is itself a runnable model file, and refuses other images.
        XCTAssertThrowsError(try TrainingSession(checkpoint: ModelReader(path: path).model(),
                                                 images: [TrainingTests.sky(80, 70, seed: 3)], threads: 1))
    }

    func testLossFallsAndMetadataRecordsTheRun() throws {
        var c = config("flamary1")
        c.epochs = 4
        c.trainSamples = 400
        c.batchSize = 20
        c.learningRate = 0.05
        let (s, _) = try train(c, threads: 2)
        XCTAssertLessThan(s.history.last!.trainLoss, s.history.first!.trainLoss)
        let m = s.finalModel()
        XCTAssertEqual(m.metadata["normalization"], .string("clip_max"))
        XCTAssertEqual(m.metadata["training.recipe"], .string("flamary1"))
        XCTAssertEqual(m.metadata["training.noise_sigma"], .float(0.01))
        XCTAssertTrue(m.metadata["training.images"]!.stringValue!.contains("sky1"))
        XCTAssertNotNil(m.metadata["training.validation_loss"])
        // Round trip through the file format.
        XCTAssertEqual(try ModelReader(bytes: ModelWriter.encode(m)).model(), m)
    }

    /// Patches: the target is the truth at offset 9 of the input window; without augmentation
    /// the input is the blurred truth plus the one fixed noise draw.
    func testPatchAlignment() throws {
        let img = TrainingTests.sky(80, 80, seed: 4)
        let d = Degradation(psfSize: 8, rings: 2, sigma: 0.01)
        let sampler = PatchSampler(images: [img], degradation: d, augment: false, validationFraction: 0.5)
        let plan = sampler.plan(count: 5, validation: false, seed: 1, stream: 1)
        var inputs = [Float](repeating: 0, count: 5 * 32 * 32), targets = [Float](repeating: 0, count: 5 * 14 * 14)
        sampler.fill(plan[...], inputs: &inputs, targets: &targets)
        let truth = Degradation.normalise(img.raw)
        let blurred = d.blur(truth)
        let noise = d.addNoise(Image2D(height: 80, width: 80), seed: 1)
        for (k, sp) in plan.enumerated() {
            XCTAssertLessThanOrEqual(sp.y + 32, 40, "training patches stay above the validation cut")
            for i in 0..<14 { for j in 0..<14 {
                XCTAssertEqual(Double(targets[k * 196 + i * 14 + j]), truth[sp.y + 9 + i, sp.x + 9 + j], accuracy: 1e-7)
            } }
            XCTAssertEqual(Double(inputs[k * 1024 + 5 * 32 + 7]), blurred[sp.y + 5, sp.x + 7] + noise[sp.y + 5, sp.x + 7], accuracy: 1e-6)
        }
        for sp in sampler.plan(count: 20, validation: true, seed: 1, stream: 0) { XCTAssertGreaterThanOrEqual(sp.y, 40) }
    }
}
