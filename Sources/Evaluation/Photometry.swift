import Foundation
import Imaging

/// Flux in a circular aperture (sep.sum_circle with subpix=0).
public struct ApertureFlux: Sendable, Equatable {
    public var flux: Double
    public var fluxErr: Double
    /// Area of the aperture inside the image, in pixels (masked pixels included).
    public var area: Double
    /// `SourceFlag.apertureTruncated` / `.apertureHasMasked` (flux NaN when every pixel is masked).
    public var flags: Int
}

public enum Photometry {
    /// Area of the intersection of the rectangle [x0, x1] x [y0, y1] with the disc of radius `r`
    /// centred at the origin, exactly (x0 <= x1, y0 <= y1).
    public static func circleOverlap(x0: Double, y0: Double, x1: Double, y1: Double, radius r: Double) -> Double {
        guard r > 0 else { return 0 }
        let r2 = r * r
        // Wholly inside (farthest corner within the circle) or wholly outside (nearest point beyond it).
        let fx = max(abs(x0), abs(x1)), fy = max(abs(y0), abs(y1))
        if fx * fx + fy * fy <= r2 { return (x1 - x0) * (y1 - y0) }
        let nx = x0 > 0 ? x0 : (x1 < 0 ? -x1 : 0), ny = y0 > 0 ? y0 : (y1 < 0 ? -y1 : 0)
        if nx * nx + ny * ny >= r2 { return 0 }
        let v = quadrant(x1, y1, r) - quadrant(x0, y1, r) - quadrant(x1, y0, r) + quadrant(x0, y0, r)
        return max(0, min(v, (x1 - x0) * (y1 - y0)))
    }

    /// Signed area of the disc within the rectangle spanned by the origin and (x, y).
    @inline(__always) static func quadrant(_ x: Double, _ y: Double, _ r: Double) -> Double {
        let sx: Double = x < 0 ? -1 : 1, sy: Double = y < 0 ? -1 : 1
        return sx * sy * cornerArea(min(abs(x), r), min(abs(y), r), r)
    }

    /// Area of the disc within [0, x] x [0, y], x and y in [0, r].
    @inline(__always) static func cornerArea(_ x: Double, _ y: Double, _ r: Double) -> Double {
        let r2 = r * r
        if x * x + y * y <= r2 { return x * y }
        // The arc leaves the rectangle's top edge at xc: below it the rectangle is full, beyond
        // it the area is that under the arc.
        let xc = max(0, r2 - y * y).squareRoot()
        return y * xc + arcIntegral(x, r) - arcIntegral(xc, r)
    }

    /// Integral of sqrt(r^2 - t^2) from 0 to x.
    @inline(__always) static func arcIntegral(_ x: Double, _ r: Double) -> Double {
        let s = min(1, max(-1, x / r))
        return 0.5 * (x * max(0, r * r - x * x).squareRoot() + r * r * asin(s))
    }

    /// Sum of `data` in a circle of radius `r` centred at (x, y) (0-based, pixel centres at
    /// integers), each pixel weighted by its exact overlap with the circle; the error is
    /// sqrt(sum err^2 overlap + flux / gain) (the Poisson term only with a gain and a positive
    /// flux). Masked pixels (`mask` true, or non-finite data) are left out and the sums scaled by
    /// total area / unmasked area, as sep does. Pixels of the aperture outside the image are
    /// left out and flagged `apertureTruncated` (sep's box rule).
    static func sumCircle(data: UnsafeBufferPointer<Float>, width w: Int, height h: Int, x: Double, y: Double, r: Double,
                          error: UnsafeBufferPointer<Float>?, mask: UnsafeBufferPointer<Bool>?, gain: Double?) -> ApertureFlux {
        var flags = 0
        guard x.isFinite, y.isFinite, abs(x) < 1e9, abs(y) < 1e9, r.isFinite, r > 0, r < 1e6 else {
            return ApertureFlux(flux: .nan, fluxErr: .nan, area: 0, flags: SourceFlag.apertureTruncated)
        }
        let rin = r - 0.7072
        let rIn2 = rin > 0 ? rin * rin : 0
        let rOut2 = (r + 0.7072) * (r + 0.7072)
        // sep's box: truncation toward zero, so only boxes starting at -1 or less are flagged.
        var xmin = Int(x - r + 0.5), xmax = Int(x + r + 1.4999999)
        var ymin = Int(y - r + 0.5), ymax = Int(y + r + 1.4999999)
        if xmin < 0 { xmin = 0; flags |= SourceFlag.apertureTruncated }
        if xmax > w { xmax = w; flags |= SourceFlag.apertureTruncated }
        if ymin < 0 { ymin = 0; flags |= SourceFlag.apertureTruncated }
        if ymax > h { ymax = h; flags |= SourceFlag.apertureTruncated }
        var tv = 0.0, sigtv = 0.0, totarea = 0.0, maskarea = 0.0
        var anyMaskArray = mask != nil
        if ymin < ymax && xmin < xmax {
            for iy in ymin..<ymax {
                let dy = Double(iy) - y
                for ix in xmin..<xmax {
                    let dx = Double(ix) - x
                    let rpix2 = dx * dx + dy * dy
                    guard rpix2 < rOut2 else { continue }
                    let overlap = rpix2 > rIn2 ? circleOverlap(x0: dx - 0.5, y0: dy - 0.5, x1: dx + 0.5, y1: dy + 0.5, radius: r) : 1
                    let i = iy * w + ix
                    let pix = data[i]
                    var varpix: Float = 0
                    if let e = error { varpix = e[i]; varpix *= varpix }
                    let masked = (mask?[i] ?? false) || !pix.isFinite
                    if masked {
                        anyMaskArray = true
                        flags |= SourceFlag.apertureHasMasked
                        maskarea += overlap
                    } else {
                        tv += Double(pix) * overlap
                        sigtv += Double(varpix) * overlap
                    }
                    totarea += overlap
                }
            }
        }
        if anyMaskArray {
            if totarea > maskarea {
                let scale = totarea / (totarea - maskarea)
                tv *= scale; sigtv *= scale
            } else if maskarea > 0 {
                // Every pixel masked: sep's 0 * (area / 0), not a number.
                tv = .nan; sigtv = .nan
            }
        }
        if let g = gain, g > 0, tv > 0 { sigtv += tv / g }
        return ApertureFlux(flux: tv, fluxErr: sigtv.squareRoot(), area: totarea, flags: flags)
    }
}
