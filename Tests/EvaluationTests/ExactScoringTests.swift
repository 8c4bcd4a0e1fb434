import Evaluation
import Foundation
import Imaging
import ModelFormat
import XCTest

final class ExactScoringTests: XCTestCase {
    func testTheSourceListDescribesTheRenderedSky() throws {
        let sky = SyntheticSky(size: 128, stars: 20, galaxies: 3, clouds: 1, background: 0.01, seed: 4)
        let (img, list) = sky.renderWithSources()
        // render() draws the same sky.
        XCTAssertEqual(img, sky.render())
        XCTAssertEqual(list.filter { $0.kind == .star }.count, 20)
        XCTAssertEqual(list.filter { $0.kind == .galaxy }.count, 3)
        for s in list where s.kind == .star {
            XCTAssertTrue(s.flux >= 0.05 && s.flux <= 10, "star flux \(s.flux)")
            XCTAssertTrue(s.fwhm >= 2.2 && s.fwhm <= 2.8)
            XCTAssertTrue(s.apertureFlux(radius: 5) < s.flux && s.apertureFlux(radius: 5) > 0.9 * s.flux)
        }
        for g in list where g.kind == .galaxy { XCTAssertTrue(g.apertureFlux(radius: 5).isNaN) }
    }

    func testStarApertureFluxMatchesThePixels() throws {
        // One star alone on a zero sky: the pixels in a 5 px aperture hold the listed aperture flux
        // (the profile is sampled at pixel centres, not integrated over pixels: 0.5% for FWHM 2.2-2.8).
        for seed in UInt64(1)...5 {
            let (img, list) = SyntheticSky(size: 64, stars: 1, galaxies: 0, background: 0, seed: seed).renderWithSources()
            // The same sky without the star: its gentle gradient, subtracted.
            let sky = SyntheticSky(size: 64, stars: 0, galaxies: 0, background: 0, seed: seed).render()
            let s = list[0]
            guard s.x > 8, s.y > 8, s.x < 56, s.y < 56 else { continue }
            let star = Image2D(height: 64, width: 64, pixels: zip(img.pixels, sky.pixels).map { $0 - $1 })
            let f = try SourceDetector.sumCircle(star, x: s.x, y: s.y, radius: 5).flux
            XCTAssertEqual(f / s.apertureFlux(radius: 5), 1, accuracy: 0.005, "seed \(seed)")
        }
    }

    func testBrightStarsOfASparseSkyAreAllFoundAgainstTheExactList() throws {
        let size = 256
        let (sky, list) = SyntheticSky(size: size, stars: 40, galaxies: 0, background: 0, seed: 12).renderWithSources()
        var g = SplitMix64(seed: 3)
        let scale = 20_000.0
        let img = Image2D(height: size, width: size, pixels: sky.pixels.map { scale * $0 + 20 * NoiseStreams.normal(&g) })
        let det = try SourceDetector.detect(img, options: DetectionOptions())
        let cat = det.sources.map { CatalogEntry(x: $0.x, y: $0.y, flux: $0.flux, fluxErr: $0.fluxErr) }
        // Bright stars (total flux 5,000 e- and more: an aperture SNR above 25) that are isolated
        // (no other star within 6 px) and inside the image by 6 px.
        let bright = list.indices.filter { i in
            let s = list[i]
            return s.flux * scale >= 5000 && s.x > 6 && s.y > 6 && s.x < Double(size - 6) && s.y < Double(size - 6)
                && !list.indices.contains { $0 != i && (list[$0].x - s.x) * (list[$0].x - s.x) + (list[$0].y - s.y) * (list[$0].y - s.y) < 36 }
        }.map { list[$0] }
        XCTAssertGreaterThan(bright.count, 5)
        let onBright = ExactScoring.score(sources: bright, scale: scale, detected: cat, radius: 1.5, apertureRadius: 5, width: size, height: size)
        XCTAssertEqual(onBright.tpr, 1)
        // Their aperture fluxes come out right (noise 20 sqrt(78.5) = 177 e- per aperture).
        XCTAssertLessThan(abs(onBright.relativeFluxBias), 0.02)
        // Against the whole list nothing detected is spurious: every detection is a listed star.
        let all = ExactScoring.score(sources: list, scale: scale, detected: cat, radius: 1.5, apertureRadius: 5, width: size, height: size)
        XCTAssertEqual(all.precision, 1)
    }

    func testGalaxyPiecesAreNeitherTrueNorSpurious() {
        let g = SyntheticSource(kind: .galaxy, x: 50, y: 50, flux: 100, fwhm: .nan, beta: .nan, effectiveRadius: 10, sersicIndex: 1, axisRatio: 1)
        let det = [CatalogEntry(x: 50.5, y: 50, flux: 1, fluxErr: 1), CatalogEntry(x: 60, y: 55, flux: 1, fluxErr: 1),
                   CatalogEntry(x: 90, y: 90, flux: 1, fluxErr: 1)]
        let s = ExactScoring.score(sources: [g], scale: 1, detected: det, radius: 1.5, apertureRadius: 5, width: 100, height: 100)
        XCTAssertEqual(s.tpr, 1)
        XCTAssertEqual(s.detectedCount, 2)   // the piece at (60, 55) is left out, (90, 90) is spurious
        XCTAssertEqual(s.precision, 0.5)
        XCTAssertTrue(s.relativeFluxError.isNaN)
    }
}
