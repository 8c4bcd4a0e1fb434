import Dispatch
import Foundation
import Kernels
import ModelFormat

/// Seconds from a monotonic clock.
@inline(__always)
public func monotonicSeconds() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) * 1e-9
}

/// Measurements behind `astrocnn bench` and Benchmarks/.
public enum Benchmark {
    /// Measured FP32 FMA throughput in GFLOP/s with `threads` threads running the ISA's
    /// register-only FMA loop at once (the best of a few runs).
    public static func peakGFLOPs(isa: KernelISA = .best, threads: Int) -> Double {
        let iterations = 4_000_000
        // Best of 10 short runs (about 20 ms each): on a shared host the other vCPU's neighbours
        // slow some runs by up to 2x, and the peak is the unslowed rate.
        var best = 0.0
        for _ in 0..<10 {
            let start = monotonicSeconds()
            // The loop is an opaque (@inline(never)) call in another module: it cannot be elided.
            DispatchQueue.concurrentPerform(iterations: threads) { _ in _ = PeakFLOPs.run(isa, iterations: iterations) }
            let t = monotonicSeconds() - start
            best = max(best, Double(threads) * PeakFLOPs.flops(isa, iterations) / t / 1e9)
        }
        return best
    }

    public struct LayerTiming: Sendable {
        public var name: String
        public var op: String
        public var flops: Double
        public var seconds: Double
        public var gflops: Double { seconds > 0 ? flops / seconds / 1e9 : 0 }
    }

    /// Times every step of the network on one tile-sized input (one thread), best of `repeats`.
    public static func layerProfile(network: Network, side: Int, isa: KernelISA = .best, algorithm: ConvAlgorithm = .auto,
                                    repeats: Int = 5) throws -> [LayerTiming] {
        let m = network.analysis.geometry.sizeMultiple
        let shrink = try network.analysis.shrink()
        let h = (side + shrink[0] + m - 1) / m * m, w = (side + shrink[1] + m - 1) / m * m
        let plan = try ExecutionPlan(network: network, packed: network.packedWeights(), height: h, width: w, isa: isa, algorithm: algorithm)
        var rng = SystemRandomNumberGenerator()
        let input = FeatureMap(channels: network.inputChannels, height: h, width: w,
                               data: (0..<(network.inputChannels * h * w)).map { _ in Float.random(in: 0..<1, using: &rng) })
        var best = [Double](repeating: .infinity, count: plan.steps.count)
        var t = [Double](repeating: 0, count: plan.steps.count)
        _ = plan.run(input, parameters: [:])  // warm up
        for _ in 0..<repeats {
            for i in 0..<t.count { t[i] = 0 }
            t.withUnsafeMutableBufferPointer { _ = plan.run(input, parameters: [:], timings: $0.baseAddress) }
            for i in 0..<t.count { best[i] = min(best[i], t[i]) }
        }
        return plan.stepInfo.enumerated().map { LayerTiming(name: $0.element.name, op: $0.element.op, flops: $0.element.flops, seconds: best[$0.offset]) }
    }

    /// Median seconds to run the network over a side x side image (tiling, threads and the
    /// network; not file I/O), with the same padding `restore` applies.
    public static func imageSeconds(network: Network, side: Int, threads: Int, algorithm: ConvAlgorithm = .auto,
                                    isa: KernelISA = .best, tileSize: Int? = nil, repeats: Int = 3) throws -> Double {
        try imageTimes(network: network, side: side, threads: threads, algorithm: algorithm, isa: isa, tileSize: tileSize,
                       repeats: repeats).seconds
    }

    /// `imageSeconds` with the process CPU time (user + system, all threads) and the minor page
    /// faults of the same runs: medians over the repeats (the first run makes the plan and
    /// touches its memory; later runs reuse it, as for a stream of same-size frames).
    public static func imageTimes(network: Network, side: Int, threads: Int, algorithm: ConvAlgorithm = .auto,
                                  isa: KernelISA = .best, tileSize: Int? = nil,
                                  repeats: Int = 3) throws -> (seconds: Double, cpuSeconds: Double, minorFaults: Int) {
        var rng = SystemRandomNumberGenerator()
        let image = FITSImage(width: side, height: side, pixels: (0..<(side * side)).map { _ in Float.random(in: 0..<1000, using: &rng) })
        var times: [Double] = [], cpu: [Double] = [], faults: [Int] = []
        for _ in 0..<max(1, repeats) {
            let before = PhaseProfile.now()
            _ = try Restoration.restore(image, network: network, options: .init(threads: threads, tileSize: tileSize, algorithm: algorithm, isa: isa))
            let after = PhaseProfile.now()
            times.append(after.wall - before.wall)
            cpu.append(after.cpu - before.cpu)
            faults.append(after.minorFaults - before.minorFaults)
        }
        func median<T: Comparable>(_ v: [T]) -> T { v.sorted()[v.count / 2] }
        return (median(times), median(cpu), median(faults))
    }
}
