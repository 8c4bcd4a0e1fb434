/// Convolution of a small map as one GEMM over its patch matrix (im2col).
///
/// The direct kernels vectorise along an output row; a row narrower than one vector (an 8x8
/// map under AVX-512's 16 lanes, the bottom of a U-net trained on 128x128 crops) leaves lanes
/// empty: measured at 42-45% of peak there. Here the map's pixels are laid out as the columns of
/// one matrix, V[t][y * width + x] = input[c][y + u - top][x + v - left] for tap t = (c * kh + u)
/// * kw + v (zero outside the input), so that a packed kh x kw weight matrix, whose taps are in
/// the same (c, u, v) order, is a 1x1 convolution over kh * kw * c channels: one call of the
/// GEMM micro-kernels over vectors of whole-map columns. Each output adds bias, then its taps
/// in (c, u, v) order, one fused multiply-add each, as the direct kernel does, so the results
/// are the direct kernel's bits (tested).
extension FastOps {
    /// Whether `im2colConv2d` is the better path for an output map of this size: rows narrower
    /// than one vector of `isa`, and a patch matrix that stays small (at most 1,024 pixels).
    public static func prefersIm2col(height: Int, width: Int, isa: KernelISA) -> Bool {
        width < isa.vectorWidth && height * width <= 1024
    }

    /// Scratch (patch matrix and GEMM output) shared by every call: one buffer per running thread.
    static let im2colPool = ScratchPool()

    /// Stride-1 convolution of `input` into `output` with `w` (as `conv2d`): 'same' (output the
    /// input's size, padding (k-1)/2 before and the rest after, read as zero whatever the margins
    /// hold) or 'valid' (input larger by k - 1). The activation is applied on the way out;
    /// margins of `output` are not written.
    public static func im2colConv2d(_ input: PlanarView, _ output: PlanarView, _ w: PackedConv, padding: ConvPadding,
                                    activation: Activation, isa: KernelISA = .best) {
        let (h, wd, c, kh, kw) = (output.height, output.width, input.channels, w.kh, w.kw)
        precondition(c == w.inChannels && output.channels == w.outChannels)
        let (top, left) = padding == .same ? ((kh - 1) / 2, (kw - 1) / 2) : (0, 0)
        precondition(padding == .same ? (input.height == h && input.width == wd)
                                      : (input.height == h + kh - 1 && input.width == wd + kw - 1))
        let vw = isa.vectorWidth
        let pixels = h * wd
        let cols = (pixels + vw - 1) / vw * vw
        let taps = c * kh * kw
        let rows = w.blocks * 4
        let (buf, capacity) = im2colPool.borrow(taps * cols + rows * cols)
        defer { im2colPool.giveBack(buf, capacity: capacity) }
        let v = buf, out = buf + taps * cols
        let (inH, inW) = (input.height, input.width)
        for ci in 0..<c { for u in 0..<kh { for t in 0..<kw {
            let row = v + ((ci * kh + u) * kw + t) * cols
            for y in 0..<h {
                let d = row + y * wd
                let yy = y + u - top
                guard yy >= 0 && yy < inH else { d.update(repeating: 0, count: wd); continue }
                let src = input.pointer(ci, yy, 0)
                for x in 0..<wd {
                    let xx = x + t - left
                    d[x] = xx >= 0 && xx < inW ? src[xx] : 0
                }
            }
            (row + pixels).update(repeating: 0, count: cols - pixels)
        } } }
        gemm(isa, UnsafePointer(v), cols, taps, w.weights, w.bias, w.blocks, out, cols, cols / vw)
        for oc in 0..<output.channels {
            for y in 0..<h {
                let s = out + oc * cols + y * wd, d = output.pointer(oc, y, 0)
                switch activation {
                case .none: d.update(from: s, count: wd)
                case .relu: for x in 0..<wd { let q = s[x]; d[x] = q < 0 ? 0 : q }   // as the kernels: -0 stays -0
                case .leakyRelu(let a): for x in 0..<wd { let q = s[x]; d[x] = q < 0 ? q * a : q }
                }
            }
        }
    }
}
