import ArgumentParser
import Foundation
import ModelFormat
import Runtime

/// He-uniform initial weights from a seed (biases stay zero).
func heUniform(seed: UInt64) -> ModelBuilder.Initializer {
    var rng = SplitMix64(seed: seed)
    return { _, shape, fanIn, _ in
        let s = Float((6 / Double(fanIn)).squareRoot())
        return (0..<shape.reduce(1, *)).map { _ in Float.random(in: -s..<s, using: &rng) }
    }
}

func builtinModel(_ arch: String, seed: UInt64) throws -> Model {
    switch arch {
    case "flamary3": return try Architectures.flamary3(name: "flamary3-init-\(seed)", initializer: heUniform(seed: seed))
    case "flamary1": return try Architectures.flamary1(name: "flamary1-init-\(seed)", initializer: heUniform(seed: seed))
    case "unet": return try Architectures.unet(name: "astro-unet-init-\(seed)", initializer: heUniform(seed: seed))
    default: throw ValidationError("unknown architecture '\(arch)' (flamary3, flamary1, unet)")
    }
}

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an untrained model of a built-in architecture (He-uniform weights from a seed).")

    @Option(help: "Architecture: flamary3 (Flamary 2017 3-CNN), flamary1 (its linear 19x19 CNN), unet (Astro U-net 32-64-128-256-512).")
    var arch: String = "flamary3"

    @Option(help: "Random seed.")
    var seed: UInt64 = 1

    @Option(name: [.short, .long], help: "Output model file.")
    var output: String

    @Flag(help: "Replace the output file if it exists.")
    var overwrite = false

    func run() throws {
        do {
            let m = try builtinModel(arch, seed: seed)
            try ModelWriter.write(m, to: output, overwrite: overwrite)
            print("wrote \(output): \(m.name), \(m.parameterCount) parameters")
        } catch {
            throw failure(String(describing: error))
        }
    }
}
