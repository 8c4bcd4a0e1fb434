import Imaging
import ArgumentParser
import Evaluation
import Foundation
import ModelFormat
import Runtime
import Trainer

/// Times the FFT and the classical methods (Benchmarks/classical_peers.py runs the same sizes in
/// numpy, SciPy and scikit-image and prints the ratios); `--task denoise` scores and times the
/// classical denoisers (Benchmarks/denoise_peers.py runs the peers on the same arrays).
struct BenchClassical: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-classical",
        abstract: "Time the 2-D FFT, Wiener (with its lambda sweep) and Richardson-Lucy per iteration; or (--task denoise) score and time the classical denoisers.",
        discussion: """
        --task denoise: with --noisy and --truth (FITS or .npy, 2-D, same shape) denoises the noisy image \
        by each method with its parameter chosen against the truth (highest PSNR) and prints the parameter, \
        PSNR (10 log10(range^2/MSE), range = truth max - truth min), SSIM (Gaussian, sigma 1.5, same range), \
        the seconds of the whole parameter search and of one run at the chosen parameter. Without them, \
        each of --sizes is a generated star field (SyntheticSky, max 1) with Gaussian noise --noise-sigma.
        """)

    @Option(help: "fft (FFT, Wiener, Richardson-Lucy timings) or denoise (classical denoisers: quality and time).") var task: String = "fft"
    @Option(help: "Image sides (comma-separated).") var sizes: String = "512,1024"
    @Option(help: "Threads.") var threads: Int = ParallelFor.availableCores
    @Option(help: "Repeats (the median is reported).") var repeats: Int = 3
    @Flag(help: "CSV on standard output.") var csv = false
    @Option(help: "denoise: the noisy image (FITS, cfitsio syntax allowed, or .npy).") var noisy: String?
    @Option(help: "denoise: the truth (FITS or .npy), same shape.") var truth: String?
    @Option(help: "denoise: methods (comma-separated): gaussian, median, starlet.") var methods: String = "gaussian,median,starlet"
    @Option(help: "denoise: also run a method at fixed parameters, no search (repeatable), e.g. median:size=9, gaussian:sigma=2, starlet:k=3,scales=5.") var fixed: [String] = []
    @Option(help: "denoise, generated sky: noise standard deviation (the sky's maximum is 1).") var noiseSigma: Double = 0.02
    @Option(help: "denoise, generated sky: seed.") var seed: UInt64 = 1

    func median(_ f: () -> Void) -> Double {
        var t: [Double] = []
        for _ in 0..<max(1, repeats) { let s = monotonicSeconds(); f(); t.append(monotonicSeconds() - s) }
        return t.sorted()[t.count / 2]
    }

    func run() throws {
        guard threads >= 1 else { throw failure("--threads must be at least 1") }
        switch task {
        case "fft": runFFT()
        case "denoise": try runDenoise()
        default: throw failure("--task must be fft or denoise, got '\(task)'")
        }
    }

    func runFFT() {
        let sides = sizes.split(separator: ",").compactMap { Int($0) }
        print(csv ? "side,fft2_complex_s,wiener_sweep_s,rl_iteration_s" : "side   FFT2 complex (s)   Wiener incl. lambda choice (s)   RL per iteration (s)")
        let psf = airyPSF(size: 64, rings: 5)
        for n in sides {
            var rng = SplitMix64(seed: 1)
            let truth = Image2D(height: n, width: n, pixels: (0..<(n * n)).map { _ in Double(rng.float(0, 1)) })
            let observed = Degradation().addNoise(Degradation().blur(truth, threads: threads), seed: 2)
            var c = ComplexImage(height: n, width: n)
            c.re = truth.pixels
            let fft = median { var d = c; d.transform(inverse: false, threads: threads) }
            let lambdas = [1e-4, 1e-3, 1e-2, 0.1, 1, 10]
            let wiener = median { _ = Deconvolution.wienerBest(observed, truth: truth, psf: psf, lambdas: lambdas, threads: threads) }
            let rl = median { _ = Deconvolution.richardsonLucy(observed, psf: psf, iterations: 3, threads: threads) } / 3
            if csv { print("\(n),\(fft),\(wiener),\(rl)") } else {
                print(String(format: "%5d   %16.4f   %28.4f   %20.4f", n, fft, wiener, rl))
            }
        }
    }
}

extension BenchClassical {
    func runDenoise() throws {
        let names = methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let known = ["gaussian", "median", "starlet"]
        for n in names where !known.contains(n) { throw failure("unknown method '\(n)' (known: \(known.joined(separator: ", ")))") }
        guard !names.isEmpty || !fixed.isEmpty else { throw failure("--methods is empty") }
        var fixedRuns: [(String, String)] = []
        for f in fixed {
            let parts = f.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, known.contains(parts[0].lowercased()) else {
                throw failure("--fixed expects METHOD:PARAMETERS with METHOD one of \(known.joined(separator: ", ")), got '\(f)'")
            }
            let allowed: [String: Set<String>] = ["gaussian": ["sigma"], "median": ["size"], "starlet": ["k", "scales"]]
            for kv in parts[1].split(separator: ",") {
                let pair = kv.split(separator: "=").map(String.init)
                guard pair.count == 2, allowed[parts[0].lowercased()]!.contains(pair[0]), let v = Double(pair[1]), v.isFinite else {
                    throw failure("--fixed '\(f)': bad parameter '\(kv)' (gaussian: sigma=S; median: size=N; starlet: k=K,scales=J)")
                }
                if pair[0] == "size" || pair[0] == "scales" {
                    guard v == v.rounded(), v >= 1, v <= 1000 else { throw failure("--fixed '\(f)': \(pair[0]) must be an integer from 1 to 1000") }
                }
            }
            fixedRuns.append((parts[0].lowercased(), parts[1]))
        }
        var cases: [(label: String, noisy: Image2D, truth: Image2D)] = []
        switch (noisy, truth) {
        case let (n?, t?):
            let a: Image2D, b: Image2D
            do { (a, b) = (try loadArray(n), try loadArray(t)) } catch let e as ArrayFileError { throw failure(e.description) } catch {
                throw failure(describe(error))
            }
            guard a.height == b.height, a.width == b.width else {
                throw failure("noisy image is \(a.height)x\(a.width) but truth is \(b.height)x\(b.width)")
            }
            cases.append(((n as NSString).lastPathComponent, a, b))
        case (nil, nil):
            let sides = sizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !sides.isEmpty, sides.allSatisfy({ ($0 ?? 0) >= 8 }) else { throw failure("--sizes must be a list of sides of at least 8, got '\(sizes)'") }
            guard noiseSigma.isFinite, noiseSigma >= 0 else { throw failure("--noise-sigma must be finite and non-negative") }
            for case let n? in sides {
                let t = Degradation.normalise(SyntheticSky(size: n, stars: max(1, n * n / 250), galaxies: max(1, n * n / 40000), seed: seed).render())
                var g = GaussianStream(seed: seed &+ 1)
                cases.append(("sky\(n)", t.map { $0 + noiseSigma * g.next() }, t))
            }
        default:
            throw failure("give both --noisy and --truth, or neither (generated star fields)")
        }
        if csv { print("image,height,width,method,parameters,psnr,ssim,search_s,run_s") } else {
            print("image            size        method    parameters          PSNR (dB)   SSIM     search (s)   one run (s)")
        }
        for c in cases {
            let finite = c.truth.pixels.filter { $0.isFinite }
            guard let lo = finite.min(), let hi = finite.max(), hi > lo else { throw failure("\(c.label): the truth has no range (constant or no finite pixel)") }
            let range = hi - lo
            let psnr = { (img: Image2D) in Metrics.psnr(c.truth, img, dataRange: range) }
            var rows: [(String, String, Double, Double, Double, Double)] = [("noisy", "-", psnr(c.noisy), Metrics.ssim(c.truth, c.noisy, dataRange: range), 0, 0)]
            for m in names {
                let start = monotonicSeconds()
                let choice: DenoiserChoice
                switch m {
                case "gaussian": choice = Denoisers.gaussianBest(c.noisy, threads: threads, score: psnr)
                case "median": choice = Denoisers.medianBest(c.noisy, threads: threads, score: psnr)
                default: choice = Denoisers.starletBest(c.noisy, threads: threads, score: psnr)
                }
                let search = monotonicSeconds() - start
                let once = median { _ = rerun(m, choice.parameters, c.noisy) }
                rows.append((m, choice.parameters, choice.score, Metrics.ssim(c.truth, choice.image, dataRange: range), search, once))
            }
            for (m, p) in fixedRuns {
                var img = c.noisy
                let once = median { img = rerun(m, p, c.noisy) }
                rows.append((m, p, psnr(img), Metrics.ssim(c.truth, img, dataRange: range), 0, once))
            }
            for r in rows {
                if csv { print("\(c.label),\(c.noisy.height),\(c.noisy.width),\(r.0),\"\(r.1)\",\(r.2),\(r.3),\(r.4),\(r.5)") } else {
                    print(String(format: "%@ %@ %@ %@ %9.3f   %6.4f   %10.3f   %11.4f", pad(c.label, 16), pad("\(c.noisy.height)x\(c.noisy.width)", 11),
                                 pad(r.0, 9), pad(r.1, 18), r.2, r.3, r.4, r.5))
                }
            }
        }
    }

    /// One run of method `m` at the parameters of its `DenoiserChoice` string.
    func rerun(_ m: String, _ parameters: String, _ image: Image2D) -> Image2D {
        var p: [String: Double] = [:]
        for kv in parameters.split(separator: ",") {
            let parts = kv.split(separator: "=")
            if parts.count == 2, let v = Double(parts[1]) { p[String(parts[0])] = v }
        }
        switch m {
        case "gaussian": return Denoisers.gaussian(image, sigma: p["sigma"] ?? 0, threads: threads)
        case "median": return Denoisers.median(image, size: Int(p["size"] ?? 1), threads: threads)
        default: return Denoisers.starlet(image, scales: Int(p["scales"] ?? 5), k: p["k"] ?? 3, threads: threads)
        }
    }
}

enum ArrayFileError: Error, CustomStringConvertible {
    case bad(String, String)
    var description: String {
        switch self { case let .bad(path, why): return "\(path): \(why)" }
    }
}

/// A 2-D image from a FITS file (first image HDU, or cfitsio syntax; invalid pixels NaN) or a
/// .npy file (C or Fortran order; float32/64, int16/32/64, uint8/16 in either byte order).
func loadArray(_ path: String) throws -> Image2D {
    if path.lowercased().hasSuffix(".npy") { return try loadNPY(path) }
    return try SourceImage.load(path: path).raw
}

func loadNPY(_ path: String) throws -> Image2D {
    guard let data = FileManager.default.contents(atPath: path) else { throw ArrayFileError.bad(path, "cannot read the file") }
    let bytes = [UInt8](data)
    guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1...5]) == Array("NUMPY".utf8) else {
        throw ArrayFileError.bad(path, "not a .npy file (no \\x93NUMPY magic)")
    }
    let major = bytes[6]
    let (headerLength, headerStart): (Int, Int)
    if major == 1 { (headerLength, headerStart) = (Int(bytes[8]) | Int(bytes[9]) << 8, 10) } else {
        guard bytes.count >= 12 else { throw ArrayFileError.bad(path, "truncated header") }
        (headerLength, headerStart) = (Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24, 12)
    }
    guard headerStart + headerLength <= bytes.count,
          let header = String(bytes: bytes[headerStart..<(headerStart + headerLength)], encoding: .utf8) else {
        throw ArrayFileError.bad(path, "truncated or unreadable header")
    }
    func field(_ key: String) -> String? {
        guard let r = header.range(of: "'\(key)':") else { return nil }
        return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
    }
    guard let d = field("descr"), d.hasPrefix("'"), let end = d.dropFirst().firstIndex(of: "'") else { throw ArrayFileError.bad(path, "no dtype in header") }
    let descr = String(d[d.index(after: d.startIndex)..<end])
    let fortran = field("fortran_order")?.hasPrefix("True") ?? false
    guard let s = field("shape"), let open = s.firstIndex(of: "("), let close = s.firstIndex(of: ")") else { throw ArrayFileError.bad(path, "no shape in header") }
    let dims = s[s.index(after: open)..<close].split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard dims.count == 2, dims[0] > 0, dims[1] > 0 else { throw ArrayFileError.bad(path, "need a 2-D array, shape is (\(dims.map(String.init).joined(separator: ", ")))") }
    let (h, w) = (dims[0], dims[1])
    guard h <= 1 << 20, w <= 1 << 20, h * w <= 1 << 32 else { throw ArrayFileError.bad(path, "shape \(h)x\(w) is too large") }
    guard descr.count >= 3 else { throw ArrayFileError.bad(path, "unsupported dtype '\(descr)'") }
    let order = descr.first!, kind = descr.dropFirst().prefix(1), size = Int(descr.dropFirst(2)) ?? 0
    let big = order == ">"
    guard order == "<" || order == ">" || order == "|" else { throw ArrayFileError.bad(path, "unsupported dtype '\(descr)'") }
    let supported = (kind == "f" && (size == 4 || size == 8)) || (kind == "i" && [2, 4, 8].contains(size)) || (kind == "u" && [1, 2].contains(size))
    guard supported else { throw ArrayFileError.bad(path, "unsupported dtype '\(descr)' (float32/64, int16/32/64, uint8/16)") }
    let start = headerStart + headerLength
    guard bytes.count - start >= h * w * size else { throw ArrayFileError.bad(path, "data truncated: \(bytes.count - start) bytes for \(h)x\(w) of \(size)") }
    var px = [Double](repeating: 0, count: h * w)
    for i in 0..<(h * w) {
        var u: UInt64 = 0
        for b in 0..<size { u |= UInt64(bytes[start + i * size + (big ? size - 1 - b : b)]) << (8 * b) }
        let v: Double
        switch (kind, size) {
        case ("f", 4): v = Double(Float(bitPattern: UInt32(truncatingIfNeeded: u)))
        case ("f", 8): v = Double(bitPattern: u)
        case ("i", 2): v = Double(Int16(truncatingIfNeeded: u))
        case ("i", 4): v = Double(Int32(truncatingIfNeeded: u))
        case ("i", 8): v = Double(Int64(bitPattern: u))
        default: v = Double(u)
        }
        // Element i is (y, x) in C order, (x, y) of a w-major layout in Fortran order.
        if fortran { px[(i % h) * w + i / h] = v } else { px[i] = v }
    }
    return Image2D(height: h, width: w, pixels: px)
}
