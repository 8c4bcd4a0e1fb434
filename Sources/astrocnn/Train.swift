import Imaging
import ArgumentParser
import Foundation
import ModelFormat
import Reporting
import Runtime
import Trainer

/// Set by SIGINT; the training loop checks it after every batch and writes a checkpoint.
nonisolated(unsafe) var interruptRequested: sig_atomic_t = 0

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a restoration network on FITS images (Flamary 2017 recipe, on the CPU).",
        discussion: """
        Degrades each image as Flamary 2017 (clip negatives, divide by the max, PSF blur, noise: by default \
        the paper's Airy PSF and Gaussian sigma 0.01; any PSF with --psf, any noise with --noise), draws 32x32 input / 14x14 target patches, and trains with manual backprop. A checkpoint \
        (an .acnn file with optimizer state and data position) is written atomically after every epoch \
        and on Ctrl-C; --resume continues to the same bits as an uninterrupted run.
        """)

    @Option(help: "Recipe: flamary3 (the 3-layer CNN), flamary1 (the linear 19x19 CNN), astro-unet (the Astro U-net denoiser) deconv-unet (a U-net for deconvolution with --psf and --noise, sky_mad units, input skip, MSE) or deconv-psf (one model for a family of PSFs and noise levels, --psf-family: a Wiener step with the PSF given at run time, then a U-net).")
    var recipe: String = "flamary3"

    @Option(name: .long, parsing: .upToNextOption, help: "FITS images or directories of them.")
    var images: [String] = []

    @Option(help: "Add this many skies simulated in code to the training images (flamary recipes: stars, galaxies, clouds, SyntheticSky.varied; deconv-psf: sparse fields on a zero sky, SyntheticSky.sparse).")
    var synthetic: Int = 0

    @Option(help: "Side of the simulated skies.")
    var syntheticSize: Int = 1024

    @Option(help: "Leave this image (file name) out of training: the leave-one-image-out protocol.")
    var leaveOut: String?

    @Option(name: [.short, .long], help: "Output model (.acnn).")
    var output: String

    @Option(help: "Checkpoint file (default: OUTPUT with .ckpt.acnn).")
    var checkpoint: String?

    @Option(help: "Resume from this checkpoint (same images; its settings are used).")
    var resume: String?

    @Flag(help: "With --resume: stop here and write the model of the best epoch so far (no more training).")
    var finish = false

    @Flag(help: "With --finish (U-net recipes): write the latest epoch's model instead of the best validation epoch's (when the validation loss does not measure what the run trains for, e.g. with --low-pass-loss).")
    var latest = false

    @Option(help: "With --resume: raise the epoch budget to this many epochs in all (the run then goes past its original plan).")
    var extendEpochs: Int?

    @Option(help: "With --resume: continue with this learning rate (a decay step; recorded in the metadata).")
    var resumeLr: Double?

    @OptionGroup var unet: UNetTrainOptions

    @Option(help: "Batch size (flamary: 50; astro-unet: 4).") var batch: Int?
    @Option(help: "Learning rate (flamary: 0.01; astro-unet: 1e-4, the paper used 1e-5 on a GPU for 800k crops).") var lr: Double?
    @Option(help: "Optimizer: sgd or adam.") var optimizer: String = "sgd"
    @Option(help: "SGD momentum.") var momentum: Double = 0.9
    @Flag(help: "Plain momentum instead of Nesterov.") var noNesterov = false
    @Option(help: "Maximum epochs (flamary: 30; astro-unet: 100).") var epochs: Int?
    @Option(help: "Training samples per epoch (flamary: 100000; astro-unet: 160 crops, the paper's).") var samples: Int?
    @Option(help: "Validation samples (flamary: 50000; astro-unet: 32 crops of the held-out images).") var validationSamples: Int?
    @Option(help: "Epochs without validation improvement before stopping (0: stop at the first rise).") var patience: Int = 0
    @Option(help: "Random seed (weights, patches, noise).") var seed: UInt64 = 1
    @Option(help: "Loss: mse or l1 (flamary: mse; astro-unet: l1).") var loss: String?
    @Option(help: "Initialisation: glorot or he (flamary: glorot; astro-unet: he).") var initialization: String?
    @Flag(help: "The paper's data exactly: no flips/rotations and one fixed noise draw per image.") var noAugment = false
    @Option(help: ArgumentHelp(stringLiteral: DegradationOptions.psfHelp)) var psf: String?
    @Option(help: ArgumentHelp(stringLiteral: DegradationOptions.noiseHelp)) var noise: String?
    @Option(help: "Gaussian noise standard deviation (images normalised to max 1): the same as --noise gaussian:sigma=S.") var sigma: Double?
    @Option(help: "Threads (default: all cores).") var threads: Int?
    @Flag(help: "Replace existing output files.") var overwrite = false
    @Flag(help: "No progress line.") var quiet = false

    func run() throws {
        do {
            try train()
        } catch let e as ExitCode {
            throw e
        } catch {
            throw failure(describe(error))
        }
    }

    func train() throws {
        if recipe == "astro-unet" || recipe == "deconv-unet" || recipe == "deconv-psf" { return try trainUNet() }
        let degradation = try DegradationOptions.make(psf: psf ?? PSFSpec.paper.description, noise: noise, sigma: sigma)
        if resume != nil && (psf != nil || noise != nil || sigma != nil) {
            throw ValidationError("--resume continues with the checkpoint's PSF and noise: drop --psf, --noise and --sigma")
        }
        guard !images.isEmpty || synthetic > 0 else { throw ValidationError("give training images with --images DIR|FILES (or --synthetic N)") }
        var paths = try SourceImage.expand(images)
        if let out = leaveOut {
            let before = paths.count
            paths.removeAll { URL(fileURLWithPath: $0).lastPathComponent == out || $0 == out }
            if paths.count == before { throw ValidationError("--leave-out \(out): no such image among \(images)") }
        }
        guard !paths.isEmpty || synthetic > 0 else { throw ValidationError("no FITS images found in \(images)") }
        guard synthetic >= 0, syntheticSize >= 64 else { throw ValidationError("--synthetic must be >= 0 and --synthetic-size >= 64") }
        let sources = try paths.map { try SourceImage.load(path: $0) }
            + (0..<synthetic).map { SyntheticSky.varied(size: syntheticSize, seed: UInt64($0 + 1)).sourceImage() }
        let nThreads = max(1, threads ?? ParallelFor.availableCores)
        let base = output.hasSuffix(".acnn") ? String(output.dropLast(5)) : output
        let ckptPath = checkpoint ?? base + ".ckpt.acnn"
        let logPath = base + ".log.csv", plotPath = base + ".loss.png"
        if !overwrite && resume == nil {
            for p in [output, ckptPath] where FileManager.default.fileExists(atPath: p) {
                throw ValidationError("\(p) exists (use --overwrite, or --resume \(ckptPath))")
            }
        }
        let session: TrainingSession
        if let r = resume {
            let m = try ModelReader(path: r).model()
            session = try TrainingSession(checkpoint: m, images: sources, threads: nThreads)
            session.extend(epochs: extendEpochs, learningRate: resumeLr)
            if !quiet { print("resuming \(r) at epoch \(session.epoch + 1), batch \(session.batch)") }
        } else {
            var c = TrainingConfig(recipe: recipe)
            c.batchSize = batch ?? 50; c.learningRate = lr ?? 0.01; c.optimizer = optimizer; c.momentum = momentum
            c.nesterov = !noNesterov; c.epochs = epochs ?? 30; c.trainSamples = samples ?? 100_000
            c.validationSamples = validationSamples ?? 50_000
            c.patience = patience; c.seed = seed; c.augment = !noAugment
            c.degradation = degradation
            guard let l = Loss(rawValue: loss ?? "mse") else { throw ValidationError("--loss must be mse or l1") }
            guard let i = Initialization(rawValue: initialization ?? "glorot") else { throw ValidationError("--initialization must be glorot or he") }
            guard c.batchSize > 0, c.trainSamples > 0, c.validationSamples > 0, c.epochs > 0 else { throw ValidationError("batch, samples, validation samples and epochs must be positive") }
            c.loss = l; c.initialization = i
            session = try TrainingSession(config: c, images: sources, threads: nThreads)
        }
        let c = session.config
        if !quiet {
            print("training \(c.recipe) on \(sources.map { $0.name }.joined(separator: ", ")): \(c.trainSamples) samples/epoch, batch \(c.batchSize), "
                  + "\(c.optimizer) lr \(c.learningRate), augment \(c.augment), \(nThreads) threads; "
                  + "psf \(c.degradation.psfSpec.exactDescription), noise \(c.degradation.noise)")
        }
        guard !latest else { throw ValidationError("--latest is for the U-net recipes (with --resume CKPT --finish)") }
        if finish {
            guard resume != nil, session.bestEpoch > 0 else { throw ValidationError("--finish needs --resume with a checkpoint after at least one epoch") }
            try ModelWriter.write(session.finalModel(), to: output, overwrite: overwrite)
            print(String(format: "wrote %@ from the checkpoint: best epoch %d of %d, validation MSE %.4e", output, session.bestEpoch,
                         session.history.count, session.bestValidation))
            return
        }
        try runTraining(session, unit: "samples", rateFormat: "%.0f", checkpointPath: ckptPath, logPath: logPath, plotPath: plotPath,
                        title: "\(c.recipe): training on \(sources.map { $0.name }.joined(separator: ", "))", quiet: quiet)
        let model = session.finalModel()
        try ModelWriter.write(model, to: output, overwrite: true)
        if !quiet {
            print(String(format: "wrote %@: best epoch %d of %d, validation MSE %.4e; log %@, plot %@, checkpoint %@",
                         output, session.bestEpoch, session.history.count, session.bestValidation, logPath, plotPath, ckptPath))
        }
    }
}

/// Runs a training session with the progress line on standard error, a checkpoint, CSV log and
/// loss plot after every epoch and on Ctrl-C (or SIGTERM); exits 130 when interrupted.
func runTraining(_ session: ResumableTraining, unit: String, rateFormat: String, checkpointPath: String, logPath: String,
                 plotPath: String, title: String, quiet: Bool) throws {
    signal(SIGINT) { _ in interruptRequested = 1 }
    signal(SIGTERM) { _ in interruptRequested = 1 }
    let interactive = isatty(2) != 0
    var lastPrint = 0.0
    func write(_ line: String, final: Bool = false) {
        FileHandle.standardError.write(Data(((interactive ? "\r\u{1B}[K" : "") + line + (interactive && !final ? "" : "\n")).utf8))
    }
    try session.run(progress: { p in
        guard !quiet else { return }
        let now = monotonicSeconds()
        if !p.validating && p.batch < p.batches && now - lastPrint < (interactive ? 0.5 : 10) { return }
        lastPrint = now
        let val = p.lastValidationLoss.map { String(format: "%.4e", $0) } ?? "-"
        write(p.validating
            ? String(format: "epoch %d/%d: validating...", p.epoch, p.epochs)
            : String(format: "epoch %d/%d  batch %d/%d  \(rateFormat) %@/s  loss %.4e  val %@  ETA %.0f s",
                     p.epoch, p.epochs, p.batch, p.batches, p.samplesPerSecond, unit, p.trainLoss, val, p.etaSeconds))
    }, interrupt: { interruptRequested != 0 }, checkpoint: { m in
        try ModelWriter.write(m, to: checkpointPath, overwrite: true)
        try writeLog(session.history, logPath, plotPath, title: title)
        if !quiet, let h = session.history.last, session.batch == 0 {
            write(String(format: "epoch %d: train %.4e  validation %.4e  (%.0f s)", h.epoch, h.trainLoss, h.validationLoss, h.seconds), final: true)
        }
    })
    if interruptRequested != 0 {
        FileHandle.standardError.write(Data("\ninterrupted: checkpoint \(checkpointPath) (epoch \(session.epoch + 1), batch \(session.batch)); continue with --resume \(checkpointPath)\n".utf8))
        throw ExitCode(130)
    }
}

/// CSV (epoch,train_loss,validation_loss,seconds) and a PNG loss curve, both written atomically.
func writeLog(_ history: [EpochRecord], _ csv: String, _ png: String, title: String) throws {
    var text = "epoch,train_loss,validation_loss,seconds\n"
    for h in history { text += "\(h.epoch),\(h.trainLoss),\(h.validationLoss),\(h.seconds)\n" }
    try AtomicFile.write(Array(text.utf8), to: csv, overwrite: true)
    guard !history.isEmpty else { return }
    let plot = LinePlot(title: title, xLabel: "epoch", yLabel: "loss", series: [
        .init(name: "train", points: history.map { (Double($0.epoch), $0.trainLoss) }),
        .init(name: "validation", points: history.map { (Double($0.epoch), $0.validationLoss) }),
    ], yFromZero: false)
    try plot.render().write(to: png)
}
