import Foundation
import Kernels
import ModelFormat

/// Geometric self-ensemble: each tile window is run through the network in several of the 8
/// symmetries of the square (quarter turns and flips), each output is turned back, and the
/// outputs are averaged. A sky has no preferred orientation, so every member is an equally good
/// estimate whose errors are partly independent of the others' (the network's own texture and
/// its biases at particular orientations average out); the cost is one network run per member.
///
/// Members, in the order they run and are summed (fixed, so the result is the same bits for any
/// thread count): 2 = identity and a left-right flip; 4 = those two, the half turn and the
/// top-bottom flip (shape-preserving); 8 = the four above, then the four that transpose the
/// window (a non-square window changes its plan's shape once each way per tile: the plan cache
/// frees one before making the other, so memory stays that of one plan). Symmetry `k` is `k & 3` counter-clockwise quarter turns
/// followed by a left-right flip when `k & 4` is set (`Image2D.dihedral`'s convention).
public enum SelfEnsemble {
    public static let counts = [1, 2, 4, 8]

    public static func members(_ count: Int) -> [Int] {
        switch count {
        case 2: return [0, 4]
        case 4: return [0, 4, 2, 6]
        case 8: return [0, 4, 2, 6, 1, 5, 3, 7]
        default: return [0]
        }
    }

    /// Refuses what the ensemble cannot average: a count other than 1, 2, 4, 8, and a network
    /// whose output is not aligned pixel for pixel with its input window ('valid' convolutions
    /// shrink it, and an even kernel shrinks it unevenly, so a flipped window's output would not
    /// land on the same pixels). A model's Wiener step deconvolves each turned window by the
    /// turned PSF (`transform(psf:_:)`).
    public static func check(_ network: Network, count: Int) throws {
        guard counts.contains(count) else {
            throw RuntimeError.badParameter("--ensemble takes 1, 2, 4 or 8 symmetries of the square; \(count) is not one of them")
        }
        guard count > 1 else { return }
        let g = network.analysis.geometry
        let shrink = try network.analysis.shrink()
        guard shrink == [0, 0], g.outputOffset == [0, 0] else {
            throw RuntimeError.unsupportedModel("--ensemble needs a model whose output has its input's size ('same' padding); '\(network.name)' shrinks its input by \(shrink[0])x\(shrink[1]) pixels, so a turned window's output would not fall on the same pixels")
        }
    }

    /// The PSF in symmetry `k`, for a turned image's Wiener step. The PSF's origin is pixel
    /// ((h - 1) / 2, (w - 1) / 2); an even side first gets a zero row (column) in front, which
    /// keeps the origin and puts it at the centre, so that turns keep it on the same pixel.
    public static func transform(psf: PSFKernel, _ k: Int) throws -> PSFKernel {
        if k == 0 { return psf }
        let ty = 1 - psf.height % 2, tx = 1 - psf.width % 2
        let h = psf.height + ty, w = psf.width + tx
        let (th, tw) = k & 1 == 0 ? (h, w) : (w, h)
        var values = [Double](repeating: 0, count: h * w)
        for y in 0..<psf.height {
            for x in 0..<psf.width {
                // Where padded pixel (y + ty, x + tx) goes: quarter turns ((r, q) of an hh x ww
                // map to (ww-1-q, r)), then the flip.
                var (r, q, hh, ww) = (y + ty, x + tx, h, w)
                for _ in 0..<(k & 3) { (r, q, hh, ww) = (ww - 1 - q, r, ww, hh) }
                if k & 4 != 0 { q = ww - 1 - q }
                values[r * tw + q] = psf.values[y * psf.width + x]
            }
        }
        return try PSFKernel(height: th, width: tw, values: values)
    }

    /// The header card and HISTORY line of an output made with `count` members (none for 1).
    public static func provenance(_ count: Int) -> (keywords: [(String, MetaValue, String)], history: [String]) {
        guard count > 1 else { return ([], []) }
        return ([("ACNNENSM", .int(Int64(count)), "self-ensemble: symmetries of the square averaged")],
                ["Self-ensemble: each tile restored in \(count) symmetries of the square (turns, flips), turned back and averaged"])
    }

    /// The window in symmetry `k` (channel by channel).
    public static func transform(_ x: FeatureMap, _ k: Int) -> FeatureMap {
        var y = x
        for _ in 0..<(k & 3) { y = rotated(y) }
        if k & 4 != 0 { y = flipped(y) }
        return y
    }

    /// Undoes `transform(_, k)`.
    public static func inverse(_ y: FeatureMap, _ k: Int) -> FeatureMap {
        var x = y
        if k & 4 != 0 { x = flipped(x) }
        for _ in 0..<((4 - (k & 3)) & 3) { x = rotated(x) }
        return x
    }

    /// One counter-clockwise quarter turn: pixel (y, x) of an h x w map goes to (w-1-x, y) of the
    /// w x h result.
    static func rotated(_ m: FeatureMap) -> FeatureMap {
        let h = m.height, w = m.width
        var out = FeatureMap(channels: m.channels, height: w, width: h)
        m.data.withUnsafeBufferPointer { s in
            out.data.withUnsafeMutableBufferPointer { d in
                for c in 0..<m.channels {
                    let src = s.baseAddress! + c * h * w, dst = d.baseAddress! + c * h * w
                    for y in 0..<h { for x in 0..<w { dst[(w - 1 - x) * h + y] = src[y * w + x] } }
                }
            }
        }
        return out
    }

    static func flipped(_ m: FeatureMap) -> FeatureMap {
        let w = m.width
        var out = m
        m.data.withUnsafeBufferPointer { s in
            out.data.withUnsafeMutableBufferPointer { d in
                for r in 0..<(m.channels * m.height) {
                    let src = s.baseAddress! + r * w, dst = d.baseAddress! + r * w
                    for x in 0..<w { dst[w - 1 - x] = src[x] }
                }
            }
        }
        return out
    }

    /// The mean of `run(window, k)` over the members' symmetries k of `input` (each output turned
    /// back), summed in member order. `count` 1 is `run(input, 0)` itself.
    public static func run(_ input: FeatureMap, count: Int, _ run: (FeatureMap, Int) throws -> FeatureMap) rethrows -> FeatureMap {
        let list = members(count)
        if list.count == 1 { return try run(input, 0) }
        var sum: FeatureMap?
        for k in list {
            let y = inverse(try run(transform(input, k), k), k)
            if sum == nil { sum = y; continue }
            precondition(y.height == sum!.height && y.width == sum!.width && y.channels == sum!.channels, "SelfEnsemble: member output shape")
            sum!.data.withUnsafeMutableBufferPointer { s in
                y.data.withUnsafeBufferPointer { v in
                    for i in 0..<s.count { s[i] += v[i] }
                }
            }
        }
        let scale = 1 / Float(list.count)
        var out = sum!
        out.data.withUnsafeMutableBufferPointer { s in
            for i in 0..<s.count { s[i] *= scale }
        }
        return out
    }
}
