import ArgumentParser
import Evaluation
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime

/// The options of `evaluate --task denoise --inject N`.
struct InjectionOptions: ParsableArguments {
    @Option(help: "denoise: inject this many artificial point sources (PSF measured from the image's stars) into each noisy frame (and its reference) and score their recovery: completeness, purity, depth, flux error (0: off).") var inject: Int = 0
    @Option(help: "denoise, --inject: seed of the positions and fluxes (default: --seed).") var injectSeed: UInt64?
    @Option(help: "denoise, --inject: flux range in multiples of the 5-sigma point-source limit (log-uniform).") var injectRange: String = "0.3,30"
    @Option(help: "denoise, --inject: detection thresholds to sweep (units of each output's background RMS).") var injectThresholds: String = "0.8,1,1.2,1.5,2,2.5,3,3.5,4,5,6,8,10"
    @Option(help: "denoise, --inject: match radius in pixels (default: the PSF's FWHM, at least 1.5).") var injectRadius: Double?
    @Option(help: "denoise, --inject: purity the threshold must reach (per method).") var injectPurity: Double = 0.9
    @Option(help: "denoise, --inject: magnitude bins across the flux range.") var injectBins: Int = 10
    @Option(help: "denoise, --inject: CSV, one row per image, method, threshold and magnitude bin.") var injectCsv: String?
    @Option(help: "denoise, --inject: PNG prefix: PREFIX-completeness.png and PREFIX-flux.png.") var injectPlot: String?
    @Option(help: "denoise, --frames: the equivalent-stack scale: means of 2 ... S real frames (frame k and the next ones) scored as methods, every method against the mean of the other frames - S + 1 (0: off; each frame against the mean of all others).") var stacks: Int = 0
}

extension Evaluate {
    var injectionSettings: InjectionPlan.Settings {
        get throws {
            var s = InjectionPlan.Settings()
            s.count = injection.inject
            s.seed = injection.injectSeed ?? seed
            let r = try numbers(injection.injectRange, "--inject-range")
            guard r.count == 2, r[0] > 0, r[1] > r[0] else { throw ValidationError("--inject-range takes MIN,MAX multiples of the 5-sigma limit, 0 < MIN < MAX") }
            (s.minFactor, s.maxFactor) = (r[0], r[1])
            s.apertureRadius = denoise.aperture
            return s
        }
    }

    /// The plan for one frame: the PSF measured from `psfImage`'s stars, the sky noise of
    /// `noisy` (its background RMS), real sources detected at 3 sigma in every image of `real`.
    func injectionPlan(psfImage: Image2D, noisy: Image2D, real: [Image2D], name: String) throws -> InjectionPlan {
        var o = DenoiseOptions.detectionOptions(denoise)
        o.threshold = 3
        var sources: [DetectedSource] = []
        var fallback = Double.nan
        for img in real {
            let d = try SourceDetector.detect(img, mask: img.pixels.map { !$0.isFinite }, options: o, threads: max(1, threads ?? ParallelFor.availableCores))
            sources += d.sources
            if !fallback.isFinite { fallback = DenoiseEvaluator.measuredFWHM(img, background: d.background, sources: d.sources) }
        }
        let psf = try InjectionPlan.psf(of: psfImage, fallbackFWHM: fallback)
        let bkg = try SourceDetector.background(noisy, mask: noisy.pixels.map { !$0.isFinite }, options: o)
        var rms = bkg.rms.map(Double.init).filter { $0.isFinite && $0 > 0 }
        let sigma = SkyStatistics.median(&rms)
        let valid = zip(noisy.pixels, psfImage.pixels).map { $0.isFinite && $1.isFinite }
        let plan = try InjectionPlan.make(width: noisy.width, height: noisy.height, valid: valid, psf: psf.kernel, fwhm: psf.fwhm,
                                          psfNote: psf.note, sigma: sigma, real: sources, settings: try injectionSettings)
        FileHandle.standardError.write(Data(String(format: "%@: injecting %d sources (asked %d): PSF %@; sky noise %.4g, effective area %.1f px, 5-sigma limit flux %.4g\n",
                                                   name, plan.sources.count, injection.inject, plan.psfNote, plan.sigma, plan.effectiveArea, plan.limitFlux).utf8))
        return plan
    }

    func scoreInjection(_ results: [DenoiseResult], plan: InjectionPlan, image: String) throws -> [InjectionScore] {
        let thresholds = try numbers(injection.injectThresholds, "--inject-thresholds").sorted()
        guard injection.injectBins >= 2 else { throw ValidationError("--inject-bins must be at least 2") }
        let radius = injection.injectRadius ?? max(1.5, plan.fwhm)
        let settings = try injectionSettings
        var out: [InjectionScore] = []
        for r in results {
            out.append(try InjectionRecovery.score(image: r.restored, imageName: image, method: r.method, plan: plan, settings: settings,
                                                   detection: DenoiseOptions.detectionOptions(denoise), thresholds: thresholds, radius: radius,
                                                   bins: injection.injectBins, requiredPurity: injection.injectPurity,
                                                   threads: max(1, threads ?? ParallelFor.availableCores)))
        }
        return out
    }

    static func fmtDepth(_ v: Double, _ bound: Bool) -> String {
        v.isFinite ? (bound ? ">" : "") + String(format: "%+.2f", v) : "n/a"
    }

    /// One table per image and a mean over images: per method the chosen threshold, its purity,
    /// recovered and spurious counts, depths at 50% and 90% completeness (magnitudes relative to
    /// the 5-sigma limit: positive is fainter), their difference from the raw frame's, and the
    /// flux error of the sources above the limit.
    func printInjection(_ all: [InjectionScore], plans: [String: InjectionPlan]) {
        let header = "method".padding(toLength: 12, withPad: " ", startingAt: 0)
            + ["thresh", "purity", "found", "spur", "m50", "dm50", "m90", "dm90", "|dF|/F", "bias", "mean", "n"].map { $0.leftPad(8) }.joined()
        let images = all.map(\.image).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        for img in images {
            let rs = all.filter { $0.image == img }
            let raw = rs.first { $0.method == "none" }?.chosenRecovery
            print("\ninjected sources, \(img): \(plans[img]?.sources.count ?? 0) injected; magnitudes relative to the raw frame's 5-sigma limit (flux \(String(format: "%.4g", plans[img]?.limitFlux ?? .nan))); threshold chosen per method at purity >= \(injection.injectPurity)")
            print(header)
            for s in rs {
                let c = s.chosenRecovery
                let cols: [String] = [
                    c.map { String(format: "%.1f", $0.threshold) } ?? "none",
                    c.map { String(format: "%.3f", $0.purity) } ?? "-",
                    c.map { "\($0.recoveredTotal)" } ?? "-", c.map { "\($0.spurious)" } ?? "-",
                    c.map { Evaluate.fmtDepth($0.depth50, $0.depth50Bound) } ?? "n/a",
                    c.flatMap { c in raw.map { Evaluate.fmtDepth(c.depth50 - $0.depth50, false) } } ?? "n/a",
                    c.map { Evaluate.fmtDepth($0.depth90, $0.depth90Bound) } ?? "n/a",
                    c.flatMap { c in raw.map { Evaluate.fmtDepth(c.depth90 - $0.depth90, false) } } ?? "n/a",
                    String(format: "%.2f%%", 100 * s.fluxMedianAbsError), String(format: "%+.2f%%", 100 * s.fluxMedianBias),
                    String(format: "%+.2f%%", 100 * s.fluxMeanBias), "\(s.fluxCount)"]
                print((s.method == "none" ? "raw" : s.method).padding(toLength: 12, withPad: " ", startingAt: 0) + cols.map { $0.leftPad(8) }.joined())
            }
        }
        guard images.count > 1 else { return }
        print("\ninjected sources, mean over \(images.count) images (depths relative to each raw frame's 5-sigma limit)")
        print("method".padding(toLength: 12, withPad: " ", startingAt: 0) + ["m50", "dm50", "m90", "dm90", "|dF|/F", "bias"].map { $0.leftPad(8) }.joined())
        let methods = all.map(\.method).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        func mean(_ v: [Double]) -> Double { let f = v.filter { $0.isFinite }; return f.count == v.count && !f.isEmpty ? f.reduce(0, +) / Double(f.count) : .nan }
        for m in methods {
            let rs = all.filter { $0.method == m }
            let raws = rs.map { s in all.first { $0.image == s.image && $0.method == "none" }?.chosenRecovery }
            let d50 = rs.map { $0.chosenRecovery?.depth50 ?? .nan }, d90 = rs.map { $0.chosenRecovery?.depth90 ?? .nan }
            let dd50 = zip(d50, raws).map { $0 - ($1?.depth50 ?? .nan) }, dd90 = zip(d90, raws).map { $0 - ($1?.depth90 ?? .nan) }
            let cols = [mean(d50), mean(dd50), mean(d90), mean(dd90)].map { $0.isFinite ? String(format: "%+.2f", $0) : "n/a" }
                + [String(format: "%.2f%%", 100 * mean(rs.map(\.fluxMedianAbsError))), String(format: "%+.2f%%", 100 * mean(rs.map(\.fluxMedianBias)))]
            print((m == "none" ? "raw" : m).padding(toLength: 12, withPad: " ", startingAt: 0) + cols.map { $0.leftPad(8) }.joined())
        }
    }

    func writeInjection(_ all: [InjectionScore]) throws {
        if let path = injection.injectCsv {
            var text = "image,method,threshold,chosen,purity,recovered,spurious,depth50,depth90,bin_mag,injected,recovered_bin,completeness,flux_median_abs_error,flux_median_bias,flux_median_abs_error_all,flux_median_bias_all,flux_count\n"
            for s in all {
                for (ti, t) in s.thresholds.enumerated() {
                    for b in 0..<t.completeness.count {
                        let mag = 0.5 * (s.binEdges[b] + s.binEdges[b + 1])
                        let isChosen = ti == s.chosen
                        text += "\(s.image),\(s.method),\(t.threshold),\(isChosen ? 1 : 0),\(t.purity),\(t.recoveredTotal),\(t.spurious),\(t.depth50),\(t.depth90),\(mag),\(t.injected[b]),\(t.recovered[b]),\(t.completeness[b]),"
                        text += isChosen ? "\(s.binMedianAbsError[b]),\(s.binMedianBias[b]),\(s.fluxMedianAbsError),\(s.fluxMedianBias),\(s.fluxCount)\n" : ",,,,\n"
                    }
                }
            }
            try AtomicFile.write(Array(text.utf8), to: path, overwrite: true)
            print("wrote \(path)")
        }
        if let prefix = injection.injectPlot, let first = all.first {
            let methods = all.map(\.method).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            let bins = first.binEdges.count - 1
            let centres = (0..<bins).map { 0.5 * (first.binEdges[$0] + first.binEdges[$0 + 1]) }
            func series(_ value: (InjectionScore, Int) -> Double) -> [LinePlot.Series] {
                methods.map { m in
                    let rs = all.filter { $0.method == m }
                    let pts: [(Double, Double)] = (0..<bins).compactMap { b in
                        let v = rs.map { value($0, b) }.filter { $0.isFinite }
                        return v.isEmpty ? nil : (centres[b], v.reduce(0, +) / Double(v.count))
                    }
                    return LinePlot.Series(name: m == "none" ? "raw" : m, points: pts)
                }
            }
            let n = Set(all.map(\.image)).count
            let what = n > 1 ? " (mean over \(n) images)" : ""
            try LinePlot(title: "completeness of injected sources (purity >= \(injection.injectPurity))\(what)",
                         xLabel: "magnitude relative to the raw frame's 5-sigma limit (fainter to the right)", yLabel: "completeness",
                         series: series { s, b in s.chosenRecovery?.completeness[b] ?? .nan }).render().write(to: prefix + "-completeness.png")
            try LinePlot(title: "flux error of recovered injected sources\(what)",
                         xLabel: "magnitude relative to the raw frame's 5-sigma limit", yLabel: "median |F - F_true| / F_true",
                         series: series { s, b in s.binMedianAbsError[b] }).render().write(to: prefix + "-flux.png")
            print("wrote \(prefix)-completeness.png \(prefix)-flux.png")
        }
    }
}

extension DenoiseOptions {
    static func detectionOptions(_ d: DenoiseOptions) -> DetectionOptions {
        var o = DetectionOptions()
        o.threshold = d.thresh
        o.minArea = d.minarea
        o.apertureRadius = d.aperture
        o.backSize = d.backSize
        return o
    }
}
