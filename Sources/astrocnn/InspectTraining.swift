import ModelFormat
import Trainer

/// The degradation a deconvolution model (flamary recipes, deconv-unet) was trained for, as `inspect` shows
/// it: one line, or none for a model without that metadata. Files written before `training.noise` existed are read
/// through their old keys (the paper's Airy PSF and Gaussian sigma).
func trainingDegradationLines(_ metadata: [String: MetaValue]) -> [String] {
    guard metadata["training.psf"] != nil || metadata["training.noise"] != nil || metadata["training.noise_sigma"] != nil else { return [] }
    // Other trainers (astro-unet) describe their own noise model in free text under training.noise.
    let deconvolutionUNet = metadata["training.task"]?.stringValue == "deconvolve"
    if let recipe = metadata["training.recipe"]?.stringValue, !TrainingConfig.recipes.contains(recipe), !deconvolutionUNet { return [] }
    do {
        let (psf, noise) = try TrainingConfig.degradationSpecs(metadata: metadata)
        let legacy = metadata["training.noise"] == nil ? " (read from the old keys training.psf_size, psf_rings, noise_sigma)" : ""
        let normalization = deconvolutionUNet ? "; input in \(metadata["normalization"]?.stringValue ?? "?") units (restore fits and inverts them per image)" : ""
        return ["trained    for psf \(psf.exactDescription), noise \(noise)\(legacy)\(normalization): a deconvolution model restores images blurred by that PSF"]
    } catch {
        return ["trained    for an unreadable degradation: \(error)"]
    }
}
