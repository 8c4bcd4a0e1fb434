import Foundation
import Kernels
import ModelFormat

/// The software version written into outputs.
public enum AstroCNN {
    public static let version = "0.1.0"
}

/// What a restoration did, for the CLI and the FITS header.
public struct RestoreReport: Sendable {
    public var width: Int
    public var height: Int
    public var invalidPixels: Int
    public var normalization: Normalization
    /// Reflection padding applied around the image: top, bottom, left, right.
    public var padding: [Int]
    public var tiles: Int
    public var seconds: Double
    /// The run-time parameters the network ran with (the options' and those the image set: the
    /// Wiener step's lambda).
    public var parameters: [String: Float] = [:]
    /// What the data-consistency correction did (`DataConsistency`), nil when not asked for.
    public var dataConsistency: DataConsistencySummary?
}

/// The restoration pipeline, one place for each step:
/// image (file units) -> normalise -> fill invalid pixels -> reflect-pad -> tiled graph ->
/// crop -> denormalise -> invalid pixels back to NaN.
public enum Restoration {
    public struct Options: Sendable {
        public var threads: Int
        public var tileSize: Int?
        /// Run-time scalars of the model (e.g. the U-net's exposure-time ratio).
        public var parameters: [String: Float]
        public var progress: (@Sendable (Int, Int) -> Void)?
        public var algorithm: ConvAlgorithm
        public var isa: KernelISA
        /// Overrides the model's normalisation rule (e.g. `.none` for images already in the
        /// units the network was trained on, as in evaluation on simulated degradations).
        public var normalization: Normalization.Kind?
        /// Electrons per image unit of the input (its gain), for `sky_vst` models: nil uses the
        /// model's assumed sky noise.
        public var gain: Double?
        /// Feature-map budget for choosing the tiles of 'same' networks (nil: `TiledRunner`'s
        /// default in memory, `StreamingRestore.defaultBandBudget` when streaming).
        public var memoryBudget: Int?
        /// The PSF bound to the model's Wiener step (`Network.psfDescription`), for the options
        /// signature that decides whether a batch output is up to date.
        public var psf: String?
        /// Deconvolution models with a Wiener step: correct the network's output against the
        /// observation (`DataConsistency`), in memory.
        public var dataConsistency = false
        /// With `dataConsistency`: the image's true zero in its own units (a pixel of the sky is
        /// never below it: bias-subtracted counts, or a sky-subtracted image whose sky estimate
        /// is right), held by the correction (`DataConsistency.correct`'s `lowerBound`); nil: none.
        public var lowerBound: Float?
        /// Symmetries of the square each tile runs in, outputs averaged (`SelfEnsemble`: 1, 2, 4
        /// or 8; 'same' models without a Wiener step).
        public var ensemble = 1
        public init(threads: Int = ParallelFor.availableCores, tileSize: Int? = nil, parameters: [String: Float] = [:],
                    algorithm: ConvAlgorithm = .auto, isa: KernelISA = .best, progress: (@Sendable (Int, Int) -> Void)? = nil) {
            self.threads = threads
            self.algorithm = algorithm
            self.isa = isa
            self.tileSize = tileSize
            self.parameters = parameters
            self.progress = progress
        }
    }

    /// Reflection padding (top, bottom, left, right) around an image of the given size so that
    /// every pixel gets an output aligned with it: 'valid' networks get their receptive-field
    /// halo; 'same' networks pad with zeros themselves (as in training) and only get rows and
    /// columns up to their size multiple. Output pixel (i, j) is then image pixel (i, j).
    public static func padding(for network: Network, height: Int, width: Int) throws -> [Int] {
        let g = network.analysis.geometry
        let shrink = try network.analysis.shrink()
        let m = g.sizeMultiple
        func axis(_ n: Int, _ off: Int, _ sh: Int, _ rfSide: Int, _ what: String) throws -> (Int, Int) {
            if sh > 0 && n < rfSide {
                throw RuntimeError.imageTooSmall("the image is \(n) pixels \(what), smaller than the model's receptive field of \(rfSide); it cannot be restored")
            }
            if n < m {
                throw RuntimeError.imageTooSmall("the image is \(n) pixels \(what); the model needs at least \(m)")
            }
            let top = off
            let bottom = (n + sh + m - 1) / m * m - n - top
            if top >= n || bottom >= n {
                throw RuntimeError.imageTooSmall("the image is \(n) pixels \(what), too small for the model's padding of \(max(top, bottom))")
            }
            return (top, bottom)
        }
        let (t, b) = try axis(height, g.outputOffset[0], shrink[0], g.receptiveField[0], "high")
        let (l, r) = try axis(width, g.outputOffset[1], shrink[1], g.receptiveField[1], "wide")
        return [t, b, l, r]
    }

    /// The fitted normalisation completed with what the statistics cannot give: `sky_vst`'s sky
    /// noise in electrons, from the input's gain (`options.gain`, else the header's GAIN, EGAIN,
    /// CCDGAIN, GAINEFF or BUNIT in electrons) or the model's assumption.
    public static func resolved(_ fitted: Normalization, network: Network, options: Options,
                                header: ((String) -> String?)? = nil) -> Normalization {
        guard fitted.kind == .skyVST else { return fitted }
        let gain = options.gain ?? header.flatMap { ExposureKeywords(keyword: $0).gain?.value }
        return fitted.resolvingNoise(gain: gain, fallback: network.assumedNoiseElectrons)
    }

    /// Restores one image held in memory; returns pixels in the input's units (NaN where invalid).
    /// A model with a Wiener step gets one lambda for the whole image (`Network.imageParameters`);
    /// it is in `RestoreReport.parameters`.
    public static func restore(_ image: FITSImage, network: Network, options: Options = Options()) throws -> (pixels: [Float], report: RestoreReport) {
        let start = Date()
        if network.inputChannels != 1 || network.outputChannels != 1 {
            throw RuntimeError.unsupportedModel("restoring a FITS image needs a 1-channel to 1-channel model; this one maps \(network.inputChannels) to \(network.outputChannels)")
        }
        let w = image.width, h = image.height
        let pads = try padding(for: network, height: h, width: w)

        let norm = resolved(Normalization.fit(options.normalization ?? network.normalization, pixels: image.pixels, invalid: image.invalid, width: image.width),
                            network: network, options: options, header: image.keyword)
        var networkUnits = norm.apply(image.pixels, invalid: image.invalid)
        MaskFill.fill(&networkUnits, invalid: image.invalid, width: w, height: h)
        let padded = ReflectPad.pad(networkUnits, width: w, height: h, top: pads[0], bottom: pads[1], left: pads[2], right: pads[3])
        let ph = h + pads[0] + pads[1], pw = w + pads[2] + pads[3]

        let runner = TiledRunner(network: network, tileSize: options.tileSize, threads: options.threads, algorithm: options.algorithm, isa: options.isa,
                                 memoryBudget: options.memoryBudget, ensemble: options.ensemble)
        // The image's copies (network units, padded, output, restored) and the tile maps.
        let maps = min(Double(runner.wholeImageBudget), Double(ph) * Double(pw) * network.bytesPerInputPixel)
        try MemoryBudget.check(Double(ph) * Double(pw) * 4 * 4 + maps, "restoring the \(w)x\(h) image in memory with '\(network.name)'",
                               hint: "`restore` without --in-memory streams it in row bands")
        // noise_mad units: the pixel noise is 1 by construction.
        let noiseVariance: Double? = norm.kind == .noiseMAD ? 1 : nil
        let parameters = network.imageParameters(options.parameters, height: h, width: w, threads: options.threads,
                                                 noiseVariance: noiseVariance) { rows, cols in
            var px = [Float](), bad = [Bool]()
            for y in rows { for x in cols { px.append(networkUnits[y * w + x]); bad.append(image.invalid[y * w + x]) } }
            return (px, bad)
        }
        let out = try runner.run(padded: padded, height: ph, width: pw, parameters: parameters, progress: options.progress)

        var restored = [Float](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w { restored[y * w + x] = out.data[y * out.width + x] }
        }
        var dc: DataConsistency.Result?
        if options.dataConsistency {
            guard let k = network.psf, norm.kind == .noiseMAD else {
                throw RuntimeError.unsupportedModel("data consistency corrects a deconvolution model's output against its input with the PSF it deconvolved by; '\(network.name)' has no Wiener step bound to a PSF in noise_mad units")
            }
            try MemoryBudget.check(Double(DataConsistency.workBytes(height: h, width: w, psfSide: max(k.height, k.width))),
                                   "the data-consistency correction of the \(w)x\(h) image")
            var observed = networkUnits
            for i in observed.indices where image.invalid[i] { observed[i] = .nan }
            // The bound in network units (the normalisation is affine and increasing).
            let bound = options.lowerBound.map { norm.apply([$0], invalid: [false])[0] }
            dc = DataConsistency.correct(observed: observed, estimate: restored, height: h, width: w, psf: k, lowerBound: bound,
                                         threads: options.threads)
            restored = dc!.image
        }
        restored = norm.invert(restored)
        if dc != nil, let b = options.lowerBound {
            for i in restored.indices { restored[i] = max(restored[i], b) }   // exact in the input's units
        }
        for i in 0..<restored.count where image.invalid[i] { restored[i] = .nan }
        let tiles = runner.tileCount(outputHeight: out.height, outputWidth: out.width)
        let report = RestoreReport(width: w, height: h, invalidPixels: image.invalidCount, normalization: norm, padding: pads,
                                   tiles: tiles, seconds: Date().timeIntervalSince(start), parameters: parameters,
                                   dataConsistency: dc.map { .init(mu: $0.mu, excess: $0.excess, applied: $0.applied, lowerBound: options.lowerBound) })
        return (restored, report)
    }

    /// FITS file in, FITS file out: keeps the input header (WCS included) and adds provenance.
    /// With `inputChecksum` (a batch) the header also gets `ACNNICRC` and `ACNNOPTS`, as the
    /// streamed restore writes them, so that a rerun skips the finished output.
    public static func restoreFile(input: String, hdu: String? = nil, output: String, network: Network,
                                   options: Options = Options(), overwrite: Bool = false, command: String? = nil,
                                   inputChecksum: UInt32? = nil) throws -> RestoreReport {
        // Fail before the long computation if the output cannot be written.
        do { try AtomicFile.checkWritable(output, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(output) }
            throw FITSError.io(e.description)
        }
        let image = try FITSIO.readImage(path: input, hdu: hdu)
        let (pixels, report) = try restore(image, network: network, options: options)
        var keywords: [(String, MetaValue, String)] = [
            ("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
            ("ACNNMODL", .string(network.name), "restoration model"),
            ("ACNNNORM", .string(network.normalization.rawValue), "input normalisation of the model"),
            ("ACNNHALO", .int(Int64(report.padding.max() ?? 0)), "[px] reflection padding (receptive-field halo)"),
            ("ACNNNBAD", .int(Int64(report.invalidPixels)), "invalid input pixels (NaN in output)"),
        ]
        if let crc = network.fileChecksum {
            keywords.insert(("ACNNCRC", .string(checksumString(crc)), "CRC-32C of the model file"), at: 2)
        }
        if let c = inputChecksum {
            keywords.append(("ACNNICRC", .string(checksumString(c)), "CRC-32C of the input file"))
            keywords.append(("ACNNOPTS", .string(StreamingRestore.optionsSignature(hdu: hdu, options: options)), "options that change the result"))
        }
        for (k, v) in report.parameters.sorted(by: { $0.key < $1.key }) {
            keywords.append(("ACNNP\(keywords.count)", .string("\(k)=\(v)"), "run-time model parameter"))
        }
        var history = [
            "Restored by astrocnn \(AstroCNN.version) with model '\(network.name)'" + (network.fileChecksum.map { " (CRC-32C \(checksumString($0)))" } ?? ""),
            "Input: \(input)" + (hdu.map { " HDU \($0)" } ?? " HDU \(image.hdu)") + ", BITPIX \(image.bitpix)",
            "Normalisation \(report.normalization), reflection padding \(report.padding.map(String.init).joined(separator: ",")) (top,bottom,left,right)",
        ]
        if report.invalidPixels > 0 {
            history.append("\(report.invalidPixels) invalid pixels were filled by neighbour inpainting for the network and are NaN here")
        }
        let (pk, ph) = network.psfProvenance
        keywords += pk
        history += ph
        let (ek, eh) = SelfEnsemble.provenance(options.ensemble)
        keywords += ek
        history += eh
        if let d = report.dataConsistency {
            keywords.append(("ACNNDC", .string(d.keyword), "data-consistency correction (mu in noise units)"))
            history.append(d.history)
        }
        if let c = command { history.append("Command: \(c)") }
        try FITSIO.writeImage(path: output, width: image.width, height: image.height, pixels: pixels, headerCards: image.headerCards,
                              provenance: .init(keywords: keywords, history: history), overwrite: overwrite)
        return report
    }
}
