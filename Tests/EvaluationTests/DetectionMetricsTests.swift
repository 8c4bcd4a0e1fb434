import Evaluation
import Foundation
import XCTest

final class DetectionMetricsTests: XCTestCase {
    func e(_ x: Double, _ y: Double, _ f: Double = 100, _ err: Double = 10, _ b: Double = 0) -> CatalogEntry {
        CatalogEntry(x: x, y: y, flux: f, fluxErr: err, background: b)
    }

    func testMatchingIsOneToOneNearestFirst() {
        // B-c1 (0.6) is the nearest pair; then A-c1 is refused (c1 taken) and B-c2 (B taken).
        let truth = [e(0, 0), e(1.5, 0)]
        let cands = [e(0.9, 0), e(3, 0)]
        let pairs = CrossMatch.match(reference: truth, candidates: cands, radius: 2)
        XCTAssertEqual(pairs.map { [$0.reference, $0.candidate] }, [[1, 0]])
        XCTAssertEqual(pairs.first?.distance ?? 0, 0.6, accuracy: 1e-12)
        // Radius bounds and cells: a candidate just inside and one just outside, across cell edges.
        let p2 = CrossMatch.match(reference: [e(9.99, 9.99), e(50, 50)], candidates: [e(11.4, 11.4), e(52.01, 50)], radius: 2)
        XCTAssertEqual(p2.map(\.reference), [0])
        XCTAssertTrue(CrossMatch.match(reference: [], candidates: cands, radius: 2).isEmpty)
        // Brute force on random catalogues: same pairs as the greedy rule over all pairs.
        var g = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            let t = (0..<40).map { _ in e(Double.random(in: 0..<50, using: &g), Double.random(in: 0..<50, using: &g)) }
            let c = (0..<35).map { _ in e(Double.random(in: 0..<50, using: &g), Double.random(in: 0..<50, using: &g)) }
            var all: [(Double, Int, Int)] = []
            for (i, a) in t.enumerated() { for (j, b) in c.enumerated() {
                let d = ((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y)).squareRoot()
                if d <= 3 { all.append((d, i, j)) }
            } }
            all.sort { ($0.0, $0.1, $0.2) < ($1.0, $1.1, $1.2) }
            var ur = Set<Int>(), uc = Set<Int>(), expect: [(Int, Int)] = []
            for (_, i, j) in all where !ur.contains(i) && !uc.contains(j) { ur.insert(i); uc.insert(j); expect.append((i, j)) }
            let got = CrossMatch.match(reference: t, candidates: c, radius: 3)
            XCTAssertEqual(got.map { [$0.reference, $0.candidate] }, expect.sorted { $0.0 < $1.0 }.map { [$0.0, $0.1] })
        }
    }

    func testPaperMetrics() {
        // 4 true sources; the image finds 3 of them (fluxes 90, 110, 100) plus 2 spurious ones.
        let truth = [e(10, 10, 100), e(30, 10, 100), e(50, 10, 100), e(70, 10, 100)]
        let found = [e(10.3, 10, 90, 9), e(30, 10.2, 110, 11), e(50, 10, 100, 5, 10), e(90, 90, 5, 5), e(5, 80, 10, 5)]
        let s = DetectionScore.score(truth: truth, detected: found, radius: 1)
        XCTAssertEqual(s.truePositives, 3)
        XCTAssertEqual(s.tpr, 0.75)
        XCTAssertEqual(s.precision, 0.6)
        XCTAssertEqual(s.fMeasure, 2 * 0.6 * 0.75 / 1.35, accuracy: 1e-15)
        // |RFE| = 0.1, 0.1, 0 -> mean 1/15; sd = sqrt(((1/30)^2 * 2 + (1/15)^2) / 2).
        XCTAssertEqual(s.relativeFluxError, 0.2 / 3, accuracy: 1e-15)
        let sd = ((2 * (0.1 - 0.2 / 3) * (0.1 - 0.2 / 3) + (0.2 / 3) * (0.2 / 3)) / 2).squareRoot()
        XCTAssertEqual(s.relativeFluxErrorUncertainty, sd / 3.0.squareRoot(), accuracy: 1e-15)
        XCTAssertEqual(s.relativeFluxBias, 0, accuracy: 1e-15)
        // Eq. 26: mean of F / sqrt(E^2 + B^2) over the image's detections.
        let third: Double = 100 / (125.0).squareRoot()
        let snr: Double = (10 + 10 + third + 1 + 2) / 5
        XCTAssertEqual(s.meanSNR, snr, accuracy: 1e-12)
        let none = DetectionScore.score(truth: truth, detected: [], radius: 1)
        XCTAssertEqual(none.tpr, 0); XCTAssertEqual(none.precision, 0); XCTAssertEqual(none.fMeasure, 0)
        XCTAssert(none.relativeFluxError.isNaN)
    }
}
