import Foundation
import Imaging
import Runtime

/// Object flags, as sep sets them.
public enum SourceFlag {
    /// The object is one of several deblended from one detection.
    public static let merged = 0x0001
    /// The object touches the image border.
    public static let truncated = 0x0002
    /// x and y of the object are fully correlated (second moments were padded).
    public static let singular = 0x0008
    /// The photometry aperture leaves the image.
    public static let apertureTruncated = 0x0010
    /// The photometry aperture holds masked pixels (their flux is made up by scaling; the flux
    /// is NaN when all are masked).
    public static let apertureHasMasked = 0x0020
}

/// One object found by `SourceExtractor.extract`, in sep's catalogue terms.
public struct ExtractedObject: Sendable, Equatable {
    /// Barycentre, 0-based pixel coordinates (pixel centres at integers); weighted by the
    /// filtered values when a detection filter is used, as in sep.
    public var x: Double, y: Double
    /// Second moments and the ellipse they define.
    public var x2: Double, y2: Double, xy: Double
    public var a: Double, b: Double, theta: Double
    /// Pixels of the object (above threshold in the filtered image, after deblending).
    public var npix: Int
    /// Sum of the background-subtracted (unfiltered) values of the pixels, and of the filtered ones.
    public var isoFlux: Double, filteredFlux: Double
    /// Highest unfiltered and filtered pixel values.
    public var peak: Double, filteredPeak: Double
    public var xmin: Int, xmax: Int, ymin: Int, ymax: Int
    /// Mean detection threshold over the object's pixels (data units).
    public var threshold: Double
    public var flags: Int
}

/// Source extraction with sep's algorithms (`sep.extract(data, thresh, err=rms, mask=...,
/// minarea, filter_kernel, filter_type='conv', deblend_nthresh, deblend_cont, clean,
/// clean_param)`): a pixel belongs to a detection when its filtered value exceeds `threshold`
/// times its error; 8-connected pixels are grouped by Lutz's one-pass algorithm; detections of
/// at least `minArea` pixels are deblended by a tree over `deblendThresholds` exponentially
/// spaced levels between the detection threshold and the peak (branches holding more than
/// `deblendContrast` of the flux split off; the leftover pixels go to the sub-objects at random
/// with the probability of a Gaussian profile, from sep's seeded generator); cleaning removes
/// objects that lie within the wings of brighter neighbours. Objects come out in sep's order:
/// the order in which the raster scan completes them, sub-objects in tree order.
public enum SourceExtractor {
    public struct Options: Sendable, Equatable {
        public var threshold: Double = 1.5
        public var minArea: Int = 5
        /// Detection filter (normalised by the sum of its absolute values); nil = none.
        public var filter: [[Double]]? = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
        public var deblendThresholds: Int = 32
        public var deblendContrast: Double = 0.005
        public var clean: Bool = true
        public var cleanParameter: Double = 1.0
        public init() {}
    }

    /// Extracts objects from `data` (background subtracted) with per-pixel errors `error`; masked
    /// pixels (`mask` true, or NaN data) count as 0 in the filter and are never detected.
    public static func extract(data: [Float], error: [Float], width: Int, height: Int, mask: [Bool]? = nil,
                               options: Options) throws -> [ExtractedObject] {
        guard width >= 1, height >= 1 else { throw DetectionError.imageTooSmall(width: width, height: height, minimum: 1) }
        let n = width * height
        guard data.count == n, error.count == n else { throw DetectionError.badParameter("data and error maps must have width*height pixels") }
        if let m = mask, m.count != n { throw DetectionError.maskSize(expected: n, got: m.count) }
        guard options.minArea >= 1 else { throw DetectionError.badParameter("minimum area must be at least 1 pixel") }
        guard options.deblendThresholds >= 1 else { throw DetectionError.badParameter("deblending needs at least 1 threshold") }
        guard options.threshold.isFinite, options.threshold > 0 else { throw DetectionError.badParameter("threshold must be positive") }
        guard options.deblendContrast.isFinite, options.deblendContrast >= 0 else { throw DetectionError.badParameter("deblend contrast must be >= 0") }
        guard options.cleanParameter.isFinite, options.cleanParameter > 0 else { throw DetectionError.badParameter("clean parameter must be positive") }
        var image = data, noise = error
        for i in 0..<n where (mask?[i] ?? false) || !data[i].isFinite || !error[i].isFinite {
            image[i] = 0; noise[i] = sepBig
        }
        let filtered: [Float]
        if let k = options.filter {
            guard !k.isEmpty, let kw = k.first?.count, kw > 0, k.allSatisfy({ $0.count == kw }),
                  k.allSatisfy({ $0.allSatisfy { $0.isFinite } }) else {
                throw DetectionError.badParameter("the filter must be a non-empty rectangular array of finite numbers")
            }
            filtered = try convolve(image, width: width, height: height, kernel: k)
        } else {
            filtered = image
        }
        var run = Extraction(width: width, height: height, minArea: options.minArea, nthresh: options.deblendThresholds,
                             mincont: options.deblendContrast)
        try run.scan(image: image, filtered: filtered, noise: noise, relThresh: Float(options.threshold))
        var final = run.final
        var survives = [Bool](repeating: true, count: final.objects.count)
        if options.clean {
            for i in 0..<final.objects.count { analyseMThresh(i, &final, minArea: options.minArea) }
            clean(final, beta: options.cleanParameter, survives: &survives)
        }
        var out: [ExtractedObject] = []
        for (i, o) in final.objects.enumerated() where survives[i] {
            out.append(ExtractedObject(x: o.mx, y: o.my, x2: o.mx2, y2: o.my2, xy: o.mxy, a: Double(o.a), b: Double(o.b),
                                       theta: Double(o.theta), npix: o.fdnpix, isoFlux: Double(o.dflux),
                                       filteredFlux: Double(o.fdflux), peak: Double(o.dpeak), filteredPeak: Double(o.fdpeak),
                                       xmin: o.xmin, xmax: o.xmax, ymin: o.ymin, ymax: o.ymax,
                                       threshold: Double(o.thresh), flags: o.flag))
        }
        return out
    }

    /// sep's line convolution: the kernel normalised by the sum of its absolute values, zero
    /// outside the image, accumulated in single precision in kernel raster order.
    static func convolve(_ image: [Float], width w: Int, height h: Int, kernel: [[Double]]) throws -> [Float] {
        let ch = kernel.count, cw = kernel[0].count
        var conv = kernel.flatMap { $0.map(Float.init) }
        var sum: Float = 0
        for c in conv { sum = Float(Double(sum) + Double(abs(c))) }
        guard sum > 0 else { throw DetectionError.badParameter("the filter must have a non-zero element") }
        for i in 0..<conv.count { conv[i] = conv[i] / sum }
        var out = [Float](repeating: 0, count: w * h)
        let cw2 = cw / 2, ch2 = ch / 2
        image.withUnsafeBufferPointer { src in
            conv.withUnsafeBufferPointer { k in
                out.withUnsafeMutableBufferPointer { dst in
                    for y in 0..<h {
                        let y0 = y - ch2
                        let kyLo = max(0, -y0), kyHi = min(ch, h - y0)
                        let row = dst.baseAddress! + y * w
                        for ky in kyLo..<max(kyLo, kyHi) {
                            let line = src.baseAddress! + (y0 + ky) * w
                            for kx in 0..<cw {
                                let c = k[ky * cw + kx], dcx = kx - cw2
                                let lo = max(0, -dcx), hi = min(w, w - dcx)
                                var x = lo
                                while x < hi { row[x] += c * line[x + dcx]; x += 1 }
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}

// MARK: - Pixel and object lists (sep's plist / objstruct / objliststruct)

struct PixelRecord {
    var next: Int
    var x: Int
    var y: Int
    var value: Float
    var cdvalue: Float
    var thresh: Float
}

struct SepObject {
    var thresh: Float = 0, mthresh: Float = 0
    var fdnpix = 0, dnpix = 0
    var xpeak = 0, ypeak = 0, xcpeak = 0, ycpeak = 0
    var mx = 0.0, my = 0.0
    var xmin = 0, xmax = 0, ymin = 0, ymax = 0
    var mx2 = 0.0, my2 = 0.0, mxy = 0.0
    var a: Float = 0, b: Float = 0, theta: Float = 0, abcor: Float = 0
    var cxx: Float = 0, cyy: Float = 0, cxy: Float = 0
    var fdflux: Float = 0, dflux: Float = 0
    var fdpeak: Float = 0, dpeak: Float = 0
    var flag = 0
    var firstpix = -1, lastpix = -1
}

struct ObjectList {
    var objects: [SepObject] = []
    var pixels: [PixelRecord] = []
    var thresh: Float = 0

    /// sep's addobjdeep: appends object `k` of `from`, with a copy of its pixels, to this list.
    mutating func addDeep(_ k: Int, from: ObjectList) {
        var obj = from.objects[k]
        let first = pixels.count
        var i = obj.firstpix
        while i != -1 {
            var p = from.pixels[i]
            i = p.next
            p.next = pixels.count + 1
            pixels.append(p)
        }
        if pixels.count > first { pixels[pixels.count - 1].next = -1 }
        obj.firstpix = pixels.count > first ? first : -1
        obj.lastpix = pixels.count > first ? pixels.count - 1 : -1
        objects.append(obj)
    }
}

struct Info {
    var pixnb = 0
    var firstpix = -1
    var lastpix = -1
    var flag = 0
}

enum ScanStatus { case complete, incomplete, nonObject, object }

/// What a Lutz scan reads and builds: the pixels above threshold, how they are stored and
/// chained, and what happens to each completed group.
protocol LutzSink {
    /// Stores pixel (x, y) and returns its index when it belongs to the foreground, else nil.
    mutating func take(x: Int, y: Int) -> Int?
    /// Chains pixel `b` after pixel `a`.
    mutating func link(_ a: Int, _ b: Int)
    /// A completed 8-connected group.
    mutating func complete(_ info: Info) throws
}

/// R. K. Lutz's one-pass labelling of 8-connected pixels (SExtractor's, as sep runs it, with its
/// markers, stacks and pixel chaining order, so that groups, their pixel order and the order in
/// which they complete are sep's).
struct LutzScanner {
    var info: [Info], store: [Info], marker: [UInt8], psstack: [ScanStatus], start: [Int], end: [Int]
    init(width: Int) {
        let n = width + 1
        info = [Info](repeating: Info(), count: n); store = info
        marker = [UInt8](repeating: 0, count: n)
        psstack = [ScanStatus](repeating: .complete, count: n)
        start = [Int](repeating: 0, count: n); end = start
    }

    @inline(__always) mutating func merge<S: LutzSink>(_ a: Int, _ b: Info, _ sink: inout S) {
        info[a].pixnb += b.pixnb
        info[a].flag |= b.flag
        if info[a].firstpix == -1 {
            info[a].firstpix = b.firstpix; info[a].lastpix = b.lastpix
        } else if b.lastpix != -1 {
            sink.link(info[a].lastpix, b.firstpix)
            info[a].lastpix = b.lastpix
        }
    }

    /// Scans columns x0..<x1 of rows y0..<y1 (plus one empty column and row that close the
    /// groups); `imageWidth`/`imageHeight` set the border flags.
    mutating func scan<S: LutzSink>(x0: Int, x1: Int, y0: Int, y1: Int, imageWidth: Int, imageHeight: Int, sink: inout S) throws {
        for xl in x0...x1 { marker[xl] = 0 }
        var co = 0, pstop = 0
        var cur = Info(pixnb: 1, firstpix: -1, lastpix: -1, flag: 0)
        for yl in y0...y1 {
            var ps = ScanStatus.complete, cs = ScanStatus.nonObject
            let trunflag = (yl == 0 || yl == imageHeight - 1) ? SourceFlag.truncated : 0
            for xl in x0...x1 {
                let newmarker = marker[xl]
                marker[xl] = 0
                let cn = (xl < x1 && yl < y1) ? sink.take(x: xl, y: yl) : nil
                if let cn {
                    cur.flag = trunflag
                    if xl == 0 || xl == imageWidth - 1 { cur.flag |= SourceFlag.truncated }
                    cur.firstpix = cn; cur.lastpix = cn
                    if cs != .object {
                        // Start of a segment.
                        cs = .object
                        if ps == .object {
                            if start[co] == unknownStart { marker[xl] = markS; start[co] = xl } else { marker[xl] = marks }
                        } else {
                            psstack[pstop] = ps; pstop += 1
                            marker[xl] = markS
                            co += 1
                            start[co] = xl
                            ps = .complete
                            info[co] = Info()
                        }
                    }
                }
                if newmarker != 0 {
                    if newmarker == markS {
                        psstack[pstop] = ps; pstop += 1
                        if cs == .nonObject {
                            psstack[pstop] = .complete; pstop += 1
                            co += 1
                            info[co] = store[xl]
                            start[co] = unknownStart
                        } else {
                            merge(co, store[xl], &sink)
                        }
                        ps = .object
                    } else if newmarker == marks {
                        if cs == .object && ps == .complete {
                            pstop -= 1
                            let xl2 = start[co]
                            merge(co - 1, info[co], &sink)
                            co -= 1
                            if start[co] == unknownStart { start[co] = xl2 } else { marker[xl2] = marks }
                        }
                        ps = .object
                    } else if newmarker == markf {
                        ps = .incomplete
                    } else if newmarker == markF {
                        pstop -= 1; ps = psstack[pstop]
                        if cs == .nonObject && ps == .complete {
                            if start[co] == unknownStart {
                                try sink.complete(info[co])
                            } else {
                                marker[end[co]] = markF
                                store[start[co]] = info[co]
                            }
                            co -= 1
                            pstop -= 1; ps = psstack[pstop]
                        }
                    }
                }
                if cn != nil {
                    merge(co, cur, &sink)
                } else if cs == .object {
                    // End of a segment.
                    cs = .nonObject
                    if ps != .complete {
                        marker[xl] = markf
                        end[co] = xl
                    } else {
                        pstop -= 1; ps = psstack[pstop]
                        marker[xl] = markF
                        store[start[co]] = info[co]
                        co -= 1
                    }
                }
            }
        }
    }
}

let markS = UInt8(ascii: "S"), marks = UInt8(ascii: "s"), markF = UInt8(ascii: "F"), markf = UInt8(ascii: "f")
let unknownStart = -1

// MARK: - Object measurements (sep's preanalyse, analyse, analysemthresh)

func preanalyse(_ no: Int, _ list: inout ObjectList) {
    var obj = list.objects[no]
    var fdnpix = 0, rv = 0.0
    var peak = -sepBig, cpeak = -sepBig
    var xmin = 2 * 1_048_576, ymin = 2 * 1_048_576, xmax = 0, ymax = 0
    var xpeak = 0, ypeak = 0, xcpeak = 0, ycpeak = 0
    var i = obj.firstpix
    while i != -1 {
        let p = list.pixels[i]
        if peak < p.value { peak = p.value; xpeak = p.x; ypeak = p.y }
        if cpeak < p.cdvalue { cpeak = p.cdvalue; xcpeak = p.x; ycpeak = p.y }
        rv += Double(p.cdvalue)
        if xmin > p.x { xmin = p.x }
        if xmax < p.x { xmax = p.x }
        if ymin > p.y { ymin = p.y }
        if ymax < p.y { ymax = p.y }
        fdnpix += 1
        i = p.next
    }
    obj.fdnpix = fdnpix; obj.fdflux = Float(rv); obj.fdpeak = cpeak; obj.dpeak = peak
    obj.xpeak = xpeak; obj.ypeak = ypeak; obj.xcpeak = xcpeak; obj.ycpeak = ycpeak
    obj.xmin = xmin; obj.xmax = xmax; obj.ymin = ymin; obj.ymax = ymax
    list.objects[no] = obj
}

func analyse(_ no: Int, _ list: inout ObjectList, robust: Bool) {
    preanalyse(no, &list)
    var obj = list.objects[no]
    var dnpix = 0, area2 = 0
    var mx = 0.0, my = 0.0, tv = 0.0, mx2 = 0.0, my2 = 0.0, mxy = 0.0
    let thresh = Double(obj.thresh), peak = obj.dpeak
    let rv = Double(obj.fdflux)
    let thresh2 = (thresh + Double(peak)) / 2
    let xmin = obj.xmin, ymin = obj.ymin
    var i = obj.firstpix
    while i != -1 {
        let p = list.pixels[i]
        let x = Float(p.x - xmin), y = Float(p.y - ymin)
        let cval = p.cdvalue, val = p.value
        tv += Double(val)
        if Double(val) > thresh { dnpix += 1 }
        if Double(val) > thresh2 { area2 += 1 }
        // Single-precision products as in C (float * integer is a float).
        mx += Double(cval * x)
        my += Double(cval * y)
        mx2 += Double(cval * x * x)
        my2 += Double(cval * y * y)
        mxy += Double(cval * x * y)
        i = p.next
    }
    var xm = mx / rv, ym = my / rv
    var xm2: Double, ym2: Double, xym: Double
    if robust && obj.flag & SourceFlag.merged != 0 {
        let xn = obj.mx - Double(xmin), yn = obj.my - Double(ymin)
        xm2 = mx2 / rv + xn * xn - 2 * xm * xn
        ym2 = my2 / rv + yn * yn - 2 * ym * yn
        xym = mxy / rv + xn * yn - xm * yn - xn * ym
        xm = xn; ym = yn
    } else {
        xm2 = mx2 / rv - xm * xm
        ym2 = my2 / rv - ym * ym
        xym = mxy / rv - xm * ym
    }
    var temp2 = xm2 * ym2 - xym * xym
    if temp2 < 0.00694 {
        xm2 += 0.0833333; ym2 += 0.0833333
        temp2 = xm2 * ym2 - xym * xym
        obj.flag |= SourceFlag.singular
    }
    var temp = xm2 - ym2
    let theta = abs(temp) > 0 ? atan2(2 * xym, temp) / 2 : Double.pi / 4
    temp = (0.25 * temp * temp + xym * xym).squareRoot()
    var pmx2 = 0.5 * (xm2 + ym2), pmy2 = pmx2
    pmx2 += temp; pmy2 -= temp
    obj.dnpix = dnpix
    obj.dflux = Float(tv)
    obj.mx = xm + Double(xmin); obj.my = ym + Double(ymin)
    obj.mx2 = xm2; obj.my2 = ym2; obj.mxy = xym
    obj.a = Float(pmx2.squareRoot()); obj.b = Float(pmy2.squareRoot()); obj.theta = Float(theta)
    obj.cxx = Float(ym2 / temp2); obj.cyy = Float(xm2 / temp2); obj.cxy = Float(-2 * xym / temp2)
    let darea = Double(area2) - Double(dnpix)
    let t1t2 = thresh / thresh2
    if t1t2 > 0 {
        obj.abcor = Float((darea < 0 ? darea : -1) / (2 * Double.pi * log(t1t2 < 1 ? t1t2 : 0.99) * Double(obj.a) * Double(obj.b)))
        if obj.abcor > 1 { obj.abcor = 1 }
    } else {
        obj.abcor = 1
    }
    list.objects[no] = obj
}

/// sep's analysemthresh: the minArea-th highest (filtered value - threshold) over the object's
/// pixels, with sep's heap (including its quirks, so cleaning decides as sep does).
func analyseMThresh(_ no: Int, _ list: inout ObjectList, minArea: Int) {
    var obj = list.objects[no]
    guard obj.fdnpix >= minArea else { obj.mthresh = 0; list.objects[no] = obj; return }
    var heap = [Float](repeating: 0, count: minArea)
    var h = minArea, filled = 0
    var i = obj.firstpix
    while i != -1 {
        let p = list.pixels[i]
        let tpix = p.cdvalue - p.thresh
        if h > 0 {
            heap[filled] = tpix; filled += 1
        } else if h != 0 {
            if tpix > heap[0] {
                heap[0] = tpix
                var j = 0
                // sep's sift-down: compares with child k-1 (or k) and continues from k.
                while true {
                    var k = (j + 1) << 1
                    if k > minArea { break }
                    if k != minArea && heap[k - 1] > heap[k] { k += 1 }
                    let c = k - 1
                    if heap[j] <= heap[c] { break }
                    heap.swapAt(j, c)
                    j = k
                }
            }
        } else {
            heap.sort()
        }
        h -= 1
        i = p.next
    }
    obj.mthresh = heap[0]
    list.objects[no] = obj
}

/// sep's clean(): an object is removed when the Moffat-like wing model of a brighter neighbour
/// predicts more than the object's mthresh at its position. Pairs farther apart than 10 times
/// the sum of their semi-major axes are skipped by sep; `CleanNeighbours` finds the others
/// without testing every pair, and they are visited in sep's order, so the outcome is sep's.
func clean(_ list: ObjectList, beta: Double, survives: inout [Bool]) {
    let objs = list.objects
    let cleanZone = 10.0
    let neighbours = CleanNeighbours(objs)
    var candidates: [Int] = []
    for i in 0..<objs.count {
        guard survives[i] else { continue }
        let o1 = objs[i]
        let unitAreaIn = Double.pi * Double(o1.a) * Double(o1.b)
        let ampIn = Double(o1.fdflux) / (2 * unitAreaIn * Double(o1.abcor))
        let alphaIn = (pow(ampIn / Double(o1.thresh), 1 / beta) - 1) * unitAreaIn / Double(o1.fdnpix)
        neighbours.candidates(after: i, into: &candidates)
        for j in candidates {
            guard survives[j] else { continue }
            let o2 = objs[j]
            let dx = Float(o1.mx - o2.mx), dy = Float(o1.my - o2.my)
            var rlim: Float = o1.a + o2.a
            rlim *= rlim
            if Double(dx * dx + dy * dy) > Double(rlim) * cleanZone * cleanZone { continue }
            if o2.fdflux < o1.fdflux {
                let q: Float = o1.cxx * dx * dx + o1.cyy * dy * dy + o1.cxy * dx * dy
                let val = 1 + alphaIn * Double(q)
                if val > 1 && Float(val < 1e10 ? ampIn * pow(val, -beta) : 0) > o2.mthresh { survives[j] = false }
            } else {
                let unitArea = Double.pi * Double(o2.a) * Double(o2.b)
                let amp = Double(o2.fdflux) / (2 * unitArea * Double(o2.abcor))
                let alpha = (pow(amp / Double(o2.thresh), 1 / beta) - 1) * unitArea / Double(o2.fdnpix)
                let q: Float = o2.cxx * dx * dx + o2.cyy * dy * dy + o2.cxy * dx * dy
                let val = 1 + alpha * Double(q)
                if val > 1 && Float(val < 1e10 ? amp * pow(val, -beta) : 0) > o1.mthresh { survives[i] = false }
            }
        }
    }
}

/// For each object, the later objects that may lie within 10 (a1 + a2) of it (a superset,
/// ascending): a grid of the objects with a <= the 99th percentile of a, a list of the larger
/// ones, and a list of those whose position or size is not finite (always candidates).
struct CleanNeighbours {
    let objs: [SepObject]
    var small: [Int: [Int]] = [:]
    var large: [Int] = []
    var always: [Int] = []
    var aSmall = 0.0, cell = 1.0

    init(_ objs: [SepObject]) {
        self.objs = objs
        let finiteA = objs.compactMap { o -> Double? in
            let a = Double(o.a)
            return a.isFinite && o.mx.isFinite && o.my.isFinite && a < 1e6 && abs(o.mx) < 1e9 && abs(o.my) < 1e9 ? a : nil
        }.sorted()
        aSmall = finiteA.isEmpty ? 0 : finiteA[min(finiteA.count - 1, finiteA.count * 99 / 100)]
        cell = max(8, 10 * 2 * aSmall)
        for (k, o) in objs.enumerated() {
            let a = Double(o.a)
            guard a.isFinite, o.mx.isFinite, o.my.isFinite, a < 1e6, abs(o.mx) < 1e9, abs(o.my) < 1e9 else { always.append(k); continue }
            if a > aSmall { large.append(k); continue }
            small[key(Int((o.mx / cell).rounded(.down)), Int((o.my / cell).rounded(.down))), default: []].append(k)
        }
    }

    func key(_ cx: Int, _ cy: Int) -> Int { cx &* 1_000_003 &+ cy }

    /// Reach with a margin far above the single-precision rounding of sep's test.
    static func reach(_ a1: Double, _ a2: Double) -> Double { 10 * (a1 + a2) * 1.01 + 0.01 }

    func candidates(after i: Int, into out: inout [Int]) {
        out.removeAll(keepingCapacity: true)
        let o = objs[i]
        let a = Double(o.a)
        guard a.isFinite, o.mx.isFinite, o.my.isFinite, a < 1e6, abs(o.mx) < 1e9, abs(o.my) < 1e9 else {
            out.append(contentsOf: (i + 1)..<max(i + 1, objs.count)); return
        }
        let r = Self.reach(a, aSmall)
        let cx0 = Int(((o.mx - r) / cell).rounded(.down)), cx1 = Int(((o.mx + r) / cell).rounded(.down))
        let cy0 = Int(((o.my - r) / cell).rounded(.down)), cy1 = Int(((o.my + r) / cell).rounded(.down))
        for cy in cy0...cy1 {
            for cx in cx0...cx1 {
                guard let list = small[key(cx, cy)] else { continue }
                for j in list where j > i && abs(objs[j].mx - o.mx) <= r && abs(objs[j].my - o.my) <= r { out.append(j) }
            }
        }
        for j in large where j > i {
            let rj = Self.reach(a, Double(objs[j].a))
            if abs(objs[j].mx - o.mx) <= rj && abs(objs[j].my - o.my) <= rj { out.append(j) }
        }
        for j in always where j > i { out.append(j) }
        out.sort()
    }
}

/// glibc's rand_r (sep seeds it with 1 at every extraction and draws from it in deblending),
/// so leftover pixels of deblended objects go where sep puts them on any platform.
public struct SepRandom: Sendable {
    public var seed: UInt32 = 1
    public static let max: Int32 = 2_147_483_647
    public init(seed: UInt32 = 1) { self.seed = seed }
    public mutating func next() -> Int32 {
        var next = seed
        next = next &* 1_103_515_245 &+ 12345
        var result = (next / 65536) % 2048
        next = next &* 1_103_515_245 &+ 12345
        result <<= 10
        result ^= (next / 65536) % 1024
        next = next &* 1_103_515_245 &+ 12345
        result <<= 10
        result ^= (next / 65536) % 1024
        seed = next
        return Int32(bitPattern: result)
    }
}

// MARK: - The extraction (sep's sep_extract main loop, sortit, deblend, lutz, gatherup)

struct Extraction {
    let width: Int, height: Int, minArea: Int, nthresh: Int, mincont: Double
    var final = ObjectList()
    var random = SepRandom()
    var lutz: LutzScanner
    static let subObjectLimit = 1024

    init(width: Int, height: Int, minArea: Int, nthresh: Int, mincont: Double) {
        (self.width, self.height, self.minArea, self.nthresh, self.mincont) = (width, height, minArea, nthresh, mincont)
        lutz = LutzScanner(width: width)
    }

    /// The detection scan over the whole image: Lutz's algorithm on pixels whose filtered value
    /// exceeds relThresh * noise; each completed group of at least minArea pixels is deblended
    /// and measured (sortit) and its pixels go back to the pool.
    mutating func scan(image: [Float], filtered: [Float], noise: [Float], relThresh: Float) throws {
        var sink = DetectionSink(extraction: self, image: image, filtered: filtered, noise: noise, relThresh: relThresh)
        var scanner = LutzScanner(width: width)
        try scanner.scan(x0: 0, x1: width, y0: 0, y1: height, imageWidth: width, imageHeight: height, sink: &sink)
        self = sink.extraction
    }

    struct DetectionSink: LutzSink {
        var extraction: Extraction
        let image: [Float], filtered: [Float], noise: [Float], relThresh: Float
        var pool: [PixelRecord] = []
        var freeHead = -1

        mutating func take(x: Int, y: Int) -> Int? {
            let i = y * extraction.width + x
            let thresh = relThresh * noise[i]
            guard filtered[i] > thresh else { return nil }
            let rec = PixelRecord(next: -1, x: x, y: y, value: image[i], cdvalue: filtered[i], thresh: thresh)
            if freeHead != -1 {
                let cn = freeHead
                freeHead = pool[cn].next
                pool[cn] = rec
                return cn
            }
            pool.append(rec)
            return pool.count - 1
        }

        mutating func link(_ a: Int, _ b: Int) { pool[a].next = b }

        mutating func complete(_ info: Info) throws {
            if info.pixnb >= extraction.minArea { try extraction.sortit(info, pool: pool) }
            if info.lastpix != -1 {
                pool[info.lastpix].next = freeHead
                freeHead = info.firstpix
            }
        }
    }

    /// One complete detection: measure, deblend, analyse the parts, add them to the final list.
    mutating func sortit(_ info: Info, pool: [PixelRecord]) throws {
        // The detection as a list of its own (sep's objlist over the pixel pool).
        var input = ObjectList()
        var i = info.firstpix
        var sum = 0.0, count = 0
        while i != -1 {
            var p = pool[i]
            sum += Double(p.thresh); count += 1
            i = p.next
            p.next = input.pixels.count + 1
            input.pixels.append(p)
        }
        input.pixels[input.pixels.count - 1].next = -1
        var obj = SepObject()
        obj.firstpix = 0; obj.lastpix = input.pixels.count - 1
        obj.flag = info.flag
        obj.thresh = Float(sum / Double(count))  // sep's get_mean_thresh
        input.thresh = obj.thresh
        input.objects = [obj]
        preanalyse(0, &input)
        var parts = try deblend(input)
        for k in 0..<parts.objects.count {
            analyse(k, &parts, robust: true)
            final.addDeep(k, from: parts)
        }
    }

    /// sep's deblend() for the single object of `input`.
    mutating func deblend(_ input: ObjectList) throws -> ObjectList {
        let xn = nthresh
        let root = input.objects[0]
        // Submap: index of each pixel of the detection in input.pixels, -1 elsewhere.
        let subx = root.xmin, suby = root.ymin, subw = root.xmax - root.xmin + 1, subh = root.ymax - root.ymin + 1
        var submap = [Int](repeating: -1, count: subw * subh)
        var i = root.firstpix
        while i != -1 { let p = input.pixels[i]; submap[(p.x - subx) + (p.y - suby) * subw] = i; i = p.next }

        var levels = [ObjectList](repeating: ObjectList(), count: xn)
        var sons = [[[Int]]](repeating: [], count: xn)
        var ok = [[Bool]](repeating: [], count: xn)
        var out = ObjectList()
        var deb2 = ObjectList()
        let thresh0 = Double(root.thresh)
        out.thresh = root.thresh; deb2.thresh = root.thresh
        levels[0].addDeep(0, from: input)
        deb2.addDeep(0, from: input)
        ok[0] = [true]
        let value0 = Double(levels[0].objects[0].fdflux) * mincont
        var debList = ObjectList()
        for k in 1..<max(1, xn) {
            let peak = Double(root.fdpeak)
            debList.thresh = Float(peak > 0 ? thresh0 * pow(peak / thresh0, Double(k) / Double(xn)) : thresh0)
            if levels[k - 1].objects.count >= Extraction.subObjectLimit { throw DetectionError.tooManySubObjects(limit: Extraction.subObjectLimit) }
            sons[k - 1] = [[Int]](repeating: [], count: levels[k - 1].objects.count)
            for i in 0..<levels[k - 1].objects.count {
                try lutzScan(input.pixels, submap: submap, subx: subx, suby: suby, subw: subw,
                         parent: levels[k - 1].objects[i], out: &debList)
                for j in 0..<debList.objects.count where belongs(debList, j, levels[k - 1], i) {
                    debList.objects[j].thresh = debList.thresh
                    levels[k].addDeep(j, from: debList)
                    let m = levels[k].objects.count - 1
                    if m >= Extraction.subObjectLimit { throw DetectionError.tooManySubObjects(limit: Extraction.subObjectLimit) }
                    sons[k - 1][i].append(m)
                    ok[k].append(true)
                }
            }
        }
        // Cut the branches, top down.
        var k = xn - 2
        while k >= 0 {
            let objs = levels[k + 1].objects
            for i in 0..<levels[k].objects.count {
                var m = 0
                for j in sons[k][i] {
                    let o = objs[j]
                    if Double(o.fdflux - o.thresh * Float(o.fdnpix)) > value0 { m += 1 }
                    ok[k][i] = ok[k][i] && ok[k + 1][j]
                }
                if m > 1 {
                    for j in sons[k][i] {
                        let o = objs[j]
                        if ok[k + 1][j] && Double(o.fdflux - o.thresh * Float(o.fdnpix)) > value0 {
                            levels[k + 1].objects[j].flag |= SourceFlag.merged
                            deb2.addDeep(j, from: levels[k + 1])
                        }
                    }
                    ok[k][i] = false
                }
            }
            k -= 1
        }
        if ok[0][0] {
            out.addDeep(0, from: deb2)
        } else {
            gatherUp(&deb2, into: &out)
        }
        return out
    }

    /// sep's belong(): is the first pixel of core object `c` among the pixels of shell object `s`?
    func belongs(_ core: ObjectList, _ c: Int, _ shell: ObjectList, _ s: Int) -> Bool {
        let fp = core.pixels[core.objects[c].firstpix]
        var i = shell.objects[s].firstpix
        while i != -1 {
            let p = shell.pixels[i]
            if p.x == fp.x && p.y == fp.y { return true }
            i = p.next
        }
        return false
    }

    /// sep's lutz(): 8-connected groups of the detection's pixels above `out.thresh` (filtered
    /// value) inside the bounding box of `parent`; groups of at least min(minArea, 3) pixels.
    mutating func lutzScan(_ plistIn: [PixelRecord], submap: [Int], subx: Int, suby: Int, subw: Int,
                           parent: SepObject, out: inout ObjectList) throws {
        var sink = SubObjectSink(plistIn: plistIn, submap: submap, subx: subx, suby: suby, subw: subw,
                                 thresh: out.thresh, minArea: min(minArea, 3), out: ObjectList())
        // Reuse out's storage.
        swap(&sink.out, &out)
        sink.out.objects.removeAll(keepingCapacity: true)
        sink.out.pixels.removeAll(keepingCapacity: true)
        try lutz.scan(x0: parent.xmin, x1: parent.xmax + 1, y0: parent.ymin, y1: parent.ymax + 1,
                      imageWidth: width, imageHeight: height, sink: &sink)
        swap(&sink.out, &out)
    }

    struct SubObjectSink: LutzSink {
        let plistIn: [PixelRecord], submap: [Int], subx: Int, suby: Int, subw: Int, thresh: Float, minArea: Int
        var out: ObjectList

        mutating func take(x: Int, y: Int) -> Int? {
            let k = submap[(y - suby) * subw + (x - subx)]
            guard k >= 0, plistIn[k].cdvalue > thresh else { return nil }
            var p = plistIn[k]
            p.next = -1
            out.pixels.append(p)
            return out.pixels.count - 1
        }

        mutating func link(_ a: Int, _ b: Int) { out.pixels[a].next = b }

        mutating func complete(_ info: Info) {
            guard info.pixnb >= minArea else { return }
            var o = SepObject()
            o.firstpix = info.firstpix; o.lastpix = info.lastpix; o.flag = info.flag
            out.objects.append(o)
            preanalyse(out.objects.count - 1, &out)
        }
    }

    /// sep's gatherup(): sub-objects 1... of `input` go to `out`, and the pixels of object 0 that
    /// none of them holds are given to one at random, weighted by each one's Gaussian model.
    mutating func gatherUp(_ input: inout ObjectList, into out: inout ObjectList) {
        let nobj = input.objects.count
        out.thresh = input.thresh
        var amp = [Float](repeating: 0, count: nobj), p = [Float](repeating: 0, count: nobj)
        var n = [Int](repeating: 0, count: nobj)
        for i in 1..<max(1, nobj) { analyse(i, &input, robust: false) }
        let o0 = input.objects[0]
        let xs = o0.xmin, ys = o0.ymin, bmw = o0.xmax - xs + 1
        var bmp = [Bool](repeating: false, count: bmw * (o0.ymax - ys + 1))
        for i in 1..<max(1, nobj) {
            input.objects[i].thresh = input.thresh
            let objt = input.objects[i]
            var j = objt.firstpix
            while j != -1 { let q = input.pixels[j]; bmp[(q.x - xs) + (q.y - ys) * bmw] = true; j = q.next }
            out.addDeep(i, from: input)
            n[i] = out.objects.count - 1
            let dist = Float(Double(objt.fdnpix) / (2 * Double.pi * Double(objt.abcor) * Double(objt.a) * Double(objt.b)))
            amp[i] = dist < 70 ? Float(Double(objt.thresh * expf(dist))) : Float(4.0 * Double(objt.fdpeak))
            if Double(amp[i]) > 4.0 * Double(objt.fdpeak) { amp[i] = Float(4.0 * Double(objt.fdpeak)) }
        }
        var pix = o0.firstpix
        while pix != -1 {
            let q = input.pixels[pix]
            pix = q.next
            if bmp[(q.x - xs) + (q.y - ys) * bmw] { continue }
            var copy = q
            copy.next = -1
            let l = out.pixels.count
            out.pixels.append(copy)
            var distmin: Float = 1e31
            var iclst = 0
            for i in 1..<max(1, nobj) {
                let objt = input.objects[i]
                let dx = Float(Double(q.x) - objt.mx), dy = Float(Double(q.y) - objt.my)
                let quad: Float = objt.cxx * dx * dx + objt.cyy * dy * dy + objt.cxy * dx * dy
                let dist = Float(0.5 * Double(quad) / Double(objt.abcor))
                let term: Double = dist < 70 ? Double(amp[i] * expf(-dist)) : 0
                p[i] = Float(Double(p[i - 1]) + term)
                if dist < distmin { distmin = dist; iclst = i }
            }
            var target: Int
            if Double(p[nobj - 1]) > 1e-31 {
                let drand: Float = p[nobj - 1] * Float(random.next()) / Float(SepRandom.max)
                target = 1
                while target < nobj && p[target] < drand { target += 1 }
                if target == nobj { target = iclst }
            } else {
                target = iclst
            }
            let oi = n[target]
            out.pixels[out.objects[oi].lastpix].next = l
            out.objects[oi].lastpix = l
        }
    }
}

// MARK: - The detector used by the evaluator

public struct DetectionOptions: Sendable, Equatable {
    /// Detection threshold in units of the background RMS (per pixel, sep's err=rms).
    public var threshold: Double = 5
    public var minArea: Int = 5
    public var backSize: Int = 64
    public var backFilterSize: Int = 3
    /// Detection filter; nil = none.
    public var filter: [[Double]]? = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    public var deblendThresholds: Int = 32
    public var deblendContrast: Double = 0.005
    /// sep's cleaning (clean=True, clean_param=1.0 by default, as in sep).
    public var clean: Bool = true
    public var cleanParameter: Double = 1.0
    /// Radius of the photometry aperture in pixels.
    public var apertureRadius: Double = 5
    /// e-/ADU; nil = no Poisson term in flux errors.
    public var gain: Double? = nil
    public init() {}
}

public struct DetectedSource: Sendable, Equatable {
    /// Barycentre (0-based, pixel centres at integers; sep's x, y).
    public var x: Double, y: Double
    /// Aperture flux (background subtracted), its error and their ratio.
    public var flux: Double, fluxErr: Double, snr: Double
    public var npix: Int
    /// Highest background-subtracted pixel value of the object.
    public var peak: Double
    /// Object flags | aperture flags (`SourceFlag`).
    public var flags: Int
    /// Semi-axes (pixels) and position angle (radians, from +x towards +y) from the second moments.
    public var a: Double, b: Double, theta: Double
    /// Sum of the background-subtracted values of the object's pixels.
    public var isoFlux: Double

    public init(x: Double, y: Double, flux: Double, fluxErr: Double, snr: Double, npix: Int, peak: Double, flags: Int,
                a: Double, b: Double, theta: Double, isoFlux: Double) {
        (self.x, self.y, self.flux, self.fluxErr, self.snr, self.npix) = (x, y, flux, fluxErr, snr, npix)
        (self.peak, self.flags, self.a, self.b, self.theta, self.isoFlux) = (peak, flags, a, b, theta, isoFlux)
    }
}

public struct DetectionResult: Sendable {
    public var sources: [DetectedSource]
    public var background: Background
}

public enum SourceDetector {
    /// Background, extraction and aperture photometry on one image, as sep does
    /// (Background(bw=bh=backSize, fw=fh=backFilterSize), extract(data - back, threshold,
    /// err=rms, filter_type='conv', ...), sum_circle(data - back, x, y, r, err=rms, gain, subpix=0)).
    /// `mask` true = invalid; NaN pixels are invalid too. Sources in sep's order (see
    /// `SourceExtractor`). `threads` only splits the background and photometry work: results
    /// are the same for any count.
    public static func detect(_ image: Image2D, mask: [Bool]? = nil, options: DetectionOptions = .init(),
                              threads: Int = 1) throws -> DetectionResult {
        guard options.apertureRadius.isFinite, options.apertureRadius > 0 else {
            throw DetectionError.badParameter("aperture radius must be positive")
        }
        if let g = options.gain, !(g.isFinite && g > 0) { throw DetectionError.badParameter("gain must be positive") }
        let bkg = try background(image, mask: mask, options: options, threads: threads)
        let sub = subtract(image, bkg)
        let invalid = invalidMask(image, mask: mask)
        let objects = try extract(sub, width: image.width, height: image.height, mask: invalid, background: bkg, options: options)
        let w = image.width, h = image.height
        let r = options.apertureRadius, gain = options.gain
        var fluxes = [ApertureFlux](repeating: ApertureFlux(flux: 0, fluxErr: 0, area: 0, flags: 0), count: objects.count)
        if !objects.isEmpty { sub.withUnsafeBufferPointer { dp in
            bkg.rms.withUnsafeBufferPointer { ep in
                invalid.withUnsafeBufferPointer { mp in
                    fluxes.withUnsafeMutableBufferPointer { fp in
                        let d = UncheckedSendable(dp), e = UncheckedSendable(ep), m = UncheckedSendable(mp)
                        let out = UncheckedSendable(fp.baseAddress!)
                        Parallel.chunks(objects.count, threads: threads) { range in
                            for k in range {
                                out.value[k] = Photometry.sumCircle(data: d.value, width: w, height: h, x: objects[k].x, y: objects[k].y,
                                                                    r: r, error: e.value, mask: m.value, gain: gain)
                            }
                        }
                    }
                }
            }
        } }
        var sources: [DetectedSource] = []
        sources.reserveCapacity(objects.count)
        for (o, f) in zip(objects, fluxes) {
            sources.append(DetectedSource(x: o.x, y: o.y, flux: f.flux, fluxErr: f.fluxErr, snr: f.flux / f.fluxErr,
                                          npix: o.npix, peak: o.peak, flags: o.flags | f.flags,
                                          a: o.a, b: o.b, theta: o.theta, isoFlux: o.isoFlux))
        }
        return DetectionResult(sources: sources, background: bkg)
    }

    /// The background and RMS maps (sep.Background with bw = bh = backSize, fw = fh = backFilterSize).
    public static func background(_ image: Image2D, mask: [Bool]? = nil, options: DetectionOptions = .init(),
                                  threads: Int = 1) throws -> Background {
        try Background.estimate(image, mask: mask, boxWidth: options.backSize, filterWidth: options.backFilterSize, threads: threads)
    }

    /// Objects of `image` - background, thresholded at options.threshold times the RMS map.
    public static func extract(_ image: Image2D, mask: [Bool]? = nil, background bkg: Background,
                               options: DetectionOptions = .init()) throws -> [ExtractedObject] {
        guard bkg.width == image.width, bkg.height == image.height else {
            throw DetectionError.badParameter("background is \(bkg.width)x\(bkg.height), image \(image.width)x\(image.height)")
        }
        if let m = mask, m.count != image.count { throw DetectionError.maskSize(expected: image.count, got: m.count) }
        return try extract(subtract(image, bkg), width: image.width, height: image.height, mask: invalidMask(image, mask: mask),
                           background: bkg, options: options)
    }

    static func extract(_ sub: [Float], width: Int, height: Int, mask: [Bool], background bkg: Background,
                        options: DetectionOptions) throws -> [ExtractedObject] {
        var o = SourceExtractor.Options()
        o.threshold = options.threshold
        o.minArea = options.minArea
        o.filter = options.filter
        o.deblendThresholds = options.deblendThresholds
        o.deblendContrast = options.deblendContrast
        o.clean = options.clean
        o.cleanParameter = options.cleanParameter
        return try SourceExtractor.extract(data: sub, error: bkg.rms, width: width, height: height, mask: mask, options: o)
    }

    /// Circular-aperture photometry of `image` (already background subtracted) at (x, y):
    /// sep.sum_circle(image, x, y, radius, err=error, mask=mask, gain=gain, subpix=0).
    public static func sumCircle(_ image: Image2D, x: Double, y: Double, radius: Double, error: [Float]? = nil,
                                 mask: [Bool]? = nil, gain: Double? = nil) throws -> ApertureFlux {
        guard x.isFinite, y.isFinite, abs(x) < 1e9, abs(y) < 1e9 else { throw DetectionError.badParameter("aperture centre must be finite") }
        guard radius.isFinite, radius > 0, radius < 1e6 else { throw DetectionError.badParameter("aperture radius must be positive") }
        if let e = error, e.count != image.count { throw DetectionError.badParameter("error map has \(e.count) pixels, image \(image.count)") }
        if let m = mask, m.count != image.count { throw DetectionError.maskSize(expected: image.count, got: m.count) }
        let data = image.pixels.map { Float($0) }
        return data.withUnsafeBufferPointer { d in
            func run(_ e: UnsafeBufferPointer<Float>?) -> ApertureFlux {
                if let m = mask {
                    return m.withUnsafeBufferPointer { mp in
                        Photometry.sumCircle(data: d, width: image.width, height: image.height, x: x, y: y, r: radius, error: e, mask: mp, gain: gain)
                    }
                }
                return Photometry.sumCircle(data: d, width: image.width, height: image.height, x: x, y: y, r: radius, error: e, mask: nil, gain: gain)
            }
            if let e = error { return e.withUnsafeBufferPointer { run($0) } }
            return run(nil)
        }
    }

    /// Float(image) - level, in single precision as sep's data - bkg.back().
    static func subtract(_ image: Image2D, _ bkg: Background) -> [Float] {
        var out = [Float](repeating: 0, count: image.count)
        for i in 0..<image.count { out[i] = Float(image.pixels[i]) - bkg.level[i] }
        return out
    }

    static func invalidMask(_ image: Image2D, mask: [Bool]?) -> [Bool] {
        var out = [Bool](repeating: false, count: image.count)
        for i in 0..<image.count { out[i] = (mask?[i] ?? false) || !Float(image.pixels[i]).isFinite }
        return out
    }
}
