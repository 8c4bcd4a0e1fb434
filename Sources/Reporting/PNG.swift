/// A minimal PNG encoder (8-bit RGB, zlib 'stored' blocks, no dependencies) and a raster canvas
/// with lines, markers and a 5x7 bitmap font: enough for benchmark plots, loss curves and
/// image previews.
public struct RGB: Equatable, Sendable {
    public var r: UInt8, g: UInt8, b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
    public static let white = RGB(255, 255, 255), black = RGB(0, 0, 0), grey = RGB(200, 200, 200)
    public static let palette = [RGB(31, 119, 180), RGB(255, 127, 14), RGB(44, 160, 44), RGB(214, 39, 40),
                                 RGB(148, 103, 189), RGB(140, 86, 75), RGB(227, 119, 194), RGB(127, 127, 127)]
}

public struct Canvas: Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [RGB]

    public init(width: Int, height: Int, background: RGB = .white) {
        self.width = width
        self.height = height
        pixels = [RGB](repeating: background, count: width * height)
    }

    public mutating func set(_ x: Int, _ y: Int, _ c: RGB) {
        if x >= 0 && x < width && y >= 0 && y < height { pixels[y * width + x] = c }
    }

    public mutating func line(_ x0: Double, _ y0: Double, _ x1: Double, _ y1: Double, _ c: RGB, thickness: Int = 1) {
        let n = Int(max(abs(x1 - x0), abs(y1 - y0)).rounded(.up)) + 1
        for i in 0...n {
            let t = Double(i) / Double(n)
            let x = Int((x0 + (x1 - x0) * t).rounded()), y = Int((y0 + (y1 - y0) * t).rounded())
            for dy in 0..<thickness { for dx in 0..<thickness { set(x + dx - thickness / 2, y + dy - thickness / 2, c) } }
        }
    }

    public mutating func marker(_ x: Double, _ y: Double, _ c: RGB, size: Int = 3) {
        let xi = Int(x.rounded()), yi = Int(y.rounded())
        for dy in -size...size { for dx in -size...size where abs(dx) + abs(dy) <= size { set(xi + dx, yi + dy, c) } }
    }

    public mutating func fill(x: Int, y: Int, w: Int, h: Int, _ c: RGB) {
        for yy in y..<(y + h) { for xx in x..<(x + w) { set(xx, yy, c) } }
    }

    /// Draws text with the 5x7 font (lowercase is drawn as uppercase); `scale` enlarges it.
    public mutating func text(_ s: String, x: Int, y: Int, _ c: RGB = .black, scale: Int = 1, vertical: Bool = false) {
        var cx = 0
        for ch in s.uppercased() {
            let glyph = Font5x7.glyph(ch)
            for row in 0..<7 {
                for col in 0..<5 where glyph[row] & (0x10 >> UInt8(col)) != 0 {
                    for sy in 0..<scale { for sx in 0..<scale {
                        let gx = cx + col * scale + sx, gy = row * scale + sy
                        if vertical { set(x + gy, y - gx, c) } else { set(x + gx, y + gy, c) }
                    } }
                }
            }
            cx += 6 * scale
        }
    }

    public static func textWidth(_ s: String, scale: Int = 1) -> Int { s.count * 6 * scale }

    /// The PNG file bytes.
    public func png() -> [UInt8] {
        var raw: [UInt8] = []
        raw.reserveCapacity((width * 3 + 1) * height)
        for y in 0..<height {
            raw.append(0)
            for x in 0..<width { let p = pixels[y * width + x]; raw.append(p.r); raw.append(p.g); raw.append(p.b) }
        }
        return PNGEncoder.encode(width: width, height: height, colorType: 2, scanlines: raw)
    }
}

public enum PNGEncoder {
    /// 8-bit greyscale PNG from row-major bytes.
    public static func grey(width: Int, height: Int, _ v: [UInt8]) -> [UInt8] {
        var raw: [UInt8] = []
        raw.reserveCapacity((width + 1) * height)
        for y in 0..<height { raw.append(0); raw.append(contentsOf: v[(y * width)..<((y + 1) * width)]) }
        return encode(width: width, height: height, colorType: 0, scanlines: raw)
    }

    static func encode(width: Int, height: Int, colorType: UInt8, scanlines: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var ihdr: [UInt8] = []
        ihdr += be32(UInt32(width)) + be32(UInt32(height)) + [8, colorType, 0, 0, 0]
        chunk(&out, "IHDR", ihdr)
        // zlib stream of stored (uncompressed) deflate blocks.
        var z: [UInt8] = [0x78, 0x01]
        var i = 0
        repeat {
            let n = min(65535, scanlines.count - i)
            let final: UInt8 = i + n >= scanlines.count ? 1 : 0
            z.append(final)
            z.append(UInt8(n & 0xFF)); z.append(UInt8(n >> 8))
            z.append(UInt8(~n & 0xFF)); z.append(UInt8((~n >> 8) & 0xFF))
            z.append(contentsOf: scanlines[i..<(i + n)])
            i += n
        } while i < scanlines.count
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in scanlines { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        z += be32(b << 16 | a)
        chunk(&out, "IDAT", z)
        chunk(&out, "IEND", [])
        return out
    }

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }

    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func chunk(_ out: inout [UInt8], _ type: String, _ data: [UInt8]) {
        out += be32(UInt32(data.count))
        let body = Array(type.utf8) + data
        out += body
        var c: UInt32 = 0xFFFF_FFFF
        for byte in body { c = crcTable[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
        out += be32(~c)
    }
}

enum Font5x7 {
    static let glyphs: [Character: [UInt8]] = [
        "0": [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], "1": [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        "2": [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], "3": [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        "4": [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], "5": [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        "6": [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], "7": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        "8": [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], "9": [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        "A": [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11], "B": [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        "C": [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E], "D": [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        "E": [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F], "F": [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        "G": [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F], "H": [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        "I": [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], "J": [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        "K": [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], "L": [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        "M": [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11], "N": [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        "O": [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], "P": [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        "Q": [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D], "R": [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        "S": [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E], "T": [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        "U": [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], "V": [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        "W": [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A], "X": [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        "Y": [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04], "Z": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ".": [0, 0, 0, 0, 0, 0x0C, 0x0C], ",": [0, 0, 0, 0, 0x0C, 0x04, 0x08], "-": [0, 0, 0, 0x1F, 0, 0, 0],
        "+": [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0], ":": [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0], "/": [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        "(": [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], ")": [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        "%": [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03], "=": [0, 0, 0x1F, 0, 0x1F, 0, 0], "^": [0x04, 0x0A, 0x11, 0, 0, 0, 0],
        "_": [0, 0, 0, 0, 0, 0, 0x1F], "'": [0x04, 0x04, 0, 0, 0, 0, 0], "*": [0, 0x15, 0x0E, 0x1F, 0x0E, 0x15, 0],
        "<": [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02], ">": [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
    ]
    static let blank: [UInt8] = [0, 0, 0, 0, 0, 0, 0]
    static func glyph(_ c: Character) -> [UInt8] { glyphs[c] ?? blank }
}
