import ArgumentParser
import Imaging

/// The `--psf SPEC` and `--noise SPEC` of `train` and `evaluate` (deconvolution), made into a
/// `Degradation`; `--sigma S` is the older spelling of `--noise gaussian:sigma=S`.
enum DegradationOptions {
    static let psfHelp = "PSF to blur with: airy:size=64,rings=5 (the paper's, default), gaussian:fwhm=F[,size=N], moffat:fwhm=F[,beta=B][,size=N] (pixels), FILE.fits (a measured PSF, peak on pixel ((h-1)/2, (w-1)/2)) or none."
    static let noiseHelp = "Noise, in units of the image normalised to max 1: gaussian:sigma=S (default gaussian:sigma=0.01, the paper's), sky:k=K (K x the image's robust sky sigma), noise:k=K (K x the image's own pixel noise, the noise_mad rule: not inflated by nebulosity), poisson:electrons=E[,read=R][,sky=S] (E electrons per unit, R e- read noise) or none; any number may be a range LO-HI, drawn per patch (sigma and electrons log-uniformly)."

    static func make(psf: String, noise: String?, sigma: Double?) throws -> Degradation {
        let psfSpec: PSFSpec
        do { psfSpec = try PSFSpec(parsing: psf) } catch { throw ValidationError("--psf: \(error)") }
        var noiseSpec = NoiseSpec.paper
        switch (noise, sigma) {
        case (let n?, nil):
            do { noiseSpec = try NoiseSpec(parsing: n) } catch { throw ValidationError("--noise: \(error)") }
        case (nil, let s?):
            guard s >= 0, s.isFinite else { throw ValidationError("--sigma must be a finite number >= 0") }
            noiseSpec = .gaussian(sigma: s...s)
        case (nil, nil): break
        case (_?, _?): throw ValidationError("give --noise or --sigma, not both (--sigma S is --noise gaussian:sigma=S)")
        }
        do { return try Degradation(psf: psfSpec, noise: noiseSpec) } catch { throw ValidationError("--psf \(psf): \(error)") }
    }
}
