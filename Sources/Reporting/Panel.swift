/// A comparison panel: images of one size side by side on one stretch (that of the first), each
/// with its title and optional circled positions (detected sources, in image pixel coordinates).
public enum ComparisonPanel {
    public struct Mark: Sendable {
        public var x: Double
        public var y: Double
        public var color: RGB
        public init(x: Double, y: Double, color: RGB) { (self.x, self.y, self.color) = (x, y, color) }
    }

    public static let matched = RGB(40, 200, 60), missed = RGB(230, 40, 40), spurious = RGB(40, 120, 255)

    /// `images[k].pixels` are row-major with row 0 the first FITS row (shown at the bottom).
    /// A `legend` line is written under the panels.
    public static func render(_ images: [(title: String, pixels: [Float], marks: [Mark])], width: Int, height: Int,
                              maxSide: Int = 400, circleRadius: Double = 5, legend: String? = nil) -> Canvas {
        let scale = max(1, (max(width, height) + maxSide - 1) / maxSide)
        let w = width / scale, h = height / scale
        let gap = 10, top = 24, bottom = legend == nil ? gap : 24
        var c = Canvas(width: images.count * (w + gap) + gap, height: h + top + bottom, background: .white)
        let reference = images.first?.pixels ?? []
        for (k, img) in images.enumerated() {
            let grey = Preview.asinhStretch(img.pixels, reference: reference)
            let x0 = gap + k * (w + gap)
            for y in 0..<h { for x in 0..<w {
                let v = grey[(height - 1 - y * scale) * width + x * scale]
                c.set(x0 + x, top + y, RGB(v, v, v))
            } }
            c.text(img.title, x: x0, y: 8)
            let r = max(2, circleRadius / Double(scale))
            for m in img.marks {
                let cx = Double(x0) + m.x / Double(scale), cy = Double(top) + (Double(height - 1) - m.y) / Double(scale)
                let steps = max(16, Int(2 * Double.pi * (r + 1)) * 2)
                for s in 0..<steps {
                    let t = 2 * Double.pi * Double(s) / Double(steps)
                    for rr in [r, r + 1] {
                        let px = Int((cx + rr * cos(t)).rounded()), py = Int((cy + rr * sin(t)).rounded())
                        if px >= x0 && px < x0 + w && py >= top && py < top + h { c.set(px, py, m.color) }
                    }
                }
            }
        }
        if let l = legend { c.text(l, x: gap, y: top + h + 8) }
        return c
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
