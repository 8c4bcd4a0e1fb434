
/// Splits 0..<count into contiguous ranges run on up to `threads` threads. Callers make each
/// index's result independent of the split.
public enum Parallel {
    public static func chunks(_ count: Int, threads: Int, _ body: @escaping @Sendable (Range<Int>) -> Void) {
        let n = max(1, min(count, threads * 4))
        ParallelFor.run(n, threads: threads) { k in
            body(count * k / n..<count * (k + 1) / n)
        }
    }
}
