import Foundation
import Imaging
import ModelFormat
import Runtime
import Trainer
import XCTest

/// `train --recipe deconv-psf` (issue 24): the PSF family, the crops (each its own PSF, noise and
/// Wiener step) and a run that writes a model the runtime binds a PSF to.
final class PSFFamilyTests: XCTestCase {
    func testFamilyTextAndMembers() throws {
        let f = PSFFamily()
        XCTAssertEqual(try PSFFamily(parsing: f.description), f)
        let g = try PSFFamily(parsing: "moffat:fwhm=2-4,beta=2-3,e=0,noise=1e-05-0.01,side=33")
        XCTAssertEqual(g.kinds, [.moffat])
        XCTAssertEqual(g.fwhm, 2...4)
        XCTAssertEqual(g.noise, 1e-5...1e-2)
        XCTAssertEqual(g.side, 33)
        XCTAssertEqual(f.description, "airy,gaussian,moffat:fwhm=1.5-8,beta=1.5-6,e=0.15,noise=1e-06-0.1,side=65",
                       "the default text (recorded in checkpoints) is unchanged by the later keys")
        let h = try PSFFamily(parsing: "gaussian:psf_error=0.1,lambda=dp")
        XCTAssertEqual(h.psfError, 0.1)
        XCTAssertEqual(h.lambdaRule, .dp)
        XCTAssertEqual(try PSFFamily(parsing: h.description), h)
        let r = try PSFFamily(parsing: "moffat:lambda=risk")
        XCTAssertEqual(r.lambdaRule, .risk)
        XCTAssertEqual(try PSFFamily(parsing: r.description), r)
        for bad in ["", "lorentz", "moffat:fwhm=4-2", "moffat:side=32", "moffat:beta=0.5-2", "gaussian:size=3", "gaussian:psf_error=2", "gaussian:lambda=sure"] {
            XCTAssertThrowsError(try PSFFamily(parsing: bad), bad)
        }
        // Round members have the FWHM they were drawn with (measured as the runtime measures it).
        for kind in PSFFamily.Kind.allCases {
            for fwhm in [1.5, 3.0, 6.0] {
                let m = PSFFamily.Member(kind: kind, fwhm: fwhm, beta: 2.5, ellipticity: 0, angle: 0)
                let k = m.kernel(side: 65)
                XCTAssertEqual(k.pixels.reduce(0, +), 1, accuracy: 1e-9)
                let measured = try PSFKernel(height: 65, width: 65, values: k.pixels).fwhm
                // Pixel integration widens the smallest PSFs (a 1.5 px Gaussian sampled over pixels
                // is about 1.7 px wide).
                XCTAssertEqual(measured, fwhm, accuracy: 0.08 * fwhm + 0.25, "\(kind) \(fwhm)")
            }
        }
        var a = SplitMix64(seed: 9), b = SplitMix64(seed: 9)
        for _ in 0..<50 {
            let (m1, s1, l1) = f.draw(&a), (m2, s2, l2) = f.draw(&b)
            XCTAssertEqual(m1, m2); XCTAssertEqual(s1, s2); XCTAssertEqual(l1, l2)
            XCTAssertTrue(f.fwhm.contains(m1.fwhm) && f.noise.contains(s1) && m1.ellipticity <= f.maxEllipticity)
            XCTAssertTrue(l1 >= 1 / 10.0 - 1e-12 && l1 <= 10 + 1e-12)
        }
    }

    /// `psf_error`: the deconvolution PSF is the blur's perturbed within the stated factors (no
    /// draw at all without it); `lambda=dp` and `psf_error` change the input, not the target.
    func testPSFErrorAndLambdaRule() throws {
        var g = SplitMix64(seed: 4)
        let m = PSFFamily.Member(kind: .moffat, fwhm: 3, beta: 2.5, ellipticity: 0.05, angle: 0.3)
        XCTAssertEqual(PSFFamily().deconvolutionMember(m, &g), m)
        XCTAssertEqual(g.state, SplitMix64(seed: 4).state, "no draw without psf_error")
        let e = try PSFFamily(parsing: "moffat:psf_error=0.1")
        for _ in 0..<50 {
            let p = e.deconvolutionMember(m, &g)
            XCTAssertTrue(p.fwhm >= 3 / 1.1 - 1e-12 && p.fwhm <= 3 * 1.1 + 1e-12 && p.beta >= 2.5 / 1.1 - 1e-12 && p.beta <= 2.5 * 1.1 + 1e-12)
            XCTAssertTrue(abs(p.ellipticity - 0.05) <= 0.05 + 1e-12 && p.ellipticity >= 0)
        }
        let im = DeconvolutionUNetTests.sky(120, 120, seed: 6)
        let base = try PSFFamily(parsing: "gaussian,moffat:fwhm=2-4,noise=1e-03-0.01,side=17")
        var errFam = base; errFam.psfError = 0.1
        var dpFam = base; dpFam.lambdaRule = .dp
        var riskFam = base; riskFam.lambdaRule = .risk
        let specs = try PSFFamilyCropSampler(images: [im], family: base, context: 8, cropSize: 32, validation: false).plan(count: 6, seed: 1, stream: 1)
        let a = try PSFFamilyCropSampler(images: [im], family: base, context: 8, cropSize: 32, validation: false)
        for f in [errFam, dpFam, riskFam] {
            let b = try PSFFamilyCropSampler(images: [im], family: f, context: 8, cropSize: 32, validation: false)
            var differ = 0
            for sp in specs {
                let (x, y) = (a.sample(sp), b.sample(sp))
                XCTAssertTrue(x.target == y.target, "the target does not change")
                if x.input != y.input { differ += 1 }
            }
            XCTAssertGreaterThan(differ, 0, f.description)
        }
    }

    /// Crops are a pure function of their spec (any thread count); the input is the runtime's
    /// Wiener step on the blurred, noisy truth in noise_mad units, and its loss scale is
    /// 1 / sqrt(its error + 0.1).
    func testCropsDeterministicAndLossScales() throws {
        let im = DeconvolutionUNetTests.sky(200, 190, seed: 5)
        let fam = try PSFFamily(parsing: "airy,gaussian,moffat:fwhm=1.5-4,noise=1e-04-0.01,side=17")
        let one = try PSFFamilyCropSampler(images: [im], family: fam, context: 8, cropSize: 32, validation: false, threads: 1)
        let two = try PSFFamilyCropSampler(images: [im], family: fam, context: 8, cropSize: 32, validation: false, threads: 2)
        XCTAssertEqual(one.regionSide, 32 + 2 * (8 + 8))
        let plan = one.plan(count: 5, seed: 2, stream: 1)
        XCTAssertEqual(plan, two.plan(count: 5, seed: 2, stream: 1))
        XCTAssertNotEqual(plan, one.plan(count: 5, seed: 2, stream: 2))
        let n = 32 * 32
        var i1 = [Float](repeating: 0, count: 5 * n), t1 = i1, i2 = i1, t2 = i1
        i1.withUnsafeMutableBufferPointer { i in t1.withUnsafeMutableBufferPointer { t in one.fill(plan[...], inputs: i.baseAddress!, targets: t.baseAddress!) } }
        i2.withUnsafeMutableBufferPointer { i in t2.withUnsafeMutableBufferPointer { t in two.fill(plan[...], inputs: i.baseAddress!, targets: t.baseAddress!) } }
        XCTAssertEqual(i1, i2)
        XCTAssertEqual(t1, t2)
        let scales = one.lossScales(plan[...])!
        for (k, sp) in plan.enumerated() {
            let s = one.sample(sp)
            XCTAssertEqual(Array(i1[(k * n)..<((k + 1) * n)]), s.input)
            XCTAssertEqual(scales[k], 1 / (s.wienerMSE + 0.1).squareRoot(), accuracy: 1e-12)
            // The target is the oriented truth crop in the observation's units: its median sits
            // near 0 (the sky) and it is not the input.
            XCTAssertNotEqual(s.input, s.target)
        }
        XCTAssertThrowsError(try PSFFamilyCropSampler(images: [DeconvolutionUNetTests.sky(60, 60, seed: 1)], family: fam, context: 8,
                                                      cropSize: 32, validation: false))
    }

    /// A short run writes a model with the Wiener step and its family in the metadata; the runtime
    /// binds a PSF of the family to it and refuses one outside; resume continues to the same bits.
    /// A tiny PSF-aware run: family, recipe (widths 4-8, crops of 32, 2 epochs of 4 crops,
    /// bias-free), one training and one validation sky.
    func tinyRun() throws -> (PSFFamily, DenoiserConfig, [SourceImage], [SourceImage]) {
        let fam = try PSFFamily(parsing: "gaussian,moffat:fwhm=2-4,noise=1e-03-0.01,side=17")
        var c = DenoiserConfig.psfAware(fam, context: 8)
        c.widths = [4, 8]; c.cropSize = 32; c.batchSize = 2; c.trainSamples = 4; c.validationSamples = 2; c.epochs = 2
        c.learningRate = 1e-3; c.biasFree = true
        return (fam, c, [DeconvolutionUNetTests.sky(120, 120, seed: 1, name: "a")], [DeconvolutionUNetTests.sky(100, 100, seed: 2, name: "b")])
    }

    func testRunWritesPSFAwareModel() throws {
        let (fam, c, train, val) = try tinyRun()
        let s = try DenoiserSession(config: c, trainingImages: train, validationImages: val, threads: 2)
        var ckpt: Model?
        var batches = 0
        try s.run(progress: { _ in }, interrupt: { batches += 1; return batches == 3 }, checkpoint: { ckpt = $0 })
        let resumed = try DenoiserSession(checkpoint: ckpt!, trainingImages: train, validationImages: val, threads: 1)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        try s.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertEqual(resumed.parameters, s.parameters, "resume continues to the same bits")
        let m = s.finalModel()
        XCTAssertTrue(m.graph.nodes.contains { $0.op == .wienerDeconvolution })
        XCTAssertEqual(m.metadata["deconvolution.psf_fwhm"]?.doubleArray, [2, 4])
        XCTAssertEqual(m.metadata["training.psf_family"]?.stringValue, fam.description)
        XCTAssertTrue(s.history.allSatisfy { $0.validationLoss.isFinite })
        let net = try Network(model: m)
        let k = PSFFamily.Member(kind: .moffat, fwhm: 3, beta: 2.5, ellipticity: 0, angle: 0).kernel(side: 17)
        try net.bind(psf: try PSFKernel(height: 17, width: 17, values: k.pixels))
        let img = FITSImage(width: 64, height: 64, pixels: DeconvolutionUNetTests.sky(64, 64, seed: 3).raw.pixels.map(Float.init))
        let out = try Restoration.restore(img, network: net, options: .init(threads: 2)).pixels
        XCTAssertTrue(out.allSatisfy { $0.isFinite })
        let wide = PSFFamily.Member(kind: .gaussian, fwhm: 6, beta: 2.5, ellipticity: 0, angle: 0).kernel(side: 17)
        XCTAssertThrowsError(try net.bind(psf: try PSFKernel(height: 17, width: 17, values: wide.pixels)))
    }

    /// Tied upsampling (`--tied-upsampling`): every 2x2 transposed convolution's four taps stay
    /// equal through training and after loading another model's weights (each pair's mean), the
    /// checkpoint says so and resumes with it to the same bits.
    func testTiedUpsamplingKeepsTapsEqual() throws {
        let (_, c0, train, val) = try tinyRun()
        var c = c0
        let free = try DenoiserSession(config: c, trainingImages: train, validationImages: val, threads: 2)
        try free.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        func tied(_ m: Model) -> Bool {
            for n in m.graph.nodes where n.op == .convTranspose2d {
                let v: [Float] = m.tensors[n.params[0]]!.values
                var i = 0
                while i < v.count {
                    if v[i] != v[i + 1] || v[i] != v[i + 2] || v[i] != v[i + 3] { return false }
                    i += 4
                }
            }
            return true
        }
        XCTAssertFalse(tied(free.finalModel()), "free taps differ")
        c.tiedUpsampling = true
        let s = try DenoiserSession(config: c, trainingImages: train, validationImages: val, threads: 2)
        try s.initialise(from: free.finalModel(), label: "free")
        var ckpt: Model?
        var batches = 0
        try s.run(progress: { _ in }, interrupt: { batches += 1; return batches == 2 }, checkpoint: { ckpt = $0 })
        XCTAssertTrue(tied(ckpt!))
        XCTAssertEqual(ckpt!.metadata["training.tied_upsampling"], .bool(true))
        let resumed = try DenoiserSession(checkpoint: ckpt!, trainingImages: train, validationImages: val, threads: 1)
        XCTAssertTrue(resumed.config.tiedUpsampling)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        try s.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertEqual(resumed.parameters, s.parameters, "resume continues to the same bits")
        XCTAssertTrue(tied(s.finalModel()))
        XCTAssertTrue(s.history.allSatisfy { $0.validationLoss.isFinite })
    }
}
