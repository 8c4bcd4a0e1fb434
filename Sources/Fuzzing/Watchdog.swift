import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The case now running, as a C string the signal handler can write without allocating.
nonisolated(unsafe) private var currentCase = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
nonisolated(unsafe) private var caseStarted: UInt64 = 0
nonisolated(unsafe) private var watchdogLimit: UInt64 = 0
nonisolated(unsafe) private var watchdogRunning = false

private func monotonicNanos() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

private func writeStderr(_ p: UnsafePointer<CChar>) { _ = Glibc.write(2, p, strlen(p)) }

/// Reports a case that traps or crashes (signal handler) or runs past the time limit (a
/// thread that checks every 50 ms), naming it, then ends the process with status 3 (crash)
/// or 4 (hang). Ordinary errors never reach it.
enum FuzzWatchdog {
    static func start(limit: Double) {
        currentCase.initialize(repeating: 0, count: 1024)
        watchdogLimit = UInt64(limit * 1e9)
        watchdogRunning = true
        for sig in [SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE] {
            signal(sig) { s in
                writeStderr("fuzz: CRASH (signal ")
                var buf = [CChar](repeating: 0, count: 16)
                var n = s, i = 14
                repeat { buf[i] = CChar(48 + n % 10); n /= 10; i -= 1 } while n > 0
                buf.withUnsafeBufferPointer { writeStderr($0.baseAddress! + i + 1) }
                writeStderr(") in ")
                writeStderr(currentCase)
                writeStderr("\n")
                _exit(3)
            }
        }
        let t = Thread {
            while watchdogRunning {
                usleep(50_000)
                let s = caseStarted
                if s != 0 && monotonicNanos() > s &+ watchdogLimit {
                    writeStderr("fuzz: HANG: past the time limit in ")
                    writeStderr(currentCase)
                    writeStderr("\n")
                    _exit(4)
                }
            }
        }
        t.start()
    }

    static func begin(_ name: String) {
        caseStarted = 0
        _ = name.withCString { strncpy(currentCase, $0, 1023) }
        currentCase[1023] = 0
        caseStarted = monotonicNanos()
    }

    static func end() { caseStarted = 0 }

    static func stop() {
        watchdogRunning = false
        for sig in [SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE] { signal(sig, SIG_DFL) }
    }
}
