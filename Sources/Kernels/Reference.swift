/// Scalar reference implementation of every op of the `.acnn` v1 format: plain loops, written
/// to be obviously correct. It is the oracle every fast kernel is tested against.
///
/// Conventions (docs/MODEL_FORMAT.md): conv weights are OIHW for cross-correlation; transposed
/// conv weights are [O, C, 2, 2] with y[o, 2i+u, 2j+v] = b[o] + sum_c W[o, c, u, v] x[c, i, j].
public enum Reference {
    /// Stride-1 2-D cross-correlation with optional bias.
    /// - weight: `outChannels * input.channels * kh * kw` values, OIHW.
    public static func conv2d(_ input: FeatureMap, weight: [Float], bias: [Float]?, outChannels: Int,
                              kh: Int, kw: Int, padding: ConvPadding) -> FeatureMap {
        let c = input.channels, h = input.height, w = input.width
        precondition(weight.count == outChannels * c * kh * kw, "conv2d: weight size")
        let (padTop, padLeft, oh, ow): (Int, Int, Int, Int)
        switch padding {
        case .valid: (padTop, padLeft, oh, ow) = (0, 0, h - kh + 1, w - kw + 1)
        case .same: (padTop, padLeft, oh, ow) = ((kh - 1) / 2, (kw - 1) / 2, h, w)
        }
        precondition(oh > 0 && ow > 0, "conv2d: input smaller than kernel")
        var out = FeatureMap(channels: outChannels, height: oh, width: ow)
        for o in 0..<outChannels {
            let b = bias?[o] ?? 0
            for i in 0..<(oh * ow) { out.data[o * oh * ow + i] = b }
            for ci in 0..<c {
                for u in 0..<kh {
                    for v in 0..<kw {
                        let wt = weight[((o * c + ci) * kh + u) * kw + v]
                        for y in 0..<oh {
                            let iy = y + u - padTop
                            if iy < 0 || iy >= h { continue }
                            for x in 0..<ow {
                                let ix = x + v - padLeft
                                if ix < 0 || ix >= w { continue }
                                out.data[(o * oh + y) * ow + x] += wt * input.data[(ci * h + iy) * w + ix]
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    public static func relu(_ x: FeatureMap) -> FeatureMap {
        var y = x
        for i in 0..<y.data.count { y.data[i] = max(y.data[i], 0) }
        return y
    }

    public static func leakyRelu(_ x: FeatureMap, alpha: Float) -> FeatureMap {
        var y = x
        for i in 0..<y.data.count where y.data[i] < 0 { y.data[i] *= alpha }
        return y
    }

    /// 2x2 max pooling with stride 2; height and width must be even.
    public static func maxpool2x2(_ x: FeatureMap) -> FeatureMap {
        precondition(x.height % 2 == 0 && x.width % 2 == 0, "maxpool2x2: odd size")
        var y = FeatureMap(channels: x.channels, height: x.height / 2, width: x.width / 2)
        for c in 0..<x.channels {
            for i in 0..<y.height {
                for j in 0..<y.width {
                    let a = max(x[c, 2 * i, 2 * j], x[c, 2 * i, 2 * j + 1])
                    let b = max(x[c, 2 * i + 1, 2 * j], x[c, 2 * i + 1, 2 * j + 1])
                    y[c, i, j] = max(a, b)
                }
            }
        }
        return y
    }

    /// 2x2 transposed convolution with stride 2 (each input pixel paints a 2x2 block).
    public static func convTranspose2x2(_ x: FeatureMap, weight: [Float], bias: [Float]?, outChannels: Int) -> FeatureMap {
        let c = x.channels
        precondition(weight.count == outChannels * c * 4, "convTranspose2x2: weight size")
        var y = FeatureMap(channels: outChannels, height: x.height * 2, width: x.width * 2)
        for o in 0..<outChannels {
            for i in 0..<x.height {
                for j in 0..<x.width {
                    for u in 0..<2 {
                        for v in 0..<2 {
                            var s = bias?[o] ?? 0
                            for ci in 0..<c { s += weight[((o * c + ci) * 2 + u) * 2 + v] * x[ci, i, j] }
                            y[o, 2 * i + u, 2 * j + v] = s
                        }
                    }
                }
            }
        }
        return y
    }

    /// Concatenation along channels, in order.
    public static func concat(_ parts: [FeatureMap]) -> FeatureMap {
        precondition(!parts.isEmpty)
        let h = parts[0].height, w = parts[0].width
        var data: [Float] = []
        for p in parts {
            precondition(p.height == h && p.width == w, "concat: size mismatch")
            data.append(contentsOf: p.data)
        }
        return FeatureMap(channels: parts.reduce(0) { $0 + $1.channels }, height: h, width: w, data: data)
    }

    /// A one-channel map filled with `value`.
    public static func constantChannel(height: Int, width: Int, value: Float) -> FeatureMap {
        FeatureMap(channels: 1, height: height, width: width, repeating: value)
    }
}
