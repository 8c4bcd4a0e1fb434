import Foundation

/// Flux restore for denoisers: output + G_sigma * (input - output). What a denoiser removed is
/// mostly noise, whose Gaussian low-pass is small; but a network that takes a little flux from
/// faint sources takes it at the sources' scales, which the low-pass gives back (docs/EVALUATION.md,
/// "Honest evaluation of denoisers": the raw frame's flux error and no added bias, where the
/// network alone biased faint fluxes by -2 to -5%).
///
/// The Gaussian is separable, truncated at 4 sigma, with 'reflect' borders (as
/// scipy.ndimage.gaussian_filter), and normalised over valid pixels: where the input or the
/// output is undefined (NaN, masked) the difference counts with weight 0 and the others are
/// re-weighted, so a masked column does not leak into the low-pass; undefined output pixels
/// stay undefined.
///
/// Rows stream in (`push`), as the streaming restore makes them, and come out once the rows
/// `radius` below them have arrived; it holds 2 radius + 1 rows besides the rows it returns.
public final class FluxRestore {
    /// The largest sigma accepted (pixels): the rows kept grow as 8 sigma.
    public static let maxSigma = 16.0

    public let sigma: Double
    public let width: Int
    public let height: Int
    let taps: [Double]
    let radius: Int
    /// Rows [lo, received) of the restored and input images and of the row-filtered difference
    /// and weights.
    private var restored: [[Float]] = []
    private var input: [[Float]] = []
    private var num: [[Double]] = []
    private var den: [[Double]] = []
    private var lo = 0
    private var received = 0
    private var emitted = 0

    /// Normalised Gaussian taps for offsets -r...r, r = round(truncate x sigma) (the taps of
    /// scipy.ndimage.gaussian_filter).
    public static func gaussianTaps(sigma: Double, truncate: Double = 4) -> [Double] {
        guard sigma.isFinite, sigma > 0, truncate.isFinite, truncate >= 0 else { return [1] }
        let r = Int(min(truncate, 100) * sigma + 0.5)
        var k = (-r...r).map { exp(-0.5 * Double($0 * $0) / (sigma * sigma)) }
        let s = k.reduce(0, +)
        for i in k.indices { k[i] /= s }
        return k
    }

    /// Index i of a length-n axis reflected into 0..<n (d c b a | a b c d | d c b a).
    @inline(__always)
    static func reflect(_ i: Int, _ n: Int) -> Int {
        if n == 1 { return 0 }
        var k = i % (2 * n)
        if k < 0 { k += 2 * n }
        return k < n ? k : 2 * n - 1 - k
    }

    public init(width: Int, height: Int, sigma: Double) throws {
        guard sigma.isFinite, sigma > 0, sigma <= FluxRestore.maxSigma else {
            throw ScaleError.badInput("--flux-restore takes a Gaussian sigma in pixels, above 0 and at most \(Int(FluxRestore.maxSigma)) (about the PSF's sigma: FWHM / 2.355)")
        }
        guard width > 0, height > 0 else { throw ScaleError.badInput("flux restore: the image is empty (\(width)x\(height))") }
        self.sigma = sigma
        self.width = width
        self.height = height
        taps = FluxRestore.gaussianTaps(sigma: sigma)
        radius = taps.count / 2
    }

    /// Adds the next rows (y0 ..< y0 + n, in order, `width` values each) of the network's output
    /// and of its input (in the same units); returns the rows now complete (their first row, the
    /// flux-restored rows and the input rows), or nil. Each row is filtered along its length as it
    /// comes and down its column as soon as the rows below it are in, so only 2 radius + 1 rows
    /// of the filtered difference are held.
    public func push(_ y0: Int, restored out: [Float], input inp: [Float]) -> (y0: Int, restored: [Float], input: [Float])? {
        precondition(y0 == received && out.count == inp.count && out.count % width == 0)
        let n = out.count / width
        var first: Int?
        var done = [Float](), doneInput = [Float]()
        for k in 0..<n {
            let o = Array(out[(k * width)..<((k + 1) * width)]), x = Array(inp[(k * width)..<((k + 1) * width)])
            var d = [Double](repeating: 0, count: width), v = [Double](repeating: 0, count: width)
            for i in 0..<width where o[i].isFinite && x[i].isFinite {
                d[i] = Double(x[i]) - Double(o[i])
                v[i] = 1
            }
            var hn = [Double](repeating: 0, count: width), hd = [Double](repeating: 0, count: width)
            for i in 0..<width {
                var s = 0.0, w = 0.0
                for (t, c) in taps.enumerated() {
                    let j = FluxRestore.reflect(i + t - radius, width)
                    s += c * d[j]
                    w += c * v[j]
                }
                hn[i] = s
                hd[i] = w
            }
            restored.append(o)
            input.append(x)
            num.append(hn)
            den.append(hd)
            received += 1
            let end = received == height ? height : max(emitted, received - radius)
            if end > emitted {
                if first == nil { first = emitted }
                emit(upTo: end, into: &done, &doneInput)
            }
        }
        return first.map { ($0, done, doneInput) }
    }

    /// Appends the rows [emitted, end), filtered down the columns; drops the rows no later row
    /// needs.
    private func emit(upTo end: Int, into out: inout [Float], _ inp: inout [Float]) {
        var s = [Double](repeating: 0, count: width), w = [Double](repeating: 0, count: width)
        for y in emitted..<end {
            for i in 0..<width { s[i] = 0; w[i] = 0 }
            for (t, c) in taps.enumerated() {
                let r = FluxRestore.reflect(y + t - radius, height) - lo
                let hn = num[r], hd = den[r]
                for i in 0..<width {
                    s[i] += c * hn[i]
                    w[i] += c * hd[i]
                }
            }
            let o = restored[y - lo]
            for i in 0..<width {
                out.append(o[i].isFinite && w[i] > 0 ? Float(Double(o[i]) + s[i] / w[i]) : o[i])
            }
            inp.append(contentsOf: input[y - lo])
        }
        emitted = end
        // Later rows read rows from (next row - radius) on (reflection near the bottom reads
        // rows nearer the bottom than that).
        let drop = min(max(0, emitted - radius - lo), restored.count)
        if drop > 0 {
            restored.removeFirst(drop); input.removeFirst(drop); num.removeFirst(drop); den.removeFirst(drop)
            lo += drop
        }
    }

    /// The whole image at once (`height` rows of `width`).
    public static func apply(restored: [Float], input: [Float], width: Int, height: Int, sigma: Double) throws -> [Float] {
        let f = try FluxRestore(width: width, height: height, sigma: sigma)
        return f.push(0, restored: restored, input: input)!.restored
    }
}
