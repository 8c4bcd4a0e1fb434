import Kernels
import XCTest

/// Winograd F(4x4, 3x3) against the scalar reference on random shapes (odd sizes, partial tiles),
/// every ISA, activations, and any split of the tile rows.
final class WinogradTests: XCTestCase {
    var isas: [KernelISA] { KernelISA.allCases.filter { $0.supported } }

    /// The stated bound (docs/PERFORMANCE.md): F(4,3) in float32 errs by at most 2e-6 x 9C x
    /// max|x| x max|w| (measured worst: about 3.5e-7 of that scale; direct convolution about
    /// 1e-7).
    func bound(_ c: Int, _ xScale: Float, _ wScale: Float) -> Float { 2e-6 * Float(9 * c) * xScale * wScale + 1e-6 }

    func testMatchesReferenceOnRandomShapes() {
        var rng = TestRNG(seed: 41)
        var cases: [(c: Int, o: Int, h: Int, w: Int)] = [(32, 32, 16, 16), (3, 4, 5, 7), (17, 8, 13, 29), (64, 12, 9, 40), (1, 4, 1, 1)]
        for _ in 0..<12 { cases.append((Int.random(in: 1...40, using: &rng), 4 * Int.random(in: 1...6, using: &rng),
                                        Int.random(in: 1...23, using: &rng), Int.random(in: 1...45, using: &rng))) }
        var worstRatio: Float = 0, worst2: Float = 0
        for t in cases {
            // Realistic scales: image-like inputs in [0, 1], He-like weights.
            let x = FeatureMap(channels: t.c, height: t.h, width: t.w, data: (0..<(t.c * t.h * t.w)).map { _ in rng.float(0, 1) })
            let ws = Float((2.0 / Double(9 * t.c)).squareRoot())
            let wt = (0..<(t.o * t.c * 9)).map { _ in rng.float(-ws, ws) }, b = rng.floats(t.o)
            let expected = Reference.conv2d(x, weight: wt, bias: b, outChannels: t.o, kh: 3, kw: 3, padding: .same)
            for tile in [4, 2] {
            let conv = WinogradConv(weight: wt, bias: b, outChannels: t.o, inChannels: t.c, tileSize: tile)
            for isa in isas {
                for act in [Activation.none, .leakyRelu(0.02)] {
                    // Margins hold garbage: the kernel must read the padding as zero anyway.
                    let inB = PlanarBuffer(PlanarLayout(channels: t.c, height: t.h, width: t.w, margin: 1))
                    inB.storage.update(repeating: 7, count: inB.layout.allocation)
                    inB.view().load(x)
                    let out = PlanarBuffer(PlanarLayout(channels: t.o, height: t.h, width: t.w, margin: 1))
                    let tileRows = (t.h + tile - 1) / tile
                    // Two disjoint pieces, as threads would run them.
                    let cut = tileRows / 2
                    conv.run(inB.view(), out.view(), activation: act, isa: isa, tileRows: 0..<cut)
                    conv.run(inB.view(), out.view(), activation: act, isa: isa, tileRows: cut..<tileRows)
                    var ref = expected
                    if case .leakyRelu(let a) = act { ref = Reference.leakyRelu(ref, alpha: a) }
                    let got = out.view().featureMap()
                    var worst: Float = 0
                    for i in 0..<ref.data.count { worst = max(worst, abs(got.data[i] - ref.data[i])) }
                    let bnd = bound(t.c, 1, ws)
                    worstRatio = max(worstRatio, worst / bnd)
                    XCTAssertLessThanOrEqual(worst, bnd, "F(\(tile),3) \(isa) \(t) \(act)")
                    if tile == 2 { worst2 = max(worst2, worst / bnd) }
                    let v = out.view()
                    for c in 0..<t.o { for y in 0..<t.h { XCTAssertEqual(v.pointer(c, y, t.w)[0], 0, "column past the width") } }
                }
            }
            }
        }
        print("Winograd: worst error / bound = \(worstRatio) (F(2,3) alone: \(worst2))")
    }
}
