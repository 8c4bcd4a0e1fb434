import Foundation

/// The memory a command may use, checked before anything large is allocated: the pixels an image
/// declares, the buffers of a read, the working set of a restore. A file that declares more than
/// the budget allows is refused with an error that says how much it would need, not allocated and
/// left to the kernel's out-of-memory killer.
///
/// Default: half of physical memory. `ASTROCNN_MEMORY_BUDGET` (bytes, or with a K/M/G/T suffix,
/// powers of 1024) and the CLI's `--memory-budget` change it.
public enum MemoryBudget {
    nonisolated(unsafe) private static var override: Int? = fromEnvironment()
    private static let lock = NSLock()

    /// Half of physical memory.
    public static var defaultBytes: Int { Int(ProcessInfo.processInfo.physicalMemory / 2) }

    /// The budget in bytes now in force.
    public static var bytes: Int {
        get { lock.lock(); defer { lock.unlock() }; return override ?? defaultBytes }
        set { lock.lock(); override = max(1, newValue); lock.unlock() }
    }

    /// Back to the default (or the environment's value).
    public static func reset() { lock.lock(); override = fromEnvironment(); lock.unlock() }

    private static func fromEnvironment() -> Int? {
        guard let s = ProcessInfo.processInfo.environment["ASTROCNN_MEMORY_BUDGET"] else { return nil }
        return parse(s)
    }

    /// "4G", "512M", "300000000", "1.5G": bytes (K/M/G/T are powers of 1024). nil if unreadable
    /// or not positive.
    public static func parse(_ text: String) -> Int? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        if s.hasSuffix("IB") { s.removeLast(2) } else if s.hasSuffix("B") { s.removeLast() }
        var scale = 1.0
        if let last = s.last, let p = ["K": 1.0, "M": 2, "G": 3, "T": 4][String(last)] {
            scale = pow(1024, p)
            s.removeLast()
        }
        guard let v = Double(s), v.isFinite, v > 0, v * scale < 9e18 else { return nil }
        let b = Int(v * scale)
        return b > 0 ? b : nil
    }

    /// "1.2 GB", "340 MB", "12 kB" (powers of 1000, as users read them).
    public static func describe(_ bytes: Double) -> String {
        if !bytes.isFinite || bytes >= 1e18 { return String(format: "%.3g bytes", bytes) }
        if bytes >= 1e12 { return String(format: "%.1f TB", bytes / 1e12) }
        if bytes >= 1e9 { return String(format: "%.1f GB", bytes / 1e9) }
        if bytes >= 1e6 { return String(format: "%.0f MB", bytes / 1e6) }
        return String(format: "%.0f kB", bytes / 1e3)
    }

    /// Caps the process's address space at what is mapped now plus twice the budget plus 2 GiB
    /// (RLIMIT_AS), a backstop for C libraries that grow buffers without bound on damaged input:
    /// cfitsio 4.2 reallocates forever on some damaged GZIP_1 tiles (found by `astrocnn fuzz`);
    /// under the cap its allocation fails and it reports an error. The checks of this type refuse
    /// large work long before the cap. `ASTROCNN_NO_ADDRESS_LIMIT=1` turns it off. Returns the cap.
    @discardableResult
    public static func limitAddressSpace() -> Int? {
        #if os(Linux)
        if ProcessInfo.processInfo.environment["ASTROCNN_NO_ADDRESS_LIMIT"] == "1" { return nil }
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = s.split(separator: " ").first.flatMap({ Int($0) }) else { return nil }
        let mapped = pages * Int(sysconf(Int32(_SC_PAGESIZE)))
        let (twice, o1) = bytes.multipliedReportingOverflow(by: 2)
        let cap = o1 ? Int.max : mapped.addingReportingOverflow(twice).partialValue &+ (2 << 30)
        if cap <= 0 || cap == Int.max { return nil }
        var current = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &current)
        let hard = current.rlim_max
        var l = rlimit(rlim_cur: min(rlim_t(cap), hard), rlim_max: hard)
        return setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &l) == 0 ? Int(l.rlim_cur) : nil
        #else
        return nil
        #endif
    }

    /// Throws `.overBudget` when `need` bytes (a Double, so that declared sizes cannot overflow)
    /// exceed the budget. `what` names the work; `hint` says how to proceed.
    public static func check(_ need: Double, _ what: String, hint: String = "") throws {
        let budget = bytes
        if !(need <= Double(budget)) { throw MemoryBudgetError.overBudget(what: what, need: need, budget: budget, hint: hint) }
    }
}

/// Work refused before its memory was allocated.
public enum MemoryBudgetError: Error, CustomStringConvertible, Equatable {
    case overBudget(what: String, need: Double, budget: Int, hint: String)

    public var description: String {
        switch self {
        case .overBudget(let what, let need, let budget, let hint):
            var s = "\(what) would need \(MemoryBudget.describe(need)) of memory, over the budget of \(MemoryBudget.describe(Double(budget)))"
            s += hint.isEmpty ? "" : "; \(hint)"
            s += " (raise the budget with --memory-budget SIZE or ASTROCNN_MEMORY_BUDGET if the machine has the memory)"
            return s
        }
    }
}
