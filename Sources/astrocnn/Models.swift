import ArgumentParser
import Foundation
import Imaging
import ModelFormat
import Runtime
import Trainer

/// The model search path of this run (`--model-dir` folders first).
func modelLocations(_ modelDirs: [String]) -> [ModelSearch.Location] {
    ModelSearch.locations(explicit: modelDirs)
}

/// The text listing the folders searched, for error messages.
func searchedText(_ locations: [ModelSearch.Location]) -> String {
    locations.map { "\($0.directory) (\($0.origin))" }.joined(separator: ", ")
}

/// A model given as a path, or as a name (with or without `.acnn`) found on the search path.
func resolveModelPath(_ spec: String, modelDirs: [String]) -> String {
    if FileManager.default.fileExists(atPath: spec) || spec.contains("/") { return spec }
    let locations = modelLocations(modelDirs)
    return ModelSearch.find(spec, in: locations) ?? ModelSearch.find(spec + ".acnn", in: locations) ?? spec
}

/// Loads a model (path or search-path name), failing with a clear message.
func loadModel(_ spec: String, modelDirs: [String]) throws -> Network {
    let path = resolveModelPath(spec, modelDirs: modelDirs)
    do { return try Network(path: path) } catch { throw failure(describe(error)) }
}

/// The shipped models the task verbs choose from, in order of preference.
enum ShippedModels {
    static let denoiser = "astro-unet-16-vst.acnn"
    static let deconvolutionPreference = ["deconv-unet.acnn", "deconv-unet-moffat.acnn", "flamary3.acnn", "flamary1.acnn"]
    /// The shipped model that takes the PSF at run time: the default of `deconvolve --psf` and
    /// `demo --psf` for a PSF no fixed-PSF model was trained for (within its family).
    static let psfAware = "deconv-psf.acnn"

    /// The visible PSF-aware model (a Wiener step: it records the family it covers), preferring
    /// the shipped file name.
    static func psfAwareModel(_ entries: [ModelSearch.Entry]) -> ModelSearch.Entry? {
        let visible = entries.filter { !$0.shadowed && $0.task == .deconvolve && $0.metadata["deconvolution.psf_family"] != nil }
        return visible.first { $0.file == psfAware } ?? visible.first
    }

    /// The note printed when the PSF-aware model is used because no model was trained for the PSF.
    static func psfAwareNote(_ network: Network, psf: String) -> String {
        "note: no model was trained for --psf \(psf); using '\(network.name)', which takes the PSF at run time (covers \(network.metadata["deconvolution.psf_family"]?.stringValue ?? "its family")). On held-out images it beats its own Wiener input but not Wiener, Richardson-Lucy and Prox-TV tuned against a truth on every image (docs/EVALUATION.md, Part 1d)"
    }

    /// A model's training PSF, parsed (nil when it records none or it cannot be read).
    static func trainingPSF(_ e: ModelSearch.Entry) -> PSFSpec? {
        guard e.metadata["training.psf"] != nil else { return nil }
        return try? TrainingConfig.degradationSpecs(metadata: e.metadata).psf
    }

    /// The entries visible on the search path (the first of each file name), deconvolution
    /// models in preference order.
    static func deconvolutionModels(_ entries: [ModelSearch.Entry]) -> [ModelSearch.Entry] {
        let visible = entries.filter { !$0.shadowed && $0.task == .deconvolve }
        func rank(_ e: ModelSearch.Entry) -> Int { deconvolutionPreference.firstIndex(of: e.file) ?? deconvolutionPreference.count }
        return visible.enumerated().sorted { (rank($0.element), $0.offset) < (rank($1.element), $1.offset) }.map(\.element)
    }

    /// The PSFs the deconvolution models cover, one line each, for messages.
    static func coveredText(_ entries: [ModelSearch.Entry]) -> String {
        let d = deconvolutionModels(entries)
        if d.isEmpty { return "  (no deconvolution model found)" }
        return d.map { "  --psf \(trainingPSF($0)?.exactDescription ?? $0.psf ?? "?")  (\($0.file), noise \($0.noise ?? "?"))" }.joined(separator: "\n")
    }
}

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the models found on the search path: task, training PSF and noise, input units, size, validation loss (at its epoch) and path.",
        discussion: """
        Search order (the first folder holding a file name wins): --model-dir DIR (repeatable), \
        $ASTROCNN_MODELS (folders separated by ':'), BIN/models and BIN/../share/astrocnn/models next to \
        the executable BIN/astrocnn (an installed prefix), then the source tree the executable was built in \
        (the first folder above it with Package.swift and models/).
        """)

    @Option(name: .customLong("model-dir"), help: "Search this folder first (repeatable).")
    var modelDirs: [String] = []

    @Flag(help: "Also list the folders searched.")
    var paths = false

    func run() throws {
        let locations = modelLocations(modelDirs)
        let (entries, bad) = ModelSearch.catalog(locations)
        if paths || entries.isEmpty {
            print("search path:")
            for l in locations {
                let exists = FileManager.default.fileExists(atPath: l.directory)
                print("  \(l.directory)  (\(l.origin)\(exists ? "" : ", absent"))")
            }
        }
        if entries.isEmpty {
            throw failure("no models found on the search path; install them (scripts/install.sh PREFIX), set ASTROCNN_MODELS, or pass --model-dir DIR")
        }
        let rows = entries.map { e -> [String] in
            let psf: String
            switch e.task {
            case .deconvolve: psf = ShippedModels.trainingPSF(e)?.exactDescription ?? e.psf ?? "?"
            case .denoise: psf = "none (denoising)"
            case .unknown: psf = e.psf ?? "-"
            }
            var flags: [String] = []
            if e.file == ShippedModels.denoiser { flags.append("default for denoise") }
            // A fixed-PSF model is the default for its PSF when it comes first; a model that takes
            // the PSF at run time (no training PSF) runs only when named.
            if e.task == .deconvolve, let own = ShippedModels.trainingPSF(e),
               ShippedModels.deconvolutionModels(entries).first(where: { ShippedModels.trainingPSF($0) == own })?.path == e.path {
                flags.append("default for deconvolve --psf \(psf)")
            }
            if e.path == ShippedModels.psfAwareModel(entries)?.path {
                flags.append("default for deconvolve --psf of its family where no model above was trained for it")
            }
            if e.shadowed { flags.append("hidden by an earlier file of this name") }
            let size = e.bytes >= 1 << 20 ? String(format: "%.1f MB", Double(e.bytes) / 1e6) : String(format: "%.0f kB", Double(e.bytes) / 1e3)
            // The training figure the model records: its best validation loss (loss, units of the recipe).
            var figure = "-"
            if let v = e.metadata["training.validation_loss"]?.doubleValue {
                figure = String(format: "%@ %.3g", e.metadata["training.loss"]?.stringValue ?? "loss", v)
                if let b = e.metadata["training.best_epoch"]?.doubleValue { figure += " @\(Int(b))" }
            }
            return [e.file, e.task.rawValue, psf, e.noise ?? "-", e.normalization, String(e.parameters), size, figure,
                    e.path + (flags.isEmpty ? "" : "  [" + flags.joined(separator: "; ") + "]")]
        }
        let header = ["model", "task", "psf", "noise", "units", "parameters", "size", "validation", "path"]
        let widths = (0..<header.count - 1).map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
        func line(_ r: [String]) -> String {
            (0..<r.count).map { i in i < widths.count ? r[i].padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) : r[i] }.joined()
        }
        print(line(header))
        for r in rows { print(line(r)) }
        for (p, e) in bad { print("unreadable: \(p): \(e)") }
    }
}
