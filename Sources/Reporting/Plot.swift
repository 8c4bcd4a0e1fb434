import ModelFormat

/// Line plots with axes, ticks, labels and a legend.
public struct LinePlot {
    public struct Series {
        public var name: String
        public var points: [(Double, Double)]
        public init(name: String, points: [(Double, Double)]) { self.name = name; self.points = points }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var logX = false
    public var yFromZero = true

    public init(title: String, xLabel: String, yLabel: String, series: [Series], logX: Bool = false, yFromZero: Bool = true) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series
        self.logX = logX; self.yFromZero = yFromZero
    }

    public func render(width: Int = 900, height: Int = 560) -> Canvas {
        var c = Canvas(width: width, height: height)
        let left = 90, right = 20, top = 50, bottom = 70
        let pw = width - left - right, ph = height - top - bottom
        let all = series.flatMap(\.points)
        let tx: (Double) -> Double = { logX ? log2(max($0, 1e-300)) : $0 }
        var x0 = all.map { tx($0.0) }.min() ?? 0, x1 = all.map { tx($0.0) }.max() ?? 1
        var y0 = yFromZero ? 0 : (all.map(\.1).min() ?? 0), y1 = all.map(\.1).max() ?? 1
        if x1 <= x0 { x1 = x0 + 1; x0 -= 0 }
        if y1 <= y0 { y1 = y0 + 1 }
        let pad = (y1 - y0) * 0.08
        y1 += pad
        if !yFromZero { y0 -= pad }
        func px(_ x: Double) -> Double { Double(left) + (tx(x) - x0) / (x1 - x0) * Double(pw) }
        func py(_ y: Double) -> Double { Double(top + ph) - (y - y0) / (y1 - y0) * Double(ph) }
        // Grid and ticks.
        for i in 0...5 {
            let y = y0 + (y1 - y0) * Double(i) / 5
            c.line(Double(left), py(y), Double(left + pw), py(y), .grey)
            let label = formatTick(y)
            c.text(label, x: left - 8 - Canvas.textWidth(label), y: Int(py(y)) - 3)
        }
        var xt: [Double] = []
        if logX {
            var v = pow(2, x0.rounded(.down))
            while log2(v) <= x1 + 1e-9 { if log2(v) >= x0 - 1e-9 { xt.append(v) }; v *= 2 }
        } else {
            xt = (0...5).map { x0 + (x1 - x0) * Double($0) / 5 }
        }
        for x in xt {
            c.line(px(x), Double(top), px(x), Double(top + ph), .grey)
            let label = formatTick(x)
            c.text(label, x: Int(px(x)) - Canvas.textWidth(label) / 2, y: top + ph + 8)
        }
        c.line(Double(left), Double(top), Double(left), Double(top + ph), .black)
        c.line(Double(left), Double(top + ph), Double(left + pw), Double(top + ph), .black)
        for (k, s) in series.enumerated() {
            let color = RGB.palette[k % RGB.palette.count]
            let pts = s.points.sorted { $0.0 < $1.0 }
            for (a, b) in zip(pts, pts.dropFirst()) { c.line(px(a.0), py(a.1), px(b.0), py(b.1), color, thickness: 2) }
            for p in pts { c.marker(px(p.0), py(p.1), color) }
            c.fill(x: left + 14, y: top + 10 + 14 * k, w: 16, h: 4, color)
            c.text(s.name, x: left + 36, y: top + 8 + 14 * k)
        }
        c.text(title, x: max(4, (width - Canvas.textWidth(title, scale: 2)) / 2), y: 14, scale: 2)
        c.text(xLabel, x: left + (pw - Canvas.textWidth(xLabel)) / 2, y: height - 28)
        c.text(yLabel, x: 12, y: top + (ph + Canvas.textWidth(yLabel)) / 2, vertical: true)
        return c
    }

    func formatTick(_ v: Double) -> String {
        let a = abs(v)
        if a == 0 { return "0" }
        if a >= 1e6 || a < 1e-3 {
            var e = 0, m = a
            while m >= 10 { m /= 10; e += 1 }
            while m < 1 { m *= 10; e -= 1 }
            return (v < 0 ? "-" : "") + String(format1(m)) + "E" + String(e)
        }
        if a >= 100 { return String(Int(v.rounded())) }
        return format1(v, digits: a >= 10 ? 1 : a >= 1 ? 2 : 3)
    }

    func format1(_ v: Double, digits: Int = 1) -> String {
        let p = pow(10.0, Double(digits))
        let r = (v * p).rounded() / p
        var s = String(r)
        if s.hasSuffix(".0") { s.removeLast(2) }
        return s
    }
}

extension Canvas {
    /// Writes the PNG atomically.
    public func write(to path: String) throws {
        try AtomicFile.write(png(), to: path, overwrite: true)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
