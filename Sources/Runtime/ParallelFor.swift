import Foundation

/// Runs `body(i)` for i in 0..<count on `threads` worker threads that take indices in order
/// from a shared counter. Results must not depend on which thread runs which index.
public enum ParallelFor {
    public static func run(_ count: Int, threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
        if count == 0 { return }
        let workers = max(1, min(threads, count))
        if workers == 1 {
            for i in 0..<count { body(i) }
            return
        }
        let next = Counter()
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let i = next.take()
                if i >= count { break }
                body(i)
            }
        }
    }

    /// The number of cores this process may use.
    public static var availableCores: Int { ProcessInfo.processInfo.activeProcessorCount }
}

final class Counter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func take() -> Int {
        lock.lock(); defer { lock.unlock() }
        let v = value
        value += 1
        return v
    }
}

/// A small lock wrapper.
final class NSLockShim: @unchecked Sendable {
    private let lock = NSLock()
    func locked<T>(_ body: () -> T) -> T {
        lock.lock(); defer { lock.unlock() }
        return body()
    }
}
