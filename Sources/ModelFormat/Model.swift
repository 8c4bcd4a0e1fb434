/// In-memory description of an `.acnn` model (see docs/MODEL_FORMAT.md).

/// A typed metadata or attribute value.
public enum MetaValue: Equatable, Sendable, CustomStringConvertible {
    case string(String)
    case int(Int64)
    case float(Double)
    case bool(Bool)
    case ints([Int64])
    case floats([Double])

    var typeCode: UInt8 {
        switch self {
        case .string: return 1
        case .int: return 2
        case .float: return 3
        case .bool: return 4
        case .ints: return 5
        case .floats: return 6
        }
    }

    public var description: String {
        switch self {
        case .string(let s): return s
        case .int(let v): return String(v)
        case .float(let v): return String(v)
        case .bool(let v): return v ? "true" : "false"
        case .ints(let v): return "[" + v.map(String.init).joined(separator: ", ") + "]"
        case .floats(let v): return "[" + v.map { String($0) }.joined(separator: ", ") + "]"
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var intValue: Int64? { if case .int(let v) = self { return v }; return nil }
    /// A float, or an integer widened to a float.
    public var doubleValue: Double? {
        switch self {
        case .float(let v): return v
        case .int(let v): return Double(v)
        default: return nil
        }
    }
    public var intsValue: [Int64]? { if case .ints(let v) = self { return v }; return nil }
    /// A float array, or an integer array widened to floats.
    public var doubleArray: [Double]? {
        switch self {
        case .floats(let v): return v
        case .ints(let v): return v.map(Double.init)
        default: return nil
        }
    }
}

/// Storage type of a tensor in the file. Tensors are always float32 in memory.
public enum DType: UInt8, Sendable {
    case float32 = 1
    case float16 = 2
    public var size: Int { self == .float32 ? 4 : 2 }
    public var name: String { self == .float32 ? "float32" : "float16" }
}

/// The operators of format version 1 (`wiener_deconvolution` from 1.1).
public enum Op: String, Sendable, CaseIterable {
    case conv2d
    case relu
    case leakyRelu = "leaky_relu"
    case maxpool2d
    case convTranspose2d = "conv_transpose2d"
    case concat
    case constantChannel = "constant_channel"
    /// Format 1.1: Wiener-Tikhonov deconvolution of a one-channel map with the PSF given at run
    /// time, lambda by generalised cross-validation on the map (`WienerDeconvolution`).
    case wienerDeconvolution = "wiener_deconvolution"

    /// The first minor version of format 1 that has the op.
    public var minorVersion: UInt16 { self == .wienerDeconvolution ? 1 : 0 }
}

/// Padding of a `conv2d` node.
public enum Padding: String, Sendable {
    case valid
    case same
}

public struct Node: Equatable, Sendable {
    public var name: String
    public var op: Op
    public var inputs: [String]
    public var output: String
    /// Parameter tensor names: conv weights first, then the optional bias.
    public var params: [String]
    public var attributes: [String: MetaValue]

    public init(name: String, op: Op, inputs: [String], output: String, params: [String] = [],
                attributes: [String: MetaValue] = [:]) {
        self.name = name
        self.op = op
        self.inputs = inputs
        self.output = output
        self.params = params
        self.attributes = attributes
    }

    public var padding: Padding {
        if case .string(let s)? = attributes["padding"], let p = Padding(rawValue: s) { return p }
        return .valid
    }
    public var alpha: Float { Float(attributes["alpha"]?.doubleValue ?? 0) }
    public var constantValue: Float { Float(attributes["value"]?.doubleValue ?? 0) }
    public var runtimeParameter: String? { attributes["parameter"]?.stringValue }
    /// `wiener_deconvolution`: the context (pixels each side) the step needs beyond an output pixel.
    public var context: Int { Int(attributes["context"]?.intValue ?? 0) }
}

public struct GraphInput: Equatable, Sendable {
    public var name: String
    public var channels: Int
    public init(name: String, channels: Int) {
        self.name = name
        self.channels = channels
    }
}

public struct Graph: Equatable, Sendable {
    public var inputs: [GraphInput]
    public var outputs: [String]
    public var nodes: [Node]
    public init(inputs: [GraphInput], outputs: [String], nodes: [Node]) {
        self.inputs = inputs
        self.outputs = outputs
        self.nodes = nodes
    }
}

/// A tensor's values (always float32 in memory) and the type it is stored as.
public struct TensorData: Equatable, Sendable {
    public var shape: [Int]
    public var values: [Float]
    public var storage: DType
    public init(shape: [Int], values: [Float], storage: DType = .float32) {
        self.shape = shape
        self.values = values
        self.storage = storage
    }
    public var count: Int { shape.reduce(1, *) }
}

/// A complete model: what `ModelWriter` writes and `ModelReader` returns.
public struct Model: Equatable, Sendable {
    public var metadata: [String: MetaValue]
    public var graph: Graph
    public var tensors: [String: TensorData]

    public init(metadata: [String: MetaValue], graph: Graph, tensors: [String: TensorData]) {
        self.metadata = metadata
        self.graph = graph
        self.tensors = tensors
    }

    public var name: String { metadata["name"]?.stringValue ?? "unnamed" }
    public var parameterCount: Int { tensors.values.reduce(0) { $0 + $1.count } }

    /// The model without its input step: a `wiener_deconvolution` reading the graph input is
    /// removed and what read its output reads the input. Trainers use it: their crop sources apply
    /// that step themselves (on each crop with its context), so the trainable graph starts from
    /// the step's output. Other models are returned as they are.
    public func withoutInputStep() -> Model {
        let input = graph.inputs[0].name
        guard let k = graph.nodes.firstIndex(where: { $0.op == .wienerDeconvolution && $0.inputs == [input] }) else { return self }
        let removed = graph.nodes[k].output
        var m = self
        m.graph.nodes.remove(at: k)
        for i in m.graph.nodes.indices { m.graph.nodes[i].inputs = m.graph.nodes[i].inputs.map { $0 == removed ? input : $0 } }
        m.graph.outputs = m.graph.outputs.map { $0 == removed ? input : $0 }
        // The geometry changes: readers derive it again from the graph.
        for k in ["receptive_field", "output_offset", "size_multiple"] { m.metadata[k] = nil }
        return m
    }
}

/// Constants of the file layout.
public enum ModelFile {
    public static let magic: [UInt8] = [0x41, 0x43, 0x4E, 0x4E, 0x0D, 0x0A, 0x1A, 0x0A]
    public static let byteOrderMark: UInt32 = 0x0A0B_0C0D
    public static let majorVersion: UInt16 = 1
    /// The newest minor version this code writes and reads; a file is written with the lowest
    /// minor version its graph needs (1.0 unless it uses a 1.1 op).
    public static let minorVersion: UInt16 = 1
    public static let preambleLength = 64
    public static let alignment = 64
    static let tagMeta: UInt32 = fourCC("META")
    static let tagTens: UInt32 = fourCC("TENS")
    static let tagGraph: UInt32 = fourCC("GRPH")

    static func fourCC(_ s: String) -> UInt32 {
        let b = Array(s.utf8)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }
}
