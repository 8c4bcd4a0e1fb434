import XCTest
import Evaluation
import Foundation
import ModelFormat
import Imaging

final class InjectionTests: XCTestCase {
    /// Unit Gaussian noise, seeded.
    func noiseFrame(_ n: Int, seed: UInt64) -> Image2D {
        var g = SplitMix64(seed: seed)
        return Image2D(height: n, width: n, pixels: (0..<(n * n)).map { _ in NoiseStreams.normal(&g) })
    }

    var settings: InjectionPlan.Settings {
        var s = InjectionPlan.Settings()
        s.count = 150
        s.seed = 7
        s.minFactor = 0.1
        s.maxFactor = 30
        s.separationFWHM = 4
        s.apertureRadius = 5
        return s
    }

    func plan(_ img: Image2D, real: [DetectedSource] = [], settings: InjectionPlan.Settings? = nil) throws -> InjectionPlan {
        try InjectionPlan.make(width: img.width, height: img.height, valid: img.pixels.map { $0.isFinite }, psf: InjectionPlan.gaussianPSF(fwhm: 3),
                               fwhm: 3, sigma: 1, real: real, settings: settings ?? self.settings)
    }

    func testStampsCarryTheExactFluxAndThePlanIsDeterministic() throws {
        let img = Image2D(height: 200, width: 200)
        let p = try plan(img)
        XCTAssertGreaterThan(p.sources.count, 50)
        let q = try plan(img)
        XCTAssertEqual(p.sources, q.sources)
        // 5-sigma limit of a Gaussian PSF: effective area close to 4 pi s^2 (s = FWHM / 2.3548).
        let s = 3 / 2.3548
        XCTAssertEqual(p.effectiveArea, 4 * Double.pi * s * s, accuracy: 0.05 * p.effectiveArea)
        XCTAssertEqual(p.limitFlux, 5 * p.effectiveArea.squareRoot(), accuracy: 1e-9)
        // Fluxes span the requested range; magnitudes are relative to the limit.
        for src in p.sources {
            XCTAssertGreaterThanOrEqual(src.flux, 0.1 * p.limitFlux * (1 - 1e-12))
            XCTAssertLessThanOrEqual(src.flux, 30 * p.limitFlux * (1 + 1e-12))
            XCTAssertEqual(src.magnitude, -2.5 * log10(src.flux / p.limitFlux), accuracy: 1e-12)
            // The true aperture flux is the part of the stamp in a 5 px aperture: a Gaussian
            // with s = 1.27 px puts 1 - exp(-r^2 / 2 s^2) = 99.95% there.
            XCTAssertEqual(src.apertureFlux / src.flux, 1 - exp(-25 / (2 * s * s)), accuracy: 2e-3)
        }
        // Every stamp is whole (away from the border) and sums to its flux.
        let stamps = p.stamps()
        XCTAssertEqual(stamps.pixels.reduce(0, +), p.sources.map(\.flux).reduce(0, +), accuracy: 1e-9 * p.sources.map(\.flux).reduce(0, +))
        // Sources are at least 4 FWHM apart.
        for i in p.sources.indices { for j in p.sources.indices where j > i {
            let d = ((p.sources[i].x - p.sources[j].x) * (p.sources[i].x - p.sources[j].x) + (p.sources[i].y - p.sources[j].y) * (p.sources[i].y - p.sources[j].y)).squareRoot()
            XCTAssertGreaterThanOrEqual(d, 12)
        } }
    }

    func testPositionsAvoidRealSourcesBordersAndInvalidPixels() throws {
        var img = Image2D(height: 200, width: 200)
        for y in 0..<10 { for x in 150..<160 { img[y + 100, x] = .nan } }
        let real = DetectedSource(x: 60, y: 60, flux: 1000, fluxErr: 1, snr: 1000, npix: 50, peak: 100, flags: 0, a: 4, b: 4, theta: 0, isoFlux: 1000)
        let p = try plan(img, real: [real])
        let exclusion = 3 * 4 + 3 * 3.0
        let border = p.psf.width / 2 + 3
        for s in p.sources {
            let dx: Double = s.x - 60, dy: Double = s.y - 60
            let distance: Double = (dx * dx + dy * dy).squareRoot()
            XCTAssertGreaterThan(distance, exclusion - 0.5)
            XCTAssertGreaterThanOrEqual(s.x, Double(border) - 0.5)
            XCTAssertLessThanOrEqual(s.x, Double(200 - border) - 0.5)
            XCTAssertGreaterThanOrEqual(s.y, Double(border) - 0.5)
            // Not within a stamp's reach of the NaN block.
            let inX = s.x > Double(150 - border) && s.x < Double(160 + border)
            let inY = s.y > Double(100 - border) && s.y < Double(110 + border)
            XCTAssertFalse(inX && inY, "source at \(s.x), \(s.y) touches the invalid block")
        }
        XCTAssertFalse(p.clean[60 * 200 + 60])
        // NaN pixels stay NaN after injection.
        XCTAssertTrue(p.inject(into: img)[105, 155].isNaN)
    }

    func testSubPixelStampsAreCentredWhereTheSourceIs() throws {
        let k = InjectionPlan.gaussianPSF(fwhm: 3)
        for (fx, fy) in [(0.3, -0.2), (-0.5, 0.5), (0.0, 0.0)] {
            let s = InjectionPlan.shifted(k, fx: fx, fy: fy)
            var sx = 0.0, sy = 0.0
            let c = Double(s.width / 2)
            for y in 0..<s.height { for x in 0..<s.width { sx += s[y, x] * (Double(x) - c); sy += s[y, x] * (Double(y) - c) } }
            XCTAssertEqual(sx, fx, accuracy: 0.01)
            XCTAssertEqual(sy, fy, accuracy: 0.01)
            XCTAssertEqual(s.pixels.reduce(0, +), 1, accuracy: 1e-12)
        }
    }

    func testRecoveryOnPureNoise() throws {
        let noise = noiseFrame(256, seed: 3)
        let p = try plan(noise)
        let img = p.inject(into: noise)
        let thresholds = [0.5, 1, 1.5, 2, 3, 4, 6]
        let s = try InjectionRecovery.score(image: img, imageName: "noise", method: "none", plan: p, settings: settings, detection: DetectionOptions(),
                                            thresholds: thresholds, radius: 1.5, bins: 8)
        let c = try XCTUnwrap(s.chosenRecovery)
        XCTAssertGreaterThanOrEqual(c.purity, 0.9)
        // Bright injections (the brightest two bins: 8 to 30 times the limit) are all found, the
        // faintest bin (0.1 to 0.2 times the limit: matched-filter SNR 0.5 to 1) essentially never.
        XCTAssertEqual(c.completeness[0], 1)
        XCTAssertEqual(c.completeness[1], 1)
        XCTAssertLessThanOrEqual(c.completeness[7], 0.1)
        // Purity falls at low thresholds on pure noise, and the choice respects it.
        XCTAssertLessThan(s.thresholds[0].purity, 0.9)
        XCTAssertGreaterThan(s.thresholds[0].spurious, 10)
        // The depths are ordered and inside the range.
        XCTAssertTrue(c.depth50.isFinite && c.depth90.isFinite)
        XCTAssertGreaterThan(c.depth50, c.depth90)
        // Fluxes of the bright ones: unbiased. The aperture noise is sqrt(pi 25) = 8.9 against
        // fluxes of 8 to 30 limits (180 to 680): a few % per source, the median of ~30 well under 1%.
        let bright = p.sources.indices.filter { p.sources[$0].flux >= 8 * p.limitFlux }
        XCTAssertGreaterThan(bright.count, 15)
        var e = bright.map { s.relativeFluxErrors[$0] }
        XCTAssertLessThan(abs(SkyStatistics.median(&e)), 0.01)
        XCTAssertLessThan(abs(s.fluxMedianBias), 0.03)
        XCTAssertGreaterThan(s.fluxCount, 40)
    }

    func testUnmatchedDetectionsInTheCleanAreaAreSpurious() throws {
        let base = Image2D(height: 200, width: 200)
        var s = settings
        s.count = 20
        s.minFactor = 20
        s.maxFactor = 30
        let p = try plan(base, settings: s)
        var img = p.inject(into: base)
        // Add two sources that were not injected: one in the clean area, one on a masked real source.
        guard let spot = (0..<(200 * 200)).first(where: { i in
            p.clean[i] && p.sources.allSatisfy { ($0.x - Double(i % 200)) * ($0.x - Double(i % 200)) + ($0.y - Double(i / 200)) * ($0.y - Double(i / 200)) > 400 }
        }) else { return XCTFail("no free spot") }
        let extra = InjectionPlan(sources: [InjectedSource(x: Double(spot % 200), y: Double(spot / 200), flux: 500, apertureFlux: 0, magnitude: 0)],
                                  psf: p.psf, fwhm: 3, psfNote: "", sigma: 1, effectiveArea: p.effectiveArea, limitFlux: p.limitFlux,
                                  zeropoint: p.zeropoint, clean: p.clean, width: 200, height: 200)
        img = extra.inject(into: img)
        // Low-level noise so that the background RMS is defined.
        let n = noiseFrame(200, seed: 11)
        img = Image2D(height: 200, width: 200, pixels: zip(img.pixels, n.pixels).map { $0 + 0.01 * $1 })
        let r = try InjectionRecovery.score(image: img, imageName: "x", method: "none", plan: p, settings: s, detection: DetectionOptions(),
                                            thresholds: [50], radius: 1.5, bins: 2)
        XCTAssertEqual(r.thresholds[0].recoveredTotal, p.sources.count)
        XCTAssertEqual(r.thresholds[0].spurious, 1)
        XCTAssertEqual(r.thresholds[0].purity, Double(p.sources.count) / Double(p.sources.count + 1), accuracy: 1e-12)
        // Noise-free bright sources: fluxes exact to the background's residual.
        XCTAssertLessThan(abs(r.fluxMedianBias), 1e-3)
    }

    func testPSFFallsBackToAGaussianOfTheCatalogueFWHM() throws {
        let noise = noiseFrame(64, seed: 5)
        let r = try InjectionPlan.psf(of: noise, fallbackFWHM: 3.5)
        XCTAssertEqual(r.fwhm, 3.5)
        XCTAssertTrue(r.note.contains("Gaussian"))
        XCTAssertEqual(r.kernel, InjectionPlan.gaussianPSF(fwhm: 3.5))
        XCTAssertThrowsError(try InjectionPlan.psf(of: noise, fallbackFWHM: .nan))
    }

    func testPSFMeasuredFromTheImagesStars() throws {
        // A star field with a known Gaussian PSF: the measured kernel is used, with its FWHM.
        var img = noiseFrame(256, seed: 9).map { 0.5 * $0 }
        var s = settings
        s.count = 40
        s.minFactor = 100
        s.maxFactor = 300
        let stars = try plan(Image2D(height: 256, width: 256), settings: s)
        img = stars.inject(into: img)
        let r = try InjectionPlan.psf(of: img, fallbackFWHM: 9)
        XCTAssertFalse(r.note.contains("Gaussian"), r.note)
        XCTAssertEqual(r.fwhm, 3, accuracy: 0.3)
        XCTAssertEqual(r.kernel.pixels.reduce(0, +), 1, accuracy: 1e-6)
        XCTAssertEqual(r.kernel.width % 2, 1)
    }
}
