import Foundation
import ModelFormat
import Runtime

/// One training image: its name, the CRC-32C of its file, and its pixels.
public struct SourceImage: Sendable {
    public var name: String
    public var checksum: UInt32
    public var raw: Image2D

    public init(name: String, checksum: UInt32, raw: Image2D) {
        (self.name, self.checksum, self.raw) = (name, checksum, raw)
    }

    /// Reads a FITS image (its first image HDU); invalid pixels become NaN (zero after
    /// normalisation).
    public static func load(path: String) throws -> SourceImage {
        let img = try FITSIO.readImage(path: path)
        var px = [Double](repeating: 0, count: img.pixels.count)
        for i in 0..<px.count { px[i] = img.invalid[i] ? .nan : Double(img.pixels[i]) }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let crc = bytes.withUnsafeBytes { CRC32C.checksum($0) }
        return SourceImage(name: URL(fileURLWithPath: path).lastPathComponent, checksum: crc,
                           raw: Image2D(height: img.height, width: img.width, pixels: px))
    }

    /// FITS files named by `paths`; a directory stands for the .fits/.fit/.fts/.fz files in it.
    public static func expand(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        let fm = FileManager.default
        for p in paths {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: p, isDirectory: &isDir) else { throw FITSError.missingFile(p) }
            if isDir.boolValue {
                let suffixes = [".fits", ".fit", ".fts", ".fz", ".fits.gz"]
                let names = try fm.contentsOfDirectory(atPath: p).sorted().filter { name in
                    suffixes.contains { name.lowercased().hasSuffix($0) }
                }
                out += names.map { (p as NSString).appendingPathComponent($0) }
            } else {
                out.append(p)
            }
        }
        return out
    }
}
