import Imaging
import ModelFormat

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

    public mutating func update(_ p: inout [Float], _ g: [Float]) {
        precondition(p.count == g.count && first.count == g.count)
        step += 1
        let lr = Float(learningRate)
        switch kind {
        case .sgd(let mom, let nesterov):
            let m = Float(mom)
            for i in 0..<p.count {
                let v = m * first[i] - lr * g[i]
                first[i] = v
                p[i] += nesterov ? m * v - lr * g[i] : v
            }
        case .adam(let b1, let b2, let eps):
            let (f1, f2) = (Float(b1), Float(b2))
            let c1 = Float(1 - pow(b1, step)), c2 = Float(1 - pow(b2, step))
            let e = Float(eps)
            for i in 0..<p.count {
                first[i] = f1 * first[i] + (1 - f1) * g[i]
                second[i] = f2 * second[i] + (1 - f2) * g[i] * g[i]
                p[i] -= lr * (first[i] / c1) / ((second[i] / c2).squareRoot() + e)
            }
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
