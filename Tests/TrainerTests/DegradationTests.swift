import Imaging
import Foundation
import ModelFormat
import Runtime
import Trainer
import XCTest

/// The generalised degradation (any PSF, Gaussian / sky-relative / Poisson noise, ranges drawn
/// per patch): the default is the paper's path bit for bit, the PSFs conserve flux, the noise has
/// the level it names, and models record and resume it.
final class DegradationTests: XCTestCase {
    // MARK: helpers

    /// A sky with a noisy background of known sigma (before normalisation) and some stars.
    static func noisySky(_ h: Int, _ w: Int, seed: UInt64, background: Double = 0.1, sigma: Double = 0.004) -> SourceImage {
        var img = TrainingTests.sky(h, w, seed: seed).raw
        var g = GaussianStream(seed: seed &+ 77)
        img = img.map { $0 + background + sigma * g.next() }
        return SourceImage(name: "noisy\(seed)", checksum: UInt32(seed &+ 100), raw: img)
    }

    func config(_ d: Degradation) -> TrainingConfig {
        var c = TrainingConfig(recipe: "flamary3")
        c.trainSamples = 40
        c.validationSamples = 30
        c.batchSize = 8
        c.epochs = 2
        c.patience = 5
        c.degradation = d
        c.validationFraction = 0.45
        return c
    }

    var images: [SourceImage] { [DegradationTests.noisySky(80, 70, seed: 1), DegradationTests.noisySky(84, 90, seed: 2)] }

    func train(_ c: TrainingConfig, threads: Int, interruptAfter: Int? = nil) throws -> (TrainingSession, Model?) {
        let s = try TrainingSession(config: c, images: images, threads: threads)
        var batches = 0
        var saved: Model?
        try s.run(progress: { _ in }, interrupt: {
            batches += 1
            return interruptAfter.map { batches >= $0 } ?? false
        }, checkpoint: { saved = $0 })
        return (s, saved)
    }

    func fill(_ sampler: PatchSampler, _ plan: [SampleSpec]) -> (inputs: [Float], targets: [Float]) {
        let s = sampler.currentInputSize, o = sampler.currentOutputSize
        var inputs = [Float](repeating: 0, count: plan.count * s * s), targets = [Float](repeating: 0, count: plan.count * o * o)
        sampler.fill(plan[...], inputs: &inputs, targets: &targets)
        return (inputs, targets)
    }

    func std(_ v: [Double]) -> Double {
        let m = v.reduce(0, +) / Double(v.count)
        return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count)).squareRoot()
    }

    // MARK: the default is the old path

    /// The old code, written out: normalise, Airy blur by `LinearConvolution`, sigma times one
    /// `GaussianStream` in raster order.
    func testDefaultDegradationIsTheOldOneBitForBit() throws {
        XCTAssertEqual(try Degradation(psf: .paper, noise: .paper), Degradation())
        XCTAssertEqual(Degradation().psfSpec, .airy(size: 64, rings: 5))
        XCTAssertEqual(Degradation().noise, .gaussian(sigma: 0.01...0.01))
        XCTAssertEqual(Degradation().description, "airy(size=64, rings=5.0) + gaussian(sigma=0.01)")
        let raw = DegradationTests.noisySky(96, 80, seed: 5).raw
        let truth = Degradation.normalise(raw)
        let blurred = LinearConvolution(kernel: airyPSF(size: 64, rings: 5), height: 96, width: 80).apply(truth)
        var g = GaussianStream(seed: 11)
        let old = blurred.map { $0 + 0.01 * g.next() }
        for threads in [1, 2] {
            let (t, o) = Degradation().degrade(raw, seed: 11, threads: threads)
            XCTAssertEqual(t.pixels.map(\.bitPattern), truth.pixels.map(\.bitPattern))
            XCTAssertEqual(o.pixels.map(\.bitPattern), old.pixels.map(\.bitPattern), "threads \(threads)")
        }

        // Patches, with augmentation: Float(Float(blur of the orientation) + sigma * g.next()), one
        // stream per sample seeded by its noise seed; without: Float blur + the one Float noise draw.
        let d = Degradation(psfSize: 8, rings: 2, sigma: 0.01)
        let img = DegradationTests.noisySky(80, 80, seed: 4)
        let t0 = Degradation.normalise(img.raw)
        for augment in [true, false] {
            let sampler = PatchSampler(images: [img], degradation: d, augment: augment, validationFraction: 0.5, noiseSeed: 3, threads: 2)
            let plan = sampler.plan(count: 12, validation: false, seed: 1, stream: 1)
            let (inputs, _) = fill(sampler, plan)
            var fixedNoise = [Float]()
            if !augment { var g = GaussianStream(seed: 3); fixedNoise = (0..<6400).map { _ in Float(0 + 0.01 * g.next()) } }
            for (k, sp) in plan.enumerated() {
                let tr = t0.dihedral(sp.variant)
                let bl = LinearConvolution(kernel: airyPSF(size: 8, rings: 2), height: tr.height, width: tr.width).apply(tr).pixels.map(Float.init)
                var g = GaussianStream(seed: sp.noiseSeed)
                for i in 0..<32 { for j in 0..<32 {
                    let q = (sp.y + i) * tr.width + sp.x + j
                    let expected = augment ? Float(Double(bl[q]) + 0.01 * g.next()) : bl[q] + fixedNoise[q]
                    XCTAssertEqual(inputs[k * 1024 + i * 32 + j].bitPattern, expected.bitPattern)
                } }
            }
        }

        // The metadata keeps the old keys with the new ones.
        let s = try TrainingSession(config: config(Degradation()), images: images, threads: 1)
        let m = s.finalModel().metadata
        XCTAssertEqual(m["training.psf"], .string("airy:size=64,rings=5"))
        XCTAssertEqual(m["training.noise"], .string("gaussian:sigma=0.01"))
        XCTAssertEqual(m["training.psf_size"], .int(64))
        XCTAssertEqual(m["training.psf_rings"], .float(5))
        XCTAssertEqual(m["training.noise_sigma"], .float(0.01))
    }

    // MARK: PSFs

    func testPSFBlursConserveFluxAndKeepTheCentre() throws {
        let dir = NSTemporaryDirectory() + "acnn-psf-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A measured PSF: an asymmetric 9 x 9 blob, not normalised, one NaN.
        var px = [Float](repeating: 0, count: 81)
        for i in 0..<9 { for j in 0..<9 {
            let (dy, dx) = (Double(i - 4), Double(j - 4))
            px[i * 9 + j] = Float(50 * exp(-(dy * dy / 3 + dx * dx / 1.5)))
        } }
        px[0] = .nan
        let file = dir + "/psf.fits"
        try FITSIO.writeImage(path: file, width: 9, height: 9, pixels: px, headerCards: [])
        let specs: [PSFSpec] = [.gaussian(fwhm: 3, size: nil), .moffat(fwhm: 4, beta: 2.5, size: nil), .file(file), try PSFSpec(parsing: "moffat:fwhm=2.5,beta=3,size=21")]
        var truth = Image2D(height: 101, width: 95)
        truth[50, 47] = 1
        truth[80, 18] = 0.5   // far enough that no kernel reaches the centroid window
        for spec in specs {
            let d = try Degradation(psf: spec, noise: .none)
            XCTAssertEqual(d.psf.pixels.reduce(0, +), 1, accuracy: 1e-12, "\(spec) kernel")
            let b = d.blur(truth, threads: 2)
            XCTAssertEqual(b.pixels.reduce(0, +), 1.5, accuracy: 1e-9, "\(spec) conserves flux")
            // The point source stays where it was: the centroid of its blur (a window around it).
            var (sy, sx, s) = (0.0, 0.0, 0.0)
            for y in 38...62 { for x in 35...59 { sy += Double(y) * b[y, x]; sx += Double(x) * b[y, x]; s += b[y, x] } }
            XCTAssertEqual(sy / s, 50, accuracy: 1e-6, "\(spec)")
            XCTAssertEqual(sx / s, 47, accuracy: 1e-6, "\(spec)")
            XCTAssertEqual(d.degrade(truth, seed: 1).observed, b, "no noise: the observation is the blur")
        }
        // The none PSF leaves the truth as it is; a missing file is a clear error.
        XCTAssertEqual(try Degradation(psf: .none, noise: .none).blur(truth), truth)
        XCTAssertThrowsError(try Degradation(psf: .file(dir + "/missing.fits")))
    }

    // MARK: noise

    func testNoiseSpecsParsePrintAndRefuseBadInput() throws {
        let good: [(String, NoiseSpec)] = [
            ("gaussian:sigma=0.01", .gaussian(sigma: 0.01...0.01)),
            ("gaussian:sigma=0.003-0.03", .gaussian(sigma: 0.003...0.03)),
            ("gaussian:sigma=1e-4-3e-2", .gaussian(sigma: 1e-4...3e-2)),
            ("sky:k=1-3", .sky(k: 1...3)),
            ("sky:k=2", .sky(k: 2...2)),
            ("poisson:electrons=1000,read=5", .poisson(electrons: 1000...1000, read: 5...5, sky: 0...0)),
            ("Poisson: electrons=100-10000, read=2-8, sky=0.01", .poisson(electrons: 100...10000, read: 2...8, sky: 0.01...0.01)),
            ("none", .none),
        ]
        for (text, spec) in good {
            let parsed = try NoiseSpec(parsing: text)
            XCTAssertEqual(parsed, spec, text)
            XCTAssertEqual(try NoiseSpec(parsing: parsed.description), spec, "round trip of \(parsed.description)")
        }
        XCTAssertEqual(NoiseSpec.gaussian(sigma: 0.1 / 3...0.1 / 3).description, "gaussian:sigma=\(0.1 / 3)")
        let bad: [(String, String)] = [
            ("gauss:sigma=1", "unknown noise"), ("gaussian", "unknown noise"), ("gaussian:", "needs sigma"),
            ("gaussian:sigma=-1", "sigma must be >= 0"), ("gaussian:sigma=0.03-0.003", "LO <= HI"),
            ("gaussian:sigma=0-0.1", "log-uniformly"), ("gaussian:k=2", "takes sigma"), ("sky:k=abc", "not a number"),
            ("poisson:read=5", "needs electrons"), ("poisson:electrons=0", "electrons must be > 0"),
            ("poisson:electrons=10,electrons=20", "twice"), ("gaussian:sigma=nan", "finite"), ("gaussian:sigma=1-2-3", "range"),
        ]
        for (text, why) in bad {
            XCTAssertThrowsError(try NoiseSpec(parsing: text), text) { e in
                XCTAssertTrue("\(e)".contains(why), "\(text): \(e)")
            }
        }
    }

    func testPerPatchLevelsStayInTheRangeAndAreDeterministic() throws {
        let n = 4000
        let sig = NoiseSpec.gaussian(sigma: 0.003...0.03)
        var sigmas: [Double] = []
        for s in 0..<UInt64(n) {
            guard case .gaussian(let v) = sig.level(seed: s &* 7919) else { return XCTFail("gaussian level") }
            XCTAssertTrue(v >= 0.003 && v <= 0.03)
            sigmas.append(v)
        }
        // Log-uniform: half below the geometric middle, a quarter below 0.003 * 10^0.25.
        let below = Double(sigmas.filter { $0 < (0.003 * 0.03).squareRoot() }.count) / Double(n)
        XCTAssertEqual(below, 0.5, accuracy: 0.03)
        XCTAssertEqual(Double(sigmas.filter { $0 < 0.003 * pow(10, 0.25) }.count) / Double(n), 0.25, accuracy: 0.03)
        XCTAssertEqual(sig.level(seed: 42), sig.level(seed: 42))
        // Sky multiples: uniform in k, times the sky sigma.
        let ks = (0..<UInt64(n)).map { s -> Double in
            if case .gaussian(let v) = NoiseSpec.sky(k: 1...3).level(seed: s, skySigma: 0.5) { return v / 0.5 }
            return .nan
        }
        XCTAssertTrue(ks.allSatisfy { $0 >= 1 && $0 <= 3 })
        XCTAssertEqual(ks.reduce(0, +) / Double(n), 2, accuracy: 0.05)
        for s in 0..<UInt64(200) {
            guard case .poisson(let e, let r, let k) = NoiseSpec.poisson(electrons: 100...10000, read: 2...8, sky: 0...0).level(seed: s) else { return XCTFail() }
            XCTAssertTrue(e >= 100 && e <= 10000 && r >= 2 && r <= 8 && k == 0)
        }

        // In patches: each sample's noise has its own drawn sigma, the same bits for any number of
        // sampler threads, and the whole training run is the same for 1 and 2 threads.
        let d = try Degradation(psf: .moffat(fwhm: 3, beta: 2.5, size: nil), noise: sig)
        let img = DegradationTests.noisySky(90, 90, seed: 6)
        let a = PatchSampler(images: [img], degradation: d, augment: true, validationFraction: 0.5, threads: 1)
        let b = PatchSampler(images: [img], degradation: d, augment: true, validationFraction: 0.5, threads: 2)
        let plan = a.plan(count: 40, validation: false, seed: 2, stream: 1)
        XCTAssertEqual(plan, b.plan(count: 40, validation: false, seed: 2, stream: 1))
        let (ia, _) = fill(a, plan), (ib, _) = fill(b, plan)
        XCTAssertEqual(ia.map(\.bitPattern), ib.map(\.bitPattern))
        var measured: [Double] = []
        for (k, sp) in plan.enumerated() {
            let bl = d.blur(Degradation.normalise(img.raw).dihedral(sp.variant))
            let diff = (0..<1024).map { Double(ia[k * 1024 + $0]) - bl[sp.y + $0 / 32, sp.x + $0 % 32] }
            guard case .gaussian(let expected) = d.level(seed: sp.noiseSeed) else { return XCTFail() }
            XCTAssertEqual(std(diff), expected, accuracy: 0.08 * expected, "sample \(k)")
            measured.append(std(diff))
        }
        XCTAssertGreaterThan(measured.max()! / measured.min()!, 2, "levels vary across samples")
        let (r1, _) = try train(config(d), threads: 1)
        let (r2, _) = try train(config(d), threads: 2)
        XCTAssertTrue(r1.parameters == r2.parameters, "a range of noise trains to the same bits for 1 and 2 threads")
    }

    func testSkyRelativeNoiseIsMeasuredOnTheImage() throws {
        let img = DegradationTests.noisySky(128, 128, seed: 8, background: 0.2, sigma: 0.01)
        let truth = Degradation.normalise(img.raw)
        let skySigma = SkyStatistics.estimate(truth).sigma
        XCTAssertGreaterThan(skySigma, 0)
        XCTAssertEqual(Degradation.skySigma(raw: img.raw), skySigma, accuracy: 1e-12 * skySigma, "no negatives: the truth's own sky sigma")
        let d = try Degradation(psf: .none, noise: .sky(k: 2...2))
        let (t, o) = d.degrade(img.raw, seed: 3, threads: 2)
        let diff = zip(o.pixels, t.pixels).map { $0 - $1 }
        XCTAssertEqual(std(diff), 2 * skySigma, accuracy: 0.03 * 2 * skySigma)
        // In patches, with and without augmentation, the same rule per image.
        for augment in [true, false] {
            let sampler = PatchSampler(images: [img], degradation: d, augment: augment, validationFraction: 0.5)
            XCTAssertEqual(sampler.skySigmas, [Degradation.skySigma(raw: img.raw)])
            let plan = sampler.plan(count: 30, validation: false, seed: 1, stream: 1)
            let (inputs, _) = fill(sampler, plan)
            var all: [Double] = []
            for (k, sp) in plan.enumerated() {
                let tr = truth.dihedral(sp.variant)
                all += (0..<1024).map { Double(inputs[k * 1024 + $0]) - tr[sp.y + $0 / 32, sp.x + $0 % 32] }
            }
            XCTAssertEqual(std(all), 2 * skySigma, accuracy: 0.05 * 2 * skySigma, "augment \(augment)")
        }
        // A sky-subtracted image (most of its sky below 0): the clipped truth's sky reads 0, the
        // raw image's noise is still found (the MAD does not care for the shift), and the noise
        // added is k times it.
        let rawSky = SkyStatistics.estimate(img.raw)
        let sub = SourceImage(name: "sub", checksum: 9, raw: img.raw.map { $0 - rawSky.median - rawSky.sigma })
        XCTAssertEqual(SkyStatistics.estimate(Degradation.normalise(sub.raw)).sigma, 0, "the clipped truth has no sky spread")
        XCTAssertEqual(Degradation.skySigma(raw: sub.raw) * sub.raw.maximum, rawSky.sigma, accuracy: 1e-9 * rawSky.sigma)
        XCTAssertNil(d.problem(raw: sub.raw, name: "sub"))
        let (st, so) = d.degrade(sub.raw, seed: 5)
        let subSigma = Degradation.skySigma(raw: sub.raw)
        XCTAssertEqual(std(zip(so.pixels, st.pixels).map { $0 - $1 }), 2 * subSigma, accuracy: 0.03 * 2 * subSigma)
        // An image without sky noise cannot take sky-relative noise: a clear error.
        let flat = SourceImage(name: "flat", checksum: 1, raw: Image2D(height: 80, width: 80, repeating: 3))
        XCTAssertNotNil(d.problem(raw: flat.raw, name: "flat"))
        XCTAssertThrowsError(try TrainingSession(config: config(d), images: [flat], threads: 1)) { e in
            XCTAssertTrue("\(e)".contains("no measurable sky noise"), "\(e)")
        }
    }

    /// `noise:k=K`: K times the image's own pixel noise (noise_mad), which a frame-filling
    /// nebula does not inflate as it inflates the sky spread `sky:k` measures.
    func testNoiseRelativeNoiseIgnoresNebulosity() throws {
        var g = SplitMix64(seed: 31)
        var raw = Image2D(height: 160, width: 200)
        for y in 0..<160 { for x in 0..<200 {
            raw[y, x] = 500 + 300 * sin(Double(x) / 25) * cos(Double(y) / 19) + 4 * NoiseStreams.normal(&g)
        } }
        let m = raw.pixels.max()!
        let noise = Degradation.noiseSigma(raw: raw), sky = Degradation.skySigma(raw: raw)
        XCTAssertEqual(noise * m, 4, accuracy: 0.25, "the pixel noise")
        XCTAssertGreaterThan(sky * m, 40, "the sky spread is the nebula's")
        let d = try Degradation(psf: .none, noise: NoiseSpec(parsing: "noise:k=2"))
        XCTAssertEqual(d.noise, .noise(k: 2...2))
        XCTAssertEqual(d.noise.description, "noise:k=2")
        XCTAssertEqual(try NoiseSpec(parsing: "noise:k=1-3"), .noise(k: 1...3))
        XCTAssertThrowsError(try NoiseSpec(parsing: "noise:sigma=1"))
        XCTAssertTrue(d.needsSkySigma)
        XCTAssertEqual(d.referenceSigma(raw: raw), noise)
        let (t, o) = d.degrade(raw, seed: 3, threads: 2)
        XCTAssertEqual(std(zip(o.pixels, t.pixels).map { $0 - $1 }), 2 * noise, accuracy: 0.03 * 2 * noise)
        let flat = Image2D(height: 40, width: 40, repeating: 3)
        XCTAssertNotNil(d.problem(raw: flat, name: "flat"))
    }

    func testPoissonNoiseHasThePhotonAndReadVariance() throws {
        let d = try Degradation(psf: .none, noise: NoiseSpec(parsing: "poisson:electrons=1000,read=5"))
        var truth = Image2D(height: 200, width: 100, repeating: 0.25)
        for y in 100..<200 { for x in 0..<100 { truth[y, x] = 1 } }
        let o1 = d.addNoise(truth, seed: 9, threads: 1), o2 = d.addNoise(truth, seed: 9, threads: 2)
        XCTAssertEqual(o1.pixels.map(\.bitPattern), o2.pixels.map(\.bitPattern), "same bits whatever the threads")
        for (rows, v) in [(0..<100, 0.25), (100..<200, 1.0)] {
            let px = rows.flatMap { y in (0..<100).map { o1[y, $0] } }
            let mean = px.reduce(0, +) / Double(px.count)
            let expected = (v * 1000 + 25).squareRoot() / 1000
            XCTAssertEqual(mean, v, accuracy: 5 * expected / 100)
            XCTAssertEqual(std(px), expected, accuracy: 0.03 * expected, "level \(v)")
        }
        // Patches without augmentation take the one observation of each image.
        let img = DegradationTests.noisySky(80, 80, seed: 4)
        let sampler = PatchSampler(images: [img], degradation: d, augment: false, validationFraction: 0.5, noiseSeed: 5)
        let plan = sampler.plan(count: 4, validation: false, seed: 1, stream: 1)
        let (inputs, _) = fill(sampler, plan)
        let observed = d.addNoise(Image2D(height: 80, width: 80, pixels: Degradation.normalise(img.raw).pixels.map { Double(Float($0)) }), seed: 5)
        for (k, sp) in plan.enumerated() {
            XCTAssertEqual(inputs[k * 1024 + 3 * 32 + 4], Float(observed[sp.y + 3, sp.x + 4]))
        }
    }

    // MARK: metadata and resume

    func testMetadataRecordsPSFAndNoiseAndResumes() throws {
        let d = try Degradation(psf: PSFSpec(parsing: "moffat:fwhm=3,beta=2.5"), noise: NoiseSpec(parsing: "gaussian:sigma=0.003-0.03"))
        let c = config(d)
        let (full, _) = try train(c, threads: 2)
        let m = full.finalModel().metadata
        XCTAssertEqual(m["training.psf"], .string("moffat:fwhm=3,beta=2.5"))
        XCTAssertEqual(m["training.noise"], .string("gaussian:sigma=0.003-0.03"))
        XCTAssertNil(m["training.psf_size"], "the Airy keys are for an Airy PSF only")
        XCTAssertNil(m["training.noise_sigma"], "the sigma key is for a fixed Gaussian sigma only")
        XCTAssertEqual(try TrainingConfig.degradation(metadata: m), d)
        let (_, ckpt) = try train(c, threads: 2, interruptAfter: 3)
        let path = NSTemporaryDirectory() + "acnn-deg-resume-\(getpid()).acnn"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ModelWriter.write(XCTUnwrap(ckpt), to: path, overwrite: true)
        let resumed = try TrainingSession(checkpoint: ModelReader(path: path).model(), images: images, threads: 1)
        XCTAssertEqual(resumed.config.degradation, d)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertTrue(resumed.parameters == full.parameters, "resumed with a Moffat PSF and a noise range: the same bits")
        // Bad recorded specs are clear checkpoint errors.
        var broken = try XCTUnwrap(ckpt)
        broken.metadata["training.noise"] = .string("gaussian:sigma=-1")
        XCTAssertThrowsError(try TrainingSession(checkpoint: broken, images: images, threads: 1)) { e in
            XCTAssertTrue("\(e)".contains("training.noise"), "\(e)")
        }
    }

    /// A checkpoint written before `training.noise` existed (`training.psf` = "airy" and the size,
    /// rings and sigma keys) resumes to the bits of the uninterrupted run.
    func testOldCheckpointWithoutTheNewKeysResumes() throws {
        let c = config(Degradation(psfSize: 8, rings: 2, sigma: 0.02))
        let (full, _) = try train(c, threads: 2)
        var old = try XCTUnwrap(try train(c, threads: 2, interruptAfter: 3).1)
        old.metadata["training.psf"] = .string("airy")
        old.metadata["training.noise"] = nil
        XCTAssertEqual(try TrainingConfig.degradation(metadata: old.metadata), Degradation(psfSize: 8, rings: 2, sigma: 0.02))
        let resumed = try TrainingSession(checkpoint: ModelReader(bytes: ModelWriter.encode(old)).model(), images: images, threads: 1)
        try resumed.run(progress: { _ in }, interrupt: { false }, checkpoint: { _ in })
        XCTAssertTrue(resumed.parameters == full.parameters)
        // Without the sigma either, it says what is missing.
        old.metadata["training.noise_sigma"] = nil
        XCTAssertThrowsError(try TrainingConfig.degradation(metadata: old.metadata)) { e in
            XCTAssertTrue("\(e)".contains("training.noise_sigma"), "\(e)")
        }
    }

    // MARK: shipped models and real data

    /// The shipped models (written before `training.noise` existed) read as the paper's degradation.
    func testShippedModelsReadAsThePaperDegradation() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for name in ["flamary1", "flamary3"] {
            let path = root.appendingPathComponent("models/\(name).acnn").path
            guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) is absent") }
            let m = try ModelReader(path: path).model()
            XCTAssertEqual(try TrainingConfig.degradation(metadata: m.metadata), Degradation(), name)
        }
    }

    /// On a real plate (../shared/data, skipped without it): Moffat blur plus noise at the
    /// image's own sky level measures k times its robust sky sigma.
    func testSkyRelativeNoiseOnARealPlate() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/data/fits/HorseHead.fits").path
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("../shared/data is absent: \(path)") }
        let img = try SourceImage.load(path: path)
        let d = try Degradation(psf: .moffat(fwhm: 3.5, beta: 2.5, size: nil), noise: .sky(k: 1.5...1.5))
        let (t, o) = d.degrade(img.raw, seed: 4, threads: 2)
        let sky = Degradation.skySigma(raw: img.raw)
        XCTAssertGreaterThan(sky, 0)
        let b = d.blur(t, threads: 2)
        XCTAssertEqual(std(zip(o.pixels, b.pixels).map { $0 - $1 }), 1.5 * sky, accuracy: 0.01 * 1.5 * sky)
        XCTAssertEqual(b.pixels.reduce(0, +) / t.pixels.reduce(0, +), 1, accuracy: 0.01, "the blur keeps the flux (up to the borders)")
    }
}
