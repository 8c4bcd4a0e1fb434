#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory mapping of a whole file (or an empty buffer for an empty file).
public final class MappedFile: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let mapping: UnsafeMutableRawPointer?
    private let length: Int

    public init(path: String) throws {
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw ModelFormatError.io("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw ModelFormatError.io("\(path): \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) != S_IFREG { throw ModelFormatError.io("\(path): not a regular file") }
        length = Int(st.st_size)
        if length == 0 {
            mapping = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let p = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0)
        if p == MAP_FAILED || p == nil { throw ModelFormatError.io("\(path): cannot map: \(String(cString: strerror(errno)))") }
        mapping = p
        bytes = UnsafeRawBufferPointer(start: p, count: length)
    }

    deinit {
        if let m = mapping { munmap(m, length) }
    }
}

/// Writes files so that no half-written file can exist under the final name: the bytes go to a
/// temporary file in the same directory, are flushed to disk, and the file is then renamed
/// (or hard-linked when overwriting is not allowed, which fails atomically if the name exists).
public enum AtomicFile {
    public enum Failure: Error, CustomStringConvertible {
        case exists(String)
        case io(String)
        public var description: String {
            switch self {
            case .exists(let p): return "\(p) already exists (pass --overwrite to replace it)"
            case .io(let s): return s
            }
        }
    }

    /// A temporary path next to `path`, unique to this process and call.
    public static func temporaryPath(for path: String) -> String {
        let dir: String, base: String
        if let slash = path.lastIndex(of: "/") {
            dir = String(path[...slash]); base = String(path[path.index(after: slash)...])
        } else {
            dir = ""; base = path
        }
        return "\(dir).\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Removes temporary files next to `path` left by processes that no longer run (killed
    /// mid-write: their `.NAME.tmp-PID-N` files were never renamed into place).
    public static func removeStaleTemporaries(for path: String) {
        let dir: String, base: String
        if let slash = path.lastIndex(of: "/") {
            dir = String(path[...slash]); base = String(path[path.index(after: slash)...])
        } else {
            dir = ""; base = path
        }
        let prefix = ".\(base).tmp-"
        guard let d = opendir(dir.isEmpty ? "." : dir) else { return }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(prefix) else { continue }
            let rest = name.dropFirst(prefix.count)
            guard let dash = rest.firstIndex(of: "-"), let pid = Int32(rest[..<dash]), pid > 0 else { continue }
            if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH { unlink(dir + name) }
        }
    }

    /// Checks up front that `path` may be written (so long computations fail early), and
    /// removes temporaries of `path` that killed processes left.
    public static func checkWritable(_ path: String, overwrite: Bool) throws {
        removeStaleTemporaries(for: path)
        if !overwrite && access(path, F_OK) == 0 { throw Failure.exists(path) }
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if access(dir.isEmpty ? "/" : dir, W_OK) != 0 {
            throw Failure.io("cannot write in directory \(dir): \(String(cString: strerror(errno)))")
        }
    }

    /// Moves a finished temporary file to its final name. Removes the temporary on failure.
    public static func commit(temporary tmp: String, to path: String, overwrite: Bool) throws {
        // Flush the data before the name appears.
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { _ = fsync(fd); close(fd) }
        if overwrite {
            if rename(tmp, path) != 0 {
                let e = String(cString: strerror(errno))
                unlink(tmp)
                throw Failure.io("cannot rename \(tmp) to \(path): \(e)")
            }
            return
        }
        if link(tmp, path) == 0 {
            unlink(tmp)
            return
        }
        let err = errno
        if err == EEXIST {
            unlink(tmp)
            throw Failure.exists(path)
        }
        // File systems without hard links: check, then rename.
        if access(path, F_OK) == 0 {
            unlink(tmp)
            throw Failure.exists(path)
        }
        if rename(tmp, path) != 0 {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw Failure.io("cannot rename \(tmp) to \(path): \(e)")
        }
    }

    /// Writes `bytes` to `path` atomically.
    public static func write(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
        removeStaleTemporaries(for: path)
        let tmp = temporaryPath(for: path)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        if fd < 0 { throw Failure.io("cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var written = 0
        let ok: Bool = bytes.withUnsafeBytes { buf in
            while written < buf.count {
                let n = systemWrite(fd, buf.baseAddress! + written, buf.count - written)
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    return false
                }
                written += n
            }
            return true
        }
        let writeErr = errno
        if !ok || fsync(fd) != 0 {
            let e = String(cString: strerror(ok ? errno : writeErr))
            close(fd); unlink(tmp)
            throw Failure.io("cannot write \(path): \(e)")
        }
        if close(fd) != 0 {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw Failure.io("cannot write \(path): \(e)")
        }
        try commit(temporary: tmp, to: path, overwrite: overwrite)
    }
}

@inline(__always)
private func systemWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #elseif canImport(Musl)
    return Musl.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}
