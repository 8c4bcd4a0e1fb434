import Foundation

/// Winograd convolution F(m x m, 3x3) (Lavin & Gray 2016) for stride-1 'same' 3x3 layers, with
/// m = 4 (6x6 input tiles, points 0, ±1, ±2, infinity: 36 multiplications per (input, output)
/// channel pair and 4x4 outputs instead of 144, 4x fewer) or m = 2 (4x4 input tiles, points 0,
/// ±1, infinity: 16 instead of 36, 2.25x fewer, with smaller rounding error). Each m x m output
/// tile is Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A.
///
/// The element-wise stage is 36 independent GEMMs, (out x in) weights times (in x tiles)
/// transformed inputs, run on the direct-convolution micro-kernels as 1x1 convolutions over a row
/// of tiles. Input and output transforms work on 8 tiles at a time in SIMD8. Results differ from
/// direct convolution by rounding only (bounds in docs/PERFORMANCE.md); they do not depend on how
/// callers split the tile rows.
public final class WinogradConv: @unchecked Sendable {
    public let outChannels: Int
    public let inChannels: Int
    /// Output tile side m (2 or 4); input tiles are m + 2.
    public let tileSize: Int
    /// The (m + 2)^2 transformed weight matrices, packed as 1x1 convolutions.
    let packed: [PackedConv]
    let bias: [Float]
    private var pool: [UnsafeMutablePointer<Float>] = []
    private var poolSize = 0
    private let lock = NSLock()

    /// G (6 x 3) of F(4, 3).
    static let g: [[Double]] = [[1.0 / 4, 0, 0], [-1.0 / 6, -1.0 / 6, -1.0 / 6], [-1.0 / 6, 1.0 / 6, -1.0 / 6],
                                [1.0 / 24, 1.0 / 12, 1.0 / 6], [1.0 / 24, -1.0 / 12, 1.0 / 6], [0, 0, 1]]
    /// G (4 x 3) of F(2, 3).
    static let g2: [[Double]] = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]

    /// Whether a convolution of this shape may use this kernel.
    public static func supports(outChannels: Int, inChannels: Int, kh: Int, kw: Int, padding: ConvPadding) -> Bool {
        kh == 3 && kw == 3 && padding == .same && outChannels % 4 == 0
    }

    /// - weight: OIHW 3x3 cross-correlation weights.
    public init(weight: [Float], bias: [Float]?, outChannels: Int, inChannels: Int, tileSize: Int = 4) {
        precondition(weight.count == outChannels * inChannels * 9 && outChannels % 4 == 0 && (tileSize == 2 || tileSize == 4))
        self.tileSize = tileSize
        let nn = tileSize + 2
        self.outChannels = outChannels
        self.inChannels = inChannels
        self.bias = bias ?? [Float](repeating: 0, count: outChannels)
        // U[xi][nu][o][c] = (G w G^T)[xi][nu], in Float64.
        var u = [[Float]](repeating: [Float](repeating: 0, count: outChannels * inChannels), count: nn * nn)
        let g = (tileSize == 4 ? WinogradConv.g : WinogradConv.g2).flatMap { $0 }
        var t = [Double](repeating: 0, count: 3 * nn)  // G w (n x 3)
        weight.withUnsafeBufferPointer { wp in
            for oc in 0..<(outChannels * inChannels) {
                let w = wp.baseAddress! + oc * 9
                for i in 0..<nn { for j in 0..<3 {
                    t[i * 3 + j] = g[i * 3] * Double(w[j]) + g[i * 3 + 1] * Double(w[3 + j]) + g[i * 3 + 2] * Double(w[6 + j])
                } }
                for i in 0..<nn { for j in 0..<nn {
                    u[i * nn + j][oc] = Float(t[i * 3] * g[j * 3] + t[i * 3 + 1] * g[j * 3 + 1] + t[i * 3 + 2] * g[j * 3 + 2])
                } }
            }
        }
        packed = u.map { PackedConv(weight: $0, bias: nil, outChannels: outChannels, inChannels: inChannels, kh: 1, kw: 1) }
    }

    deinit { for p in pool { p.deallocate() } }

    /// A zero-initialised scratch buffer of at least `n` floats from the pool (one per running
    /// thread); the pool keeps buffers of the largest size asked for so far.
    private func scratch(_ n: Int) -> (UnsafeMutablePointer<Float>, Int) {
        lock.lock(); defer { lock.unlock() }
        if n > poolSize { for p in pool { p.deallocate() }; pool = []; poolSize = n }
        if let p = pool.popLast() { return (p, poolSize) }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: poolSize * 4, alignment: 64)
        let p = raw.bindMemory(to: Float.self, capacity: poolSize)
        p.initialize(repeating: 0, count: poolSize)
        return (p, poolSize)
    }

    private func release(_ p: UnsafeMutablePointer<Float>, capacity: Int) {
        lock.lock(); defer { lock.unlock() }
        if capacity == poolSize { pool.append(p) } else { p.deallocate() }
    }

    /// Computes output tile rows `tileRows` (output rows 4 * r ..< 4 * r + 4, clipped to the
    /// height). The input view's width and height are the output's; rows and columns outside
    /// the image read as zero (the 'same' padding), whatever the margins hold.
    ///
    /// Each input row of a tile row is first split into 4 phase rows, P_q[k] = x[4k + q - 1]
    /// (zero outside the image), so that element (i, j) of the patches of 8 consecutive tiles is
    /// one contiguous vector load: P_j[t..t+8] for j < 4, P_(j-4)[t+1..t+9] otherwise. Outputs are
    /// written the same way in reverse.
    public func run(_ input: PlanarView, _ output: PlanarView, activation: Activation, isa: KernelISA = .best, tileRows: Range<Int>) {
        let (h, w, c, o) = (output.height, output.width, inChannels, outChannels)
        precondition(input.channels == c && output.channels == o && input.height == h && input.width == w)
        let mt = tileSize, nn = mt + 2, nk = nn * nn
        let tiles = (w + mt - 1) / mt
        let vw = isa.vectorWidth
        let tpad = (tiles + 7) / 8 * 8
        // Several tile rows form one GEMM (at least ~192 tiles) so that each transformed weight
        // matrix, read once per group, serves enough columns.
        let group = max(1, min(tileRows.count, (192 + tpad - 1) / tpad))
        let cols = group * tpad
        let tplane = (cols + vw - 1) / vw * vw + vw   // room for the micro-kernel's vector overhang
        let phaseLen = tpad + 8
        let vSize = nk * c * tplane, mSize = nk * o * tplane, stageSize = nn * mt * phaseLen, outStage = mt * mt * phaseLen
        let n = vSize + mSize + stageSize + outStage + 36 * 8 * 3 + o + 16
        let (buf, capacity) = scratch(n)
        defer { release(buf, capacity: capacity) }
        let v = buf, m = buf + vSize, stage = m + mSize, ostage = stage + stageSize
        let vecs = UnsafeMutableRawPointer(ostage + outStage).bindMemory(to: SIMD8<Float>.self, capacity: 36 * 3)
        let zeroBias = ostage + outStage + 36 * 8 * 3
        zeroBias.update(repeating: 0, count: o)
        let d = vecs, r = vecs + 36, tmp = vecs + 72
        var first = tileRows.lowerBound
        while first < tileRows.upperBound {
            let rowsHere = min(group, tileRows.upperBound - first)
            // Input transform: V[k][c][g * tpad + t] = (B^T d B)[k] for the 6x6 patch at
            // (4 (first + g) - 1, 4t - 1).
            for g in 0..<rowsHere {
                let y0 = mt * (first + g) - 1
                for ch in 0..<c {
                    stage.update(repeating: 0, count: stageSize)
                    for i in 0..<nn {
                        let y = y0 + i
                        if y < 0 || y >= h { continue }
                        let row = input.pointer(ch, y, 0)
                        if mt == 4 {
                            for x in 0..<w { stage[(i * 4 + ((x + 1) & 3)) * phaseLen + ((x + 1) >> 2)] = row[x] }
                        } else {
                            for x in 0..<w { stage[(i * 2 + ((x + 1) & 1)) * phaseLen + ((x + 1) >> 1)] = row[x] }
                        }
                    }
                    var t0 = 0
                    while t0 < tpad {
                        for i in 0..<nn {
                            for j in 0..<nn {
                                let q = j % mt, off = j / mt
                                d[i * nn + j] = UnsafeRawPointer(stage + (i * mt + q) * phaseLen + t0 + off).loadUnaligned(as: SIMD8<Float>.self)
                            }
                        }
                        if mt == 4 { WinogradConv.inputTransform(d, tmp, r) } else { WinogradConv.inputTransform2(d, tmp, r) }
                        let col = g * tpad + t0
                        for k in 0..<nk {
                            UnsafeMutableRawPointer(v + (k * c + ch) * tplane + col).storeBytes(of: r[k], as: SIMD8<Float>.self)
                        }
                        t0 += 8
                    }
                }
            }
            // 36 GEMMs: M[k] (o x cols) = U[k] (o x c) V[k] (c x cols).
            let used = rowsHere * tpad
            for k in 0..<nk {
                FastOps.run(isa, UnsafePointer(v + k * c * tplane), tplane, 0, c, packed[k].weights, zeroBias, o / 4, 1, 1,
                            m + k * o * tplane, tplane, 0, 0, 1, (used + vw - 1) / vw)
            }
            // Output transform, bias, activation; interleave the 4 phases into the rows.
            for g in 0..<rowsHere {
                let tr = first + g
                for oc in 0..<o {
                    let b = SIMD8<Float>(repeating: bias[oc])
                    var t0 = 0
                    while t0 < tpad {
                        let col = g * tpad + t0
                        for k in 0..<nk {
                            d[k] = UnsafeRawPointer(m + (k * o + oc) * tplane + col).loadUnaligned(as: SIMD8<Float>.self)
                        }
                        if mt == 4 { WinogradConv.outputTransform(d, tmp, r) } else { WinogradConv.outputTransform2(d, tmp, r) }
                        for k in 0..<(mt * mt) {
                            var val = r[k] + b
                            switch activation {
                            case .none: break
                            case .relu: val = val.replacing(with: 0, where: val .< 0)
                            case .leakyRelu(let a): val = val.replacing(with: val * a, where: val .< 0)
                            }
                            UnsafeMutableRawPointer(ostage + k * phaseLen + t0).storeBytes(of: val, as: SIMD8<Float>.self)
                        }
                        t0 += 8
                    }
                    for i in 0..<mt {
                        let yy = mt * tr + i
                        if yy >= h { break }
                        let row = output.pointer(oc, yy, 0)
                        if mt == 4 {
                            for x in 0..<w { row[x] = ostage[(i * 4 + (x & 3)) * phaseLen + (x >> 2)] }
                        } else {
                            for x in 0..<w { row[x] = ostage[(i * 2 + (x & 1)) * phaseLen + (x >> 1)] }
                        }
                    }
                }
            }
            first += rowsHere
        }
    }

    /// B^T d B for 8 tiles at once (d row-major 6x6; t scratch of 36; result in r).
    @inline(__always)
    static func inputTransform(_ d: UnsafeMutablePointer<SIMD8<Float>>, _ t: UnsafeMutablePointer<SIMD8<Float>>,
                               _ r: UnsafeMutablePointer<SIMD8<Float>>) {
        // B^T rows: [4,0,-5,0,1,0], [0,-4,-4,1,1,0], [0,4,-4,-1,1,0], [0,-2,-1,2,1,0], [0,2,-1,-2,1,0], [0,4,0,-5,0,1]
        @inline(__always)
        func bt(_ x: UnsafeMutablePointer<SIMD8<Float>>, _ s: Int, _ y: UnsafeMutablePointer<SIMD8<Float>>, _ ys: Int) {
            let (x0, x1, x2, x3, x4, x5) = (x[0], x[s], x[2 * s], x[3 * s], x[4 * s], x[5 * s])
            let four = SIMD8<Float>(repeating: 4), five = SIMD8<Float>(repeating: 5), two = SIMD8<Float>(repeating: 2)
            let a = x4 - four * x2, b = x3 - four * x1, e = x4 - x2, f = two * (x3 - x1)
            y[0] = four * x0 - five * x2 + x4
            y[ys] = a + b
            y[2 * ys] = a - b
            y[3 * ys] = e + f
            y[4 * ys] = e - f
            y[5 * ys] = four * x1 - five * x3 + x5
        }
        for j in 0..<6 { bt(d + j, 6, t + j, 6) }      // columns: t = B^T d
        for i in 0..<6 { bt(t + 6 * i, 1, r + 6 * i, 1) }  // rows: r = t B
    }

    /// A^T m A for 8 tiles at once (m row-major 6x6 -> r row-major 4x4; t scratch).
    @inline(__always)
    static func outputTransform(_ m: UnsafeMutablePointer<SIMD8<Float>>, _ t: UnsafeMutablePointer<SIMD8<Float>>,
                                _ r: UnsafeMutablePointer<SIMD8<Float>>) {
        // A^T rows: [1,1,1,1,1,0], [0,1,-1,2,-2,0], [0,1,1,4,4,0], [0,1,-1,8,-8,1]
        @inline(__always)
        func at(_ x: UnsafeMutablePointer<SIMD8<Float>>, _ s: Int, _ y: UnsafeMutablePointer<SIMD8<Float>>, _ ys: Int) {
            let (x0, x1, x2, x3, x4, x5) = (x[0], x[s], x[2 * s], x[3 * s], x[4 * s], x[5 * s])
            let s12 = x1 + x2, d12 = x1 - x2, s34 = x3 + x4, d34 = x3 - x4
            y[0] = x0 + s12 + s34
            y[ys] = d12 + 2 * d34
            y[2 * ys] = s12 + 4 * s34
            y[3 * ys] = d12 + 8 * d34 + x5
        }
        for j in 0..<6 { at(m + j, 6, t + j, 6) }      // t (4 x 6) = A^T m
        for i in 0..<4 { at(t + 6 * i, 1, r + 4 * i, 1) }  // r (4 x 4) = t A
    }

    /// B^T d B of F(2, 3) for 8 tiles (d row-major 4x4).
    @inline(__always)
    static func inputTransform2(_ d: UnsafeMutablePointer<SIMD8<Float>>, _ t: UnsafeMutablePointer<SIMD8<Float>>,
                                _ r: UnsafeMutablePointer<SIMD8<Float>>) {
        // B^T rows: [1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]
        @inline(__always)
        func bt(_ x: UnsafeMutablePointer<SIMD8<Float>>, _ s: Int, _ y: UnsafeMutablePointer<SIMD8<Float>>, _ ys: Int) {
            let (x0, x1, x2, x3) = (x[0], x[s], x[2 * s], x[3 * s])
            y[0] = x0 - x2
            y[ys] = x1 + x2
            y[2 * ys] = x2 - x1
            y[3 * ys] = x1 - x3
        }
        for j in 0..<4 { bt(d + j, 4, t + j, 4) }
        for i in 0..<4 { bt(t + 4 * i, 1, r + 4 * i, 1) }
    }

    /// A^T m A of F(2, 3) for 8 tiles (m row-major 4x4 -> r row-major 2x2).
    @inline(__always)
    static func outputTransform2(_ m: UnsafeMutablePointer<SIMD8<Float>>, _ t: UnsafeMutablePointer<SIMD8<Float>>,
                                 _ r: UnsafeMutablePointer<SIMD8<Float>>) {
        // A^T rows: [1,1,1,0], [0,1,-1,-1]
        @inline(__always)
        func at(_ x: UnsafeMutablePointer<SIMD8<Float>>, _ s: Int, _ y: UnsafeMutablePointer<SIMD8<Float>>, _ ys: Int) {
            let (x0, x1, x2, x3) = (x[0], x[s], x[2 * s], x[3 * s])
            y[0] = x0 + x1 + x2
            y[ys] = x1 - x2 - x3
        }
        for j in 0..<4 { at(m + j, 4, t + j, 4) }   // t (2 x 4)
        for i in 0..<2 { at(t + 4 * i, 1, r + 2 * i, 1) }
    }
}
