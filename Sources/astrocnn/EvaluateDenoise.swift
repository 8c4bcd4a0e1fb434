import ArgumentParser
import Evaluation
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime

/// The options of `evaluate --task denoise`.
struct DenoiseOptions: ParsableArguments {
    @Option(help: "denoise: exposure-time ratio of the simulated short exposures (and the networks' exposure_ratio).") var ratio: Double = 2
    @Option(help: "denoise: gain in electrons per image unit for every image (default: each image's header).") var gain: Double?
    @Option(help: "denoise: for images without a gain, the electrons of sky per pixel assumed, so that their measured sky noise is its photon noise (gain = sqrt(N) / sigma_sky).") var assumedSky: Double = 1000
    @Option(help: "denoise: read noise in electrons (default: the header's, else 0).") var readNoise: Double?
    @Option(help: "denoise: dark current, electrons per pixel per hour.") var dark: Double = 0
    @Option(help: "denoise: sky level subtracted from the images (image units) or auto (a header SKYLEVEL the median shows was subtracted, else the level the sky noise implies).") var sky: String?
    @Flag(help: "denoise: clip negatives before the Poisson draw (as the paper did).") var clip = false
    @Option(help: "denoise, real data: a real short exposure, scored against --reference.") var input: String?
    @Option(name: .long, parsing: .upToNextOption, help: "denoise, real data: the deeper image(s) of the same field (several are registered and averaged).") var reference: [String] = []
    @Option(name: .long, parsing: .upToNextOption, help: "denoise, real data: frames of one field; each is scored against the mean of the others.") var frames: [String] = []
    @Flag(help: "denoise: PSF-matched pixel scores (PSNR, SSIM, KL): the sharper of the input and the reference is blurred by a Gaussian to the other's measured FWHM first (frames of one field at different seeing).") var psfMatch = false
    @Flag(help: "denoise, with --psf-match: blur by a kernel fitted between the two images (the profiles' shapes, as image subtraction matches them) instead of the Gaussian.") var psfMatchFit = false
    @Option(help: "denoise: also score each network with the low frequencies of what it removed added back (NAME+flux: output + Gaussian(sigma) * (input - output)); sigma in px, 0: off.") var fluxRestore: Double = 0
    @Option(help: "denoise: also score each network run on the input capped at sky + K sigma, the excess added back (NAME+cap); 0: off.") var cap: Double = 0
    @Option(help: "denoise: detection threshold in units of the background RMS.") var thresh: Double = 5
    @Option(help: "denoise: minimum source area in pixels.") var minarea: Int = 5
    @Option(help: "denoise: photometry aperture radius in pixels.") var aperture: Double = 5
    @Option(help: "denoise: background mesh size in pixels.") var backSize: Int = 64
    @Option(help: "denoise: cross-match radius in pixels (default: half the reference's FWHM, 1 to 5 px).") var matchRadius: Double?
    @Option(help: "denoise: pixels excluded at each border from all metrics.") var crop: Int = 0
    @Option(help: "denoise: Gaussian smoothing sigmas to sweep (px).") var gaussianSigmas: String = "0.3,0.5,0.7,1,1.4,2,2.8,4"
    @Option(help: "denoise: median filter sizes to sweep.") var medianSizes: String = "3,5,7,9"
    @Option(help: "denoise: starlet k-sigma thresholds to sweep.") var starletKs: String = "1,1.5,2,2.5,3,3.5,4,5"
    @Option(help: "denoise: starlet scale counts to sweep.") var starletScales: String = "4,5"
}

extension Evaluate {
    func numbers(_ s: String, _ what: String) throws -> [Double] {
        let v = s.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.count == s.split(separator: ",").count else { throw ValidationError("\(what): give comma-separated numbers") }
        return v
    }

    func denoiseMethods() throws -> [DenoiseMethod] {
        var modelPaths: [String: String] = [:]
        for m in models {
            let parts = m.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--models takes NAME=PATH, got \(m)") }
            modelPaths[parts[0]] = parts[1]
        }
        let names = (methods ?? (["none", "gaussian", "median", "starlet"] + modelPaths.keys.sorted()).joined(separator: ","))
            .split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
        var list: [DenoiseMethod] = []
        for name in names {
            switch name {
            case "none": list.append(.none)
            case "gaussian": list.append(.gaussian(sigmas: try numbers(denoise.gaussianSigmas, "--gaussian-sigmas")))
            case "median": list.append(.median(sizes: try numbers(denoise.medianSizes, "--median-sizes").map { Int($0) }))
            case "starlet": list.append(.starlet(ks: try numbers(denoise.starletKs, "--starlet-ks"), scales: try numbers(denoise.starletScales, "--starlet-scales").map { Int($0) }))
            default:
                guard let p = modelPaths[name] else { throw ValidationError("unknown denoising method \(name): give --models \(name)=PATH.acnn") }
                guard FileManager.default.fileExists(atPath: p) else { throw ValidationError("model for \(name) not found: \(p)") }
                list.append(.network(name: name, path: p))
            }
        }
        return list
    }

    static func load(_ path: String) throws -> (Image2D, FITSImage) {
        let fits = try FITSIO.readImage(path: path)
        guard fits.invalidCount < fits.pixels.count else { throw ValidationError("\(path): every pixel is NaN or BLANK") }
        let img = Image2D(height: fits.height, width: fits.width,
                          pixels: (0..<fits.pixels.count).map { fits.invalid[$0] ? .nan : Double(fits.pixels[$0]) })
        return (img, fits)
    }

    func evaluateDenoising() throws {
        let list = try denoiseMethods()
        let threads = max(1, self.threads ?? ParallelFor.availableCores)
        var ev = DenoiseEvaluator()
        ev.detection.threshold = denoise.thresh
        ev.detection.minArea = denoise.minarea
        ev.detection.apertureRadius = denoise.aperture
        ev.detection.backSize = denoise.backSize
        ev.matchRadius = denoise.matchRadius
        ev.crop = denoise.crop
        ev.exposureRatio = denoise.ratio
        ev.psfMatch = denoise.psfMatch
        guard !denoise.psfMatchFit || denoise.psfMatch else { throw ValidationError("--psf-match-fit needs --psf-match") }
        ev.psfMatchFitted = denoise.psfMatchFit
        guard denoise.fluxRestore >= 0, denoise.fluxRestore.isFinite else { throw ValidationError("--flux-restore must be >= 0") }
        if denoise.fluxRestore > 0 { _ = try FluxRestore(width: 1, height: 1, sigma: denoise.fluxRestore) }   // its range, before any work
        ev.fluxRestoreSigma = denoise.fluxRestore
        guard denoise.cap >= 0, denoise.cap.isFinite else { throw ValidationError("--cap must be >= 0") }
        ev.capSigma = denoise.cap
        ev.ensemble = ensemble
        ev.threads = threads
        // Real references (other frames) hold noise of their own: each method is also scored
        // with it taken out of the squared error.
        ev.referenceNoise = denoise.input != nil || !denoise.frames.isEmpty
        guard denoise.ratio >= 1 else { throw ValidationError("--ratio must be >= 1") }
        // The pairs to score: (name, truth, noisy, how the noisy image was made).
        var pairs: [(String, Image2D, Image2D, String, Double?)] = []
        var plans: [String: InjectionPlan] = [:]   // --inject: per image
        var stacks: [String: [(String, Image2D)]] = [:]   // --stacks: per image
        guard injection.inject >= 0 else { throw ValidationError("--inject must be >= 0") }
        guard injection.stacks == 0 || !denoise.frames.isEmpty else { throw ValidationError("--stacks needs --frames") }
        let modes = [!images.isEmpty, denoise.input != nil, !denoise.frames.isEmpty].filter { $0 }.count
        guard modes == 1 else { throw ValidationError("give exactly one of --images (simulated short exposures), --input with --reference (a real pair) or --frames (real frames, each against the mean of the others)") }
        if let input = denoise.input {
            guard !denoise.reference.isEmpty else { throw ValidationError("--input needs --reference LONG.fits") }
            let (frame, frameFITS) = try Evaluate.load(input)
            var refs: [Image2D] = []
            for r in denoise.reference { refs.append(try Evaluate.load(r).0) }
            let reference: Image2D
            if refs.count == 1 {
                reference = refs[0]
            } else {
                (reference, _) = try FramePairs.meanOfOthers([frame] + refs, onto: 0, threads: threads)
            }
            let a = try FramePairs.aligned(frame: frame, reference: reference, threads: threads)
            let name = (input as NSString).lastPathComponent
            pairs.append((name, a.reference, a.frame, String(format: "real frame vs %@ (shift %.2f, %.2f px, overlap %dx%d)",
                                                               denoise.reference.map { ($0 as NSString).lastPathComponent }.joined(separator: "+"),
                                                               a.registration.dy, a.registration.dx, a.registration.overlapWidth, a.registration.overlapHeight),
                          denoise.gain ?? ExposureKeywords(keyword: frameFITS.keyword).gain?.value))
        } else if !denoise.frames.isEmpty {
            guard denoise.frames.count >= 2 else { throw ValidationError("--frames needs at least two frames") }
            let files = try denoise.frames.map { try Evaluate.load($0) }
            let loaded = files.map(\.0)
            if injection.stacks > 0 {
                (pairs, stacks) = try stackPairs(loaded, names: denoise.frames.map { ($0 as NSString).lastPathComponent },
                                                 gains: files.map { denoise.gain ?? ExposureKeywords(keyword: $0.1.keyword).gain?.value }, threads: threads)
            }
            for k in loaded.indices where injection.stacks == 0 {
                let (mean, _) = try FramePairs.meanOfOthers(loaded, onto: k, threads: threads)
                let a = try FramePairs.aligned(frame: loaded[k], reference: mean, threads: threads)
                pairs.append(((denoise.frames[k] as NSString).lastPathComponent, a.reference, a.frame,
                              "real frame vs the mean of the other \(loaded.count - 1)",
                              denoise.gain ?? ExposureKeywords(keyword: files[k].1.keyword).gain?.value))
            }
        } else {
            let paths = try SourceImage.expand(images)
            guard !paths.isEmpty else { throw ValidationError("no FITS images in \(images)") }
            for (k, path) in paths.enumerated() {
                let (truth, fits) = try Evaluate.load(path)
                let header = ExposureKeywords(keyword: fits.keyword)
                let stats = SkyStatistics.estimate(truth)
                guard stats.sigma > 0, stats.sigma.isFinite else { throw ValidationError("\(path): the sky noise cannot be measured (constant image?)") }
                let headerGain = denoise.gain ?? header.gain?.value
                // No gain: the image is taken as sky-limited, its sky noise the photon noise of
                // `assumedSky` electrons.
                let fallback = ExposureNoise.skyLimited(sigma: stats.sigma, median: stats.median, electrons: denoise.assumedSky)
                let g = headerGain ?? fallback.gain
                let ron = denoise.readNoise ?? (headerGain == nil ? 0 : header.readNoise?.value ?? 0)
                var skyLevel: Double
                if headerGain == nil && denoise.sky == nil {
                    skyLevel = fallback.sky
                } else if let s = denoise.sky, s != "auto" {
                    guard let v = Double(s) else { throw ValidationError("--sky must be a number or auto") }
                    skyLevel = v
                } else {
                    (skyLevel, _) = ExposureNoise.subtractedSky(header: header, stats: stats, gain: g, readNoise: ron)
                }
                let model = ExposureNoise(ratio: denoise.ratio, gain: g, readNoise: ron, darkRate: denoise.dark / 3600,
                                          exposureTime: header.exposureTime?.value ?? 0, sky: skyLevel, clipNegative: denoise.clip)
                if let p = model.problem { throw ValidationError("\(path): \(p)") }
                var noisy = model.apply(truth, seed: seed &+ UInt64(k), threads: threads)
                var truthIn = truth
                if injection.inject > 0 {
                    // The sources go into the long exposure, so the short one has their photon noise too.
                    let plan = try injectionPlan(psfImage: truth, noisy: noisy, real: [truth, noisy], name: (path as NSString).lastPathComponent)
                    plans[(path as NSString).lastPathComponent] = plan
                    truthIn = plan.inject(into: truth)
                    noisy = model.apply(truthIn, seed: seed &+ UInt64(k), threads: threads)
                }
                pairs.append(((path as NSString).lastPathComponent, truthIn, noisy, model.description, model.outputGain))
            }
        }
        if injection.inject > 0 && images.isEmpty {
            // Real frames: the same sources (positions, fluxes, PSF measured from the frame's stars)
            // go into the frame and its reference, so reference-based metrics stay consistent.
            for i in pairs.indices {
                let (name, ref, frame, _, _) = pairs[i]
                let plan = try injectionPlan(psfImage: frame, noisy: frame, real: [frame, ref], name: name)
                plans[name] = plan
                pairs[i].1 = plan.inject(into: ref)
                pairs[i].2 = plan.inject(into: frame)
                stacks[name] = stacks[name]?.map { ($0.0, plan.inject(into: $0.1)) }
            }
        }
        var injected: [InjectionScore] = []
        var all: [DenoiseResult] = []
        var ceilings: [String: Double] = [:]   // per image: the noiseless field's PSNR against its reference
        var panelImages: [(title: String, pixels: [Float], marks: [ComparisonPanel.Mark])] = []
        var panelSize = (0, 0), panelRadius = 6.0
        for (k, (name, truth, noisy, how, gain)) in pairs.enumerated() {
            ev.noisyGain = gain
            guard truth.height >= 32 && truth.width >= 32 else {
                throw ValidationError("\(name): \(truth.width)x\(truth.height) is too small: the background mesh and the metrics need at least 32x32 pixels")
            }
            FileHandle.standardError.write(Data("\(name): \(truth.width)x\(truth.height), \(how)\n".utf8))
            let (ref, scored) = try ev.evaluate(name: name, truth: truth, noisy: noisy, methods: list) {
                FileHandle.standardError.write(Data(($0 + "\n").utf8))
            }
            var results = scored
            for (sname, img) in stacks[name] ?? [] {   // the equivalent-stack scale
                let r = try ev.score(image: name, method: sname, estimate: img, reference: ref, inputSNR: results[0].detection.meanSNR,
                                     seconds: 0, parameters: "mean of \(sname.dropFirst(5)) registered real frames")
                FileHandle.standardError.write(Data((ev.line(r, ref) + "\n").utf8))
                results.append(r)
            }
            FileHandle.standardError.write(Data(String(format: "  reference: %d sources, FWHM %.2f px, match radius %.2f px\n",
                                                       ref.catalogue.count, ref.fwhm, ref.radius).utf8))
            if let v = ref.noiseVariance, let c = ref.psnrCeiling {
                ceilings[name] = c
                FileHandle.standardError.write(Data(String(format: "  reference noise: sky sigma %.4g as scored, so the noiseless field would score PSNR %.2f dB against it\n",
                                                           v.squareRoot(), c).utf8))
            }
            if denoise.psfMatch {
                let what = ref.estimateKernel.map { String(format: "every output convolved by a fitted %dx%d kernel", 2 * $0.halfWidth + 1, 2 * $0.halfWidth + 1) }
                    ?? (ref.pixelTruth.pixels != ref.truth.pixels && denoise.psfMatchFit ? "the reference convolved by a fitted kernel to the input's profile" : nil)
                    ?? (ref.estimateBlur > 0 ? String(format: "every output blurred by a Gaussian of sigma %.2f px", ref.estimateBlur)
                    : ref.inputFWHM > ref.referenceFWHM ? "the reference blurred to the input's FWHM" : "no blur (same FWHM, or not measured)")
                FileHandle.standardError.write(Data(String(format: "  PSF-matched pixel scores: input FWHM %.2f px, reference %.2f px (Moffat fits): %@\n",
                                                           ref.inputFWHM, ref.referenceFWHM, what).utf8))
            }
            all += results
            if let plan = plans[name] { injected += try scoreInjection(results, plan: plan, image: name) }
            if k == 0, panel != nil {
                let z = min(zoom, truth.height, truth.width)
                let (zy, zx) = brightestWindow(truth.map { $0.isFinite ? $0 : 0 }, side: z)
                panelSize = (z, z)
                panelRadius = max(6, 1.6 * (ref.fwhm.isFinite ? ref.fwhm : 3))
                func crop(_ img: Image2D) -> [Float] { img.crop(y: zy, x: zx, height: z, width: z).pixels.map { Float($0) } }
                func marks(_ cat: [CatalogEntry], matched: Set<Int>, color: RGB) -> [ComparisonPanel.Mark] {
                    cat.enumerated().compactMap { (i, c) in
                        guard c.x >= Double(zx), c.y >= Double(zy), c.x < Double(zx + z), c.y < Double(zy + z) else { return nil }
                        return ComparisonPanel.Mark(x: c.x - Double(zx), y: c.y - Double(zy), color: matched.contains(i) ? ComparisonPanel.matched : color)
                    }
                }
                panelImages.append(("reference", crop(truth), marks(ref.catalogue, matched: [], color: ComparisonPanel.matched)))
                for r in results {
                    let pairsM = CrossMatch.match(reference: ref.catalogue, candidates: r.catalogue, radius: ref.radius)
                    let hitT = Set(pairsM.map(\.reference)), hitC = Set(pairsM.map(\.candidate))
                    var m = marks(r.catalogue, matched: hitC, color: ComparisonPanel.spurious)
                    m += marks(ref.catalogue.enumerated().filter { !hitT.contains($0.offset) }.map(\.element), matched: [], color: ComparisonPanel.missed)
                    panelImages.append((r.method == "none" ? "noisy" : r.method, crop(r.restored), m))
                }
            }
        }
        let withFlux = list.filter { $0 != .none }.flatMap { m -> [String] in
            guard case .network = m else { return [m.name] }
            let base = denoise.cap > 0 ? [m.name, m.name + "+cap"] : [m.name]
            return denoise.fluxRestore > 0 ? base.flatMap { [$0, $0 + "+flux"] } : base
        }
        let tableMethods = ["none"] + withFlux + (2...max(2, injection.stacks)).map { "stack\($0)" }.filter { s in all.contains { $0.method == s } }
        printDenoiseTable(all, methods: tableMethods)
        if !ceilings.isEmpty { printReferenceNoiseTable(all, methods: tableMethods, ceilings: ceilings) }
        if !injected.isEmpty { printInjection(injected, plans: plans) }
        if let c = csv {
            var text = "image,method,psnr,ssim,kl,tpr,precision,f,rfe,rfe_err,snr_gain,seconds,parameters,psnr_reference_noise_removed,psnr_faint_reference_noise_removed\n"
            for r in all {
                let d = r.detection
                text += "\(r.image),\(r.method),\(r.psnr),\(r.ssim),\(r.kl),\(d.tpr),\(d.precision),\(d.fMeasure),\(d.relativeFluxError),\(d.relativeFluxErrorUncertainty),\(r.snrGain),\(r.seconds),\"\(r.parameters)\",\(r.psnrReferenceNoiseRemoved.map { "\($0)" } ?? ""),\(r.psnrFaintReferenceNoiseRemoved.map { "\($0)" } ?? "")\n"
            }
            try AtomicFile.write(Array(text.utf8), to: c, overwrite: true)
            print("wrote \(c)")
        }
        if !injected.isEmpty { try writeInjection(injected) }
        if let p = panel, !panelImages.isEmpty {
            try ComparisonPanel.render(panelImages, width: panelSize.0, height: panelSize.1, maxSide: 300, circleRadius: panelRadius,
                                       legend: "green: matched   red: missed (in the reference only)   blue: spurious").write(to: p)
            print("wrote \(p)")
        }
    }

    /// The Astro U-net paper's Table 2 layout, averaged over the images (one block per image
    /// when there are several, then the mean).
    /// Per image and on average: each method's PSNR with the reference's own noise taken out of
    /// its squared error, and the ceiling (the noiseless field's PSNR against the reference).
    func printReferenceNoiseTable(_ results: [DenoiseResult], methods: [String], ceilings: [String: Double]) {
        let imgs = results.map(\.image).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        print("\nPSNR[dB] with the reference's own noise removed from the squared error: an estimate of the PSNR against the noiseless")
        print("field (the reference's noise from its sky, a lower bound: conservative); 'as scored': against the reference, as above;")
        print("'ceiling': what the noiseless field itself scores as scored (its whole error is the reference's noise)")
        let width = max(12, imgs.map(\.count).max() ?? 0) + 2
        print("method".padding(toLength: 12, withPad: " ", startingAt: 0) + imgs.map { String($0.prefix(width - 2)).leftPad(width) }.joined()
              + "mean".leftPad(10) + "as scored".leftPad(11))
        func fmt(_ v: Double) -> String { v.isFinite ? String(format: "%.2f", v) : (v > 0 ? "inf" : "n/a") }
        // A mean over the images: n/a when one is missing, inf when one's error is below what the
        // reference's noise estimate resolves.
        func meanOf(_ v: [Double]) -> Double {
            if v.isEmpty || v.contains(where: \.isNaN) { return .nan }
            return v.contains(.infinity) ? .infinity : v.reduce(0, +) / Double(v.count)
        }
        let c = imgs.map { ceilings[$0] ?? .nan }
        print("ceiling".padding(toLength: 12, withPad: " ", startingAt: 0) + c.map { fmt($0).leftPad(width) }.joined() + fmt(meanOf(c)).leftPad(10))
        for m in methods {
            let rs = imgs.map { i in results.first { $0.image == i && $0.method == m } }
            let v = rs.map { $0?.psnrReferenceNoiseRemoved ?? .nan }
            let raw = rs.compactMap { $0?.psnr }
            print((m == "none" ? "noisy" : m).padding(toLength: 12, withPad: " ", startingAt: 0) + v.map { fmt($0).leftPad(width) }.joined()
                  + fmt(meanOf(v)).leftPad(10) + fmt(meanOf(raw)).leftPad(11))
        }
        print("\nthe same over the faint pixels only (the reference below its sky + 5 sigma: sky and faint sources; bright cores left out)")
        for m in methods {
            let v = imgs.map { i in results.first { $0.image == i && $0.method == m }?.psnrFaintReferenceNoiseRemoved ?? .nan }
            print((m == "none" ? "noisy" : m).padding(toLength: 12, withPad: " ", startingAt: 0) + v.map { fmt($0).leftPad(width) }.joined()
                  + fmt(meanOf(v)).leftPad(10))
        }
    }

    func printDenoiseTable(_ results: [DenoiseResult], methods: [String]) {
        let header = "method".padding(toLength: 12, withPad: " ", startingAt: 0)
            + ["RFE[%]", "RFE err", "TPR[%]", "prec", "F", "SNR gain", "PSNR[dB]", "SSIM", "KL", "time[s]"].map { $0.leftPad(9) }.joined()
        func row(_ name: String, _ rs: [DenoiseResult]) -> String {
            func mean(_ f: (DenoiseResult) -> Double) -> Double {
                let v = rs.map(f).filter { $0.isFinite }
                return v.isEmpty ? .nan : v.reduce(0, +) / Double(v.count)
            }
            // The uncertainty of a mean over images: the errors combined in quadrature / count.
            let errs = rs.map { $0.detection.relativeFluxErrorUncertainty }.filter { $0.isFinite }
            let err = errs.isEmpty ? Double.nan : (errs.map { $0 * $0 }.reduce(0, +)).squareRoot() / Double(errs.count)
            let cols = [String(format: "%.2f", 100 * mean { $0.detection.relativeFluxError }), String(format: "%.2f", 100 * err),
                        String(format: "%.2f", 100 * mean { $0.detection.tpr }), String(format: "%.3f", mean { $0.detection.precision }),
                        String(format: "%.3f", mean { $0.detection.fMeasure }), String(format: "%.2f", mean { $0.snrGain }),
                        String(format: "%.2f", mean { $0.psnr }), String(format: "%.4f", mean { $0.ssim }),
                        String(format: "%.4f", mean { $0.kl }), String(format: "%.2f", mean { $0.seconds })]
            return name.padding(toLength: 12, withPad: " ", startingAt: 0) + cols.map { $0.leftPad(9) }.joined()
        }
        let imgs = results.map(\.image).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        for i in imgs where imgs.count > 1 {
            print("\n\(i)")
            print(header)
            for m in methods { print(row(m == "none" ? "noisy" : m, results.filter { $0.image == i && $0.method == m })) }
        }
        print(imgs.count > 1 ? "\nmean over \(imgs.count) images" : "\n\(imgs.first ?? "")")
        print(header)
        for m in methods { print(row(m == "none" ? "noisy" : m, results.filter { $0.method == m })) }
    }
}
