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
                    var ref = expected
                    switch act {
                    case .none: break
                    case .relu: ref = Reference.relu(ref)
                    case .leakyRelu(let a): ref = Reference.leakyRelu(ref, alpha: a)
                    }
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
