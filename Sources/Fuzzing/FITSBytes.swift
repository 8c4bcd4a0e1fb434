import CFITSIO
import Foundation
import ModelFormat
import Runtime

/// FITS files built byte by byte (header cards, big-endian data, 2880-byte blocks), so that the
/// fuzzer's seeds cover every BITPIX, scaling keywords, BLANK, extensions and cubes without any
/// writer's own checks in the way; tile-compressed seeds are written by cfitsio.
public enum FITSBytes {
    /// One 80-character card: `KEY     = value` (value right-justified in columns 11-30 as the
    /// fixed format writes numbers and logicals; strings as given, quoted by the caller).
    public static func card(_ key: String, _ value: String, comment: String = "") -> String {
        var s = key.padding(toLength: 8, withPad: " ", startingAt: 0) + "= "
        let v = value.hasPrefix("'") ? value : String(repeating: " ", count: max(0, 20 - value.count)) + value
        s += v
        if !comment.isEmpty { s += " / " + comment }
        return String(s.padding(toLength: 80, withPad: " ", startingAt: 0).prefix(80))
    }

    /// A header unit: cards, END, padded with spaces to a multiple of 2880 bytes.
    public static func header(_ cards: [String]) -> [UInt8] {
        var text = cards.map { $0.padding(toLength: 80, withPad: " ", startingAt: 0) }.joined()
        text += "END".padding(toLength: 80, withPad: " ", startingAt: 0)
        var bytes = Array(text.utf8)
        while bytes.count % 2880 != 0 { bytes.append(0x20) }
        return bytes
    }

    /// Big-endian stored values of `bitpix` (integers rounded and clamped), padded with zeros.
    public static func data(_ values: [Double], bitpix: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(values.count * abs(bitpix) / 8 + 2880)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) } }
        func clamp<T: FixedWidthInteger>(_ v: Double, _: T.Type) -> T {
            if v.isNaN { return 0 }
            if v >= Double(T.max) { return T.max }
            if v <= Double(T.min) { return T.min }
            return T(v.rounded())
        }
        for v in values {
            switch bitpix {
            case 8: put(clamp(v, UInt8.self))
            case 16: put(clamp(v, Int16.self))
            case 32: put(clamp(v, Int32.self))
            case 64: put(clamp(v, Int64.self))
            case -32: put(Float(v).bitPattern)
            default: put(v.bitPattern)
            }
        }
        while out.count % 2880 != 0 { out.append(0) }
        return out
    }

    /// A primary image HDU (or an IMAGE extension) with the given extra cards.
    public static func image(bitpix: Int, axes: [Int], values: [Double], cards extra: [String] = [], primary: Bool = true) -> [UInt8] {
        var cards = [primary ? card("SIMPLE", "T") : card("XTENSION", "'IMAGE   '"), card("BITPIX", String(bitpix)),
                     card("NAXIS", String(axes.count))]
        for (i, a) in axes.enumerated() { cards.append(card("NAXIS\(i + 1)", String(a))) }
        if primary { cards.append(card("EXTEND", "T")) } else { cards += [card("PCOUNT", "0"), card("GCOUNT", "1")] }
        cards += extra
        return header(cards) + (values.isEmpty ? [] : data(values, bitpix: bitpix))
    }

    /// A small binary-table extension (two columns, a few rows).
    public static func table(rows: Int) -> [UInt8] {
        let cards = [card("XTENSION", "'BINTABLE'"), card("BITPIX", "8"), card("NAXIS", "2"), card("NAXIS1", "12"),
                     card("NAXIS2", String(rows)), card("PCOUNT", "0"), card("GCOUNT", "1"), card("TFIELDS", "2"),
                     card("TTYPE1", "'FLUX    '"), card("TFORM1", "'1D      '"), card("TTYPE2", "'ID      '"), card("TFORM2", "'1J      '"),
                     card("EXTNAME", "'CATALOG '")]
        var body = [UInt8]()
        for r in 0..<rows {
            withUnsafeBytes(of: (Double(r) * 1.5).bitPattern.bigEndian) { body.append(contentsOf: $0) }
            withUnsafeBytes(of: Int32(r).bigEndian) { body.append(contentsOf: $0) }
        }
        while body.count % 2880 != 0 { body.append(0) }
        return header(cards) + body
    }

    /// A smooth sky with a few stars (deterministic), `w` x `h`, values about 100-5000.
    public static func sky(_ w: Int, _ h: Int, seed: UInt64) -> [Double] {
        var rng = SplitMix64(seed: seed)
        var v = [Double](repeating: 0, count: w * h)
        let stars = (0..<4).map { _ in (Double.random(in: 0..<Double(w), using: &rng), Double.random(in: 0..<Double(h), using: &rng),
                                        Double.random(in: 500...5000, using: &rng)) }
        for y in 0..<h { for x in 0..<w {
            var s = 100 + 0.5 * Double(x + y) + Double.random(in: -10...10, using: &rng)
            for (sx, sy, f) in stars { let d2 = (Double(x) - sx) * (Double(x) - sx) + (Double(y) - sy) * (Double(y) - sy); s += f * exp(-d2 / 4) }
            v[y * w + x] = s
        } }
        return v
    }

    /// A tile-compressed image written by cfitsio (`[compress ...]` syntax) into `directory`,
    /// returned as bytes; nil if cfitsio cannot write it.
    public static func compressed(directory: String, name: String, spec: String, bitpix: Int32, width: Int, height: Int,
                                  values: [Double]) -> [UInt8]? {
        let path = directory + "/" + name
        unlink(path)
        var status: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        ffinit(&f, path + "[compress \(spec)]", &status)
        guard status == 0, f != nil else { return nil }
        var naxes = [width, height]
        ffcrim(f, bitpix, 2, &naxes, &status)
        var vals = values
        var first = [1, 1]
        ffppx(f, TDOUBLE, &first, Int64(values.count), &vals, &status)
        ffclos(f, &status)
        defer { unlink(path) }
        guard status == 0, let d = FileManager.default.contents(atPath: path) else { return nil }
        return [UInt8](d)
    }
}
