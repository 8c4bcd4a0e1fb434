#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CPUFeatures
import KernelsAVX2
import KernelsAVX512

/// The instruction set the fast kernels use, chosen once per process by cpuid.
public enum KernelISA: String, Sendable, CaseIterable {
    case avx512 = "x86-64 AVX-512 (SIMD16)"
    case avx2 = "x86-64 AVX2+FMA (SIMD8)"
    case portable = "portable (SIMD8)"

    /// The best one this CPU supports; `ASTROCNN_ISA=avx2|portable` forces a lower one.
    public static let best: KernelISA = {
        let level = acnn_cpu_level()
        var isa: KernelISA = level >= 2 ? .avx512 : level == 1 ? .avx2 : .portable
        if let forced = getenvString("ASTROCNN_ISA") {
            if forced == "portable" { isa = .portable }
            if forced == "avx2" && level >= 1 { isa = .avx2 }
        }
        return isa
    }()

    public var supported: Bool {
        let level = acnn_cpu_level()
        switch self {
        case .avx512: return level >= 2
        case .avx2: return level >= 1
        case .portable: return true
        }
    }

    /// Floats per vector of this ISA's convolution kernels.
    public var vectorWidth: Int { self == .avx512 ? 16 : 8 }
}

func getenvString(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}

/// Memory layout of a feature map for the fast kernels: channel planes with a zero margin of
/// `margin` pixels on every side (so 'same' convolutions read their zero padding in place) and
/// rows padded so that kernels may compute whole vectors past the right edge. Element
/// (c, y, x) is at `base + c * planeStride + y * rowStride + x`, for -margin <= y < height + margin.
public struct PlanarLayout: Equatable, Sendable {
    public var channels: Int
    public var height: Int
    public var width: Int
    public var margin: Int
    public var rowStride: Int
    public var planeStride: Int
    /// Offset of element (0, 0, 0) from the start of the allocation.
    public var origin: Int
    /// Floats to allocate, including slack for reads past the last plane.
    public var allocation: Int

    public init(channels: Int, height: Int, width: Int, margin: Int = 0) {
        self.channels = channels
        self.height = height
        self.width = width
        self.margin = margin
        // Room for: left margin, width rounded up to 16, right margin, and one vector of overhang
        // (a kernel k wide reads up to roundUp(outWidth, 16) + k - 1 <= roundUp(width, 16) + 15).
        rowStride = margin + (width + 15) / 16 * 16 + margin + 16
        planeStride = rowStride * (height + 2 * margin)
        origin = margin * rowStride + margin
        allocation = planeStride * channels + 2 * rowStride + 64
    }
}

/// A feature map in `PlanarLayout`, owning 64-byte-aligned, zero-initialised memory.
public final class PlanarBuffer: @unchecked Sendable {
    public let layout: PlanarLayout
    public let storage: UnsafeMutablePointer<Float>

    /// Whether this buffer owns memory (false for layout-only buffers).
    public let allocated: Bool

    public init(_ layout: PlanarLayout) {
        self.layout = layout
        let raw = UnsafeMutableRawPointer.allocate(byteCount: layout.allocation * 4, alignment: 64)
        storage = raw.bindMemory(to: Float.self, capacity: layout.allocation)
        storage.initialize(repeating: 0, count: layout.allocation)
        allocated = true
    }

    /// A buffer with a layout but no memory, for measuring plans; its views must not be used.
    public init(layoutOnly layout: PlanarLayout) {
        self.layout = layout
        storage = PlanarBuffer.placeholder
        allocated = false
    }

    private static let placeholder = UnsafeMutablePointer<Float>.allocate(capacity: 16)

    /// A zero-initialised, 64-byte-aligned block of `floats` floats in which an execution plan
    /// places its maps (views into it are made by the plan); no memory when `floats` is 0.
    /// Large arenas come from `LargeMemory` (zero pages mapped on first touch, huge pages where
    /// the system has them), so making a plan does not write its maps.
    public init(arenaOf floats: Int) {
        var l = PlanarLayout(channels: 1, height: 1, width: 1)
        l.origin = 0
        l.allocation = floats
        layout = l
        if floats > 0 {
            storage = LargeMemory.allocateZeroed(floats: floats)
            allocated = true
            arenaFloats = floats
        } else {
            storage = PlanarBuffer.placeholder
            allocated = false
        }
    }

    /// Floats of an arena from `LargeMemory` (0 for other buffers).
    private var arenaFloats = 0

    deinit {
        if arenaFloats > 0 { LargeMemory.deallocate(storage, floats: arenaFloats) } else if allocated { storage.deallocate() }
    }

    /// Pointer to element (0, 0, 0).
    public var base: UnsafeMutablePointer<Float> { storage + layout.origin }

    public func view(channelOffset: Int = 0, channels: Int? = nil) -> PlanarView {
        var l = layout
        l.channels = channels ?? layout.channels - channelOffset
        return PlanarView(base: base + channelOffset * layout.planeStride, layout: l, owner: self)
    }
}

/// A channel range of a `PlanarBuffer` (what a node reads or writes). It keeps its buffer alive.
public struct PlanarView: @unchecked Sendable {
    public var base: UnsafeMutablePointer<Float>
    public var layout: PlanarLayout
    public let owner: PlanarBuffer?

    public init(base: UnsafeMutablePointer<Float>, layout: PlanarLayout, owner: PlanarBuffer?) {
        self.base = base
        self.layout = layout
        self.owner = owner
    }

    /// A view of `channels` channels starting at `offset` of this view.
    public func slice(channelOffset offset: Int, channels: Int) -> PlanarView {
        var l = layout
        l.channels = channels
        return PlanarView(base: base + offset * layout.planeStride, layout: l, owner: owner)
    }

    public var channels: Int { layout.channels }
    public var height: Int { layout.height }
    public var width: Int { layout.width }
    public var rowStride: Int { layout.rowStride }
    public var planeStride: Int { layout.planeStride }

    @inline(__always)
    public func pointer(_ c: Int, _ y: Int, _ x: Int) -> UnsafeMutablePointer<Float> {
        base + c * layout.planeStride + y * layout.rowStride + x
    }

    /// Sets the margin frame to zero: `margin` rows above and below each plane (whole rows) and
    /// `margin` columns left and right of every image row.
    public func clearMargins() {
        let mg = layout.margin
        if mg == 0 { return }
        for c in 0..<channels {
            pointer(c, -mg, -mg).update(repeating: 0, count: mg * rowStride)
            pointer(c, height, -mg).update(repeating: 0, count: mg * rowStride)
            for y in 0..<height {
                pointer(c, y, -mg).update(repeating: 0, count: mg)
                pointer(c, y, width).update(repeating: 0, count: mg)
            }
        }
    }

    /// Copies in from a CHW `FeatureMap` of the same size.
    public func load(_ m: FeatureMap) {
        precondition(m.channels == channels && m.height == height && m.width == width)
        m.data.withUnsafeBufferPointer { src in
            for c in 0..<channels { for y in 0..<height {
                pointer(c, y, 0).update(from: src.baseAddress! + (c * height + y) * width, count: width)
            } }
        }
    }

    /// Copies out to a CHW `FeatureMap`.
    public func featureMap() -> FeatureMap {
        var data = [Float](repeating: 0, count: channels * height * width)
        data.withUnsafeMutableBufferPointer { dst in
            for c in 0..<channels { for y in 0..<height {
                (dst.baseAddress! + (c * height + y) * width).update(from: pointer(c, y, 0), count: width)
            } }
        }
        return FeatureMap(channels: channels, height: height, width: width, data: data)
    }
}
