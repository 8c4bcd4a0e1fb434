import Foundation

/// Where a process spends its time, phase by phase: wall seconds, process CPU seconds (all
/// threads, user + system) and minor page faults, attributed to the phase that ends at each
/// `mark`. Enabled by the environment variable `ASTROCNN_PROFILE` (any value); `astrocnn restore`
/// then prints the table on standard error. Off, a mark costs one branch.
public final class PhaseProfile: @unchecked Sendable {
    public static let shared = PhaseProfile(enabled: ProcessInfo.processInfo.environment["ASTROCNN_PROFILE"] != nil)

    public struct Sample: Sendable {
        public var wall: Double
        public var cpu: Double
        public var minorFaults: Int
    }

    public let enabled: Bool
    private let lock = NSLock()
    private var last: Sample
    private let first: Sample
    private var order: [String] = []
    private var totals: [String: (Sample, count: Int)] = [:]

    public init(enabled: Bool) {
        self.enabled = enabled
        let now = PhaseProfile.now()
        last = now
        first = now
    }

    /// The current wall clock, process CPU time and minor-fault count.
    public static func now() -> Sample {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        var ru = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru)
        return Sample(wall: monotonicSeconds(), cpu: Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9, minorFaults: Int(ru.ru_minflt))
    }

    /// Attributes everything since the previous mark to `phase` (added up over repeated marks).
    @inline(__always)
    public func mark(_ phase: @autoclosure () -> String) {
        if enabled { record(phase()) }
    }

    private func record(_ phase: String) {
        let now = PhaseProfile.now()
        lock.lock(); defer { lock.unlock() }
        let d = Sample(wall: now.wall - last.wall, cpu: now.cpu - last.cpu, minorFaults: now.minorFaults - last.minorFaults)
        last = now
        if let (s, c) = totals[phase] {
            totals[phase] = (Sample(wall: s.wall + d.wall, cpu: s.cpu + d.cpu, minorFaults: s.minorFaults + d.minorFaults), c + 1)
        } else {
            totals[phase] = (d, 1)
            order.append(phase)
        }
    }

    /// The phases in order of first appearance, with their totals.
    public var phases: [(name: String, sample: Sample, count: Int)] {
        lock.lock(); defer { lock.unlock() }
        return order.map { ($0, totals[$0]!.0, totals[$0]!.count) }
    }

    /// The table, one phase a line, then the total since the profile began (and the process's
    /// CPU time before that: loading, the Swift runtime, argument parsing).
    public func report() -> String {
        let now = PhaseProfile.now()
        var lines = ["phase                                 wall ms    CPU ms    minor faults  (ASTROCNN_PROFILE)"]
        for (name, s, c) in phases {
            let label = c > 1 ? "\(name) (x\(c))" : name
            lines.append(String(format: "  %@ %9.1f %9.1f %12d", label.padding(toLength: 34, withPad: " ", startingAt: 0), s.wall * 1e3, s.cpu * 1e3, s.minorFaults))
        }
        lines.append(String(format: "  %@ %9.1f %9.1f %12d", "total since start of main".padding(toLength: 34, withPad: " ", startingAt: 0),
                            (now.wall - first.wall) * 1e3, (now.cpu - first.cpu) * 1e3, now.minorFaults - first.minorFaults))
        lines.append(String(format: "  %@ %9@ %9.1f %12d", "before main (loader, runtime)".padding(toLength: 34, withPad: " ", startingAt: 0), "",
                            first.cpu * 1e3, first.minorFaults))
        return lines.joined(separator: "\n")
    }
}
