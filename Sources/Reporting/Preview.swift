/// Display stretches and side-by-side previews of astronomical images.
public enum Preview {
    /// Maps pixels to 0...255 with an asinh stretch between the 0.5 and 99.8 percentiles of the
    /// finite pixels of `reference` (so several images share one scale); NaN shows as black.
    public static func asinhStretch(_ pixels: [Float], reference: [Float], softening: Double = 0.05) -> [UInt8] {
        let finite = reference.filter { $0.isFinite }.sorted()
        guard !finite.isEmpty else { return [UInt8](repeating: 0, count: pixels.count) }
        let lo = Double(finite[Int(Double(finite.count - 1) * 0.005)])
        let hi = Double(finite[Int(Double(finite.count - 1) * 0.998)])
        let range = hi > lo ? hi - lo : 1
        let norm = asinh(1 / softening)
        return pixels.map { v in
            guard v.isFinite else { return 0 }
            let t = min(max((Double(v) - lo) / range, 0), 1)
            return UInt8((asinh(t / softening) / norm * 255).rounded())
        }
    }

    /// Images of equal size side by side with titles, on one shared stretch (that of the first).
    public static func sideBySide(_ images: [(title: String, pixels: [Float])], width: Int, height: Int,
                                  maxSide: Int = 600) -> Canvas {
        let scale = max(1, (max(width, height) + maxSide - 1) / maxSide)
        let w = width / scale, h = height / scale
        let gap = 10, top = 24
        var c = Canvas(width: images.count * (w + gap) + gap, height: h + top + gap, background: RGB(255, 255, 255))
        let reference = images.first?.pixels ?? []
        for (k, img) in images.enumerated() {
            let grey = asinhStretch(img.pixels, reference: reference)
            let x0 = gap + k * (w + gap)
            for y in 0..<h {
                for x in 0..<w {
                    // FITS row 0 is the bottom of the image: flip for display.
                    let v = grey[(height - 1 - y * scale) * width + x * scale]
                    c.set(x0 + x, top + y, RGB(v, v, v))
                }
            }
            c.text(img.title, x: x0, y: 8)
        }
        return c
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
