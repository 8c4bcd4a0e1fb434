import Foundation
import XCTest
import Imaging
import Evaluation

/// Source detection and aperture photometry against sep 1.4.1 (values from
/// tools/sep_reference.py in SepReference.generated.swift), and the properties they rest on.
final class DetectionTests: XCTestCase {
    // MARK: - The generator of tools/sep_reference.py, in the same order of operations

    struct SplitMix64 {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &+ 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func uniform() -> Double { Double(next() >> 11) * (1.0 / 9007199254740992.0) }
        mutating func normal() -> Double {
            var s = 0.0
            for _ in 0..<12 { s += uniform() }
            return s - 6.0
        }
    }

    static func render(width w: Int, height h: Int, sky: (Double, Double, Double, Double),
                       stars: [(Double, Double, Double, Int, Double)], seed: UInt64, sigma: Double) -> Image2D {
        var g = SplitMix64(state: seed)
        var img = Image2D(height: h, width: w)
        let half = Double(w) / 2
        for y in 0..<h {
            for x in 0..<w {
                let fx = Double(x), fy = Double(y)
                var v = sky.0 + sky.1 * fx + sky.2 * fy + sky.3 * (fx - half) * (fx - half)
                for (cx, cy, flux, kind, width) in stars {
                    let dx = fx - cx, dy = fy - cy
                    let r2 = dx * dx + dy * dy
                    if r2 > 225.0 { continue }
                    if kind == 0 {
                        v += flux * exp(-r2 / (2 * width * width)) / (2 * Double.pi * width * width)
                    } else {
                        let q = 1 + r2 / (width * width)
                        v += flux * 2 / (Double.pi * width * width) / (q * q * q)
                    }
                }
                v += sigma * g.normal()
                img[y, x] = (v + 0.5).rounded(.down)
            }
        }
        return img
    }

    static func checksum(_ img: Image2D) -> (Int, Int) {
        var s = 0, t = 0
        for (i, v) in img.pixels.enumerated() { let k = Int(v); s += k; t += (i % 1009 + 1) * k }
        return (s, t)
    }

    static let image1: Image2D = {
        let p = SepReference.image1
        return render(width: p.width, height: p.height, sky: p.sky, stars: SepReference.stars1, seed: p.noiseSeed, sigma: p.sigma)
    }()

    /// Image 2 with its NaN holes, and its mask.
    static let image2: (Image2D, [Bool]) = {
        let p = SepReference.image2
        var img = render(width: p.width, height: p.height, sky: p.sky, stars: SepReference.stars2, seed: p.noiseSeed, sigma: p.sigma)
        var mask = [Bool](repeating: false, count: img.count)
        for (x0, y0, x1, y1) in SepReference.nanRects { for y in y0..<y1 { for x in x0..<x1 { img[y, x] = .nan } } }
        for (x0, y0, x1, y1) in SepReference.maskRects { for y in y0..<y1 { for x in x0..<x1 { mask[y * img.width + x] = true } } }
        return (img, mask)
    }()

    struct Case {
        var image: Image2D, mask: [Bool]?
        var boxSize: Int, filterSize: Int, threshold: Double, minArea: Int, useFilter: Bool, countWithoutClean: Int, radius: Double, gain: Double
        var globalBack: Double, globalRMS: Double
        var sampleX: [Int], sampleY: [Int], sampleBack: [Double], sampleRMS: [Double]
        var x: [Double], y: [Double], npix: [Int], peak: [Double], flag: [Int], isoFlux: [Double]
        var flux: [Double], fluxErr: [Double], fluxFlag: [Int]
        var apertureX: [Double], apertureY: [Double], apertureFlux: [Double], apertureFluxErr: [Double], apertureFlag: [Int]

        var options: DetectionOptions {
            var o = DetectionOptions()
            o.threshold = threshold; o.minArea = minArea; o.backSize = boxSize; o.backFilterSize = filterSize
            o.filter = useFilter ? [[1, 2, 1], [2, 4, 2], [1, 2, 1]] : nil
            o.apertureRadius = radius; o.gain = gain
            return o
        }
    }

    static var cases: [(String, Case)] {
        typealias A = SepReference.CaseA
        typealias B = SepReference.CaseB
        typealias C = SepReference.CaseC
        let a = Case(image: image1, mask: nil, boxSize: A.boxSize, filterSize: A.filterSize, threshold: A.threshold, minArea: A.minArea,
                     useFilter: A.useFilter, countWithoutClean: A.countWithoutClean, radius: A.radius, gain: A.gain, globalBack: A.globalBack, globalRMS: A.globalRMS,
                     sampleX: A.sampleX, sampleY: A.sampleY, sampleBack: A.sampleBack, sampleRMS: A.sampleRMS,
                     x: A.x, y: A.y, npix: A.npix, peak: A.peak, flag: A.flag, isoFlux: A.isoFlux,
                     flux: A.flux, fluxErr: A.fluxErr, fluxFlag: A.fluxFlag, apertureX: A.apertureX, apertureY: A.apertureY,
                     apertureFlux: A.apertureFlux, apertureFluxErr: A.apertureFluxErr, apertureFlag: A.apertureFlag)
        let b = Case(image: image2.0, mask: image2.1, boxSize: B.boxSize, filterSize: B.filterSize, threshold: B.threshold, minArea: B.minArea,
                     useFilter: B.useFilter, countWithoutClean: B.countWithoutClean, radius: B.radius, gain: B.gain, globalBack: B.globalBack, globalRMS: B.globalRMS,
                     sampleX: B.sampleX, sampleY: B.sampleY, sampleBack: B.sampleBack, sampleRMS: B.sampleRMS,
                     x: B.x, y: B.y, npix: B.npix, peak: B.peak, flag: B.flag, isoFlux: B.isoFlux,
                     flux: B.flux, fluxErr: B.fluxErr, fluxFlag: B.fluxFlag, apertureX: B.apertureX, apertureY: B.apertureY,
                     apertureFlux: B.apertureFlux, apertureFluxErr: B.apertureFluxErr, apertureFlag: B.apertureFlag)
        let c = Case(image: image1, mask: nil, boxSize: C.boxSize, filterSize: C.filterSize, threshold: C.threshold, minArea: C.minArea,
                     useFilter: C.useFilter, countWithoutClean: C.countWithoutClean, radius: C.radius, gain: C.gain, globalBack: C.globalBack, globalRMS: C.globalRMS,
                     sampleX: C.sampleX, sampleY: C.sampleY, sampleBack: C.sampleBack, sampleRMS: C.sampleRMS,
                     x: C.x, y: C.y, npix: C.npix, peak: C.peak, flag: C.flag, isoFlux: C.isoFlux,
                     flux: C.flux, fluxErr: C.fluxErr, fluxFlag: C.fluxFlag, apertureX: C.apertureX, apertureY: C.apertureY,
                     apertureFlux: C.apertureFlux, apertureFluxErr: C.apertureFluxErr, apertureFlag: C.apertureFlag)
        typealias D = SepReference.CaseD
        let d = Case(image: image1, mask: nil, boxSize: D.boxSize, filterSize: D.filterSize, threshold: D.threshold, minArea: D.minArea,
                     useFilter: D.useFilter, countWithoutClean: D.countWithoutClean, radius: D.radius, gain: D.gain,
                     globalBack: D.globalBack, globalRMS: D.globalRMS,
                     sampleX: D.sampleX, sampleY: D.sampleY, sampleBack: D.sampleBack, sampleRMS: D.sampleRMS,
                     x: D.x, y: D.y, npix: D.npix, peak: D.peak, flag: D.flag, isoFlux: D.isoFlux,
                     flux: D.flux, fluxErr: D.fluxErr, fluxFlag: D.fluxFlag, apertureX: D.apertureX, apertureY: D.apertureY,
                     apertureFlux: D.apertureFlux, apertureFluxErr: D.apertureFluxErr, apertureFlag: D.apertureFlag)
        return [("A", a), ("B", b), ("C", c), ("D", d)]
    }

    func relClose(_ a: Double, _ b: Double, _ tol: Double, floor: Double = 0) -> Bool {
        abs(a - b) <= tol * max(abs(b), floor)
    }

    // MARK: - Against sep

    func testGeneratedImagesMatchThePythonGenerator() {
        let c1 = Self.checksum(Self.image1)
        XCTAssertEqual(c1.0, SepReference.checksum1.0); XCTAssertEqual(c1.1, SepReference.checksum1.1)
        let p = SepReference.image2
        let raw2 = Self.render(width: p.width, height: p.height, sky: p.sky, stars: SepReference.stars2, seed: p.noiseSeed, sigma: p.sigma)
        let c2 = Self.checksum(raw2)
        XCTAssertEqual(c2.0, SepReference.checksum2.0); XCTAssertEqual(c2.1, SepReference.checksum2.1)
    }

    func testBackgroundMatchesSep() throws {
        for (name, c) in Self.cases {
            let bkg = try SourceDetector.background(c.image, mask: c.mask, options: c.options)
            XCTAssertTrue(relClose(bkg.globalLevel, c.globalBack, 1e-6), "\(name) global back \(bkg.globalLevel) vs \(c.globalBack)")
            XCTAssertTrue(relClose(bkg.globalRMS, c.globalRMS, 1e-6), "\(name) global rms \(bkg.globalRMS) vs \(c.globalRMS)")
            var worstBack = 0.0, worstRMS = 0.0
            for k in 0..<c.sampleX.count {
                let i = c.sampleY[k] * c.image.width + c.sampleX[k]
                worstBack = max(worstBack, abs(Double(bkg.level[i]) - c.sampleBack[k]) / abs(c.sampleBack[k]))
                worstRMS = max(worstRMS, abs(Double(bkg.rms[i]) - c.sampleRMS[k]) / abs(c.sampleRMS[k]))
            }
            XCTAssertLessThanOrEqual(worstBack, 1e-4, "case \(name) background")
            XCTAssertLessThanOrEqual(worstRMS, 1e-4, "case \(name) rms")
            print("case \(name): \(c.sampleX.count) samples, max relative difference to sep: back \(worstBack), rms \(worstRMS)")
        }
    }

    func testSourcesMatchSep() throws {
        for (name, c) in Self.cases {
            let r = try SourceDetector.detect(c.image, mask: c.mask, options: c.options)
            let s = r.sources
            XCTAssertEqual(s.count, c.x.count, "case \(name): source count")
            // One-to-one match: each of sep's sources has exactly one of ours within 0.5 px and
            // vice versa (and, as we follow sep's order, at the same index).
            var worstOffset = 0.0, sameOrder = true
            for k in 0..<c.x.count {
                let near = s.indices.filter { hypot(s[$0].x - c.x[k], s[$0].y - c.y[k]) < 0.5 }
                XCTAssertEqual(near.count, 1, "case \(name): sep source \(k) at (\(c.x[k]), \(c.y[k])) has \(near.count) matches")
                guard let j = near.first else { continue }
                if j != k { sameOrder = false }
                worstOffset = max(worstOffset, hypot(s[j].x - c.x[k], s[j].y - c.y[k]))
                XCTAssertEqual(s[j].npix, c.npix[k], "case \(name) source \(k) npix")
                XCTAssertTrue(relClose(s[j].peak, c.peak[k], 1e-5, floor: 1), "case \(name) source \(k) peak \(s[j].peak) vs \(c.peak[k])")
                XCTAssertEqual(s[j].flags & 0xF, c.flag[k], "case \(name) source \(k) object flags")
                XCTAssertTrue(relClose(s[j].isoFlux, c.isoFlux[k], 1e-4, floor: 1), "case \(name) source \(k) isophotal flux")
            }
            XCTAssertTrue(sameOrder, "case \(name): sources not in sep's order")
            // Without cleaning, the count is sep's without cleaning (case D: cleaning removes one).
            var unclean = c.options
            unclean.clean = false
            XCTAssertEqual(try SourceDetector.detect(c.image, mask: c.mask, options: unclean).sources.count, c.countWithoutClean,
                           "case \(name): count without cleaning")
            XCTAssertLessThanOrEqual(worstOffset, 0.01, "case \(name): position offset")
            print("case \(name): \(s.count) sources (sep \(c.x.count)), max position offset \(worstOffset) px")
        }
    }

    func testApertureFluxesAtSepPositionsMatchSep() throws {
        for (name, c) in Self.cases {
            let bkg = try SourceDetector.background(c.image, mask: c.mask, options: c.options)
            let sub = Image2D(height: c.image.height, width: c.image.width,
                              pixels: zip(c.image.pixels, bkg.level).map { Double(Float($0) - $1) })
            let mask = c.mask ?? [Bool](repeating: false, count: c.image.count)
            var worst = 0.0
            let xs = c.x + c.apertureX, ys = c.y + c.apertureY
            let fl = c.flux + c.apertureFlux, fe = c.fluxErr + c.apertureFluxErr, ff = c.fluxFlag + c.apertureFlag
            for k in 0..<xs.count {
                let a = try SourceDetector.sumCircle(sub, x: xs[k], y: ys[k], radius: c.radius, error: bkg.rms, mask: mask, gain: c.gain)
                // Relative to the flux, or to its error for fluxes near zero.
                if fl[k].isNaN || fe[k].isNaN {
                    XCTAssertTrue(a.flux.isNaN && a.fluxErr.isNaN, "case \(name) aperture \(k): sep gives NaN (all masked)")
                    XCTAssertEqual(a.flags, ff[k]); continue
                }
                let scale = max(abs(fl[k]), fe[k])
                worst = max(worst, abs(a.flux - fl[k]) / scale, abs(a.fluxErr - fe[k]) / fe[k])
                XCTAssertEqual(a.flags, ff[k], "case \(name) aperture \(k) flags")
            }
            XCTAssertLessThanOrEqual(worst, 1e-4, "case \(name): aperture photometry")
            print("case \(name): \(xs.count) apertures, max relative difference to sep \(worst)")
        }
    }

    func testApertureFluxesAtOwnPositionsAreCloseToSep() throws {
        for (name, c) in Self.cases {
            let s = try SourceDetector.detect(c.image, mask: c.mask, options: c.options).sources
            guard s.count == c.x.count else { XCTFail("case \(name): counts differ"); continue }
            var worst = 0.0
            for k in 0..<s.count {
                worst = max(worst, abs(s[k].flux - c.flux[k]) / c.fluxErr[k], abs(s[k].fluxErr - c.fluxErr[k]) / c.fluxErr[k])
                XCTAssertEqual(s[k].snr, s[k].flux / s[k].fluxErr)
            }
            // Positions agree to 0.01 px, so fluxes agree to a small fraction of their error.
            XCTAssertLessThanOrEqual(worst, 1e-3, "case \(name): fluxes at our positions, in units of sep's flux error")
            print("case \(name): max |flux - sep| at own positions = \(worst) flux errors")
        }
    }

    // MARK: - Properties

    /// Extraction on a flat zero background with unit errors, no filter, no deblending.
    func extract(_ img: [Float], w: Int, h: Int, minArea: Int = 1, threshold: Double = 0.5,
                 deblend: Int = 1, clean: Bool = false) throws -> [ExtractedObject] {
        var o = SourceExtractor.Options()
        o.threshold = threshold; o.minArea = minArea; o.filter = nil; o.deblendThresholds = deblend; o.clean = clean
        return try SourceExtractor.extract(data: img, error: [Float](repeating: 1, count: w * h), width: w, height: h, options: o)
    }

    func testLabellingIsEightConnectedAndHonoursMinArea() throws {
        let w = 20, h = 12
        var img = [Float](repeating: 0, count: w * h)
        // Diagonal chain of 5 pixels: one object with 8-connectivity.
        for k in 0..<5 { img[(1 + k) * w + 1 + k] = 2 }
        // A U shape whose arms join only on the last row: one object.
        for y in 1..<6 { img[y * w + 10] = 2; img[y * w + 13] = 2 }
        for x in 10...13 { img[6 * w + x] = 2 }
        // (the U has 14 pixels.) Two blobs one empty column apart: two objects of 4 and 6 pixels.
        for y in 8..<10 { img[y * w + 2] = 2; img[y * w + 3] = 2 }
        for y in 8..<10 { for x in 5..<8 { img[y * w + x] = 2 } }
        let all = try extract(img, w: w, h: h)
        XCTAssertEqual(all.count, 4)
        XCTAssertEqual(all.map(\.npix).sorted(), [4, 5, 6, 14])
        let big = try extract(img, w: w, h: h, minArea: 5)
        XCTAssertEqual(big.map(\.npix).sorted(), [5, 6, 14])
        let diag = try XCTUnwrap(all.first { $0.npix == 5 })
        XCTAssertEqual(diag.x, 3, accuracy: 1e-12); XCTAssertEqual(diag.y, 3, accuracy: 1e-12)
        // Four-connected-only neighbours would split the diagonal chain.
        var single = [Float](repeating: 0, count: w * h)
        single[2 * w + 2] = 2; single[3 * w + 3] = 2
        XCTAssertEqual(try extract(single, w: w, h: h).count, 1)
        single[3 * w + 3] = 0; single[4 * w + 2] = 2
        XCTAssertEqual(try extract(single, w: w, h: h).count, 2)
    }

    func testDeblendingSplitsABlendedPair() throws {
        let w = 40, h = 30
        var img = [Float](repeating: 0, count: w * h)
        let stars = [(15.0, 14.0, 1000.0), (21.0, 16.0, 600.0)]
        for y in 0..<h {
            for x in 0..<w {
                var v = 0.0
                for (cx, cy, f) in stars {
                    let r2 = (Double(x) - cx) * (Double(x) - cx) + (Double(y) - cy) * (Double(y) - cy)
                    v += f * exp(-r2 / (2 * 1.5 * 1.5)) / (2 * Double.pi * 1.5 * 1.5)
                }
                img[y * w + x] = Float(v)
            }
        }
        let merged = try extract(img, w: w, h: h, minArea: 5, threshold: 1, deblend: 1)
        XCTAssertEqual(merged.count, 1)
        let split = try extract(img, w: w, h: h, minArea: 5, threshold: 1, deblend: 32)
        XCTAssertEqual(split.count, 2)
        for (cx, cy, _) in stars {
            let o = try XCTUnwrap(split.min { hypot($0.x - cx, $0.y - cy) < hypot($1.x - cx, $1.y - cy) })
            XCTAssertLessThan(hypot(o.x - cx, o.y - cy), 0.3, "deblended component near (\(cx), \(cy))")
            XCTAssertEqual(o.flags & SourceFlag.merged, SourceFlag.merged)
        }
        // All pixels of the detection are given to one of the two parts.
        XCTAssertEqual(split.map(\.npix).reduce(0, +), merged[0].npix)
        // A contrast above the fainter star's share keeps them together.
        var o = SourceExtractor.Options()
        o.threshold = 1; o.filter = nil; o.deblendContrast = 0.6; o.clean = false
        XCTAssertEqual(try SourceExtractor.extract(data: img, error: [Float](repeating: 1, count: w * h), width: w, height: h, options: o).count, 1)
    }

    func testCircleOverlapIsExact() {
        for (cx, cy, r) in [(0.0, 0.0, 5.0), (0.3, -0.41, 3.7), (0.5, 0.5, 2.0), (0.123, 0.987, 7.25), (0.0, 0.2, 0.4)] {
            var sum = 0.0
            let n = Int(r) + 3
            for iy in -n...n {
                for ix in -n...n {
                    let dx = Double(ix) - cx, dy = Double(iy) - cy
                    sum += Photometry.circleOverlap(x0: dx - 0.5, y0: dy - 0.5, x1: dx + 0.5, y1: dy + 0.5, radius: r)
                }
            }
            XCTAssertEqual(sum, Double.pi * r * r, accuracy: 1e-9, "circle (\(cx), \(cy)) r \(r)")
        }
        XCTAssertEqual(Photometry.circleOverlap(x0: -0.5, y0: -0.5, x1: 0.5, y1: 0.5, radius: 3), 1)
        XCTAssertEqual(Photometry.circleOverlap(x0: 1.25, y0: 0.5, x1: 2.25, y1: 1.5, radius: 3), 1)
        XCTAssertEqual(Photometry.circleOverlap(x0: 3.5, y0: 0, x1: 4.5, y1: 1, radius: 3), 0)
        // A quarter of a unit-radius disc in the unit square at the origin.
        XCTAssertEqual(Photometry.circleOverlap(x0: 0, y0: 0, x1: 1, y1: 1, radius: 1), Double.pi / 4, accuracy: 1e-15)
        // Aperture sums on a flat image of ones give the area, away from edges.
        let flat = Image2D(height: 30, width: 30, repeating: 1)
        let a = try! SourceDetector.sumCircle(flat, x: 14.3, y: 15.6, radius: 6.1)
        XCTAssertEqual(a.flux, Double.pi * 6.1 * 6.1, accuracy: 1e-9)
        XCTAssertEqual(a.flags, 0)
        let edge = try! SourceDetector.sumCircle(flat, x: 1.0, y: 15, radius: 4)
        XCTAssertEqual(edge.flags, SourceFlag.apertureTruncated)
    }

    func testMaskedPixelsAreExcludedAndFlagged() throws {
        let w = 60, h = 50
        var img = Image2D(height: h, width: w)
        var g = SplitMix64(state: 99)
        for i in 0..<img.count { img.pixels[i] = 100 + 3 * g.normal() }
        func addStar(_ cx: Double, _ cy: Double, _ f: Double) {
            for y in 0..<h { for x in 0..<w {
                let r2 = (Double(x) - cx) * (Double(x) - cx) + (Double(y) - cy) * (Double(y) - cy)
                img[y, x] += f * exp(-r2 / 4.5) / (2 * Double.pi * 2.25)
            } }
        }
        addStar(15, 20, 3000); addStar(42, 30, 3000)
        var mask = [Bool](repeating: false, count: w * h)
        for y in 26..<35 { for x in 38..<47 { mask[y * w + x] = true } }
        var o = DetectionOptions(); o.backSize = 16
        let unmasked = try SourceDetector.detect(img, options: o).sources
        XCTAssertEqual(unmasked.count, 2)
        let masked = try SourceDetector.detect(img, mask: mask, options: o).sources
        XCTAssertEqual(masked.count, 1, "the masked star is not detected")
        XCTAssertEqual(masked.first?.x ?? 0, 15, accuracy: 0.1)
        // NaN pixels behave as masked ones.
        var withNaN = img
        for i in 0..<img.count where mask[i] { withNaN.pixels[i] = .nan }
        let nan = try SourceDetector.detect(withNaN, options: o)
        XCTAssertEqual(nan.sources, masked)
        XCTAssertEqual(nan.background, try SourceDetector.background(img, mask: mask, options: o))
        // An aperture over the mask edge is flagged and scaled by total / unmasked area.
        let flat = Image2D(height: h, width: w, repeating: 2)
        let a = try SourceDetector.sumCircle(flat, x: 37.5, y: 30, radius: 4, mask: mask)
        XCTAssertEqual(a.flags, SourceFlag.apertureHasMasked)
        XCTAssertEqual(a.flux, 2 * Double.pi * 16, accuracy: 1e-9)
        let all = try SourceDetector.sumCircle(flat, x: 42, y: 30, radius: 2, mask: mask)
        XCTAssertEqual(all.flags, SourceFlag.apertureHasMasked)
        XCTAssertTrue(all.flux.isNaN)
    }

    func testNoSourceImageGivesAnEmptyList() throws {
        var g = SplitMix64(state: 5)
        let img = Image2D(height: 80, width: 90, pixels: (0..<7200).map { _ in 50 + 2 * g.normal() })
        let r = try SourceDetector.detect(img)
        XCTAssertTrue(r.sources.isEmpty)
        XCTAssertEqual(r.background.globalLevel, 50, accuracy: 0.5)
        XCTAssertEqual(r.background.globalRMS, 2, accuracy: 0.3)
    }

    func testBadInputsThrow() {
        let nan = Image2D(height: 20, width: 20, repeating: .nan)
        XCTAssertThrowsError(try SourceDetector.detect(nan)) { XCTAssertEqual($0 as? DetectionError, .noValidPixels) }
        let masked = Image2D(height: 20, width: 20, repeating: 1)
        XCTAssertThrowsError(try SourceDetector.detect(masked, mask: [Bool](repeating: true, count: 400))) {
            XCTAssertEqual($0 as? DetectionError, .noValidPixels)
        }
        XCTAssertThrowsError(try SourceDetector.detect(Image2D(height: 2, width: 50, repeating: 1))) {
            XCTAssertEqual($0 as? DetectionError, .imageTooSmall(width: 50, height: 2, minimum: 3))
        }
        XCTAssertThrowsError(try SourceDetector.detect(Image2D(height: 40, width: 40, repeating: 7))) {
            XCTAssertEqual($0 as? DetectionError, .zeroRMS)
        }
        XCTAssertThrowsError(try SourceDetector.detect(masked, mask: [false]))
        var o = DetectionOptions(); o.minArea = 0
        var g = SplitMix64(state: 1)
        let noisy = Image2D(height: 20, width: 20, pixels: (0..<400).map { _ in g.normal() })
        XCTAssertThrowsError(try SourceDetector.detect(noisy, options: o))
        o = DetectionOptions(); o.filter = [[1, 2], [1]]
        XCTAssertThrowsError(try SourceDetector.detect(noisy, options: o))
        o = DetectionOptions(); o.apertureRadius = -1
        XCTAssertThrowsError(try SourceDetector.detect(noisy, options: o))
        XCTAssertThrowsError(try SourceDetector.sumCircle(noisy, x: .nan, y: 3, radius: 2))
    }

    func testResultsDoNotDependOnTheThreadCount() throws {
        let (img, mask) = Self.image2
        var o = DetectionOptions(); o.backSize = 32; o.threshold = 3; o.gain = 2
        let one = try SourceDetector.detect(img, mask: mask, options: o, threads: 1)
        XCTAssertFalse(one.sources.isEmpty)
        for t in [2, 3, 7] {
            let r = try SourceDetector.detect(img, mask: mask, options: o, threads: t)
            XCTAssertEqual(r.sources, one.sources, "\(t) threads")
            XCTAssertEqual(r.background, one.background, "\(t) threads")
        }
    }

    func testRandomGeneratorIsGlibcRandR() throws {
        #if canImport(Glibc)
        var r = SepRandom()
        var seed: UInt32 = 1
        for _ in 0..<1000 { XCTAssertEqual(r.next(), rand_r(&seed)) }
        #else
        throw XCTSkip("glibc's rand_r is only available on Linux")
        #endif
    }
}
