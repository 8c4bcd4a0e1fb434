import CFITSIO
import Foundation

/// Pixels read in rectangular windows: a FITS image HDU (`FITSReader`), one plane of a cube, a
/// masked image or the mean of several planes. `StreamingRestore` restores any of them.
public protocol PixelSource: AnyObject {
    var path: String { get }
    var width: Int { get }
    var height: Int { get }
    /// The header cards of the image (the restoration reads the gain from them).
    var headerCards: [String] { get }
    /// The rectangle rows x columns (0-based, half-open), row-major with the rectangle's width;
    /// `invalid` marks pixels that must not be used (their value is NaN).
    func readWindow(rows: Range<Int>, columns: Range<Int>, pixels: inout [Float], invalid: inout [Bool]) throws
}

extension PixelSource {
    /// Rows [y0, y0 + count), full width.
    public func readRows(_ y0: Int, _ count: Int, pixels: inout [Float], invalid: inout [Bool]) throws {
        try readWindow(rows: y0..<(y0 + count), columns: 0..<width, pixels: &pixels, invalid: &invalid)
    }
}

/// A source that reads another one and changes its pixels (masks, a cap): its path, size and
/// header are the other's.
public protocol DerivedSource: PixelSource {
    var base: PixelSource { get }
}

extension DerivedSource {
    public var path: String { base.path }
    public var width: Int { base.width }
    public var height: Int { base.height }
    public var headerCards: [String] { base.headerCards }
}

extension FITSReader: PixelSource {}

/// What an image HDU holds, read from its header without reading pixels: its axes (cubes
/// included, which `FITSReader` refuses), cards, HDU number and EXTVER, and the data-quality
/// extension (`DQ`, as HST and JWST write beside `SCI`) of the same file, if there is one.
public struct FITSProbe: Sendable {
    /// The file name without cfitsio's bracketed filters.
    public var file: String
    public var hdu: Int
    public var axes: [Int]
    public var bitpix: Int
    public var headerCards: [String]
    public var extname: String?
    public var extver: Int
    /// HDU number of the `DQ` extension with this HDU's EXTVER, and its axes.
    public var dqHDU: Int?
    public var dqAxes: [Int]

    public var width: Int { axes[0] }
    public var height: Int { axes.count > 1 ? axes[1] : 1 }
    /// NAXIS3 (1 for a 2-D image).
    public var planes: Int { axes.count > 2 ? axes[2] : 1 }

    public init(path: String, hdu: String? = nil) throws {
        file = path.firstIndex(of: "[").map { String(path[..<$0]) } ?? path
        let (f, hdunum) = try FITSReader.openImageHDU(path: path, hdu: hdu)
        defer { var s: Int32 = 0; ffclos(f, &s) }
        var status: Int32 = 0
        self.hdu = Int(hdunum) - 1
        func imageAxes() throws -> ([Int], Int) {
            var bp: Int32 = 0, naxis: Int32 = 0
            var naxes = [Int](repeating: 0, count: 9)
            ffgipr(f, 9, &bp, &naxis, &naxes, &status)
            if status != 0 { throw FITSError.cfitsio(path, status, FITSIO.errorText(status)) }
            return (Array(naxes[0..<Int(min(naxis, 9))]), Int(bp))
        }
        let (axes, bp) = try imageAxes()
        // Declared data must fit the file (and the pixel cap) before any plane is cut out.
        try FITSReader.checkImage(f, path: path, axes: axes, bitpix: Int(bp), hdu: Int(hdunum) - 1)
        self.axes = axes
        self.bitpix = bp
        let cards = try FITSReader.headerCards(f, path: path)
        headerCards = cards
        extname = FITSHeader.value("EXTNAME", in: cards)
        extver = FITSHeader.value("EXTVER", in: cards).flatMap { Int($0) } ?? 1
        dqHDU = nil
        dqAxes = []
        if extname?.uppercased() != "DQ" {
            var name = Array("DQ".utf8CString)
            var s: Int32 = 0
            ffmnhd(f, ANY_HDU, &name, Int32(extver), &s)
            if s == 0 {
                var n: Int32 = 0
                ffghdn(f, &n)
                if Int(n) - 1 != self.hdu, let (a, _) = try? imageAxes() {
                    dqHDU = Int(n) - 1
                    dqAxes = a
                }
            }
            status = 0
        }
    }

    /// A cfitsio path to plane `k` (0-based) of this HDU: an image section, which cfitsio reads
    /// into memory as a 2-D image (`FITSReader` then reads it as any image).
    public func planePath(_ k: Int, hdu: Int? = nil) -> String {
        "\(file)[\(hdu ?? self.hdu)][*,*,\(k + 1):\(k + 1)]"
    }

    /// Checks that the axes past the third are 1 (a 4-D image is refused).
    public func checkPlanes(path: String) throws {
        if axes.count > 3, axes.dropFirst(3).contains(where: { $0 > 1 }) { throw FITSError.cube(path, axes) }
    }

    /// The reader of plane `k`: the HDU itself for a 2-D image (opened as `path`/`hdu` were
    /// given), else the plane as an image section (cfitsio holds that plane in memory while the
    /// reader is open).
    public func planeReader(_ k: Int, path: String, hdu: String?) throws -> FITSReader {
        try checkPlanes(path: path)
        if planes == 1 { return try FITSReader(path: path, hdu: hdu) }
        // cfitsio copies the plane's section into memory when it opens it.
        try MemoryBudget.check(Double(width) * Double(height) * Double(abs(bitpix) / 8 + 14),
                               "\(path): cutting plane \(k + 1) of \(planes) (\(width)x\(height)) into memory")
        return try FITSReader(path: planePath(k))
    }

    /// Every plane's reader, open at once.
    public func planeReaders(path: String, hdu: String?) throws -> [FITSReader] {
        try (0..<planes).map { try planeReader($0, path: path, hdu: hdu) }
    }

    /// The number of DQ planes (1: one serves every plane), after checking the DQ's size; nil
    /// without a DQ extension.
    public func dqPlanes() throws -> Int? {
        guard let d = dqHDU else { return nil }
        guard dqAxes.count >= 2, dqAxes[0] == width, dqAxes[1] == height else {
            throw FITSError.io("\(file): the DQ extension (HDU \(d)) is \(dqAxes.map(String.init).joined(separator: "x")), the image \(axes.map(String.init).joined(separator: "x")); pass --no-dq to ignore it")
        }
        let n = dqAxes.count > 2 ? dqAxes[2] : 1
        guard n == 1 || n == planes else {
            throw FITSError.io("\(file): the DQ extension has \(n) planes, the image \(planes); pass --no-dq to ignore it")
        }
        return n
    }

    /// The reader of the data-quality plane for image plane `k`.
    public func dqReader(_ k: Int) throws -> FITSReader? {
        guard let n = try dqPlanes(), let d = dqHDU else { return nil }
        return n == 1 ? try FITSReader(path: "\(file)[\(d)]") : try FITSReader(path: planePath(k, hdu: d))
    }
}

/// A source with bad-pixel masks applied: a pixel is invalid where the source is invalid, or
/// where any mask is non-zero (or itself undefined). Masks must have the source's size.
public final class MaskedSource: DerivedSource {
    public let base: PixelSource
    public let masks: [PixelSource]
    private var mp: [Float] = [], mi: [Bool] = []

    public init(_ base: PixelSource, masks: [PixelSource]) throws {
        for m in masks where m.width != base.width || m.height != base.height {
            throw FITSError.io("mask \(m.path) is \(m.width)x\(m.height); the image \(base.path) is \(base.width)x\(base.height)")
        }
        self.base = base
        self.masks = masks
    }

    public func readWindow(rows: Range<Int>, columns: Range<Int>, pixels: inout [Float], invalid: inout [Bool]) throws {
        try base.readWindow(rows: rows, columns: columns, pixels: &pixels, invalid: &invalid)
        for m in masks {
            try m.readWindow(rows: rows, columns: columns, pixels: &mp, invalid: &mi)
            for i in 0..<pixels.count where mi[i] || mp[i] != 0 {
                invalid[i] = true
                pixels[i] = .nan
            }
        }
    }
}

/// The mean of several sources of the same size (the luminance of RGB planes); a pixel is
/// invalid where any source is.
public final class MeanSource: PixelSource {
    public let sources: [PixelSource]
    private var p: [Float] = [], v: [Bool] = []

    public init(_ sources: [PixelSource]) throws {
        guard let first = sources.first else { throw FITSError.io("no planes to average") }
        for s in sources where s.width != first.width || s.height != first.height {
            throw FITSError.io("\(s.path) is \(s.width)x\(s.height), \(first.path) \(first.width)x\(first.height)")
        }
        self.sources = sources
    }

    public var path: String { sources[0].path }
    public var width: Int { sources[0].width }
    public var height: Int { sources[0].height }
    public var headerCards: [String] { sources[0].headerCards }

    public func readWindow(rows: Range<Int>, columns: Range<Int>, pixels: inout [Float], invalid: inout [Bool]) throws {
        let n = rows.count * columns.count
        var sum = [Double](repeating: 0, count: n)
        var bad = [Bool](repeating: false, count: n)
        for s in sources {
            try s.readWindow(rows: rows, columns: columns, pixels: &p, invalid: &v)
            for i in 0..<n {
                if v[i] { bad[i] = true } else { sum[i] += Double(p[i]) }
            }
        }
        let k = Double(sources.count)
        pixels = (0..<n).map { bad[$0] ? .nan : Float(sum[$0] / k) }
        invalid = bad
    }
}

/// A source whose values above `cap` read as `cap`: bright cores the network sees flat-topped
/// (`RestoreExtras.capSigma`; the restore adds the excess back to the network's output).
public final class CappedSource: DerivedSource {
    public let base: PixelSource
    public let cap: Float

    public init(_ base: PixelSource, cap: Float) {
        self.base = base
        self.cap = cap
    }

    public func readWindow(rows: Range<Int>, columns: Range<Int>, pixels: inout [Float], invalid: inout [Bool]) throws {
        try base.readWindow(rows: rows, columns: columns, pixels: &pixels, invalid: &invalid)
        let c = cap
        for i in 0..<pixels.count where pixels[i] > c { pixels[i] = c }
    }
}

/// The bright cap of an image: sky + k sigma, both from `RobustSky.estimate` (clipped median
/// and MAD) over the image's pixels as that samples them (every max(1, n / 10^6)-th).
public enum BrightCap {
    /// The cap, or nil where the sky has no spread (nothing to measure k sigma by).
    public static func level(count: Int, k: Double, value: (Int) -> Double?) -> (cap: Double, sky: Double, sigma: Double)? {
        let s = RobustSky.estimate(count: count, value: value)
        guard s.sigma.isFinite, s.sigma > 0, s.median.isFinite else { return nil }
        return (s.median + k * s.sigma, s.median, s.sigma)
    }

    /// The same for a source read in bands of rows (the same pixels sampled, the same result).
    public static func level(_ source: PixelSource, k: Double) throws -> (cap: Double, sky: Double, sigma: Double)? {
        let (w, h) = (source.width, source.height)
        let count = w * h
        let stride = max(1, count / 1_000_000)
        var samples: [Double] = []
        samples.reserveCapacity(count / stride + 1)
        var px = [Float](), inv = [Bool]()
        var y0 = 0
        while y0 < h {
            let n = min(256, h - y0)
            try source.readRows(y0, n, pixels: &px, invalid: &inv)
            let first = y0 * w
            var i = (first + stride - 1) / stride * stride
            while i < first + n * w {
                samples.append(Double(px[i - first]))   // NaN where invalid: the estimate skips it
                i += stride
            }
            y0 += n
        }
        return level(count: samples.count, k: k) { samples[$0] }
    }
}
