import Imaging
import ModelFormat
import Runtime

/// First-order optimizers on the flat parameter vector. The state is plain arrays so that
/// checkpoints can store and restore it exactly.
public struct Optimizer: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// SGD with momentum; Nesterov as Keras: v = m v - lr g; p += m v - lr g.
        case sgd(momentum: Double, nesterov: Bool)
        case adam(beta1: Double, beta2: Double, epsilon: Double)
    }

    public var kind: Kind
    public var learningRate: Double
    /// Momentum (SGD) or first moment (Adam).
    public var first: [Float]
    /// Second moment (Adam only; empty for SGD).
    public var second: [Float]
    public var step: Int

    public init(_ kind: Kind, learningRate: Double, parameterCount: Int) {
        self.kind = kind
        self.learningRate = learningRate
        first = [Float](repeating: 0, count: parameterCount)
        if case .adam = kind { second = first } else { second = [] }
        step = 0
    }

    public var name: String {
        switch kind {
        case .sgd(let m, let n): return n ? "sgd-nesterov(momentum=\(m))" : "sgd(momentum=\(m))"
        case .adam(let b1, let b2, let e): return "adam(beta1=\(b1), beta2=\(b2), eps=\(e))"
        }
    }

    /// One step on `p` with gradient `g`. Elementwise, so the same bits for any `threads`: each
    /// element's operations are those of the scalar formula, in the same order.
    public mutating func update(_ p: inout [Float], _ g: [Float], threads: Int = 1) {
        precondition(p.count == g.count && first.count == g.count)
        step += 1
        let lr = Float(learningRate)
        let count = p.count
        // Ranges of whole 64-element blocks per task (the tail goes to the last task).
        let tasks = count < 1 << 16 ? 1 : max(1, min(4 * threads, count >> 15))
        switch kind {
        case .sgd(let mom, let nesterov):
            let m = Float(mom)
            p.withUnsafeMutableBufferPointer { pb in g.withUnsafeBufferPointer { gb in first.withUnsafeMutableBufferPointer { fb in
                nonisolated(unsafe) let (pp, gp, fp) = (pb.baseAddress!, gb.baseAddress!, fb.baseAddress!)
                ParallelFor.run(tasks, threads: threads) { t in
                    let (lo, hi) = Optimizer.range(t, of: tasks, count: count)
                    Optimizer.sgd(pp, gp, fp, lo, hi, m, lr, nesterov)
                }
            } } }
        case .adam(let b1, let b2, let eps):
            let (f1, f2) = (Float(b1), Float(b2))
            let c1 = Float(1 - pow(b1, step)), c2 = Float(1 - pow(b2, step))
            let e = Float(eps)
            p.withUnsafeMutableBufferPointer { pb in g.withUnsafeBufferPointer { gb in
                first.withUnsafeMutableBufferPointer { fb in second.withUnsafeMutableBufferPointer { sb in
                    nonisolated(unsafe) let (pp, gp, fp, sp) = (pb.baseAddress!, gb.baseAddress!, fb.baseAddress!, sb.baseAddress!)
                    ParallelFor.run(tasks, threads: threads) { t in
                        let (lo, hi) = Optimizer.range(t, of: tasks, count: count)
                        Optimizer.adam(pp, gp, fp, sp, lo, hi, f1, f2, c1, c2, e, lr)
                    }
                } }
            } }
        }
    }

    static func range(_ t: Int, of tasks: Int, count: Int) -> (Int, Int) {
        let blocks = count / 64
        return (blocks * t / tasks * 64, t == tasks - 1 ? count : blocks * (t + 1) / tasks * 64)
    }

    /// v = m v - lr g; p += (Nesterov: m v - lr g; else v), in SIMD16 then a scalar tail.
    static func sgd(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ f: UnsafeMutablePointer<Float>, _ lo: Int, _ hi: Int,
                    _ m: Float, _ lr: Float, _ nesterov: Bool) {
        typealias V = SIMD16<Float>
        var i = lo
        let (mv, lv) = (V(repeating: m), V(repeating: lr))
        while i + 16 <= hi {
            let gi = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
            let v = mv * UnsafeRawPointer(f + i).loadUnaligned(as: V.self) - lv * gi
            UnsafeMutableRawPointer(f + i).storeBytes(of: v, as: V.self)
            let pi = UnsafeRawPointer(p + i).loadUnaligned(as: V.self) + (nesterov ? mv * v - lv * gi : v)
            UnsafeMutableRawPointer(p + i).storeBytes(of: pi, as: V.self)
            i += 16
        }
        while i < hi {
            let v = m * f[i] - lr * g[i]
            f[i] = v
            p[i] += nesterov ? m * v - lr * g[i] : v
            i += 1
        }
    }

    /// Adam's moments and step, in SIMD16 then a scalar tail (the same operations per element).
    static func adam(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ f: UnsafeMutablePointer<Float>,
                     _ s: UnsafeMutablePointer<Float>, _ lo: Int, _ hi: Int, _ f1: Float, _ f2: Float, _ c1: Float, _ c2: Float,
                     _ e: Float, _ lr: Float) {
        typealias V = SIMD16<Float>
        let (f1v, f2v, o1, o2) = (V(repeating: f1), V(repeating: f2), V(repeating: 1 - f1), V(repeating: 1 - f2))
        let (c1v, c2v, ev, lv) = (V(repeating: c1), V(repeating: c2), V(repeating: e), V(repeating: lr))
        var i = lo
        while i + 16 <= hi {
            let gi = UnsafeRawPointer(g + i).loadUnaligned(as: V.self)
            let a = f1v * UnsafeRawPointer(f + i).loadUnaligned(as: V.self) + o1 * gi
            let b = f2v * UnsafeRawPointer(s + i).loadUnaligned(as: V.self) + o2 * gi * gi
            UnsafeMutableRawPointer(f + i).storeBytes(of: a, as: V.self)
            UnsafeMutableRawPointer(s + i).storeBytes(of: b, as: V.self)
            let pi = UnsafeRawPointer(p + i).loadUnaligned(as: V.self) - lv * (a / c1v) / ((b / c2v).squareRoot() + ev)
            UnsafeMutableRawPointer(p + i).storeBytes(of: pi, as: V.self)
            i += 16
        }
        while i < hi {
            f[i] = f1 * f[i] + (1 - f1) * g[i]
            s[i] = f2 * s[i] + (1 - f2) * g[i] * g[i]
            p[i] -= lr * (f[i] / c1) / ((s[i] / c2).squareRoot() + e)
            i += 1
        }
    }
}

private func pow(_ b: Double, _ n: Int) -> Double {
    var r = 1.0
    for _ in 0..<n { r *= b }
    return r
}

/// Weight initialisations (biases start at zero).
public enum Initialization: String, Sendable, CaseIterable {
    /// Keras' default: U(-l, l), l = sqrt(6 / (fan_in + fan_out)).
    case glorot
    /// He et al. 2015: U(-l, l), l = sqrt(6 / fan_in).
    case he

    public func initializer(seed: UInt64) -> ModelBuilder.Initializer {
        var rng = SplitMix64(seed: seed)
        let kind = self
        return { _, shape, fanIn, fanOut in
            let l = kind == .glorot ? (6 / Double(fanIn + fanOut)).squareRoot() : (6 / Double(fanIn)).squareRoot()
            let s = Float(l)
            return (0..<shape.reduce(1, *)).map { _ in Float.random(in: -s..<s, using: &rng) }
        }
    }
}
