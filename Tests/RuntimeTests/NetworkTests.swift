import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

final class PublishedWeightsTests: XCTestCase {
    /// The published Flamary 2017 weights reproduce the shared float64 test vectors, through the
    /// reference executor, direct convolution and the default Winograd path.
    func testFlamaryTestVectorsWithReferenceExecutor() throws {
        let data = try requireSharedData()
        let input = try readFloats(data + "/flamary2017-models/testvectors/input_64x64.f32")
        for which in ["M51a", "Hoag", "M31", "M81", "M101", "M104"] {
            let net = try Network(model: try publishedFlamaryModel(which, data: data))
            let expected = try readFloats(data + "/flamary2017-models/testvectors/output_\(which)_46x46.f32")
            // The reference executor, and the fast kernels on every ISA this CPU has: direct, and
            // the default (auto: Winograd F(3x3,6x6) for the 64 -> 16 6x6 layer).
            var runs: [(String, FeatureMap)] = [("reference", try net.forward(FeatureMap(channels: 1, height: 64, width: 64, data: input), algorithm: .reference))]
            for isa in KernelISA.allCases where isa.supported {
                for algorithm in [ConvAlgorithm.direct, .auto] {
                    runs.append(("\(algorithm) \(isa)", try net.forward(FeatureMap(channels: 1, height: 64, width: 64, data: input), algorithm: algorithm, isa: isa)))
                }
            }
            for (name, out) in runs {
                XCTAssertEqual(out.height, 46); XCTAssertEqual(out.width, 46)
                let err = maxAbsDiff(out.data, expected)
                XCTAssertLessThanOrEqual(err, 1e-5, "\(which) \(name): max abs error \(err)")
            }
        }
    }

    /// tools/keras2acnn.py converts the Keras HDF5 + JSON files to exactly the weights of raw/.
    func testKerasConverter() throws {
        let data = try requireSharedData()
        let (pyStatus, _, _) = try runProcess("/usr/bin/env", ["python3", "-c", "import numpy, h5py"])
        if pyStatus != 0 { throw XCTSkip("python3 with numpy and h5py is not installed (the .ci/run script installs them)") }
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = data + "/flamary2017-models/32x32_10x10-64_6x6-16_5x5-1_PSF64_sigma0.010_M51a"
        let out = dir + "/m51a.acnn"
        let (status, stdout, stderr) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/keras2acnn.py", base + ".h5", base + ".json",
                                                                "-o", out, "--name", "flamary2017-M51a", "--normalization", "clip_max"])
        XCTAssertEqual(status, 0, stdout + stderr)
        let reader = try ModelReader(path: out)
        let converted = try reader.model()
        XCTAssertEqual(converted.metadata["receptive_field"], .ints([19, 19]))
        XCTAssertEqual(converted.metadata["normalization"], .string("clip_max"))
        let expected = try publishedFlamaryModel("M51a", data: data)
        // Same weights, layer by layer (the converter names tensors after the Keras layers).
        let convNames = converted.graph.nodes.filter { $0.op == .conv2d }
        XCTAssertEqual(convNames.count, 3)
        for (i, n) in convNames.enumerated() {
            XCTAssertEqual(converted.tensors[n.params[0]]!.values, expected.tensors["conv\(i + 1).weight"]!.values, "layer \(i + 1) weights")
            XCTAssertEqual(converted.tensors[n.params[1]]!.values, expected.tensors["conv\(i + 1).bias"]!.values, "layer \(i + 1) bias")
        }
        // And the converted file reproduces the test vector.
        let input = try readFloats(data + "/flamary2017-models/testvectors/input_64x64.f32")
        let y = try Network(path: out).forward(FeatureMap(channels: 1, height: 64, width: 64, data: input))
        XCTAssertLessThanOrEqual(maxAbsDiff(y.data, try readFloats(data + "/flamary2017-models/testvectors/output_M51a_46x46.f32")), 1e-5)
        // float16 storage: about half the size, weights within half precision.
        let out16 = dir + "/m51a16.acnn"
        let (s16, _, e16) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/keras2acnn.py", base + ".h5", base + ".json", "-o", out16, "--float16"])
        XCTAssertEqual(s16, 0, e16)
        XCTAssertLessThan(try ModelReader(path: out16).fileSize, reader.fileSize * 6 / 10)
        // Errors: missing input, refusing to overwrite.
        let (s2, _, e2) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/keras2acnn.py", dir + "/none.h5", base + ".json", "-o", dir + "/x.acnn"])
        XCTAssertNotEqual(s2, 0); XCTAssertTrue(e2.contains("no such file"))
        let (s3, _, e3) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/keras2acnn.py", base + ".h5", base + ".json", "-o", out])
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("--overwrite"))
    }
}

/// The converter on synthetic Keras 2 (TensorFlow layout) and Keras 1 (Theano) files, checked
/// in Python against the expected kernels, then read and run by the Swift runtime.
final class ConverterConventionTests: XCTestCase {
    func testKeras2AndKeras1Conventions() throws {
        let (pyStatus, _, _) = try runProcess("/usr/bin/env", ["python3", "-c", "import numpy, h5py"])
        if pyStatus != 0 { throw XCTSkip("python3 with numpy and h5py is not installed (the .ci/run script installs them)") }
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (status, out, err) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/test_keras2acnn.py", dir])
        XCTAssertEqual(status, 0, out + err)
        let net = try Network(path: dir + "/k2.acnn")
        XCTAssertEqual(net.analysis.geometry.receptiveField, [7, 7])
        var rng = TestRNG(seed: 4)
        let x = FeatureMap(channels: 1, height: 20, width: 23, data: (0..<(20 * 23)).map { _ in rng.float() })
        let a = try net.forward(x, algorithm: .reference), b = try net.forward(x, algorithm: .direct)
        XCTAssertEqual(a.height, 16); XCTAssertEqual(a.width, 19)
        XCTAssertLessThanOrEqual(maxAbsDiff(a.data, b.data), 1e-5)
    }
}

final class PipelineTests: XCTestCase {
    func testNormalizationInverts() {
        let px: [Float] = [-2, 0, 1, 5, .nan, 10]
        let invalid = px.map { $0.isNaN }
        for kind in [Normalization.Kind.none, .minmax, .meanstd] {
            let n = Normalization.fit(kind, pixels: px, invalid: invalid, width: px.count)
            let back = n.invert(n.apply(px, invalid: invalid))
            for i in 0..<px.count where !invalid[i] { XCTAssertEqual(back[i], px[i], accuracy: 1e-5) }
        }
        let c = Normalization.fit(.clipMax, pixels: px, invalid: invalid, width: px.count)
        XCTAssertEqual(c.scale, 10)
        let a = c.apply(px, invalid: invalid)
        XCTAssertEqual(a[0], 0); XCTAssertEqual(a[5], 1); XCTAssertTrue(a[4].isNaN)
        XCTAssertEqual(c.invert(a)[3], 5, accuracy: 1e-6)
    }

    func testMaskFillUsesNeighbours() {
        let w = 5, h = 4
        var v = [Float](repeating: 2, count: w * h)
        var invalid = [Bool](repeating: false, count: w * h)
        for i in [6, 7, 8, 12] { invalid[i] = true; v[i] = .nan }
        MaskFill.fill(&v, invalid: invalid, width: w, height: h)
        XCTAssertTrue(v.allSatisfy { $0 == 2 })
        var all = [Float](repeating: .nan, count: 4)
        MaskFill.fill(&all, invalid: [true, true, true, true], width: 2, height: 2)
        XCTAssertEqual(all, [0, 0, 0, 0])
        // A gradient stays within its range.
        var g = (0..<(w * h)).map { Float($0 % w) }
        let gi = (0..<(w * h)).map { $0 % w == 2 }
        MaskFill.fill(&g, invalid: gi, width: w, height: h)
        for y in 0..<h { XCTAssertEqual(g[y * w + 2], 2, accuracy: 1e-6) }
    }

    func testReflectPadMatchesNumpyReflect() {
        let v: [Float] = [1, 2, 3, 4, 5, 6]  // 3 wide, 2 high
        let p = ReflectPad.pad(v, width: 3, height: 2, top: 1, bottom: 1, left: 2, right: 1)
        // numpy.pad([[1,2,3],[4,5,6]], ((1,1),(2,1)), 'reflect')
        let expected: [Float] = [6, 5, 4, 5, 6, 5,
                                 3, 2, 1, 2, 3, 2,
                                 6, 5, 4, 5, 6, 5,
                                 3, 2, 1, 2, 3, 2]
        XCTAssertEqual(p, expected)
    }

    func randomImage(_ w: Int, _ h: Int, seed: UInt64) -> FITSImage {
        var rng = TestRNG(seed: seed)
        return FITSImage(width: w, height: h, pixels: (0..<(w * h)).map { _ in rng.float(0, 100) })
    }

    /// The tiled runner gives the same bits whatever the tile size and thread count, for a 'valid'
    /// network and for a U-net with pooling, skips and a run-time parameter.
    func testTiledEqualsUntiledAndThreadIndependent() throws {
        var b = ModelBuilder(name: "small-valid", normalization: "clip_max", initializer: randomInit(seed: 3))
        var x = b.conv(b.input.name, out: 5, kernel: 4)
        x = b.relu(x)
        x = b.conv(x, out: 1, kh: 3, kw: 2)
        let valid = try Network(model: try b.build(output: x))
        let unet = try Network(model: try Architectures.unet(widths: [3, 4, 5], exposureRatio: 2, initializer: randomInit(seed: 4)))
        for net in [valid, unet] {
            let img = randomImage(45, 38, seed: 9)
            for algorithm in ConvAlgorithm.allCases {
                let whole = try Restoration.restore(img, network: net, options: .init(threads: 1, tileSize: 4096, algorithm: algorithm)).pixels
                XCTAssertTrue(whole.allSatisfy { $0.isFinite })
                // Winograd tiles mix a 6x6 input patch into each 4x4 output tile, so values just
                // outside a graph tile's valid region change the rounding (not the exact result)
                // of outputs inside it: with Winograd layers, tiled equals whole within rounding,
                // and the thread count never matters (bit for bit).
                let winograd = net.graph.nodes.contains { n in
                    guard n.op == .conv2d, let s = net.analysis.tensorShapes[n.params[0]] else { return false }
                    return algorithm.winogradVariant(outChannels: s[0], inChannels: s[1], kh: s[2], kw: s[3], padding: n.padding) != nil
                }
                for (tile, threads) in [(8, 1), (8, 2), (13, 2), (32, 3)] {
                    let t = try Restoration.restore(img, network: net, options: .init(threads: threads, tileSize: tile, algorithm: algorithm)).pixels
                    if winograd {
                        let one = try Restoration.restore(img, network: net, options: .init(threads: 1, tileSize: tile, algorithm: algorithm)).pixels
                        XCTAssertEqual(t, one, "\(net.name) \(algorithm): tile \(tile), \(threads) threads vs 1")
                        let scale = whole.map { abs($0) }.max()!
                        XCTAssertLessThan(zip(t, whole).map { abs($0 - $1) }.max()!, 1e-4 * scale, "\(net.name) \(algorithm): tile \(tile)")
                    } else {
                        XCTAssertEqual(t, whole, "\(net.name) \(algorithm): tile \(tile), \(threads) threads")
                    }
                }
            }
        }
        // The run-time parameter changes the U-net's output.
        let img = randomImage(24, 24, seed: 1)
        let a = try Restoration.restore(img, network: unet, options: .init(parameters: ["exposure_ratio": 2])).pixels
        let c = try Restoration.restore(img, network: unet, options: .init(parameters: ["exposure_ratio": 8])).pixels
        XCTAssertNotEqual(a, c)
        XCTAssertThrowsError(try Restoration.restore(img, network: unet, options: .init(parameters: ["nope": 1])))
    }

    /// With the default tiles (chosen from the image size only), the 3-CNN shape with its
    /// Winograd F(3x3,6x6) layer gives the same bits on 1, 2 and 3 threads, whether tiles run in
    /// parallel (small images use 128-pixel tiles) or one after another.
    func testDefaultTilesThreadIndependent() throws {
        let net = try Network(model: try Architectures.flamary3(initializer: randomInit(seed: 5)))
        for (w, h) in [(150, 140), (300, 90)] {
            let img = randomImage(w, h, seed: 6)
            let one = try Restoration.restore(img, network: net, options: .init(threads: 1)).pixels
            for threads in [2, 3] {
                XCTAssertEqual(try Restoration.restore(img, network: net, options: .init(threads: threads)).pixels, one, "\(w)x\(h), \(threads) threads")
            }
        }
    }

    /// A 'same' network on one whole frame splits every layer over the threads; its Winograd
    /// layers go in up to 4 tile-row ranges per thread once the map has enough tiles (here the
    /// full-resolution level: 54 x 40 tiles of F(4x4,3x3)). Same bits on 1, 2 and 3 threads.
    func testWholeFrameLayerSplitThreadIndependent() throws {
        let unet = try Architectures.unet(widths: [8, 16], exposureRatio: 2, initializer: randomInit(seed: 21))
        let net = try Network(model: unet)
        let img = randomImage(216, 160, seed: 22)
        for algorithm in [ConvAlgorithm.auto, .winograd, .winograd2, .direct] {
            let one = try Restoration.restore(img, network: net, options: .init(threads: 1, tileSize: 4096, algorithm: algorithm)).pixels
            for threads in [2, 3] {
                let many = try Restoration.restore(img, network: net, options: .init(threads: threads, tileSize: 4096, algorithm: algorithm)).pixels
                XCTAssertEqual(many, one, "\(algorithm), \(threads) threads")
            }
        }
    }

    /// Plans share memory between maps whose lives do not overlap: a plan used again (on an
    /// image that leaves large values everywhere in its arena) gives the same bits as a fresh
    /// plan, for every algorithm, and the arena is smaller than the sum of the maps.
    func testReusedPlanMemoryGivesSameBits() throws {
        let unet = try Architectures.unet(widths: [4, 6, 8], exposureRatio: 2, initializer: randomInit(seed: 12))
        let img = randomImage(40, 56, seed: 3)
        var loud = randomImage(40, 56, seed: 4)
        loud.pixels = loud.pixels.map { $0 * 1e6 }
        for algorithm in ConvAlgorithm.allCases where algorithm != .reference {
            let fresh = try Restoration.restore(img, network: try Network(model: unet), options: .init(threads: 1, algorithm: algorithm)).pixels
            let net = try Network(model: unet)
            _ = try Restoration.restore(loud, network: net, options: .init(threads: 2, algorithm: algorithm))
            let again = try Restoration.restore(img, network: net, options: .init(threads: 2, algorithm: algorithm)).pixels
            XCTAssertEqual(again, fresh, "\(algorithm)")
        }
        let bytes = try Network(model: unet).featureMapBytes(height: 64, width: 64)
        XCTAssertLessThan(bytes.shared, bytes.unshared * 3 / 4, "arena vs maps")
    }

    /// The fast executor (fusion, in-place concatenation, margins, transposed convs) equals the
    /// reference on a U-net and on every op, within float32 rounding.
    func testFastExecutorMatchesReference() throws {
        var rng = TestRNG(seed: 21)
        let unet = try Network(model: try Architectures.unet(widths: [6, 9, 12], exposureRatio: 3, initializer: randomInit(seed: 8)))
        let x = FeatureMap(channels: 1, height: 24, width: 36, data: (0..<(24 * 36)).map { _ in rng.float(0, 1) })
        let ref = try unet.forward(x, parameters: ["exposure_ratio": 5], algorithm: .reference)
        for isa in KernelISA.allCases where isa.supported {
            let fast = try unet.forward(x, parameters: ["exposure_ratio": 5], algorithm: .direct, isa: isa)
            let scale = ref.data.map { abs($0) }.max()!
            XCTAssertLessThanOrEqual(maxAbsDiff(fast.data, ref.data), 1e-5 * max(scale, 1), "\(isa)")
        }
    }

    func testOutputKeepsShapeAndMasksAndTooSmallImagesFail() throws {
        let net = try Network(model: try Architectures.flamary3(initializer: randomInit(seed: 5)))
        var img = randomImage(30, 21, seed: 2)
        img.pixels[40] = .nan; img.invalid[40] = true
        let (out, report) = try Restoration.restore(img, network: net)
        XCTAssertEqual(out.count, 30 * 21)
        XCTAssertTrue(out[40].isNaN)
        XCTAssertEqual(out.filter { $0.isNaN }.count, 1)
        XCTAssertEqual(report.padding, [9, 9, 9, 9])
        XCTAssertThrowsError(try Restoration.restore(randomImage(30, 18, seed: 2), network: net)) {
            XCTAssertTrue("\($0)".contains("receptive field"), "\($0)")
        }
    }
}
