import CFITSIO
import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

/// The geometric self-ensemble (`SelfEnsemble`, `restore --ensemble N`).
final class SelfEnsembleTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func randomMap(channels: Int, height: Int, width: Int, seed: UInt64) -> FeatureMap {
        var rng = TestRNG(seed: seed)
        return FeatureMap(channels: channels, height: height, width: width,
                          data: (0..<(channels * height * width)).map { _ in rng.float(-1, 1) })
    }

    /// Each symmetry moves pixels as `Image2D.dihedral` does (the trainer's orientations), and `inverse` undoes it
    /// exactly, on odd, non-square, multi-channel maps.
    func testTransformsAreTheDihedralGroupAndInvertExactly() {
        let x = randomMap(channels: 3, height: 7, width: 12, seed: 1)
        var seen = Set<[Float]>()
        for k in 0..<8 {
            let t = SelfEnsemble.transform(x, k)
            XCTAssertEqual(t.channels, 3)
            XCTAssertEqual([t.height, t.width], k & 1 == 0 ? [7, 12] : [12, 7], "symmetry \(k)")
            // Where pixel (y, x) lands: k & 3 counter-clockwise quarter turns ((y, x) of an h x w
            // map to (w-1-x, y)), then a left-right flip when k & 4 is set.
            for c in 0..<3 { for y in 0..<7 { for xx in 0..<12 {
                var (r, q, hh, ww) = (y, xx, 7, 12)
                for _ in 0..<(k & 3) { (r, q, hh, ww) = (ww - 1 - q, r, ww, hh) }
                if k & 4 != 0 { q = ww - 1 - q }
                XCTAssertEqual(t.data[c * 84 + r * ww + q], x.data[c * 84 + y * 12 + xx], "symmetry \(k)")
            } } }
            XCTAssertEqual(SelfEnsemble.inverse(t, k), x, "symmetry \(k) inverted")
            seen.insert(t.data)
        }
        XCTAssertEqual(seen.count, 8, "eight distinct symmetries")
        XCTAssertEqual(SelfEnsemble.members(8).sorted(), Array(0..<8))
        XCTAssertEqual(Set(SelfEnsemble.members(4)).count, 4)
        // The shape-preserving members come first: one plan change per tile.
        XCTAssertTrue(SelfEnsemble.members(8).prefix(4).allSatisfy { $0 & 1 == 0 })
    }

    /// The ensemble of a 'same' U-net is the mean of the network run on each turned image, turned
    /// back, summed in member order: bit for bit, on a non-square whole-image tile.
    func testEnsembleIsTheMeanOfTheTurnedRuns() throws {
        let model = try Architectures.unet(name: "tiny-unet", widths: [8, 16], normalization: "none", initializer: randomInit(seed: 11))
        let net = try Network(model: model)
        let x = randomMap(channels: 1, height: 48, width: 64, seed: 2)
        for count in [2, 4, 8] {
            let ens = try TiledRunner(network: net, threads: 1, ensemble: count).run(padded: x.data, height: 48, width: 64)
            let single = TiledRunner(network: net, threads: 1)
            var sum = [Float](repeating: 0, count: 48 * 64)
            for (i, k) in SelfEnsemble.members(count).enumerated() {
                let t = SelfEnsemble.transform(x, k)
                let y = SelfEnsemble.inverse(try single.run(padded: t.data, height: t.height, width: t.width), k)
                if i == 0 { sum = y.data } else { for j in sum.indices { sum[j] += y.data[j] } }
            }
            let expected = sum.map { $0 * (1 / Float(count)) }
            XCTAssertEqual(ens.data, expected, "\(count) members")
            let plain = try single.run(padded: x.data, height: 48, width: 64)
            XCTAssertNotEqual(ens.data, plain.data, "\(count) members differ from one run")
        }
    }

    /// Same bits for any thread count, tiled or whole; the streamed restore equals the in-memory
    /// one with the same tiles; the header says what was done.
    func testSameBitsForAnyThreadCountAndStreamedEqualsInMemory() throws {
        let model = try Architectures.unet(name: "tiny-unet", widths: [8, 16], normalization: "sky_mad", initializer: randomInit(seed: 12))
        let net = try Network(model: model)
        let w = 150, h = 122
        var rng = TestRNG(seed: 3)
        let values = (0..<(w * h)).map { i -> Double in 100 + Double(rng.float(-5, 5)) + (i % 997 == 0 ? 800 : 0) }
        let path = dir + "/in.fits"
        FITSFixture.write(path: path, bitpix: -32, width: w, height: h, values: values, nullMask: [Bool](repeating: false, count: w * h))
        let image = try FITSIO.readImage(path: path)
        for tile in [nil, 64] as [Int?] {
            var reference: [Float]?
            for threads in [1, 2, 3] {
                var opts = Restoration.Options(threads: threads, tileSize: tile)
                opts.ensemble = 8
                let px = try Restoration.restore(image, network: net, options: opts).pixels
                if let r = reference { XCTAssertEqual(px, r, "tile \(tile ?? 0), \(threads) threads") } else { reference = px }
            }
            var opts = Restoration.Options(threads: 2, tileSize: tile)
            opts.ensemble = 8
            let out = dir + "/s-\(tile ?? 0).fits"
            _ = try StreamingRestore.restoreFile(input: path, output: out, network: net, options: opts)
            XCTAssertEqual(try FITSIO.readImage(path: out).pixels, reference!, "streamed, tile \(tile ?? 0)")
            let card = try FITSIO.readImage(path: out).keyword("ACNNENSM")
            XCTAssertEqual(card.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }, 8)
        }
    }

    /// `restore --ensemble 8` with the shipped denoiser: written, the header says so, the output
    /// differs from one run's; `--ensemble 8` with a 'valid' model and `--ensemble 3` are
    /// refused with a message and a non-zero exit, and write nothing.
    func testRestoreCLI() throws {
        let exe = try astrocnnExecutable()
        let w = 96, h = 80
        var rng = TestRNG(seed: 4)
        let values = (0..<(w * h)).map { i -> Double in 1000 + Double(rng.float(-30, 30)) + (i % 331 == 0 ? 5000 : 0) }
        let input = dir + "/frame.fits"
        FITSFixture.write(path: input, bitpix: -32, width: w, height: h, values: values, nullMask: [Bool](repeating: false, count: w * h))
        let model = repositoryRoot + "/models/astro-unet-16-r2r.acnn"
        let (s1, _, e1) = try runProcess(exe, ["restore", input, "-m", model, "-o", dir + "/one.fits", "--quiet"])
        XCTAssertEqual(s1, 0, e1)
        let (s8, _, e8) = try runProcess(exe, ["restore", input, "-m", model, "-o", dir + "/eight.fits", "--ensemble", "8", "--quiet"])
        XCTAssertEqual(s8, 0, e8)
        let one = try FITSIO.readImage(path: dir + "/one.fits"), eight = try FITSIO.readImage(path: dir + "/eight.fits")
        XCTAssertNotEqual(one.pixels, eight.pixels)
        XCTAssertEqual(eight.keyword("ACNNENSM").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }, 8)
        XCTAssertNil(one.keyword("ACNNENSM"))
        let (sv, _, ev) = try runProcess(exe, ["restore", input, "-m", repositoryRoot + "/models/flamary3.acnn", "-o", dir + "/valid.fits", "--ensemble", "8"])
        XCTAssertNotEqual(sv, 0)
        XCTAssertTrue(ev.contains("--ensemble"), ev)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/valid.fits"))
        let (s3, _, e3) = try runProcess(exe, ["restore", input, "-m", model, "-o", dir + "/three.fits", "--ensemble", "3"])
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(e3.contains("1, 2, 4 or 8"), e3)
    }

    /// Refused before any work: a count outside 1, 2, 4, 8, a 'valid' network (its output shrinks
    /// unevenly: a turned window's output would land on other pixels).
    func testRefusals() throws {
        let model = try Architectures.unet(name: "tiny-unet", widths: [8, 16], normalization: "none", initializer: randomInit(seed: 13))
        let unet = try Network(model: model)
        XCTAssertThrowsError(try SelfEnsemble.check(unet, count: 3)) { XCTAssertTrue("\($0)".contains("1, 2, 4 or 8"), "\($0)") }
        XCTAssertNoThrow(try SelfEnsemble.check(unet, count: 8))
        let flamary = try Network(path: repositoryRoot + "/models/flamary3.acnn")
        XCTAssertThrowsError(try SelfEnsemble.check(flamary, count: 8)) { XCTAssertTrue("\($0)".contains("same"), "\($0)") }
        XCTAssertThrowsError(try TiledRunner(network: flamary, threads: 1, ensemble: 2).run(padded: [Float](repeating: 0, count: 64 * 64), height: 64, width: 64))
    }

    /// A turned PSF keeps its origin ((h-1)/2, (w-1)/2) on the same pixel, even sides included,
    /// and its values.
    func testPSFTurnsAboutItsOrigin() throws {
        for (h, w) in [(7, 7), (6, 9), (8, 4)] {
            var rng = TestRNG(seed: UInt64(h * 10 + w))
            var v = (0..<(h * w)).map { _ in Double(rng.float(0, 1)) }
            v[((h - 1) / 2) * w + (w - 1) / 2] = 100   // the origin, brightest
            let psf = try PSFKernel(height: h, width: w, values: v)
            for k in 0..<8 {
                let t = try SelfEnsemble.transform(psf: psf, k)
                let peak = t.values.indices.max { t.values[$0] < t.values[$1] }!
                XCTAssertEqual(peak, ((t.height - 1) / 2) * t.width + (t.width - 1) / 2, "\(h)x\(w), symmetry \(k)")
                let a = t.values.filter { $0 > 0 }.sorted(), b = psf.values.sorted()
                XCTAssertEqual(a.count, b.count)
                XCTAssertTrue(zip(a, b).allSatisfy { abs($0 - $1) <= 1e-15 }, "\(h)x\(w), symmetry \(k): values")
            }
        }
    }

    /// With a Wiener step, each turned window is deconvolved by the turned PSF: the ensemble is
    /// equivariant. With an elongated PSF, the ensemble of the turned image (PSF turned with it)
    /// is the turned ensemble of the image, up to the order of the sum.
    func testWienerModelEnsembleTurnsThePSFWithTheImage() throws {
        let net = try Network(path: repositoryRoot + "/models/deconv-psf.acnn")
        let side = 15, c = 7.0
        var v = [Double](repeating: 0, count: side * side)
        for y in 0..<side { for x in 0..<side {
            let dy = Double(y) - c, dx = Double(x) - c
            let u = 0.8 * dx + 0.6 * dy, q = -0.6 * dx + 0.8 * dy
            v[y * side + x] = exp(-0.5 * (u * u / 6.0 + q * q / 1.5))
        } }
        let psf = try PSFKernel(height: side, width: side, values: v)
        var rng = TestRNG(seed: 9)
        let x = FeatureMap(channels: 1, height: 64, width: 64, data: (0..<(64 * 64)).map { i in rng.float(-1, 1) + (i % 523 == 0 ? 200 : 0) })
        let params = [WienerDeconvolution.lambdaParameter: Float(0.05)]
        try net.bind(psf: psf)
        let base = try TiledRunner(network: net, threads: 2, ensemble: 8).run(padded: x.data, height: 64, width: 64, parameters: params)
        let scale = base.data.map { abs($0) }.max()!
        for k in [1, 4, 5] {
            try net.bind(psf: try SelfEnsemble.transform(psf: psf, k))
            let t = SelfEnsemble.transform(x, k)
            let turned = try TiledRunner(network: net, threads: 2, ensemble: 8).run(padded: t.data, height: 64, width: 64, parameters: params)
            XCTAssertLessThan(maxAbsDiff(SelfEnsemble.inverse(turned, k).data, base.data), 1e-5 * scale, "symmetry \(k)")
            // Without the ensemble the network alone is not equivariant (so the test has teeth).
            let one = try TiledRunner(network: net, threads: 2).run(padded: t.data, height: 64, width: 64, parameters: params)
            try net.bind(psf: psf)
            let plain = try TiledRunner(network: net, threads: 2).run(padded: x.data, height: 64, width: 64, parameters: params)
            XCTAssertGreaterThan(maxAbsDiff(SelfEnsemble.inverse(one, k).data, plain.data), 1e-3 * scale, "symmetry \(k)")
        }
    }
}
