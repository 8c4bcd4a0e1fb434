/// Little-endian byte writer used by `ModelWriter`.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    mutating func pad(toMultipleOf m: Int) {
        while bytes.count % m != 0 { bytes.append(0) }
    }
    mutating func patchU32(at offset: Int, _ v: UInt32) {
        for k in 0..<4 { bytes[offset + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
    }
    mutating func patchU64(at offset: Int, _ v: UInt64) {
        for k in 0..<8 { bytes[offset + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
    }
}

/// Bounds-checked little-endian reader over a byte range. Every read checks the remaining
/// length first and throws `ModelFormatError.truncated` instead of reading past the end.
struct ByteReader {
    let base: UnsafeRawBufferPointer
    private(set) var position: Int
    let end: Int
    let context: String

    init(_ base: UnsafeRawBufferPointer, from start: Int, to end: Int, context: String) {
        self.base = base
        self.position = start
        self.end = end
        self.context = context
    }

    var remaining: Int { end - position }

    mutating func need(_ n: Int) throws {
        if n < 0 || n > end - position {
            throw ModelFormatError.truncated("\(context): needs \(n) more bytes at offset \(position), \(max(0, end - position)) left")
        }
    }
    mutating func u8() throws -> UInt8 {
        try need(1); defer { position += 1 }
        return base[position]
    }
    mutating func u16() throws -> UInt16 {
        try need(2); defer { position += 2 }
        return UInt16(base[position]) | UInt16(base[position + 1]) << 8
    }
    mutating func u32() throws -> UInt32 {
        try need(4); defer { position += 4 }
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(base[position + k]) << (8 * UInt32(k)) }
        return v
    }
    mutating func u64() throws -> UInt64 {
        try need(8); defer { position += 8 }
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(base[position + k]) << (8 * UInt64(k)) }
        return v
    }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func f64() throws -> Double { Double(bitPattern: try u64()) }
    mutating func string(maxLength: Int = 1 << 20) throws -> String {
        let n = Int(try u32())
        if n > maxLength { throw ModelFormatError.invalid("\(context): string of \(n) bytes exceeds the limit of \(maxLength)") }
        try need(n)
        let slice = UnsafeRawBufferPointer(rebasing: base[position..<(position + n)])
        position += n
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw ModelFormatError.invalid("\(context): string is not valid UTF-8")
        }
        return s
    }
    mutating func name() throws -> String {
        let s = try string(maxLength: 255)
        if s.isEmpty { throw ModelFormatError.invalid("\(context): empty name") }
        return s
    }
    mutating func skip(_ n: Int) throws {
        try need(n); position += n
    }
}
