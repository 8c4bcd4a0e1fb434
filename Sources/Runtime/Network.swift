import Foundation
import Kernels
import ModelFormat

/// Errors of running a model.
public enum RuntimeError: Error, CustomStringConvertible {
    case unsupportedModel(String)
    case imageTooSmall(String)
    case badParameter(String)

    public var description: String {
        switch self {
        case .unsupportedModel(let s): return "unsupported model: \(s)"
        case .imageTooSmall(let s): return s
        case .badParameter(let s): return s
        }
    }
}

/// A loaded model ready to run: validated graph, decoded weights and the metadata the
/// pipeline needs. Shareable between threads; immutable but for the PSF a format 1.1 model's
/// Wiener step is given (`bind(psf:description:)`, before running it).
public final class Network: @unchecked Sendable {
    public let metadata: [String: MetaValue]
    public let graph: Graph
    public let analysis: GraphAnalysis
    public let name: String
    /// CRC-32C of the model file, when loaded from one.
    public let fileChecksum: UInt32?
    public let normalization: Normalization.Kind
    /// `sky_vst`: the sky noise in electrons assumed for an input without a gain (the model's
    /// `normalization.noise_electrons`; else that of a sky of 1000 e- at ratio 2, sqrt(500)).
    public let assumedNoiseElectrons: Double
    /// Decoded weights by tensor name (canonical layout).
    let weights: [String: [Float]]
    /// Weights repacked for the fast kernels (made on first use).
    private(set) lazy var packed: PackedWeights = PackedWeights(network: self)
    private let packLock = NSLockShim()
    /// The last execution plan (its feature maps), reused by the next image of the same size;
    /// `runLock` serialises runs that use it.
    /// Plan caches, one per thread that runs whole tiles (the first serves single-threaded runs
    /// and layer-parallel runs); guarded by `runLock`.
    private var caches: [PlanCache] = [PlanCache()]
    let runLock = NSLock()

    /// The first `count` plan caches (made on demand). Call with `runLock` held.
    func planCaches(_ count: Int) -> [PlanCache] {
        while caches.count < count { caches.append(PlanCache()) }
        return Array(caches.prefix(count))
    }

    /// The PSF of the `wiener_deconvolution` step (format 1.1 models), bound by `bind(psf:)`
    /// before the first run; nil until then.
    public private(set) var psf: PSFKernel?
    /// What the bound PSF is (a spec or a file and how it was made), for headers and messages.
    public private(set) var psfDescription: String?

    /// The context of the model's `wiener_deconvolution` step, or nil when it has none: such a
    /// model needs the PSF of the image at run time.
    public var wienerContext: Int? { graph.nodes.first { $0.op == .wienerDeconvolution }?.context }

    /// The PSF sizes the model was trained for (`deconvolution.psf_fwhm`: [min, max] pixels), if declared.
    public var psfFWHMRange: ClosedRange<Double>? {
        guard let r = metadata["deconvolution.psf_fwhm"]?.doubleArray, r.count == 2, r[0] > 0, r[0] <= r[1] else { return nil }
        return r[0]...r[1]
    }

    /// Whether the model declares the data-consistency correction as its default
    /// (`deconvolution.data_consistency`, a PSF-aware model evaluated with it): `restore` then
    /// applies it unless told not to.
    public var declaresDataConsistency: Bool {
        wienerContext != nil && metadata["deconvolution.data_consistency"] == .bool(true)
    }

    /// The run-time steps a denoiser declares as its defaults (`denoise.cap_sigma`: the bright
    /// cap's K, `denoise.flux_restore_sigma`: the flux restore's Gaussian sigma in pixels; both
    /// chosen by measurement, docs/EVALUATION.md): `restore`/`denoise` apply them unless told
    /// otherwise (`--cap 0`, `--flux-restore 0`). nil where not declared, outside the step's
    /// range (K > 0; 0 < sigma <= `FluxRestore.maxSigma`), or the model is a deconvolution model
    /// (neither step applies to one).
    public var declaredDenoiseSteps: (capSigma: Double?, fluxRestoreSigma: Double?) {
        guard ModelSearch.task(metadata: metadata) != .deconvolve else { return (nil, nil) }
        func value(_ key: String, max: Double) -> Double? {
            guard let v = metadata[key]?.doubleValue, v > 0, v <= max else { return nil }
            return v
        }
        return (value("denoise.cap_sigma", max: .greatestFiniteMagnitude), value("denoise.flux_restore_sigma", max: FluxRestore.maxSigma))
    }

    /// Binds the PSF the model's Wiener step deconvolves with: cut to the step's square
    /// (2 context + 1; refused if that loses over 2% of its flux) and checked against the sizes
    /// the model declares it was trained for (10% margin). Call before running; rebinding drops
    /// the cached plans. Throws for a model without the step.
    public func bind(psf kernel: PSFKernel, description: String = "given") throws {
        guard let c = wienerContext else {
            throw RuntimeError.badParameter("\(name) has no Wiener step: it does not take a PSF at run time (it was trained for \(metadata["psf"]?.stringValue ?? "one PSF"))")
        }
        let k = try kernel.fitting(side: 2 * c + 1)
        if let r = psfFWHMRange {
            let f = k.fwhm
            if f < r.lowerBound / 1.1 || f > r.upperBound * 1.1 {
                throw RuntimeError.badParameter(String(format: "the PSF's FWHM is %.2f px; %@ covers %.3g to %.3g px (deconvolution.psf_fwhm): it was not trained for this PSF", f, name, r.lowerBound, r.upperBound))
            }
        }
        runLock.lock(); defer { runLock.unlock() }
        psf = k
        psfDescription = description
        caches = [PlanCache()]
    }

    /// `parameters` completed with the Wiener step's lambda for a whole image (on its central
    /// square, `WienerDeconvolution.imageLambda`: the risk rule with the window's
    /// noise variance when the caller knows it, else GCV), unless the model has no step, no PSF is bound
    /// or the caller fixed it. `window(rows, columns)` gives the pixels and invalid flags of a
    /// rectangle in any affine units of the image.
    public func imageParameters(_ parameters: [String: Float], height: Int, width: Int, threads: Int, noiseVariance: Double? = nil,
                                window: (Range<Int>, Range<Int>) throws -> ([Float], [Bool])) rethrows -> [String: Float] {
        guard wienerContext != nil, let k = psf, parameters[WienerDeconvolution.lambdaParameter] == nil else { return parameters }
        let r = WienerDeconvolution.lambdaRegion(height: height, width: width)
        let (px, bad) = try window(r.rows, r.columns)
        var p = parameters
        p[WienerDeconvolution.lambdaParameter] = Float(WienerDeconvolution.imageLambda(window: px, invalid: bad, height: r.rows.count,
                                                                                       width: r.columns.count, psf: k, noiseVariance: noiseVariance,
                                                                                       threads: threads))
        return p
    }

    /// Frees the feature maps kept for the next image.
    public func releaseCaches() {
        runLock.lock(); defer { runLock.unlock() }
        caches = [PlanCache()]
    }

    public init(model: Model, fileChecksum: UInt32? = nil) throws {
        analysis = try GraphAnalysis(graph: model.graph, tensorShapes: model.tensors.mapValues { $0.shape })
        var meta = model.metadata
        for (k, v) in analysis.derivedMetadata where meta[k] == nil { meta[k] = v }
        try analysis.checkMetadata(meta)
        metadata = meta
        graph = model.graph
        name = model.name
        self.fileChecksum = fileChecksum
        weights = model.tensors.mapValues { $0.values }
        guard let n = Normalization.Kind(rawValue: meta["normalization"]?.stringValue ?? "none") else {
            throw RuntimeError.unsupportedModel("unknown normalization")
        }
        normalization = n
        let q = meta["normalization.noise_electrons"]?.doubleValue ?? 500.0.squareRoot()
        guard q > 0, q.isFinite else { throw RuntimeError.unsupportedModel("normalization.noise_electrons must be positive") }
        assumedNoiseElectrons = q
        if graph.inputs.count != 1 || graph.outputs.count != 1 {
            throw RuntimeError.unsupportedModel("image restoration needs exactly one input and one output, the graph has \(graph.inputs.count) and \(graph.outputs.count)")
        }
    }

    /// Loads and fully verifies an `.acnn` file.
    public convenience init(path: String) throws {
        let reader = try ModelReader(path: path)
        PhaseProfile.shared.mark("model: map, validate, file CRC")
        let model = try reader.model()
        PhaseProfile.shared.mark("model: tensor CRCs + decode")
        try self.init(model: model, fileChecksum: reader.fileChecksum)
        PhaseProfile.shared.mark("model: graph analysis")
    }

    public var inputChannels: Int { graph.inputs[0].channels }
    public var outputChannels: Int { analysis.channels[graph.outputs[0]]! }

    /// Feature-map bytes per input pixel of an execution plan (every map of the graph held at
    /// once, with row padding and margins), measured on a layout-only plan; used to size tiles.
    /// Feature-map bytes of an execution plan for a network input of this size: as planned
    /// (maps whose lives do not overlap share memory) and without sharing.
    public func featureMapBytes(height: Int, width: Int) throws -> (shared: Int, unshared: Int) {
        let plan = try ExecutionPlan(network: self, packed: nil, height: height, width: width, isa: .best, measureOnly: true)
        return (plan.bytes, plan.unsharedBytes)
    }

    /// Feature-map bytes per input pixel of an execution plan (measured once on a layout-only
    /// plan of a representative size; tile sizes are chosen from it).
    public var bytesPerInputPixel: Double {
        measuredBytesPerPixel.get {
            let m = analysis.geometry.sizeMultiple
            let shrink = (try? analysis.shrink()) ?? [0, 0]
            let side = (max(256, analysis.geometry.receptiveField.max()! * 2) + m - 1) / m * m
            guard let plan = try? ExecutionPlan(network: self, packed: nil, height: side + shrink[0], width: side + shrink[1],
                                                isa: .best, measureOnly: true) else { return 4096 }
            return Double(plan.bytes) / Double((side + shrink[0]) * (side + shrink[1]))
        }
    }

    private let measuredBytesPerPixel = OnceValue<Double>()

    /// Run-time scalars the graph reads (constant_channel parameters), with their defaults.
    public var runtimeParameters: [String: Float] {
        var p: [String: Float] = [:]
        for n in graph.nodes where n.op == .constantChannel {
            if let name = n.runtimeParameter { p[name] = n.constantValue }
        }
        // The Wiener step's lambda for the whole image (0: each tile chooses its own by GCV).
        if graph.nodes.contains(where: { $0.op == .wienerDeconvolution }) { p[WienerDeconvolution.lambdaParameter] = 0 }
        return p
    }

    /// Runs the whole graph on one input map. `bandRows`: input rows per band of a row-band
    /// run (`RowBands`; 0: whole maps; nil: the default, row bands on maps taller than two
    /// bands); `bytes`, if given, receives the plan's feature-map bytes.
    public func forward(_ input: FeatureMap, parameters: [String: Float] = [:], algorithm: ConvAlgorithm = .auto,
                        isa: KernelISA = .best, threads: Int = 1, bandRows: Int? = nil, bytes: UnsafeMutablePointer<Int>? = nil) throws -> FeatureMap {
        try checkInput(input, parameters)
        if algorithm == .reference { return referenceForward(input, parameters: parameters) }
        let plan = try ExecutionPlan(network: self, packed: packedWeights(), height: input.height, width: input.width, isa: isa,
                                     algorithm: algorithm, bandRows: bandRows)
        bytes?.pointee = plan.bytes
        return plan.run(input, parameters: parameters, threads: threads)
    }

    /// The repacked weights, made once (thread-safe).
    func packedWeights() -> PackedWeights {
        packLock.locked { packed }
    }

    /// Throws unless every name is a run-time parameter of the model.
    public func checkParameters(_ parameters: [String: Float]) throws {
        for k in parameters.keys.sorted() where runtimeParameters[k] == nil {
            let known = runtimeParameters.keys.sorted()
            throw RuntimeError.badParameter("the model has no run-time parameter '\(k)'" + (known.isEmpty ? " (it has none)" : " (it has: \(known.joined(separator: ", ")))"))
        }
    }

    func checkInput(_ input: FeatureMap, _ parameters: [String: Float]) throws {
        if input.channels != inputChannels {
            throw RuntimeError.unsupportedModel("the model takes \(inputChannels) input channel(s), got \(input.channels)")
        }
        try checkParameters(parameters)
        if wienerContext != nil && psf == nil {
            throw RuntimeError.badParameter("\(name) deconvolves with the image's PSF: give it (--psf SPEC, --psf FILE.fits or --psf auto)")
        }
        _ = try analysis.shapes(height: input.height, width: input.width)  // clear error for bad sizes
    }

    /// The scalar reference executor (the test oracle).
    func referenceForward(_ input: FeatureMap, parameters: [String: Float], psf psfOverride: PSFKernel? = nil) -> FeatureMap {
        // Free each value after its last use.
        var lastUse: [String: Int] = [:]
        for (step, i) in analysis.order.enumerated() {
            for v in graph.nodes[i].inputs { lastUse[v] = step }
        }
        var values: [String: FeatureMap] = [graph.inputs[0].name: input]
        for (step, i) in analysis.order.enumerated() {
            let n = graph.nodes[i]
            let x = values[n.inputs[0]]!
            let y: FeatureMap
            switch n.op {
            case .conv2d:
                let w = analysis.weightShape(n)
                y = Reference.conv2d(x, weight: weights[n.params[0]]!, bias: n.params.count > 1 ? weights[n.params[1]]! : nil,
                                     outChannels: w[0], kh: w[2], kw: w[3], padding: n.padding == .same ? .same : .valid)
            case .relu:
                y = Reference.relu(x)
            case .leakyRelu:
                y = Reference.leakyRelu(x, alpha: n.alpha)
            case .maxpool2d:
                y = Reference.maxpool2x2(x)
            case .convTranspose2d:
                let w = analysis.weightShape(n)
                y = Reference.convTranspose2x2(x, weight: weights[n.params[0]]!, bias: n.params.count > 1 ? weights[n.params[1]]! : nil,
                                               outChannels: w[0])
            case .concat:
                y = Reference.concat(n.inputs.map { values[$0]! })
            case .constantChannel:
                let v = n.runtimeParameter.flatMap { parameters[$0] } ?? n.constantValue
                y = Reference.constantChannel(height: x.height, width: x.width, value: v)
            case .wienerDeconvolution:
                let fixed = parameters[WienerDeconvolution.lambdaParameter].flatMap { $0 > 0 ? Double($0) : nil }
                y = FeatureMap(channels: 1, height: x.height, width: x.width,
                               data: WienerDeconvolution.apply(x.data, height: x.height, width: x.width, psf: psfOverride ?? psf!, lambda: fixed).image)
            }
            values[n.output] = y
            for v in n.inputs where lastUse[v] == step && !graph.outputs.contains(v) { values[v] = nil }
        }
        return values[graph.outputs[0]]!
    }
}

extension GraphAnalysis {
    /// Shape of a node's weight tensor (validated at load).
    func weightShape(_ n: Node) -> [Int] { tensorShapes[n.params[0]]! }
}

/// A value computed on first use, once, whichever thread asks first.
final class OnceValue<T>: @unchecked Sendable {
    private var stored: T?
    private let lock = NSLock()
    func get(_ make: () -> T) -> T {
        lock.lock(); defer { lock.unlock() }
        if let v = stored { return v }
        let v = make()
        stored = v
        return v
    }
}
