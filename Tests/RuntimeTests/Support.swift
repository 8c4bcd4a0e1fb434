import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

/// Seeded test data.
typealias TestRNG = SplitMix64

func randomInit(seed: UInt64) -> ModelBuilder.Initializer {
    var rng = TestRNG(seed: seed)
    return { _, shape, fanIn, _ in
        let s = Float((2 / Double(fanIn)).squareRoot())
        return (0..<shape.reduce(1, *)).map { _ in rng.float(-s, s) }
    }
}

/// A tiny random U-net written twice into `dir`: as a denoiser (`d.acnn`) and as a
/// deconvolution model (`c.acnn`, which the denoisers' options refuse).
func writeTaskModels(_ dir: String, seed: UInt64) throws {
    var model = try Architectures.unet(name: "tiny-denoiser", widths: [4, 8], normalization: "sky_mad", initializer: randomInit(seed: seed))
    model.metadata["training.task"] = .string("denoise")
    try ModelWriter.write(model, to: dir + "/d.acnn")
    model.metadata["training.task"] = .string("deconvolve")
    try ModelWriter.write(model, to: dir + "/c.acnn")
}

/// The repository root (two levels above this file's folder).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// ../shared/data next to the repository, when present.
let sharedData: String? = {
    let p = repositoryRoot + "/../shared/data"
    return FileManager.default.fileExists(atPath: p + "/README.md") ? p : nil
}()

func requireSharedData() throws -> String {
    guard let d = sharedData else { throw XCTSkip("../shared/data is absent: test skipped") }
    return d
}

func temporaryDirectory() -> String {
    let d = NSTemporaryDirectory() + "astrocnn-tests-\(UUID().uuidString)"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func readFloats(_ path: String) throws -> [Float] {
    let d = try Data(contentsOf: URL(fileURLWithPath: path))
    return d.withUnsafeBytes { raw in
        (0..<(d.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
    }
}

/// The published Flamary 2017 3-CNN for one held-out image, built from `raw/` and manifest.json.
/// The manifest's kernels are for true convolution; the .acnn format stores cross-correlation
/// kernels, so each kernel is rotated by 180 degrees here.
func publishedFlamaryModel(_ which: String, data: String) throws -> Model {
    let base = data + "/flamary2017-models/"
    let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: base + "manifest.json"))) as! [String: Any]
    let layers = ((manifest["models"] as! [String: Any])[which] as! [String: Any])["layers"] as! [[String: Any]]
    var weights: [String: [Float]] = [:]
    for (i, layer) in layers.enumerated() {
        let shape = layer["weight_shape"] as! [Int]
        let w = try readFloats(base + (layer["weight"] as! String))
        let (o, c, kh, kw) = (shape[0], shape[1], shape[2], shape[3])
        var flipped = [Float](repeating: 0, count: w.count)
        for a in 0..<o { for b in 0..<c { for u in 0..<kh { for v in 0..<kw {
            flipped[((a * c + b) * kh + u) * kw + v] = w[((a * c + b) * kh + (kh - 1 - u)) * kw + (kw - 1 - v)]
        } } } }
        weights["conv\(i + 1).weight"] = flipped
        weights["conv\(i + 1).bias"] = try readFloats(base + (layer["bias"] as! String))
    }
    var m = try Architectures.flamary3(name: "flamary2017-\(which)") { name, shape, _, _ in weights[name] ?? [] }
    for i in 1...3 { m.tensors["conv\(i).bias"]!.values = weights["conv\(i).bias"]! }
    return m
}

/// Path of the built `astrocnn` executable, in the build folder that holds this test binary.
struct MissingExecutable: Error, CustomStringConvertible {
    let searched: [String]
    var description: String { "the astrocnn executable was not found in \(searched); build it with the tests (swift test builds it)" }
}

func astrocnnExecutable() throws -> String {
    var dirs: [String] = []
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        dirs.append(URL(fileURLWithPath: exe).deletingLastPathComponent().path)
    }
    dirs.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path)
    for b in Bundle.allBundles { dirs.append(b.bundleURL.deletingLastPathComponent().path) }
    for d in dirs {
        let p = d + "/astrocnn"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    throw MissingExecutable(searched: dirs)
}

/// Runs a command, returning (exit status, stdout, stderr).
@discardableResult
func runProcess(_ exe: String, _ args: [String]) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var m: Float = 0
    for i in 0..<a.count { m = max(m, abs(a[i] - b[i])) }
    return m
}
