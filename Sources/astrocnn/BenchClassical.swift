import Imaging
import ArgumentParser
import Evaluation
import Foundation
import ModelFormat
import Runtime
import Trainer

/// Times the FFT and the classical methods (Benchmarks/classical_peers.py runs the same sizes in
/// numpy, SciPy and scikit-image and prints the ratios).
struct BenchClassical: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-classical",
        abstract: "Time the 2-D FFT, Wiener (with its lambda sweep) and Richardson-Lucy per iteration.")

    @Option(help: "Image sides (comma-separated).") var sizes: String = "512,1024"
    @Option(help: "Threads.") var threads: Int = ParallelFor.availableCores
    @Option(help: "Repeats (the median is reported).") var repeats: Int = 3
    @Flag(help: "CSV on standard output.") var csv = false

    func median(_ f: () -> Void) -> Double {
        var t: [Double] = []
        for _ in 0..<max(1, repeats) { let s = monotonicSeconds(); f(); t.append(monotonicSeconds() - s) }
        return t.sorted()[t.count / 2]
    }

    func run() throws {
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
