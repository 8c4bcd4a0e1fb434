import ArgumentParser
import Evaluation
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime

extension Demo {
    /// The shipped denoiser's file name.
    static let shippedDenoiser = "astro-unet-16-vst.acnn"

    /// A long exposure (simulated in electrons, or a real image), its short exposure by the
    /// paper's noise model, every denoiser, the Table 2 metrics and PNGs.
    func denoiseDemo() throws {
        guard let modelPath = model ?? Demo.defaultModel(Demo.shippedDenoiser) else {
            throw ValidationError("no model: models/\(Demo.shippedDenoiser) not found on the model search path (see astrocnn models --paths; install with scripts/install.sh PREFIX, or give --model)")
        }
        guard ratio >= 1 else { throw ValidationError("--ratio must be >= 1") }
        let nThreads = max(1, threads ?? ParallelFor.availableCores)
        let t0 = monotonicSeconds()
        let long: Image2D, noise: ExposureNoise, what: String
        var exact: (clean: Image2D, sources: [SyntheticSource])?   // the simulated sky's truth
        if let path = input {
            let fits = try FITSIO.readImage(path: path)
            guard fits.invalidCount < fits.pixels.count else { throw ValidationError("\(path): every pixel is NaN or BLANK") }
            long = Image2D(height: fits.height, width: fits.width, pixels: (0..<fits.pixels.count).map { fits.invalid[$0] ? .nan : Double(fits.pixels[$0]) })
            let header = ExposureKeywords(keyword: fits.keyword)
            let stats = SkyStatistics.estimate(long)
            guard stats.sigma > 0 else { throw ValidationError("\(path): the sky noise cannot be measured") }
            if let g = header.gain?.value {
                let ron = header.readNoise?.value ?? 0
                let (sky, _) = ExposureNoise.subtractedSky(header: header, stats: stats, gain: g, readNoise: ron)
                noise = ExposureNoise(ratio: ratio, gain: g, readNoise: ron, sky: sky)
            } else {
                let f = ExposureNoise.skyLimited(sigma: stats.sigma, median: stats.median, electrons: 1000)
                noise = ExposureNoise(ratio: ratio, gain: f.gain, sky: f.sky)
            }
            what = (path as NSString).lastPathComponent
        } else {
            guard size >= 128 else { throw ValidationError("--size must be at least 128") }
            // The simulated sky in electrons: peaks up to about 20,000 e-, a sky of 400 e- (subtracted),
            // observed once with its own photon and read noise (a real long exposure is noisy too).
            let (sky, skySources) = SyntheticSky(size: size, stars: 300, galaxies: 12, background: 0, seed: seed).renderWithSources()
            exact = (sky.map { $0 * 20_000 }, skySources.map { var s = $0; s.flux *= 20_000; return s })
            let skyLevel = 400.0
            let exposure = ExposureNoise(ratio: 1, gain: 1, readNoise: 5, sky: skyLevel)
            long = exposure.apply(sky.map { $0 * 20_000 }, seed: seed &+ 7, threads: nThreads)
            noise = ExposureNoise(ratio: ratio, gain: 1, readNoise: 5, sky: skyLevel)
            what = "simulated sky \(size)x\(size) (seed \(seed)), electrons, sky 400 e- subtracted"
        }
        let short = noise.apply(long, seed: seed &+ 1000, threads: nThreads)
        var ev = DenoiseEvaluator()
        ev.threads = nThreads
        ev.exposureRatio = ratio
        ev.noisyGain = noise.outputGain   // for sky_vst models
        // Not given: the steps the model declares as its defaults (denoise.cap_sigma,
        // denoise.flux_restore_sigma), so the demo scores what `denoise` gives by default.
        let declared = (try? Network(path: modelPath))?.declaredDenoiseSteps
        let cap = self.cap ?? declared?.capSigma ?? 0
        let fluxRestore = self.fluxRestore ?? declared?.fluxRestoreSigma ?? 0
        guard cap >= 0, cap.isFinite else { throw ValidationError("--cap must be >= 0") }
        guard fluxRestore >= 0, fluxRestore.isFinite else { throw ValidationError("--flux-restore must be >= 0") }
        if fluxRestore > 0 { _ = try FluxRestore(width: 1, height: 1, sigma: fluxRestore) }   // its range, before any work
        ev.capSigma = cap
        ev.fluxRestoreSigma = fluxRestore
        let methods: [DenoiseMethod] = [.gaussian(sigmas: [0.3, 0.5, 0.7, 1, 1.4, 2, 2.8]), .median(sizes: [3, 5, 7]),
                                        .starlet(ks: [1.5, 2, 2.5, 3, 3.5, 4], scales: [4, 5]), .network(name: "astro-unet", path: modelPath)]
        print("\(what): short exposure \(noise.description)")
        let (ref, results) = try ev.evaluate(name: what, truth: long, noisy: short, methods: methods) { print($0) }
        print(String(format: "reference: %d sources, FWHM %.2f px, match radius %.2f px", ref.catalogue.count, ref.fwhm, ref.radius))
        print("\nmethod                TPR[%]      F   RFE[%]  SNR gain  PSNR[dB]    SSIM")
        for r in results {
            print(String(format: "%@ %6.1f  %.3f  %6.2f    %5.2f   %7.2f  %.4f", (r.method == "none" ? "noisy" : r.method).padding(toLength: 20, withPad: " ", startingAt: 0),
                         100 * r.detection.tpr, r.detection.fMeasure, 100 * r.detection.relativeFluxError, r.snrGain, r.psnr, r.ssim))
        }
        if let (clean, sources) = exact { printExactScores(results, clean: clean, sources: sources, radius: ref.radius, aperture: ev.detection.apertureRadius) }
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        func write(_ name: String, _ img: Image2D, _ history: String) throws {
            try FITSIO.writeImage(path: (output as NSString).appendingPathComponent(name), width: img.width, height: img.height,
                                  pixels: img.pixels.map { Float($0) }, headerCards: [],
                                  provenance: .init(keywords: [("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
                                                               ("ACNNSEED", .int(Int64(seed)), "seed")], history: ["astrocnn demo --task denoise: " + history]),
                                  overwrite: true)
        }
        try write("long.fits", long, "the long exposure (" + what + ")")
        try write("short.fits", short, "its short exposure, " + noise.description)
        if let u = results.last { try write("denoised.fits", u.restored, "the short exposure denoised by \((modelPath as NSString).lastPathComponent)") }
        let z = min(256, long.height, long.width)
        var best = (0, 0, -Double.infinity)
        for y in stride(from: 0, through: long.height - z, by: max(1, z / 4)) { for x in stride(from: 0, through: long.width - z, by: max(1, z / 4)) {
            var n = 0.0
            for c in ref.catalogue where c.x >= Double(x) && c.y >= Double(y) && c.x < Double(x + z) && c.y < Double(y + z) { n += 1 }
            if n > best.2 { best = (y, x, n) }
        } }
        let (zy, zx) = (best.0, best.1)
        func marks(_ r: DenoiseResult?) -> [ComparisonPanel.Mark] {
            let cat = r?.catalogue ?? ref.catalogue
            let pairs = r.map { CrossMatch.match(reference: ref.catalogue, candidates: $0.catalogue, radius: ref.radius) } ?? []
            let hit = Set(pairs.map(\.candidate)), found = Set(pairs.map(\.reference))
            var m = cat.enumerated().map { (i, c) in
                ComparisonPanel.Mark(x: c.x - Double(zx), y: c.y - Double(zy), color: r == nil || hit.contains(i) ? ComparisonPanel.matched : ComparisonPanel.spurious)
            }
            if r != nil { m += ref.catalogue.enumerated().filter { !found.contains($0.offset) }.map { ComparisonPanel.Mark(x: $0.element.x - Double(zx), y: $0.element.y - Double(zy), color: ComparisonPanel.missed) } }
            return m.filter { $0.x >= 0 && $0.y >= 0 && $0.x < Double(z) && $0.y < Double(z) }
        }
        func crop(_ img: Image2D) -> [Float] { img.crop(y: zy, x: zx, height: z, width: z).pixels.map { Float($0) } }
        var panels: [(title: String, pixels: [Float], marks: [ComparisonPanel.Mark])] = [("long exposure", crop(long), marks(nil))]
        for r in results { panels.append((r.method == "none" ? "short x\(fmtRatio(ratio))" : r.method, crop(r.restored), marks(r))) }
        let png = (output as NSString).appendingPathComponent("denoise.png")
        try ComparisonPanel.render(panels, width: z, height: z, maxSide: 256, circleRadius: max(6, 1.6 * (ref.fwhm.isFinite ? ref.fwhm : 3)),
                                   legend: "green: matched   red: missed   blue: spurious").write(to: png)
        print("wrote \(output)/: long.fits short.fits denoised.fits denoise.png  [total \(String(format: "%.2f", monotonicSeconds() - t0)) s]")
    }

    /// The simulated sky's scores against its exact source list (positions and fluxes known) and
    /// PSNR against the noiseless sky: faint real sources a denoiser recovers count as found here,
    /// where against the noisy long exposure they count as spurious.
    func printExactScores(_ results: [DenoiseResult], clean: Image2D, sources: [SyntheticSource], radius: Double, aperture: Double) {
        let range = (clean.pixels.max() ?? 1) - (clean.pixels.min() ?? 0)
        print(String(format: "\nagainst the exact truth (%d stars, %d galaxies; flux error of the isolated stars off galaxies, their exact flux in the %.0f px aperture) and the noiseless sky:",
                     sources.filter { $0.kind == .star }.count, sources.filter { $0.kind == .galaxy }.count, aperture))
        print("method                TPR[%]   prec      F   RFE[%]  bias[%]  PSNR[dB]    SSIM")
        for r in results {
            let d = ExactScoring.score(sources: sources, scale: 1, detected: r.catalogue, radius: radius, apertureRadius: aperture,
                                       width: clean.width, height: clean.height)
            print(String(format: "%@ %6.1f  %.3f  %.3f  %6.2f  %+6.2f   %7.2f  %.4f", (r.method == "none" ? "noisy" : r.method).padding(toLength: 20, withPad: " ", startingAt: 0),
                         100 * d.tpr, d.precision, d.fMeasure, 100 * d.relativeFluxError, -100 * d.relativeFluxBias,
                         Metrics.psnr(clean, r.restored, dataRange: range), Metrics.ssim(clean, r.restored, dataRange: range)))
        }
        print("(bias: mean (F - F_true) / F_true of the matched stars; negative: fluxes come out low)")
    }

    func fmtRatio(_ r: Double) -> String { r == r.rounded() ? String(Int(r)) : String(r) }
}
