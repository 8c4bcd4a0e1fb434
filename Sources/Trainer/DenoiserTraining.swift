import Foundation
import Imaging
import ModelFormat
import Runtime

/// The Astro U-net recipe (Vojtekova et al. 2020): the paper's network at any widths, L1 loss,
/// Adam with a step decay, random crops of real long exposures with short exposures simulated on
/// the fly at one ratio or a list of ratios, validation on images held out by name.
public struct DenoiserConfig: Equatable, Sendable {
    public var recipe = "astro-unet"
    public var widths = [32, 64, 128, 256, 512]
    public var alpha = 0.02
    public var cropSize = 256
    public var batchSize = 1
    public var learningRate = 1e-5
    /// The learning rate is multiplied by `decayFactor` after `decayEpochs` epochs (the paper:
    /// 1e-5 to 1e-6 after 2000 of 5000 epochs); 0 = no decay.
    public var decayEpochs = 0
    public var decayFactor = 0.1
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var epsilon = 1e-7
    public var epochs = 5000
    /// Crops per epoch (the paper: 150-160, one per training image).
    public var trainSamples = 160
    public var validationSamples = 64
    public var ratios: [Double] = [2]
    public var seed: UInt64 = 1
    public var loss = Loss.l1
    public var initialization = Initialization.he
    public var clipNegative = false
    public var minimumSourceFraction = 0.002
    /// The input concatenated to the last level's features before the head (`Architectures.unet`'s
    /// `inputSkip`): residual learning with the format's own ops.
    public var inputSkip = false
    /// Bias-free (scale-equivariant) convolutions (Mohan et al. 2020): every convolution's bias
    /// is held at 0, so the graph is positively homogeneous but for the exposure-ratio channel
    /// (f(λx) = λ f(x) for λ > 0): a star 1000 times brighter than any in the training crops is
    /// processed as the same star at a thousandth of the noise, not extrapolated through biases.
    public var biasFree = false
    /// Tied upsampling: each 2x2 transposed convolution keeps its four taps equal (one weight per
    /// input and output channel), so it is a nearest-neighbour upsampling followed by a 1x1
    /// convolution: resize-convolution (Odena, Dumoulin & Olah 2016), whose upsampled maps have
    /// no power at period 2, where free 2x2 taps leave checkerboards and stripes. The format is
    /// unchanged (the same `conv_transpose2d`, its taps equal).
    public var tiedUpsampling = false
    /// `CropSampler.brightnessBoost` (1 = off).
    public var brightnessBoost = 1.0
    /// `CropSampler.recorruption` (0 = off), for the training and the validation crops.
    public var recorruption = 0.0
    /// `LowPassLoss` added to the training loss with this weight (0 = off) and Gaussian sigma
    /// (px); the validation loss stays the per-pixel loss.
    public var lowPassLossWeight = 0.0
    public var lowPassLossSigma = 1.5
    /// Deconvolution instead of denoising: the degradation (PSF and noise, in the units of the
    /// max-normalised truth) the crops are made with; nil for the Astro U-net denoiser.
    public var degradation: Degradation?
    /// The units the loss is computed in: `network` (the sky_mad units the network works in) or
    /// `peak` (the max-normalised truth's, as the PSNR of Flamary's protocol is: each sample's
    /// loss weighted by (its image's sky sigma / the training images' RMS sky sigma)^2, so a
    /// deep image's bright stars do not outweigh a nebula). Deconvolution only.
    public var lossUnits = LossUnits.network
    /// The input normalisation the model declares and the crops are made in: `sky_mad` for the
    /// denoiser, `noise_mad` for deconvolution (a nebula filling the frame is not noise).
    public var normalization = Normalization.Kind.skyMAD
    /// `deconv-psf`: the PSFs and noise levels the crops are drawn from (one model for all of
    /// them, the PSF given at run time to the model's Wiener step); nil otherwise.
    public var psfFamily: PSFFamily?
    /// `deconv-psf`: the context (pixels each side) of the model's Wiener step.
    public var wienerContext = 32

    /// `wiener`: each crop's squared error relative to its Wiener input's (`deconv-psf`).
    public enum LossUnits: String, Sendable { case network, peak, wiener }

    public init() {}

    /// The `deconv-unet` recipe: the U-net (no ratio channel, input skip) trained on crops
    /// blurred by `degradation`'s PSF plus its noise, MSE loss.
    public static func deconvolution(_ degradation: Degradation) -> DenoiserConfig {
        var c = deconvolutionBase(recipe: "deconv-unet", lossUnits: .peak)
        c.degradation = degradation
        return c
    }

    /// What the deconvolution recipes share: the U-net without a ratio channel, with the input
    /// skip, MSE, noise_mad units.
    static func deconvolutionBase(recipe: String, lossUnits: LossUnits) -> DenoiserConfig {
        var c = DenoiserConfig()
        c.recipe = recipe
        c.loss = .mse
        c.inputSkip = true
        c.ratios = [1]
        c.lossUnits = lossUnits
        c.normalization = .noiseMAD
        return c
    }

    /// The `deconv-psf` recipe (issue 24): a Wiener step with the run-time PSF, then the U-net
    /// (no ratio channel, input skip of the Wiener output), trained over `family`, MSE relative to
    /// each crop's Wiener error.
    public static func psfAware(_ family: PSFFamily, context: Int = 32) -> DenoiserConfig {
        var c = deconvolutionBase(recipe: "deconv-psf", lossUnits: .wiener)
        c.psfFamily = family
        c.wienerContext = context
        return c
    }

    public var isDeconvolution: Bool { degradation != nil || psfFamily != nil }

    public func initialModel() throws -> Model {
        guard widths.count >= 2, widths.allSatisfy({ $0 > 0 }) else { throw TrainingError.model("--widths needs at least two positive widths") }
        let m = 1 << (widths.count - 1)
        guard cropSize % m == 0 else { throw TrainingError.model("crops of \(cropSize) px are not a multiple of \(m), the size multiple of \(widths.count) levels") }
        let prefix = psfFamily != nil ? "deconv-psf-" : isDeconvolution ? "deconv-unet-" : "astro-unet-"
        var model = try Architectures.unet(name: prefix + widths.map(String.init).joined(separator: "-") + (inputSkip ? "-skip" : "") + (biasFree ? "-bf" : ""),
                                           widths: widths, alpha: alpha, exposureRatio: ratios[0], normalization: normalization.rawValue,
                                           inputSkip: inputSkip, ratioChannel: !isDeconvolution,
                                           wienerContext: psfFamily != nil ? wienerContext : nil, initializer: initialization.initializer(seed: seed))
        if let f = psfFamily {
            // The head starts as the identity on the Wiener estimate (its weight on the skip, the
            // last input channel, 1; on the features 0; bias 0): training starts from the Wiener
            // step's quality on every crop and learns corrections from there (a residual block
            // with a zero-initialised last layer), instead of first learning to pass bright
            // sources through a random head.
            if inputSkip, var head = model.tensors["head.weight"] {
                head.values = [Float](repeating: 0, count: head.values.count)
                head.values[head.values.count - 1] = 1
                model.tensors["head.weight"] = head
                if var b = model.tensors["head.bias"] { b.values = [Float](repeating: 0, count: b.values.count); model.tensors["head.bias"] = b }
            }
            model.metadata["deconvolution.psf_family"] = .string(f.description)
            model.metadata["deconvolution.psf_fwhm"] = .floats([f.fwhm.lowerBound, f.fwhm.upperBound])
            model.metadata["deconvolution.noise"] = .floats([f.noise.lowerBound, f.noise.upperBound])
            model.metadata["description"] = .string("Deconvolution with the image's own PSF (given at run time: --psf SPEC|FILE|auto): a Wiener step (lambda by GCV) then a U-net correcting it, trained over \(f.kinds.map(\.rawValue).joined(separator: ", ")) PSFs of FWHM \(f.fwhm.lowerBound)-\(f.fwhm.upperBound) px at Gaussian noise \(f.noise.lowerBound)-\(f.noise.upperBound) of the peak")
        }
        if biasFree {
            for n in ParameterLayout.biasNames(model) { model.tensors[n]!.values = [Float](repeating: 0, count: model.tensors[n]!.values.count) }
        }
        if tiedUpsampling {
            for n in DenoiserConfig.upsamplingWeights(model) { DenoiserConfig.tieTaps(&model.tensors[n]!.values[...]) }
        }
        return model
    }

    /// The weights of the model's 2x2 transposed convolutions (four taps per channel pair, last).
    static func upsamplingWeights(_ model: Model) -> [String] {
        model.graph.nodes.filter { $0.op == .convTranspose2d }.map { $0.params[0] }
    }

    /// Each group of four consecutive values (one channel pair's 2x2 taps) set to its mean.
    static func tieTaps(_ v: inout ArraySlice<Float>) {
        precondition(v.count % 4 == 0)
        var i = v.startIndex
        while i < v.endIndex {
            let m = (v[i] + v[i + 1] + v[i + 2] + v[i + 3]) / 4
            v[i] = m; v[i + 1] = m; v[i + 2] = m; v[i + 3] = m
            i += 4
        }
    }


    var metadata: [String: MetaValue] {
        var m: [String: MetaValue] = [
            "training.recipe": .string(recipe), "training.widths": .ints(widths.map(Int64.init)), "training.alpha": .float(alpha),
            "training.crop": .int(Int64(cropSize)), "training.batch": .int(Int64(batchSize)),
            "training.learning_rate": .float(learningRate), "training.decay_epochs": .int(Int64(decayEpochs)),
            "training.decay_factor": .float(decayFactor), "training.beta1": .float(beta1), "training.beta2": .float(beta2),
            "training.epsilon": .float(epsilon), "training.max_epochs": .int(Int64(epochs)),
            "training.samples": .int(Int64(trainSamples)), "training.validation_samples": .int(Int64(validationSamples)),
            "training.ratios": .floats(ratios), "training.seed": .int(Int64(bitPattern: seed)),
            "training.loss": .string(loss.rawValue), "training.init": .string(initialization.rawValue),
            "training.clip_negative": .bool(clipNegative), "training.min_source_fraction": .float(minimumSourceFraction),
            "training.optimizer": .string("adam"), "training.input_skip": .bool(inputSkip),
            "training.bias_free": .bool(biasFree), "training.brightness_boost": .float(brightnessBoost),
        ]
        if tiedUpsampling { m["training.tied_upsampling"] = .bool(true) }
        if recorruption > 0 { m["training.recorruption"] = .float(recorruption) }
        if lowPassLossWeight > 0 {
            m["training.low_pass_loss_weight"] = .float(lowPassLossWeight)
            m["training.low_pass_loss_sigma"] = .float(lowPassLossSigma)
        }
        if let f = psfFamily {
            m["training.task"] = .string("deconvolve")
            m["training.psf_family"] = .string(f.description)
            m["training.wiener_context"] = .int(Int64(wienerContext))
            m["training.loss_units"] = .string(lossUnits.rawValue)
        } else if let d = degradation {
            m["training.task"] = .string("deconvolve")
            m["training.psf"] = .string(d.psfSpec.exactDescription)
            m["training.noise"] = .string(d.noise.description)
            m["training.loss_units"] = .string(lossUnits.rawValue)
        } else {
            m["training.task"] = .string("denoise")
        }
        return m
    }

    init(metadata m: [String: MetaValue]) throws {
        func get<T>(_ k: String, _ f: (MetaValue) -> T?) throws -> T {
            guard let v = m[k], let t = f(v) else { throw TrainingError.checkpoint("missing or bad \(k)") }
            return t
        }
        func bool(_ v: MetaValue) -> Bool? { if case .bool(let b) = v { return b }; return nil }
        recipe = try get("training.recipe") { $0.stringValue }
        widths = try get("training.widths") { if case .ints(let a) = $0 { return a.map { Int($0) } }; return nil }
        alpha = try get("training.alpha") { $0.doubleValue }
        cropSize = Int(try get("training.crop") { $0.intValue })
        batchSize = Int(try get("training.batch") { $0.intValue })
        learningRate = try get("training.learning_rate") { $0.doubleValue }
        decayEpochs = Int(try get("training.decay_epochs") { $0.intValue })
        decayFactor = try get("training.decay_factor") { $0.doubleValue }
        beta1 = try get("training.beta1") { $0.doubleValue }
        beta2 = try get("training.beta2") { $0.doubleValue }
        epsilon = try get("training.epsilon") { $0.doubleValue }
        epochs = Int(try get("training.max_epochs") { $0.intValue })
        trainSamples = Int(try get("training.samples") { $0.intValue })
        validationSamples = Int(try get("training.validation_samples") { $0.intValue })
        ratios = try get("training.ratios") { if case .floats(let a) = $0 { return a }; return nil }
        seed = UInt64(bitPattern: try get("training.seed") { $0.intValue })
        loss = try get("training.loss") { $0.stringValue.flatMap(Loss.init(rawValue:)) }
        initialization = try get("training.init") { $0.stringValue.flatMap(Initialization.init(rawValue:)) }
        clipNegative = try get("training.clip_negative", bool)
        minimumSourceFraction = try get("training.min_source_fraction") { $0.doubleValue }
        inputSkip = m["training.input_skip"].flatMap(bool) ?? false
        biasFree = m["training.bias_free"].flatMap(bool) ?? false
        tiedUpsampling = m["training.tied_upsampling"].flatMap(bool) ?? false
        brightnessBoost = m["training.brightness_boost"]?.doubleValue ?? 1
        recorruption = m["training.recorruption"]?.doubleValue ?? 0
        lowPassLossWeight = m["training.low_pass_loss_weight"]?.doubleValue ?? 0
        lowPassLossSigma = m["training.low_pass_loss_sigma"]?.doubleValue ?? 1.5
        if let f = m["training.psf_family"]?.stringValue {
            psfFamily = try PSFFamily(parsing: f)
            wienerContext = Int(try get("training.wiener_context") { $0.intValue })
        } else if m["training.task"]?.stringValue == "deconvolve" {
            degradation = try TrainingConfig.degradation(metadata: m)
        }
        guard let nk = Normalization.Kind(rawValue: m["normalization"]?.stringValue ?? "sky_mad") else { throw TrainingError.checkpoint("bad normalization") }
        normalization = nk
        lossUnits = try m["training.loss_units"].map { v in
            guard let u = v.stringValue.flatMap(LossUnits.init(rawValue:)) else { throw TrainingError.checkpoint("bad training.loss_units") }
            return u
        } ?? .network
    }
}

/// A denoiser training run on the fast graph trainer, resumable to the same bits: the crops of
/// epoch e are a pure function of (seed, e), so the state is the parameters, Adam's moments and
/// the position (epoch, batch) with the epoch's running loss.
public final class DenoiserSession: ResumableTraining {
    public private(set) var config: DenoiserConfig
    public let train: CropSource
    public let validation: CropSource
    public let trainer: GraphTrainer
    public private(set) var model: Model
    public private(set) var parameters: [Float]
    public private(set) var optimizer: Optimizer
    public private(set) var epoch = 0
    public private(set) var batch = 0
    private var epochLossSum = 0.0
    private var epochSeconds = 0.0
    public private(set) var history: [EpochRecord] = []
    public private(set) var bestParameters: [Float]
    public private(set) var bestValidation = Double.infinity
    public private(set) var bestEpoch = -1
    public var threads: Int
    /// Seconds of wall time per part of the training steps run by this session (crop drawing and
    /// degradation, forward + backward, the optimizer, repacking the weights), for `--profile`.
    public private(set) var stepSeconds = (data: 0.0, gradient: 0.0, optimizer: 0.0, repack: 0.0)
    /// Parameters held at their value (the biases of a bias-free recipe): their gradient is
    /// zeroed before each step, so Adam never moves them.
    let frozenRanges: [Range<Int>]
    /// The transposed convolutions' weights when their taps are tied (`tiedUpsampling`): their
    /// gradient is replaced by its mean over each channel pair's four taps before each step, so
    /// equal taps stay equal (Adam's update is element-wise).
    let tiedRanges: [Range<Int>]

    public var batchesPerEpoch: Int { (config.trainSamples + config.batchSize - 1) / config.batchSize }
    public var finished: Bool { epoch >= config.epochs }

    public convenience init(config: DenoiserConfig, training: [LongExposure], validation: [LongExposure], threads: Int) throws {
        guard config.degradation == nil else { throw TrainingError.model("a deconvolution recipe trains on images, not long exposures") }
        guard !training.isEmpty else { throw TrainingError.data("no training images") }
        guard !validation.isEmpty else { throw TrainingError.data("no validation images: hold one or more out by name (--validate NAME)") }
        let trainNames = Set(training.map(\.image.name))
        if let clash = validation.first(where: { trainNames.contains($0.image.name) }) {
            throw TrainingError.data("\(clash.image.name) is both a training and a validation image")
        }
        let train = try CropSampler(images: training, ratios: config.ratios, cropSize: config.cropSize,
                                    minimumSourceFraction: config.minimumSourceFraction, clipNegative: config.clipNegative,
                                    normalization: config.normalization, brightnessBoost: config.brightnessBoost,
                                    recorruption: config.recorruption, seed: config.seed)
        let val = try CropSampler(images: validation, ratios: config.ratios, cropSize: config.cropSize,
                                  minimumSourceFraction: config.minimumSourceFraction, clipNegative: config.clipNegative,
                                  normalization: config.normalization, recorruption: config.recorruption, seed: config.seed ^ 0x7A11D)
        try self.init(config: config, train: train, validation: val, threads: threads)
    }

    /// A deconvolution U-net (`config.degradation` set) on real images, validated on held-out ones.
    public convenience init(config: DenoiserConfig, trainingImages: [SourceImage], validationImages: [SourceImage], threads: Int) throws {
        guard config.isDeconvolution else { throw TrainingError.model("a denoising recipe trains on long exposures") }
        guard !validationImages.isEmpty else { throw TrainingError.data("no validation images: hold one or more out by name (--validate NAME)") }
        let trainNames = Set(trainingImages.map(\.name))
        if let clash = validationImages.first(where: { trainNames.contains($0.name) }) {
            throw TrainingError.data("\(clash.name) is both a training and a validation image")
        }
        if let f = config.psfFamily {
            let train = try PSFFamilyCropSampler(images: trainingImages, family: f, context: config.wienerContext, cropSize: config.cropSize,
                                                 validation: false, threads: threads)
            let val = try PSFFamilyCropSampler(images: validationImages, family: f, context: config.wienerContext, cropSize: config.cropSize,
                                               validation: true, threads: threads)
            try self.init(config: config, train: train, validation: val, threads: threads)
            return
        }
        let d = config.degradation!
        let train = try DeconvolutionCropSampler(images: trainingImages, degradation: d, cropSize: config.cropSize, validation: false,
                                                 normalization: config.normalization, seed: config.seed, threads: threads)
        let val = try DeconvolutionCropSampler(images: validationImages, degradation: d, cropSize: config.cropSize, validation: true,
                                               normalization: config.normalization, seed: config.seed ^ 0x7A11D, threads: threads)
        try self.init(config: config, train: train, validation: val, threads: threads)
    }

    public init(config: DenoiserConfig, train: CropSource, validation: CropSource, threads: Int) throws {
        guard train.cropSize == config.cropSize, validation.cropSize == config.cropSize else { throw TrainingError.data("crop sizes differ from the recipe's") }
        self.config = config
        self.threads = threads
        model = try config.initialModel()
        self.train = train
        self.validation = validation
        trainer = try GraphTrainer(model: model, inputHeight: config.cropSize, inputWidth: config.cropSize)
        if config.lowPassLossWeight > 0 {
            trainer.lowPassLoss = try LowPassLoss(weight: Float(config.lowPassLossWeight), sigma: config.lowPassLossSigma)
        }
        parameters = trainer.layout.flatten(model)
        let layout = trainer.layout
        frozenRanges = config.biasFree ? ParameterLayout.biasNames(model).map { layout.range($0) } : []
        tiedRanges = config.tiedUpsampling ? DenoiserConfig.upsamplingWeights(model).map { layout.range($0) } : []
        bestParameters = parameters
        optimizer = Optimizer(.adam(beta1: config.beta1, beta2: config.beta2, epsilon: config.epsilon),
                              learningRate: config.learningRate, parameterCount: parameters.count)
    }

    /// Resumes a denoiser from a checkpoint written by `checkpoint()`; the images must be the same.
    public convenience init(checkpoint: Model, training: [LongExposure], validation: [LongExposure], threads: Int) throws {
        try self.init(config: try DenoiserConfig(metadata: checkpoint.metadata), training: training, validation: validation, threads: threads)
        try restore(checkpoint)
    }

    /// Resumes a deconvolution U-net from its checkpoint; the images must be the same.
    public convenience init(checkpoint: Model, trainingImages: [SourceImage], validationImages: [SourceImage], threads: Int) throws {
        try self.init(config: try DenoiserConfig(metadata: checkpoint.metadata), trainingImages: trainingImages,
                      validationImages: validationImages, threads: threads)
        try restore(checkpoint)
    }

    private func restore(_ checkpoint: Model) throws {
        let m = checkpoint.metadata
        guard m["training.images"]?.stringValue == train.imageList,
              m["training.validation_images"]?.stringValue == validation.imageList else {
            throw TrainingError.checkpoint("the images differ from the checkpoint's (\(m["training.images"]?.stringValue ?? "?"))")
        }
        let layout = trainer.layout
        guard ParameterLayout(model: checkpoint) == layout else { throw TrainingError.checkpoint("parameters do not match the recipe") }
        func tensors(_ prefix: String) throws -> [Float] {
            try layout.names.flatMap { n -> [Float] in
                guard let t = checkpoint.tensors[prefix + n] else { throw TrainingError.checkpoint("missing tensor \(prefix + n)") }
                return t.values
            }
        }
        func int(_ k: String) throws -> Int {
            guard let v = m[k]?.intValue else { throw TrainingError.checkpoint("missing \(k)") }
            return Int(v)
        }
        func floats(_ k: String) throws -> [Double] {
            guard case .floats(let v)? = m[k] else { throw TrainingError.checkpoint("missing \(k)") }
            return v
        }
        parameters = try tensors("")
        bestParameters = try tensors("best.")
        optimizer.first = try tensors("optimizer.first.")
        optimizer.second = try tensors("optimizer.second.")
        optimizer.step = try int("checkpoint.optimizer_step")
        optimizer.learningRate = m["checkpoint.learning_rate"]?.doubleValue ?? config.learningRate
        initialisedFrom = m["training.initialised_from"]?.stringValue
        if case .floats(let steps)? = m["training.learning_rate_steps"], steps.count % 2 == 0 {
            rateSteps = stride(from: 0, to: steps.count, by: 2).map { (Int(steps[$0]), steps[$0 + 1]) }
        }
        epoch = try int("checkpoint.epoch")
        batch = try int("checkpoint.batch")
        epochLossSum = m["checkpoint.epoch_loss_sum"]?.doubleValue ?? 0
        epochSeconds = m["checkpoint.epoch_seconds"]?.doubleValue ?? 0
        bestValidation = m["checkpoint.best_validation"]?.doubleValue ?? .infinity
        bestEpoch = try int("checkpoint.best_epoch")
        let (tl, vl, sec) = (try floats("checkpoint.train_losses"), try floats("checkpoint.validation_losses"), try floats("checkpoint.seconds"))
        guard tl.count == vl.count, vl.count == sec.count else { throw TrainingError.checkpoint("inconsistent history") }
        history = (0..<tl.count).map { EpochRecord(epoch: $0 + 1, trainLoss: tl[$0], validationLoss: vl[$0], seconds: sec[$0]) }
    }

    /// Starts from another model's weights (transfer learning: e.g. the shipped deconvolution
    /// model fine-tuned for another PSF) instead of the random initialisation. Its parameters
    /// must have the recipe's names and shapes; only before the first step.
    public func initialise(from source: Model, label: String) throws {
        guard epoch == 0, batch == 0, history.isEmpty else { throw TrainingError.model("weights can only be loaded before training starts") }
        let layout = trainer.layout
        guard ParameterLayout(model: source) == layout else {
            throw TrainingError.model("\(label): its parameters do not match the recipe's (\(model.name): widths \(config.widths.map(String.init).joined(separator: ",")))")
        }
        parameters = layout.flatten(source)
        for r in frozenRanges { for i in r { parameters[i] = 0 } }   // a bias-free run starts from the weights alone
        for r in tiedRanges { DenoiserConfig.tieTaps(&parameters[r]) }   // tied upsampling starts from each pair's mean tap
        bestParameters = parameters
        try trainer.setParameters(parameters)
        initialisedFrom = label
    }

    /// What `initialise(from:)` loaded, recorded in the metadata.
    public private(set) var initialisedFrom: String?

    /// A larger epoch budget for a resumed run.
    public func extend(epochs: Int) { config.epochs = max(config.epochs, epochs) }

    /// A resumed run continues at `rate` from its current epoch on (a manual decay step; the
    /// step decay of `decayEpochs` still applies on top). Recorded as `training.learning_rate_steps`.
    public func continueWith(learningRate rate: Double) throws {
        guard rate > 0, rate.isFinite else { throw TrainingError.model("the learning rate must be positive") }
        rateSteps.append((epoch, rate))
    }

    /// (first epoch, learning rate) of each manual step, in order.
    public private(set) var rateSteps: [(epoch: Int, rate: Double)] = []

    /// The learning rate of epoch `e` (0-based): the step decay of the paper.
    func learningRate(epoch e: Int) -> Double {
        let base = rateSteps.last(where: { $0.epoch <= e })?.rate ?? config.learningRate
        return config.decayEpochs > 0 && e >= config.decayEpochs ? base * config.decayFactor : base
    }

    /// Per-sample loss weights for `peak` loss units (relative to the training images' RMS sky
    /// sigma, for training and validation alike), else nil.
    func lossWeights(_ sampler: CropSource, _ specs: ArraySlice<CropSpec>) -> [Float]? {
        guard config.lossUnits == .peak || config.lossUnits == .wiener, let ref = train.referenceLossScale, ref > 0, let s = sampler.lossScales(specs) else { return nil }
        return s.map { v in
            let r = v / ref
            return Float(config.loss == .mse ? r * r : r)
        }
    }

    func batchData(_ sampler: CropSource, _ specs: ArraySlice<CropSpec>, _ inputs: inout [Float], _ targets: inout [Float]) -> [String: [Float]] {
        let n = specs.count * config.cropSize * config.cropSize
        if inputs.count != n { inputs = [Float](repeating: 0, count: n); targets = inputs }
        inputs.withUnsafeMutableBufferPointer { ib in
            targets.withUnsafeMutableBufferPointer { tb in
                sampler.fill(specs, inputs: ib.baseAddress!, targets: tb.baseAddress!)
            }
        }
        guard let p = sampler.sampleParameter else { return [:] }
        return [p: specs.map { Float($0.ratio) }]
    }

    public func run(progress: (TrainingProgress) -> Void, interrupt: () -> Bool, checkpoint: (Model) throws -> Void) throws {
        let bs = config.batchSize
        var inputs: [Float] = [], targets: [Float] = []
        try trainer.setParameters(parameters, threads: threads)
        while !finished {
            optimizer.learningRate = learningRate(epoch: epoch)
            let plan = train.plan(count: config.trainSamples, seed: config.seed, stream: UInt64(epoch + 1))
            var t0 = Runtime.monotonicSeconds()
            var doneSinceStart = 0
            while batch < batchesPerEpoch {
                let lo = batch * bs, hi = min(config.trainSamples, lo + bs)
                let s0 = Runtime.monotonicSeconds()
                let ratios = batchData(train, plan[lo..<hi], &inputs, &targets)
                let weights = lossWeights(train, plan[lo..<hi])
                let s1 = Runtime.monotonicSeconds()
                var (l, g) = try trainer.lossAndGradient(inputs: inputs, targets: targets, count: hi - lo, loss: config.loss, threads: threads,
                                                         sampleParameters: ratios, sampleWeights: weights)
                let s2 = Runtime.monotonicSeconds()
                for r in frozenRanges { for i in r { g[i] = 0 } }
                for r in tiedRanges { DenoiserConfig.tieTaps(&g[r]) }
                optimizer.update(&parameters, g, threads: threads)
                let s3 = Runtime.monotonicSeconds()
                try trainer.setParameters(parameters, threads: threads)
                let s4 = Runtime.monotonicSeconds()
                stepSeconds.data += s1 - s0
                stepSeconds.gradient += s2 - s1
                stepSeconds.optimizer += s3 - s2
                stepSeconds.repack += s4 - s3
                epochLossSum += l * Double(hi - lo)
                batch += 1
                doneSinceStart += hi - lo
                let now = Runtime.monotonicSeconds()
                let rate = Double(doneSinceStart) / max(1e-9, now - t0)
                let remaining = Double((batchesPerEpoch - batch) * bs + config.validationSamples / 3) / rate
                progress(TrainingProgress(epoch: epoch + 1, epochs: config.epochs, batch: batch, batches: batchesPerEpoch,
                                          samplesPerSecond: rate, trainLoss: epochLossSum / Double(hi),
                                          lastValidationLoss: history.last?.validationLoss, etaSeconds: remaining, validating: false))
                if interrupt() {
                    epochSeconds += now - t0
                    try checkpoint(self.checkpoint())
                    return
                }
            }
            progress(TrainingProgress(epoch: epoch + 1, epochs: config.epochs, batch: batch, batches: batchesPerEpoch,
                                      samplesPerSecond: 0, trainLoss: epochLossSum / Double(config.trainSamples),
                                      lastValidationLoss: history.last?.validationLoss, etaSeconds: 0, validating: true))
            let v = try validationLoss()
            let now = Runtime.monotonicSeconds()
            epochSeconds += now - t0
            t0 = now
            history.append(EpochRecord(epoch: epoch + 1, trainLoss: epochLossSum / Double(config.trainSamples), validationLoss: v, seconds: epochSeconds))
            if v < bestValidation { bestValidation = v; bestParameters = parameters; bestEpoch = epoch + 1 }
            epoch += 1
            batch = 0
            epochLossSum = 0
            epochSeconds = 0
            try checkpoint(self.checkpoint())
        }
    }

    /// Mean loss on the held-out images' crops (fixed for the run).
    public func validationLoss() throws -> Double {
        let plan = validation.plan(count: config.validationSamples, seed: config.seed, stream: 0)
        var inputs: [Float] = [], targets: [Float] = []
        var sum = 0.0
        let chunk = max(1, min(8, config.validationSamples))
        var lo = 0
        while lo < plan.count {
            let hi = min(plan.count, lo + chunk)
            let ratios = batchData(validation, plan[lo..<hi], &inputs, &targets)
            let y = try trainer.predict(inputs: inputs, count: hi - lo, sampleParams: ratios, threads: threads)
            let w = lossWeights(validation, plan[lo..<hi])
            let per = y.count / (hi - lo)
            for i in 0..<y.count {
                let d = Double(y[i] - targets[i])
                sum += (config.loss == .mse ? d * d : abs(d)) * Double(w?[i / per] ?? 1)
            }
            lo = hi
        }
        return sum / Double(max(1, plan.count * config.cropSize * config.cropSize))
    }

    func provenance(_ m: inout Model) {
        for (k, v) in config.metadata { m.metadata[k] = v }
        m.metadata["normalization"] = .string(config.normalization.rawValue)
        if let q = train.assumedNoiseElectrons { m.metadata["normalization.noise_electrons"] = .float(q) }
        if let f = initialisedFrom { m.metadata["training.initialised_from"] = .string(f) }
        if !rateSteps.isEmpty { m.metadata["training.learning_rate_steps"] = .floats(rateSteps.flatMap { [Double($0.epoch), $0.rate] }) }
        m.metadata["training.images"] = .string(train.imageList)
        m.metadata["training.validation_images"] = .string(validation.imageList)
        if config.isDeconvolution {
            m.metadata["training.task"] = .string("deconvolve")
        } else {
            m.metadata["training.noise_model"] = .string("short = Poisson((I+sky)*gain/r) + N(0,RON) electrons, scaled to the long exposure (Vojtekova et al. 2020 eq. 4)")
        }
    }

    public func checkpoint() -> Model {
        var m = trainer.layout.apply(parameters, to: model)
        let layout = trainer.layout
        func add(_ prefix: String, _ values: [Float]) {
            for n in layout.names { m.tensors[prefix + n] = TensorData(shape: model.tensors[n]!.shape, values: Array(values[layout.range(n)])) }
        }
        add("best.", bestParameters)
        add("optimizer.first.", optimizer.first)
        add("optimizer.second.", optimizer.second)
        provenance(&m)
        m.metadata["checkpoint.epoch"] = .int(Int64(epoch))
        m.metadata["checkpoint.batch"] = .int(Int64(batch))
        m.metadata["checkpoint.epoch_loss_sum"] = .float(epochLossSum)
        m.metadata["checkpoint.epoch_seconds"] = .float(epochSeconds)
        m.metadata["checkpoint.optimizer_step"] = .int(Int64(optimizer.step))
        m.metadata["checkpoint.learning_rate"] = .float(optimizer.learningRate)
        if bestValidation.isFinite { m.metadata["checkpoint.best_validation"] = .float(bestValidation) }
        m.metadata["checkpoint.best_epoch"] = .int(Int64(bestEpoch))
        m.metadata["checkpoint.train_losses"] = .floats(history.map(\.trainLoss))
        m.metadata["checkpoint.validation_losses"] = .floats(history.map(\.validationLoss))
        m.metadata["checkpoint.seconds"] = .floats(history.map(\.seconds))
        return m
    }

    /// The model of the best validation epoch with its provenance.
    public func finalModel() -> Model { finalModel(latest: false) }

    /// The model of the best validation epoch (`latest`: of the latest epoch) with its provenance.
    public func finalModel(latest: Bool) -> Model {
        let last = latest || bestEpoch == 0
        var m = trainer.layout.apply(last ? parameters : bestParameters, to: model)
        provenance(&m)
        m.metadata["training.epochs_run"] = .int(Int64(history.count))
        m.metadata["training.best_epoch"] = .int(Int64(bestEpoch))
        if latest { m.metadata["training.written_epoch"] = .int(Int64(history.count)) }
        if let h = (latest ? nil : history.first(where: { $0.epoch == bestEpoch })) ?? history.last {
            m.metadata["training.train_loss"] = .float(h.trainLoss)
            m.metadata["training.validation_loss"] = .float(h.validationLoss)
        }
        m.metadata["training.seconds"] = .float(history.reduce(0) { $0 + $1.seconds })
        m.metadata["training.trainer"] = .string("astrocnn \(AstroCNN.version)")
        return m
    }
}
