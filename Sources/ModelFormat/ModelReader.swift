/// One entry of the tensor table.
public struct TensorEntry: Equatable, Sendable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Offset from the start of the file.
    public var fileOffset: Int
    public var byteLength: Int
    public var crc: UInt32
    public var count: Int { shape.reduce(1, *) }
}

/// Reads and validates an `.acnn` file (docs/MODEL_FORMAT.md, "Validation"). Any damage throws a
/// `ModelFormatError`; no input, however malformed, makes it trap.
public struct ModelReader: @unchecked Sendable {
    public let version: (major: Int, minor: Int)
    public let metadata: [String: MetaValue]
    public let graph: Graph
    public let tensors: [TensorEntry]
    public let analysis: GraphAnalysis
    /// CRC-32C of the whole file: identifies the exact model (written into FITS headers).
    public let fileChecksum: UInt32
    public let fileSize: Int
    private let storage: AnyObject?
    private let bytes: UnsafeRawBufferPointer

    /// Opens a file by memory-mapping it.
    public init(path: String) throws {
        let mapped = try MappedFile(path: path)
        try self.init(bytes: mapped.bytes, owner: mapped)
    }

    /// Parses bytes held in an array (copied into an owned buffer).
    public init(bytes array: [UInt8]) throws {
        let box = OwnedBytes(array)
        try self.init(bytes: box.bytes, owner: box)
    }

    private init(bytes: UnsafeRawBufferPointer, owner: AnyObject) throws {
        self.storage = owner
        self.bytes = bytes
        let size = bytes.count
        self.fileSize = size
        if size < ModelFile.preambleLength {
            if size >= 4, Array(bytes[0..<4]) != Array(ModelFile.magic[0..<4]) {
                throw ModelFormatError.notAModel("bad magic (expected \"ACNN\")")
            }
            throw ModelFormatError.truncated("file has \(size) bytes, the preamble alone is \(ModelFile.preambleLength)")
        }
        if Array(bytes[0..<8]) != ModelFile.magic {
            if Array(bytes[0..<4]) == Array(ModelFile.magic[0..<4]) {
                throw ModelFormatError.notAModel("magic damaged after \"ACNN\" (was the file transferred in text mode?)")
            }
            throw ModelFormatError.notAModel("bad magic (expected \"ACNN\")")
        }
        var r = ByteReader(bytes, from: 8, to: ModelFile.preambleLength, context: "preamble")
        let bom = try r.u32()
        if bom != ModelFile.byteOrderMark {
            throw ModelFormatError.notAModel("byte-order mark is \(hex(bom)), expected 0x0A0B0C0D (wrong endianness or damage)")
        }
        let major = Int(try r.u16()), minor = Int(try r.u16())
        if major != Int(ModelFile.majorVersion) { throw ModelFormatError.unsupportedVersion(major: major, minor: minor) }
        version = (major, minor)
        let preambleLength = Int(try r.u32())
        let headerLength = Int(try r.u32())
        let fileLength = try r.u64()
        let dataOffset = try r.u64()
        let dataLength = try r.u64()
        let headerCRC = try r.u32()
        let sectionCount = Int(try r.u32())

        if fileLength != UInt64(size) {
            if fileLength > UInt64(size) {
                throw ModelFormatError.truncated("the header says \(fileLength) bytes, the file has \(size)")
            }
            throw ModelFormatError.invalid("the header says \(fileLength) bytes, the file has \(size) (trailing data)")
        }
        if preambleLength < ModelFile.preambleLength || preambleLength > headerLength {
            throw ModelFormatError.invalid("preamble length \(preambleLength) is out of range")
        }
        if headerLength > size { throw ModelFormatError.truncated("header of \(headerLength) bytes in a \(size)-byte file") }
        if dataOffset % UInt64(ModelFile.alignment) != 0 || dataOffset < UInt64(headerLength) || dataOffset > UInt64(size) {
            throw ModelFormatError.invalid("data offset \(dataOffset) is not a 64-aligned offset after the header")
        }
        if dataLength != UInt64(size) - dataOffset {
            throw ModelFormatError.invalid("data offset \(dataOffset) + length \(dataLength) != file size \(size)")
        }

        // Header checksum, computed with its own field zeroed.
        var crc = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: bytes[0..<48]))
        crc = withUnsafeBytes(of: UInt32(0)) { CRC32C.update(crc, $0) }
        crc = CRC32C.update(crc, UnsafeRawBufferPointer(rebasing: bytes[52..<headerLength]))
        if crc != headerCRC {
            throw ModelFormatError.checksumMismatch("header CRC is \(hex(crc)), stored \(hex(headerCRC))")
        }

        // Sections.
        var sections: [UInt32: (Int, Int)] = [:]
        var s = ByteReader(bytes, from: preambleLength, to: headerLength, context: "section list")
        for _ in 0..<sectionCount {
            let tag = try s.u32()
            let len = Int(try s.u32())
            try s.need(len)
            if sections[tag] != nil, [ModelFile.tagMeta, ModelFile.tagTens, ModelFile.tagGraph].contains(tag) {
                throw ModelFormatError.invalid("section \(fourCCString(tag)) appears twice")
            }
            sections[tag] = (s.position, s.position + len)
            try s.skip(len)
        }
        func section(_ tag: UInt32) throws -> ByteReader {
            guard let (a, b) = sections[tag] else { throw ModelFormatError.invalid("required section \(fourCCString(tag)) is missing") }
            return ByteReader(bytes, from: a, to: b, context: "section \(fourCCString(tag))")
        }

        var meta = try section(ModelFile.tagMeta)
        metadata = try ModelReader.readKeyValues(&meta)

        var tens = try section(ModelFile.tagTens)
        let tcount = Int(try tens.u32())
        if tcount > tens.remaining / 26 { throw ModelFormatError.invalid("tensor count \(tcount) does not fit the table") }
        var entries: [TensorEntry] = []
        var names = Set<String>()
        for _ in 0..<tcount {
            let name = try tens.name()
            if !names.insert(name).inserted { throw ModelFormatError.invalid("tensor '\(name)' appears twice") }
            guard let dtype = DType(rawValue: try tens.u8()) else { throw ModelFormatError.invalid("tensor '\(name)' has an unknown dtype") }
            let rank = Int(try tens.u8())
            if rank < 1 || rank > 4 { throw ModelFormatError.invalid("tensor '\(name)' has rank \(rank)") }
            var shape: [Int] = []
            var count = 1
            for _ in 0..<rank {
                let d = Int(try tens.u32())
                if d < 1 { throw ModelFormatError.invalid("tensor '\(name)' has a zero dimension") }
                let (c, o) = count.multipliedReportingOverflow(by: d)
                if o || c > 1 << 31 { throw ModelFormatError.invalid("tensor '\(name)' is too large") }
                count = c
                shape.append(d)
            }
            let offset = try tens.u64()
            let length = try tens.u64()
            let tcrc = try tens.u32()
            if offset % UInt64(ModelFile.alignment) != 0 { throw ModelFormatError.invalid("tensor '\(name)' is not 64-byte aligned") }
            if length != UInt64(count * dtype.size) {
                throw ModelFormatError.invalid("tensor '\(name)' has \(length) bytes, its shape \(shape) needs \(count * dtype.size)")
            }
            if offset > dataLength || length > dataLength - offset {
                throw ModelFormatError.invalid("tensor '\(name)' lies outside the data section")
            }
            entries.append(TensorEntry(name: name, dtype: dtype, shape: shape, fileOffset: Int(dataOffset + offset),
                                       byteLength: Int(length), crc: tcrc))
        }
        let sorted = entries.sorted { $0.fileOffset < $1.fileOffset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.fileOffset + a.byteLength > b.fileOffset {
            throw ModelFormatError.invalid("tensors '\(a.name)' and '\(b.name)' overlap")
        }
        // Every byte of the file is covered: CRCs for the header and tensors, zeros elsewhere.
        func requireZeros(_ a: Int, _ b: Int, _ what: String) throws {
            var i = a
            while i < b {
                if bytes[i] != 0 { throw ModelFormatError.invalid("non-zero byte at offset \(i) in \(what)") }
                i += 1
            }
        }
        try requireZeros(headerLength, Int(dataOffset), "the padding after the header")
        var cursor = Int(dataOffset)
        for e in sorted {
            try requireZeros(cursor, e.fileOffset, "the padding before tensor '\(e.name)'")
            cursor = e.fileOffset + e.byteLength
        }
        try requireZeros(cursor, size, "the padding after the last tensor")
        tensors = entries

        var gr = try section(ModelFile.tagGraph)
        graph = try ModelReader.readGraph(&gr)
        var shapes: [String: [Int]] = [:]
        for e in entries { shapes[e.name] = e.shape }
        analysis = try GraphAnalysis(graph: graph, tensorShapes: shapes)
        try analysis.checkMetadata(metadata)
        fileChecksum = CRC32C.checksum(bytes)
    }

    /// The entry for a tensor name.
    public func entry(_ name: String) -> TensorEntry? { tensors.first { $0.name == name } }

    /// Whether a tensor's stored bytes match its CRC.
    public func verify(_ e: TensorEntry) -> Bool {
        CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[e.fileOffset..<(e.fileOffset + e.byteLength)])) == e.crc
    }

    /// Decodes a tensor to float32 after checking its CRC.
    public func values(of e: TensorEntry) throws -> [Float] {
        if !verify(e) { throw ModelFormatError.checksumMismatch("tensor '\(e.name)'") }
        let raw = UnsafeRawBufferPointer(rebasing: bytes[e.fileOffset..<(e.fileOffset + e.byteLength)])
        switch e.dtype {
        case .float32:
            #if _endian(little)
            // The stored little-endian floats are the host's: one copy, no zero-fill first.
            return [Float](unsafeUninitializedCapacity: e.count) { buf, n in
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: raw)
                n = e.count
            }
            #else
            return (0..<e.count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
            #endif
        case .float16:
            var out = [Float](repeating: 0, count: e.count)
            for i in 0..<e.count { out[i] = HalfFloat.toFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            return out
        }
    }

    /// The whole model with every tensor decoded and checksum-verified.
    public func model() throws -> Model {
        var t: [String: TensorData] = [:]
        for e in tensors { t[e.name] = TensorData(shape: e.shape, values: try values(of: e), storage: e.dtype) }
        return Model(metadata: metadata, graph: graph, tensors: t)
    }

    static func readKeyValues(_ r: inout ByteReader) throws -> [String: MetaValue] {
        let n = Int(try r.u32())
        if n > r.remaining / 6 { throw ModelFormatError.invalid("\(r.context): \(n) entries do not fit") }
        var kv: [String: MetaValue] = [:]
        for _ in 0..<n {
            let k = try r.name()
            if kv[k] != nil { throw ModelFormatError.invalid("\(r.context): key '\(k)' appears twice") }
            let type = try r.u8()
            switch type {
            case 1: kv[k] = .string(try r.string())
            case 2: kv[k] = .int(try r.i64())
            case 3: kv[k] = .float(try r.f64())
            case 4:
                let b = try r.u8()
                if b > 1 { throw ModelFormatError.invalid("\(r.context): bool '\(k)' is \(b)") }
                kv[k] = .bool(b == 1)
            case 5, 6:
                let c = Int(try r.u32())
                if c > r.remaining / 8 { throw ModelFormatError.truncated("\(r.context): array '\(k)' of \(c) elements") }
                var ints: [Int64] = [], floats: [Double] = []
                for _ in 0..<c { if type == 5 { ints.append(try r.i64()) } else { floats.append(try r.f64()) } }
                kv[k] = type == 5 ? .ints(ints) : .floats(floats)
            default:
                throw ModelFormatError.invalid("\(r.context): key '\(k)' has unknown value type \(type)")
            }
        }
        return kv
    }

    static func readGraph(_ r: inout ByteReader) throws -> Graph {
        func names(_ what: String) throws -> [String] {
            let n = Int(try r.u32())
            if n > r.remaining / 5 { throw ModelFormatError.invalid("graph: \(n) \(what) do not fit") }
            return try (0..<n).map { _ in try r.name() }
        }
        let ni = Int(try r.u32())
        if ni > r.remaining / 9 { throw ModelFormatError.invalid("graph: \(ni) inputs do not fit") }
        var inputs: [GraphInput] = []
        for _ in 0..<ni {
            let name = try r.name()
            inputs.append(GraphInput(name: name, channels: Int(try r.u32())))
        }
        let outputs = try names("outputs")
        let nn = Int(try r.u32())
        if nn > r.remaining / 20 { throw ModelFormatError.invalid("graph: \(nn) nodes do not fit") }
        var nodes: [Node] = []
        for _ in 0..<nn {
            let name = try r.name()
            let opName = try r.name()
            guard let op = Op(rawValue: opName) else { throw ModelFormatError.graph("node '\(name)' has unknown op '\(opName)'") }
            let ins = try names("node inputs")
            let outs = try names("node outputs")
            if outs.count != 1 { throw ModelFormatError.graph("node '\(name)' must have exactly one output, has \(outs.count)") }
            let params = try names("node parameters")
            let attrs = try readKeyValues(&r)
            nodes.append(Node(name: name, op: op, inputs: ins, output: outs[0], params: params, attributes: attrs))
        }
        return Graph(inputs: inputs, outputs: outputs, nodes: nodes)
    }
}

final class OwnedBytes {
    let pointer: UnsafeMutableRawPointer
    let bytes: UnsafeRawBufferPointer
    init(_ a: [UInt8]) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(a.count, 1), alignment: 64)
        a.withUnsafeBytes { if $0.count > 0 { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        pointer = p
        bytes = UnsafeRawBufferPointer(start: p, count: a.count)
    }
    deinit { pointer.deallocate() }
}

func hex(_ v: UInt32) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return "0x" + String(repeating: "0", count: 8 - s.count) + s
}

func fourCCString(_ tag: UInt32) -> String {
    let b = (0..<4).map { UInt8(truncatingIfNeeded: tag >> (8 * UInt32($0))) }
    if b.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return "'" + String(decoding: b, as: UTF8.self) + "'" }
    return hex(tag)
}

/// Hex form of a checksum, as printed by the tools (e.g. "0x1A2B3C4D").
public func checksumString(_ v: UInt32) -> String { hex(v) }
