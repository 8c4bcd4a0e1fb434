import Foundation
import ModelFormat

extension SplitMix64 {
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

extension Fuzzer {
    /// Values that break FITS readers: zero, negative, odd BITPIX, sizes at integer limits, huge,
    /// non-numbers and wrong types.
    static let nastyValues = ["0", "-1", "1", "2", "3", "7", "9", "-7", "8", "16", "32", "64", "-32", "-64", "12", "2147483647",
                              "-2147483648", "4294967296", "9223372036854775807", "2000000000", "46341", "65536", "1E300", "-1E300",
                              "NAN", "INF", "0.0", "1E-300", "'abc'", "T", "F", "''", "1.5", "-0.0", "100000", "99999999999999999999"]
    static let structuralKeys = ["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BSCALE", "BZERO", "BLANK", "EXTEND", "PCOUNT", "GCOUNT",
                                 "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZQUANTIZ", "ZVAL1", "ZVAL2",
                                 "THEAP", "TFORM1", "TFIELDS", "ZSCALE", "ZZERO", "ZBLANK", "XTENSION", "SIMPLE", "EXTNAME", "ZSIMPLE"]

    /// Offsets of the cards whose keyword is `key` (80-byte aligned, in header blocks).
    static func cardOffsets(_ b: [UInt8], _ key: String) -> [Int] {
        let k = Array(key.padding(toLength: 8, withPad: " ", startingAt: 0).utf8)
        var out: [Int] = []
        var o = 0
        while o + 80 <= b.count {
            if Array(b[o..<(o + 8)]) == k { out.append(o) }
            o += 80
        }
        return out
    }

    /// Writes `value` into the value field (columns 11-30) of every card `key` (or of one at random).
    static func setKeyword(_ b: inout [UInt8], _ key: String, _ value: String, rng: inout SplitMix64) -> Bool {
        var offsets = cardOffsets(b, key)
        if offsets.isEmpty { return false }
        if rng.next() % 2 == 0 { offsets = [rng.pick(offsets)] }
        let card = Array(FITSBytes.card(key, value).utf8)
        for o in offsets { for i in 0..<80 { b[o + i] = card[i] } }
        return true
    }

    /// One mutated FITS case: bytes, kind, seed name and the file name to write (the suffix
    /// decides how cfitsio opens it).
    func mutateFITS(_ rng: inout SplitMix64) -> ([UInt8], FITSMutation, String, String) {
        let seed = rng.pick(fitsSeeds)
        var b = seed.bytes
        let kinds = config.kinds.isEmpty ? FITSMutation.allCases : FITSMutation.allCases.filter { config.kinds.contains($0.rawValue) }
        let kind = kinds.isEmpty ? .none : rng.pick(kinds)
        let headerEnd = min(b.count, max(2880, (Fuzzer.cardOffsets(b, "END").first ?? 2800) / 2880 * 2880 + 2880))
        switch kind {
        case .none: break
        case .headerBytes, .compressedBytes:
            let span = kind == .headerBytes ? headerEnd : b.count
            for _ in 0..<(1 + rng.below(8)) {
                let i = rng.below(span)
                b[i] = rng.next() % 3 == 0 ? UInt8(rng.pick(Array("0123456789-+.E '=/".utf8))) : UInt8(truncatingIfNeeded: rng.next())
            }
        case .dataBytes:
            if b.count > headerEnd { for _ in 0..<(1 + rng.below(32)) { b[headerEnd + rng.below(b.count - headerEnd)] = UInt8(truncatingIfNeeded: rng.next()) } }
        case .truncate:
            b = Array(b.prefix(rng.below(b.count)))
        case .keyword:
            _ = Fuzzer.setKeyword(&b, rng.pick(Fuzzer.structuralKeys), rng.pick(Fuzzer.nastyValues), rng: &rng)
        case .keywords:
            for _ in 0..<(2 + rng.below(4)) { _ = Fuzzer.setKeyword(&b, rng.pick(Fuzzer.structuralKeys), rng.pick(Fuzzer.nastyValues), rng: &rng) }
        case .removeEnd:
            if let o = Fuzzer.cardOffsets(b, "END").first {
                _ = rng.next()  // kept so that recorded runs (docs/ROBUSTNESS.md) replay the same cases
                for i in 0..<3 { b[o + i] = 0x20 }
            }
        case .insertCards:
            // Duplicate or random cards in place of blank ones before END.
            if let end = Fuzzer.cardOffsets(b, "END").first {
                let n = 1 + rng.below(4)
                var cards: [[UInt8]] = []
                for _ in 0..<n {
                    cards.append(Array(FITSBytes.card(rng.pick(Fuzzer.structuralKeys), rng.pick(Fuzzer.nastyValues)).utf8))
                }
                var insert: [UInt8] = cards.flatMap { $0 }
                insert = Array(insert.prefix(max(0, headerEnd - end - 80)))
                if !insert.isEmpty {
                    b.replaceSubrange(end..<(end + insert.count), with: insert)
                    let endCard = Array("END".padding(toLength: 80, withPad: " ", startingAt: 0).utf8)
                    if end + insert.count + 80 <= headerEnd { b.replaceSubrange((end + insert.count)..<(end + insert.count + 80), with: endCard) }
                }
            }
        case .declaredHuge:
            let key = rng.pick(["NAXIS1", "NAXIS2", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "NAXIS3"])
            let v = rng.pick(["2000000000", "46341", "65536", "1000000", "300000", "2147483647", "9223372036854775807", "4294967297"])
            _ = Fuzzer.setKeyword(&b, key, v, rng: &rng)
            if rng.next() % 2 == 0 { _ = Fuzzer.setKeyword(&b, key == "NAXIS1" ? "NAXIS2" : "NAXIS1", v, rng: &rng) }
        case .tinyShape:
            _ = Fuzzer.setKeyword(&b, "NAXIS1", String(1 + rng.below(4)), rng: &rng)
            if rng.next() % 2 == 0 { _ = Fuzzer.setKeyword(&b, "NAXIS2", String(1 + rng.below(4)), rng: &rng) }
        case .nonFinite:
            // IEEE specials (and integer extremes) written over aligned data words.
            if b.count > headerEnd + 8 {
                let words: [[UInt8]] = [[0x7f, 0xc0, 0, 0], [0x7f, 0x80, 0, 0], [0xff, 0x80, 0, 0], [0x7f, 0x7f, 0xff, 0xff], [0x80, 0, 0, 0],
                                        [0x7f, 0xf8, 0, 0, 0, 0, 0, 0], [0xff, 0xf0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1]]
                for _ in 0..<(1 + rng.below(64)) {
                    let w = rng.pick(words)
                    let at = headerEnd + rng.below((b.count - headerEnd - w.count) / 4) * 4
                    b.replaceSubrange(at..<(at + w.count), with: w)
                }
            }
        case .appendGarbage:
            if rng.next() % 2 == 0 {
                b += (0..<(1 + rng.below(6000))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                b += FITSBytes.image(bitpix: rng.pick([8, 16, -32, 7]), axes: [rng.pick([0, 5, 100000]), 3], values: [],
                                     cards: [FITSBytes.card("EXTNAME", "'SCI     '")], primary: false)
            }
        case .splice:
            let other = rng.pick(fitsSeeds).bytes
            let cut = min(headerEnd, b.count)
            b = Array(b.prefix(cut)) + other.dropFirst(min(other.count, cut))
        }
        let file: String
        switch seed.name {
        case "gzip-file": file = "case.fits.gz"
        case "rice-int16", "gzip1-float": file = "case.fits.fz"
        default: file = "case.fits"
        }
        return (b, kind, seed.name, file)
    }

    /// One mutated model case.
    func mutateModel(_ rng: inout SplitMix64) throws -> ([UInt8], ModelMutation, String) {
        let seed = rng.pick(modelSeeds)
        var b = seed.bytes
        let kinds = config.kinds.isEmpty ? ModelMutation.allCases : ModelMutation.allCases.filter { config.kinds.contains($0.rawValue) }
        let kind = kinds.isEmpty ? .none : rng.pick(kinds)
        let headerLength = b.count >= 24 ? Int(UInt32(b[20]) | UInt32(b[21]) << 8 | UInt32(b[22]) << 16 | UInt32(b[23]) << 24) : b.count
        func fixHeaderCRC() {
            guard headerLength <= b.count, headerLength >= 64 else { return }
            var h = Array(b[0..<headerLength])
            for i in 48..<52 { h[i] = 0 }
            let crc = h.withUnsafeBytes { CRC32C.checksum($0) }
            for i in 0..<4 { b[48 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        }
        switch kind {
        case .none: break
        case .headerBytes, .headerBytesFixedCRC:
            for _ in 0..<(1 + rng.below(6)) { b[rng.below(min(b.count, headerLength))] = UInt8(truncatingIfNeeded: rng.next()) }
            if kind == .headerBytesFixedCRC { fixHeaderCRC() }
        case .fieldValue:
            // A 4- or 8-byte little-endian field anywhere in the header set to an extreme value.
            let values: [UInt64] = [0, 1, 2, 3, 63, 64, 65, 255, 256, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1_0000_0000,
                                    0x7fff_ffff_ffff_ffff, 0xffff_ffff_ffff_ffff, UInt64(b.count), UInt64(b.count + 64)]
            let v = rng.pick(values), width = rng.next() % 2 == 0 ? 4 : 8
            let at = rng.below(max(1, min(b.count, headerLength) - width))
            for i in 0..<width where at + i < b.count { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
            if rng.next() % 4 != 0 { fixHeaderCRC() }
        case .truncate:
            b = Array(b.prefix(rng.below(b.count)))
        case .dataBytes:
            if b.count > headerLength { for _ in 0..<(1 + rng.below(8)) { b[headerLength + rng.below(b.count - headerLength)] = UInt8(truncatingIfNeeded: rng.next()) } }
        case .metadata, .weights, .shapes, .graph:
            // Semantic mutations, written through ModelWriter so that checksums are valid and
            // the reader's and runtime's validation is what must catch them.
            var m = try ModelReader(bytes: b).model()
            switch kind {
            case .metadata:
                let key = rng.pick(["default_tile", "normalization", "name", "assumed_noise_electrons", "sky_sigma_electrons",
                                    "exposure_ratio", "receptive_field", "size_multiple", "output_offset", "task", "training.psf"])
                let value: MetaValue = rng.pick([.int(0), .int(-5), .int(1 << 40), .int(Int64.max), .int(Int64.min), .float(.nan), .float(.infinity),
                                                 .float(-1), .float(1e300), .string(""), .string("bogus"), .string(String(repeating: "x", count: 5000)),
                                                 .ints([]), .ints([1 << 40, -1]), .floats([.nan]), .bool(true)])
                m.metadata[key] = value
            case .weights:
                let name = rng.pick(m.tensors.keys.sorted())
                let special: [Float] = [.nan, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, 0]
                let s = rng.pick(special)
                let all = rng.next() % 2 == 0
                m.tensors[name]!.values = m.tensors[name]!.values.enumerated().map { all || $0.offset % 7 == 0 ? s : $0.element }
            case .shapes:
                let name = rng.pick(m.tensors.keys.sorted())
                var t = m.tensors[name]!
                let axis = rng.below(t.shape.count)
                t.shape[axis] = rng.pick([1, 2, 3, t.shape[axis] + 1, max(1, t.shape[axis] - 1), 64])
                t.values = [Float](repeating: 0.01, count: t.shape.reduce(1, *))
                m.tensors[name] = t
            default:
                var g = m.graph
                let i = rng.below(g.nodes.count)
                switch rng.below(6) {
                case 0: g.nodes[i].attributes["alpha"] = rng.pick([.float(.nan), .float(-1e300), .string("x")])
                case 1: g.nodes[i].attributes["padding"] = rng.pick([.string("bogus"), .string("valid"), .string("same"), .int(3)])
                case 2: g.nodes[i].inputs = g.nodes[i].inputs.reversed() + (rng.next() % 2 == 0 ? [g.nodes[i].output] : [])
                case 3: g.nodes[i].op = rng.pick(Op.allCases)
                case 4: g.nodes.swapAt(i, rng.below(g.nodes.count))
                default: g.nodes[i].attributes["value"] = rng.pick([.float(.infinity), .float(.nan), .string("")])
                }
                m.graph = g
            }
            if let e = try? ModelWriter.encode(m) { b = e } else {
                // The writer refused the model: mutate the bytes instead.
                b[rng.below(b.count)] ^= 0x5a
            }
        }
        return (b, kind, seed.name)
    }
}
