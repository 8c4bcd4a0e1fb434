import CFITSIO
import ModelFormat
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A 2-D image read from a FITS file, in the file's physical units (BSCALE/BZERO applied).
public struct FITSImage: Sendable {
    public var width: Int
    public var height: Int
    /// Row-major pixels; row 0 is the first row stored in the file (FITS y = 1).
    public var pixels: [Float]
    /// true where the pixel is undefined (BLANK in integer images, NaN in float images).
    public var invalid: [Bool]
    /// The 80-character header records of the HDU the image came from, in order.
    public var headerCards: [String]
    /// BITPIX of the source HDU (the equivalent type after scaling is not kept: output is -32).
    public var bitpix: Int
    /// HDU number the image was read from, 0 for the primary.
    public var hdu: Int

    public init(width: Int, height: Int, pixels: [Float], invalid: [Bool]? = nil,
                headerCards: [String] = [], bitpix: Int = -32, hdu: Int = 0) {
        self.width = width
        self.height = height
        self.pixels = pixels
        self.invalid = invalid ?? pixels.map { !$0.isFinite }
        self.headerCards = headerCards
        self.bitpix = bitpix
        self.hdu = hdu
    }

    public var invalidCount: Int { invalid.reduce(0) { $0 + ($1 ? 1 : 0) } }

    /// The value of a header keyword as written in the card (quotes removed for strings).
    public func keyword(_ name: String) -> String? {
        let key = name.uppercased()
        for card in headerCards {
            let k = String(card.prefix(8)).trimmingCharacters(in: " ")
            guard k == key, card.count > 10, card.dropFirst(8).hasPrefix("= ") else { continue }
            var v = String(card.dropFirst(10))
            if v.trimmingCharacters(in: " ").hasPrefix("'") {
                let t = v.trimmingCharacters(in: " ").dropFirst()
                if let end = t.firstIndex(of: "'") { return String(t[..<end]).trimmingCharacters(in: " ") }
                return String(t)
            }
            if let slash = v.firstIndex(of: "/") { v = String(v[..<slash]) }
            return v.trimmingCharacters(in: " ")
        }
        return nil
    }
}

/// Errors of FITS reading and writing, each saying what to do.
public enum FITSError: Error, CustomStringConvertible, Equatable {
    case missingFile(String)
    case notFITS(String, String)
    case noImage(String)
    case oneDimensional(String)
    case cube(String, [Int])
    case empty(String)
    case badHDU(String, String)
    case cfitsio(String, Int32, String)
    case exists(String)
    case io(String)
    /// An HDU whose header declares more data than the file holds: (path, HDU, declared bytes,
    /// bytes after the header).
    case truncated(String, Int, Double, Double)
    /// An image larger than this program handles.
    case tooLarge(String, String)

    public var description: String {
        switch self {
        case .missingFile(let p): return "\(p): no such file"
        case .notFITS(let p, let why): return "\(p) is not a readable FITS file (\(why))"
        case .noImage(let p): return "\(p) holds no image HDU with data"
        case .oneDimensional(let p): return "\(p): the image is 1-D; a 2-D image is needed"
        case .cube(let p, let axes):
            return "\(p): the image is a \(axes.count)-D cube \(axes.map(String.init).joined(separator: "x")); pick one plane with cfitsio's section syntax, e.g. '\(p)[*,*,1:1]' (quote it in the shell)"
        case .empty(let p): return "\(p): the image has no pixels"
        case .badHDU(let p, let h): return "\(p): no HDU '\(h)' (give an index, 0 = primary, or an EXTNAME)"
        case .cfitsio(let what, let code, let msg): return "\(what): cfitsio error \(code): \(msg)"
        case .exists(let p): return "\(p) already exists (pass --overwrite to replace it)"
        case .io(let s): return s
        case .truncated(let p, let hdu, let need, let have):
            return "\(p): HDU \(hdu) declares \(MemoryBudget.describe(need)) of data but the file holds only \(MemoryBudget.describe(have)) after its header: the file is truncated or its NAXISn/BITPIX keywords are damaged"
        case .tooLarge(let p, let why): return "\(p): \(why)"
        }
    }
}

/// FITS input and output through cfitsio.
public enum FITSIO {
    /// Reads a 2-D image. `path` may use cfitsio's extended syntax (`file.fits[SCI]`, `.gz`,
    /// tile-compressed `.fz`); `hdu` selects an HDU by index (0 = primary) or EXTNAME. With
    /// neither, the first HDU holding an image is used.
    public static func readImage(path: String, hdu: String? = nil) throws -> FITSImage {
        let reader = try FITSReader(path: path, hdu: hdu)
        let (width, height) = (reader.width, reader.height)
        // Read buffers (Float64 values, null flags) and the image's Float32 pixels and mask.
        try MemoryBudget.check(Double(width) * Double(height) * 14, "\(path): reading the whole \(width)x\(height) image into memory",
                               hint: "`restore` (without --in-memory) streams images of any height in row bands")
        var pixels = [Float](), invalid = [Bool]()
        try reader.readRows(0, height, pixels: &pixels, invalid: &invalid)
        return FITSImage(width: width, height: height, pixels: pixels, invalid: invalid, headerCards: reader.headerCards,
                         bitpix: reader.bitpix, hdu: reader.hdu)
    }

    /// What `writeImage` adds to the copied header.
    public struct Provenance: Sendable {
        /// Keyword cards to add: (name ≤ 8 chars, value, comment).
        public var keywords: [(String, MetaValue, String)]
        /// HISTORY lines (long lines are continued over several cards).
        public var history: [String]
        public init(keywords: [(String, MetaValue, String)] = [], history: [String] = []) {
            self.keywords = keywords
            self.history = history
        }
    }

    /// Writes a Float32 image (BITPIX -32) as the primary HDU, keeping the non-structural cards
    /// of `headerCards` (WCS, observation keywords, comments, history) and adding provenance.
    /// The file appears atomically; an existing file is replaced only with `overwrite`.
    public static func writeImage(path: String, width: Int, height: Int, pixels: [Float], headerCards: [String],
                                  provenance: Provenance = Provenance(), overwrite: Bool = false) throws {
        if pixels.count != width * height {
            throw FITSError.io("writing \(path): \(pixels.count) pixels given for a \(width)x\(height) image")
        }
        let writer = try FITSWriter(path: path, width: width, height: height, headerCards: headerCards,
                                    provenance: provenance, overwrite: overwrite)
        try pixels.withUnsafeBufferPointer { try writer.writeRows(0, $0) }
        try writer.commit()
    }

    /// cfitsio's text for a status code, with the messages on its error stack.
    public static func errorText(_ status: Int32) -> String {
        var buf = [CChar](repeating: 0, count: 96)
        ffgerr(status, &buf)
        var text = String(cString: buf)
        var stack: [String] = []
        while ffgmsg(&buf) != 0 {
            let m = String(cString: buf).trimmingCharacters(in: " ")
            if !m.isEmpty { stack.append(m) }
        }
        if !stack.isEmpty { text += " (" + stack.prefix(3).joined(separator: "; ") + ")" }
        // cfitsio quotes header bytes in its messages; a damaged header must not put control
        // characters or invalid UTF-8 on the user's terminal.
        return String(String.UnicodeScalarView(text.unicodeScalars.map { $0.isASCII && $0.value >= 32 && $0.value < 127 ? $0 : "?" }))
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}

/// Header-card helpers shared by `FITSImage` and `FITSReader`.
public enum FITSHeader {
    /// The value of a keyword as written in the cards (quotes removed for strings), or nil.
    public static func value(_ name: String, in cards: [String]) -> String? {
        FITSImage(width: 0, height: 0, pixels: [], invalid: [], headerCards: cards).keyword(name)
    }
}

/// An open 2-D image HDU read in row bands or rectangular windows, so that an image larger than
/// memory can be processed piece by piece. Pixels come in the file's physical units (BSCALE/
/// BZERO applied); BLANK and NaN pixels are flagged invalid, exactly as `FITSIO.readImage`
/// (which reads through this type). Compressed (`.fz`) images are decompressed tile by tile by
/// cfitsio; gzip files (`.gz`) are decompressed by cfitsio into memory when opened.
public final class FITSReader: @unchecked Sendable {
    public let path: String
    public let width: Int
    public let height: Int
    public let bitpix: Int
    /// HDU number, 0 for the primary.
    public let hdu: Int
    public let headerCards: [String]
    private let naxis: Int
    private let compressed: Bool
    private var file: UnsafeMutablePointer<fitsfile>?
    private var values: [Double] = []
    private var floats: [Float] = []
    private var nulls: [CChar] = []
    /// Unscaled float32 data (BITPIX -32, no BSCALE/BZERO), read as Float32: the same values
    /// and flags as through Float64, in half the memory and without the conversions.
    private var plainFloat = false

    /// Opens `path` (cfitsio extended syntax allowed) at HDU `hdu` (index or EXTNAME; nil: the
    /// first HDU holding an image) and reads its header.
    public init(path: String, hdu: String? = nil) throws {
        self.path = path
        let (f, hdunum) = try FITSReader.openImageHDU(path: path, hdu: hdu)
        var ok = false
        defer { if !ok { var s: Int32 = 0; ffclos(f, &s) } }
        var status: Int32 = 0
        var bitpix: Int32 = 0, naxis: Int32 = 0
        var naxes = [Int](repeating: 0, count: 9)
        ffgipr(f, 9, &bitpix, &naxis, &naxes, &status)
        if status != 0 { throw FITSError.cfitsio(path, status, FITSIO.errorText(status)) }
        let axes = Array(naxes[0..<Int(min(naxis, 9))])
        if axes.dropFirst(2).contains(where: { $0 > 1 }) && axes.allSatisfy({ $0 > 0 }) { throw FITSError.cube(path, axes) }
        try FITSReader.checkImage(f, path: path, axes: axes, bitpix: Int(bitpix), hdu: Int(hdunum) - 1)
        let cards = try FITSReader.headerCards(f, path: path)
        self.width = axes[0]
        self.height = axes[1]
        self.bitpix = Int(bitpix)
        self.hdu = Int(hdunum) - 1
        self.naxis = Int(naxis)
        self.headerCards = cards
        var cs: Int32 = 0
        self.compressed = fits_is_compressed_image(f, &cs) != 0
        func unscaled(_ key: String, _ identity: Double) -> Bool {
            guard let v = FITSHeader.value(key, in: cards) else { return true }
            return Double(v.trimmingCharacters(in: .whitespaces)) == identity
        }
        self.plainFloat = bitpix == -32 && !compressed && unscaled("BSCALE", 1) && unscaled("BZERO", 0)
        self.file = f
        ok = true
    }

    deinit { close() }

    /// Opens `path` (cfitsio extended syntax allowed) at HDU `hdu` (index or EXTNAME; nil: the
    /// first HDU holding an image) after the checks cfitsio cannot survive without (gzip size,
    /// `FITSHeaderScan`), and refuses tables. Returns the open file (the caller closes it) and
    /// the 1-based HDU number. Shared by `FITSReader` and `FITSProbe`.
    static func openImageHDU(path: String, hdu: String?) throws -> (UnsafeMutablePointer<fitsfile>, Int32) {
        let plain = path.firstIndex(of: "[").map { String(path[..<$0]) } ?? path
        let local = !plain.isEmpty && plain != "-" && !plain.contains("://")
        if local && access(plain, F_OK) != 0 { throw FITSError.missingFile(plain) }
        if local {
            try checkGzipSize(plain)
            try FITSHeaderScan.check(plain)
        }
        var status: Int32 = 0
        var opened: UnsafeMutablePointer<fitsfile>?
        if hdu == nil {
            ffiopn(&opened, path, READONLY, &status)  // fits_open_image: first HDU with an image
        } else {
            ffopen(&opened, path, READONLY, &status)
        }
        guard status == 0, let f = opened else {
            if opened != nil { var s: Int32 = 0; ffclos(opened, &s) }
            if status == 104 { throw FITSError.missingFile(path) }  // FILE_NOT_OPENED
            if status == 301 || status == 320 { throw FITSError.noImage(path) }  // BAD_HDU_NUM, NOT_IMAGE
            throw FITSError.notFITS(path, FITSIO.errorText(status))
        }
        var ok = false
        defer { if !ok { var s: Int32 = 0; ffclos(f, &s) } }
        if let hdu = hdu {
            var type: Int32 = 0
            if let n = Int(hdu) {
                if n < 0 { throw FITSError.badHDU(path, hdu) }
                ffmahd(f, Int32(n + 1), &type, &status)
            } else {
                var name = Array(hdu.utf8CString)
                ffmnhd(f, ANY_HDU, &name, 0, &status)
            }
            if status != 0 { throw FITSError.badHDU(path, hdu) }
        }
        var hdutype: Int32 = 0
        ffghdt(f, &hdutype, &status)
        var hdunum: Int32 = 0
        ffghdn(f, &hdunum)
        if hdutype != IMAGE_HDU && fits_is_compressed_image(f, &status) == 0 {
            throw FITSError.noImage("\(path) (HDU \(hdunum - 1) is a table)")
        }
        ok = true
        return (f, hdunum)
    }

    /// Refuses an image HDU without 2-D pixels (NAXIS 0 or 1, a negative or zero axis) or whose
    /// declared data the file cannot hold (`checkDeclaredSize`). Shared by `FITSReader` and
    /// `FITSProbe`.
    static func checkImage(_ f: UnsafeMutablePointer<fitsfile>, path: String, axes: [Int], bitpix: Int, hdu: Int) throws {
        if axes.isEmpty { throw FITSError.noImage("\(path) (HDU \(hdu) has NAXIS = 0)") }
        if axes.count == 1 { throw FITSError.oneDimensional(path) }
        if axes.contains(where: { $0 < 0 }) { throw FITSError.notFITS(path, "negative axis length in \(axes)") }
        if axes.contains(0) { throw FITSError.empty(path) }
        try checkDeclaredSize(f, path: path, axes: axes, bitpix: bitpix, hdu: hdu)
    }

    /// The 80-character records of the current HDU's header, in order.
    static func headerCards(_ f: UnsafeMutablePointer<fitsfile>, path: String) throws -> [String] {
        var status: Int32 = 0
        var nkeys: Int32 = 0, more: Int32 = 0
        ffghsp(f, &nkeys, &more, &status)
        var cards: [String] = []
        var buf = [CChar](repeating: 0, count: 96)
        if nkeys > 0 {
            for i in 1...nkeys {
                ffgrec(f, i, &buf, &status)
                if status != 0 { break }
                cards.append(String(cString: buf))
            }
        }
        if status != 0 { throw FITSError.cfitsio("\(path): reading the header", status, FITSIO.errorText(status)) }
        return cards
    }

    /// The largest image accepted: 2^40 pixels (a terapixel), each axis below 2^31.
    public static let maxPixels = 1 << 40

    /// Refuses, before any pixel is read, an HDU whose header declares more than the file can
    /// hold or than this program may allocate: an uncompressed image whose data would end past
    /// the end of the file (truncated, or a damaged NAXISn), a tile-compressed image whose table
    /// and heap do not fit the file or whose tiles alone exceed the memory budget, and any image
    /// over `maxPixels`.
    static func checkDeclaredSize(_ f: UnsafeMutablePointer<fitsfile>, path: String, axes: [Int], bitpix: Int, hdu: Int) throws {
        var pixels = 1.0
        for a in axes { pixels *= Double(a) }
        let shape = axes.map(String.init).joined(separator: "x")
        if axes[0] >= Int(Int32.max) || axes[1] >= Int(Int32.max) || pixels > Double(maxPixels) {
            throw FITSError.tooLarge(path, "its header declares \(shape) pixels, more than the \(maxPixels) (2^40) this program handles; the header is probably damaged")
        }
        var status: Int32 = 0
        var headStart: Int64 = 0, dataStart: Int64 = 0, dataEnd: Int64 = 0
        ffghadll(f, &headStart, &dataStart, &dataEnd, &status)
        let fileSize = Double(f.pointee.Fptr.pointee.logfilesize)
        if status != 0 { throw FITSError.cfitsio(path, status, FITSIO.errorText(status)) }
        var cs: Int32 = 0
        if fits_is_compressed_image(f, &cs) != 0 {
            // The binary table holding the compressed tiles, and its heap.
            func key(_ name: String) -> Double {
                var v: Int64 = 0, s: Int32 = 0
                ffgkyjj(f, name, &v, nil, &s)
                return s == 0 ? Double(v) : 0
            }
            let table = key("NAXIS1") * key("NAXIS2") + key("PCOUNT")
            if Double(dataStart) + table > fileSize {
                throw FITSError.truncated(path, hdu, table, max(0, fileSize - Double(dataStart)))
            }
            var tile = 1.0
            for (i, a) in axes.enumerated() {
                let t = key("ZTILE\(i + 1)")
                tile *= t > 0 ? t : (i == 0 ? Double(a) : 1)
            }
            // cfitsio decompresses one tile at a time into buffers of a few bytes per pixel.
            try MemoryBudget.check(tile * 16, "\(path): decompressing its \(shape) image in tiles of \(String(format: "%.0f", tile)) pixels",
                                   hint: "the ZTILEn keywords are probably damaged")
            try FITSTileCheck.check(f, path: path, hdu: hdu, tilePixels: tile)
        } else {
            let bytes = pixels * Double(abs(bitpix) / 8)
            if Double(dataStart) + bytes > fileSize {
                throw FITSError.truncated(path, hdu, bytes, max(0, fileSize - Double(dataStart)))
            }
        }
    }

    /// A gzip file is decompressed into memory by cfitsio when opened: its declared size (the
    /// trailer's ISIZE, the size modulo 4 GiB) must fit the memory budget.
    static func checkGzipSize(_ plain: String) throws {
        let fd = open(plain, O_RDONLY)
        if fd < 0 { return }
        defer { Glibc.close(fd) }
        var magic = [UInt8](repeating: 0, count: 2)
        guard read(fd, &magic, 2) == 2, magic == [0x1f, 0x8b] else { return }
        let end = lseek(fd, -4, SEEK_END)
        var trailer = [UInt8](repeating: 0, count: 4)
        guard end > 0, read(fd, &trailer, 4) == 4 else { throw FITSError.notFITS(plain, "a truncated gzip file") }
        let isize = Double(UInt32(trailer[0]) | UInt32(trailer[1]) << 8 | UInt32(trailer[2]) << 16 | UInt32(trailer[3]) << 24)
        try MemoryBudget.check(isize * 1.5, "\(plain): decompressing this gzip file (\(MemoryBudget.describe(isize)) of FITS) into memory",
                               hint: "decompress it to disk first (gunzip), then restore streams it")
    }

    public func close() {
        if file != nil { var s: Int32 = 0; ffclos(file, &s); file = nil }
    }

    /// Rows [y0, y0 + count) (0-based, full width) into `pixels` and `invalid` (resized).
    public func readRows(_ y0: Int, _ count: Int, pixels: inout [Float], invalid: inout [Bool]) throws {
        try readWindow(rows: y0..<(y0 + count), columns: 0..<width, pixels: &pixels, invalid: &invalid)
    }

    /// The rectangle rows x columns (0-based, half-open) into `pixels` and `invalid`, row-major
    /// with the rectangle's width. Full-width windows are read as one contiguous run of pixels.
    public func readWindow(rows: Range<Int>, columns: Range<Int>, pixels: inout [Float], invalid: inout [Bool]) throws {
        guard let f = file else { throw FITSError.io("\(path): reader is closed") }
        guard rows.lowerBound >= 0, rows.upperBound <= height, columns.lowerBound >= 0, columns.upperBound <= width,
              !rows.isEmpty, !columns.isEmpty else {
            throw FITSError.io("\(path): window rows \(rows) columns \(columns) lies outside the \(width)x\(height) image")
        }
        let count = rows.count * columns.count
        // Values as read (8 bytes), null flags, pixels and the invalid mask, while they are copied.
        try MemoryBudget.check(Double(rows.count) * Double(columns.count) * 14,
                               "\(path): reading \(columns.count)x\(rows.count) pixels at once",
                               hint: "use streaming restore or smaller tiles")
        if plainFloat {
            try readFloatWindow(f, rows: rows, columns: columns, count: count, pixels: &pixels, invalid: &invalid)
            return
        }
        if values.count < count { values = [Double](repeating: 0, count: count); nulls = [CChar](repeating: 0, count: count) }
        var status: Int32 = 0
        var anynul: Int32 = 0
        if compressed {
            // Tile-compressed images: cfitsio's subset reader (reading a run of pixels that starts
            // inside the image through the null-flag reader crashes cfitsio 4.2). Undefined pixels
            // come back as NaN, which flags them exactly as the null flags would.
            var blc = [Int](repeating: 1, count: naxis), trc = [Int](repeating: 1, count: naxis), inc = [Int](repeating: 1, count: naxis)
            blc[0] = columns.lowerBound + 1; blc[1] = rows.lowerBound + 1
            trc[0] = columns.upperBound; trc[1] = rows.upperBound
            var nan = Double.nan
            ffgsv(f, TDOUBLE, &blc, &trc, &inc, &nan, &values, &anynul, &status)
            for i in 0..<count { nulls[i] = 0 }
        } else {
            values.withUnsafeMutableBufferPointer { v in
                nulls.withUnsafeMutableBufferPointer { n in
                    readRuns(f, TDOUBLE, rows: rows, columns: columns, v.baseAddress!, n.baseAddress!, &status)
                }
            }
        }
        if status != 0 { throw FITSError.cfitsio("\(path): reading pixels", status, FITSIO.errorText(status)) }
        Self.flagInvalid(values, nulls, count: count, pixels: &pixels, invalid: &invalid)
    }

    /// `readWindow` for unscaled float32 data, through cfitsio's Float32 reader (null flags for
    /// NaN and infinite values, as the Float64 path flags them).
    private func readFloatWindow(_ f: UnsafeMutablePointer<fitsfile>, rows: Range<Int>, columns: Range<Int>, count: Int,
                                 pixels: inout [Float], invalid: inout [Bool]) throws {
        if floats.count < count { floats = [Float](repeating: 0, count: count) }
        if nulls.count < count { nulls = [CChar](repeating: 0, count: count) }
        var status: Int32 = 0
        floats.withUnsafeMutableBufferPointer { v in
            nulls.withUnsafeMutableBufferPointer { n in
                readRuns(f, TFLOAT, rows: rows, columns: columns, v.baseAddress!, n.baseAddress!, &status)
            }
        }
        if status != 0 { throw FITSError.cfitsio("\(path): reading pixels", status, FITSIO.errorText(status)) }
        Self.flagInvalid(floats, nulls, count: count, pixels: &pixels, invalid: &invalid)
    }

    /// The window's pixels as cfitsio type `type` into `v`, null flags into `n`: one run for a
    /// full-width window, else one run per row segment.
    private func readRuns<T>(_ f: UnsafeMutablePointer<fitsfile>, _ type: Int32, rows: Range<Int>, columns: Range<Int>,
                             _ v: UnsafeMutablePointer<T>, _ n: UnsafeMutablePointer<CChar>, _ status: inout Int32) {
        var anynul: Int32 = 0
        var first = [Int](repeating: 1, count: naxis)
        if columns.count == width {
            first[1] = rows.lowerBound + 1
            ffgpxf(f, type, &first, Int64(rows.count * width), v, n, &anynul, &status)
        } else {
            for (k, y) in rows.enumerated() where status == 0 {
                first[0] = columns.lowerBound + 1
                first[1] = y + 1
                ffgpxf(f, type, &first, Int64(columns.count), v + k * columns.count, n + k * columns.count, &anynul, &status)
            }
        }
    }

    /// `pixels` (resized to `count`) from the values read, NaN where cfitsio flagged a null or the
    /// value is not finite; `invalid` marks those pixels.
    private static func flagInvalid<T: BinaryFloatingPoint>(_ values: [T], _ nulls: [CChar], count: Int,
                                                            pixels: inout [Float], invalid: inout [Bool]) {
        if pixels.count != count { pixels = [Float](repeating: 0, count: count) }
        if invalid.count != count { invalid = [Bool](repeating: false, count: count) }
        values.withUnsafeBufferPointer { v in
            nulls.withUnsafeBufferPointer { n in
                pixels.withUnsafeMutableBufferPointer { p in
                    invalid.withUnsafeMutableBufferPointer { inv in
                        for i in 0..<count {
                            let x = v[i]
                            let bad = n[i] != 0 || !x.isFinite
                            inv[i] = bad
                            p[i] = bad ? .nan : Float(x)
                        }
                    }
                }
            }
        }
    }
}

/// A Float32 image written in row bands into a temporary file and renamed into place by
/// `commit()` (the output never exists half-written). The header (copied non-structural cards
/// of an input, provenance) is written first; rows may come in any order, each band once.
public final class FITSWriter: @unchecked Sendable {
    public let path: String
    public let width: Int
    public let height: Int
    /// NAXIS3 (1: a 2-D image).
    public let planes: Int
    private let temporary: String
    private let overwrite: Bool
    private var file: UnsafeMutablePointer<fitsfile>?

    /// `planes` > 1 writes a cube (NAXIS3 = planes). A path ending in `.fz` is written
    /// tile-compressed (cfitsio's `[compress]`: Rice, floats quantised as fpack does).
    public init(path: String, width: Int, height: Int, planes: Int = 1, headerCards: [String],
                provenance: FITSIO.Provenance = FITSIO.Provenance(), overwrite: Bool = false) throws {
        guard width > 0, height > 0, planes > 0 else { throw FITSError.io("writing \(path): empty \(width)x\(height) image") }
        do { try AtomicFile.checkWritable(path, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(path) }
            throw FITSError.io(e.description)
        }
        self.path = path
        self.width = width
        self.height = height
        self.planes = planes
        self.overwrite = overwrite
        let tmp = AtomicFile.temporaryPath(for: path)
        self.temporary = tmp
        var status: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        ffinit(&f, path.hasSuffix(".fz") ? tmp + "[compress]" : tmp, &status)
        if status != 0 || f == nil { throw FITSError.cfitsio("creating \(path)", status, FITSIO.errorText(status)) }
        var naxes = planes > 1 ? [width, height, planes] : [width, height]
        ffcrim(f, FLOAT_IMG, Int32(naxes.count), &naxes, &status)
        for card in headerCards {
            var c = Array(card.utf8CString)
            let cls = ffgkcl(&c)
            if [TYP_STRUC_KEY, TYP_CMPRS_KEY, TYP_SCAL_KEY, TYP_NULL_KEY, TYP_DIM_KEY, TYP_RANG_KEY, TYP_CKSUM_KEY].contains(cls) {
                continue
            }
            let key = String(card.prefix(8)).trimmingCharacters(in: " ")
            if key == "END" || key == "EXTEND" { continue }
            ffprec(f, card, &status)
        }
        for (key, value, comment) in provenance.keywords {
            switch value {
            case .string(let s): ffpkys(f, key, s, comment, &status)
            case .int(let v): ffpkyj(f, key, v, comment, &status)
            case .float(let v): ffpkyg(f, key, v, 10, comment, &status)
            case .bool(let b): ffpkyl(f, key, b ? 1 : 0, comment, &status)
            case .ints(let a): ffpkys(f, key, a.map(String.init).joined(separator: ","), comment, &status)
            case .floats(let a): ffpkys(f, key, a.map { String($0) }.joined(separator: ","), comment, &status)
            }
        }
        for h in provenance.history { ffphis(f, h, &status) }
        if status != 0 {
            var s: Int32 = 0
            ffclos(f, &s)
            unlink(tmp)
            throw FITSError.cfitsio("writing the header of \(path)", status, FITSIO.errorText(status))
        }
        self.file = f
    }

    deinit { abort() }

    /// Writes whole rows starting at row `y0` (0-based); `pixels.count` must be a multiple of the width.
    public func writeRows(_ y0: Int, _ pixels: UnsafeBufferPointer<Float>, plane: Int = 0) throws {
        guard let f = file else { throw FITSError.io("writing \(path): the file is already closed") }
        guard pixels.count % width == 0, y0 >= 0, y0 + pixels.count / width <= height, plane >= 0, plane < planes else {
            throw FITSError.io("writing \(path): \(pixels.count) pixels at row \(y0) do not fit the \(width)x\(height) image")
        }
        if pixels.isEmpty { return }
        var status: Int32 = 0
        var first = planes > 1 ? [1, y0 + 1, plane + 1] : [1, y0 + 1]
        if path.hasSuffix(".fz") {
            // Tile compression quantises floats: NaN must be written as cfitsio nulls (ZBLANK).
            var nullValue: Float = -9.11912e-36  // cfitsio's FLOATNULLVALUE
            var copy = pixels.map { $0.isFinite ? $0 : nullValue }
            ffppxn(f, TFLOAT, &first, Int64(copy.count), &copy, &nullValue, &status)
        } else {
            ffppx(f, TFLOAT, &first, Int64(pixels.count), UnsafeMutableRawPointer(mutating: pixels.baseAddress!), &status)
        }
        if status != 0 {
            let e = FITSError.cfitsio("writing \(path)", status, FITSIO.errorText(status))
            abort()
            throw e
        }
    }

    /// Closes the file and renames it into place.
    public func commit() throws {
        guard let f = file else { throw FITSError.io("writing \(path): the file is already closed") }
        var status: Int32 = 0
        ffclos(f, &status)
        file = nil
        if status != 0 {
            unlink(temporary)
            throw FITSError.cfitsio("writing \(path)", status, FITSIO.errorText(status))
        }
        do { try AtomicFile.commit(temporary: temporary, to: path, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(path) }
            throw FITSError.io(e.description)
        }
    }

    /// Drops the temporary file (nothing appears at `path`).
    public func abort() {
        if let f = file {
            var s: Int32 = 0
            ffclos(f, &s)
            file = nil
            unlink(temporary)
        }
    }
}
