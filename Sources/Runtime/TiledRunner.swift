import Foundation
import Kernels
import ModelFormat

/// Runs a network over a padded single-channel image tile by tile, each tile with the halo its
/// receptive field needs. Tiles run one after another; inside each, every layer splits its rows
/// over the threads. Tiles exist to bound memory and keep maps in cache.
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
    /// Requested output tile side; nil chooses one (see `effectiveTileSize`).
    public let requestedTile: Int?
    public let threads: Int
    public let algorithm: ConvAlgorithm
    public let isa: KernelISA
    /// Feature-map memory a tile may use, in bytes ('same' networks choose their tile from it).
    public let memoryBudget: Int
    /// Feature-map memory under which a 'same' network runs the whole image as one tile (at
    /// least `memoryBudget`; the streaming restore runs whole frames that fit the in-memory
    /// budget, and tiles larger images from its smaller band budget).
    public let wholeImageBudget: Int
    /// Symmetries of the square each tile window runs in, outputs averaged (`SelfEnsemble`).
    public let ensemble: Int

    public init(network: Network, tileSize: Int? = nil, threads: Int = ParallelFor.availableCores,
                algorithm: ConvAlgorithm = .auto, isa: KernelISA = .best, memoryBudget: Int? = nil, wholeImageBudget: Int? = nil,
                ensemble: Int = 1) {
        self.network = network
        self.ensemble = ensemble
        self.algorithm = algorithm
        self.isa = isa
        self.requestedTile = tileSize ?? network.metadata["default_tile"]?.intValue.map(Int.init)
        self.threads = max(1, threads)
        let budget = memoryBudget ?? TiledRunner.defaultMemoryBudget
        self.memoryBudget = budget
        self.wholeImageBudget = max(budget, wholeImageBudget ?? budget)
    }

    /// A quarter of physical memory, at most 4 GiB.
    public static var defaultMemoryBudget: Int {
        min(4 << 30, Int(ProcessInfo.processInfo.physicalMemory / 4))
    }

    /// The output tile side for an output of this size. Networks that shrink their input
    /// ('valid' convolutions: no halo overhead beyond the shrink) use 256 (128 for images under
    /// four such tiles). 'Same' networks need a wide halo on every tile, so they use the whole
    /// image when its maps fit `wholeImageBudget`, else the largest tile that fits `memoryBudget`.
    public func effectiveTileSize(outputHeight oh: Int, outputWidth ow: Int) -> Int {
        let g = network.analysis.geometry
        let m = g.sizeMultiple
        func roundUp(_ v: Int) -> Int { max(m, (v + m - 1) / m * m) }
        // A tile larger than the output is one tile, the whole output (the same result).
        if let t = requestedTile { return roundUp(min(max(t, 1), max(oh, ow))) }
        let shrink = (try? network.analysis.shrink()) ?? [0, 0]
        if shrink[0] > 0 || shrink[1] > 0 {
            // Images under four 256-pixel tiles use 128-pixel ones so that two threads (or more)
            // can take whole tiles; the choice depends on the image size only, never on the
            // thread count, so results stay bit-identical for any thread count.
            let t256 = ((oh + 255) / 256) * ((ow + 255) / 256)
            return roundUp(t256 < 4 ? 128 : 256)
        }
        let perPixel = network.bytesPerInputPixel
        let side = max(oh, ow)
        let whole = Double((oh + g.halo[0] + g.halo[1]) * (ow + g.halo[2] + g.halo[3])) * perPixel
        if whole <= Double(wholeImageBudget) { return roundUp(side) }
        let window = Int((Double(memoryBudget) / perPixel).squareRoot())
        let t = max(m, (window - max(g.halo[0] + g.halo[1], g.halo[2] + g.halo[3])) / m * m)
        // Equal tiles: as few as the budget allows, each as small as that count permits.
        let count = (side + t - 1) / t
        return roundUp((side + count - 1) / count)
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
        try SelfEnsemble.check(network, count: ensemble)
        let (oh, ow) = try outputSize(height: height, width: width)
        let g = network.analysis.geometry
        let m = g.sizeMultiple
        let outC = network.outputChannels
        let tileSize = effectiveTileSize(outputHeight: oh, outputWidth: ow)
        let tilesY = (oh + tileSize - 1) / tileSize, tilesX = (ow + tileSize - 1) / tileSize
        let total = tilesY * tilesX

        @Sendable func span(_ start: Int, _ len: Int, _ off: Int, _ lo: Int, _ hi: Int, _ limit: Int) -> (Int, Int) {
            var s = start + off - lo
            var e = start + len + off + hi
            s = max(0, (s >= 0 ? s / m : (s - m + 1) / m) * m)
            e = min(limit, (e + m - 1) / m * m)
            return (s, e)
        }
        var out = FeatureMap(channels: outC, height: oh, width: ow)
        network.runLock.lock()
        defer { network.runLock.unlock() }
        let packed = algorithm == .reference ? nil : network.packedWeights()
        // With enough tiles, each thread runs whole tiles on its own plan (its maps stay in its
        // core's cache, no barrier per layer); otherwise tiles run in turn, each layer split over
        // the threads. A tile's result is the same either way (plans give the same bits for any
        // thread count).
        let window = Double((tileSize + g.halo[0] + g.halo[1]) * (tileSize + g.halo[2] + g.halo[3]))
        let tileParallel = threads > 1 && packed != nil && total >= 2 * threads
            && window * network.bytesPerInputPixel * Double(threads) <= Double(memoryBudget)
        let workers = tileParallel ? threads : 1
        let caches = network.planCaches(workers)
        let free = PlanCacheStack(caches)
        let done = Counter(), failure = FirstError()
        let (network, isa, algorithm, threads, ensemble) = (self.network, self.isa, self.algorithm, self.threads, self.ensemble)
        try out.data.withUnsafeMutableBufferPointer { outBuffer in
            nonisolated(unsafe) let dstBase = outBuffer.baseAddress!
            let source = padded
            ParallelFor.run(total, threads: workers) { k in
                if failure.error != nil { return }
                let a = (k / tilesX) * tileSize, t = min(tileSize, oh - a)
                let b = (k % tilesX) * tileSize, u = min(tileSize, ow - b)
                let (r0, r1) = span(a, t, g.outputOffset[0], g.halo[0], g.halo[1], height)
                let (c0, c1) = span(b, u, g.outputOffset[1], g.halo[2], g.halo[3], width)
                let wh = r1 - r0, ww = c1 - c0
                var tile = FeatureMap(channels: 1, height: wh, width: ww)
                source.withUnsafeBufferPointer { src in
                    tile.data.withUnsafeMutableBufferPointer { dst in
                        for y in 0..<wh {
                            (dst.baseAddress! + y * ww).update(from: src.baseAddress! + (r0 + y) * width + c0, count: ww)
                        }
                    }
                }
                let y: FeatureMap
                do {
                    let cache = free.pop()
                    defer { free.push(cache) }
                    y = try TiledRunner.runWindow(tile, network: network, packed: packed, cache: cache, isa: isa, algorithm: algorithm,
                                                  parameters: parameters, threads: tileParallel ? 1 : threads, ensemble: ensemble)
                } catch {
                    failure.set(error)
                    return
                }
                // Network output row k of this window is global output row r0 + k.
                y.data.withUnsafeBufferPointer { ys in
                    for c in 0..<outC {
                        for yy in 0..<t {
                            let sy = a - r0 + yy
                            (dstBase + (c * oh + a + yy) * ow + b).update(from: ys.baseAddress! + (c * y.height + sy) * y.width + b - c0, count: u)
                        }
                    }
                }
                progress?(done.take() + 1, total)
            }
            if let e = failure.error { throw e }
        }
        return out
    }

    /// One tile window through the network (its plan from `cache`, or the scalar reference when
    /// `packed` is nil), in `ensemble` symmetries averaged (`SelfEnsemble`).
    static func runWindow(_ window: FeatureMap, network: Network, packed: PackedWeights?, cache: PlanCache, isa: KernelISA,
                          algorithm: ConvAlgorithm, parameters: [String: Float], threads: Int, ensemble: Int) throws -> FeatureMap {
        try SelfEnsemble.run(window, count: ensemble) { x, k in
            // A Wiener step deconvolves the turned window by the turned PSF.
            let psf = try k == 0 ? nil : network.psf.map { try SelfEnsemble.transform(psf: $0, k) }
            guard let packed = packed else {
                try network.checkInput(x, parameters)
                return network.referenceForward(x, parameters: parameters, psf: psf)
            }
            let plan = try cache.plan(network, packed, x.height, x.width, isa, algorithm)
            return plan.run(x, parameters: parameters, threads: threads, psf: psf)
        }
    }
}

/// Plan caches handed to the threads that run tiles, one at a time each.
final class PlanCacheStack: @unchecked Sendable {
    private var caches: [PlanCache]
    private let lock = NSLock()
    init(_ caches: [PlanCache]) { self.caches = caches }
    func pop() -> PlanCache { lock.lock(); defer { lock.unlock() }; return caches.removeLast() }
    func push(_ c: PlanCache) { lock.lock(); defer { lock.unlock() }; caches.append(c) }
}

/// The first error thrown by any worker.
final class FirstError: @unchecked Sendable {
    private var stored: Error?
    private let lock = NSLock()
    var error: Error? { lock.lock(); defer { lock.unlock() }; return stored }
    func set(_ e: Error) { lock.lock(); defer { lock.unlock() }; if stored == nil { stored = e } }
}

/// The execution plan of the last tile size; a new size frees the old plan before the new one
/// is made, so only one set of feature maps exists at a time per cache.
final class PlanCache: @unchecked Sendable {
    private var last: ExecutionPlan?
    private var lastAlgorithm: ConvAlgorithm?
    func plan(_ net: Network, _ packed: PackedWeights, _ h: Int, _ w: Int, _ isa: KernelISA, _ algorithm: ConvAlgorithm) throws -> ExecutionPlan {
        if let p = last, p.height == h, p.width == w, lastAlgorithm == algorithm { return p }
        lastAlgorithm = algorithm
        last = nil
        let p = try ExecutionPlan(network: net, packed: packed, height: h, width: w, isa: isa, algorithm: algorithm)
        last = p
        return p
    }

    func clear() { last = nil }
}
