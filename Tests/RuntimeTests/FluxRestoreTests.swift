import Foundation
import ModelFormat
import Runtime
import XCTest

/// `FluxRestore` (output + G_sigma * (input - output), normalised over valid pixels) and
/// `denoise --flux-restore`.
final class FluxRestoreRuntimeTests: XCTestCase {
    /// The definition, directly: 2-D sums in Float64 over the reflected neighbourhood.
    func reference(_ out: [Float], _ inp: [Float], _ w: Int, _ h: Int, sigma: Double) -> [Float] {
        let taps = FluxRestore.gaussianTaps(sigma: sigma)
        let r = taps.count / 2
        func reflect(_ i: Int, _ n: Int) -> Int {
            var k = i
            while k < 0 || k >= n { k = k < 0 ? -k - 1 : 2 * n - 1 - k }
            return k
        }
        var res = out
        for y in 0..<h { for x in 0..<w where out[y * w + x].isFinite {
            var s = 0.0, wt = 0.0
            for a in -r...r { for b in -r...r {
                let yy = reflect(y + a, h), xx = reflect(x + b, w)
                let o = out[yy * w + xx], i = inp[yy * w + xx]
                guard o.isFinite && i.isFinite else { continue }
                let k = taps[a + r] * taps[b + r]
                s += k * (Double(i) - Double(o))
                wt += k
            } }
            if wt > 0 { res[y * w + x] = Float(Double(out[y * w + x]) + s / wt) }
        } }
        return res
    }

    func images(_ w: Int, _ h: Int, seed: UInt64) -> ([Float], [Float]) {
        var g = SplitMix64(seed: seed)
        var out = (0..<(w * h)).map { _ in g.float() * 10 }
        var inp = out.map { $0 + g.float() - 0.5 }
        // Undefined pixels in either image, and a masked column.
        for _ in 0..<max(1, w * h / 40) { out[Int(g.next() % UInt64(w * h))] = .nan }
        for _ in 0..<max(1, w * h / 40) { inp[Int(g.next() % UInt64(w * h))] = .nan }
        for y in 0..<h { inp[y * w + w / 2] = .nan }
        return (out, inp)
    }

    /// Streamed in bands of any height (1 row to the whole image), the result is the same bits
    /// as the whole image at once, and equals the 2-D definition within float rounding, on
    /// images smaller than the kernel too (reflection bouncing off both borders).
    func testStreamEqualsWholeAndDefinition() throws {
        for (w, h, sigma) in [(37, 29, 1.5), (20, 7, 2.0), (5, 3, 1.0), (64, 40, 0.7)] {
            let (out, inp) = images(w, h, seed: UInt64(w * h))
            let whole = try FluxRestore.apply(restored: out, input: inp, width: w, height: h, sigma: sigma)
            let ref = reference(out, inp, w, h, sigma: sigma)
            for i in 0..<(w * h) {
                if ref[i].isNaN { XCTAssertTrue(whole[i].isNaN); continue }
                XCTAssertEqual(whole[i], ref[i], accuracy: 1e-5 * max(1, abs(ref[i])), "\(w)x\(h) pixel \(i)")
            }
            for band in [1, 2, 5, 17, h] {
                let f = try FluxRestore(width: w, height: h, sigma: sigma)
                var got = [Float](repeating: 0, count: w * h), next = 0
                var y = 0
                while y < h {
                    let n = min(band, h - y)
                    if let (r0, rows, x) = f.push(y, restored: Array(out[(y * w)..<((y + n) * w)]), input: Array(inp[(y * w)..<((y + n) * w)])) {
                        XCTAssertEqual(r0, next)
                        XCTAssertEqual(x.count, rows.count)
                        for i in 0..<x.count { XCTAssertEqual(x[i].bitPattern, inp[r0 * w + i].bitPattern) }
                        got.replaceSubrange((r0 * w)..<(r0 * w + rows.count), with: rows)
                        next = r0 + rows.count / w
                    }
                    y += n
                }
                XCTAssertEqual(next, h, "every row came out")
                XCTAssertEqual(got.map(\.bitPattern), whole.map(\.bitPattern), "\(w)x\(h), bands of \(band)")
            }
        }
        XCTAssertThrowsError(try FluxRestore(width: 4, height: 4, sigma: 0))
        XCTAssertThrowsError(try FluxRestore(width: 4, height: 4, sigma: FluxRestore.maxSigma * 2))
        XCTAssertThrowsError(try FluxRestore(width: 4, height: 4, sigma: .nan))
        XCTAssertThrowsError(try FluxRestore(width: 0, height: 4, sigma: 1.5))
    }

    /// `denoise --flux-restore S` writes the plain output with the flux restore applied (same
    /// bits as `FluxRestore` on the plain output), records it in the header, and combines with
    /// --strength; it is refused for deconvolution models, with --luminance and out of range.
    func testDenoiseFluxRestoreCLI() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let exe = try astrocnnExecutable()
        try writeTaskModels(dir, seed: 61)
        let (w, h) = (72, 150)
        var g = SplitMix64(seed: 62)
        var px = (0..<(w * h)).map { _ in 100 + 10 * g.float() }
        px[5 * w + 7] = .nan
        try FITSIO.writeImage(path: dir + "/in.fits", width: w, height: h, pixels: px, headerCards: [])
        let plain = dir + "/plain.fits", flux = dir + "/flux.fits", blend = dir + "/blend.fits"
        var (s, o, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-m", dir + "/d.acnn", "-o", plain, "--quiet"])
        XCTAssertEqual(s, 0, o + e)
        (s, o, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-m", dir + "/d.acnn", "-o", flux, "--flux-restore", "1.5", "--quiet"])
        XCTAssertEqual(s, 0, o + e)
        (s, o, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-m", dir + "/d.acnn", "-o", blend, "--flux-restore", "1.5",
                                         "--strength", "0.5", "--quiet"])
        XCTAssertEqual(s, 0, o + e)
        let a = try FITSIO.readImage(path: plain), b = try FITSIO.readImage(path: flux), c = try FITSIO.readImage(path: blend)
        let expected = try FluxRestore.apply(restored: a.pixels, input: px, width: w, height: h, sigma: 1.5)
        XCTAssertEqual(b.pixels.map(\.bitPattern), expected.map(\.bitPattern))
        XCTAssertNotEqual(b.pixels.map(\.bitPattern), a.pixels.map(\.bitPattern))
        for i in 0..<(w * h) where expected[i].isFinite {
            XCTAssertEqual(c.pixels[i], 0.5 * expected[i] + 0.5 * px[i], accuracy: 1e-4)
        }
        let header = try FITSIO.readImage(path: flux)
        XCTAssertTrue(header.headerCards.contains { $0.hasPrefix("HISTORY") && $0.contains("Flux restore") }, "\(header.headerCards)")
        XCTAssertTrue(header.keyword("ACNNOPTS")?.contains("flux_sigma=1.5") ?? false)
        for (args, words) in [(["-m", dir + "/c.acnn", "--flux-restore", "1.5"], "deconvolution model"),
                              (["-m", dir + "/d.acnn", "--flux-restore", "40"], "at most"),
                              (["-m", dir + "/d.acnn", "--flux-restore", "1.5", "--in-memory"], "--in-memory")] {
            (s, o, e) = try runProcess(exe, ["denoise", dir + "/in.fits", "-o", dir + "/x.fits", "--quiet"] + args)
            XCTAssertNotEqual(s, 0)
            XCTAssertTrue(e.contains(words), e)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.fits"))
        }
    }
}
