/// Builds models node by node, tracking channel counts, so that architectures (the Flamary 3-CNN,
/// the Astro U-net) are written once and used by the trainer, the tests and the benchmarks.
public struct ModelBuilder {
    public private(set) var nodes: [Node] = []
    public private(set) var tensors: [String: TensorData] = [:]
    public var metadata: [String: MetaValue]
    public let input: GraphInput
    private var channels: [String: Int] = [:]
    private var counter = 0
    /// Supplies initial weights for a new tensor: (tensor name, shape, fan-in, fan-out) -> values.
    public typealias Initializer = (String, [Int], Int, Int) -> [Float]
    public var initializer: Initializer
    public var storage: DType = .float32

    public init(name: String, normalization: String = "none", inputChannels: Int = 1, inputName: String = "image",
                initializer: @escaping Initializer = { _, shape, _, _ in [Float](repeating: 0, count: shape.reduce(1, *)) }) {
        input = GraphInput(name: inputName, channels: inputChannels)
        channels[inputName] = inputChannels
        metadata = ["name": .string(name), "normalization": .string(normalization)]
        self.initializer = initializer
    }

    public func channelsOf(_ v: String) -> Int { channels[v]! }

    private mutating func fresh(_ base: String) -> String {
        counter += 1
        return "\(base)\(counter)"
    }

    private mutating func add(_ op: Op, _ inputs: [String], name: String?, params: [String] = [],
                              attributes: [String: MetaValue] = [:], outChannels: Int) -> String {
        let n = name ?? fresh(op.rawValue)
        nodes.append(Node(name: n, op: op, inputs: inputs, output: n, params: params, attributes: attributes))
        channels[n] = outChannels
        return n
    }

    /// Adds (or replaces) a parameter tensor.
    public mutating func setTensor(_ name: String, shape: [Int], values: [Float]) {
        tensors[name] = TensorData(shape: shape, values: values, storage: storage)
    }

    public mutating func conv(_ x: String, out: Int, kernel: Int, padding: Padding = .valid, bias: Bool = true,
                              name: String? = nil) -> String {
        conv(x, out: out, kh: kernel, kw: kernel, padding: padding, bias: bias, name: name)
    }

    public mutating func conv(_ x: String, out: Int, kh: Int, kw: Int, padding: Padding = .valid, bias: Bool = true,
                              name: String? = nil) -> String {
        let c = channels[x]!
        let n = name ?? fresh("conv")
        let shape = [out, c, kh, kw]
        setTensor("\(n).weight", shape: shape, values: initializer("\(n).weight", shape, c * kh * kw, out * kh * kw))
        var params = ["\(n).weight"]
        if bias {
            setTensor("\(n).bias", shape: [out], values: [Float](repeating: 0, count: out))
            params.append("\(n).bias")
        }
        return add(.conv2d, [x], name: n, params: params, attributes: ["padding": .string(padding.rawValue)], outChannels: out)
    }

    public mutating func relu(_ x: String, name: String? = nil) -> String {
        add(.relu, [x], name: name, outChannels: channels[x]!)
    }

    public mutating func leakyRelu(_ x: String, alpha: Double, name: String? = nil) -> String {
        add(.leakyRelu, [x], name: name, attributes: ["alpha": .float(alpha)], outChannels: channels[x]!)
    }

    public mutating func maxpool(_ x: String, name: String? = nil) -> String {
        add(.maxpool2d, [x], name: name, attributes: ["size": .int(2)], outChannels: channels[x]!)
    }

    public mutating func convTranspose(_ x: String, out: Int, bias: Bool = true, name: String? = nil) -> String {
        let c = channels[x]!
        let n = name ?? fresh("up")
        let shape = [out, c, 2, 2]
        setTensor("\(n).weight", shape: shape, values: initializer("\(n).weight", shape, c * 4, out * 4))
        var params = ["\(n).weight"]
        if bias {
            setTensor("\(n).bias", shape: [out], values: [Float](repeating: 0, count: out))
            params.append("\(n).bias")
        }
        return add(.convTranspose2d, [x], name: n, params: params, attributes: ["stride": .int(2)], outChannels: out)
    }

    public mutating func concat(_ xs: [String], name: String? = nil) -> String {
        add(.concat, xs, name: name, outChannels: xs.reduce(0) { $0 + channels[$1]! })
    }

    public mutating func constantChannel(like x: String, value: Double, parameter: String? = nil, name: String? = nil) -> String {
        var attrs: [String: MetaValue] = ["value": .float(value)]
        if let p = parameter { attrs["parameter"] = .string(p) }
        return add(.constantChannel, [x], name: name, attributes: attrs, outChannels: 1)
    }

    /// Format 1.1: Wiener deconvolution of a one-channel map with the run-time PSF.
    public mutating func wienerDeconvolution(_ x: String, context: Int, name: String? = nil) -> String {
        add(.wienerDeconvolution, [x], name: name, attributes: ["context": .int(Int64(context))], outChannels: 1)
    }

    /// The finished model with `output` as the graph output (derived metadata filled in).
    public func build(output: String) throws -> Model {
        let graph = Graph(inputs: [input], outputs: [output], nodes: nodes)
        let analysis = try GraphAnalysis(graph: graph, tensorShapes: tensors.mapValues { $0.shape })
        var meta = metadata
        for (k, v) in analysis.derivedMetadata { meta[k] = v }
        return Model(metadata: meta, graph: graph, tensors: tensors)
    }
}

/// The two architectures of the seed papers.
public enum Architectures {
    /// Flamary 2017: 64@10x10, 16@6x6, 1@5x5, valid convolutions, ReLU after each (the last too).
    public static func flamary3(name: String = "flamary3", initializer: @escaping ModelBuilder.Initializer) throws -> Model {
        var b = ModelBuilder(name: name, normalization: "clip_max", initializer: initializer)
        var x = b.conv(b.input.name, out: 64, kernel: 10, name: "conv1")
        x = b.relu(x, name: "relu1")
        x = b.conv(x, out: 16, kernel: 6, name: "conv2")
        x = b.relu(x, name: "relu2")
        x = b.conv(x, out: 1, kernel: 5, name: "conv3")
        x = b.relu(x, name: "relu3")
        return try b.build(output: x)
    }

    /// Flamary 2017's linear baseline: one 19x19 valid convolution, no activation.
    public static func flamary1(name: String = "flamary1", initializer: @escaping ModelBuilder.Initializer) throws -> Model {
        var b = ModelBuilder(name: name, normalization: "clip_max", initializer: initializer)
        let x = b.conv(b.input.name, out: 1, kernel: 19, name: "conv1")
        return try b.build(output: x)
    }

    /// Astro U-net (Vojtekova et al. 2020): per level two 3x3 'same' convs with LeakyReLU, max-pool
    /// down, 2x2 transposed convs up, skip concatenations, the exposure-time ratio fed in as a
    /// constant channel at the bottom, and a linear 1x1 conv to one channel.
    /// `widths` are the channel counts per level, e.g. [32, 64, 128, 256, 512].
    /// `inputSkip` also concatenates the network's input to the last level's features, so the
    /// linear head sees the input itself: it can pass what needs no change (bright sources)
    /// straight through and learn the correction (residual learning with only the format's ops).
    /// `ratioChannel: false` leaves the constant channel out (a U-net for deconvolution, which has
    /// no exposure ratio). `wienerContext` puts a `wiener_deconvolution` step (format 1.1) with
    /// that context first: the U-net then corrects the Wiener deconvolution with the run-time PSF
    /// (Tikhonet, Sureau, Lechat & Starck 2020), and the input skip carries the Wiener output.
    public static func unet(name: String = "astro-unet", widths: [Int] = [32, 64, 128, 256, 512], alpha: Double = 0.02,
                            exposureRatio: Double = 1, normalization: String = "none", inputSkip: Bool = false,
                            ratioChannel: Bool = true, wienerContext: Int? = nil,
                            initializer: @escaping ModelBuilder.Initializer) throws -> Model {
        precondition(widths.count >= 2)
        var b = ModelBuilder(name: name, normalization: normalization, initializer: initializer)
        var x = b.input.name
        if let c = wienerContext { x = b.wienerDeconvolution(x, context: c, name: "wiener") }
        let first = x
        var skips: [String] = []
        func block(_ b: inout ModelBuilder, _ x: String, _ c: Int, _ tag: String) -> String {
            var y = b.conv(x, out: c, kernel: 3, padding: .same, name: "\(tag).conv1")
            y = b.leakyRelu(y, alpha: alpha, name: "\(tag).act1")
            y = b.conv(y, out: c, kernel: 3, padding: .same, name: "\(tag).conv2")
            return b.leakyRelu(y, alpha: alpha, name: "\(tag).act2")
        }
        for (level, c) in widths.dropLast().enumerated() {
            x = block(&b, x, c, "down\(level)")
            skips.append(x)
            x = b.maxpool(x, name: "pool\(level)")
        }
        if ratioChannel {
            let ratio = b.constantChannel(like: x, value: exposureRatio, parameter: "exposure_ratio", name: "exposure_ratio")
            x = b.concat([x, ratio], name: "bottom.concat")
        }
        x = block(&b, x, widths.last!, "bottom")
        for (level, c) in widths.dropLast().enumerated().reversed() {
            x = b.convTranspose(x, out: c, name: "up\(level).upconv")
            x = b.concat([skips[level], x], name: "up\(level).concat")
            x = block(&b, x, c, "up\(level)")
        }
        if inputSkip { x = b.concat([x, first], name: "head.concat") }
        x = b.conv(x, out: 1, kernel: 1, name: "head")
        return try b.build(output: x)
    }
}

/// SplitMix64: a small, fast, seeded generator giving the same sequence on every platform
/// (for reproducible weight initialisation, tests and data simulation).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A uniform Float in [lo, hi).
    public mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float { Float.random(in: lo..<hi, using: &self) }
    /// `n` uniform Floats in [-1, 1).
    public mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
}
