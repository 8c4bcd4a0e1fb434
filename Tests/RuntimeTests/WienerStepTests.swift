import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

/// The format 1.1 Wiener step (`wiener_deconvolution`, `WienerDeconvolution`) and PSF binding.
final class WienerStepTests: XCTestCase {
    /// A Gaussian PSF of the given FWHM on side x side pixels (centre at the middle pixel).
    func gaussianKernel(fwhm: Double, side: Int) throws -> PSFKernel {
        let c = Double((side - 1) / 2), s = fwhm / 2.3548200450309493
        var v = [Double](repeating: 0, count: side * side)
        for y in 0..<side { for x in 0..<side {
            let r2 = (Double(y) - c) * (Double(y) - c) + (Double(x) - c) * (Double(x) - c)
            v[y * side + x] = exp(-r2 / (2 * s * s))
        } }
        return try PSFKernel(height: side, width: side, values: v)
    }

    /// Point and extended sources on a flat sky, blurred by `psf` ('same' convolution with zero
    /// outside; every source is far from the borders) plus Gaussian noise of `sigma`.
    func scene(_ n: Int, psf: PSFKernel, sigma: Double, seed: UInt64) -> (truth: [Double], observed: [Float]) {
        var rng = TestRNG(seed: seed)
        var truth = [Double](repeating: 10, count: n * n)
        // Compact sources (Gaussians of sigma 1 px: resolved on the pixel grid, so a
        // deconvolution can recover them) and extended ones.
        for _ in 0..<12 {
            let cy = Double(rng.float(16, Float(n - 16))), cx = Double(rng.float(16, Float(n - 16))), a = Double(rng.float(200, 1000))
            for y in max(0, Int(cy) - 6)..<min(n, Int(cy) + 7) { for x in max(0, Int(cx) - 6)..<min(n, Int(cx) + 7) {
                let r2 = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx)
                truth[y * n + x] += a * exp(-r2 / 2)
            } }
        }
        for _ in 0..<3 {
            let cy = Double(rng.float(24, Float(n - 24))), cx = Double(rng.float(24, Float(n - 24))), a = Double(rng.float(20, 60))
            for y in 0..<n { for x in 0..<n {
                let r2 = (Double(y) - cy) * (Double(y) - cy) + (Double(x) - cx) * (Double(x) - cx)
                truth[y * n + x] += a * exp(-r2 / 18)
            } }
        }
        let oy = (psf.height - 1) / 2, ox = (psf.width - 1) / 2
        var observed = [Float](repeating: 0, count: n * n)
        for y in 0..<n { for x in 0..<n {
            var acc = 0.0
            for u in 0..<psf.height { for v in 0..<psf.width {
                let yy = y + u - oy, xx = x + v - ox
                // Mirror outside (the scene is flat sky there), as the step pads.
                let my = yy < 0 ? -yy - 1 : yy >= n ? 2 * n - yy - 1 : yy, mx = xx < 0 ? -xx - 1 : xx >= n ? 2 * n - xx - 1 : xx
                acc += psf.values[u * psf.width + v] * truth[my * n + mx]
            } }
            let g = Double(rng.float(0, 1)), h = Double(max(1e-12, rng.float(0, 1)))
            observed[y * n + x] = Float(acc + sigma * (-2 * log(h)).squareRoot() * cos(2 * Double.pi * g))
        }
        }
        return (truth, observed)
    }

    func rms(_ a: [Double], _ b: [Float], n: Int, margin: Int) -> Double {
        var s = 0.0, c = 0
        for y in margin..<(n - margin) { for x in margin..<(n - margin) { let d = a[y * n + x] - Double(b[y * n + x]); s += d * d; c += 1 } }
        return (s / Double(c)).squareRoot()
    }

    /// The step deconvolves: at low noise it halves the blurred image's error against the truth, GCV picks a smaller lambda for less noise, and the result is the same bits on 1
    /// and 3 threads.
    func testDeconvolvesAndLambdaFollowsNoise() throws {
        let n = 96
        let psf = try gaussianKernel(fwhm: 3, side: 17)
        let quiet = scene(n, psf: psf, sigma: 0.01, seed: 1)
        let (w, lq) = WienerDeconvolution.apply(quiet.observed, height: n, width: n, psf: psf)
        let blurredError = rms(quiet.truth, quiet.observed, n: n, margin: 8), wienerError = rms(quiet.truth, w, n: n, margin: 8)
        XCTAssertLessThan(wienerError, 0.5 * blurredError, "Wiener \(wienerError) vs blurred \(blurredError)")
        let noisy = scene(n, psf: psf, sigma: 5, seed: 1)
        let (_, ln) = WienerDeconvolution.apply(noisy.observed, height: n, width: n, psf: psf)
        XCTAssertLessThan(lq, ln)
        XCTAssertTrue(WienerDeconvolution.lambdaExponents.contains(Int((log10(lq) * 4).rounded())))
        let (w3, l3) = WienerDeconvolution.apply(quiet.observed, height: n, width: n, psf: psf, threads: 3)
        XCTAssertEqual(w3, w)
        XCTAssertEqual(l3, lq)
    }

    /// GCV does not depend on the units: scaling and offsetting the input gives the same lambda
    /// and the scaled, offset output (the Laplacian passes the mean: the PSF has unit sum).
    func testCommutesWithAffineUnits() throws {
        let n = 64
        let psf = try gaussianKernel(fwhm: 2.2, side: 13)
        let s = scene(n, psf: psf, sigma: 0.5, seed: 3)
        let (a, la) = WienerDeconvolution.apply(s.observed, height: n, width: n, psf: psf)
        let (b, lb) = WienerDeconvolution.apply(s.observed.map { ($0 - 10) / 4 }, height: n, width: n, psf: psf)
        XCTAssertEqual(la, lb)
        for i in a.indices { XCTAssertEqual(Double(b[i]), (Double(a[i]) - 10) / 4, accuracy: 1e-3 * max(1, abs(Double(a[i])) / 4)) }
        // The jitter multiplies the GCV choice.
        let (_, lj) = WienerDeconvolution.apply(s.observed, height: n, width: n, psf: psf, lambdaFactor: 3)
        XCTAssertEqual(lj, 3 * la, accuracy: 1e-12 * la)
    }

    /// The discrepancy principle (`noiseVariance`): the largest lambda of the grid whose residual
    /// per pixel stays within the noise variance; more noise, larger lambda.
    func testDiscrepancyPrinciple() throws {
        let n = 80
        let psf = try gaussianKernel(fwhm: 3, side: 17)
        var lambdas: [Double] = []
        for sigma in [0.3, 3.0] {
            let s = scene(n, psf: psf, sigma: sigma, seed: 5)
            let (w, l) = WienerDeconvolution.apply(s.observed, height: n, width: n, psf: psf, noiseVariance: sigma * sigma)
            // The residual of the reblurred estimate stays within the noise (measured inside the
            // image: the padded grid's mirror seams add residual the image does not have).
            var r = 0.0
            for y in 8..<(n - 8) { for x in 8..<(n - 8) {
                var acc = 0.0
                for u in 0..<17 { for v in 0..<17 { acc += psf.values[u * 17 + v] * Double(w[(min(n - 1, max(0, y + u - 8))) * n + min(n - 1, max(0, x + v - 8))]) } }
                r += (acc - Double(s.observed[y * n + x])) * (acc - Double(s.observed[y * n + x]))
            } }
            let perPixel = r / Double((n - 16) * (n - 16))
            XCTAssertLessThan(perPixel, 1.3 * sigma * sigma, "sigma \(sigma)")
            lambdas.append(l)
        }
        XCTAssertLessThan(lambdas[0], lambdas[1])
    }

    /// PSFKernel: unit sum; a cut keeps the origin pixel and refuses to lose flux; the FWHM of
    /// sampled Gaussians within 5%.
    func testPSFKernel() throws {
        for (f, side) in [(2.2, 15), (3.0, 21), (5.0, 31), (8.0, 49)] {
            let k = try gaussianKernel(fwhm: f, side: side)
            XCTAssertEqual(k.values.reduce(0, +), 1, accuracy: 1e-12)
            XCTAssertEqual(k.fwhm, f, accuracy: 0.05 * f, "FWHM \(f)")
        }
        let k = try gaussianKernel(fwhm: 2, side: 31)
        let cut = try k.fitting(side: 11)
        XCTAssertEqual(cut.height, 11)
        XCTAssertEqual(cut.values.max(), cut.values[5 * 11 + 5])
        let even = try PSFKernel(height: 8, width: 8, values: (0..<64).map { i in i == 3 * 8 + 3 ? 1 : 0.001 })
        let evenCut = try even.fitting(side: 6, maxLoss: 0.5)
        XCTAssertEqual(evenCut.height, 6)
        XCTAssertEqual(evenCut.values.max(), evenCut.values[2 * 6 + 2], "the origin pixel (k-1)/2 stays the origin")
        XCTAssertThrowsError(try (try gaussianKernel(fwhm: 8, side: 49)).fitting(side: 9))
        XCTAssertThrowsError(try PSFKernel(height: 2, width: 2, values: [0, 0, 0, 0]))
        XCTAssertThrowsError(try PSFKernel(height: 2, width: 2, values: [1, .nan, 0, 0]))
    }

    func psfModel(context: Int = 8, fwhm: [Double]? = nil) throws -> Model {
        var m = try Architectures.unet(name: "psf-unet", widths: [4, 6], normalization: "noise_mad", inputSkip: true, ratioChannel: false,
                                       wienerContext: context, initializer: randomInit(seed: 5))
        if let f = fwhm { m.metadata["deconvolution.psf_fwhm"] = .floats(f) }
        return m
    }

    /// Format 1.1: a graph with the step is written as 1.1 (others stay 1.0), reads back equal,
    /// and its context counts in the receptive field; bad attributes and inputs are refused.
    func testFormatVersionAndValidation() throws {
        let m = try psfModel()
        let bytes = try ModelWriter.encode(m)
        XCTAssertEqual(Int(bytes[14]) | Int(bytes[15]) << 8, 1, "minor version 1")
        let plain = try Architectures.unet(widths: [4, 6], initializer: randomInit(seed: 5))
        let pb = try ModelWriter.encode(plain)
        XCTAssertEqual(Int(pb[14]) | Int(pb[15]) << 8, 0, "a graph without 1.1 ops stays 1.0")
        let back = try ModelReader(bytes: bytes).model()
        XCTAssertEqual(back.graph, m.graph)
        let withStep = try GraphAnalysis(graph: m.graph, tensorShapes: m.tensors.mapValues { $0.shape }).geometry.receptiveField
        let without = try GraphAnalysis(graph: m.withoutInputStep().graph, tensorShapes: m.tensors.mapValues { $0.shape }).geometry.receptiveField
        XCTAssertEqual(withStep, without.map { $0 + 16 })
        for bad: MetaValue in [.int(0), .int(257), .float(8), .string("8")] {
            var g = m.graph
            let i = g.nodes.firstIndex { $0.op == .wienerDeconvolution }!
            g.nodes[i].attributes["context"] = bad
            XCTAssertThrowsError(try GraphAnalysis(graph: g, tensorShapes: m.tensors.mapValues { $0.shape }), "\(bad)")
        }
        var b = ModelBuilder(name: "two", inputChannels: 2)
        let x = b.wienerDeconvolution(b.input.name, context: 4)
        XCTAssertThrowsError(try b.build(output: x))
    }

    /// Running: refused without a PSF; the fast plan equals the scalar reference; a PSF too wide
    /// for the context or outside the declared FWHM range is refused with a message.
    func testRunNeedsPSFAndMatchesReference() throws {
        let net = try Network(model: try psfModel(fwhm: [1.5, 4]))
        XCTAssertEqual(net.wienerContext, 8)
        var rng = TestRNG(seed: 8)
        let input = FeatureMap(channels: 1, height: 48, width: 40, data: (0..<(48 * 40)).map { _ in rng.float(-1, 30) })
        XCTAssertThrowsError(try net.forward(input)) { e in XCTAssertTrue("\(e)".contains("PSF"), "\(e)") }
        let image = FITSImage(width: 40, height: 48, pixels: input.data)
        XCTAssertThrowsError(try Restoration.restore(image, network: net, options: .init(threads: 1))) { e in XCTAssertTrue("\(e)".contains("PSF"), "\(e)") }
        XCTAssertThrowsError(try net.bind(psf: try gaussianKernel(fwhm: 10, side: 61))) { e in XCTAssertTrue("\(e)".contains("flux"), "\(e)") }
        XCTAssertThrowsError(try net.bind(psf: try gaussianKernel(fwhm: 5.5, side: 17))) { e in XCTAssertTrue("\(e)".contains("not trained"), "\(e)") }
        try net.bind(psf: try gaussianKernel(fwhm: 2.5, side: 17), description: "gaussian:fwhm=2.5")
        XCTAssertEqual(net.psfDescription, "gaussian:fwhm=2.5")
        let reference = try net.forward(input, algorithm: .reference)
        for algorithm in [ConvAlgorithm.auto, .direct, .winograd] {
            let fast = try net.forward(input, algorithm: algorithm)
            for i in fast.data.indices { XCTAssertEqual(fast.data[i], reference.data[i], accuracy: 1e-3 * max(1, abs(reference.data[i])), "\(algorithm)") }
        }
        // A model without the step takes no PSF.
        let plain = try Network(model: try Architectures.unet(widths: [4, 6], initializer: randomInit(seed: 5)))
        XCTAssertThrowsError(try plain.bind(psf: try gaussianKernel(fwhm: 2.5, side: 17)))
    }

    /// Restoring an image: the same bits on 1 and 2 threads; the tiled result (each tile its own
    /// Wiener step and lambda) stays close to the whole-image one away from the image borders.
    func testRestoreThreadIndependentAndTilesClose() throws {
        let net = try Network(model: try psfModel())
        let psf = try gaussianKernel(fwhm: 2.5, side: 15)
        try net.bind(psf: psf)
        let n = 160
        let s = scene(n, psf: psf, sigma: 1, seed: 11)
        let img = FITSImage(width: n, height: n, pixels: s.observed)
        let one = try Restoration.restore(img, network: net, options: .init(threads: 1, tileSize: 4096)).pixels
        let two = try Restoration.restore(img, network: net, options: .init(threads: 2, tileSize: 4096)).pixels
        XCTAssertEqual(one, two)
        let tiled = try Restoration.restore(img, network: net, options: .init(threads: 2, tileSize: 64)).pixels
        XCTAssertEqual(try Restoration.restore(img, network: net, options: .init(threads: 1, tileSize: 64)).pixels, tiled)
        var d = 0.0, v = 0.0
        for i in one.indices { d += Double(one[i] - tiled[i]) * Double(one[i] - tiled[i]); v += Double(one[i]) * Double(one[i]) }
        XCTAssertLessThan((d / v).squareRoot(), 0.05, "tiles differ from the whole image by \((d / v).squareRoot()) of the signal")
    }
}
