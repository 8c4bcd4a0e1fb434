import Foundation
import ModelFormat
import Runtime

/// A family of point-spread functions and noise levels that a PSF-aware deconvolution model is
/// trained over (issue 24): Airy, Gaussian and Moffat profiles, FWHM log-uniform in `fwhm`,
/// Moffat beta uniform in `beta`, ellipticity e = 1 - b/a uniform in [0, `maxEllipticity`] at a
/// uniform position angle (axes a = FWHM / sqrt(1 - e), b = FWHM sqrt(1 - e), so the geometric
/// mean is the FWHM), each pixel the mean of 4x4 samples, on a `side` x `side` array centred on
/// its middle pixel, normalised to unit sum; Gaussian noise with sigma log-uniform in `noise`
/// (units of the truth's peak, as the degradations). Text form (`description`, parsed by
/// `init(parsing:)`): `airy,gaussian,moffat:fwhm=1.5-8,beta=1.5-6,e=0.15,noise=1e-06-0.1,side=65`.
public struct PSFFamily: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable { case airy, gaussian, moffat }

    public var kinds: [Kind] = Kind.allCases
    public var fwhm: ClosedRange<Double> = 1.5...8
    public var beta: ClosedRange<Double> = 1.5...6
    public var maxEllipticity = 0.15
    public var noise: ClosedRange<Double> = 1e-6...1e-1
    public var side = 65
    /// The PSF each crop is deconvolved with differs from the one that blurred it by up to this
    /// much (0: the same): FWHM times a factor log-uniform in [1/(1+e), 1+e], Moffat beta times
    /// another, ellipticity plus a uniform draw in [-e/2, e/2] (clamped to [0, 0.9)), angle plus
    /// up to 30 degrees x e/0.1: the network learns to live with the errors of a measured PSF
    /// (`--psf auto`). Text key `psf_error`.
    public var psfError = 0.0
    /// How each crop's Wiener lambda is chosen before the jitter: by GCV (the crop alone), by
    /// the discrepancy principle with the noise variance 1 of `noise_mad` units, or by the
    /// smallest estimated mean squared error with that noise (`risk`: what `restore` does for
    /// the whole image). Text key `lambda`.
    public var lambdaRule = LambdaRule.gcv

    public enum LambdaRule: String, Sendable { case gcv, dp, risk }

    public init() {}

    /// The member the crop is deconvolved with: `member` perturbed as `psfError` says (draws from
    /// `g` only when `psfError` > 0, so runs without it keep their bits).
    public func deconvolutionMember(_ member: Member, _ g: inout SplitMix64) -> Member {
        guard psfError > 0 else { return member }
        func uniform() -> Double { NoiseStreams.uniform(&g) }
        func factor() -> Double { exp((uniform() * 2 - 1) * log(1 + psfError)) }
        var m = member
        m.fwhm *= factor()
        m.beta = max(1.05, m.beta * factor())
        m.ellipticity = min(0.89, max(0, m.ellipticity + (uniform() - 0.5) * psfError))
        m.angle += (uniform() * 2 - 1) * (Double.pi / 6) * psfError / 0.1
        return m
    }

    /// One member: the profile's parameters.
    public struct Member: Equatable, Sendable, CustomStringConvertible {
        public var kind: Kind
        public var fwhm: Double
        public var beta: Double
        public var ellipticity: Double
        public var angle: Double

        public init(kind: Kind, fwhm: Double, beta: Double, ellipticity: Double, angle: Double) {
            (self.kind, self.fwhm, self.beta, self.ellipticity, self.angle) = (kind, fwhm, beta, ellipticity, angle)
        }

        public var description: String {
            var s = "\(kind.rawValue):fwhm=" + String(format: "%.3g", fwhm)
            if kind == .moffat { s += ",beta=" + String(format: "%.3g", beta) }
            if ellipticity > 0 { s += ",e=" + String(format: "%.3f", ellipticity) + ",angle=" + String(format: "%.0f", angle * 180 / Double.pi) }
            return s
        }

        /// The profile at (dy, dx) pixels from the centre (peak 1).
        func value(_ dy: Double, _ dx: Double) -> Double {
            let q = (1 - ellipticity).squareRoot()
            let (c, s) = (cos(angle), sin(angle))
            let u = (c * dx + s * dy) * q, v = (-s * dx + c * dy) / q   // a along u: stretched by 1/sqrt(1-e)
            let r = (u * u + v * v).squareRoot()
            switch kind {
            case .gaussian:
                return exp(-4 * log(2.0) * (r / fwhm) * (r / fwhm))
            case .moffat:
                let alpha = fwhm / (2 * (pow(2, 1 / beta) - 1).squareRoot())
                return pow(1 + (r / alpha) * (r / alpha), -beta)
            case .airy:
                let x = Double.pi * r * 1.028993969962188 / fwhm   // FWHM = 1.02899 lambda/D
                if x < 1e-8 { return 1 }
                let j = 2 * besselJ1(x) / x
                return j * j
            }
        }

        /// The PSF sampled on `side` x `side` pixels (centre at the middle pixel), unit sum.
        public func kernel(side: Int) -> Image2D {
            var img = Image2D(height: side, width: side)
            let c = Double((side - 1) / 2)
            let sub = 4
            var sum = 0.0
            for y in 0..<side { for x in 0..<side {
                var acc = 0.0
                for i in 0..<sub { for j in 0..<sub {
                    acc += value(Double(y) - c + (Double(i) + 0.5) / Double(sub) - 0.5, Double(x) - c + (Double(j) + 0.5) / Double(sub) - 0.5)
                } }
                img.pixels[y * side + x] = acc
                sum += acc
            } }
            return img.map { $0 / sum }
        }
    }

    /// Draws a member, a noise sigma and a lambda factor (log-uniform in [1/10, 10]: the
    /// trainer's jitter of the Wiener step's GCV choice, which on real images misses the best
    /// lambda by factors of 3 to 300: the network learns to correct under- and over-regularised
    /// estimates) from `g`.
    public func draw(_ g: inout SplitMix64) -> (member: Member, sigma: Double, lambdaFactor: Double) {
        func uniform() -> Double { NoiseStreams.uniform(&g) }
        func logUniform(_ r: ClosedRange<Double>) -> Double { exp(log(r.lowerBound) + uniform() * (log(r.upperBound) - log(r.lowerBound))) }
        let kind = kinds[min(kinds.count - 1, Int(uniform() * Double(kinds.count)))]
        let f = logUniform(fwhm)
        let b = beta.lowerBound + uniform() * (beta.upperBound - beta.lowerBound)
        let e = uniform() * maxEllipticity
        let a = uniform() * Double.pi
        let sigma = logUniform(noise)
        let lf = exp((uniform() * 2 - 1) * log(10.0))
        return (Member(kind: kind, fwhm: f, beta: b, ellipticity: e, angle: a), sigma, lf)
    }

    public var description: String {
        func g(_ v: Double) -> String { String(format: "%g", v) }
        return kinds.map(\.rawValue).joined(separator: ",")
            + ":fwhm=\(g(fwhm.lowerBound))-\(g(fwhm.upperBound)),beta=\(g(beta.lowerBound))-\(g(beta.upperBound))"
            + ",e=\(g(maxEllipticity)),noise=\(g(noise.lowerBound))-\(g(noise.upperBound)),side=\(side)"
            + (psfError > 0 ? ",psf_error=\(g(psfError))" : "") + (lambdaRule != .gcv ? ",lambda=\(lambdaRule.rawValue)" : "")
    }

    public struct ParseError: Error, CustomStringConvertible { public let description: String }

    /// Parses `description`'s form; keys left out keep their defaults.
    public init(parsing text: String) throws {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard let head = parts.first, !head.isEmpty else { throw ParseError(description: "empty PSF family") }
        var ks: [Kind] = []
        for k in head.split(separator: ",") {
            guard let kind = Kind(rawValue: String(k)) else { throw ParseError(description: "PSF family: unknown profile '\(k)' (airy, gaussian, moffat)") }
            ks.append(kind)
        }
        kinds = ks
        func range(_ v: String, _ key: String) throws -> ClosedRange<Double> {
            // "a-b" where a and b may hold exponents (1e-06-0.1): split at a '-' not after 'e'.
            let chars = Array(v)
            for i in 1..<max(1, chars.count) where chars[i] == "-" && chars[i - 1] != "e" && chars[i - 1] != "E" {
                if let a = Double(String(chars[..<i])), let b = Double(String(chars[(i + 1)...])), a > 0, a <= b, b.isFinite {
                    return a...b
                }
            }
            if let a = Double(v), a > 0, a.isFinite { return a...a }
            throw ParseError(description: "PSF family: \(key)=\(v) is not a positive range a-b")
        }
        if parts.count == 2 {
            for kv in parts[1].split(separator: ",") {
                let p = kv.split(separator: "=", maxSplits: 1).map(String.init)
                guard p.count == 2 else { throw ParseError(description: "PSF family: '\(kv)' is not key=value") }
                switch p[0] {
                case "fwhm": fwhm = try range(p[1], "fwhm")
                case "beta": beta = try range(p[1], "beta")
                case "noise": noise = try range(p[1], "noise")
                case "e":
                    guard let e = Double(p[1]), e >= 0, e < 0.9 else { throw ParseError(description: "PSF family: e must be in [0, 0.9)") }
                    maxEllipticity = e
                case "psf_error":
                    guard let e = Double(p[1]), e >= 0, e <= 1 else { throw ParseError(description: "PSF family: psf_error must be in [0, 1]") }
                    psfError = e
                case "lambda":
                    guard let r = LambdaRule(rawValue: p[1]) else { throw ParseError(description: "PSF family: lambda must be gcv, dp or risk") }
                    lambdaRule = r
                case "side":
                    guard let s = Int(p[1]), s >= 3, s % 2 == 1, s <= 513 else { throw ParseError(description: "PSF family: side must be odd, 3 to 513") }
                    side = s
                default: throw ParseError(description: "PSF family: unknown key '\(p[0])' (fwhm, beta, e, noise, side, psf_error, lambda)")
                }
            }
        }
        if beta.lowerBound <= 1 { throw ParseError(description: "PSF family: Moffat beta must exceed 1") }
    }
}
