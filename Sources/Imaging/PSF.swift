import Foundation
import Runtime

/// Bessel function of the first kind of order 1, in Float64: the power series below |x| = 12,
/// Hankel's asymptotic expansion above (absolute error below 5e-12, tested against libm).
public func besselJ1(_ x: Double) -> Double {
    let ax = abs(x)
    if ax < 12 {
        // J1(x) = sum_k (-1)^k (x/2)^(2k+1) / (k! (k+1)!)
        let h = x / 2, h2 = h * h
        var term = h, sum = h
        var k = 0.0
        while true {
            k += 1
            term *= -h2 / (k * (k + 1))
            sum += term
            if abs(term) <= 1e-17 * abs(sum) || k > 60 { break }
        }
        return sum
    }
    // J1(x) ~ sqrt(2/(pi x)) (P cos(chi) - Q sin(chi)), chi = x - 3 pi / 4, mu = 4.
    let mu = 4.0
    var p = 1.0, q = 0.0, term = 1.0
    var k = 1.0
    let z8 = 8 * ax
    while k < 30 {
        term *= (mu - (2 * k - 1) * (2 * k - 1)) / (k * z8)
        if Int(k) % 2 == 1 { q += term * (Int(k) % 4 == 1 ? 1 : -1) } else { p += term * (Int(k) % 4 == 2 ? -1 : 1) }
        if abs(term) < 1e-17 { break }
        k += 1
    }
    let chi = ax - 0.75 * Double.pi
    let r = (2 / (Double.pi * ax)).squareRoot() * (p * cos(chi) - q * sin(chi))
    return x < 0 ? -r : r
}

/// The paper's Airy PSF: on an n x n grid over linspace(-1, 1, n), r = hypot(x, y) * pi * rings,
/// PSF = (J1(r) / r)^2 (limit 1/4 at r = 0), normalised to sum 1.
public func airyPSF(size n: Int = 64, rings: Double = 5) -> Image2D {
    var psf = Image2D(height: n, width: n)
    let step = n > 1 ? 2.0 / Double(n - 1) : 0
    for i in 0..<n {
        for j in 0..<n {
            let y = -1 + Double(i) * step, x = -1 + Double(j) * step
            let r = (x * x + y * y).squareRoot() * Double.pi * rings
            let v = r < 1e-8 ? 0.5 : besselJ1(r) / r
            psf[i, j] = v * v
        }
    }
    let s = psf.pixels.reduce(0, +)
    return psf.map { $0 / s }
}

/// A point-spread function named on the command line and recorded in model metadata:
/// `airy:size=64,rings=5` (Flamary 2017's, the default of the flamary recipes),
/// `gaussian:fwhm=F[,size=N]`, `moffat:fwhm=F,beta=B[,size=N]`, `FILE.fits` (a measured PSF image)
/// or `none`.
///
/// Centre convention: every kernel is applied by `LinearConvolution` with its origin at pixel
/// ((h - 1) / 2, (w - 1) / 2) (integer division). The analytic PSFs of odd size (Gaussian and
/// Moffat are always made odd) are centred exactly on that pixel; the paper's 64 x 64 Airy PSF is
/// centred half a pixel after it, as in the paper; a PSF file is used as stored, so its peak
/// should sit on that pixel (for an odd-sized image, the central pixel). Kernels are normalised
/// to sum 1; a PSF file's NaNs count as 0.
public enum PSFSpec: Equatable, Sendable, CustomStringConvertible {
    case airy(size: Int, rings: Double)
    case gaussian(fwhm: Double, size: Int?)
    case moffat(fwhm: Double, beta: Double, size: Int?)
    case file(String)
    case none

    public static let paper = PSFSpec.airy(size: 64, rings: 5)

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(parsing text: String) throws {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t.lowercased() == "none" { self = .none; return }
        let lower = t.lowercased()
        let kinds = ["airy", "gaussian", "moffat"]
        guard let kind = kinds.first(where: { lower == $0 || lower.hasPrefix($0 + ":") }) else {
            if lower.hasSuffix(".fits") || lower.hasSuffix(".fit") || lower.hasSuffix(".fts") || lower.hasSuffix(".fits.gz") || lower.hasSuffix(".fz") {
                self = .file(t); return
            }
            throw ParseError(description: "unknown PSF '\(text)': use airy:size=64,rings=5, gaussian:fwhm=F, moffat:fwhm=F,beta=B, a FITS file or none")
        }
        var values: [String: Double] = [:]
        let body = t.dropFirst(kind.count).drop { $0 == ":" }
        for part in body.split(separator: ",") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces).lowercased() }
            guard kv.count == 2, let v = Double(kv[1]), v.isFinite else {
                throw ParseError(description: "PSF '\(text)': '\(part)' is not NAME=NUMBER")
            }
            values[kv[0]] = v
        }
        let allowed: [String: Set<String>] = ["airy": ["size", "rings"], "gaussian": ["fwhm", "size"], "moffat": ["fwhm", "beta", "size"]]
        if let bad = values.keys.sorted().first(where: { !allowed[kind]!.contains($0) }) {
            throw ParseError(description: "PSF '\(text)': \(kind) takes \(allowed[kind]!.sorted().joined(separator: ", ")), not '\(bad)'")
        }
        func size(_ d: Int?) throws -> Int? {
            guard let s = values["size"] else { return d }
            guard s >= 1, s <= 1025, s == s.rounded() else { throw ParseError(description: "PSF '\(text)': size must be an integer from 1 to 1025") }
            return Int(s)
        }
        switch kind {
        case "airy":
            let rings = values["rings"] ?? 5
            guard rings > 0 else { throw ParseError(description: "PSF '\(text)': rings must be > 0") }
            self = .airy(size: try size(64)!, rings: rings)
        case "gaussian":
            guard let f = values["fwhm"], f > 0 else { throw ParseError(description: "PSF '\(text)': gaussian needs fwhm=F > 0 (pixels)") }
            self = .gaussian(fwhm: f, size: try size(nil))
        default:
            guard let f = values["fwhm"], f > 0 else { throw ParseError(description: "PSF '\(text)': moffat needs fwhm=F > 0 (pixels)") }
            let beta = values["beta"] ?? 3
            guard beta > 1 else { throw ParseError(description: "PSF '\(text)': moffat needs beta > 1") }
            self = .moffat(fwhm: f, beta: beta, size: try size(nil))
        }
    }

    public var description: String {
        switch self {
        case .airy(let n, let r): return "airy:size=\(n),rings=\(fmt(r))"
        case .gaussian(let f, let n): return "gaussian:fwhm=\(fmt(f))" + (n.map { ",size=\($0)" } ?? "")
        case .moffat(let f, let b, let n): return "moffat:fwhm=\(fmt(f)),beta=\(fmt(b))" + (n.map { ",size=\($0)" } ?? "")
        case .file(let p): return p
        case .none: return "none"
        }
    }

    /// The normalised kernel (nil for `none`).
    public func kernel() throws -> Image2D? {
        switch self {
        case .none: return nil
        case .airy(let n, let r): return airyPSF(size: n, rings: r)
        case .gaussian(let f, let n):
            let sigma = f / (8 * log(2.0)).squareRoot()
            let size = n ?? (2 * Int((4 * sigma).rounded(.up)) + 1)
            return PSFSpec.sampled(size: size | 1) { r2 in exp(-r2 / (2 * sigma * sigma)) }
        case .moffat(let f, let beta, let n):
            let alpha = f / (2 * (pow(2, 1 / beta) - 1).squareRoot())
            let size = n ?? (2 * Int((4 * f).rounded(.up)) + 1)
            return PSFSpec.sampled(size: size | 1) { r2 in pow(1 + r2 / (alpha * alpha), -beta) }
        case .file(let path):
            let img = try FITSIO.readImage(path: path)
            var k = Image2D(height: img.height, width: img.width)
            var sum = 0.0
            for i in 0..<img.pixels.count where !img.invalid[i] { k.pixels[i] = Double(img.pixels[i]); sum += k.pixels[i] }
            guard sum > 0, sum.isFinite else { throw ParseError(description: "PSF file \(path): its pixels do not sum to a positive number") }
            return k.map { $0 / sum }
        }
    }

    /// An odd-sized kernel of a radial profile f(r^2), each pixel the mean of 5 x 5 samples over
    /// its area (so narrow PSFs keep their flux and width), normalised to sum 1.
    static func sampled(size n: Int, _ f: (Double) -> Double) -> Image2D {
        var k = Image2D(height: n, width: n)
        let c = Double(n - 1) / 2
        let sub = 5
        for i in 0..<n { for j in 0..<n {
            var s = 0.0
            for a in 0..<sub { for b in 0..<sub {
                let dy = Double(i) - c + (Double(a) + 0.5) / Double(sub) - 0.5
                let dx = Double(j) - c + (Double(b) + 0.5) / Double(sub) - 0.5
                s += f(dy * dy + dx * dx)
            } }
            k[i, j] = s
        } }
        let total = k.pixels.reduce(0, +)
        return k.map { $0 / total }
    }
}
