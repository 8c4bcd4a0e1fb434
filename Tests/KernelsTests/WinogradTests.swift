import Kernels
import XCTest

/// Winograd F(2x2,3x3), F(4x4,3x3), F(6x6,3x3) and F(3x3,6x6) against the scalar reference on
/// random shapes (odd sizes, partial tiles, images smaller than a tile), 'same' and 'valid'
/// padding, every ISA, activations, and any split of the tile rows.
final class WinogradTests: XCTestCase {
    var isas: [KernelISA] { KernelISA.allCases.filter { $0.supported } }

    /// The stated bound (docs/PERFORMANCE.md): in float32 every variant errs by at most
    /// 2e-6 x r^2 C x max|x| x max|w| (measured worst in this test, printed below, is far under it).
    func bound(_ r: Int, _ c: Int, _ xScale: Float, _ wScale: Float) -> Float { 2e-6 * Float(r * r * c) * xScale * wScale + 1e-6 }

    /// G is derived from B^T and A^T: in Float64 the algorithm is exact (to 1e-12).
    func testDerivedTransformsAreExact() {
        for v in WinogradVariant.allCases {
            let g = v.g
            XCTAssertEqual(g.count, v.n)
            XCTAssertTrue(g.allSatisfy { $0.count == v.r })
        }
        // y = A^T [ (G g) ⊙ (B^T d) ] is the correlation of d with g, in 1-D (so in 2-D).
        var rng = TestRNG(seed: 5)
        for v in WinogradVariant.allCases {
            let (g, bt, at) = (v.g, v.bt, v.at)
            for _ in 0..<5 {
                let d = (0..<v.n).map { _ in Double(rng.float(-1, 1)) }, w = (0..<v.r).map { _ in Double(rng.float(-1, 1)) }
                let gw = g.map { row in zip(row, w).map(*).reduce(0, +) }
                let bd = bt.map { row in zip(row, d).map(*).reduce(0, +) }
                let prod = zip(gw, bd).map(*)
                for i in 0..<v.m {
                    let y = zip(at[i], prod).map(*).reduce(0, +)
                    let direct = (0..<v.r).map { d[i + $0] * w[$0] }.reduce(0, +)
                    XCTAssertEqual(y, direct, accuracy: 1e-12, "\(v.label) output \(i)")
                }
            }
        }
        // Known G of F(4x4,3x3) (Lavin & Gray) and F(2x2,3x3).
        let g4: [[Double]] = [[1.0 / 4, 0, 0], [-1.0 / 6, -1.0 / 6, -1.0 / 6], [-1.0 / 6, 1.0 / 6, -1.0 / 6],
                              [1.0 / 24, 1.0 / 12, 1.0 / 6], [1.0 / 24, -1.0 / 12, 1.0 / 6], [0, 0, 1]]
        for (a, b) in zip(WinogradVariant.f4x3.g.joined(), g4.joined()) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        let g2: [[Double]] = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        for (a, b) in zip(WinogradVariant.f2x3.g.joined(), g2.joined()) { XCTAssertEqual(a, b, accuracy: 1e-12) }
    }

    func testMatchesReferenceOnRandomShapes() {
        var rng = TestRNG(seed: 41)
        var cases: [(c: Int, o: Int, h: Int, w: Int)] = [(32, 32, 16, 16), (3, 4, 5, 7), (17, 8, 13, 29), (64, 12, 9, 40), (1, 4, 1, 1), (5, 8, 7, 131)]
        for _ in 0..<10 { cases.append((Int.random(in: 1...40, using: &rng), 4 * Int.random(in: 1...6, using: &rng),
                                        Int.random(in: 1...23, using: &rng), Int.random(in: 1...45, using: &rng))) }
        var worstRatio = [WinogradVariant: Float]()
        for t in cases {
            for variant in WinogradVariant.allCases {
                for padding in [ConvPadding.same, .valid] {
                    let r = variant.r
                    // 'valid': the case's size is the output's.
                    let (ih, iw) = padding == .same ? (t.h, t.w) : (t.h + r - 1, t.w + r - 1)
                    // Realistic scales: image-like inputs in [0, 1], He-like weights.
                    let x = FeatureMap(channels: t.c, height: ih, width: iw, data: (0..<(t.c * ih * iw)).map { _ in rng.float(0, 1) })
                    let ws = Float((2.0 / Double(r * r * t.c)).squareRoot())
                    let wt = (0..<(t.o * t.c * r * r)).map { _ in rng.float(-ws, ws) }, b = rng.floats(t.o)
                    let expected = Reference.conv2d(x, weight: wt, bias: b, outChannels: t.o, kh: r, kw: r, padding: padding)
                    XCTAssertEqual(expected.height, t.h)
                    let conv = WinogradConv(weight: wt, bias: b, outChannels: t.o, inChannels: t.c, variant: variant, padding: padding)
                    for isa in isas {
                        for act in [Activation.none, .relu, .leakyRelu(0.02)] {
                            // Margins hold garbage: the kernel must read the padding as zero anyway.
                            let inB = PlanarBuffer(PlanarLayout(channels: t.c, height: ih, width: iw, margin: 3))
                            inB.storage.update(repeating: 7, count: inB.layout.allocation)
                            inB.view().load(x)
                            let out = PlanarBuffer(PlanarLayout(channels: t.o, height: t.h, width: t.w, margin: 1))
                            let tileRows = (t.h + variant.m - 1) / variant.m
                            // Two disjoint pieces, as threads would run them.
                            let cut = tileRows / 2
                            conv.run(inB.view(), out.view(), activation: act, isa: isa, tileRows: 0..<cut)
                            conv.run(inB.view(), out.view(), activation: act, isa: isa, tileRows: cut..<tileRows)
                            var ref = expected
                            if case .leakyRelu(let a) = act { ref = Reference.leakyRelu(ref, alpha: a) }
                            if act == .relu { ref = Reference.relu(ref) }
                            let got = out.view().featureMap()
                            var worst: Float = 0
                            for i in 0..<ref.data.count { worst = max(worst, abs(got.data[i] - ref.data[i])) }
                            let bnd = bound(r, t.c, 1, ws)
                            worstRatio[variant] = max(worstRatio[variant] ?? 0, worst / bnd)
                            XCTAssertLessThanOrEqual(worst, bnd, "\(variant.label) \(padding) \(isa) \(t) \(act)")
                            let v = out.view()
                            for c in 0..<t.o { for y in 0..<t.h { XCTAssertEqual(v.pointer(c, y, t.w)[0], 0, "column past the width") } }
                        }
                    }
                }
            }
        }
        print("Winograd: worst error / bound: " + WinogradVariant.allCases.map { "\($0.label) \(worstRatio[$0] ?? 0)" }.joined(separator: ", "))
    }
}
