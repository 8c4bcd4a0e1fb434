import CFITSIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Checks every tile of a GZIP-compressed image before cfitsio decompresses it for real.
/// cfitsio 4.2 inflates a GZIP_1/GZIP_2 tile into a buffer it grows for as long as the stream
/// asks, and a damaged tile whose stream never ends makes it grow without end (found by
/// `astrocnn fuzz`: hundreds of GB of address space in seconds, then a hang). Here each tile is
/// inflated by the same cfitsio routine but into a buffer that may not grow past the tile's
/// largest possible size (its pixels x 8 bytes): a damaged tile then fails at once, with an
/// error naming it. Rice, PLIO and HCOMPRESS tiles are decoded into fixed-size buffers by
/// cfitsio and need no check. The check reads each tile once (the decompression is done twice
/// for GZIP files).
enum FITSTileCheck {
    typealias Realloc = @convention(c) (UnsafeMutableRawPointer?, Int) -> UnsafeMutableRawPointer?
    typealias Uncompress = @convention(c) (UnsafeMutablePointer<CChar>?, Int, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                                           UnsafeMutablePointer<Int>?, Realloc?, UnsafeMutablePointer<Int>?,
                                           UnsafeMutablePointer<Int32>?) -> Int32

    nonisolated(unsafe) static var bound = 0
    /// The buffer as last grown: cfitsio drops its pointer when a growth is refused, so it is
    /// freed from here.
    nonisolated(unsafe) static var current: UnsafeMutableRawPointer?
    static let lock = NSLock()
    static let uncompress: Uncompress? = {
        guard let s = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "uncompress2mem_from_mem") else { return nil }
        return unsafeBitCast(s, to: Uncompress.self)
    }()

    /// Throws if a tile of the open compressed image `f` is damaged. `tilePixels` is the most
    /// pixels one tile holds.
    static func check(_ f: UnsafeMutablePointer<fitsfile>, path: String, hdu: Int, tilePixels: Double) throws {
        var status: Int32 = 0
        var cmp = [CChar](repeating: 0, count: 80)
        ffgkys(f, "ZCMPTYPE", &cmp, nil, &status)
        if status != 0 { return }
        let type = String(cString: cmp).trimmingCharacters(in: " ")
        guard type.hasPrefix("GZIP"), let uncompress = uncompress else { return }
        var rows: Int64 = 0
        ffgnrwll(f, &rows, &status)
        if status != 0 { return }
        lock.lock(); defer { lock.unlock() }
        bound = Int(min(tilePixels * 8 + 64, Double(1 << 40)))
        for name in ["COMPRESSED_DATA", "GZIP_COMPRESSED_DATA"] {
            var col: Int32 = 0
            status = 0
            var template = Array(name.utf8CString)
            ffgcno(f, CASEINSEN, &template, &col, &status)
            if status != 0 { continue }
            var buffer = [UInt8]()
            for row in 1...max(1, rows) where rows > 0 {
                var length: Int64 = 0, offset: Int64 = 0
                ffgdesll(f, col, row, &length, &offset, &status)
                if status != 0 || length == 0 { status = 0; continue }
                if Double(length) > Double(bound) * 2 + 1e6 {
                    throw FITSError.notFITS(path, "HDU \(hdu): compressed tile \(row) declares \(length) bytes, more than its pixels can need")
                }
                buffer = [UInt8](repeating: 0, count: Int(length))
                var anynul: Int32 = 0
                ffgcvb(f, col, row, 1, length, 0, &buffer, &anynul, &status)
                if status != 0 { throw FITSError.cfitsio("\(path): reading compressed tile \(row)", status, FITSIO.errorText(status)) }
                // The output buffer is ours: malloc'd here, grown only by the bounded realloc.
                let first = malloc(1024)
                FITSTileCheck.current = first
                var out: UnsafeMutablePointer<CChar>? = first?.assumingMemoryBound(to: CChar.self)
                var size = 1024, produced = 0
                var s: Int32 = 0
                _ = buffer.withUnsafeMutableBytes { b in
                    uncompress(b.baseAddress!.assumingMemoryBound(to: CChar.self), Int(length), &out, &size, { p, n in
                        if n > FITSTileCheck.bound { return nil }
                        guard let q = realloc(p, n) else { return nil }
                        FITSTileCheck.current = q
                        return q
                    }, &produced, &s)
                }
                if let o = out { free(o) } else { free(FITSTileCheck.current) }
                FITSTileCheck.current = nil
                if s != 0 {
                    throw FITSError.notFITS(path, "HDU \(hdu): compressed tile \(row) is damaged (its \(type) stream does not decompress to at most one tile of pixels; cfitsio status \(s))")
                }
            }
        }
    }
}
