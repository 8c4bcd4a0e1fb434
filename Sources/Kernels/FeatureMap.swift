/// A feature map of one image: `channels` planes of `height` x `width` Float32 values,
/// stored channel-major, row-major (CHW). The reference ops and the graph executor use it.
public struct FeatureMap: Equatable, Sendable {
    public var channels: Int
    public var height: Int
    public var width: Int
    public var data: [Float]

    public init(channels: Int, height: Int, width: Int, data: [Float]) {
        precondition(data.count == channels * height * width, "FeatureMap: data size mismatch")
        self.channels = channels
        self.height = height
        self.width = width
        self.data = data
    }

    public init(channels: Int, height: Int, width: Int, repeating v: Float = 0) {
        self.init(channels: channels, height: height, width: width,
                  data: [Float](repeating: v, count: channels * height * width))
    }

    public var planeSize: Int { height * width }

    @inlinable
    public subscript(c: Int, y: Int, x: Int) -> Float {
        get { data[(c * height + y) * width + x] }
        set { data[(c * height + y) * width + x] = newValue }
    }
}

/// Padding of a stride-1 convolution.
public enum ConvPadding: Sendable {
    /// No padding: output is (H - kh + 1) x (W - kw + 1).
    case valid
    /// Zero padding keeping the size: top/left pad (k - 1) / 2, the rest bottom/right.
    case same
}
