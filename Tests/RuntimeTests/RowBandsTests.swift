import Foundation
import Kernels
import ModelFormat
import Runtime
import XCTest

/// Row-band (depth-first) runs give the same bits as whole-map runs, whatever the band, the
/// thread count, the kernels and the map height; and they hold less memory.
final class RowBandsTests: XCTestCase {
    func input(_ channels: Int, _ h: Int, _ w: Int, seed: UInt64) -> FeatureMap {
        var rng = TestRNG(seed: seed)
        return FeatureMap(channels: channels, height: h, width: w, data: (0..<(channels * h * w)).map { _ in rng.float(-1, 2) })
    }

    /// U-nets (pooling, transposed convolutions, skip concatenations, the constant ratio
    /// channel, an input skip) and the 3-CNN ('valid' 10x10, 6x6 and 5x5 convolutions; F(3x3,6x6)
    /// Winograd), on heights that are and are not multiples of the band or Winograd tile, every
    /// algorithm and ISA, 1-3 threads, bands of 1 to 24 rows.
    func testBandsEqualWholeMaps() throws {
        let unet = try Network(model: try Architectures.unet(widths: [16, 20, 24], exposureRatio: 2, initializer: randomInit(seed: 31)))
        let skip = try Network(model: try Architectures.unet(widths: [5, 16], normalization: "clip_max", inputSkip: true, initializer: randomInit(seed: 32)))
        let cnn = try Network(model: try Architectures.flamary3(initializer: randomInit(seed: 33)))
        let cases: [(Network, Int, Int)] = [(unet, 100, 44), (unet, 36, 68), (skip, 74, 30), (cnn, 61, 40), (cnn, 83, 29)]
        for (net, h, w) in cases {
            let x = input(1, h, w, seed: UInt64(h * w))
            for algorithm in ConvAlgorithm.allCases where algorithm != .reference {
                for isa in KernelISA.allCases where isa.supported {
                    let whole = try net.forward(x, parameters: [:], algorithm: algorithm, isa: isa, threads: 1, bandRows: 0)
                    XCTAssertTrue(whole.data.allSatisfy { $0.isFinite })
                    for (band, threads) in [(1, 1), (3, 2), (8, 3), (16, 2), (24, 1)] where h > 2 * band {
                        var bytes = 0
                        let banded = try net.forward(x, parameters: [:], algorithm: algorithm, isa: isa, threads: threads, bandRows: band, bytes: &bytes)
                        XCTAssertEqual(banded.data, whole.data, "\(net.name) \(h)x\(w) \(algorithm) \(isa): band \(band), \(threads) threads")
                        XCTAssertGreaterThan(bytes, 0)
                    }
                }
            }
        }
    }

    /// A plan used again (its windows holding the rows of a louder image) gives the same bits as
    /// a fresh one (restore keeps the plan of the last frame size; with `ASTROCNN_ROW_BANDS=1`
    /// its 300 rows run in the default bands).
    func testReusedWindowsGiveSameBits() throws {
        setenv("ASTROCNN_ROW_BANDS", "1", 1)
        defer { unsetenv("ASTROCNN_ROW_BANDS") }
        let model = try Architectures.unet(widths: [8, 16, 24], exposureRatio: 2, initializer: randomInit(seed: 41))
        let x = FITSImage(width: 40, height: 300, pixels: input(1, 300, 40, seed: 1).data.map { $0 + 5 })
        let loud = FITSImage(width: 40, height: 300, pixels: input(1, 300, 40, seed: 2).data.map { $0 * 1e6 })
        let fresh = try Restoration.restore(x, network: try Network(model: model), options: .init(threads: 2, tileSize: 4096)).pixels
        let net = try Network(model: model)
        _ = try Restoration.restore(loud, network: net, options: .init(threads: 2, tileSize: 4096))
        XCTAssertEqual(try Restoration.restore(x, network: net, options: .init(threads: 2, tileSize: 4096)).pixels, fresh)
        let whole = try net.forward(FeatureMap(channels: 1, height: 300, width: 40, data: x.pixels), bandRows: 0)
        var bytes = 0
        XCTAssertEqual(try net.forward(FeatureMap(channels: 1, height: 300, width: 40, data: x.pixels), threads: 2, bytes: &bytes).data, whole.data)
        var wholeBytes = 0, bandBytes = 0
        _ = try net.forward(FeatureMap(channels: 1, height: 300, width: 40, data: x.pixels), bandRows: 0, bytes: &wholeBytes)
        _ = try net.forward(FeatureMap(channels: 1, height: 300, width: 40, data: x.pixels), bandRows: 64, bytes: &bandBytes)
        XCTAssertNotEqual(wholeBytes, bandBytes)
        XCTAssertEqual(bytes, bandBytes, "the environment turned row bands on")
    }

    /// A U-net's row-band windows depend on the map's width, not its height: a 2048-row map
    /// holds about what a 1024-row one does, a fraction of the whole-map plan's memory (the
    /// level-0 skip waits for the up path in a window of rows, not the frame).
    func testBandsHoldMemoryIndependentOfHeight() throws {
        let net = try Network(model: try Architectures.unet(widths: [8, 16, 32, 64], exposureRatio: 2, initializer: randomInit(seed: 51)))
        var whole = 0, short = 0, tall = 0
        let x = input(1, 2048, 64, seed: 3)
        let a = try net.forward(x, threads: 2, bandRows: 0, bytes: &whole)
        let b = try net.forward(x, threads: 2, bandRows: 32, bytes: &tall)
        _ = try net.forward(input(1, 1024, 64, seed: 4), threads: 2, bandRows: 32, bytes: &short)
        XCTAssertEqual(a.data, b.data)
        XCTAssertLessThan(tall, whole / 4, "banded \(tall) bytes vs whole \(whole)")
        XCTAssertLessThan(Double(tall), 1.05 * Double(short), "2048 rows \(tall) bytes vs 1024 rows \(short)")
    }
}
