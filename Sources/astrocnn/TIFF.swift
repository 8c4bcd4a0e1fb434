import ArgumentParser
import Foundation
import ModelFormat
import Runtime

/// Uncompressed baseline TIFF, the files astrophotography tools exchange (Siril, PixInsight,
/// GraXpert): 8/16/32-bit unsigned integer or 32-bit float samples, grey or RGB, chunky or planar,
/// strips, either byte order. Compressed or tiled files are refused with a message. Written
/// as uncompressed little-endian TIFF, one strip per row band. Pure Swift, command-line only
/// (the runtime reads FITS).
///
/// Orientation: TIFF stores the top row first, FITS the bottom row first (y = 1); as Siril does,
/// the rows are flipped on the way in and out, so a round trip gives the same file layout.
struct TIFFImage: Equatable {
    var width: Int
    var height: Int
    /// 1 (grey) or 3 (RGB).
    var planes: Int
    /// 8, 16 or 32.
    var bits: Int
    /// Float samples (SampleFormat 3), else unsigned integers.
    var isFloat: Bool
    /// planes[k][row * width + x], top row first (as stored in the TIFF).
    var data: [[Float]]

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func isTIFFName(_ path: String) -> Bool {
        let p = path.lowercased()
        return p.hasSuffix(".tif") || p.hasSuffix(".tiff")
    }

    init(width: Int, height: Int, planes: Int, bits: Int, isFloat: Bool, data: [[Float]]) {
        self.width = width; self.height = height; self.planes = planes; self.bits = bits; self.isFloat = isFloat; self.data = data
    }

    init(path: String) throws {
        guard let d = FileManager.default.contents(atPath: path) else { throw FITSError.missingFile(path) }
        let b = [UInt8](d)
        func fail(_ s: String) -> Failure { Failure(description: "\(path): \(s)") }
        guard b.count >= 8 else { throw fail("not a TIFF file (too short)") }
        let little: Bool
        if b[0] == 0x49 && b[1] == 0x49 { little = true } else if b[0] == 0x4D && b[1] == 0x4D { little = false } else { throw fail("not a TIFF file (no II/MM byte order mark)") }
        func u16(_ o: Int) throws -> Int {
            guard o >= 0, o + 2 <= b.count else { throw fail("truncated (offset \(o))") }
            return little ? Int(b[o]) | Int(b[o + 1]) << 8 : Int(b[o]) << 8 | Int(b[o + 1])
        }
        func u32(_ o: Int) throws -> Int {
            guard o >= 0, o + 4 <= b.count else { throw fail("truncated (offset \(o))") }
            return little ? Int(b[o]) | Int(b[o + 1]) << 8 | Int(b[o + 2]) << 16 | Int(b[o + 3]) << 24
                          : Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3])
        }
        let magic = try u16(2)
        if magic == 43 { throw fail("BigTIFF is not supported; save a standard TIFF or convert to FITS (e.g. with Siril)") }
        guard magic == 42 else { throw fail("not a TIFF file (magic \(magic))") }
        let ifd = try u32(4)
        let n = try u16(ifd)
        var tags: [Int: [Int]] = [:]
        for k in 0..<n {
            let e = ifd + 2 + 12 * k
            let tag = try u16(e), type = try u16(e + 2), count = try u32(e + 4)
            let size: Int
            switch type {
            case 3: size = 2
            case 4: size = 4
            case 1, 2, 6, 7: size = 1
            default: continue  // rationals, doubles...: not needed
            }
            guard count <= 1 << 24 else { throw fail("tag \(tag) has \(count) values") }
            let at = count * size <= 4 ? e + 8 : try u32(e + 8)
            var values: [Int] = []
            values.reserveCapacity(count)
            for i in 0..<count {
                switch size {
                case 2: values.append(try u16(at + 2 * i))
                case 4: values.append(try u32(at + 4 * i))
                default:
                    guard at + i < b.count else { throw fail("truncated tag \(tag)") }
                    values.append(Int(b[at + i]))
                }
            }
            tags[tag] = values
        }
        guard let w = tags[256]?.first, let h = tags[257]?.first, w > 0, h > 0 else { throw fail("no image size (ImageWidth/ImageLength)") }
        let compression = tags[259]?.first ?? 1
        guard compression == 1 else {
            throw fail("TIFF compression \(compression) is not supported (uncompressed only); save it uncompressed or convert it to FITS (e.g. with Siril)")
        }
        if tags[322] != nil { throw fail("tiled TIFF is not supported; save it with strips or convert it to FITS (e.g. with Siril)") }
        let spp = tags[277]?.first ?? 1
        let photometric = tags[262]?.first ?? 1
        guard (spp == 1 && (photometric == 1 || photometric == 0)) || (spp == 3 && photometric == 2) else {
            throw fail("\(spp) samples per pixel with photometric interpretation \(photometric) is not supported (grey or RGB only)")
        }
        if photometric == 0 { throw fail("WhiteIsZero TIFF is not supported; convert it to FITS (e.g. with Siril)") }
        let bitsList = tags[258] ?? [1]
        guard let bits = bitsList.first, bitsList.allSatisfy({ $0 == bits }), [8, 16, 32].contains(bits) else {
            throw fail("\(bitsList) bits per sample is not supported (8, 16 or 32)")
        }
        let format = tags[339]?.first ?? 1
        guard format == 1 || (format == 3 && bits == 32) else {
            throw fail("sample format \(format) with \(bits) bits is not supported (unsigned integers or 32-bit float)")
        }
        let planar = tags[284]?.first ?? 1
        guard planar == 1 || planar == 2 else { throw fail("planar configuration \(planar) is not supported") }
        guard w <= 1 << 20, h <= 1 << 20, (w * h).multipliedReportingOverflow(by: spp * bits / 8).partialValue < 1 << 34 else {
            throw fail("image \(w)x\(h) is too large")
        }
        guard let offsets = tags[273], let counts = tags[279], offsets.count == counts.count, !offsets.isEmpty else {
            throw fail("no strips (StripOffsets/StripByteCounts)")
        }
        // Concatenate the strips: chunky gives rows of interleaved samples, planar gives planes one after the other.
        let bytesPerSample = bits / 8
        let total = w * h * spp * bytesPerSample
        guard total <= b.count else { throw fail("the image needs \(total) bytes of pixels, the file has \(b.count) (truncated?)") }
        var raw = [UInt8]()
        raw.reserveCapacity(total)
        for (o, c) in zip(offsets, counts) {
            guard o >= 0, c >= 0, o + c <= b.count else { throw fail("a strip lies past the end of the file (truncated?)") }
            raw += b[o..<(o + c)]
        }
        guard raw.count >= total else { throw fail("the strips hold \(raw.count) bytes, the image needs \(total)") }
        var data = [[Float]](repeating: [Float](repeating: 0, count: w * h), count: spp)
        raw.withUnsafeBytes { r in
            for i in 0..<(w * h) {
                for k in 0..<spp {
                    let idx = planar == 2 ? k * w * h + i : i * spp + k
                    let o = idx * bytesPerSample
                    let v: Float
                    switch bits {
                    case 8: v = Float(r[o])
                    case 16:
                        let u = r.loadUnaligned(fromByteOffset: o, as: UInt16.self)
                        v = Float(little ? UInt16(littleEndian: u) : UInt16(bigEndian: u))
                    default:
                        let u0 = r.loadUnaligned(fromByteOffset: o, as: UInt32.self)
                        let u = little ? UInt32(littleEndian: u0) : UInt32(bigEndian: u0)
                        v = format == 3 ? Float(bitPattern: u) : Float(u)
                    }
                    data[k][i] = v
                }
            }
        }
        self.init(width: w, height: h, planes: spp, bits: bits, isFloat: format == 3, data: data)
    }

    /// The file's bytes: little-endian, uncompressed, chunky, one strip per 64 kB or so.
    func encoded(description: String = "") -> [UInt8] {
        var out = [UInt8]()
        func put16(_ v: Int) { out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
        func put32(_ v: Int) { out += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24 & 0xFF)] }
        let bps = bits / 8
        let rowBytes = width * planes * bps
        let rowsPerStrip = max(1, min(height, (64 << 10) / max(1, rowBytes)))
        let strips = (height + rowsPerStrip - 1) / rowsPerStrip
        // Header, then pixel data, then the arrays and the IFD.
        out += [0x49, 0x49]; put16(42); put32(0)  // IFD offset patched below
        var stripOffsets: [Int] = [], stripCounts: [Int] = []
        for s in 0..<strips {
            let y0 = s * rowsPerStrip, y1 = min(height, y0 + rowsPerStrip)
            stripOffsets.append(out.count)
            stripCounts.append((y1 - y0) * rowBytes)
            for y in y0..<y1 {
                for x in 0..<width {
                    for k in 0..<planes {
                        let v = data[k][y * width + x]
                        switch (bits, isFloat) {
                        case (32, true): put32(Int(v.bitPattern))
                        case (16, _): put16(Int(max(0, min(65535, v.isFinite ? v.rounded() : 0))))
                        case (8, _): out.append(UInt8(max(0, min(255, v.isFinite ? v.rounded() : 0))))
                        default: put32(Int(max(0, min(4294967295, Double(v.isFinite ? v.rounded() : 0)))))
                        }
                    }
                }
            }
        }
        if out.count % 2 == 1 { out.append(0) }
        func array32(_ a: [Int]) -> Int { let at = out.count; for v in a { put32(v) }; return at }
        let offsetsAt = strips > 1 ? array32(stripOffsets) : stripOffsets[0]
        let countsAt = strips > 1 ? array32(stripCounts) : stripCounts[0]
        var bitsAt = bits
        if planes > 2 { bitsAt = out.count; for _ in 0..<planes { put16(bits) } }
        var formatAt = isFloat ? 3 : 1
        if planes > 2 { formatAt = out.count; for _ in 0..<planes { put16(isFloat ? 3 : 1) } }
        var text = Array((description.isEmpty ? "astrocnn" : description).utf8) + [0]
        let textAt = out.count
        out += text
        text = []
        if out.count % 2 == 1 { out.append(0) }
        let ifd = out.count
        var entries: [(Int, Int, Int, Int)] = [  // tag, type, count, value or offset
            (256, 4, 1, width), (257, 4, 1, height), (258, 3, planes, bitsAt), (259, 3, 1, 1),
            (262, 3, 1, planes == 3 ? 2 : 1), (270, 2, description.isEmpty ? 9 : description.utf8.count + 1, textAt),
            (273, 4, strips, offsetsAt), (277, 3, 1, planes), (278, 4, 1, rowsPerStrip), (279, 4, strips, countsAt),
            (284, 3, 1, 1), (339, 3, planes, formatAt),
        ]
        entries.sort { $0.0 < $1.0 }
        put16(entries.count)
        for (tag, type, count, value) in entries {
            put16(tag); put16(type); put32(count)
            if type == 3 && count == 1 { put16(value); put16(0) } else { put32(value) }
        }
        put32(0)
        out[4] = UInt8(ifd & 0xFF); out[5] = UInt8(ifd >> 8 & 0xFF); out[6] = UInt8(ifd >> 16 & 0xFF); out[7] = UInt8(ifd >> 24 & 0xFF)
        return out
    }

    /// Writes the file atomically (temporary name, then rename); an existing file is replaced
    /// only with `overwrite`.
    func write(to path: String, overwrite: Bool, description: String = "") throws {
        do {
            try AtomicFile.checkWritable(path, overwrite: overwrite)
            try AtomicFile.write(encoded(description: description), to: path, overwrite: overwrite)
        } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(path) }
            throw FITSError.io(e.description)
        }
    }

    /// The image as a FITS file (float32; a 3-plane cube for RGB; rows flipped to FITS order).
    func writeFITS(to path: String, source: String, overwrite: Bool = true) throws {
        let cards = ["HISTORY Converted from TIFF \((source as NSString).lastPathComponent) (\(bits)-bit \(isFloat ? "float" : "integer"), rows flipped)"]
        let wr = try FITSWriter(path: path, width: width, height: height, planes: planes, headerCards: cards.map { $0.padding(toLength: 80, withPad: " ", startingAt: 0) }, overwrite: overwrite)
        for k in 0..<planes {
            var flipped = [Float](repeating: 0, count: width * height)
            for y in 0..<height { for x in 0..<width { flipped[(height - 1 - y) * width + x] = data[k][y * width + x] } }
            try flipped.withUnsafeBufferPointer { try wr.writeRows(0, $0, plane: k) }
        }
        try wr.commit()
    }

    /// A FITS image (2-D, or 3 planes for RGB) as a TIFF of `bits` bits (32: float), rows flipped.
    init(fits path: String, bits: Int, isFloat: Bool) throws {
        let probe = try FITSProbe(path: path)
        guard probe.planes == 1 || probe.planes == 3 else {
            throw TIFFImage.Failure(description: "\(path): \(probe.planes) planes cannot be written as TIFF (grey or RGB only); write FITS")
        }
        let readers = try probe.planeReaders(path: path, hdu: nil)
        var data: [[Float]] = []
        for r in readers {
            var p = [Float](), v = [Bool]()
            try r.readRows(0, r.height, pixels: &p, invalid: &v)
            var flipped = [Float](repeating: 0, count: p.count)
            for y in 0..<r.height { for x in 0..<r.width { flipped[(r.height - 1 - y) * r.width + x] = p[y * r.width + x] } }
            data.append(flipped)
        }
        self.init(width: probe.width, height: probe.height, planes: readers.count, bits: bits, isFloat: isFloat, data: data)
    }
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert between uncompressed TIFF (8/16/32-bit grey or RGB) and FITS (float32, RGB as 3 planes); rows flipped as Siril does.")

    @Argument(help: "Input (.tif/.tiff or FITS).")
    var input: String

    @Argument(help: "Output (.tif/.tiff or FITS).")
    var output: String

    @Option(help: "TIFF output: 16 (unsigned integers, rounded and clipped to 0-65535) or 32 (float). Default: the input TIFF's, else 32.")
    var bits: Int?

    @Flag(help: "Replace the output if it exists.")
    var overwrite = false

    func run() throws {
        if let b = bits, b != 16 && b != 32 { throw failure("--bits must be 16 or 32") }
        do {
            let inTIFF = TIFFImage.isTIFFName(input), outTIFF = TIFFImage.isTIFFName(output)
            if inTIFF {
                let t = try TIFFImage(path: input)
                if outTIFF {
                    var o = t
                    if let b = bits { o.bits = b; o.isFloat = b == 32 }
                    try o.write(to: output, overwrite: overwrite)
                } else {
                    try AtomicFile.checkWritable(output, overwrite: overwrite)
                    try t.writeFITS(to: output, source: input, overwrite: overwrite)
                }
                print("converted \(input) (\(t.width)x\(t.height), \(t.planes) plane\(t.planes == 1 ? "" : "s"), \(t.bits)-bit) -> \(output)")
            } else {
                guard outTIFF else { throw ScaleError.badInput("one of the two files must be a TIFF (.tif/.tiff)") }
                let b = bits ?? 32
                let t = try TIFFImage(fits: input, bits: b, isFloat: b == 32)
                try t.write(to: output, overwrite: overwrite)
                print("converted \(input) (\(t.width)x\(t.height), \(t.planes) plane\(t.planes == 1 ? "" : "s")) -> \(output) (\(b)-bit)")
            }
        } catch let e as ExitCode { throw e } catch {
            throw failure(describe(error))
        }
    }
}
