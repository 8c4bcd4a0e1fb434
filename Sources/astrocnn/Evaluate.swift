import Imaging
import ArgumentParser
import Evaluation
import Foundation
import ModelFormat
import Reporting
import Runtime
import Trainer

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare restoration methods on FITS images in the layout of Flamary 2017's Table I.",
        discussion: """
        Degrades each image with the paper's recipe (the trainer's code: clip, divide by the max, Airy PSF \
        64x64 rings 5, Gaussian noise sigma 0.01, seeded; another PSF with --psf, another noise with --noise), runs every method, and prints PSNR (paper \
        convention: max 1, 32-pixel crop) and SSIM tables with the average time per method. Methods: none, \
        wiener (lambda by least MSE over a sweep), rl (Richardson-Lucy, best iteration by PSNR up to \
        --rl-iterations), tv (Condat primal-dual, mu sweep, fixed iterations), and CNNs by name (flamary1, \
        flamary3 from models/, or NAME=PATH.acnn via --models).
        """)

    @Option(name: .long, parsing: .upToNextOption, help: "FITS images or directories of them.")
    var images: [String] = []

    @Option(help: "deconvolve (Flamary 2017's protocol, Table I) or denoise (the Astro U-net's, Table 2).")
    var task: String = "deconvolve"

    @Option(help: "Comma-separated methods (deconvolve: none,wiener,wiener-gcv,wiener-dp,wiener-risk,rl,tv,flamary1,flamary3 and models; NAME+dc: a PSF-aware model with the data-consistency correction; NAME+dc+pos: the same holding the output to >= 0, the truth's zero, as RL and Prox-TV do; denoise: none,gaussian,median,starlet and models).")
    var methods: String?

    @Option(name: .long, parsing: .upToNextOption, help: "CNN models as NAME=PATH (default flamary1, flamary3 from models/ or the model search path).")
    var models: [String] = []

    @Option(help: "Degradation: paper (simulate and score against the truth) or none (images are already degraded; no truth).")
    var degrade: String = "paper"

    @Option(help: "Noise seed (image k uses seed + k).") var seed: UInt64 = 1
    @Option(help: ArgumentHelp(stringLiteral: DegradationOptions.psfHelp + " Wiener, RL and Prox-TV deconvolve with the same kernel (and a model that takes the PSF at run time is given it). With --degrade none, 'auto' measures each image's PSF from its stars.")) var psf: String = "airy:size=64,rings=5"
    @Option(help: ArgumentHelp(stringLiteral: DegradationOptions.noiseHelp + " A range is drawn once per image.")) var noise: String?
    @Option(help: "Gaussian noise standard deviation: the same as --noise gaussian:sigma=S.") var sigma: Double?
    @Option(help: "Wiener lambdas to sweep (comma-separated; the best is refined twice between its neighbours).") var wienerLambdas: String = "1e-4,1e-3,1e-2,0.1,1,10"
    @Option(help: "Richardson-Lucy maximum iterations.") var rlIterations: Int = 50
    @Option(help: "Prox-TV mu values to sweep (comma-separated).") var tvMus: String = "1e-3,3e-3,1e-2"
    @Option(help: "Prox-TV iterations.") var tvIterations: Int = 100
    @Option(help: "CSV output (image,method,psnr,ssim,seconds,parameters).") var csv: String?
    @Option(help: "PNG panel like the paper's Fig. 3 (truth, degraded, each method, same zoom and stretch).") var panel: String?
    @Option(help: "Side of the zoomed region in the panel.") var zoom: Int = 192
    @Option(help: "Threads (default: all cores).") var threads: Int?
    @Option(help: "Run each network as a self-ensemble of 1, 2, 4 or 8 symmetries of the square (turns and flips; a Wiener step's PSF turned with the image), outputs turned back and averaged, as restore --ensemble; 'valid' models such as flamary3 run once (the parameters column says which ran as an ensemble).") var ensemble: Int = 1

    @OptionGroup var denoise: DenoiseOptions
    @OptionGroup var injection: InjectionOptions

    func run() throws {
        do {
            guard SelfEnsemble.counts.contains(ensemble) else { throw ValidationError("--ensemble takes 1, 2, 4 or 8") }
            switch task {
            case "deconvolve": try evaluate()
            case "denoise": try evaluateDenoising()
            default: throw ValidationError("--task must be deconvolve or denoise")
            }
        } catch let e as ExitCode { throw e } catch let e as ValidationError { throw e } catch { throw failure(describe(error)) }
    }

    func parseList(_ s: String, _ what: String) throws -> [Double] {
        let v = s.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        if v.isEmpty { throw ValidationError("\(what): give comma-separated numbers") }
        return v
    }

    func evaluate() throws {
        guard !images.isEmpty else { throw ValidationError("give images with --images FILES|DIR") }
        guard degrade == "paper" || degrade == "none" else { throw ValidationError("--degrade must be paper or none") }
        // --psf auto: each image's PSF measured from its own stars (images as they are, no truth).
        let autoPSF = psf.lowercased() == "auto"
        if autoPSF && degrade != "none" {
            throw ValidationError("--psf auto measures each image's PSF from its stars: it works on images as they are (--degrade none); a simulated degradation needs the PSF it blurs with")
        }
        let degradation = try DegradationOptions.make(psf: autoPSF ? PSFSpec.paper.description : psf, noise: noise, sigma: sigma)
        let scratch = NSTemporaryDirectory() + "astrocnn-evaluate-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let paths = try SourceImage.expand(images)
        guard !paths.isEmpty else { throw ValidationError("no FITS images in \(images)") }
        var modelPaths = ["flamary1": Demo.defaultModel("flamary1.acnn") ?? "models/flamary1.acnn",
                          "flamary3": Demo.defaultModel("flamary3.acnn") ?? "models/flamary3.acnn"]
        for m in models {
            let parts = m.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--models takes NAME=PATH, got \(m)") }
            modelPaths[parts[0]] = parts[1]
        }
        var list: [Method] = []
        for name in (methods ?? "none,wiener,rl,tv,flamary1,flamary3").split(separator: ",").map({ String($0).trimmingCharacters(in: .whitespaces) }) {
            switch name {
            case "none": list.append(.none)
            case "wiener": list.append(.wiener(lambdas: try parseList(wienerLambdas, "--wiener-lambdas")))
            case "wiener-gcv": list.append(.wienerGCV)
            case "wiener-dp": list.append(.wienerDP)
            case "wiener-risk": list.append(.wienerRisk)
            case "rl": list.append(.richardsonLucy(maxIterations: rlIterations))
            case "tv": list.append(.proxTV(mus: try parseList(tvMus, "--tv-mus"), iterations: tvIterations))
            default:
                var base = name
                for suffix in [Method.dataConsistencySuffix + Method.lowerBoundSuffix, Method.dataConsistencySuffix] where base.hasSuffix(suffix) {
                    base = String(base.dropLast(suffix.count))
                    break
                }
                guard let p = modelPaths[base] else { throw ValidationError("unknown method \(name): give --models \(name)=PATH.acnn") }
                guard FileManager.default.fileExists(atPath: p) else { throw ValidationError("model for \(name) not found: \(p)") }
                list.append(.network(name: name, path: p))
            }
        }
        var ev = Evaluator()
        ev.degradation = degradation
        ev.seed = seed
        ev.threads = max(1, threads ?? ParallelFor.availableCores)
        ev.ensemble = ensemble
        var results: [MethodResult] = []
        var panels: [(title: String, pixels: [Float])] = []
        var panelSize = (0, 0)
        for (k, path) in paths.enumerated() {
            let src = try SourceImage.load(path: path)
            // The paper's metrics drop a 32-pixel border; SSIM needs its 11-pixel window inside.
            let minSide = 2 * ev.crop + 11
            guard src.raw.height >= minSide && src.raw.width >= minSide else {
                throw ValidationError("\(src.name) is \(src.raw.width)x\(src.raw.height): evaluation needs at least \(minSide)x\(minSide) pixels (a \(ev.crop)-pixel border is excluded from the metrics)")
            }
            let truth: Image2D?, observed: Image2D
            if degrade == "paper" {
                let d = try ev.degrade(src, index: k)
                (truth, observed) = (d.truth, d.observed)
                if !ev.degradation.noise.isFixed || ev.degradation.needsSkySigma {
                    FileHandle.standardError.write(Data("\(src.name): noise \(ev.noiseLevel(src, index: k))\n".utf8))
                }
            } else {
                (truth, observed) = (nil, Degradation.normalise(src.raw))
                if autoPSF {
                    let px = src.raw.pixels.map { Float($0) }
                    let m: MeasuredPSF
                    do { m = try PSFEstimation.measure(pixels: px, invalid: px.map { !$0.isFinite }, width: src.raw.width, height: src.raw.height) }
                    catch { throw ValidationError("\(src.name): --psf auto: \(describe(error))") }
                    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
                    let file = scratch + "/psf-\(k).fits"
                    try FITSIO.writeImage(path: file, width: m.kernel.width, height: m.kernel.height, pixels: m.kernel.pixels.map(Float.init),
                                          headerCards: [], overwrite: true)
                    ev.degradation = try Degradation(psf: .file(file), noise: degradation.noise)
                    FileHandle.standardError.write(Data(String(format: "%@: PSF measured from %d stars: Moffat FWHM %.2f px, beta %.2f\n",
                                                               src.name, m.stars, m.fwhm, m.beta).utf8))
                }
            }
            FileHandle.standardError.write(Data("\(src.name): \(observed.width)x\(observed.height)\n".utf8))
            // The zoom region: centred on the brightest smoothed area of the truth (or observation).
            let ref = truth ?? observed
            let z = min(zoom, ref.height, ref.width)
            let (zy, zx) = brightestWindow(ref, side: z)
            if k == 0 {
                panelSize = (z, z)
                if let t = truth { panels.append(("truth", crop(t, zy, zx, z))) }
                panels.append(("degraded", crop(observed, zy, zx, z)))
            }
            for m in list {
                let t0 = monotonicSeconds()
                let (img, params) = try ev.run(m, observed: observed, truth: truth)
                let secs = monotonicSeconds() - t0
                var r = MethodResult(image: src.name, method: m.name, psnr: .nan, ssim: .nan, kl: .nan, seconds: secs,
                                     parameters: params, restored: img)
                if let t = truth {
                    let s = ev.score(t, img)
                    (r.psnr, r.ssim, r.kl) = (s.psnr, s.ssim, s.kl)
                } else {
                    // Without a truth: how well the restoration explains the data, the RMS of
                    // (PSF * restored - observed) in units of the noise sigma (about 1 when the
                    // restoration fits the data to the noise; the degraded image itself gives the
                    // blur residual).
                    r.kl = Metrics.dataResidual(observed: observed, restored: img, psf: ev.degradation.psf, crop: 32) / noiseSigma(ev.degradation, observed)
                }
                results.append(r)
                var bias = Double.nan
                if let t = truth {
                    let inner = t.crop(y: 32, x: 32, height: t.height - 64, width: t.width - 64)
                    let est = img.crop(y: 32, x: 32, height: t.height - 64, width: t.width - 64)
                    bias = zip(est.pixels, inner.pixels).reduce(0) { $0 + ($1.0 - $1.1) } / Double(inner.count)
                }
                FileHandle.standardError.write(Data(String(format: "  %@ PSNR %7.3f dB  SSIM %.4f  mean error %+.5f  %.2f s  %@\n",
                                                           m.name.padding(toLength: 10, withPad: " ", startingAt: 0), r.psnr, r.ssim, bias, secs, params).utf8))
                if k == 0 && m != .none { panels.append((m.name, crop(img, zy, zx, z))) }
            }
        }
        printTables(results, methods: list.map { $0.name }, truth: degrade == "paper")
        if let c = csv {
            var text = "image,method,psnr,ssim,seconds,parameters\n"
            for r in results { text += "\(r.image),\(r.method),\(r.psnr),\(r.ssim),\(r.seconds),\"\(r.parameters)\"\n" }
            try AtomicFile.write(Array(text.utf8), to: c, overwrite: true)
            print("wrote \(c)")
        }
        if let p = panel {
            try Preview.sideBySide(panels, width: panelSize.0, height: panelSize.1, maxSide: 400).write(to: p)
            print("wrote \(p)")
        }
    }

    /// The noise sigma the no-truth residual is measured in: a fixed Gaussian sigma, the middle
    /// of a sigma range (geometric), else (sky-relative or Poisson noise) the observation's own
    /// robust sky sigma times the middle k for sky noise.
    func noiseSigma(_ d: Degradation, _ observed: Image2D) -> Double {
        switch d.noise {
        case .gaussian(let s): return (s.lowerBound * s.upperBound).squareRoot()
        case .sky(let k): return (k.lowerBound + k.upperBound) / 2 * SkyStatistics.estimate(observed).sigma
        case .noise(let k): return (k.lowerBound + k.upperBound) / 2 * d.ownSigma(observed)
        case .poisson, .none: return SkyStatistics.estimate(observed).sigma
        }
    }

    func crop(_ img: Image2D, _ y: Int, _ x: Int, _ s: Int) -> [Float] {
        img.crop(y: y, x: x, height: s, width: s).pixels.map { Float($0) }
    }

    /// Top-left corner of the side x side window with the largest sum (on a coarse grid).
    func brightestWindow(_ img: Image2D, side: Int) -> (Int, Int) {
        let step = max(1, side / 4)
        var best = (0, 0, -Double.infinity)
        for y in stride(from: 32, through: max(32, img.height - side - 32), by: step) where y + side <= img.height {
            for x in stride(from: 32, through: max(32, img.width - side - 32), by: step) where x + side <= img.width {
                var s = 0.0
                for i in stride(from: 0, to: side, by: 4) { for j in stride(from: 0, to: side, by: 4) { s += img[y + i, x + j] } }
                if s > best.2 { best = (y, x, s) }
            }
        }
        return best.2.isFinite ? (best.0, best.1) : (0, 0)
    }

    func printTables(_ results: [MethodResult], methods: [String], truth: Bool) {
        let imgs = results.map { $0.image }.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let w = max(14, (imgs.map { $0.count }.max() ?? 0) + 2)
        func table(_ title: String, _ value: (MethodResult) -> Double, _ fmt: String) {
            print("\n" + title)
            print("image".padding(toLength: w, withPad: " ", startingAt: 0) + methods.map { $0.leftPad(10) }.joined())
            for i in imgs {
                var line = i.padding(toLength: w, withPad: " ", startingAt: 0)
                for m in methods {
                    let r = results.first { $0.image == i && $0.method == m }
                    line += String(format: fmt, r.map(value) ?? .nan).leftPad(10)
                }
                print(line)
            }
            var avg = "average".padding(toLength: w, withPad: " ", startingAt: 0)
            for m in methods {
                let v = results.filter { $0.method == m }.map(value)
                avg += String(format: fmt, v.reduce(0, +) / Double(max(1, v.count))).leftPad(10)
            }
            print(avg)
        }
        if truth {
            table("PSNR (dB; max 1, 32-pixel crop)", { $0.psnr }, "%.2f")
            table("SSIM (Gaussian sigma 1.5, data range 1)", { $0.ssim }, "%.4f")
        }
        if !truth {
            table("data residual RMS(PSF * restored - observed) / sigma (no truth: --degrade none)", { $0.kl }, "%.2f")
        }
        table("time (s)", { $0.seconds }, "%.2f")
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? " " + self : String(repeating: " ", count: n - count) + self }
}
