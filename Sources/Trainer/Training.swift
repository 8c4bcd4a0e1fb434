import Imaging
import Foundation
import Kernels
import ModelFormat
import Runtime

/// Everything that defines a training run. Defaults are Flamary 2017's (batch 50, SGD lr 0.01
/// momentum 0.9 Nesterov, at most 30 epochs of 100,000 samples, 50,000 validation samples, stop
/// when the validation loss stops falling), plus augmentation (see `PatchSampler`).
public struct TrainingConfig: Equatable, Sendable {
    public var recipe = "flamary3"
    public var batchSize = 50
    public var learningRate = 0.01
    public var optimizer = "sgd"          // sgd | adam
    public var momentum = 0.9
    public var nesterov = true
    public var epochs = 30
    public var trainSamples = 100_000
    public var validationSamples = 50_000
    /// Epochs without improvement of the validation loss before stopping (0: stop at the first rise).
    public var patience = 0
    public var seed: UInt64 = 1
    public var loss = Loss.mse
    public var initialization = Initialization.glorot
    public var augment = true
    public var validationFraction = 0.2
    public var inputSize = 32
    public var degradation = Degradation()

    public init(recipe: String = "flamary3") { self.recipe = recipe }

    public static let recipes = ["flamary3", "flamary1"]

    /// The untrained network of the recipe.
    public func initialModel() throws -> Model {
        let initializer = initialization.initializer(seed: seed)
        switch recipe {
        case "flamary3": return try Architectures.flamary3(name: "flamary3", initializer: initializer)
        case "flamary1": return try Architectures.flamary1(name: "flamary1", initializer: initializer)
        default: throw TrainingError.model("unknown recipe '\(recipe)' (\(TrainingConfig.recipes.joined(separator: ", ")))")
        }
    }

    func makeOptimizer(_ n: Int) throws -> Optimizer {
        switch optimizer {
        case "sgd": return Optimizer(.sgd(momentum: momentum, nesterov: nesterov), learningRate: learningRate, parameterCount: n)
        case "adam": return Optimizer(.adam(beta1: 0.9, beta2: 0.999, epsilon: 1e-7), learningRate: learningRate, parameterCount: n)
        default: throw TrainingError.model("unknown optimizer '\(optimizer)' (sgd, adam)")
        }
    }

    /// Key/values stored in checkpoints and final models.
    var metadata: [String: MetaValue] {
        var m: [String: MetaValue] = [
            "training.recipe": .string(recipe), "training.batch": .int(Int64(batchSize)),
            "training.learning_rate": .float(learningRate), "training.optimizer": .string(optimizer),
            "training.momentum": .float(momentum), "training.nesterov": .bool(nesterov),
            "training.max_epochs": .int(Int64(epochs)), "training.samples": .int(Int64(trainSamples)),
            "training.validation_samples": .int(Int64(validationSamples)), "training.patience": .int(Int64(patience)),
            "training.seed": .int(Int64(bitPattern: seed)), "training.loss": .string(loss.rawValue),
            "training.init": .string(initialization.rawValue), "training.augment": .bool(augment),
            "training.validation_fraction": .float(validationFraction), "training.input_size": .int(Int64(inputSize)),
            "training.psf": .string(degradation.psfSpec.exactDescription),
            "training.noise": .string(degradation.noise.description),
        ]
        // The keys of the paper's degradation, as before, for older readers.
        if case .airy(let n, let rings) = degradation.psfSpec {
            m["training.psf_size"] = .int(Int64(n))
            m["training.psf_rings"] = .float(rings)
        }
        if let sigma = degradation.paperSigma { m["training.noise_sigma"] = .float(sigma) }
        return m
    }

    init(metadata m: [String: MetaValue]) throws {
        func get<T>(_ k: String, _ f: (MetaValue) -> T?) throws -> T {
            guard let v = m[k], let t = f(v) else { throw TrainingError.checkpoint("missing or bad \(k)") }
            return t
        }
        recipe = try get("training.recipe") { $0.stringValue }
        batchSize = Int(try get("training.batch") { $0.intValue })
        learningRate = try get("training.learning_rate") { $0.doubleValue }
        optimizer = try get("training.optimizer") { $0.stringValue }
        momentum = try get("training.momentum") { $0.doubleValue }
        nesterov = try get("training.nesterov") { if case .bool(let b) = $0 { return b }; return nil }
        epochs = Int(try get("training.max_epochs") { $0.intValue })
        trainSamples = Int(try get("training.samples") { $0.intValue })
        validationSamples = Int(try get("training.validation_samples") { $0.intValue })
        patience = Int(try get("training.patience") { $0.intValue })
        seed = UInt64(bitPattern: try get("training.seed") { $0.intValue })
        loss = try get("training.loss") { $0.stringValue.flatMap(Loss.init(rawValue:)) }
        initialization = try get("training.init") { $0.stringValue.flatMap(Initialization.init(rawValue:)) }
        augment = try get("training.augment") { if case .bool(let b) = $0 { return b }; return nil }
        validationFraction = try get("training.validation_fraction") { $0.doubleValue }
        inputSize = Int(try get("training.input_size") { $0.intValue })
        degradation = try TrainingConfig.degradation(metadata: m)
    }

    /// The degradation a model's metadata records: `training.psf` (a PSF spec) and
    /// `training.noise` (a noise spec), or, in files written before those existed
    /// (`training.psf` = "airy" and no `training.noise`), the Airy PSF of `training.psf_size` and
    /// `training.psf_rings` with Gaussian noise `training.noise_sigma`.
    public static func degradation(metadata m: [String: MetaValue]) throws -> Degradation {
        let (psf, noise) = try degradationSpecs(metadata: m)
        do { return try Degradation(psf: psf, noise: noise) } catch { throw TrainingError.checkpoint("training.psf \(psf): \(error)") }
    }

    /// The PSF and noise specs of `degradation(metadata:)`, without reading a PSF file.
    public static func degradationSpecs(metadata m: [String: MetaValue]) throws -> (psf: PSFSpec, noise: NoiseSpec) {
        func number(_ k: String) throws -> Double {
            guard let v = m[k]?.doubleValue else { throw TrainingError.checkpoint("missing or bad \(k)") }
            return v
        }
        let psfText = m["training.psf"]?.stringValue ?? "airy"
        let psf: PSFSpec
        if psfText == "airy" {
            let size = try number("training.psf_size")
            guard size >= 1, size <= 1025, size == size.rounded() else { throw TrainingError.checkpoint("bad training.psf_size \(size)") }
            psf = .airy(size: Int(size), rings: try number("training.psf_rings"))
        } else {
            do { psf = try PSFSpec(parsing: psfText) } catch { throw TrainingError.checkpoint("training.psf: \(error)") }
        }
        let noise: NoiseSpec
        if let text = m["training.noise"]?.stringValue {
            do { noise = try NoiseSpec(parsing: text) } catch { throw TrainingError.checkpoint("training.noise: \(error)") }
        } else {
            let sigma = try number("training.noise_sigma")
            guard sigma >= 0, sigma.isFinite else { throw TrainingError.checkpoint("bad training.noise_sigma \(sigma)") }
            noise = .gaussian(sigma: sigma...sigma)
        }
        return (psf, noise)
    }
}

/// One finished epoch.
public struct EpochRecord: Equatable, Sendable {
    public var epoch: Int
    public var trainLoss: Double
    public var validationLoss: Double
    public var seconds: Double
}

/// What a progress line shows.
public struct TrainingProgress: Sendable {
    public var epoch: Int
    public var epochs: Int
    public var batch: Int
    public var batches: Int
    public var samplesPerSecond: Double
    public var trainLoss: Double
    public var lastValidationLoss: Double?
    public var etaSeconds: Double
    public var validating: Bool
}

/// What the command line drives: a run that trains until done or interrupted, writing
/// checkpoints, and then gives its model.
public protocol ResumableTraining: AnyObject {
    var epoch: Int { get }
    var batch: Int { get }
    var history: [EpochRecord] { get }
    func run(progress: (TrainingProgress) -> Void, interrupt: () -> Bool, checkpoint: (Model) throws -> Void) throws
    func finalModel() -> Model
}

/// A training run that can stop after any batch and resume to the same bits: the data of
/// epoch e is a pure function of (seed, e), so the state is the parameters, the optimizer
/// state, and the position (epoch, batch) with the epoch's running loss.
public final class TrainingSession: ResumableTraining {
    public private(set) var config: TrainingConfig
    public let sampler: PatchSampler
    public let trainer: ConvChainTrainer
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
    private var stale = 0
    public private(set) var stopped = false
    public var threads: Int

    public var batchesPerEpoch: Int { (config.trainSamples + config.batchSize - 1) / config.batchSize }
    public var finished: Bool { stopped || epoch >= config.epochs }

    /// A fresh run.
    public init(config: TrainingConfig, images: [SourceImage], threads: Int) throws {
        guard !images.isEmpty else { throw TrainingError.data("no training images") }
        self.config = config
        self.threads = threads
        model = try config.initialModel()
        guard let t = ConvChainTrainer(model: model, inputSize: config.inputSize) else {
            throw TrainingError.model("\(config.recipe) is not a chain of valid convolutions for \(config.inputSize)-pixel patches")
        }
        trainer = t
        sampler = PatchSampler(images: images, degradation: config.degradation, augment: config.augment,
                               validationFraction: config.validationFraction, noiseSeed: config.seed, threads: threads)
        sampler.currentInputSize = config.inputSize
        sampler.currentOutputSize = t.outputSize
        try sampler.check(inputSize: config.inputSize)
        parameters = t.layout.flatten(model)
        bestParameters = parameters
        optimizer = try config.makeOptimizer(parameters.count)
    }

    /// Resumes from a checkpoint written by `checkpoint()`; the images must be the same files.
    public convenience init(checkpoint: Model, images: [SourceImage], threads: Int) throws {
        let m = checkpoint.metadata
        let config = try TrainingConfig(metadata: m)
        try self.init(config: config, images: images, threads: threads)
        let expected = m["training.images"]?.stringValue ?? ""
        guard expected == TrainingSession.imageList(images) else {
            throw TrainingError.checkpoint("the images differ from the checkpoint's (\(expected))")
        }
        func int(_ k: String) throws -> Int {
            guard let v = m[k]?.intValue else { throw TrainingError.checkpoint("missing \(k)") }
            return Int(v)
        }
        func floats(_ k: String) throws -> [Double] {
            guard case .floats(let v)? = m[k] else { throw TrainingError.checkpoint("missing \(k)") }
            return v
        }
        let layout = trainer.layout
        guard ParameterLayout(model: checkpoint) == layout else { throw TrainingError.checkpoint("parameters do not match the recipe") }
        func tensorSet(_ prefix: String) throws -> [Float] {
            try layout.names.flatMap { n -> [Float] in
                guard let t = checkpoint.tensors[prefix + n] else { throw TrainingError.checkpoint("missing tensor \(prefix + n)") }
                return t.values
            }
        }
        parameters = try tensorSet("")
        bestParameters = try tensorSet("best.")
        optimizer.first = try tensorSet("optimizer.first.")
        if !optimizer.second.isEmpty { optimizer.second = try tensorSet("optimizer.second.") }
        optimizer.step = try int("checkpoint.optimizer_step")
        epoch = try int("checkpoint.epoch")
        batch = try int("checkpoint.batch")
        epochLossSum = m["checkpoint.epoch_loss_sum"]?.doubleValue ?? 0
        epochSeconds = m["checkpoint.epoch_seconds"]?.doubleValue ?? 0
        bestValidation = m["checkpoint.best_validation"]?.doubleValue ?? .infinity
        bestEpoch = try int("checkpoint.best_epoch")
        stale = try int("checkpoint.stale")
        stopped = m["checkpoint.stopped"] == .bool(true)
        let (tl, vl, sec) = (try floats("checkpoint.train_losses"), try floats("checkpoint.validation_losses"), try floats("checkpoint.seconds"))
        history = (0..<tl.count).map { EpochRecord(epoch: $0 + 1, trainLoss: tl[$0], validationLoss: vl[$0], seconds: sec[$0]) }
    }

    static func imageList(_ images: [SourceImage]) -> String {
        images.map { "\($0.name) (crc32c \(checksumString($0.checksum)), \($0.raw.width)x\($0.raw.height))" }.joined(separator: "; ")
    }

    /// Changes the schedule of a resumed run: a larger epoch budget and/or a new learning rate
    /// (a decay step). The run then differs from one that had these settings from the start,
    /// and its metadata records the new values.
    public func extend(epochs: Int?, learningRate: Double?) {
        if let e = epochs { config.epochs = e; stopped = false; stale = 0 }
        if let l = learningRate { config.learningRate = l; optimizer.learningRate = l }
    }

    /// Trains until done, `interrupt()` returns true (checked after every batch), or the epoch
    /// budget ends. `checkpoint` is called after every epoch and on interruption.
    public func run(progress: (TrainingProgress) -> Void, interrupt: () -> Bool, checkpoint: (Model) throws -> Void) throws {
        let s = config.inputSize, o = trainer.outputSize
        let bs = config.batchSize
        var inputs = [Float](repeating: 0, count: bs * s * s)
        var targets = [Float](repeating: 0, count: bs * o * o)
        trainer.setParameters(parameters)
        while !finished {
            let plan = sampler.plan(count: config.trainSamples, validation: false, seed: config.seed, stream: UInt64(epoch + 1))
            var t0 = Runtime.monotonicSeconds()
            var doneSinceStart = 0
            while batch < batchesPerEpoch {
                let lo = batch * bs, hi = min(config.trainSamples, lo + bs)
                inputs.withUnsafeMutableBufferPointer { ib in
                    targets.withUnsafeMutableBufferPointer { tb in
                        sampler.fill(plan[lo..<hi], inputs: ib.baseAddress!, targets: tb.baseAddress!)
                    }
                }
                let (l, g) = trainer.lossAndGradient(inputs: inputs, targets: targets, count: hi - lo, loss: config.loss, threads: threads)
                optimizer.update(&parameters, g, threads: threads)
                trainer.setParameters(parameters)
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
            let v = validationLoss()
            let now = Runtime.monotonicSeconds()
            epochSeconds += now - t0
            t0 = now
            history.append(EpochRecord(epoch: epoch + 1, trainLoss: epochLossSum / Double(config.trainSamples),
                                       validationLoss: v, seconds: epochSeconds))
            if v < bestValidation {
                bestValidation = v; bestParameters = parameters; bestEpoch = epoch + 1; stale = 0
            } else {
                stale += 1
                if stale > config.patience { stopped = true }
            }
            epoch += 1
            batch = 0
            epochLossSum = 0
            epochSeconds = 0
            try checkpoint(self.checkpoint())
        }
    }

    /// Mean loss of the current parameters on the validation samples (fixed for the run).
    public func validationLoss() -> Double {
        let s = config.inputSize, o = trainer.outputSize
        let plan = sampler.plan(count: config.validationSamples, validation: true, seed: config.seed, stream: 0)
        let chunk = 1000
        var inputs = [Float](repeating: 0, count: chunk * s * s)
        var targets = [Float](repeating: 0, count: chunk * o * o)
        var sum = 0.0
        var lo = 0
        while lo < plan.count {
            let hi = min(plan.count, lo + chunk)
            inputs.withUnsafeMutableBufferPointer { ib in
                targets.withUnsafeMutableBufferPointer { tb in
                    sampler.fill(plan[lo..<hi], inputs: ib.baseAddress!, targets: tb.baseAddress!)
                }
            }
            let y = trainer.predict(inputs, count: hi - lo, threads: threads)
            for i in 0..<((hi - lo) * o * o) {
                let d = Double(y[i] - targets[i])
                sum += config.loss == .mse ? d * d : abs(d)
            }
            lo = hi
        }
        return sum / Double(max(1, plan.count * o * o))
    }

    /// The run's full state as an `.acnn` file (runnable with the current weights).
    public func checkpoint() -> Model {
        var m = trainer.layout.apply(parameters, to: model)
        let layout = trainer.layout
        func add(_ prefix: String, _ values: [Float]) {
            for n in layout.names {
                m.tensors[prefix + n] = TensorData(shape: model.tensors[n]!.shape, values: Array(values[layout.range(n)]))
            }
        }
        add("best.", bestParameters)
        add("optimizer.first.", optimizer.first)
        if !optimizer.second.isEmpty { add("optimizer.second.", optimizer.second) }
        for (k, v) in config.metadata { m.metadata[k] = v }
        m.metadata["training.images"] = .string(TrainingSession.imageList(sampler.images))
        m.metadata["checkpoint.epoch"] = .int(Int64(epoch))
        m.metadata["checkpoint.batch"] = .int(Int64(batch))
        m.metadata["checkpoint.epoch_loss_sum"] = .float(epochLossSum)
        m.metadata["checkpoint.epoch_seconds"] = .float(epochSeconds)
        m.metadata["checkpoint.optimizer_step"] = .int(Int64(optimizer.step))
        if bestValidation.isFinite { m.metadata["checkpoint.best_validation"] = .float(bestValidation) }
        m.metadata["checkpoint.best_epoch"] = .int(Int64(bestEpoch))
        m.metadata["checkpoint.stale"] = .int(Int64(stale))
        m.metadata["checkpoint.stopped"] = .bool(stopped)
        m.metadata["checkpoint.train_losses"] = .floats(history.map { $0.trainLoss })
        m.metadata["checkpoint.validation_losses"] = .floats(history.map { $0.validationLoss })
        m.metadata["checkpoint.seconds"] = .floats(history.map { $0.seconds })
        return m
    }

    /// The trained model (the parameters of the best validation epoch) with its provenance.
    public func finalModel() -> Model {
        var m = trainer.layout.apply(bestEpoch > 0 ? bestParameters : parameters, to: model)
        for (k, v) in config.metadata { m.metadata[k] = v }
        m.metadata["normalization"] = .string("clip_max")
        m.metadata["training.images"] = .string(TrainingSession.imageList(sampler.images))
        m.metadata["training.epochs_run"] = .int(Int64(history.count))
        m.metadata["training.best_epoch"] = .int(Int64(bestEpoch))
        if let h = history.first(where: { $0.epoch == bestEpoch }) ?? history.last {
            m.metadata["training.train_loss"] = .float(h.trainLoss)
            m.metadata["training.validation_loss"] = .float(h.validationLoss)
        }
        m.metadata["training.seconds"] = .float(history.reduce(0) { $0 + $1.seconds })
        m.metadata["training.trainer"] = .string("astrocnn \(AstroCNN.version)")
        return m
    }
}
