import ArgumentParser
import Foundation
import Kernels
import ModelFormat
import Runtime

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark a model: per-layer GFLOP/s against the measured peak, and throughput against image size.")

    @Option(name: [.short, .long], help: "Model file (.acnn).")
    var model: String?

    @Option(help: "Built-in architecture with random weights instead of a file: flamary3, flamary1, unet (32-64-128-256-512).")
    var builtin: String?

    @Option(help: "Comma-separated image sides.")
    var sizes: String = "256,512,1024,2048,4096"

    @Option(help: "Comma-separated thread counts (default: 1 and all cores).")
    var threads: String?

    @Option(name: .customLong("conv"), help: "Convolution algorithm(s): auto, direct, winograd, winograd2, winograd6, reference, or a comma-separated list.")
    var conv: String = "auto"

    @Option(help: "Output tile side for the layer profile.")
    var layerTile: Int = 256

    @Option(help: "Output tile side for whole images (default: the runner's choice, as restore uses).")
    var tile: Int?

    @Option(help: "Repeats per measurement (the median is reported).")
    var repeats: Int = 3

    @Flag(help: "Skip the per-layer profile.")
    var skipLayers = false

    @Option(help: "Write one CSV row per (size, threads, conv) here.")
    var csv: String?

    @Option(help: "Write a PNG plot of time per pixel against image size here.")
    var plot: String?

    @Option(help: "Models with a Wiener step (deconv-psf): the PSF to bind (default moffat:fwhm=3,beta=2.5; the step's cost depends on the tile, not the PSF).")
    var psf: String = "moffat:fwhm=3,beta=2.5"

    func loadNetwork() throws -> Network {
        if let m = model {
            let n = try Network(path: m)
            if n.wienerContext != nil { try bindPSF(n, spec: psf, inputs: [], hdu: nil) }
            return n
        }
        return try Network(model: try builtinModel(builtin ?? "flamary3", seed: 1))
    }

    func run() throws {
        let sides = sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let cores = ParallelFor.availableCores
        let threadCounts = (threads ?? (cores > 1 ? "1,\(cores)" : "1")).split(separator: ",").compactMap { Int($0) }
        let algorithms = conv.split(separator: ",").map(String.init)
        if sides.isEmpty || sides.contains(where: { $0 < 1 }) { throw failure("--sizes needs positive integers") }
        if let t = tile, t < 1 { throw failure("--tile needs a positive integer") }
        if threadCounts.isEmpty || threadCounts.contains(where: { $0 < 1 }) { throw failure("--threads needs positive integers") }
        var algs: [ConvAlgorithm] = []
        for a in algorithms {
            guard let alg = ConvAlgorithm(rawValue: a) else { throw failure("--conv: unknown algorithm '\(a)'") }
            algs.append(alg)
        }
        let network: Network
        do { network = try loadNetwork() } catch { throw failure(String(describing: error)) }

        let isa = KernelISA.best
        let peak1 = Benchmark.peakGFLOPs(isa: isa, threads: 1)
        let peakN = Benchmark.peakGFLOPs(isa: isa, threads: cores)
        let flopsPerPixel = network.analysis.flopsPerOutputPixel
        print("machine    \(cpuName()), \(cores) cores, kernels \(isa.rawValue)")
        print(String(format: "peak FP32  %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d (measured FMA loop)", peak1, peakN, cores))
        print(String(format: "model      %@: %.1f kFLOP per output pixel", network.name, flopsPerPixel / 1e3))

        // Per-layer profile on one tile, one thread.
        if !skipLayers { for alg in algs where alg != .reference { do {
            let layers = try Benchmark.layerProfile(network: network, side: layerTile, isa: isa, algorithm: alg, repeats: max(repeats, 3))
            print("\nper layer, one \(layerTile)x\(layerTile)-output tile, 1 thread, \(isa.rawValue), --conv \(alg.rawValue) (GFLOP/s counts direct-convolution FLOPs):")
            print("  layer                      op                         ms      GFLOP/s  % of peak")
            var total = 0.0, totalFlops = 0.0
            for l in layers {
                total += l.seconds; totalFlops += l.flops
                let g = l.flops > 0 ? String(format: "%8.1f  %6.1f%%", l.gflops, 100 * l.gflops / peak1) : "       -        -"
                print(String(format: "  %@ %@ %8.3f  %@", pad(l.name, 26), pad(l.op, 24), l.seconds * 1e3, g))
            }
            print(String(format: "  %@ %@ %8.3f  %8.1f  %6.1f%%", pad("total", 26), pad("", 24), total * 1e3, totalFlops / total / 1e9, 100 * totalFlops / total / 1e9 / peak1))
        } catch {
            throw failure(String(describing: error))
        } } }

        // Throughput against image size.
        print("\nwhole images (padding, tiling, network; no file I/O), median of \(repeats) (CPU s: process CPU time, all threads):")
        print("  side    threads  conv         seconds    Mpixel/s   ns/pixel   GFLOP/s  % of peak   CPU s  minor faults")
        var rows: [String] = ["side,pixels,threads,conv,isa,seconds,mpixel_per_s,ns_per_pixel,gflops,percent_of_peak,cpu_seconds,minor_faults"]
        var series: [String: [(Double, Double)]] = [:]
        for alg in algs {
            for t in threadCounts {
                for side in sides {
                    let secs: Double, cpu: Double, faults: Int
                    do {
                        (secs, cpu, faults) = try Benchmark.imageTimes(network: network, side: side, threads: t, algorithm: alg, isa: isa,
                                                                       tileSize: tile, repeats: repeats)
                    } catch {
                        throw failure(String(describing: error))
                    }
                    let px = Double(side * side)
                    let gflops = flopsPerPixel * px / secs / 1e9
                    let peak = t == 1 ? peak1 : peakN * Double(min(t, cores)) / Double(cores)
                    print(String(format: "  %5d   %7d  %@ %9.4f  %9.2f  %9.1f  %8.1f  %6.1f%%  %6.3f  %12d", side, t, pad(alg.rawValue, 11), secs, px / secs / 1e6,
                                 secs / px * 1e9, gflops, 100 * gflops / peak, cpu, faults))
                    rows.append(String(format: "%d,%d,%d,%@,%@,%.6f,%.4f,%.3f,%.2f,%.2f,%.6f,%d", side, side * side, t, alg.rawValue, isa == .avx512 ? "avx512" : isa == .avx2 ? "avx2" : "portable",
                                       secs, px / secs / 1e6, secs / px * 1e9, gflops, 100 * gflops / peak, cpu, faults))
                    series["\(alg.rawValue), \(t) thread\(t == 1 ? "" : "s")", default: []].append((px, secs))
                }
            }
        }
        // O(n): least-squares fit of time against pixel count, per series.
        print("\nlinear fit of time against pixels (O(n) check):")
        for (name, pts) in series.sorted(by: { $0.key < $1.key }) where pts.count >= 2 {
            let fit = LinearFit(pts)
            let perPixel = pts.map { $0.1 / $0.0 }
            let mean = perPixel.reduce(0, +) / Double(perPixel.count)
            let spread = perPixel.map { abs($0 / mean - 1) }.max()! * 100
            print(String(format: "  %@: t = %.3g s + %.3f ns x pixels (R^2 %.5f); time per pixel within ±%.1f%% of its mean", pad(name, 22), fit.intercept, fit.slope * 1e9, fit.r2, spread))
        }
        if let path = csv {
            do { try AtomicFile.write(Array((rows.joined(separator: "\n") + "\n").utf8), to: path, overwrite: true) } catch {
                throw failure("cannot write \(path): \(error)")
            }
            print("wrote \(path)")
        }
        if let path = plot {
            do {
                try Plot.timePerPixel(series: series, title: "\(network.name): time per pixel vs image size (\(isa == .avx512 ? "AVX-512" : isa == .avx2 ? "AVX2" : "portable"))").write(to: path)
                print("wrote \(path)")
            } catch { throw failure("cannot write \(path): \(error)") }
        }
    }
}

/// Least-squares line y = intercept + slope x.
struct LinearFit {
    var slope = 0.0, intercept = 0.0, r2 = 0.0
    init(_ pts: [(Double, Double)]) {
        let n = Double(pts.count)
        let mx = pts.map(\.0).reduce(0, +) / n, my = pts.map(\.1).reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for (x, y) in pts { sxy += (x - mx) * (y - my); sxx += (x - mx) * (x - mx); syy += (y - my) * (y - my) }
        slope = sxx > 0 ? sxy / sxx : 0
        intercept = my - slope * mx
        r2 = syy > 0 ? (sxy * sxy) / (sxx * syy) : 1
    }
}

func cpuName() -> String {
    if let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = s.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let colon = line.firstIndex(of: ":") {
        return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return "unknown CPU"
}

import Reporting

enum Plot {
    /// Time per pixel (ns) against image side, one line per series.
    static func timePerPixel(series: [String: [(Double, Double)]], title: String) -> Canvas {
        let s = series.sorted { $0.key < $1.key }.map { name, pts in
            LinePlot.Series(name: name, points: pts.map { ($0.0.squareRoot(), $0.1 / $0.0 * 1e9) })
        }
        return LinePlot(title: title, xLabel: "image side (pixels), log scale", yLabel: "ns per pixel", series: s, logX: true).render()
    }
}
