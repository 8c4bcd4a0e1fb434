import Kernels
import ModelFormat

/// Runs a network over a padded single-channel image tile by tile, each tile with the halo its
/// receptive field needs, tiles spread over threads.
///
/// Coordinates: the network input is the padded image P. Output index i is aligned with P index
/// i + outputOffset, and a network run on a window of P starting at row r produces output rows
/// r, r+1, ... . A tile of output rows [a, a+t) therefore needs the window
/// [a + offset - haloTop, a + t + offset + haloBottom), widened to multiples of the model's size
/// multiple (so pooling grids align with the whole-image run) and clipped to P (where the
/// network's own border handling then matches the whole-image run). The result does not depend
/// on the tile size or the thread count: every output pixel is computed from the same inputs by
/// the same per-layer algorithm.
public struct TiledRunner: Sendable {
    public let network: Network
    /// Output tile side (rows and columns of output per tile).
    public let tileSize: Int
    public let threads: Int
    public let algorithm: ConvAlgorithm
    public let isa: KernelISA

    public init(network: Network, tileSize: Int? = nil, threads: Int = ParallelFor.availableCores,
                algorithm: ConvAlgorithm = .direct, isa: KernelISA = .best) {
        self.network = network
        self.algorithm = algorithm
        self.isa = isa
        let m = network.analysis.geometry.sizeMultiple
        let t = tileSize ?? Int(network.metadata["default_tile"]?.intValue ?? 256)
        self.tileSize = max(m, (max(t, 1) + m - 1) / m * m)
        self.threads = max(1, threads)
    }

    /// The tile side used for an output of this size: small images get smaller tiles so that
    /// every thread has work (two tiles per thread at least, tiles no smaller than 64 px or the
    /// size multiple). Results do not depend on it.
    public func effectiveTileSize(outputHeight oh: Int, outputWidth ow: Int) -> Int {
        let m = network.analysis.geometry.sizeMultiple
        var t = tileSize
        while threads > 1 && ((oh + t - 1) / t) * ((ow + t - 1) / t) < 2 * threads && t / 2 >= max(64, m) {
            t = (t / 2 + m - 1) / m * m
        }
        return t
    }

    /// Number of tiles for an output of this size.
    public func tileCount(outputHeight oh: Int, outputWidth ow: Int) -> Int {
        let t = effectiveTileSize(outputHeight: oh, outputWidth: ow)
        return ((oh + t - 1) / t) * ((ow + t - 1) / t)
    }

    /// The output size for a padded input of the given size.
    public func outputSize(height: Int, width: Int) throws -> (height: Int, width: Int) {
        try network.analysis.outputSize(height: height, width: width)
    }

    /// Runs the network over `padded` (height x width, one channel) and returns the full output
    /// map in network units. `progress(done, total)` is called after each tile.
    public func run(padded: [Float], height: Int, width: Int, parameters: [String: Float] = [:],
                    progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> FeatureMap {
        try network.checkParameters(parameters)
        let (oh, ow) = try outputSize(height: height, width: width)
        let g = network.analysis.geometry
        let m = g.sizeMultiple
        let outC = network.outputChannels
        let tileSize = effectiveTileSize(outputHeight: oh, outputWidth: ow)
        let tilesY = (oh + tileSize - 1) / tileSize, tilesX = (ow + tileSize - 1) / tileSize
        let total = tilesY * tilesX

        struct Window { var r0: Int; var r1: Int; var c0: Int; var c1: Int; var a: Int; var t: Int; var b: Int; var u: Int }
        @Sendable func window(_ ty: Int, _ tx: Int) -> Window {
            let a = ty * tileSize, t = min(tileSize, oh - a)
            let b = tx * tileSize, u = min(tileSize, ow - b)
            func span(_ start: Int, _ len: Int, _ off: Int, _ lo: Int, _ hi: Int, _ limit: Int) -> (Int, Int) {
                var s = start + off - lo
                var e = start + len + off + hi
                s = max(0, (s >= 0 ? s / m : (s - m + 1) / m) * m)
                e = min(limit, (e + m - 1) / m * m)
                return (s, e)
            }
            let (r0, r1) = span(a, t, g.outputOffset[0], g.halo[0], g.halo[1], height)
            let (c0, c1) = span(b, u, g.outputOffset[1], g.halo[2], g.halo[3], width)
            return Window(r0: r0, r1: r1, c0: c0, c1: c1, a: a, t: t, b: b, u: u)
        }
        // Validate every window shape before starting threads (errors cannot cross threads).
        for ty in 0..<tilesY {
            for tx in 0..<tilesX {
                let w = window(ty, tx)
                _ = try network.analysis.shapes(height: w.r1 - w.r0, width: w.c1 - w.c0)
            }
        }

        let outPtr = UnsafeMutablePointer<Float>.allocate(capacity: outC * oh * ow)
        defer { outPtr.deallocate() }
        nonisolated(unsafe) let out = outPtr
        let src = padded
        let net = network
        let done = Counter()
        let failure = ErrorBox()
        let caches = (0..<threads).map { _ in PlanCache() }
        let algorithm = self.algorithm, isa = self.isa
        let packed = algorithm == .reference ? nil : net.packedWeights()
        ParallelFor.run(total, threads: threads) { k, worker in
            let w = window(k / tilesX, k % tilesX)
            let wh = w.r1 - w.r0, ww = w.c1 - w.c0
            var tile = FeatureMap(channels: 1, height: wh, width: ww)
            for y in 0..<wh {
                for x in 0..<ww { tile.data[y * ww + x] = src[(w.r0 + y) * width + w.c0 + x] }
            }
            do {
                let y: FeatureMap
                if let packed = packed {
                    let plan = try caches[worker].plan(net, packed, wh, ww, isa)
                    y = plan.run(tile, parameters: parameters)
                } else {
                    y = try net.forward(tile, parameters: parameters, algorithm: .reference)
                }
                // Network output row k of this window is global output row r0 + k.
                for c in 0..<outC {
                    for yy in 0..<w.t {
                        let sy = w.a - w.r0 + yy
                        for xx in 0..<w.u {
                            let sx = w.b - w.c0 + xx
                            out[(c * oh + w.a + yy) * ow + w.b + xx] = y.data[(c * y.height + sy) * y.width + sx]
                        }
                    }
                }
            } catch {
                failure.set(error)
            }
            let d = done.take() + 1
            progress?(d, total)
        }
        if let e = failure.error { throw e }
        return FeatureMap(channels: outC, height: oh, width: ow, data: Array(UnsafeBufferPointer(start: outPtr, count: outC * oh * ow)))
    }
}

/// Execution plans of one worker, by input size (edge tiles differ from interior ones).
final class PlanCache: @unchecked Sendable {
    private var plans: [Int: ExecutionPlan] = [:]
    func plan(_ net: Network, _ packed: PackedWeights, _ h: Int, _ w: Int, _ isa: KernelISA) throws -> ExecutionPlan {
        let key = h << 32 | w
        if let p = plans[key] { return p }
        let p = try ExecutionPlan(network: net, packed: packed, height: h, width: w, isa: isa)
        plans[key] = p
        return p
    }
}

final class ErrorBox: @unchecked Sendable {
    private var stored: Error?
    private let lock = NSLockShim()
    func set(_ e: Error) { lock.locked { if stored == nil { stored = e } } }
    var error: Error? { lock.locked { stored } }
}
