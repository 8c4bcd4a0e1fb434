/// A single-channel image in Float64, row-major: the unit of the data pipeline and of the
/// classical methods (blur, noise, deconvolution, metrics).
public struct Image2D: Equatable, Sendable {
    public var height: Int
    public var width: Int
    public var pixels: [Double]

    public init(height: Int, width: Int, pixels: [Double]) {
        precondition(pixels.count == height * width)
        (self.height, self.width, self.pixels) = (height, width, pixels)
    }

    public init(height: Int, width: Int, repeating v: Double = 0) {
        self.init(height: height, width: width, pixels: [Double](repeating: v, count: height * width))
    }

    @inline(__always) public subscript(y: Int, x: Int) -> Double {
        get { pixels[y * width + x] }
        set { pixels[y * width + x] = newValue }
    }

    public var count: Int { pixels.count }

    /// Index i folded into 0..<n by half-sample symmetric reflection (d c b a | a b c d | d c b a),
    /// scipy.ndimage's 'reflect' mode; any i, any n >= 1.
    @inline(__always)
    public static func reflectIndex(_ i: Int, _ n: Int) -> Int {
        let period = 2 * n
        let j = ((i % period) + period) % period
        return j < n ? j : period - 1 - j
    }
    public var maximum: Double { pixels.max() ?? 0 }

    /// The sub-image of `h` x `w` pixels at (y, x).
    public func crop(y: Int, x: Int, height h: Int, width w: Int) -> Image2D {
        var out = Image2D(height: h, width: w)
        for i in 0..<h { for j in 0..<w { out.pixels[i * w + j] = pixels[(y + i) * width + x + j] } }
        return out
    }

    /// One of the 8 symmetries of the square: `k` & 3 quarter turns (counter-clockwise), then a
    /// left-right flip when k & 4 is set.
    public func dihedral(_ k: Int) -> Image2D {
        var img = self
        for _ in 0..<(k & 3) { img = img.rotated90() }
        if k & 4 != 0 { img = img.flippedLeftRight() }
        return img
    }

    public func rotated90() -> Image2D {
        var out = Image2D(height: width, width: height)
        for y in 0..<height { for x in 0..<width { out.pixels[(width - 1 - x) * height + y] = pixels[y * width + x] } }
        return out
    }

    public func flippedLeftRight() -> Image2D {
        var out = self
        for y in 0..<height { for x in 0..<width { out.pixels[y * width + x] = pixels[y * width + width - 1 - x] } }
        return out
    }

    public func map(_ f: (Double) -> Double) -> Image2D { Image2D(height: height, width: width, pixels: pixels.map(f)) }
}
