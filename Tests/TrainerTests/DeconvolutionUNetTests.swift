import Foundation
import Imaging
import ModelFormat
import Runtime
import Trainer
import XCTest

/// `train --recipe deconv-unet`: the crop pairs (blur, noise, noise_mad units), determinism, resume
/// to the same bits, metadata, and the runtime inverting the model's normalisation.
final class DeconvolutionUNetTests: XCTestCase {
    static func sky(_ h: Int, _ w: Int, seed: UInt64, name: String? = nil) -> SourceImage {
        var g = SplitMix64(seed: seed)
        var img = Image2D(height: h, width: w)
        for i in 0..<img.count { img.pixels[i] = 100 + 2 * NoiseStreams.normal(&g) }
        for _ in 0..<25 {
            let (y, x, f) = (Double(g.next() % UInt64(h)), Double(g.next() % UInt64(w)), 50 + Double(g.next() % 900))
            for i in max(0, Int(y) - 6)..<min(h, Int(y) + 7) { for j in max(0, Int(x) - 6)..<min(w, Int(x) + 7) {
                img[i, j] += f * exp(-((Double(i) - y) * (Double(i) - y) + (Double(j) - x) * (Double(j) - x)) / 2)
            } }
        }
        return SourceImage(name: name ?? "sky\(seed)", checksum: UInt32(seed), raw: img)
    }

    func testCropsAreTheBlurredTruthPlusNoiseInNoiseMADUnits() throws {
        let im = Self.sky(90, 80, seed: 4)
        let d = try Degradation(psf: .gaussian(fwhm: 3, size: 11), noise: .gaussian(sigma: 0.004...0.004))
        let noiseless = try Degradation(psf: .gaussian(fwhm: 3, size: 11), noise: NoiseSpec.none)
        let s = try DeconvolutionCropSampler(images: [im], degradation: d, cropSize: 32, validation: false, seed: 7)
        let clean = try DeconvolutionCropSampler(images: [im], degradation: noiseless, cropSize: 32, validation: false, seed: 7)
        // Units: noise_mad fitted on the whole degraded image, as restore fits it.
        let (_, observed) = d.degrade(im.raw, seed: 7 ^ 0xDEC0)
        let fit = Normalization.fit(.noiseMAD, pixels: observed.pixels.map { Float($0) }, invalid: [Bool](repeating: false, count: observed.count), width: observed.width)
        XCTAssertEqual(s.units[0].offset, fit.offset)
        XCTAssertEqual(s.units[0].scale, fit.scale)
        XCTAssertEqual(s.units[0].scale, 0.004, accuracy: 0.0005, "the noise sigma, not the spread of the stars")
        let plan = s.plan(count: 6, seed: 3, stream: 1)
        XCTAssertEqual(plan, s.plan(count: 6, seed: 3, stream: 1), "the plan is a pure function of (seed, stream)")
        XCTAssertNotEqual(plan, s.plan(count: 6, seed: 3, stream: 2))
        XCTAssertEqual(Set(plan.map(\.ratio)), [1])
        let n = 32 * 32
        var inp = [Float](repeating: 0, count: 6 * n), tgt = inp, cin = inp, ctgt = inp
        inp.withUnsafeMutableBufferPointer { i in tgt.withUnsafeMutableBufferPointer { t in s.fill(plan[...], inputs: i.baseAddress!, targets: t.baseAddress!) } }
        cin.withUnsafeMutableBufferPointer { i in ctgt.withUnsafeMutableBufferPointer { t in clean.fill(plan[...], inputs: i.baseAddress!, targets: t.baseAddress!) } }
        let truth = Degradation.normalise(im.raw)
        let (o, sc) = (s.units[0].offset, s.units[0].scale)
        let (co, csc) = (clean.units[0].offset, clean.units[0].scale)
        for (k, sp) in plan.enumerated() {
            // The target is the oriented truth crop; the noiseless input is the PSF's blur of
            // the oriented truth (blurred in that orientation, not rotated after).
            let tv = truth.dihedral(sp.variant)
            let bl = noiseless.blur(tv)
            var diff = 0.0, sumSq = 0.0
            for i in 0..<32 { for j in 0..<32 {
                let q = k * n + i * 32 + j
                XCTAssertEqual(Double(tgt[q]), (tv[sp.y + i, sp.x + j] - o) / sc, accuracy: 2e-3 * max(1, abs(Double(tgt[q]))))
                XCTAssertEqual(Double(cin[q]), (bl[sp.y + i, sp.x + j] - co) / csc, accuracy: 2e-3 * max(1, abs(Double(cin[q]))))
                // Input minus blur is the noise: sigma 0.004 in normalised units.
                let e = Double(inp[q]) * sc + o - bl[sp.y + i, sp.x + j]
                diff += e; sumSq += e * e
            } }
            let sd = (sumSq / 1024 - (diff / 1024) * (diff / 1024)).squareRoot()
            XCTAssertEqual(sd, 0.004, accuracy: 0.0006, "sample \(k)")
        }
        // Images smaller than the crop and sky-relative noise without a sky are refused.
        XCTAssertThrowsError(try DeconvolutionCropSampler(images: [Self.sky(20, 40, seed: 1)], degradation: d, cropSize: 32, validation: false))
        let flat = SourceImage(name: "flat", checksum: 0, raw: Image2D(height: 40, width: 40, pixels: [Double](repeating: 1, count: 1600)))
        XCTAssertThrowsError(try DeconvolutionCropSampler(images: [flat], degradation: Degradation(psf: .gaussian(fwhm: 2, size: 7), noise: .sky(k: 1...1)),
                                                          cropSize: 32, validation: false))
    }

    func config() throws -> DenoiserConfig {
        var c = DenoiserConfig.deconvolution(try Degradation(psf: .moffat(fwhm: 3, beta: 3, size: 15), noise: .gaussian(sigma: 0.002...0.01)))
        c.widths = [4, 8, 16]; c.cropSize = 32; c.batchSize = 3; c.trainSamples = 9; c.validationSamples = 4
        c.epochs = 2; c.learningRate = 1e-3
        return c
    }

    func images() -> (train: [SourceImage], validation: [SourceImage]) {
        ([Self.sky(60, 70, seed: 1), Self.sky(64, 64, seed: 2)], [Self.sky(50, 50, seed: 3)])
    }

    func run(_ c: DenoiserConfig, threads: Int, interruptAfter: Int? = nil) throws -> (DenoiserSession, Model?) {
        let (t, v) = images()
        let s = try DenoiserSession(config: c, trainingImages: t, validationImages: v, threads: threads)
        var batches = 0, saved: Model?
        try s.run(progress: { _ in }, interrupt: {
            batches += 1
            return interruptAfter.map { batches >= $0 } ?? false
        }, checkpoint: { saved = $0 })
        return (s, saved)
    }

    func testSameBitsForAnyThreadCountResumeAndMetadata() throws {
        let c = try config()
        let (full, _) = try run(c, threads: 2)
        let (one, _) = try run(c, threads: 1)
        XCTAssertTrue(one.parameters == full.parameters, "thread count changed the result")
        XCTAssertEqual(full.history.count, 2)
        XCTAssert(full.history.allSatisfy { $0.validationLoss.isFinite && $0.trainLoss.isFinite })
        let (_, ckpt) = try run(c, threads: 2, interruptAfter: 4)
        let dir = NSTemporaryDirectory() + "acnn-deconv-resume-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/ckpt.acnn"
        try ModelWriter.write(XCTUnwrap(ckpt), to: path)
        let (t, v) = images()
        let resumed = try DenoiserSession(checkpoint: ModelReader(path: path).model(), trainingImages: t, validationImages: v, threads: 3)
        XCTAssertEqual(resumed.config, c)
        XCTAssertEqual(resumed.epoch, 1)
        XCTAssertEqual(resumed.batch, 1)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertTrue(resumed.parameters == full.parameters, "resumed parameters differ")
        XCTAssertEqual(resumed.history.map(\.trainLoss), full.history.map(\.trainLoss))
        // A learning-rate step on resume is applied from the current epoch and survives a checkpoint.
        let stepped = try DenoiserSession(checkpoint: ModelReader(path: path).model(), trainingImages: t, validationImages: v, threads: 2)
        try stepped.continueWith(learningRate: 1e-4)
        var saved: Model?
        try stepped.run(progress: { _ in }, interrupt: { false }, checkpoint: { saved = $0 })
        XCTAssertFalse(stepped.parameters == full.parameters, "a different rate gives different weights")
        XCTAssertEqual(saved?.metadata["training.learning_rate_steps"], .floats([1, 1e-4]))
        XCTAssertEqual(try DenoiserSession(checkpoint: XCTUnwrap(saved), trainingImages: t, validationImages: v, threads: 1).rateSteps.map(\.rate), [1e-4])
        XCTAssertThrowsError(try stepped.continueWith(learningRate: 0))
        XCTAssertThrowsError(try DenoiserSession(checkpoint: ModelReader(path: path).model(), trainingImages: [Self.sky(60, 70, seed: 9)],
                                                 validationImages: v, threads: 1), "other images are refused")
        // A deconvolution checkpoint is not a denoiser's, and a denoiser config needs long exposures.
        XCTAssertThrowsError(try DenoiserSession(config: c, training: [], validation: [], threads: 1))
        XCTAssertThrowsError(try DenoiserSession(config: c, trainingImages: t, validationImages: [t[0]], threads: 1))
        let m = full.finalModel()
        XCTAssertEqual(m.metadata["normalization"], .string("noise_mad"))
        XCTAssertEqual(m.metadata["training.recipe"], .string("deconv-unet"))
        XCTAssertEqual(m.metadata["training.task"], .string("deconvolve"))
        XCTAssertEqual(m.metadata["training.psf"], .string("moffat:fwhm=3,beta=3,size=15"))
        XCTAssertEqual(m.metadata["training.noise"], .string("gaussian:sigma=0.002-0.01"))
        XCTAssertEqual(m.metadata["training.loss_units"], .string("peak"))
        XCTAssertEqual(m.metadata["training.input_skip"], .bool(true))
        XCTAssertEqual(try TrainingConfig.degradation(metadata: m.metadata), c.degradation)
        let net = try Network(model: m)
        XCTAssertTrue(net.runtimeParameters.isEmpty, "a deconvolution U-net has no exposure-ratio channel")
        XCTAssertEqual(net.normalization, .noiseMAD)
    }

    /// Fine-tuning: a run started from another model's weights begins at exactly those weights,
    /// records where they came from, and refuses a model of other widths.
    func testInitialiseFromAnotherModel() throws {
        let c = try config()
        let (first, _) = try run(c, threads: 1)
        let trained = first.finalModel()
        var c2 = c
        c2.degradation = try Degradation(psf: .gaussian(fwhm: 2, size: 9), noise: .gaussian(sigma: 0.005...0.005))
        let (t, v) = images()
        let s = try DenoiserSession(config: c2, trainingImages: t, validationImages: v, threads: 1)
        try s.initialise(from: trained, label: "first.acnn")
        XCTAssertTrue(s.parameters == ParameterLayout(model: trained).flatten(trained))
        XCTAssertEqual(s.finalModel().metadata["training.initialised_from"], .string("first.acnn"))
        var other = c2
        other.widths = [4, 8]
        let narrow = try DenoiserSession(config: other, trainingImages: t, validationImages: v, threads: 1)
        XCTAssertThrowsError(try narrow.initialise(from: trained, label: "first.acnn"))
        try s.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertThrowsError(try s.initialise(from: trained, label: "first.acnn"), "only before the first step")
    }

    /// The network is affine in noise_mad units, so restoring an image and the same image in other
    /// units (a x + b, a > 0) gives the same result in those units: what lets one model read
    /// ADU, e-/s or MJy/sr.
    func testRestoreInvertsTheNoiseMADNormalisationInAnyUnits() throws {
        var c = try config()
        c.epochs = 1
        let (s, _) = try run(c, threads: 1)
        let net = try Network(model: s.finalModel())
        let im = Self.sky(64, 64, seed: 11).raw
        func restore(_ a: Double, _ b: Double) throws -> [Float] {
            let f = FITSImage(width: 64, height: 64, pixels: im.pixels.map { Float(a * $0 + b) })
            return try Restoration.restore(f, network: net, options: Restoration.Options(threads: 2)).0
        }
        let base = try restore(1, 0), other = try restore(1e-3, 7)
        var worst = 0.0
        for i in 0..<base.count { worst = max(worst, abs(Double(other[i]) - (1e-3 * Double(base[i]) + 7)) / (1e-3 * 1000)) }
        XCTAssertLessThan(worst, 1e-4, "restore in other units differs by \(worst) of the peak")
    }
}
