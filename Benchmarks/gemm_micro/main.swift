import Foundation
@inline(__always) func now() -> Double { var t = timespec(); clock_gettime(CLOCK_MONOTONIC, &t); return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9 }
let shapes = [(32, 32), (64, 64), (128, 128), (256, 256), (512, 256), (64, 16), (256, 512)]
for (c, o) in shapes {
  var res: [String: Double] = [:]
  for (name, tb) in [("old", 64), ("new", 48)] {
    let kStride = c * tb + 16
    let v = UnsafeMutablePointer<Float>.allocate(capacity: kStride * 36); v.initialize(repeating: 0.3, count: kStride * 36)
    let w = UnsafeMutablePointer<Float>.allocate(capacity: c * o * 36); w.initialize(repeating: 0.01, count: c * o * 36)
    let b = UnsafeMutablePointer<Float>.allocate(capacity: o); b.initialize(repeating: 0, count: o)
    let out = UnsafeMutablePointer<Float>.allocate(capacity: o * tb * 36 + 16)
    let flops = Double(2 * c * o * tb * 36)
    let reps = max(1, Int(3e9 / flops))
    var best = 1e9
    for _ in 0..<7 {
      let t0 = now()
      for _ in 0..<reps { for k in 0..<36 {
        if name == "old" { oldGemm(v + k * kStride, tb, c, w + k * c * o, b, o / 4, out + k * o * tb, tb, tb / 16) }
        else { newGemm(v + k * kStride, tb, c, w + k * c * o, b, o / 4, out + k * o * tb, tb, tb / 16) } } }
      best = min(best, (now() - t0) / Double(reps))
    }
    res[name] = flops / best / 1e9
  }
  print("c \(c) o \(o): old(4x4,64) \(String(format: "%.1f", res["old"]!))  new(8x3,48) \(String(format: "%.1f", res["new"]!)) GFLOP/s")
}
