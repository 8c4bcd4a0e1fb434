import Runtime

/// A loss term on the low frequencies of the error, added to the per-pixel loss of each output
/// channel: weight * sum over pixels of |G * (y - t)| / (the batch's output values), G a
/// normalised Gaussian of `sigma` px (truncated at 4 sigma, zero outside the map). What a
/// denoiser takes from a faint source, or adds to it, is source-shaped: low frequencies, which
/// a per-pixel L1 lets the network trade against noise, biasing faint fluxes (docs/EVALUATION.md:
/// the recorrupted denoiser's −5% on injected sources); this term prices that trade directly.
/// Its derivative is weight * G * sign(G * (y - t)) / (output values): G is symmetric, so the
/// zero-padded 'same' filter is its own adjoint. `GraphTrainer.lowPassLoss` applies it.
public struct LowPassLoss: Sendable, Equatable {
    public let weight: Float
    public let sigma: Double
    let taps: [Float]

    public struct Failure: Error, CustomStringConvertible { public let description: String }

    public init(weight: Float, sigma: Double) throws {
        guard weight.isFinite, weight >= 0 else { throw Failure(description: "the low-pass loss weight must be finite and >= 0, got \(weight)") }
        guard sigma.isFinite, sigma > 0, sigma <= 20 else { throw Failure(description: "the low-pass loss sigma must be in (0, 20] px, got \(sigma)") }
        (self.weight, self.sigma) = (weight, sigma)
        taps = FluxRestore.gaussianTaps(sigma: sigma).map(Float.init)
    }

    /// For one output plane: `d` (height x width) holds y - t; returns weight * sum |G * d| and
    /// leaves G * sign(G * d) in `back` (`d` and `filtered` are scratch of the same size).
    func accumulate(difference d: UnsafeMutablePointer<Float>, filtered f: UnsafeMutablePointer<Float>,
                    back: UnsafeMutablePointer<Float>, height h: Int, width w: Int) -> Double {
        LowPassLoss.filter(d, into: f, scratch: back, height: h, width: w, taps: taps)
        var s = 0.0
        for i in 0..<(h * w) {
            let v = f[i]
            s += Double(abs(v))
            d[i] = v > 0 ? 1 : (v < 0 ? -1 : 0)
        }
        LowPassLoss.filter(d, into: back, scratch: f, height: h, width: w, taps: taps)
        return Double(weight) * s
    }

    /// `out` = G * `x` (rows, then columns; zero outside the map), in a fixed order.
    static func filter(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, scratch t: UnsafeMutablePointer<Float>,
                       height h: Int, width w: Int, taps: [Float]) {
        let r = taps.count / 2
        taps.withUnsafeBufferPointer { k in
            for y in 0..<h {
                let row = x + y * w, dst = t + y * w
                for c in 0..<w {
                    var acc: Float = 0
                    for j in max(0, r - c)..<min(k.count, w - c + r) { acc += k[j] * row[c + j - r] }
                    dst[c] = acc
                }
            }
            for y in 0..<h {
                let dst = out + y * w
                for c in 0..<w { dst[c] = 0 }
                for j in max(0, r - y)..<min(k.count, h - y + r) {
                    let src = t + (y + j - r) * w, kj = k[j]
                    for c in 0..<w { dst[c] += kj * src[c] }
                }
            }
        }
    }

    /// The term and its derivative for one plane in Float64 (the tests' reference):
    /// (weight * sum |G * d|, weight * G * sign(G * d)).
    public func reference(_ d: [Double], height h: Int, width w: Int) -> (value: Double, gradient: [Double]) {
        let k = FluxRestore.gaussianTaps(sigma: sigma)
        let r = k.count / 2
        func filter(_ x: [Double]) -> [Double] {
            var t = [Double](repeating: 0, count: h * w), o = t
            for y in 0..<h { for c in 0..<w { for j in k.indices where c + j - r >= 0 && c + j - r < w { t[y * w + c] += k[j] * x[y * w + c + j - r] } } }
            for y in 0..<h { for c in 0..<w { for j in k.indices where y + j - r >= 0 && y + j - r < h { o[y * w + c] += k[j] * t[(y + j - r) * w + c] } } }
            return o
        }
        let f = filter(d)
        let g = filter(f.map { $0 > 0 ? 1 : ($0 < 0 ? -1 : 0) })
        return (Double(weight) * f.reduce(0) { $0 + abs($1) }, g.map { Double(weight) * $0 })
    }
}
