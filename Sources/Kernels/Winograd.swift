import Foundation
import KernelsAVX2
import KernelsAVX512

/// A Winograd minimal-filtering algorithm F(m x m, r x r) (Lavin & Gray 2016): each m x m output
/// tile of an r x r convolution is Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A on an n x n input patch,
/// n = m + r - 1, with n^2 multiplications per (input, output) channel pair instead of m^2 r^2.
public enum WinogradVariant: String, Sendable, CaseIterable {
    /// F(2x2, 3x3): 4x4 tiles, 2.25x fewer multiplications, the smallest rounding error.
    case f2x3
    /// F(4x4, 3x3): 6x6 tiles, 4x fewer.
    case f4x3
    /// F(6x6, 3x3): 8x8 tiles, 5.06x fewer.
    case f6x3
    /// F(3x3, 6x6): 8x8 tiles, 5.06x fewer, for 6x6 kernels (the 3-CNN's second layer); the
    /// large-kernel counterpart of F(6x6, 3x3), on the same interpolation points.
    case f3x6

    /// Output tile side.
    public var m: Int { switch self { case .f2x3: 2; case .f4x3: 4; case .f6x3: 6; case .f3x6: 3 } }
    /// Kernel side.
    public var r: Int { self == .f3x6 ? 6 : 3 }
    /// Input tile side, m + r - 1.
    public var n: Int { m + r - 1 }
    /// "F(4x4,3x3)" etc.
    public var label: String { "F(\(m)x\(m),\(r)x\(r))" }
    /// Multiplications of direct convolution per Winograd multiplication.
    public var reduction: Double { Double(m * m * r * r) / Double(n * n) }

    /// The finite interpolation points in the row order of B^T (infinity is the last row).
    public var points: [Double] {
        switch n {
        case 4: return [0, 1, -1]
        case 6: return [0, 1, -1, 2, -2]
        default: return [0, 1, -1, 2, -2, 0.5, -0.5]
        }
    }

    /// B^T (n x n), exactly as the generated input transforms compute it.
    public var bt: [[Double]] {
        switch n {
        case 4: return [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        case 6: return [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        default: return [[1, 0, -5.25, 0, 5.25, 0, -1, 0], [0, 1, 1, -4.25, -4.25, 1, 1, 0],
                         [0, -1, 1, 4.25, -4.25, -1, 1, 0], [0, 0.5, 0.25, -2.5, -1.25, 2, 1, 0],
                         [0, -0.5, 0.25, 2.5, -1.25, -2, 1, 0], [0, 2, 4, -2.5, -5, 0.5, 1, 0],
                         [0, -2, 4, 2.5, -5, -0.5, 1, 0], [0, -1, 0, 5.25, 0, -5.25, 0, 1]]
        }
    }

    /// A^T (m x n), exactly as the generated output transforms compute it.
    public var at: [[Double]] {
        if self == .f2x3 { return [[1, 1, 1, 0], [0, 1, -1, -1]] }
        return (0..<m).map { i in points.map { Self.power($0, i) } + [i == m - 1 ? 1 : 0] }
    }

    static func power(_ p: Double, _ i: Int) -> Double { i == 0 ? 1 : (0..<i).reduce(1) { a, _ in a * p } }

    /// G (n x r), derived from the points, B^T and A^T so that the algorithm is exact. With
    /// V_k the n x k evaluation matrix (rows [1, p, ..., p^(k-1)], infinity row [0, ..., 0, 1]),
    /// correlation is y = V_m^T [ (V_r g) ⊙ (V_n^-T d) ]; if B^T = D V_n^-T and A^T = V_m^T E
    /// for diagonal D, E, then G = (E D)^-1 V_r.
    public var g: [[Double]] {
        func evaluation(_ k: Int) -> [[Double]] {
            (0..<n).map { i in (0..<k).map { j in i < n - 1 ? Self.power(points[i], j) : (j == k - 1 ? 1 : 0) } }
        }
        let vn = evaluation(n), vm = evaluation(m), vr = evaluation(r)
        // D = B^T V_n^T (diagonal).
        var d = [Double](repeating: 0, count: n)
        for i in 0..<n {
            for j in 0..<n {
                let s = (0..<n).reduce(0.0) { $0 + bt[i][$1] * vn[j][$1] }
                if i == j { d[i] = s } else { precondition(abs(s) < 1e-9, "B^T is not a scaled inverse Vandermonde") }
            }
        }
        // E from A^T = V_m^T E, column by column.
        var e = [Double](repeating: 0, count: n)
        for j in 0..<n {
            let i = (0..<m).first { vm[j][$0] != 0 }!
            e[j] = at[i][j] / vm[j][i]
            for i2 in 0..<m { precondition(abs(at[i2][j] - e[j] * vm[j][i2]) < 1e-9, "A^T is not a scaled Vandermonde") }
        }
        return (0..<n).map { i in vr[i].map { $0 / (e[i] * d[i]) } }
    }
}

/// Winograd convolution (stride 1, 'same' or 'valid' padding) with any `WinogradVariant`.
///
/// The element-wise stage is n^2 independent GEMMs, (out x in) transformed weights times
/// (in x tiles) transformed inputs, run on the direct-convolution micro-kernels as 1x1
/// convolutions over rows of tiles. The input and output transforms work on 8 tiles at a time in
/// SIMD8, compiled per ISA (tools/winograd_transforms.swift.in). Results differ from direct
/// convolution by rounding only (bounds in docs/PERFORMANCE.md) and do not depend on how callers
/// split the tile rows.
public final class WinogradConv: @unchecked Sendable {
    public let outChannels: Int
    public let inChannels: Int
    public let variant: WinogradVariant
    public let padding: ConvPadding
    /// Output tile side m.
    public var tileSize: Int { variant.m }
    /// The n^2 transformed weight matrices, packed as 1x1 convolutions.
    let packed: [PackedConv]
    /// Bias per output channel (rewritten by `setWeights`).
    let bias: UnsafeMutablePointer<Float>
    /// Scratch (transformed inputs, products, phase rows) shared by every Winograd convolution:
    /// layers run one after another on each thread, so one buffer per running thread, of the
    /// largest layer's size, serves them all (a pool per layer would make and first-touch one per
    /// layer and thread: about 100 MB for the U-net).
    private var pool: ScratchPool { WinogradConv.sharedPool }
    private static let sharedPool = ScratchPool()

    /// Whether a convolution of this shape may use this variant.
    public static func supports(_ variant: WinogradVariant, outChannels: Int, inChannels: Int, kh: Int, kw: Int, padding: ConvPadding) -> Bool {
        kh == variant.r && kw == variant.r && outChannels % 4 == 0
    }

    /// - weight: OIHW r x r cross-correlation weights.
    public convenience init(weight: [Float], bias: [Float]?, outChannels: Int, inChannels: Int, variant: WinogradVariant,
                            padding: ConvPadding = .same) {
        let r = variant.r
        precondition(weight.count == outChannels * inChannels * r * r)
        self.init(outChannels: outChannels, inChannels: inChannels, variant: variant, padding: padding)
        weight.withUnsafeBufferPointer { w in
            if let b = bias {
                b.withUnsafeBufferPointer { setWeights(w.baseAddress!, bias: $0.baseAddress!) }
            } else {
                setWeights(w.baseAddress!, bias: nil)
            }
        }
    }

    /// A convolution of this shape with zero weights, for `setWeights` to fill (and refill: a
    /// trainer re-transforms its weights after every step without allocating).
    public init(outChannels: Int, inChannels: Int, variant: WinogradVariant, padding: ConvPadding = .same) {
        precondition(outChannels % 4 == 0)
        let n = variant.n
        self.variant = variant
        self.padding = padding
        self.outChannels = outChannels
        self.inChannels = inChannels
        bias = .allocate(capacity: outChannels)
        bias.initialize(repeating: 0, count: outChannels)
        packed = (0..<(n * n)).map { _ in PackedConv(zeroedOutChannels: outChannels, inChannels: inChannels, kh: 1, kw: 1) }
    }

    deinit { bias.deallocate() }

    /// Transforms OIHW r x r weights (`outChannels * inChannels * r * r` floats) and the bias
    /// (`outChannels` floats, nil: zero) into this convolution's matrices, replacing the old
    /// ones. Each (o, c) pair's result is the same whatever the split over cores. Must not run
    /// while `run` does.
    public func setWeights(_ weight: UnsafePointer<Float>, bias b: UnsafePointer<Float>?) {
        let (n, r) = (variant.n, variant.r)
        for o in 0..<outChannels { bias[o] = b?[o] ?? 0 }
        // U[xi][nu][o][c] = (G w G^T)[xi][nu], in Float64, written straight into the n^2 packed
        // 1x1 weight matrices (element (o, c) of matrix k at (o / 4) * 4c + 4 c + o % 4, the
        // layout `PackedConv` gives o x c weights): no intermediate copies of the 4-16x larger
        // transformed weights.
        let pairs = outChannels * inChannels
        let bases = UnsafeMutablePointer<UnsafeMutablePointer<Float>>.allocate(capacity: n * n)
        defer { bases.deallocate() }
        for k in 0..<(n * n) { bases[k] = packed[k].weights }
        let gTable = UnsafeMutablePointer<Double>.allocate(capacity: n * r)
        defer { gTable.deallocate() }
        gTable.initialize(from: variant.g.flatMap { $0 }, count: n * r)
        nonisolated(unsafe) let g = gTable
        // In chunks of (o, c) pairs over the cores (a U-net has about a million pairs); each
        // pair's result is the same whichever chunk computes it.
        let chunks = max(1, min(64, pairs / 4096))
        nonisolated(unsafe) let out = bases
        let cin = inChannels
        nonisolated(unsafe) let w0 = weight
        DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
            // Pairs in sub-blocks of 256: results gathered per pair, then written out as
            // contiguous runs of each of the n^2 matrices.
            let sub = 256
            let t4 = UnsafeMutablePointer<SIMD4<Double>>.allocate(capacity: n * r)  // G w (n x r)
            let wv = UnsafeMutablePointer<SIMD4<Double>>.allocate(capacity: r * r)  // the 4 pairs' weights
            let local = UnsafeMutablePointer<Float>.allocate(capacity: sub * n * n)  // sub is a multiple of 4
            defer { t4.deallocate(); wv.deallocate(); local.deallocate() }
            var start = chunk * pairs / chunks
            let end = (chunk + 1) * pairs / chunks
            while start < end {
                let count = min(sub, end - start)
                // Four pairs at a time in SIMD4 lanes (independent dependency chains); past
                // the last pair the lanes repeat it and their results are not used.
                var q = 0
                while q < count {
                    func pair(_ l: Int) -> UnsafePointer<Float> { w0 + (start + min(q + l, count - 1)) * r * r }
                    let w = (pair(0), pair(1), pair(2), pair(3))
                    // Widened once per 4 pairs (not once per row of G).
                    for x in 0..<(r * r) { wv[x] = SIMD4<Double>(Double(w.0[x]), Double(w.1[x]), Double(w.2[x]), Double(w.3[x])) }
                    for i in 0..<n { for j in 0..<r {
                        var s = SIMD4<Double>()
                        for k in 0..<r { s += g[i * r + k] * wv[k * r + j] }
                        t4[i * r + j] = s
                    } }
                    for i in 0..<n { for j in 0..<n {
                        var s = SIMD4<Double>()
                        for k in 0..<r { s += t4[i * r + k] * g[j * r + k] }
                        let d = local + (i * n + j) * sub + q
                        d[0] = Float(s[0]); d[1] = Float(s[1]); d[2] = Float(s[2]); d[3] = Float(s[3])
                    } }
                    q += 4
                }
                // Pair p = o * cin + c goes to (o / 4) * 4 cin + 4 c + o % 4 of each matrix.
                for k in 0..<(n * n) {
                    let dst = out[k], src = local + k * sub
                    var q = 0
                    while q < count {
                        let p = start + q
                        let o = p / cin, c = p - o * cin
                        let run = min(count - q, cin - c)  // pairs of this output channel
                        let d = dst + (o / 4) * 4 * cin + 4 * c + o % 4
                        for t in 0..<run { d[4 * t] = src[q + t] }
                        q += run
                    }
                }
                start += count
            }
        }
    }

    /// Tiles per column block for an ISA: one row of the GEMM micro-kernel's register block
    /// (4 x 3 vectors of 8 on AVX2, 8 x 3 of 16 on AVX-512), so each block is one micro-kernel
    /// call per 4 (AVX-512: 8) output channels and its transformed inputs stay in L1/L2.
    public static func blockTiles(_ isa: KernelISA) -> Int { isa == .avx512 ? 48 : 24 }

    /// Computes output tile rows `tileRows` (output rows m * t ..< m * t + m, clipped to the
    /// height). For 'same' padding the input has the output's size, for 'valid' r - 1 more in each
    /// direction; rows and columns outside the input read as zero, whatever the margins hold.
    ///
    /// Tiles are processed in blocks of `blockTiles` tiles, in raster order across the tile rows
    /// (see `RasterBlocks`). For each channel and segment of a block, the segment's n input rows are split into m phase rows, P_q[k] = x[m (t0 + k) + q - pad] (zero
    /// outside the image), so that element (i, j) of the patches of 8 consecutive tiles is one
    /// contiguous vector load: P_(j mod m)[t + j / m ..< + 8]; the transformed patches go to
    /// V[k][c][tile]; n^2 GEMMs M[k] = U[k] V[k] follow, then the output transform, whose
    /// phases are interleaved back into the output rows.
    public func run(_ input: PlanarView, _ output: PlanarView, activation: Activation, isa: KernelISA = .best, tileRows: Range<Int>) {
        let (h, w, c, o) = (output.height, output.width, inChannels, outChannels)
        let (m, n, r) = (variant.m, variant.n, variant.r)
        let pad = padding == .same ? (r - 1) / 2 : 0
        let (inH, inW) = (input.height, input.width)
        precondition(input.channels == c && output.channels == o)
        precondition(padding == .same ? (inH == h && inW == w) : (inH == h + r - 1 && inW == w + r - 1))
        let nk = n * n
        let tiles = (w + m - 1) / m
        let vw = isa.vectorWidth
        let tb = Self.blockTiles(isa)
        let phaseLen = tb + 8
        // V[k][c][tile]: each GEMM reads one contiguous c x tb matrix; the matrices are padded by
        // 16 floats so that the input transform's n^2 stores per channel (kStride apart) fall in
        // different L1 sets (c * tb floats alone is a multiple of 2 KiB for c = 64).
        let kStride = c * tb + 16
        // M[k] likewise: the output transform reads the n^2 matrices' rows of one output channel
        // at once, o * tb floats apart (a multiple of 4 KiB for o = 64 on AVX-512); 16 floats of
        // padding spread them over the L1 sets (that phase's time -8 to -15% at 1024², 1 thread).
        let mStride = o * tb + 16
        let vSize = nk * kStride, mSize = nk * mStride + vw, stageSize = n * m * phaseLen, outStage = m * m * phaseLen
        let (buf, capacity) = pool.borrow(vSize + mSize + stageSize + outStage)
        defer { pool.giveBack(buf, capacity: capacity) }
        let v = buf, mm = buf + vSize, stage = mm + mSize, ostage = stage + stageSize
        let (act, alpha) = activation.kernelCode
        let (split, merge) = Self.phaseShuffles(isa, m)
        // A block holds tb tiles in raster order over the tile rows (narrow maps put several tile
        // rows in one block), each segment followed by the positions its last tiles' patches
        // read; a segment that ends the block may spill those past tb, into the stage's slack.
        var blocks = RasterBlocks(rows: tileRows, width: tiles, capacity: tb, gap: (n - 1) / m)
        var segments: [RasterSegment] = []
        segments.reserveCapacity(tb)
        while blocks.nextBlock(&segments) {
            // Every channel writes the same stage positions, so those never written (outside
            // the image) stay zero: clear once per block.
            stage.update(repeating: 0, count: stageSize)
            for ch in 0..<c {
                for seg in segments {
                    let x0 = m * seg.column - pad, y0 = m * seg.row - pad
                    let xEnd = min(inW, x0 + m * seg.count + n - m)   // input columns this segment reads end here
                    for i in 0..<n {
                        let y = y0 + i
                        if y < 0 || y >= inH { continue }
                        split(input.pointer(ch, y, 0), x0, xEnd, stage + i * m * phaseLen + seg.position, phaseLen)
                    }
                }
                Self.inputTransform(isa, n, m, stage, phaseLen, 1, tb, v + ch * tb, kStride)
            }
            // n^2 GEMMs: M[k] (o x tb) = U[k] (o x c) V[k] (c x tb).
            for k in 0..<nk {
                FastOps.gemm(isa, UnsafePointer(v + k * kStride), tb, c, packed[k].weights, packed[k].bias, o / 4, mm + k * mStride, tb, tb / vw)
            }
            // Output transform, bias, activation; interleave the m phases into the rows.
            for oc in 0..<o {
                Self.outputTransform(isa, n, m, mm + oc * tb, mStride, tb, bias[oc], act, alpha, ostage, phaseLen)
                for seg in segments {
                    for i in 0..<m {
                        let yy = m * seg.row + i
                        if yy >= h { break }
                        merge(ostage + i * m * phaseLen + seg.position, phaseLen, output.pointer(oc, yy, 0), m * seg.column,
                              min(w, m * (seg.column + seg.count)))
                    }
                }
            }
        }
    }

    typealias SplitPhases = (UnsafePointer<Float>, Int, Int, UnsafeMutablePointer<Float>, Int) -> Void
    typealias MergePhases = (UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>, Int, Int) -> Void

    /// The ISA's row <-> phase-rows shuffles for tile side m (generated, 8 positions per step):
    /// split(row, x0, xEnd, dst, phaseLen) sends image column x0 + m k + q (for columns
    /// max(x0, 0) ..< xEnd) to dst[q * phaseLen + k]; merge(src, phaseLen, row, x0, xEnd) is the
    /// inverse for output columns x0 ..< xEnd.
    static func phaseShuffles(_ isa: KernelISA, _ m: Int) -> (split: SplitPhases, merge: MergePhases) {
        switch (isa, m) {
        #if arch(x86_64)
        case (.avx512, 2): return (avx512SplitPhases2, avx512MergePhases2)
        case (.avx512, 3): return (avx512SplitPhases3, avx512MergePhases3)
        case (.avx512, 4): return (avx512SplitPhases4, avx512MergePhases4)
        case (.avx512, _): return (avx512SplitPhases6, avx512MergePhases6)
        case (.avx2, 2): return (avx2SplitPhases2, avx2MergePhases2)
        case (.avx2, 3): return (avx2SplitPhases3, avx2MergePhases3)
        case (.avx2, 4): return (avx2SplitPhases4, avx2MergePhases4)
        case (.avx2, _): return (avx2SplitPhases6, avx2MergePhases6)
        #endif
        case (_, 2): return (portableSplitPhases2, portableMergePhases2)
        case (_, 3): return (portableSplitPhases3, portableMergePhases3)
        case (_, 4): return (portableSplitPhases4, portableMergePhases4)
        default: return (portableSplitPhases6, portableMergePhases6)
        }
    }

    @inline(__always)
    static func inputTransform(_ isa: KernelISA, _ n: Int, _ m: Int, _ stage: UnsafePointer<Float>, _ phaseLen: Int, _ rows: Int,
                               _ tpad: Int, _ v: UnsafeMutablePointer<Float>, _ kStride: Int) {
        switch isa {
        #if arch(x86_64)
        case .avx512: avx512WinogradInput(n, m, stage, phaseLen, rows, tpad, v, kStride)
        case .avx2: avx2WinogradInput(n, m, stage, phaseLen, rows, tpad, v, kStride)
        #else
        case .avx512, .avx2: portableWinogradInput(n, m, stage, phaseLen, rows, tpad, v, kStride)
        #endif
        case .portable: portableWinogradInput(n, m, stage, phaseLen, rows, tpad, v, kStride)
        }
    }

    @inline(__always)
    static func outputTransform(_ isa: KernelISA, _ n: Int, _ m: Int, _ src: UnsafePointer<Float>, _ kStride: Int, _ tpad: Int,
                                _ bias: Float, _ act: Int, _ alpha: Float, _ dst: UnsafeMutablePointer<Float>, _ phaseLen: Int) {
        switch isa {
        #if arch(x86_64)
        case .avx512: avx512WinogradOutput(n, m, src, kStride, tpad, bias, act, alpha, dst, phaseLen)
        case .avx2: avx2WinogradOutput(n, m, src, kStride, tpad, bias, act, alpha, dst, phaseLen)
        #else
        case .avx512, .avx2: portableWinogradOutput(n, m, src, kStride, tpad, bias, act, alpha, dst, phaseLen)
        #endif
        case .portable: portableWinogradOutput(n, m, src, kStride, tpad, bias, act, alpha, dst, phaseLen)
        }
    }
}
