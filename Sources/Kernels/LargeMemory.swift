#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Zero-filled memory for large, long-lived buffers (execution-plan arenas, packed and
/// Winograd-transformed weights). On Linux, blocks of at least 2 MiB are mapped straight from the
/// kernel (aligned to 2 MiB): its pages are already zero, so nothing is written up front and a
/// page is first touched by the thread that computes into it (making a 600 MB U-net plan took
/// 1.7 s of serial zero-filling and page faults). Smaller blocks, and other systems, use the
/// allocator and are zeroed.
///
/// With `ASTROCNN_HUGE_PAGES=1` in the environment the blocks are also advised as transparent huge
/// pages (`MADV_HUGEPAGE`): one fault per 2 MiB instead of 512. That is off by default because on
/// the project's virtual machines (Firecracker with free-page reporting) a huge page is almost
/// always memory the host has reclaimed, and faulting it in took longer than 512 small faults
/// (docs/PERFORMANCE.md, "Whole-process restore").
public enum LargeMemory {
    /// Whether mapped blocks are advised as huge pages (`ASTROCNN_HUGE_PAGES=1`).
    public static let hugePages: Bool = {
        guard let v = getenv("ASTROCNN_HUGE_PAGES") else { return false }
        return String(cString: v) == "1"
    }()

    /// Blocks of at least this many bytes are mapped (one huge page).
    public static let mapThreshold = 1 << 21
    static let hugePage = 1 << 21

    /// `count` zero floats, 64-byte aligned (2 MiB aligned when mapped). Free with `deallocate`
    /// and the same count.
    public static func allocateZeroed(floats count: Int) -> UnsafeMutablePointer<Float> {
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        #if os(Linux)
        if bytes >= mapThreshold {
            let length = roundUp(bytes)
            // Over-map by one huge page, then trim to a 2 MiB-aligned block.
            let total = length + hugePage
            guard let raw = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
                fatalError("LargeMemory: cannot map \(bytes) bytes: \(String(cString: strerror(errno)))")
            }
            let start = Int(bitPattern: raw)
            let aligned = (start + hugePage - 1) / hugePage * hugePage
            if aligned > start { munmap(raw, aligned - start) }
            let tail = start + total - (aligned + length)
            if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + length), tail) }
            let p = UnsafeMutableRawPointer(bitPattern: aligned)!
            if hugePages { _ = madvise(p, length, Int32(MADV_HUGEPAGE)) }  // advice only: fine if THP is off
            return p.bindMemory(to: Float.self, capacity: count)
        }
        #endif
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let p = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
        return p
    }

    /// Frees a block from `allocateZeroed(floats: count)`.
    public static func deallocate(_ p: UnsafeMutablePointer<Float>, floats count: Int) {
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        #if os(Linux)
        if bytes >= mapThreshold {
            munmap(UnsafeMutableRawPointer(p), roundUp(bytes))
            return
        }
        #endif
        p.deallocate()
    }

    static func roundUp(_ bytes: Int) -> Int { (bytes + hugePage - 1) / hugePage * hugePage }
}
