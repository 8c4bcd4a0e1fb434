import KernelsAVX2
import KernelsAVX512

/// Gradient of a stride-1 'valid' convolution with respect to its weights, accumulated over the
/// output pixels of one image:
///
///     dW[o, c, u, v] += sum over (y, x) of dY[o, y, x] * X[c, y + u, x + v]
///
/// computed as dW^T (taps x output channels) with the generated micro-kernels: 12, 6 or 3 taps
/// (broadcast input values) times 1, 2 or 4 vectors of output channels (the output gradient
/// stored pixel-major, `dYT[(y * width + x) * ldb + o]`). Each tap's sum runs over (y, x) in
/// row-major order with one FMA per term, so results do not depend on how callers split images.
public enum WeightGradient {
    /// Rows the accumulator needs for `taps` = c * kh * kw taps (a multiple of 12).
    public static func paddedTaps(_ taps: Int) -> Int { (taps + 11) / 12 * 12 }

    /// Columns (floats per tap row and per pixel of dYT) for `outChannels`, a multiple of the
    /// ISA's vector width.
    public static func paddedChannels(_ outChannels: Int, isa: KernelISA = .best) -> Int {
        (outChannels + isa.vectorWidth - 1) / isa.vectorWidth * isa.vectorWidth
    }

    /// Offsets of the taps (c, u, v) from the input's element (0, 0, 0), padded to
    /// `paddedTaps` with the last tap (the padding rows of the accumulator are ignored).
    /// `tapStep` is the distance in floats between horizontally adjacent taps (1, or g for rows
    /// that interleave g images pixel by pixel; see `FastOps.conv2d`).
    public static func tapOffsets(_ layout: PlanarLayout, kh: Int, kw: Int, tapStep: Int = 1) -> [Int] {
        let taps = layout.channels * kh * kw
        return (0..<paddedTaps(taps)).map { t in
            let k = min(t, taps - 1)
            let (c, r) = (k / (kh * kw), k % (kh * kw))
            return c * layout.planeStride + (r / kw) * layout.rowStride + (r % kw) * tapStep
        }
    }

    /// Adds this image's contribution to `acc` ([paddedTaps(c*kh*kw)][ldb], tap order (c, u, v)).
    /// - input: the layer input X (its valid region must cover outHeight + kh - 1 rows and
    ///   outWidth + kw - 1 columns); dYT: outHeight * outWidth pixels of `ldb` floats;
    ///   offsets: `tapOffsets(input.layout, kh:, kw:)` (computed once per layout).
    public static func accumulate(input: PlanarView, offsets: [Int], outHeight: Int, outWidth: Int,
                                  dYT: UnsafePointer<Float>, ldb: Int, acc: UnsafeMutablePointer<Float>,
                                  isa: KernelISA = .best) {
        offsets.withUnsafeBufferPointer { off in
            accumulate(input: UnsafePointer(input.base), rowStride: input.rowStride, offsets: off, outHeight: outHeight,
                       outWidth: outWidth, dYT: dYT, ldb: ldb, acc: acc, isa: isa)
        }
    }

    /// The same for the taps whose offsets `offsets` holds (a multiple of 12 of them, e.g. a
    /// slice of `tapOffsets`), into `acc`'s rows for those taps; `input` points at element
    /// (0, 0, 0) of the rows the outputs start at. Callers may split the taps (disjoint
    /// accumulator rows) or the output rows (consecutive calls into one accumulator give the same
    /// sums as one call) between calls and threads.
    public static func accumulate(input: UnsafePointer<Float>, rowStride: Int, offsets: UnsafeBufferPointer<Int>,
                                  outHeight: Int, outWidth: Int, dYT: UnsafePointer<Float>, ldb: Int,
                                  acc: UnsafeMutablePointer<Float>, isa: KernelISA = .best) {
        let vw = isa.vectorWidth
        precondition(ldb % vw == 0 && offsets.count % 12 == 0)
        let padded = offsets.count
        let vectors = ldb / vw
        var j = 0
        while j < vectors {
            let nr: Int
            if isa == .avx512 && vectors - j >= 4 { nr = 4 } else if vectors - j >= 2 { nr = 2 } else { nr = 1 }
            let mr = 12 / nr
            var t = 0
            while t < padded {
                micro(isa, mr, nr, input, offsets.baseAddress! + t, outHeight, outWidth, rowStride,
                      dYT + j * vw, ldb, acc + t * ldb + j * vw, ldb)
                t += mr
            }
            j += nr
        }
    }

    /// The same sums for one output channel whose gradient `dY` is read in place (rows `dYRow`
    /// apart, `outWidth` pixels each) rather than transposed: for layers with fewer output
    /// channels than a vector holds (the 3-CNN's last layer), where `accumulate` would spend a
    /// whole vector of FMAs on each channel. Adds tap t's sum to `acc[t * accStride]`; each tap's
    /// sum runs over the rows in order (vector lanes, then the row tails), so results do not
    /// depend on thread counts. `offsets.count` is a multiple of 12.
    public static func accumulateSingleChannel(input: UnsafePointer<Float>, rowStride: Int, offsets: UnsafeBufferPointer<Int>,
                                               outHeight: Int, outWidth: Int, dY: UnsafePointer<Float>, dYRow: Int,
                                               acc: UnsafeMutablePointer<Float>, accStride: Int, isa: KernelISA = .best) {
        precondition(offsets.count % 12 == 0)
        var t = 0
        while t < offsets.count {
            let off = offsets.baseAddress! + t, out = acc + t * accStride
            switch isa {
            #if arch(x86_64)
            case .avx512: avx512WeightGradDot12(input, off, outHeight, outWidth, rowStride, dY, dYRow, out, accStride)
            case .avx2: avx2WeightGradDot12(input, off, outHeight, outWidth, rowStride, dY, dYRow, out, accStride)
            #endif
            default: portableWeightGradDot12(input, off, outHeight, outWidth, rowStride, dY, dYRow, out, accStride)
            }
            t += 12
        }
    }

    /// dst[c * dstStride + r] = src[r * srcStride + c] for r < rows, c < cols: blocks of a vector
    /// width square transposed in registers (`*Transpose{8,16}`), the edges element by element.
    /// A copy: the same values on every ISA. Used for the output gradient's pixel-major copy.
    public static func transpose(_ src: UnsafePointer<Float>, srcStride: Int, rows: Int, cols: Int,
                                 into dst: UnsafeMutablePointer<Float>, dstStride: Int, isa: KernelISA = .best) {
        let vw = isa.vectorWidth
        var r = 0
        while r + vw <= rows {
            var c = 0
            while c + vw <= cols {
                let s = src + r * srcStride + c, d = dst + c * dstStride + r
                switch isa {
                #if arch(x86_64)
                case .avx512: avx512Transpose16(s, srcStride, d, dstStride)
                case .avx2: avx2Transpose8(s, srcStride, d, dstStride)
                #endif
                default: portableTranspose8(s, srcStride, d, dstStride)
                }
                c += vw
            }
            for rr in r..<(r + vw) { for cc in c..<cols { dst[cc * dstStride + rr] = src[rr * srcStride + cc] } }
            r += vw
        }
        for rr in r..<rows { for cc in 0..<cols { dst[cc * dstStride + rr] = src[rr * srcStride + cc] } }
    }

    @inline(__always)
    static func micro(_ isa: KernelISA, _ mr: Int, _ nr: Int, _ a: UnsafePointer<Float>, _ off: UnsafePointer<Int>,
                      _ h: Int, _ w: Int, _ aRow: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                      _ out: UnsafeMutablePointer<Float>, _ ldo: Int) {
        switch (isa, nr) {
        #if arch(x86_64)
        case (.avx512, 4): avx512WeightGrad3x4(a, off, h, w, aRow, b, ldb, out, ldo)
        case (.avx512, 2): avx512WeightGrad6x2(a, off, h, w, aRow, b, ldb, out, ldo)
        case (.avx512, _): avx512WeightGrad12x1(a, off, h, w, aRow, b, ldb, out, ldo)
        case (.avx2, 4): avx2WeightGrad3x4(a, off, h, w, aRow, b, ldb, out, ldo)
        case (.avx2, 2): avx2WeightGrad6x2(a, off, h, w, aRow, b, ldb, out, ldo)
        case (.avx2, _): avx2WeightGrad12x1(a, off, h, w, aRow, b, ldb, out, ldo)
        #endif
        case (_, 4): portableWeightGrad3x4(a, off, h, w, aRow, b, ldb, out, ldo)
        case (_, 2): portableWeightGrad6x2(a, off, h, w, aRow, b, ldb, out, ldo)
        default: portableWeightGrad12x1(a, off, h, w, aRow, b, ldb, out, ldo)
        }
    }
}
