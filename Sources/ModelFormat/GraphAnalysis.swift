/// Validates a graph against its tensors and derives what a runtime needs: a topological
/// order, channel counts, the receptive field, output alignment and input size multiple,
/// and concrete shapes for a given image size. Every problem throws `ModelFormatError.graph`.

/// Channels, height and width of one feature map.
public struct MapShape: Equatable, Sendable, CustomStringConvertible {
    public var channels: Int
    public var height: Int
    public var width: Int
    public init(channels: Int, height: Int, width: Int) {
        self.channels = channels
        self.height = height
        self.width = width
    }
    public var count: Int { channels * height * width }
    public var description: String { "\(channels)x\(height)x\(width)" }
}

/// Spatial relation between the graph input and its output.
public struct Geometry: Equatable, Sendable {
    /// Receptive field of one output pixel, [height, width] (conservative for transposed convs).
    public var receptiveField: [Int]
    /// Output pixel (i, j) is aligned with network-input pixel (i + offset[0], j + offset[1]).
    public var outputOffset: [Int]
    /// Network input sides must be multiples of this (2^pooling depth).
    public var sizeMultiple: Int
    /// Context needed on each side of a tile so that its interior is computed exactly:
    /// [top, bottom, left, right] in input pixels.
    public var halo: [Int]
}

public struct GraphAnalysis: Sendable {
    public let graph: Graph
    /// Node indices in an order where every node comes after the producers of its inputs.
    public let order: [Int]
    /// Channel count of every value.
    public let channels: [String: Int]
    public let geometry: Geometry
    /// Multiply-adds x 2 per output pixel (asymptotic, large images).
    public let flopsPerOutputPixel: Double
    /// FLOPs per output pixel of each node, in node order of `graph.nodes` (0 for cheap ops).
    public let nodeFlopsPerOutputPixel: [Double]
    /// Weight shapes by tensor name, as validated.
    public let tensorShapes: [String: [Int]]

    public static let knownAttributes: [Op: Set<String>] = [
        .conv2d: ["padding", "stride"], .relu: [], .leakyRelu: ["alpha"], .maxpool2d: ["size"],
        .convTranspose2d: ["stride"], .concat: ["axis"], .constantChannel: ["value", "parameter"],
        .wienerDeconvolution: ["context"],
    ]

    /// The largest `context` of a `wiener_deconvolution` node.
    public static let maxWienerContext = 256

    public init(graph: Graph, tensorShapes: [String: [Int]]) throws {
        self.graph = graph
        self.tensorShapes = tensorShapes
        func fail(_ s: String) -> ModelFormatError { .graph(s) }

        if graph.inputs.isEmpty { throw fail("the graph has no input") }
        if graph.outputs.isEmpty { throw fail("the graph has no output") }
        if graph.nodes.isEmpty { throw fail("the graph has no node") }

        // Producers: every value has exactly one.
        var producer: [String: Int] = [:]  // value -> node index, -1 for graph inputs
        var channels: [String: Int] = [:]
        for inp in graph.inputs {
            if producer[inp.name] != nil { throw fail("value '\(inp.name)' is defined twice") }
            if inp.channels < 1 || inp.channels > 1 << 16 { throw fail("input '\(inp.name)' has \(inp.channels) channels") }
            producer[inp.name] = -1
            channels[inp.name] = inp.channels
        }
        var nodeNames = Set<String>()
        for (i, n) in graph.nodes.enumerated() {
            if !nodeNames.insert(n.name).inserted { throw fail("node name '\(n.name)' is used twice") }
            if producer[n.output] != nil { throw fail("value '\(n.output)' is produced twice (node '\(n.name)')") }
            producer[n.output] = i
        }
        for n in graph.nodes {
            for v in n.inputs where producer[v] == nil {
                throw fail("node '\(n.name)' reads '\(v)', which nothing produces")
            }
            if let known = GraphAnalysis.knownAttributes[n.op] {
                for k in n.attributes.keys where !known.contains(k) {
                    throw fail("node '\(n.name)' (\(n.op.rawValue)) has unknown attribute '\(k)'")
                }
            }
        }
        for o in graph.outputs where producer[o] == nil { throw fail("graph output '\(o)' is not produced") }

        // Topological order (Kahn), stable with respect to the stored order.
        var indegree = [Int](repeating: 0, count: graph.nodes.count)
        var consumers = [[Int]](repeating: [], count: graph.nodes.count)
        for (i, n) in graph.nodes.enumerated() {
            for v in n.inputs {
                if let p = producer[v], p >= 0 {
                    indegree[i] += 1
                    consumers[p].append(i)
                }
            }
        }
        var ready = (0..<graph.nodes.count).filter { indegree[$0] == 0 }
        var order: [Int] = []
        order.reserveCapacity(graph.nodes.count)
        var head = 0
        while head < ready.count {
            let i = ready[head]; head += 1
            order.append(i)
            for c in consumers[i] {
                indegree[c] -= 1
                if indegree[c] == 0 { ready.append(c) }
            }
        }
        if order.count != graph.nodes.count {
            let stuck = (0..<graph.nodes.count).filter { indegree[$0] > 0 }.map { graph.nodes[$0].name }
            throw fail("the graph has a cycle through node(s) \(stuck.prefix(5).joined(separator: ", "))")
        }
        self.order = order

        // Per-axis geometry: value position x depends on input positions [s*x + lo, s*x + hi] and
        // is aligned with input position s*x + anchor.
        struct Axis { var s: Double; var lo: Double; var hi: Double; var anchor: Double; var constant: Bool }
        var axes: [String: (Axis, Axis)] = [:]
        for inp in graph.inputs {
            let a = Axis(s: 1, lo: 0, hi: 0, anchor: 0, constant: false)
            axes[inp.name] = (a, a)
        }
        var nodeFlops = [Double](repeating: 0, count: graph.nodes.count)
        for i in order {
            let n = graph.nodes[i]
            let inC = n.inputs.map { channels[$0]! }
            func arity(_ k: Int) throws {
                if n.inputs.count != k { throw fail("node '\(n.name)' (\(n.op.rawValue)) takes \(k) input(s), has \(n.inputs.count)") }
            }
            func noParams() throws {
                if !n.params.isEmpty { throw fail("node '\(n.name)' (\(n.op.rawValue)) takes no parameter tensors") }
            }
            func intAttr(_ k: String, default d: Int64) throws -> Int64 {
                guard let v = n.attributes[k] else { return d }
                guard let x = v.intValue else { throw fail("node '\(n.name)': attribute '\(k)' must be an integer") }
                return x
            }
            func weights(rank4 kh: Int?, _ kw: Int?) throws -> (o: Int, c: Int, kh: Int, kw: Int) {
                if n.params.isEmpty || n.params.count > 2 {
                    throw fail("node '\(n.name)' needs a weight and an optional bias tensor, has \(n.params.count) parameters")
                }
                guard let w = tensorShapes[n.params[0]] else { throw fail("node '\(n.name)': tensor '\(n.params[0])' is not in the tensor table") }
                if w.count != 4 { throw fail("node '\(n.name)': weight '\(n.params[0])' must have rank 4 (OIHW), has shape \(w)") }
                if w[1] != inC[0] { throw fail("node '\(n.name)': weight '\(n.params[0])' expects \(w[1]) input channels, the input has \(inC[0])") }
                if let kh = kh, let kw = kw, w[2] != kh || w[3] != kw {
                    throw fail("node '\(n.name)': weight '\(n.params[0])' must be \(kh)x\(kw), is \(w[2])x\(w[3])")
                }
                if w[2] > 255 || w[3] > 255 { throw fail("node '\(n.name)': kernel \(w[2])x\(w[3]) is too large") }
                if n.params.count == 2 {
                    guard let b = tensorShapes[n.params[1]] else { throw fail("node '\(n.name)': tensor '\(n.params[1])' is not in the tensor table") }
                    if b != [w[0]] { throw fail("node '\(n.name)': bias '\(n.params[1])' must have shape [\(w[0])], has \(b)") }
                }
                return (w[0], w[1], w[2], w[3])
            }
            var outC = 0
            var ax: (Axis, Axis)
            switch n.op {
            case .conv2d:
                try arity(1)
                let w = try weights(rank4: nil, nil)
                if try intAttr("stride", default: 1) != 1 { throw fail("node '\(n.name)': conv2d stride must be 1 in format v1") }
                if let p = n.attributes["padding"] {
                    guard let s = p.stringValue, Padding(rawValue: s) != nil else {
                        throw fail("node '\(n.name)': padding must be \"valid\" or \"same\"")
                    }
                }
                outC = w.o
                let (ay, axx) = axes[n.inputs[0]]!
                func conv(_ a: Axis, _ k: Int) -> Axis {
                    var r = a
                    let kk = Double(k)
                    if n.padding == .valid {
                        r.hi = a.hi + a.s * (kk - 1)
                        r.anchor = a.anchor + a.s * (kk - 1) / 2
                    } else {
                        let p = Double((k - 1) / 2)
                        r.lo = a.lo - a.s * p
                        r.hi = a.hi + a.s * (kk - 1 - p)
                        r.anchor = a.anchor + a.s * ((kk - 1) / 2 - p)
                    }
                    return r
                }
                ax = (conv(ay, w.kh), conv(axx, w.kw))
                nodeFlops[i] = 2 * Double(w.o * w.c * w.kh * w.kw) / (ay.s * axx.s)
            case .relu:
                try arity(1); try noParams()
                outC = inC[0]; ax = axes[n.inputs[0]]!
            case .leakyRelu:
                try arity(1); try noParams()
                guard let a = n.attributes["alpha"]?.doubleValue, a.isFinite else {
                    throw fail("node '\(n.name)': leaky_relu needs a finite float attribute 'alpha'")
                }
                outC = inC[0]; ax = axes[n.inputs[0]]!
            case .maxpool2d:
                try arity(1); try noParams()
                if try intAttr("size", default: 2) != 2 { throw fail("node '\(n.name)': maxpool2d size must be 2 in format v1") }
                outC = inC[0]
                let (ay, axx) = axes[n.inputs[0]]!
                func pool(_ a: Axis) -> Axis {
                    Axis(s: a.s * 2, lo: a.lo, hi: a.hi + a.s, anchor: a.anchor + a.s * 0.5, constant: a.constant)
                }
                ax = (pool(ay), pool(axx))
            case .convTranspose2d:
                try arity(1)
                let w = try weights(rank4: 2, 2)
                if try intAttr("stride", default: 2) != 2 { throw fail("node '\(n.name)': conv_transpose2d stride must be 2 in format v1") }
                outC = w.o
                let (ay, axx) = axes[n.inputs[0]]!
                func up(_ a: Axis) -> Axis {
                    let s2 = a.s / 2
                    return Axis(s: s2, lo: a.lo - s2, hi: a.hi, anchor: a.anchor - a.s / 4, constant: a.constant)
                }
                ax = (up(ay), up(axx))
                nodeFlops[i] = 2 * Double(w.o * w.c) / (ax.0.s * ax.1.s)
            case .concat:
                try noParams()
                if n.inputs.count < 2 { throw fail("node '\(n.name)': concat needs at least 2 inputs") }
                if try intAttr("axis", default: 0) != 0 { throw fail("node '\(n.name)': concat is along channels (axis 0) in format v1") }
                outC = inC.reduce(0, +)
                let parts = n.inputs.map { axes[$0]! }
                let real = parts.filter { !$0.0.constant }
                if real.isEmpty {
                    ax = parts[0]
                } else {
                    var y = real[0].0, x = real[0].1
                    for p in real.dropFirst() {
                        if abs(p.0.s - y.s) > 1e-9 || abs(p.1.s - x.s) > 1e-9 {
                            throw fail("node '\(n.name)': concat inputs are at different scales")
                        }
                        if abs(p.0.anchor - y.anchor) > 1e-9 || abs(p.1.anchor - x.anchor) > 1e-9 {
                            throw fail("node '\(n.name)': concat inputs are not aligned (a 'valid' branch needs cropping, which format v1 lacks)")
                        }
                        y.lo = min(y.lo, p.0.lo); y.hi = max(y.hi, p.0.hi)
                        x.lo = min(x.lo, p.1.lo); x.hi = max(x.hi, p.1.hi)
                    }
                    ax = (y, x)
                }
            case .constantChannel:
                try arity(1); try noParams()
                guard let v = n.attributes["value"]?.doubleValue, v.isFinite else {
                    throw fail("node '\(n.name)': constant_channel needs a finite float attribute 'value'")
                }
                if let p = n.attributes["parameter"], p.stringValue == nil || p.stringValue!.isEmpty {
                    throw fail("node '\(n.name)': 'parameter' must be a non-empty string")
                }
                outC = 1
                var (ay, axx) = axes[n.inputs[0]]!
                ay.constant = true; axx.constant = true
                ax = (ay, axx)
            case .wienerDeconvolution:
                try arity(1); try noParams()
                if inC[0] != 1 { throw fail("node '\(n.name)': wiener_deconvolution takes a one-channel map, its input has \(inC[0])") }
                guard let c = n.attributes["context"]?.intValue, c >= 1, c <= Int64(GraphAnalysis.maxWienerContext) else {
                    throw fail("node '\(n.name)': wiener_deconvolution needs an integer attribute 'context' from 1 to \(GraphAnalysis.maxWienerContext)")
                }
                outC = 1
                // Geometry as a 'same' convolution of side 2 context + 1: an output pixel reads
                // `context` pixels each side (the PSF's reach and the filter's borders).
                let (ay, axx) = axes[n.inputs[0]]!
                func reach(_ a: Axis) -> Axis {
                    var r = a
                    r.lo = a.lo - a.s * Double(c); r.hi = a.hi + a.s * Double(c)
                    return r
                }
                ax = (reach(ay), reach(axx))
            }
            if outC > 1 << 16 { throw fail("node '\(n.name)' produces \(outC) channels") }
            channels[n.output] = outC
            axes[n.output] = ax
        }
        self.channels = channels
        self.nodeFlopsPerOutputPixel = nodeFlops
        self.flopsPerOutputPixel = nodeFlops.reduce(0, +)

        // Geometry, from the first output (all outputs must agree).
        let (gy, gx) = axes[graph.outputs[0]]!
        for o in graph.outputs {
            let (y, x) = axes[o]!
            if abs(y.s - 1) > 1e-9 || abs(x.s - 1) > 1e-9 {
                throw fail("graph output '\(o)' is not at the input's scale (pooling and upsampling must balance)")
            }
            if y.anchor != gy.anchor || x.anchor != gx.anchor || y.lo != gy.lo || y.hi != gy.hi || x.lo != gx.lo || x.hi != gx.hi {
                throw fail("graph outputs differ in geometry")
            }
        }
        var maxScale = 1.0
        for (y, x) in axes.values { maxScale = max(maxScale, y.s, x.s) }
        let rf = [Int((gy.hi - gy.lo).rounded(.up)) + 1, Int((gx.hi - gx.lo).rounded(.up)) + 1]
        let off = [Int(gy.anchor.rounded(.down)), Int(gx.anchor.rounded(.down))]
        // Halo: context beyond the aligned pixel on each side.
        let halo = [Int((Double(off[0]) - gy.lo).rounded(.up)), Int((gy.hi - Double(off[0])).rounded(.up)),
                    Int((Double(off[1]) - gx.lo).rounded(.up)), Int((gx.hi - Double(off[1])).rounded(.up))]
        self.geometry = Geometry(receptiveField: rf, outputOffset: off, sizeMultiple: Int(maxScale.rounded()), halo: halo)
    }

    /// Concrete shapes of every value for an input of the given size, or a clear error when the
    /// size is too small or not a valid multiple.
    public func shapes(height: Int, width: Int, channelsOf input: String? = nil) throws -> [String: MapShape] {
        var shapes: [String: MapShape] = [:]
        for inp in graph.inputs {
            shapes[inp.name] = MapShape(channels: inp.channels, height: height, width: width)
        }
        for i in order {
            let n = graph.nodes[i]
            let s = shapes[n.inputs[0]]!
            var out: MapShape
            switch n.op {
            case .conv2d:
                let w = tensorShapes[n.params[0]]!
                if n.padding == .valid {
                    out = MapShape(channels: w[0], height: s.height - w[2] + 1, width: s.width - w[3] + 1)
                } else {
                    out = MapShape(channels: w[0], height: s.height, width: s.width)
                }
            case .relu, .leakyRelu:
                out = s
            case .maxpool2d:
                if s.height % 2 != 0 || s.width % 2 != 0 {
                    throw ModelFormatError.graph("input \(height)x\(width): node '\(n.name)' would pool an odd-sized map \(s.height)x\(s.width); sizes must be multiples of \(geometry.sizeMultiple)")
                }
                out = MapShape(channels: s.channels, height: s.height / 2, width: s.width / 2)
            case .convTranspose2d:
                let w = tensorShapes[n.params[0]]!
                out = MapShape(channels: w[0], height: s.height * 2, width: s.width * 2)
            case .concat:
                var c = 0
                for v in n.inputs {
                    let t = shapes[v]!
                    if t.height != s.height || t.width != s.width {
                        throw ModelFormatError.graph("input \(height)x\(width): node '\(n.name)' concatenates maps of different sizes \(s) and \(t)")
                    }
                    c += t.channels
                }
                out = MapShape(channels: c, height: s.height, width: s.width)
            case .constantChannel, .wienerDeconvolution:
                out = MapShape(channels: 1, height: s.height, width: s.width)
            }
            if out.height < 1 || out.width < 1 {
                throw ModelFormatError.graph("input \(height)x\(width) is smaller than the receptive field \(geometry.receptiveField[0])x\(geometry.receptiveField[1]) (node '\(n.name)' would be empty)")
            }
            shapes[n.output] = out
        }
        return shapes
    }

    /// Output size for a network input of the given size.
    public func outputSize(height: Int, width: Int) throws -> (height: Int, width: Int) {
        let s = try shapes(height: height, width: width)
        let o = s[graph.outputs[0]]!
        return (o.height, o.width)
    }

    /// How much smaller the output is than the input, [rows, columns] (0 for 'same' networks).
    public func shrink() throws -> [Int] {
        let m = geometry.sizeMultiple
        let side = ((max(geometry.receptiveField[0], geometry.receptiveField[1]) + 4 * m) / m + 1) * m
        let o = try outputSize(height: side, width: side)
        return [side - o.height, side - o.width]
    }

    /// The metadata keys a writer derives from the graph.
    public var derivedMetadata: [String: MetaValue] {
        [
            "receptive_field": .ints(geometry.receptiveField.map(Int64.init)),
            "output_offset": .ints(geometry.outputOffset.map(Int64.init)),
            "size_multiple": .int(Int64(geometry.sizeMultiple)),
        ]
    }

    /// Checks that metadata written in a file agrees with the graph.
    public func checkMetadata(_ metadata: [String: MetaValue]) throws {
        for (k, v) in derivedMetadata {
            guard let have = metadata[k] else { throw ModelFormatError.invalid("required metadata '\(k)' is missing") }
            if have != v { throw ModelFormatError.invalid("metadata '\(k)' is \(have) but the graph gives \(v)") }
        }
        guard let name = metadata["name"]?.stringValue, !name.isEmpty else {
            throw ModelFormatError.invalid("required metadata 'name' is missing or not a string")
        }
        guard let norm = metadata["normalization"]?.stringValue else {
            throw ModelFormatError.invalid("required metadata 'normalization' is missing or not a string")
        }
        if !["none", "clip_max", "minmax", "meanstd", "sky_mad", "noise_mad", "sky_vst"].contains(norm) {
            throw ModelFormatError.invalid("unknown normalization '\(norm)'")
        }
        if let t = metadata["default_tile"] {
            guard let v = t.intValue, (1...65536).contains(v) else {
                throw ModelFormatError.invalid("metadata 'default_tile' is \(t); it must be an integer from 1 to 65536 pixels")
            }
        }
    }
}
