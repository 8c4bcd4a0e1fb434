import Kernels
import XCTest

/// Every fast kernel against the scalar reference, on every ISA this CPU supports, with random
/// shapes, odd sizes, every kernel size of the seed models, and margins ('same' padding).
final class FastKernelTests: XCTestCase {
    var isas: [KernelISA] { KernelISA.allCases.filter { $0.supported } }

    /// Tolerance for a sum of `terms` products of magnitude up to `scale`.
    func tolerance(_ terms: Int, _ scale: Float = 1) -> Float { Float(terms) * scale * 4e-7 + 1e-6 }

    func planar(_ m: FeatureMap, margin: Int) -> PlanarBuffer {
        let b = PlanarBuffer(PlanarLayout(channels: m.channels, height: m.height, width: m.width, margin: margin))
        b.view().load(m)
        return b
    }

    /// The reference output after the activation.
    func activated(_ m: FeatureMap, _ act: Activation) -> FeatureMap {
        switch act {
        case .none: return m
        case .relu: return Reference.relu(m)
        case .leakyRelu(let a): return Reference.leakyRelu(m, alpha: a)
        }
    }

    func testConvMatchesReferenceOnRandomShapes() {
        var rng = TestRNG(seed: 10)
        var cases: [(c: Int, o: Int, kh: Int, kw: Int, h: Int, w: Int, pad: ConvPadding)] = [
            (1, 64, 10, 10, 30, 33, .valid),  // Flamary layer 1
            (64, 16, 6, 6, 14, 41, .valid),   // Flamary layer 2
            (16, 1, 5, 5, 9, 17, .valid),     // Flamary layer 3
            (1, 1, 19, 19, 25, 20, .valid),   // Flamary 1-layer linear CNN
            (8, 12, 3, 3, 11, 37, .same),     // U-net 3x3
            (5, 3, 1, 1, 7, 16, .valid),      // 1x1 head
        ]
        for _ in 0..<30 {
            let k = [1, 2, 3, 5, 6, 7][Int.random(in: 0..<6, using: &rng)]
            let pad: ConvPadding = k % 2 == 1 && Bool.random(using: &rng) ? .same : .valid
            cases.append((Int.random(in: 1...9, using: &rng), Int.random(in: 1...11, using: &rng), k,
                          [1, 2, 3, 5][Int.random(in: 0..<4, using: &rng)] == 1 ? k : k, k + Int.random(in: 0...20, using: &rng),
                          k + Int.random(in: 0...70, using: &rng), pad))
        }
        for t in cases {
            let x = FeatureMap(channels: t.c, height: t.h, width: t.w, data: rng.floats(t.c * t.h * t.w))
            let wt = rng.floats(t.o * t.c * t.kh * t.kw), b = rng.floats(t.o)
            let expected = Reference.conv2d(x, weight: wt, bias: b, outChannels: t.o, kh: t.kh, kw: t.kw, padding: t.pad)
            let packed = PackedConv(weight: wt, bias: b, outChannels: t.o, inChannels: t.c, kh: t.kh, kw: t.kw)
            for isa in isas {
                for act in [Activation.none, .relu, .leakyRelu(0.02)] {
                    let input = planar(x, margin: t.pad == .same ? (t.kh - 1) / 2 : 0)
                    let outLayout = PlanarLayout(channels: t.o, height: expected.height, width: expected.width, margin: 1)
                    let out = PlanarBuffer(outLayout)
                    FastOps.conv2d(input.view(), out.view(), packed, padding: t.pad, activation: act, isa: isa)
                    let ref = activated(expected, act)
                    let got = out.view().featureMap()
                    var worst: Float = 0
                    for i in 0..<ref.data.count { worst = max(worst, abs(got.data[i] - ref.data[i])) }
                    XCTAssertLessThanOrEqual(worst, tolerance(t.c * t.kh * t.kw), "\(isa) \(t) \(act)")
                    // Margins and the columns past the width stay zero (the next 'same' conv reads them).
                    let v = out.view()
                    for c in 0..<t.o {
                        XCTAssertEqual(v.pointer(c, -1, 0)[0], 0)
                        XCTAssertEqual(v.pointer(c, 0, -1)[0], 0)
                        for y in 0..<v.height { XCTAssertEqual(v.pointer(c, y, v.width)[0], 0, "\(isa) \(t): column past the width") }
                    }
                }
            }
        }
    }

    /// Small maps as one GEMM over the patch matrix: against the scalar reference, and the
    /// direct kernel's bits (same order of fused multiply-adds), on every ISA, activation, kernel
    /// size, 'same' and 'valid', odd sizes, output channels no multiple of 4; margins untouched.
    func testIm2colConvMatchesReferenceAndDirectBits() {
        var rng = TestRNG(seed: 31)
        var cases: [(c: Int, o: Int, k: Int, h: Int, w: Int, pad: ConvPadding)] = [
            (256, 256, 3, 8, 8, .same),   // the 16-256 U-net's bottom at 128x128 crops
            (129, 64, 3, 8, 8, .same),    // with the exposure channel
            (16, 12, 3, 4, 6, .same),
        ]
        for _ in 0..<25 {
            let k = [1, 2, 3, 5][Int.random(in: 0..<4, using: &rng)]
            let pad: ConvPadding = k % 2 == 1 && Bool.random(using: &rng) ? .same : .valid
            cases.append((Int.random(in: 1...40, using: &rng), Int.random(in: 1...13, using: &rng), k,
                          Int.random(in: 1...12, using: &rng), Int.random(in: 1...15, using: &rng), pad))
        }
        for t in cases {
            let (ih, iw) = t.pad == .same ? (t.h, t.w) : (t.h + t.k - 1, t.w + t.k - 1)
            let x = FeatureMap(channels: t.c, height: ih, width: iw, data: rng.floats(t.c * ih * iw))
            let wt = rng.floats(t.o * t.c * t.k * t.k), b = rng.floats(t.o)
            let expected = Reference.conv2d(x, weight: wt, bias: b, outChannels: t.o, kh: t.k, kw: t.k, padding: t.pad)
            let packed = PackedConv(weight: wt, bias: b, outChannels: t.o, inChannels: t.c, kh: t.k, kw: t.k)
            for isa in isas {
                for act in [Activation.none, .relu, .leakyRelu(0.02)] {
                    let input = planar(x, margin: t.pad == .same ? (t.k - 1) / 2 : 0)
                    let layout = PlanarLayout(channels: t.o, height: t.h, width: t.w, margin: 1)
                    let (out, direct) = (PlanarBuffer(layout), PlanarBuffer(layout))
                    FastOps.im2colConv2d(input.view(), out.view(), packed, padding: t.pad, activation: act, isa: isa)
                    FastOps.conv2d(input.view(), direct.view(), packed, padding: t.pad, activation: act, isa: isa)
                    let ref = activated(expected, act)
                    let got = out.view().featureMap()
                    var worst: Float = 0
                    for i in 0..<ref.data.count { worst = max(worst, abs(got.data[i] - ref.data[i])) }
                    XCTAssertLessThanOrEqual(worst, tolerance(t.c * t.k * t.k), "\(isa) \(t) \(act)")
                    XCTAssertEqual(got.data.map(\.bitPattern), direct.view().featureMap().data.map(\.bitPattern), "\(isa) \(t) \(act): direct bits")
                    let v = out.view()
                    for c in 0..<t.o {
                        XCTAssertEqual(v.pointer(c, -1, 0)[0], 0)
                        for y in 0..<v.height { XCTAssertEqual(v.pointer(c, y, -1)[0], 0); XCTAssertEqual(v.pointer(c, y, v.width)[0], 0) }
                    }
                }
            }
        }
        XCTAssertTrue(FastOps.prefersIm2col(height: 8, width: 8, isa: .avx512))
        XCTAssertFalse(FastOps.prefersIm2col(height: 16, width: 16, isa: .avx512))
        XCTAssertFalse(FastOps.prefersIm2col(height: 8, width: 8, isa: .avx2))
    }

    func testISAsAgreeAndResultsArePositionIndependent() {
        // The same output pixel computed in a narrow or a wide map gives the same bits.
        var rng = TestRNG(seed: 12)
        let c = 7, o = 5, k = 6
        let wide = FeatureMap(channels: c, height: 12, width: 90, data: rng.floats(c * 12 * 90))
        var narrow = FeatureMap(channels: c, height: 12, width: 20)
        for ch in 0..<c { for y in 0..<12 { for x in 0..<20 { narrow[ch, y, x] = wide[ch, y, x + 33] } } }
        let packed = PackedConv(weight: rng.floats(o * c * k * k), bias: rng.floats(o), outChannels: o, inChannels: c, kh: k, kw: k)
        for isa in isas {
            func run(_ m: FeatureMap) -> FeatureMap {
                let i = planar(m, margin: 0)
                let l = PlanarLayout(channels: o, height: m.height - k + 1, width: m.width - k + 1)
                let out = PlanarBuffer(l)
                FastOps.conv2d(i.view(), out.view(), packed, padding: .valid, activation: .none, isa: isa)
                return out.view().featureMap()
            }
            let a = run(wide), b = run(narrow)
            for ch in 0..<o { for y in 0..<b.height { for x in 0..<b.width {
                XCTAssertEqual(a[ch, y, x + 33].bitPattern, b[ch, y, x].bitPattern, "\(isa)")
            } } }
        }
    }

    /// Interleaved maps (`tapStep` g: element (c, y, x * g + n) is pixel x of sample n), as the
    /// chain trainer runs a group of samples: every sample's output equals, bit for bit, the same
    /// kernel run on that sample alone (and the reference within rounding), for random shapes,
    /// odd sizes, several group sizes and the output rows cut into pieces as threads would.
    func testInterleavedConvEqualsPerSampleConv() {
        var rng = TestRNG(seed: 31)
        var cases: [(c: Int, o: Int, k: Int, h: Int, w: Int, g: Int)] = [
            (1, 64, 10, 10, 33, 8), (64, 16, 6, 6, 24, 3), (16, 1, 5, 5, 19, 8), (1, 1, 19, 19, 25, 2), (3, 5, 3, 7, 7, 1)]
        for _ in 0..<14 {
            let k = Int.random(in: 1...7, using: &rng)
            cases.append((Int.random(in: 1...9, using: &rng), Int.random(in: 1...11, using: &rng), k,
                          k + Int.random(in: 0...12, using: &rng), k + Int.random(in: 0...30, using: &rng),
                          [1, 2, 3, 5, 7, 8][Int.random(in: 0..<6, using: &rng)]))
        }
        for t in cases {
            let oh = t.h - t.k + 1, ow = t.w - t.k + 1
            let samples = (0..<t.g).map { _ in FeatureMap(channels: t.c, height: t.h, width: t.w, data: rng.floats(t.c * t.h * t.w)) }
            let wt = rng.floats(t.o * t.c * t.k * t.k), b = rng.floats(t.o)
            let packed = PackedConv(weight: wt, bias: b, outChannels: t.o, inChannels: t.c, kh: t.k, kw: t.k)
            let input = PlanarBuffer(PlanarLayout(channels: t.c, height: t.h, width: t.w * t.g))
            let iv = input.view()
            for (n, m) in samples.enumerated() { for c in 0..<t.c { for y in 0..<t.h { for x in 0..<t.w {
                iv.pointer(c, y, x * t.g + n)[0] = m[c, y, x]
            } } } }
            for isa in isas {
                for act in [Activation.none, .relu] {
                    let out = PlanarBuffer(PlanarLayout(channels: t.o, height: oh, width: ow * t.g))
                    // Rows in up to three pieces, as the threads of a parallel run would take them.
                    let cuts = [0, oh / 3, (2 * oh) / 3, oh]
                    for i in 0..<3 where cuts[i] < cuts[i + 1] {
                        FastOps.conv2d(iv, out.view(), packed, padding: .valid, activation: act, isa: isa,
                                       rows: cuts[i]..<cuts[i + 1], tapStep: t.g)
                    }
                    let v = out.view()
                    for (n, m) in samples.enumerated() {
                        let alone = PlanarBuffer(PlanarLayout(channels: t.o, height: oh, width: ow))
                        FastOps.conv2d(planar(m, margin: 0).view(), alone.view(), packed, padding: .valid, activation: act, isa: isa)
                        var ref = Reference.conv2d(m, weight: wt, bias: b, outChannels: t.o, kh: t.k, kw: t.k, padding: .valid)
                        if case .relu = act { ref = Reference.relu(ref) }
                        let a = alone.view()
                        var worst: Float = 0, mismatches = 0
                        for c in 0..<t.o { for y in 0..<oh { for x in 0..<ow {
                            let got = v.pointer(c, y, x * t.g + n)[0]
                            if got.bitPattern != a.pointer(c, y, x)[0].bitPattern { mismatches += 1 }
                            worst = max(worst, abs(got - ref[c, y, x]))
                        } } }
                        XCTAssertEqual(mismatches, 0, "\(isa) \(t) \(act) sample \(n): differs from the sample run alone")
                        XCTAssertLessThanOrEqual(worst, tolerance(t.c * t.k * t.k), "\(isa) \(t) \(act) sample \(n)")
                    }
                    for c in 0..<t.o { for y in 0..<oh { XCTAssertEqual(v.pointer(c, y, ow * t.g)[0], 0, "\(isa) \(t): column past the width") } }
                }
            }
        }
    }

    /// The transposed convolution on random shapes: narrow maps (several rows per GEMM chunk),
    /// rows wider than a chunk, odd sizes, row ranges run as separate pieces (as threads do);
    /// columns past the width stay zero.
    func testTransposedConvRandomShapes() {
        var rng = TestRNG(seed: 17)
        var cases: [(c: Int, o: Int, h: Int, w: Int)] = [(1, 1, 1, 1), (7, 3, 5, 130), (33, 9, 2, 3), (16, 8, 9, 17)]
        for _ in 0..<6 { cases.append((Int.random(in: 1...40, using: &rng), Int.random(in: 1...12, using: &rng),
                                       Int.random(in: 1...12, using: &rng), Int.random(in: 1...50, using: &rng))) }
        for t in cases {
            let x = FeatureMap(channels: t.c, height: t.h, width: t.w, data: rng.floats(t.c * t.h * t.w))
            let wt = rng.floats(t.o * t.c * 4), b = rng.floats(t.o)
            let expected = Reference.convTranspose2x2(x, weight: wt, bias: b, outChannels: t.o)
            let packed = FastOps.packTransposed(weight: wt, bias: b, outChannels: t.o, inChannels: t.c)
            for isa in isas {
                let out = PlanarBuffer(PlanarLayout(channels: t.o, height: 2 * t.h, width: 2 * t.w, margin: 1))
                let cut = t.h / 2
                FastOps.convTranspose2x2(planar(x, margin: 1).view(), out.view(), packed, isa: isa, rows: 0..<cut)
                FastOps.convTranspose2x2(planar(x, margin: 1).view(), out.view(), packed, isa: isa, rows: cut..<t.h)
                let got = out.view().featureMap()
                for i in 0..<got.data.count { XCTAssertEqual(got.data[i], expected.data[i], accuracy: tolerance(t.c), "\(isa) \(t)") }
                let v = out.view()
                for c in 0..<t.o { for y in 0..<(2 * t.h) { XCTAssertEqual(v.pointer(c, y, 2 * t.w)[0], 0, "column past the width") } }
            }
        }
    }

    func testPoolTransposedConcatFill() {
        var rng = TestRNG(seed: 13)
        let x = FeatureMap(channels: 3, height: 10, width: 22, data: rng.floats(3 * 10 * 22))
        let pin = planar(x, margin: 1)
        let pout = PlanarBuffer(PlanarLayout(channels: 3, height: 5, width: 11, margin: 1))
        FastOps.maxpool2x2(pin.view(), pout.view())
        XCTAssertEqual(pout.view().featureMap(), Reference.maxpool2x2(x))

        let o = 5
        let wt = rng.floats(o * 3 * 4), b = rng.floats(o)
        let expected = Reference.convTranspose2x2(x, weight: wt, bias: b, outChannels: o)
        for isa in isas {
            let packed = FastOps.packTransposed(weight: wt, bias: b, outChannels: o, inChannels: 3)
            let out = PlanarBuffer(PlanarLayout(channels: o, height: 20, width: 44, margin: 1))
            FastOps.convTranspose2x2(pin.view(), out.view(), packed, isa: isa)
            let got = out.view().featureMap()
            for i in 0..<got.data.count { XCTAssertEqual(got.data[i], expected.data[i], accuracy: tolerance(3), "\(isa)") }
        }
        let f = PlanarBuffer(PlanarLayout(channels: 2, height: 3, width: 5))
        FastOps.fill(f.view(channelOffset: 1, channels: 1), value: 2.5)
        XCTAssertEqual(f.view().featureMap().data, [Float](repeating: 0, count: 15) + [Float](repeating: 2.5, count: 15))
    }
}

/// The weight-gradient kernels (`WeightGradient.accumulate` on the output gradient transposed to
/// pixel-major, and `accumulateSingleChannel` reading one channel in place) against a Float64 sum
/// of the same products, on every ISA, for random tap offsets, odd widths (vector tails), output
/// gradients with a row stride wider than the row, and accumulation onto non-zero sums.
final class WeightGradientKernelTests: XCTestCase {
    func testWeightGradientsMatchAFloat64Sum() {
        var rng = TestRNG(seed: 31)
        for isa in KernelISA.allCases where isa.supported {
            for (h, w, outChannels) in [(1, 1, 1), (3, 17, 1), (5, 33, 2), (4, 40, 3), (7, 9, 5), (2, 64, 16), (6, 161, 1)] {
                let taps = 24 + Int.random(in: 0...13, using: &rng)
                let aRow = w + Int.random(in: 0...9, using: &rng)
                let inputCount = (h + 6) * aRow + 64
                let input = (0..<inputCount).map { _ in rng.float(-1, 1) }
                var offsets = (0..<taps).map { _ in Int.random(in: 0...(6 * aRow), using: &rng) }
                let padded = WeightGradient.paddedTaps(taps)
                offsets += [Int](repeating: offsets[taps - 1], count: padded - taps)
                let dyRow = w + Int.random(in: 0...5, using: &rng)
                let dy = (0..<(outChannels * h * dyRow)).map { _ in rng.float(-1, 1) }
                let ldb = WeightGradient.paddedChannels(outChannels, isa: isa)
                let start = (0..<(padded * ldb)).map { _ in rng.float(-1, 1) }
                var expected = [Double](repeating: 0, count: padded * ldb)
                for t in 0..<taps { for o in 0..<outChannels {
                    var s = Double(start[t * ldb + o])
                    for y in 0..<h { for x in 0..<w {
                        s += Double(input[offsets[t] + y * aRow + x]) * Double(dy[(o * h + y) * dyRow + x])
                    } }
                    expected[t * ldb + o] = s
                } }
                let tol = Double(h * w) * 4e-7 + 1e-5
                // Transposed: dYT[(y * w + x) * ldb + o].
                var dyt = [Float](repeating: 0, count: h * w * ldb)
                for o in 0..<outChannels { for y in 0..<h { for x in 0..<w { dyt[(y * w + x) * ldb + o] = dy[(o * h + y) * dyRow + x] } } }
                var acc = start
                input.withUnsafeBufferPointer { ip in offsets.withUnsafeBufferPointer { op in dyt.withUnsafeBufferPointer { dp in
                    acc.withUnsafeMutableBufferPointer { ap in
                        WeightGradient.accumulate(input: ip.baseAddress!, rowStride: aRow, offsets: op, outHeight: h, outWidth: w,
                                                  dYT: dp.baseAddress!, ldb: ldb, acc: ap.baseAddress!, isa: isa)
                    }
                } } }
                var single = start
                input.withUnsafeBufferPointer { ip in offsets.withUnsafeBufferPointer { op in dy.withUnsafeBufferPointer { dp in
                    single.withUnsafeMutableBufferPointer { ap in
                        for o in 0..<outChannels {
                            WeightGradient.accumulateSingleChannel(input: ip.baseAddress!, rowStride: aRow, offsets: op, outHeight: h,
                                                                   outWidth: w, dY: dp.baseAddress! + o * h * dyRow, dYRow: dyRow,
                                                                   acc: ap.baseAddress! + o, accStride: ldb, isa: isa)
                        }
                    }
                } } }
                for t in 0..<taps { for o in 0..<outChannels {
                    let i = t * ldb + o
                    XCTAssertEqual(Double(acc[i]), expected[i], accuracy: tol, "\(isa) \(h)x\(w) o=\(o) tap \(t): transposed")
                    XCTAssertEqual(Double(single[i]), expected[i], accuracy: tol, "\(isa) \(h)x\(w) o=\(o) tap \(t): in place")
                } }
                // Padding rows and unused channels are left alone by the single-channel kernel.
                for t in 0..<padded { for o in outChannels..<ldb { XCTAssertEqual(single[t * ldb + o], start[t * ldb + o]) } }
            }
        }
    }

    /// The blocked transpose is an exact copy on every ISA: full blocks, edge rows and columns,
    /// strides wider than the data, nothing outside the destination rows written.
    func testTransposeIsExact() {
        var rng = TestRNG(seed: 32)
        for isa in KernelISA.allCases where isa.supported {
            for (rows, cols) in [(1, 1), (3, 5), (8, 8), (16, 16), (17, 33), (64, 161), (16, 138), (40, 7)] {
                let srcStride = cols + Int.random(in: 0...4, using: &rng), dstStride = rows + Int.random(in: 0...4, using: &rng)
                let src = (0..<(rows * srcStride)).map { _ in rng.float(-1, 1) }
                var dst = [Float](repeating: .nan, count: cols * dstStride)
                src.withUnsafeBufferPointer { s in dst.withUnsafeMutableBufferPointer { d in
                    WeightGradient.transpose(s.baseAddress!, srcStride: srcStride, rows: rows, cols: cols, into: d.baseAddress!,
                                             dstStride: dstStride, isa: isa)
                } }
                for c in 0..<cols { for r in 0..<dstStride {
                    if r < rows {
                        XCTAssertEqual(dst[c * dstStride + r].bitPattern, src[r * srcStride + c].bitPattern, "\(isa) \(rows)x\(cols) (\(r), \(c))")
                    } else {
                        XCTAssertTrue(dst[c * dstStride + r].isNaN, "\(isa) \(rows)x\(cols): wrote past row \(rows)")
                    }
                } }
            }
        }
    }
}
