import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A check of a FITS file's headers before cfitsio opens it. cfitsio 4.2 parses the keywords of
/// tile-compressed images while it opens a file and trusts them: a ZTILEn of 0 divides by zero
/// inside the library (found by `astrocnn fuzz`), which no error code can report. This scan reads
/// each HDU's header in the file (at most `maxHDUs`, each header at most `maxHeaderBytes`), and
/// refuses compressed-image keywords that the library cannot survive, with a clear error. It
/// reads headers only, in 2880-byte blocks, and skips data units by their declared size; where
/// the structure is damaged it stops and leaves the diagnosis to cfitsio, which fails cleanly on
/// those. gzip files are decompressed by cfitsio itself and are not scanned.
public enum FITSHeaderScan {
    static let maxHDUs = 1000
    static let maxHeaderBytes = 2880 * 1000

    public static func check(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        if fd < 0 { return }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return }
        let size = Int(st.st_size)
        var offset = 0
        var block = [UInt8](repeating: 0, count: 2880)
        for hdu in 0..<maxHDUs {
            var cards: [String: String] = [:]
            var headerBytes = 0
            var ended = false
            while !ended {
                // A header without END before the end of the file (or the limit): cfitsio may
                // still parse what is there, so its keywords are checked all the same.
                if offset + 2880 > size || headerBytes >= maxHeaderBytes || pread(fd, &block, 2880, off_t(offset)) != 2880 {
                    if cards["ZIMAGE"] == "T" { try checkCompressed(cards, path: path, hdu: hdu) }
                    return
                }
                if hdu == 0 && headerBytes == 0 && !block.starts(with: Array("SIMPLE  ".utf8)) { return }
                offset += 2880; headerBytes += 2880
                for c in 0..<36 {
                    let card = block[(c * 80)..<(c * 80 + 80)]
                    let key = String(decoding: card.prefix(8), as: UTF8.self).trimmingCharacters(in: .whitespaces)
                    if key == "END" { ended = true; break }
                    if card.count >= 10, card[card.startIndex + 8] == UInt8(ascii: "="), cards[key] == nil {
                        var v = String(decoding: card.dropFirst(10), as: UTF8.self)
                        if !v.contains("'"), let slash = v.firstIndex(of: "/") { v = String(v[..<slash]) }
                        cards[key] = v.trimmingCharacters(in: .whitespaces)
                    }
                }
            }
            if cards["ZIMAGE"] == "T" { try checkCompressed(cards, path: path, hdu: hdu) }
            // Skip the data unit.
            func int(_ k: String) -> Int? { cards[k].flatMap { Int($0) } }
            guard let bitpix = int("BITPIX"), let naxis = int("NAXIS"), (0...999).contains(naxis) else { return }
            var count = naxis == 0 ? 0 : 1
            for i in 0..<naxis {
                // Random-groups HDUs (NAXIS1 = 0) have no image to scan past; stop there.
                guard let n = int("NAXIS\(i + 1)"), n >= 0 else { return }
                let (c, o) = count.multipliedReportingOverflow(by: n)
                if o || c > size { return }
                count = c
            }
            let pcount = int("PCOUNT") ?? 0, gcount = int("GCOUNT") ?? 1
            guard pcount >= 0, pcount <= size, gcount >= 0, gcount <= size else { return }
            let bytes = Double(abs(bitpix) / 8) * Double(gcount) * Double(pcount + count)
            if bytes > Double(size) { return }
            offset += (Int(bytes) + 2879) / 2880 * 2880
            if offset >= size { return }
        }
    }

    static func checkCompressed(_ cards: [String: String], path: String, hdu: Int) throws {
        func bad(_ why: String) -> FITSError {
            FITSError.notFITS(path, "HDU \(hdu) is a tile-compressed image with \(why)")
        }
        func int(_ k: String) -> Int? { cards[k].flatMap { Int($0) } }
        guard let znaxis = int("ZNAXIS"), (1...999).contains(znaxis) else { throw bad("ZNAXIS = \(cards["ZNAXIS"] ?? "missing")") }
        guard let zbitpix = int("ZBITPIX"), [8, 16, 32, 64, -32, -64].contains(zbitpix) else {
            throw bad("ZBITPIX = \(cards["ZBITPIX"] ?? "missing")")
        }
        for i in 1...znaxis {
            guard let n = int("ZNAXIS\(i)"), n >= 0, n < Int(Int32.max) else { throw bad("ZNAXIS\(i) = \(cards["ZNAXIS\(i)"] ?? "missing")") }
            if let t = cards["ZTILE\(i)"] {
                guard let v = Int(t), v >= 1, v < Int(Int32.max) else { throw bad("ZTILE\(i) = \(t), not a positive integer") }
            }
        }
        for (k, v) in cards where k.hasPrefix("ZVAL") || k == "ZBLANK" || k == "ZDITHER0" {
            if Double(v) == nil && !v.hasPrefix("'") { throw bad("\(k) = \(v), not a number") }
        }
    }
}
