import Foundation
import ModelFormat

/// What users add to a restoration: colour and cube planes, a blend with the input, bad-pixel
/// masks and the data-quality extension of HST/JWST files.
public struct RestoreExtras: Sendable, Equatable {
    /// Output = strength x restored + (1 - strength) x input, in the input's units (0...1).
    public var strength: Double = 1
    /// A bad-pixel mask (cfitsio path, e.g. `mask.fits[1]`): non-zero (or undefined) pixels are invalid.
    public var mask: String?
    /// Use the file's `DQ` extension (non-zero = invalid) when the image has one.
    public var useDQ = true
    /// 3-plane (RGB) images: restore the luminance (mean of the planes) and keep the chroma.
    public var luminance = false
    /// Denoisers: add back the Gaussian low-pass (this sigma, pixels) of what the network removed
    /// (`FluxRestore`), before the blend; 0: off.
    public var fluxSigma: Double = 0
    /// Denoisers: the network sees the input capped at sky + k sigma (`BrightCap`; this k) and the
    /// excess is added back to its output, so bright cores pass through as measured; 0: off.
    public var capSigma: Double = 0

    public init(strength: Double = 1, mask: String? = nil, useDQ: Bool = true, luminance: Bool = false, fluxSigma: Double = 0,
                capSigma: Double = 0) {
        self.capSigma = capSigma
        self.strength = strength
        self.mask = mask
        self.useDQ = useDQ
        self.luminance = luminance
        self.fluxSigma = fluxSigma
    }
}

/// Restoration of cubes (NAXIS3 planes: RGB colour or spectral), masked images and blends,
/// streamed in row bands as `StreamingRestore` does: each plane (or the luminance of an RGB
/// image) goes through `StreamingRestore.restoreWindow`, and its bands are written into the
/// matching plane of the temporary output, renamed at the end.
public enum PlaneRestore {
    /// Whether `restoreFile` is needed for this image (else the plain streaming restore gives the
    /// same result): a cube, a mask, a DQ extension in use, a strength below 1, luminance mode,
    /// flux restore or a bright cap.
    public static func needed(_ probe: FITSProbe, _ extras: RestoreExtras) -> Bool {
        probe.planes > 1 || extras.mask != nil || (extras.useDQ && probe.dqHDU != nil) || extras.strength != 1 || extras.luminance
            || extras.fluxSigma > 0 || extras.capSigma > 0
    }

    /// The part of `ACNNOPTS` these extras add ("" when none applies to this image).
    public static func signature(_ probe: FITSProbe, _ extras: RestoreExtras, maskChecksum: UInt32?) -> String {
        var parts: [String] = []
        if extras.strength != 1 { parts.append("strength=\(extras.strength)") }
        if let m = extras.mask { parts.append("mask=\((m as NSString).lastPathComponent):\(maskChecksum.map(checksumString) ?? "?")") }
        if extras.useDQ, let d = probe.dqHDU { parts.append("dq=\(d)") }
        if extras.luminance { parts.append("luminance") }
        if extras.fluxSigma > 0 { parts.append("flux_sigma=\(extras.fluxSigma)") }
        if extras.capSigma > 0 { parts.append("cap_sigma=\(extras.capSigma)") }
        return parts.joined(separator: ";")
    }

    /// Checks the extras themselves (before any file is read).
    public static func validate(_ extras: RestoreExtras) throws {
        guard extras.strength >= 0, extras.strength <= 1, extras.strength.isFinite else {
            throw ScaleError.badInput("--strength must be a number from 0 (the input unchanged) to 1 (the restored image)")
        }
        if extras.fluxSigma != 0 {
            _ = try FluxRestore(width: 1, height: 1, sigma: extras.fluxSigma)
            if extras.luminance {
                throw ScaleError.badInput("--flux-restore is for photometry on single-plane images and cubes, not with --luminance")
            }
        }
        guard extras.capSigma >= 0, extras.capSigma.isFinite else {
            throw ScaleError.badInput("--cap takes K >= 0 (bright pixels capped at sky + K sigma before the network; 0: off)")
        }
        if extras.capSigma > 0 && extras.luminance {
            throw ScaleError.badInput("--cap works on single-plane images and cubes, not with --luminance")
        }
    }

    /// Checks the extras against the model: flux restore and the bright cap are for denoisers (a
    /// deconvolution's output differs from its input at the PSF's scales by design).
    public static func validate(_ extras: RestoreExtras, network: Network) throws {
        try validate(extras)
        guard ModelSearch.task(metadata: network.metadata) == .deconvolve else { return }
        if extras.fluxSigma > 0 {
            throw ScaleError.badInput("--flux-restore adds back the large scales of what a denoiser removed; \(network.name) is a deconvolution model, whose output differs from its input at the PSF's scales by design")
        }
        if extras.capSigma > 0 {
            throw ScaleError.badInput("--cap passes bright cores through undenoised; \(network.name) is a deconvolution model, which must see whole sources to deconvolve them")
        }
    }

    /// Restores `input` into `output`: every plane of a cube (or the luminance of a 3-plane image
    /// with `extras.luminance`), masked by `extras.mask` and the DQ extension, blended with the
    /// input by `extras.strength`. The output has the input's axes and header, as `restoreFile`
    /// of `StreamingRestore` writes it, with the extras in `ACNNOPTS` and the HISTORY.
    public static func restoreFile(input: String, hdu: String? = nil, output: String, network: Network,
                                   options: Restoration.Options = Restoration.Options(), extras: RestoreExtras,
                                   overwrite: Bool = false, command: String? = nil, inputChecksum: UInt32? = nil,
                                   maskChecksum: UInt32? = nil) throws -> RestoreReport {
        let start = Date()
        try validate(extras, network: network)
        do { try AtomicFile.checkWritable(output, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(output) }
            throw FITSError.io(e.description)
        }
        let probe = try FITSProbe(path: input, hdu: hdu)
        try probe.checkPlanes(path: input)
        let planes = probe.planes
        if extras.luminance && planes != 3 {
            throw ScaleError.badInput("\(input): --luminance needs a colour image with 3 planes (NAXIS3 = 3); this one has \(planes)")
        }
        var history: [String] = []
        let maskReader = try extras.mask.map { try FITSReader(path: $0) }
        if let m = extras.mask { history.append("Bad-pixel mask \(m): non-zero pixels invalid") }
        let useDQ = try extras.useDQ && probe.dqPlanes() != nil
        if useDQ { history.append("Data quality: HDU \(probe.dqHDU!) (DQ, EXTVER \(probe.extver)), non-zero pixels invalid") }
        // Plane k with its masks, opened when needed (a spectral cube's planes one at a time).
        func source(_ k: Int) throws -> PixelSource {
            let r = try probe.planeReader(k, path: input, hdu: hdu)
            var masks: [PixelSource] = []
            if let m = maskReader { masks.append(m) }
            if useDQ, let d = try probe.dqReader(k) { masks.append(d) }
            return masks.isEmpty ? r : try MaskedSource(r, masks: masks)
        }
        // What each run restores: every plane, or the luminance of the three.
        let runCount = extras.luminance ? 1 : planes
        // The cap of each plane (before its statistics: the network's normalisation is fitted
        // on what it sees).
        var caps: [Float?] = []
        if extras.capSigma > 0 {
            for k in 0..<planes {
                let c = try BrightCap.level(try source(k), k: extras.capSigma)
                caps.append(c.map { Float($0.cap) })
                history.append(c.map { String(format: "Bright cap%@: the network saw the input capped at sky + %g sigma = %.6g (sky %.6g, sigma %.6g), the excess added back to its output",
                                              planes > 1 ? " (plane \(k + 1))" : "", extras.capSigma, $0.cap, $0.sky, $0.sigma) }
                               ?? "Bright cap\(planes > 1 ? " (plane \(k + 1))" : ""): the sky has no spread, nothing capped")
            }
        }
        func run(_ k: Int) throws -> (PixelSource, [PixelSource]) {
            if extras.luminance {
                let all = try (0..<3).map { try source($0) }
                return (try MeanSource(all), all)
            }
            let s = try source(k)
            if extras.capSigma > 0, let c = caps[k] { return (CappedSource(s, cap: c), [s]) }
            return (s, [s])
        }
        let (w, h) = (probe.width, probe.height)
        let layout = try RestoreLayout(network: network, width: w, height: h, tileSize: options.tileSize,
                                       memoryBudget: options.memoryBudget ?? StreamingRestore.defaultBandBudget,
                                       wholeImageBudget: options.memoryBudget == nil ? TiledRunner.defaultMemoryBudget : nil)
        // Statistics first (for the header), one plane open at a time.
        let stats = try (0..<runCount).map { try StreamingRestore.statistics(try run($0).0, network: network, options: options) }
        let crc = try inputChecksum ?? StreamingRestore.fileChecksum(input)
        if planes > 1 {
            history.append(extras.luminance
                ? "Colour: the luminance (mean of the 3 planes) was restored; each plane scaled by restored/original luminance where it is > 0, else shifted by their difference"
                : "Cube: each of the \(planes) planes restored on its own (normalisation fitted per plane)")
        }
        if extras.fluxSigma > 0 {
            history.append("Flux restore: output + Gaussian (sigma \(extras.fluxSigma) px, normalised over valid pixels) of input - output: the large scales of what the network removed, added back")
        }
        if extras.strength != 1 {
            history.append("Strength \(extras.strength): output = \(extras.strength) x restored + \(1 - extras.strength) x input")
        }
        let invalid = stats.reduce(0) { $0 + $1.invalidPixels }
        var prov = StreamingRestore.provenance(input: input, hdu: hdu, readerHDU: probe.hdu, bitpix: probe.bitpix, network: network,
                                               statistics: StreamingRestore.Statistics(normalization: stats[0].normalization, invalidPixels: invalid),
                                               layout: layout, options: options, inputChecksum: crc, command: command, extraHistory: history)
        let extra = signature(probe, extras, maskChecksum: maskChecksum)
        if !extra.isEmpty, let i = prov.keywords.firstIndex(where: { $0.0 == "ACNNOPTS" }) {
            prov.keywords[i].1 = .string(StreamingRestore.optionsSignature(hdu: hdu, options: options) + ";" + extra)
        }
        let writer = try FITSWriter(path: output, width: w, height: h, planes: planes, headerCards: probe.headerCards,
                                    provenance: prov, overwrite: overwrite)
        let s = Float(extras.strength)
        var tiles = 0
        do {
            var px = [Float](), inv = [Bool]()
            for k in 0..<runCount {
                let (source, inputs) = try run(k)
                var o = options
                if let p = options.progress {
                    o.progress = { d, t in p(k * t + d, runCount * t) }
                }
                let flux = extras.fluxSigma > 0 ? try FluxRestore(width: w, height: h, sigma: extras.fluxSigma) : nil
                let cap = extras.capSigma > 0 ? caps[k] : nil
                tiles += try StreamingRestore.restoreWindow(source, network: network, layout: layout, statistics: stats[k],
                                                            rows: 0..<h, columns: 0..<w, options: o) { y0, n, restored in
                    if extras.luminance {
                        var planePixels: [[Float]] = []
                        for j in 0..<3 {
                            try inputs[j].readRows(y0, n, pixels: &px, invalid: &inv)
                            planePixels.append(px)
                        }
                        var out: [[Float]] = Array(repeating: [Float](repeating: .nan, count: restored.count), count: 3)
                        for i in 0..<restored.count where !restored[i].isNaN {
                            let l = Float((Double(planePixels[0][i]) + Double(planePixels[1][i]) + Double(planePixels[2][i])) / 3)
                            if l.isNaN { continue }
                            let lr = restored[i]
                            for j in 0..<3 {
                                let x = planePixels[j][i]
                                let v = l > 0 ? x * (lr / l) : x + (lr - l)
                                out[j][i] = s * v + (1 - s) * x
                            }
                        }
                        for j in 0..<3 { try out[j].withUnsafeBufferPointer { try writer.writeRows(y0, $0, plane: j) } }
                    } else if flux == nil && cap == nil && s == 1 {
                        try restored.withUnsafeBufferPointer { try writer.writeRows(y0, $0, plane: k) }
                    } else {
                        // The input rows (NaN where invalid): for the excess over the cap, the flux
                        // restore and the blend.
                        try inputs[0].readRows(y0, n, pixels: &px, invalid: &inv)
                        var restored = restored
                        // The excess over the cap, added back where the network saw the cap.
                        if let c = cap { for i in 0..<px.count where px[i] > c && !restored[i].isNaN { restored[i] += px[i] - c } }
                        var r0 = y0, back = restored, x = px
                        if let f = flux {
                            // Rows come out of the flux restore once the rows its Gaussian reads below them are in.
                            guard let done = f.push(y0, restored: restored, input: px) else { return }
                            (r0, back, x) = (done.y0, done.restored, done.input)
                        }
                        if s != 1 { for i in 0..<back.count { back[i] = s * back[i] + (1 - s) * x[i] } }
                        try back.withUnsafeBufferPointer { try writer.writeRows(r0, $0, plane: k) }
                    }
                }
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
        return RestoreReport(width: w, height: h, invalidPixels: invalid, normalization: stats[0].normalization,
                             padding: layout.padding, tiles: tiles, seconds: Date().timeIntervalSince(start))
    }
}
