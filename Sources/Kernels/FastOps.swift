import Foundation
import KernelsAVX2
import KernelsAVX512

/// Activation applied in a convolution's epilogue (or standalone).
public enum Activation: Equatable, Sendable {
    case none
    case relu
    case leakyRelu(Float)

    /// The activation as the generated kernels take it: code 0 none, 1 ReLU, 2 LeakyReLU, and
    /// LeakyReLU's slope.
    var kernelCode: (code: Int, alpha: Float) {
        switch self {
        case .none: (0, 0)
        case .relu: (1, 0)
        case .leakyRelu(let a): (2, a)
        }
    }
}

/// Convolution weights repacked for the micro-kernels: blocks of 4 output channels, each block
/// laid out [c][kh][kw][4] so the 4 weights of one tap are adjacent; the last block is padded
/// with zero weights. Bias padded the same way.
public final class PackedConv: @unchecked Sendable {
    public let outChannels: Int
    public let inChannels: Int
    public let kh: Int
    public let kw: Int
    public let blocks: Int
    public let weights: UnsafeMutablePointer<Float>
    public let bias: UnsafeMutablePointer<Float>
    /// Scratch buffers for kernels that repack their input (the transposed convolution).
    public let scratch = ScratchPool()

    /// - weight: OIHW cross-correlation weights; bias: `outChannels` values or nil.
    public init(weight: [Float], bias: [Float]?, outChannels: Int, inChannels: Int, kh: Int, kw: Int) {
        precondition(weight.count == outChannels * inChannels * kh * kw)
        self.outChannels = outChannels
        self.inChannels = inChannels
        self.kh = kh
        self.kw = kw
        blocks = (outChannels + 3) / 4
        let n = blocks * inChannels * kh * kw * 4
        weightCount = n
        weights = LargeMemory.allocateZeroed(floats: n)
        self.bias = UnsafeMutablePointer<Float>.allocate(capacity: blocks * 4)
        self.bias.initialize(repeating: 0, count: blocks * 4)
        let taps = inChannels * kh * kw
        weight.withUnsafeBufferPointer { src in
            for o in 0..<outChannels {
                // Output channel o's taps, in (c, u, v) order, go to lane o % 4 of block o / 4.
                let s = src.baseAddress! + o * taps, d = weights + (o / 4) * taps * 4 + o % 4
                for t in 0..<taps { d[4 * t] = s[t] }
                self.bias[o] = bias?[o] ?? 0
            }
        }
    }

    /// Zero weights and bias of this shape, for a producer that writes `weights` in the packed
    /// layout itself (the Winograd weight transform): output channel o's tap t (in (c, u, v)
    /// order) is `weights[(o / 4) * taps * 4 + 4 * t + o % 4]`, taps = inChannels * kh * kw.
    public init(zeroedOutChannels outChannels: Int, inChannels: Int, kh: Int, kw: Int) {
        self.outChannels = outChannels
        self.inChannels = inChannels
        self.kh = kh
        self.kw = kw
        blocks = (outChannels + 3) / 4
        weightCount = blocks * inChannels * kh * kw * 4
        weights = LargeMemory.allocateZeroed(floats: weightCount)
        bias = UnsafeMutablePointer<Float>.allocate(capacity: blocks * 4)
        bias.initialize(repeating: 0, count: blocks * 4)
    }

    private let weightCount: Int

    deinit {
        LargeMemory.deallocate(weights, floats: weightCount)
        bias.deallocate()
    }
}

/// Zero-initialised, 64-byte-aligned scratch buffers reused across calls, one per running
/// thread: `borrow` hands out a buffer of at least the size asked (the pool keeps buffers of the
/// largest size asked for so far), `giveBack` returns it.
public final class ScratchPool: @unchecked Sendable {
    private var free: [UnsafeMutablePointer<Float>] = []
    private var size = 0
    private let lock = NSLock()

    public init() {}

    deinit { for p in free { p.deallocate() } }

    public func borrow(_ n: Int) -> (UnsafeMutablePointer<Float>, Int) {
        lock.lock(); defer { lock.unlock() }
        if n > size { for p in free { p.deallocate() }; free = []; size = n }
        if let p = free.popLast() { return (p, size) }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size * 4, alignment: 64)
        let p = raw.bindMemory(to: Float.self, capacity: size)
        p.initialize(repeating: 0, count: size)
        return (p, size)
    }

    public func giveBack(_ p: UnsafeMutablePointer<Float>, capacity: Int) {
        lock.lock(); defer { lock.unlock() }
        if capacity == size { free.append(p) } else { p.deallocate() }
    }
}

/// A run of `count` consecutive items of one row (starting at column `column`) placed at
/// `position` in a block.
struct RasterSegment {
    let row: Int
    let column: Int
    let count: Int
    let position: Int
}

/// Cuts the items of rows `rows` (each `width` items), in raster order, into blocks of at most
/// `capacity` positions: a block takes segments of consecutive items until it is full, several
/// rows when rows are short. Each segment is followed by `gap` unused positions (the Winograd
/// patches of its last tiles read them); the last segment of a block may spill its gap past
/// `capacity`.
struct RasterBlocks {
    let rows: Range<Int>
    let width: Int
    let capacity: Int
    let gap: Int
    private var next: (row: Int, column: Int)

    init(rows: Range<Int>, width: Int, capacity: Int, gap: Int = 0) {
        (self.rows, self.width, self.capacity, self.gap) = (rows, width, capacity, gap)
        next = (rows.lowerBound, 0)
    }

    /// Fills `segments` with the next block's segments; false when all items are taken.
    mutating func nextBlock(_ segments: inout [RasterSegment]) -> Bool {
        segments.removeAll(keepingCapacity: true)
        var position = 0
        while position < capacity && next.row < rows.upperBound && width > 0 {
            let count = min(width - next.column, capacity - position)
            segments.append(RasterSegment(row: next.row, column: next.column, count: count, position: position))
            position += count + gap
            next.column += count
            if next.column == width { next = (next.row + 1, 0) }
        }
        return !segments.isEmpty
    }
}

/// The fast kernels, dispatched by ISA. All take `PlanarView`s; results are independent of which
/// rows a call covers, so callers may split work freely.
public enum FastOps {
    /// Stride-1 convolution of output rows `rows` (all rows by default). For 'same' padding the
    /// input view must have a margin of at least (k - 1) / 2 holding zeros. Output channels go in
    /// blocks of 4 through the register-blocked kernel; the last 1-3 (when the count is not a
    /// multiple of 4, e.g. a 1-channel output layer) through a single-channel kernel with the
    /// same operations per pixel. Disjoint row ranges may run on different threads.
    ///
    /// `tapStep` is the distance in floats between horizontally adjacent kernel taps: 1 for
    /// ordinary maps; g for a map whose rows interleave g images pixel by pixel (element
    /// (c, y, x * g + n) is pixel x of image n), which convolves each image on its own while
    /// every vector is full whatever the image width (the trainer's batches). With g > 1 the
    /// widths are in floats (pixels x g) and padding must be 'valid'.
    public static func conv2d(_ input: PlanarView, _ output: PlanarView, _ w: PackedConv, padding: ConvPadding,
                              activation: Activation, isa: KernelISA = .best, rows: Range<Int>? = nil, tapStep: Int = 1) {
        precondition(tapStep >= 1 && (tapStep == 1 || padding == .valid), "conv2d: interleaved maps take 'valid' padding")
        let dx = tapStep
        precondition(input.channels == w.inChannels && output.channels == w.outChannels)
        let (pt, pl) = padding == .same ? ((w.kh - 1) / 2, (w.kw - 1) / 2) : (0, 0)
        precondition(input.layout.margin >= max(pt, pl), "conv2d: input margin too small for 'same' padding")
        let r = rows ?? 0..<output.height
        let src = UnsafePointer(input.base - pt * input.rowStride - pl)
        let vw = isa.vectorWidth
        let vectors = (output.width + vw - 1) / vw
        let full = w.outChannels / 4
        let (act, alpha) = activation.kernelCode
        if full > 0 {
            run(isa, src, input.planeStride, input.rowStride, w.inChannels, w.weights, w.bias, full, w.kh, w.kw, dx,
                output.base, output.planeStride, output.rowStride, r.lowerBound, r.upperBound, vectors, act, alpha)
        }
        let blockOffset = full * w.inChannels * w.kh * w.kw * 4
        for lane in 0..<(w.outChannels - full * 4) {
            let o = full * 4 + lane
            single(isa, src, input.planeStride, input.rowStride, w.inChannels, w.weights + blockOffset + lane, w.bias[o], w.kh, w.kw, dx,
                   output.pointer(o, 0, 0), output.rowStride, r.lowerBound, r.upperBound, vectors)
        }
        // The blocked kernel activated its channels in registers; the single-channel ones here.
        epilogue(output, activation: activation, rows: r, activatedChannels: full * 4)
    }

    @inline(__always)
    static func single(_ isa: KernelISA, _ input: UnsafePointer<Float>, _ inPlane: Int, _ inRow: Int, _ c: Int,
                       _ w: UnsafePointer<Float>, _ bias: Float, _ kh: Int, _ kw: Int, _ dx: Int,
                       _ out: UnsafeMutablePointer<Float>, _ outRow: Int, _ r0: Int, _ r1: Int, _ vectors: Int) {
        switch isa {
        #if arch(x86_64)
        case .avx512: avx512DirectConvSingle(input, inPlane, inRow, c, w, bias, kh, kw, dx, out, outRow, r0, r1, vectors)
        case .avx2: avx2DirectConvSingle(input, inPlane, inRow, c, w, bias, kh, kw, dx, out, outRow, r0, r1, vectors)
        #else
        case .avx512, .avx2: portableDirectConvSingle(input, inPlane, inRow, c, w, bias, kh, kw, dx, out, outRow, r0, r1, vectors)
        #endif
        case .portable: portableDirectConvSingle(input, inPlane, inRow, c, w, bias, kh, kw, dx, out, outRow, r0, r1, vectors)
        }
    }

    @inline(__always)
    static func run(_ isa: KernelISA, _ input: UnsafePointer<Float>, _ inPlane: Int, _ inRow: Int, _ c: Int,
                    _ w: UnsafePointer<Float>, _ bias: UnsafePointer<Float>, _ blocks: Int, _ kh: Int, _ kw: Int, _ dx: Int,
                    _ out: UnsafeMutablePointer<Float>, _ outPlane: Int, _ outRow: Int, _ r0: Int, _ r1: Int, _ vectors: Int,
                    _ act: Int, _ alpha: Float) {
        switch isa {
        #if arch(x86_64)
        case .avx512:
            avx512DirectConv(input, inPlane, inRow, c, w, bias, blocks, kh, kw, dx, out, outPlane, outRow, r0, r1, vectors, act, alpha)
        case .avx2:
            avx2DirectConv(input, inPlane, inRow, c, w, bias, blocks, kh, kw, dx, out, outPlane, outRow, r0, r1, vectors, act, alpha)
        #else
        case .avx512, .avx2:
            portableDirectConv(input, inPlane, inRow, c, w, bias, blocks, kh, kw, dx, out, outPlane, outRow, r0, r1, vectors, act, alpha)
        #endif
        case .portable:
            portableDirectConv(input, inPlane, inRow, c, w, bias, blocks, kh, kw, dx, out, outPlane, outRow, r0, r1, vectors, act, alpha)
        }
    }

    /// C = W V + b (see `avx2Gemm`): `blocks` blocks of 4 rows of W (a 1x1 `PackedConv`'s
    /// weights) times V (c rows, inPlane apart), `vectors` vectors of columns, into rows outPlane
    /// apart.
    @inline(__always)
    static func gemm(_ isa: KernelISA, _ v: UnsafePointer<Float>, _ inPlane: Int, _ c: Int, _ w: UnsafePointer<Float>,
                     _ bias: UnsafePointer<Float>, _ blocks: Int, _ out: UnsafeMutablePointer<Float>, _ outPlane: Int, _ vectors: Int) {
        switch isa {
        #if arch(x86_64)
        case .avx512: avx512Gemm(v, inPlane, c, w, bias, blocks, out, outPlane, vectors)
        case .avx2: avx2Gemm(v, inPlane, c, w, bias, blocks, out, outPlane, vectors)
        #else
        case .avx512, .avx2: portableGemm(v, inPlane, c, w, bias, blocks, out, outPlane, vectors)
        #endif
        case .portable: portableGemm(v, inPlane, c, w, bias, blocks, out, outPlane, vectors)
        }
    }

    /// Applies the activation to the valid columns (of channels from `activatedChannels` on: the
    /// ones before were activated by the kernel) and zeroes the columns past the width that
    /// vector kernels wrote, so margins stay zero for the next 'same' convolution.
    public static func epilogue(_ v: PlanarView, activation: Activation, rows: Range<Int>? = nil, activatedChannels: Int = 0) {
        let w = v.width
        let tail = (w + 15) / 16 * 16 - w + v.layout.margin
        for c in 0..<v.channels {
            for y in rows ?? 0..<v.height {
                let p = v.pointer(c, y, 0)
                switch c < activatedChannels ? .none : activation {
                case .none: break
                case .relu: for x in 0..<w { p[x] = max(p[x], 0) }
                case .leakyRelu(let a): for x in 0..<w { let t = p[x]; p[x] = t < 0 ? t * a : t }
                }
                (p + w).update(repeating: 0, count: tail)
            }
        }
    }

    /// Standalone activation, out of place or in place (same view).
    public static func activation(_ input: PlanarView, _ output: PlanarView, _ act: Activation, rows: Range<Int>? = nil) {
        for c in 0..<input.channels {
            for y in rows ?? 0..<input.height {
                let s = input.pointer(c, y, 0), d = output.pointer(c, y, 0)
                switch act {
                case .none: if s != d { d.update(from: s, count: input.width) }
                case .relu: for x in 0..<input.width { d[x] = max(s[x], 0) }
                case .leakyRelu(let a): for x in 0..<input.width { let t = s[x]; d[x] = t < 0 ? t * a : t }
                }
            }
        }
    }

    /// 2x2 max-pooling, stride 2.
    public static func maxpool2x2(_ input: PlanarView, _ output: PlanarView, rows: Range<Int>? = nil) {
        for c in 0..<output.channels {
            for y in rows ?? 0..<output.height {
                let a = input.pointer(c, 2 * y, 0), b = input.pointer(c, 2 * y + 1, 0), d = output.pointer(c, y, 0)
                for x in 0..<output.width {
                    d[x] = max(max(a[2 * x], a[2 * x + 1]), max(b[2 * x], b[2 * x + 1]))
                }
            }
        }
    }

    /// Weights of a 2x2 stride-2 transposed convolution repacked as a 1x1 convolution to
    /// 4 x outChannels maps (tap (u, v) of output channel o is map (2u + v) * outChannels + o).
    public static func packTransposed(weight: [Float], bias: [Float]?, outChannels: Int, inChannels: Int) -> PackedConv {
        var w = [Float](repeating: 0, count: 4 * outChannels * inChannels)
        var b = [Float](repeating: 0, count: 4 * outChannels)
        for o in 0..<outChannels { for c in 0..<inChannels { for t in 0..<4 {
            w[(t * outChannels + o) * inChannels + c] = weight[(o * inChannels + c) * 4 + t]
        } } }
        for o in 0..<outChannels { for t in 0..<4 { b[t * outChannels + o] = bias?[o] ?? 0 } }
        return PackedConv(weight: w, bias: b, outChannels: 4 * outChannels, inChannels: inChannels, kh: 1, kw: 1)
    }

    /// 2x2 stride-2 transposed convolution: a GEMM computes the 4 x outChannels tap values of a
    /// chunk of input pixels (taken in raster order across rows, so narrow maps still give the
    /// micro-kernel long rows and each weight is read once per chunk), then each pair of taps
    /// (u, 0), (u, 1) is interleaved into output row 2y + u. `rows` are input rows.
    public static func convTranspose2x2(_ input: PlanarView, _ output: PlanarView, _ packed: PackedConv,
                                        isa: KernelISA = .best, rows: Range<Int>? = nil) {
        let o = output.channels, c = input.channels, w = input.width
        precondition(packed.outChannels == 4 * o && packed.inChannels == c && output.height == 2 * input.height && output.width == 2 * input.width)
        let r = rows ?? 0..<input.height
        let vw = isa.vectorWidth
        let chunk = 12 * vw   // pixels per GEMM: 4 micro-kernel calls of 3 vectors per 4 taps
        let (buf, capacity) = packed.scratch.borrow(c * chunk + 4 * o * chunk + vw)
        defer { packed.scratch.giveBack(buf, capacity: capacity) }
        let compact = buf, taps = buf + c * chunk
        let (_, merge) = WinogradConv.phaseShuffles(isa, 2)
        var blocks = RasterBlocks(rows: r, width: w, capacity: chunk)
        var segments: [RasterSegment] = []
        while blocks.nextBlock(&segments) {
            // Gather the chunk's pixels: [c][chunk].
            for ch in 0..<c {
                for s in segments { (compact + ch * chunk + s.position).update(from: input.pointer(ch, s.row, s.column), count: s.count) }
            }
            let used = segments.last!.position + segments.last!.count
            gemm(isa, compact, chunk, c, packed.weights, packed.bias, packed.blocks, taps, chunk, (used + vw - 1) / vw)
            // Tap t = 2u + v of output channel oc is GEMM row t * o + oc.
            for oc in 0..<o {
                for u in 0..<2 {
                    let src = taps + (2 * u * o + oc) * chunk
                    for s in segments {
                        merge(src + s.position, o * chunk, output.pointer(oc, 2 * s.row + u, 0), 2 * s.column, 2 * (s.column + s.count))
                    }
                }
            }
        }
    }

    public static func fill(_ output: PlanarView, value: Float, rows: Range<Int>? = nil) {
        for c in 0..<output.channels { for y in rows ?? 0..<output.height { output.pointer(c, y, 0).update(repeating: value, count: output.width) } }
    }

    public static func copy(_ input: PlanarView, _ output: PlanarView, rows: Range<Int>? = nil) {
        for c in 0..<input.channels { for y in rows ?? 0..<input.height { output.pointer(c, y, 0).update(from: input.pointer(c, y, 0), count: input.width) } }
    }
}

/// The machine's FP32 FMA throughput for an ISA, measured by a register-only FMA loop.
public enum PeakFLOPs {
    /// FLOPs of `iterations` rounds of the ISA's peak loop (fma = 2 FLOPs).
    public static func flops(_ isa: KernelISA, _ iterations: Int) -> Double {
        let vectors: Int = isa.vectorWidth == 16 ? 24 : 12
        return Double(iterations * vectors * isa.vectorWidth * 2)
    }

    /// Runs the ISA's peak loop; returns FLOPs done (the caller times it).
    public static func run(_ isa: KernelISA, iterations: Int) -> (flops: Double, sink: Float) {
        let sink: Float
        switch isa {
        #if arch(x86_64)
        case .avx512: sink = avx512PeakFMA(iterations, 1)
        case .avx2: sink = avx2PeakFMA(iterations, 1)
        #else
        case .avx512, .avx2: sink = portablePeakFMA(iterations, 1)
        #endif
        case .portable: sink = portablePeakFMA(iterations, 1)
        }
        return (flops(isa, iterations), sink)
    }
}
