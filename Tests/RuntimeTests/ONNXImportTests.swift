import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

/// tools/onnx2acnn.py on the committed fixtures (Tests/RuntimeTests/Fixtures/onnx, written by
/// tools/make_onnx_fixtures.py): each converted model, run by this runtime on the fixture's input,
/// must reproduce the output onnxruntime computed at generation time; the unsupported models must
/// be refused with one line naming the node, op type and attribute. Needs python3 with numpy and
/// onnx (scripts/setup.sh installs them); skips with a message otherwise.
final class ONNXImportTests: XCTestCase {
    struct Manifest: Decodable {
        struct Positive: Decodable {
            let name: String
            let onnx: String
            let args: [String]
            let input: String
            let input_shape: [Int]
            let parameters: [String: Float]
            let expected: String
            let expected_shape: [Int]
        }
        struct Negative: Decodable {
            let name: String
            let onnx: String
            let error: [String]
        }
        let tolerance: Float
        let positive: [Positive]
        let negative: [Negative]
    }

    let fixtures = repositoryRoot + "/Tests/RuntimeTests/Fixtures/onnx"
    let converter = repositoryRoot + "/tools/onnx2acnn.py"

    func requireONNX() throws {
        let (status, _, _) = try runProcess("/usr/bin/env", ["python3", "-c", "import numpy, onnx"])
        if status != 0 {
            throw XCTSkip("python3 with numpy and onnx is not installed (scripts/setup.sh installs them): ONNX import tests skipped")
        }
    }

    func manifest() throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: fixtures + "/manifest.json")))
    }

    func testConvertedModelsMatchONNXRuntime() throws {
        try requireONNX()
        let m = try manifest()
        XCTAssertGreaterThanOrEqual(m.positive.count, 6)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for c in m.positive {
            let out = dir + "/\(c.name).acnn"
            let (status, stdout, stderr) = try runProcess("/usr/bin/env", ["python3", converter, fixtures + "/" + c.onnx, "-o", out] + c.args)
            XCTAssertEqual(status, 0, "\(c.name): \(stdout)\(stderr)")
            if status != 0 { continue }
            let net = try Network(path: out)
            XCTAssertEqual(net.metadata["onnx.source_file"], .string(c.onnx), c.name)
            XCTAssertNotNil(net.metadata["onnx.opset"]?.intValue, c.name)
            XCTAssertNotNil(net.metadata["onnx.producer"]?.stringValue, c.name)
            XCTAssertEqual(net.metadata["converter"]?.stringValue?.hasPrefix("onnx2acnn "), true, c.name)
            let x = try readFloats(fixtures + "/" + c.input)
            let expected = try readFloats(fixtures + "/" + c.expected)
            XCTAssertEqual(c.input_shape.count, 3); XCTAssertEqual(c.expected_shape.count, 3)
            XCTAssertEqual(x.count, c.input_shape.reduce(1, *), c.name)
            XCTAssertEqual(expected.count, c.expected_shape.reduce(1, *), c.name)
            let input = FeatureMap(channels: c.input_shape[0], height: c.input_shape[1], width: c.input_shape[2], data: x)
            let scale = expected.map { abs($0) }.max() ?? 0
            XCTAssertGreaterThan(scale, 0, "\(c.name): degenerate fixture")
            for algorithm in [ConvAlgorithm.auto, .direct, .reference] {
                let y = try net.forward(input, parameters: c.parameters, algorithm: algorithm)
                XCTAssertEqual([y.channels, y.height, y.width], c.expected_shape, "\(c.name) \(algorithm)")
                if y.data.count != expected.count { continue }
                let err = maxAbsDiff(y.data, expected) / scale
                print("ONNX import \(c.name) \(algorithm): max abs error \(err) of the output scale")
                XCTAssertLessThan(err, m.tolerance, "\(c.name) \(algorithm): max abs error \(err) of the output scale against onnxruntime")
            }
            if c.name.hasPrefix("unet") {
                // The exposure ratio is a run-time parameter, and it matters.
                XCTAssertNotNil(net.runtimeParameters["exposure_ratio"], c.name)
                XCTAssertEqual(net.analysis.geometry.sizeMultiple, 2)
                let other = try net.forward(input, parameters: ["exposure_ratio": 0.5])
                XCTAssertGreaterThan(maxAbsDiff(other.data, expected) / scale, 1e-3, "\(c.name): the exposure ratio has no effect")
            }
            if c.name == "unet_torchscript_repeat_static" {
                // Converted with --param exposure_ratio=3.5 from an input named 'ratio'; run above without parameters.
                XCTAssertEqual(net.runtimeParameters, ["exposure_ratio": 3.5])
                XCTAssertTrue(c.parameters.isEmpty)
            }
            if c.name == "flamary3" {
                XCTAssertEqual(net.analysis.geometry.receptiveField, [19, 19])
                XCTAssertEqual(net.normalization, .clipMax)
            }
        }
    }

    func testUnsupportedModelsAreRefused() throws {
        try requireONNX()
        let m = try manifest()
        XCTAssertGreaterThanOrEqual(m.negative.count, 5)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for c in m.negative {
            let out = dir + "/\(c.name).acnn"
            let (status, _, stderr) = try runProcess("/usr/bin/env", ["python3", converter, fixtures + "/" + c.onnx, "-o", out])
            XCTAssertEqual(status, 1, "\(c.name): \(stderr)")
            let lines = stderr.split(separator: "\n", omittingEmptySubsequences: true)
            XCTAssertEqual(lines.count, 1, "\(c.name): \(stderr)")
            XCTAssertTrue(stderr.hasPrefix("onnx2acnn: error: "), "\(c.name): \(stderr)")
            for fragment in c.error {
                XCTAssertTrue(stderr.contains(fragment), "\(c.name): '\(fragment)' not in \(stderr)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(c.name): an output was written")
        }
    }

    /// The Python self-test: conversions checked by a numpy executor of the format, more refusals,
    /// options (--param renaming and defaults, --float16, --overwrite).
    func testConverterSelfTest() throws {
        try requireONNX()
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (status, out, err) = try runProcess("/usr/bin/env", ["python3", repositoryRoot + "/tools/test_onnx2acnn.py", dir])
        XCTAssertEqual(status, 0, out + err)
        XCTAssertTrue(out.contains("onnx2acnn self-test: ok"), out)
    }

    /// Even-kernel 'same' convolutions (ONNX `SAME_UPPER` or pads [0, 0, 1, 1] for 2x2) pad one more
    /// row and column at the bottom/right than at the top/left: the fast paths must read zeros there
    /// (the every-op fixture found the plan's margins one pixel short for 2x2 kernels).
    func testEvenSameKernelsMatchReference() throws {
        for (cin, cout, k) in [(6, 6, 2), (4, 8, 2), (1, 4, 2), (6, 6, 4), (16, 16, 6), (3, 5, 3)] {
            var b = ModelBuilder(name: "even", inputChannels: cin, initializer: randomInit(seed: UInt64(k * 100 + cin)))
            let y = b.conv(b.input.name, out: cout, kernel: k, padding: .same, bias: false, name: "c")
            let net = try Network(model: try b.build(output: y))
            var rng = TestRNG(seed: 1)
            let x = FeatureMap(channels: cin, height: 10, width: 14, data: (0..<(cin * 140)).map { _ in rng.float() })
            let ref = try net.forward(x, algorithm: .reference)
            for algorithm in [ConvAlgorithm.direct, .auto] {
                let fast = try net.forward(x, algorithm: algorithm)
                XCTAssertLessThanOrEqual(maxAbsDiff(ref.data, fast.data), 1e-5, "\(cin)->\(cout) \(k)x\(k) same, \(algorithm)")
            }
        }
    }

    /// `astrocnn inspect` shows a converted U-net's constant channel and its run-time parameter.
    func testInspectShowsTheParameter() throws {
        try requireONNX()
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/unet.acnn"
        let (status, _, stderr) = try runProcess("/usr/bin/env", ["python3", converter, fixtures + "/unet_torchscript_expand.onnx", "-o", out,
                                                                  "--param", "exposure_ratio=2"])
        XCTAssertEqual(status, 0, stderr)
        let (s2, text, e2) = try runProcess(try astrocnnExecutable(), ["inspect", out])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(text.contains("param=exposure_ratio"), text)
        XCTAssertTrue(text.contains("onnx.producer"), text)
    }

    /// `astrocnn restore` with a converted U-net (normalisation none) on the fixture's input written
    /// as FITS reproduces onnxruntime's output, with the exposure ratio given on the command line.
    func testRestoreWithConvertedUNet() throws {
        try requireONNX()
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let m = try manifest()
        let c = try XCTUnwrap(m.positive.first { $0.name == "unet_torchscript_expand" })
        let model = dir + "/unet.acnn"
        let (status, _, stderr) = try runProcess("/usr/bin/env", ["python3", converter, fixtures + "/" + c.onnx, "-o", model])
        XCTAssertEqual(status, 0, stderr)
        let (h, w) = (c.input_shape[1], c.input_shape[2])
        try FITSIO.writeImage(path: dir + "/in.fits", width: w, height: h, pixels: try readFloats(fixtures + "/" + c.input), headerCards: [])
        let (s2, _, e2) = try runProcess(try astrocnnExecutable(), ["restore", dir + "/in.fits", "-m", model, "-o", dir + "/out.fits",
                                                                     "--param", "exposure_ratio=2.5", "--quiet"])
        XCTAssertEqual(s2, 0, e2)
        let restored = try FITSIO.readImage(path: dir + "/out.fits")
        XCTAssertEqual([restored.height, restored.width], [h, w])
        let expected = try readFloats(fixtures + "/" + c.expected)
        let scale = expected.map { abs($0) }.max() ?? 1
        XCTAssertLessThan(maxAbsDiff(restored.pixels, expected) / scale, m.tolerance)
    }
}
