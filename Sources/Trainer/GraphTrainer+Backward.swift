import Kernels
import ModelFormat
import Runtime

/// The backward steps of `GraphTrainer` and the pooling forward that records argmaxes.
extension GraphTrainer {
    /// Columns of a row handled together when dY is transposed to pixel-major, so that the
    /// strided stores of one block stay in L1.
    static let transposeBlock = 64

    /// 2x2 max-pooling that also stores, per output value, which element of its window is the
    /// maximum (0: (0,0), 1: (0,1), 2: (1,0), 3: (1,1); the first one on ties, as
    /// `ReferenceGrad.maxpool2x2Backward`).
    static func maxpoolForward(_ x: PlanarView, _ y: PlanarView, _ argmax: UnsafeMutablePointer<UInt8>) {
        let (h, w) = (y.height, y.width)
        for c in 0..<y.channels {
            for i in 0..<h {
                let a = x.pointer(c, 2 * i, 0), b = x.pointer(c, 2 * i + 1, 0), d = y.pointer(c, i, 0)
                let arg = argmax + (c * h + i) * w
                for j in 0..<w {
                    var m = a[2 * j], k: UInt8 = 0
                    if a[2 * j + 1] > m { m = a[2 * j + 1]; k = 1 }
                    if b[2 * j] > m { m = b[2 * j]; k = 2 }
                    if b[2 * j + 1] > m { m = b[2 * j + 1]; k = 3 }
                    d[j] = m
                    arg[j] = k
                }
            }
        }
    }

    /// Runs the backward steps of one sample (after the loss wrote dL/d(output)).
    func backward(_ ws: Workspace) {
        var lastTime = -1
        let timed = collectTimings
        let base = plan.forward.count
        for (i, b) in plan.backward.enumerated() {
            if b.time != lastTime { ws.clearFrames(plan.frames[b.time + 1]); lastTime = b.time }
            let slot = base + 3 * i
            var start = timed ? monotonicSeconds() : 0
            /// Ends the current part of the step (0, 1, 2: see `timings`) and starts the next.
            func lap(_ part: Int) {
                guard timed else { return }
                let now = monotonicSeconds()
                ws.timings[slot + part] += now - start
                start = now
            }
            switch b.step {
            case let .conv(s): convBackward(s, ws, lap)
            case let .convTranspose(s): convTransposeBackward(s, ws, lap)
            case let .activation(x, dy, dx, mode, alpha):
                GraphTrainer.activationBackward(ws.view(x), ws.view(dy), ws.view(dx), alpha: alpha, mode: mode)
            case let .pool(dy, dx, argmax, mode):
                GraphTrainer.maxpoolBackward(ws.view(dy), ws.view(dx), ws.argmax + argmax, mode: mode)
            case let .copy(dy, dx, mode):
                let (s, d) = (ws.view(dy), ws.view(dx))
                if mode == .write { FastOps.copy(s, d) } else { GraphTrainer.add(s, into: d) }
            }
            lap(0)
        }
    }

    private func convBackward(_ s: ConvBackward, _ ws: Workspace, _ lap: (Int) -> Void) {
        let g = ws.view(s.dy)
        // dL/d(pre-activation) from the stored output's sign, in place.
        if let y = s.y { GraphTrainer.mask(g, by: ws.view(y), s.activation) }
        // dY pixel-major for the weight-gradient kernel; the bias gradient on the way.
        let dyt = ws.raw(s.dyt)
        GraphTrainer.transpose(g, into: dyt, ldb: s.ldb, sums: ws.sums)
        if let b = s.bias { for o in 0..<g.channels { ws.acc[b + o] += ws.sums[o] } }
        lap(0)
        let x = ws.view(s.x)
        let (pt, pl) = s.padding == .same ? ((s.kh - 1) / 2, (s.kw - 1) / 2) : (0, 0)
        // dW[o, c, u, v] = sum over (y, x) of dY[o, y, x] X[c, y + u - pt, x + v - pl]: a 'valid'
        // weight gradient of X read from (-pt, -pl) (its zero margin is the padding).
        let shifted = PlanarView(base: x.pointer(0, -pt, -pl), layout: x.layout, owner: x.owner)
        WeightGradient.accumulate(input: shifted, offsets: s.tapOffsets, outHeight: s.outHeight, outWidth: s.outWidth,
                                  dYT: UnsafePointer(dyt), ldb: s.ldb, acc: ws.acc + s.acc, isa: isa)
        lap(1)
        guard let target = s.dx, let w = backwardWeights[s.weight] else { return }
        let dst = ws.view(s.mode == .write ? target : s.scratch!)
        if let wb = winogradBackward[s.weight] {
            // 'same' 3x3: dX is the 'same' correlation of dY with the flipped weights T.
            wb.run(g, dst, activation: .none, isa: isa, tileRows: 0..<(dst.height + wb.tileSize - 1) / wb.tileSize)
        } else {
            // dX[c, i, j] = sum of T[c, o, u, v] dY[o, i + u - top, j + v - left] with the flipped
            // weights T: a 'valid' convolution of dY read from (-top, -left) through its zero margin.
            let (top, left) = (s.kh - 1 - pt, s.kw - 1 - pl)
            var padded = g.layout
            padded.height = dst.height + s.kh - 1
            padded.width = dst.width + s.kw - 1
            padded.margin = 0
            let src = PlanarView(base: g.pointer(0, -top, -left), layout: padded, owner: g.owner)
            directConv(src, dst, w, padding: .valid, activation: .none)
        }
        if s.mode == .accumulate { GraphTrainer.add(dst, into: ws.view(target)) }
        lap(2)
    }

    private func convTransposeBackward(_ s: ConvTransposeBackward, _ ws: Workspace, _ lap: (Int) -> Void) {
        let g = ws.view(s.dy), p = ws.view(s.phases)
        let dyt = ws.raw(s.dyt)
        let o = g.channels, (h, w) = (p.height, p.width)
        // Split dY into its taps: plane t·O + oc of `p` and column t·O + oc of dYT hold
        // dY[oc, 2i + u, 2j + v], t = 2u + v; the bias gradient on the way (rows in order).
        for oc in 0..<o { ws.sums[oc] = 0 }
        for i in 0..<h {
            for u in 0..<2 {
                var j0 = 0
                while j0 < w {
                    let n = min(GraphTrainer.transposeBlock / 2, w - j0)
                    for oc in 0..<o {
                        let row = g.pointer(oc, 2 * i + u, 2 * j0)
                        let p0 = p.pointer(2 * u * o + oc, i, j0), p1 = p.pointer((2 * u + 1) * o + oc, i, j0)
                        let d = dyt + (i * w + j0) * s.ldb + 2 * u * o + oc
                        var sum = ws.sums[oc]
                        for j in 0..<n {
                            let a = row[2 * j], b = row[2 * j + 1]
                            sum += a
                            sum += b
                            p0[j] = a
                            p1[j] = b
                            d[j * s.ldb] = a
                            d[j * s.ldb + o] = b
                        }
                        ws.sums[oc] = sum
                    }
                    j0 += n
                }
            }
        }
        if let b = s.bias { for oc in 0..<o { ws.acc[b + oc] += ws.sums[oc] } }
        lap(0)
        let x = ws.view(s.x)
        WeightGradient.accumulate(input: x, offsets: s.tapOffsets, outHeight: h, outWidth: w, dYT: UnsafePointer(dyt),
                                  ldb: s.ldb, acc: ws.acc + s.acc, isa: isa)
        lap(1)
        guard let target = s.dx, let wt = backwardWeights[s.weight] else { return }
        let dst = ws.view(s.mode == .write ? target : s.scratch!)
        directConv(p, dst, wt, padding: .valid, activation: .none)
        if s.mode == .accumulate { GraphTrainer.add(dst, into: ws.view(target)) }
        lap(2)
    }

    /// Writes g pixel-major (`dyt[(y * width + x) * ldb + c]`) and the per-channel sums of g
    /// (each over rows then columns in order) into `sums`.
    static func transpose(_ g: PlanarView, into dyt: UnsafeMutablePointer<Float>, ldb: Int, sums: UnsafeMutablePointer<Float>) {
        let (h, w, ch) = (g.height, g.width, g.channels)
        for c in 0..<ch { sums[c] = 0 }
        for y in 0..<h {
            var x0 = 0
            while x0 < w {
                let n = min(transposeBlock, w - x0)
                for c in 0..<ch {
                    let row = g.pointer(c, y, x0)
                    let d = dyt + (y * w + x0) * ldb + c
                    var s = sums[c]
                    for x in 0..<n { let v = row[x]; s += v; d[x * ldb] = v }
                    sums[c] = s
                }
                x0 += n
            }
        }
    }

    /// g = dL/d(pre-activation) from dL/d(output) and the output's sign: ReLU (and alpha 0)
    /// zero where y <= 0, LeakyReLU alpha > 0 times alpha where y < 0.
    static func mask(_ g: PlanarView, by y: PlanarView, _ act: Activation) {
        let alpha: Float
        switch act {
        case .none: return
        case .relu: alpha = 0
        case .leakyRelu(let a): alpha = a
        }
        for c in 0..<g.channels { for r in 0..<g.height {
            let gp = g.pointer(c, r, 0), yp = y.pointer(c, r, 0)
            // Selects rather than branches (the signs are random): vectorisable, same values.
            if alpha == 0 {
                for x in 0..<g.width { let v = gp[x]; gp[x] = yp[x] <= 0 ? 0 : v }
            } else {
                for x in 0..<g.width { let v = gp[x]; gp[x] = yp[x] < 0 ? v * alpha : v }
            }
        } }
    }

    /// Standalone activation: dX = dY where x >= 0, alpha dY where x < 0 (as the reference).
    static func activationBackward(_ x: PlanarView, _ dy: PlanarView, _ dx: PlanarView, alpha: Float, mode: Mode) {
        for c in 0..<dx.channels { for r in 0..<dx.height {
            let xp = x.pointer(c, r, 0), gp = dy.pointer(c, r, 0), dp = dx.pointer(c, r, 0)
            if mode == .write {
                for i in 0..<dx.width { let g = gp[i]; dp[i] = xp[i] < 0 ? g * alpha : g }
            } else {
                for i in 0..<dx.width { let g = gp[i]; dp[i] += xp[i] < 0 ? g * alpha : g }
            }
        } }
    }

    /// Routes each pooled gradient to its window's argmax.
    static func maxpoolBackward(_ dy: PlanarView, _ dx: PlanarView, _ argmax: UnsafePointer<UInt8>, mode: Mode) {
        let (h, w) = (dy.height, dy.width)
        for c in 0..<dy.channels {
            for i in 0..<h {
                let g = dy.pointer(c, i, 0), arg = argmax + (c * h + i) * w
                let rows = (dx.pointer(c, 2 * i, 0), dx.pointer(c, 2 * i + 1, 0))
                if mode == .write {
                    rows.0.update(repeating: 0, count: 2 * w)
                    rows.1.update(repeating: 0, count: 2 * w)
                }
                for j in 0..<w {
                    let k = Int(arg[j])
                    let p = (k < 2 ? rows.0 : rows.1) + 2 * j + (k & 1)
                    p.pointee += g[j]
                }
            }
        }
    }

    /// d += s over the maps' pixels.
    static func add(_ s: PlanarView, into d: PlanarView) {
        for c in 0..<d.channels { for r in 0..<d.height {
            let sp = s.pointer(c, r, 0), dp = d.pointer(c, r, 0)
            for i in 0..<d.width { dp[i] += sp[i] }
        } }
    }
}
