import ArgumentParser
import Evaluation
import Foundation
import Imaging
import Runtime

extension Evaluate {
    /// `--frames F1 ... Fn --stacks S`: the equivalent-stack scale. For each frame k the other
    /// frames are taken in cyclic order (k+1, k+2, ...); the stack of m frames (m = 2 ... S) is the
    /// mean of frame k and the first m - 1 of them, registered onto frame k; the reference is the
    /// mean of the remaining n - S frames, so that no frame of any stack is in the reference and
    /// every method and stack is scored against the same independent reference.
    func stackPairs(_ loaded: [Image2D], names: [String], gains: [Double?], threads: Int) throws
        -> (pairs: [(String, Image2D, Image2D, String, Double?)], stacks: [String: [(String, Image2D)]]) {
        let n = loaded.count, s = injection.stacks
        guard s >= 2, n - s >= 1 else { throw ValidationError("--stacks S needs 2 <= S <= frames - 1 (the reference is the mean of the other frames - S + 1), got S = \(s) with \(n) frames") }
        var pairs: [(String, Image2D, Image2D, String, Double?)] = []
        var stacks: [String: [(String, Image2D)]] = [:]
        for k in 0..<n {
            let others = (1..<n).map { (k + $0) % n }
            let members = Array(others.prefix(s - 1)), refFrames = Array(others.dropFirst(s - 1))
            let (refMean, _) = try FramePairs.meanOfOthers([loaded[k]] + refFrames.map { loaded[$0] }, onto: 0, threads: threads)
            let a = try FramePairs.aligned(frame: loaded[k], reference: refMean, threads: threads)
            let reg = a.registration
            var list: [(String, Image2D)] = []
            var sum = loaded[k]
            for (j, m) in members.enumerated() {
                let r = try Registration.register(frame: loaded[k], reference: loaded[m], threads: threads)
                let al = r.aligned(loaded[m])
                for i in 0..<sum.count { sum.pixels[i] += al.pixels[i] }
                let size = j + 2
                list.append(("stack\(size)", sum.map { $0 / Double(size) }.crop(y: reg.y0, x: reg.x0, height: reg.overlapHeight, width: reg.overlapWidth)))
            }
            let name = names[k]
            pairs.append((name, a.reference, a.frame,
                          "real frame vs the mean of \(refFrames.map { names[$0] }.joined(separator: "+")); stacks with \(members.map { names[$0] }.joined(separator: ", "))",
                          gains[k]))
            stacks[name] = list
        }
        return (pairs, stacks)
    }
}
