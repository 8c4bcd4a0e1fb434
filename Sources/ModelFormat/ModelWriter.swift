/// Serialises a `Model` to the `.acnn` v1 byte layout (docs/MODEL_FORMAT.md).
public enum ModelWriter {
    /// Encodes the model. The graph is validated first, and the derived metadata
    /// (receptive_field, output_offset, size_multiple) is written from the graph.
    public static func encode(_ model: Model) throws -> [UInt8] {
        let analysis = try GraphAnalysis(graph: model.graph, tensorShapes: model.tensors.mapValues { $0.shape })
        var metadata = model.metadata
        for (k, v) in analysis.derivedMetadata { metadata[k] = v }
        try analysis.checkMetadata(metadata)
        for (name, t) in model.tensors {
            if name.isEmpty || name.utf8.count > 255 { throw ModelFormatError.invalid("tensor name '\(name)' must be 1 to 255 bytes") }
            if t.shape.isEmpty || t.shape.count > 4 || t.shape.contains(where: { $0 < 1 || $0 > Int(UInt32.max) }) {
                throw ModelFormatError.invalid("tensor '\(name)' has shape \(t.shape)")
            }
            if t.values.count != t.count {
                throw ModelFormatError.invalid("tensor '\(name)' has \(t.values.count) values for shape \(t.shape)")
            }
        }
        for n in model.graph.nodes {
            for p in n.params where model.tensors[p] == nil {
                throw ModelFormatError.invalid("node '\(n.name)' names tensor '\(p)', which is not given")
            }
        }

        // Tensor data, sorted by name for a deterministic file.
        let names = model.tensors.keys.sorted()
        var data = ByteWriter()
        var entries: [(name: String, t: TensorData, offset: Int, length: Int, crc: UInt32)] = []
        for name in names {
            let t = model.tensors[name]!
            data.pad(toMultipleOf: ModelFile.alignment)
            let start = data.bytes.count
            switch t.storage {
            case .float32: for v in t.values { data.u32(v.bitPattern) }
            case .float16: for v in t.values { data.u16(HalfFloat.fromFloat(v)) }
            }
            let length = data.bytes.count - start
            let crc = data.bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[start..<(start + length)])) }
            entries.append((name, t, start, length, crc))
        }
        data.pad(toMultipleOf: ModelFile.alignment)

        // Sections.
        var meta = ByteWriter()
        writeKeyValues(&meta, metadata)

        var tens = ByteWriter()
        tens.u32(UInt32(entries.count))
        for e in entries {
            tens.string(e.name)
            tens.u8(e.t.storage.rawValue)
            tens.u8(UInt8(e.t.shape.count))
            for d in e.t.shape { tens.u32(UInt32(d)) }
            tens.u64(UInt64(e.offset))
            tens.u64(UInt64(e.length))
            tens.u32(e.crc)
        }

        var graph = ByteWriter()
        let g = model.graph
        graph.u32(UInt32(g.inputs.count))
        for i in g.inputs { graph.string(i.name); graph.u32(UInt32(i.channels)) }
        graph.u32(UInt32(g.outputs.count))
        for o in g.outputs { graph.string(o) }
        graph.u32(UInt32(g.nodes.count))
        for n in g.nodes {
            graph.string(n.name)
            graph.string(n.op.rawValue)
            graph.u32(UInt32(n.inputs.count)); for v in n.inputs { graph.string(v) }
            graph.u32(1); graph.string(n.output)
            graph.u32(UInt32(n.params.count)); for p in n.params { graph.string(p) }
            writeKeyValues(&graph, n.attributes)
        }

        var out = ByteWriter()
        out.bytes.append(contentsOf: ModelFile.magic)
        out.u32(ModelFile.byteOrderMark)
        out.u16(ModelFile.majorVersion)
        out.u16(model.graph.nodes.map { $0.op.minorVersion }.max() ?? 0)
        out.u32(UInt32(ModelFile.preambleLength))
        out.u32(0)  // headerLength, patched
        out.u64(0)  // fileLength
        out.u64(0)  // dataOffset
        out.u64(UInt64(data.bytes.count))
        out.u32(0)  // headerCRC
        out.u32(3)  // sections
        out.u64(0)  // reserved
        precondition(out.bytes.count == ModelFile.preambleLength)
        for (tag, body) in [(ModelFile.tagMeta, meta), (ModelFile.tagTens, tens), (ModelFile.tagGraph, graph)] {
            out.u32(tag)
            out.u32(UInt32(body.bytes.count))
            out.bytes.append(contentsOf: body.bytes)
        }
        let headerLength = out.bytes.count
        if headerLength > Int(UInt32.max) { throw ModelFormatError.invalid("header too large") }
        out.pad(toMultipleOf: ModelFile.alignment)
        let dataOffset = out.bytes.count
        out.patchU32(at: 20, UInt32(headerLength))
        out.patchU64(at: 24, UInt64(dataOffset + data.bytes.count))
        out.patchU64(at: 32, UInt64(dataOffset))
        let crc = CRC32C.checksum(Array(out.bytes[0..<headerLength]))
        out.patchU32(at: 48, crc)
        out.bytes.append(contentsOf: data.bytes)
        return out.bytes
    }

    /// Encodes and writes atomically.
    public static func write(_ model: Model, to path: String, overwrite: Bool = true) throws {
        try AtomicFile.write(try encode(model), to: path, overwrite: overwrite)
    }

    static func writeKeyValues(_ w: inout ByteWriter, _ kv: [String: MetaValue]) {
        w.u32(UInt32(kv.count))
        for k in kv.keys.sorted() {
            let v = kv[k]!
            w.string(k)
            w.u8(v.typeCode)
            switch v {
            case .string(let s): w.string(s)
            case .int(let x): w.i64(x)
            case .float(let x): w.f64(x)
            case .bool(let b): w.u8(b ? 1 : 0)
            case .ints(let a): w.u32(UInt32(a.count)); for x in a { w.i64(x) }
            case .floats(let a): w.u32(UInt32(a.count)); for x in a { w.f64(x) }
            }
        }
    }
}
