/// Every problem a model file can have. Readers throw these; they never trap.
public enum ModelFormatError: Error, CustomStringConvertible, Equatable {
    case notAModel(String)
    case unsupportedVersion(major: Int, minor: Int)
    case truncated(String)
    case checksumMismatch(String)
    case invalid(String)
    case graph(String)
    case io(String)

    public var description: String {
        switch self {
        case .notAModel(let s): return "not an .acnn model: \(s)"
        case .unsupportedVersion(let ma, let mi):
            return "unsupported .acnn version \(ma).\(mi): this reader understands major version \(ModelFile.majorVersion); upgrade astrocnn"
        case .truncated(let s): return "truncated model file: \(s)"
        case .checksumMismatch(let s): return "checksum mismatch: \(s) (the file is damaged)"
        case .invalid(let s): return "invalid model file: \(s)"
        case .graph(let s): return "invalid model graph: \(s)"
        case .io(let s): return "cannot read model: \(s)"
        }
    }
}
