import Foundation
import Runtime
import ModelFormat
import Imaging
import XCTest

final class SignalTests: XCTestCase {
    func testBesselJ1AgainstLibm() {
        var worst = 0.0
        var x = -25.0
        while x <= 25 {
            worst = max(worst, abs(besselJ1(x) - j1(x)))
            x += 0.0137
        }
        XCTAssertLessThan(worst, 5e-12)
        XCTAssertEqual(besselJ1(0), 0)
        // First zero of J1 at 3.8317059702075125.
        XCTAssertEqual(besselJ1(3.8317059702075125), 0, accuracy: 1e-14)
    }

    func testAiryPSF() {
        let psf = airyPSF(size: 64, rings: 5)
        XCTAssertEqual(psf.pixels.reduce(0, +), 1, accuracy: 1e-12)
        // Symmetric under flips and transposition; peak in the central 2x2 (even grid).
        for y in 0..<64 { for x in 0..<64 {
            XCTAssertEqual(psf[y, x], psf[63 - y, x], accuracy: 1e-15)
            XCTAssertEqual(psf[y, x], psf[x, y], accuracy: 1e-15)
        } }
        XCTAssertEqual(psf.maximum, psf[31, 31], accuracy: 1e-15)
        // Odd grid: the centre sample is r = 0, handled by the limit J1(r)/r -> 1/2.
        let odd = airyPSF(size: 9, rings: 2)
        XCTAssertEqual(odd.maximum, odd[4, 4])
        XCTAssertFalse(odd.pixels.contains { $0.isNaN })
    }

    func naiveDFT(_ re: [Double], _ im: [Double], inverse: Bool) -> ([Double], [Double]) {
        let n = re.count
        var or = [Double](repeating: 0, count: n), oi = or
        let s: Double = inverse ? 1 : -1
        for k in 0..<n { for j in 0..<n {
            let a = s * 2 * Double.pi * Double(j * k % n) / Double(n)
            or[k] += re[j] * cos(a) - im[j] * sin(a)
            oi[k] += re[j] * sin(a) + im[j] * cos(a)
        } }
        return (or, oi)
    }

    func testFFTAllRadicesAgainstNaiveDFT() {
        var rng = SplitMix64(seed: 1)
        for n in [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 30, 45, 49, 64, 77, 97, 120, 128, 210] {
            let re = (0..<n).map { _ in Double(rng.float()) }, im = (0..<n).map { _ in Double(rng.float()) }
            for inverse in [false, true] {
                let (er, ei) = naiveDFT(re, im, inverse: inverse)
                var or = [Double](repeating: 0, count: n), oi = or
                FFTPlan(n).transform(re, im, inStride: 1, &or, &oi, inverse: inverse)
                for k in 0..<n {
                    XCTAssertEqual(or[k], er[k], accuracy: 1e-10 * Double(n), "n=\(n)")
                    XCTAssertEqual(oi[k], ei[k], accuracy: 1e-10 * Double(n), "n=\(n)")
                }
            }
        }
        XCTAssertEqual(FFTPlan.fastSize(atLeast: 1087), 1125)
        XCTAssertEqual(FFTPlan.fastSize(atLeast: 1024), 1024)
        XCTAssertEqual(FFTPlan.fastSize(atLeast: 97), 100)
    }

    /// The real-input 2-D transforms equal the complex ones to rounding: `transformReal` the
    /// forward transform of a real image, `inverseToReal` the real part of the inverse of a
    /// Hermitian spectrum (the spectrum of a real image times that of a real kernel); odd and even
    /// sides, single rows and columns; the same bits on 1, 2 and 3 threads.
    func testRealTransformsMatchTheComplexOnes() {
        var rng = SplitMix64(seed: 3)
        for (h, w) in [(1, 1), (1, 8), (7, 1), (5, 6), (6, 5), (9, 9), (16, 12), (15, 25), (30, 45), (64, 17)] {
            var x = ComplexImage(height: h, width: w), k = ComplexImage(height: h, width: w)
            for i in 0..<(h * w) { x.re[i] = Double(rng.float(-1, 1)); k.re[i] = Double(rng.float(0, 1)) }
            var full = x
            full.transform(inverse: false)
            var fast = x
            fast.transformReal(threads: 1)
            let scale = full.re.map(abs).max()! + 1e-300
            for i in 0..<(h * w) {
                XCTAssertEqual(fast.re[i], full.re[i], accuracy: 1e-13 * scale, "\(h)x\(w) forward re \(i)")
                XCTAssertEqual(fast.im[i], full.im[i], accuracy: 1e-13 * scale, "\(h)x\(w) forward im \(i)")
            }
            for threads in [2, 3] {
                var t = x
                t.transformReal(threads: threads)
                XCTAssertEqual(t.re.map(\.bitPattern), fast.re.map(\.bitPattern))
                XCTAssertEqual(t.im.map(\.bitPattern), fast.im.map(\.bitPattern))
            }
            // A Hermitian product: the spectrum of x times that of k (a convolution).
            k.transform(inverse: false)
            var prod = full
            for i in 0..<(h * w) {
                let (a, b, c, d) = (full.re[i], full.im[i], k.re[i], k.im[i])
                prod.re[i] = a * c - b * d; prod.im[i] = a * d + b * c
            }
            var inverse = prod
            inverse.transform(inverse: true)
            var real = prod
            real.inverseToReal(threads: 1)
            let s2 = inverse.re.map(abs).max()! + 1e-300
            for i in 0..<(h * w) {
                XCTAssertEqual(real.re[i], inverse.re[i], accuracy: 1e-12 * s2, "\(h)x\(w) inverse \(i)")
                XCTAssertEqual(real.im[i], 0)
            }
            for threads in [2, 3] {
                var t = prod
                t.inverseToReal(threads: threads)
                XCTAssertEqual(t.re.map(\.bitPattern), real.re.map(\.bitPattern))
            }
        }
    }

    /// The FFT convolution equals the direct 'same' sum with the scipy.signal.fftconvolve origin,
    /// and `adjoint` is its exact adjoint: <A x, y> = <x, A^T y>.
    func testLinearConvolutionAndAdjoint() {
        var rng = SplitMix64(seed: 2)
        for (h, w, kh, kw) in [(13, 11, 4, 4), (9, 16, 5, 3), (20, 7, 6, 6)] {
            let img = Image2D(height: h, width: w, pixels: (0..<(h * w)).map { _ in Double(rng.float()) })
            let k = Image2D(height: kh, width: kw, pixels: (0..<(kh * kw)).map { _ in Double(rng.float()) })
            let op = LinearConvolution(kernel: k, height: h, width: w, threads: 2)
            let fast = op.apply(img)
            let (oy, ox) = ((kh - 1) / 2, (kw - 1) / 2)
            for i in 0..<h { for j in 0..<w {
                var s = 0.0
                for u in 0..<kh { for v in 0..<kw {
                    let y = i + oy - u, x = j + ox - v
                    if y >= 0 && y < h && x >= 0 && x < w { s += img[y, x] * k[u, v] }
                } }
                XCTAssertEqual(fast[i, j], s, accuracy: 1e-12)
            } }
            let other = Image2D(height: h, width: w, pixels: (0..<(h * w)).map { _ in Double(rng.float()) })
            let lhs = zip(fast.pixels, other.pixels).reduce(0) { $0 + $1.0 * $1.1 }
            let rhs = zip(img.pixels, op.adjoint(other).pixels).reduce(0) { $0 + $1.0 * $1.1 }
            XCTAssertEqual(lhs, rhs, accuracy: 1e-10)
        }
    }

    func testDegradationIsSeededAndNormalised() {
        var rng = SplitMix64(seed: 3)
        let raw = Image2D(height: 40, width: 50, pixels: (0..<2000).map { _ in Double(rng.float(-0.2, 5)) })
        let d = Degradation()
        let (t, o) = d.degrade(raw, seed: 7)
        XCTAssertEqual(t.maximum, 1)
        XCTAssertGreaterThanOrEqual(t.pixels.min()!, 0)
        XCTAssertEqual(d.degrade(raw, seed: 7).observed, o)
        XCTAssertNotEqual(d.degrade(raw, seed: 8).observed, o)
        // Noise has the requested standard deviation.
        var g = GaussianStream(seed: 1)
        let xs = (0..<200_000).map { _ in g.next() }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let sd = (xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)).squareRoot()
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(sd, 1, accuracy: 0.01)
    }

    func testDihedral() {
        let img = Image2D(height: 2, width: 3, pixels: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(img.rotated90().pixels, [3, 6, 2, 5, 1, 4])
        XCTAssertEqual(img.dihedral(4).pixels, [3, 2, 1, 6, 5, 4])
        XCTAssertEqual(Set((0..<8).map { img.dihedral($0).pixels }).count, 8)
    }
}

/// `SyntheticSky.sparse`: the deconv-psf recipe's sparse fields (`train --synthetic N`): a zero
/// sky (no background, gradient or clouds: between the sources only their wings), and a name that
/// says so; other seeds give other fields.
final class SparseSkyTests: XCTestCase {
    func testSparseFieldHasAZeroSky() {
        let sky = SyntheticSky.sparse(size: 256, seed: 3)
        XCTAssertEqual(sky.background, 0)
        XCTAssertEqual(sky.clouds, 0)
        XCTAssertGreaterThan(sky.stars, 0)
        let img = sky.render()
        var sorted = img.pixels.sorted()
        XCTAssertLessThan(sorted[0], 1e-8 * sorted.last!, "far from every source only faint wings")
        XCTAssertLessThan(sorted[sorted.count / 2], 1e-4 * sorted.last!, "the median pixel is empty sky")
        sorted.removeAll()
        XCTAssertTrue(sky.sourceImage().name.hasPrefix("synthetic-sparse-256-"))
        XCTAssertNotEqual(SyntheticSky.sparse(size: 256, seed: 4).render().pixels, img.pixels)
        // varied() and the demo's sky keep their pixels (the star FWHM range is a new property).
        XCTAssertEqual(SyntheticSky(size: 64, seed: 1).starFWHM, 2.2...2.8)
    }
}
