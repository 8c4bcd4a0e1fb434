import ArgumentParser
import Evaluation
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime

/// The PSF of `spec` for `image`: `auto` measures it from the image's stars, anything else is a
/// `PSFSpec` (airy:..., gaussian:fwhm=F, moffat:fwhm=F,beta=B, a FITS file). Returns the kernel
/// and a line saying what it is.
func resolvePSF(_ spec: String, image: FITSImage) throws -> (kernel: Image2D, what: String) {
    if spec.lowercased() == "auto" {
        let m = try PSFEstimation.measure(pixels: image.pixels, invalid: image.invalid, width: image.width, height: image.height)
        return (m.kernel, String(format: "measured from %d stars: Moffat FWHM %.2f px, beta %.2f, ellipticity %.3f (%dx%d kernel)",
                                 m.stars, m.fwhm, m.beta, m.ellipticity, m.kernel.width, m.kernel.height))
    }
    let p = try PSFSpec(parsing: spec)
    guard let k = try p.kernel() else { throw ValidationError("--psf none has no PSF to check against") }
    return (k, p.description)
}

/// Binds the PSF of `spec` to a model with a Wiener step (format 1.1): a spec, a FITS kernel, or
/// `auto` (measured from the stars of the one input). Returns what was bound.
@discardableResult
func bindPSF(_ network: Network, spec: String, inputs: [String], hdu: String?) throws -> String {
    let kernel: Image2D, what: String
    do {
        if spec.lowercased() == "auto" {
            guard inputs.count == 1, !FileManager.default.fileExists(atPath: inputs[0] + "/.") else {
                throw ScaleError.badInput("--psf auto measures the PSF of one image; give one input file (images of one camera share a PSF: measure it once with 'astrocnn psf', then pass --psf PSF.fits for a batch)")
            }
            (kernel, what) = try resolvePSF(spec, image: try FITSIO.readImage(path: inputs[0], hdu: hdu))
        } else {
            let p = try PSFSpec(parsing: spec)
            guard let k = try p.kernel() else { throw ScaleError.badInput("\(network.name) deconvolves: --psf none gives it no PSF") }
            (kernel, what) = (k, p.description)
        }
        try network.bind(psf: PSFKernel(height: kernel.height, width: kernel.width, values: kernel.pixels), description: what)
    } catch { throw failure("--psf: " + describe(error)) }
    print("PSF for \(network.name): \(what)" + String(format: " (FWHM %.2f px)", network.psf!.fwhm))
    return what
}

struct MeasurePSF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "psf",
        abstract: "Measure an image's PSF from its isolated, unsaturated stars (what --psf auto does) and write it as a FITS kernel, with the fitted Moffat FWHM and beta.")

    @Argument(help: "Input FITS image (cfitsio extended syntax allowed).")
    var input: String

    @Option(name: [.short, .long], help: "Output PSF FITS file (odd size, centred, sum 1: usable as --psf FILE).")
    var output: String

    @Option(help: "HDU to read: index (0 = primary) or EXTNAME.")
    var hdu: String?

    @Option(help: "Stack at most this many stars (the brightest accepted).")
    var maxStars: Int = 60

    @Option(help: "Also write a PNG of the kernel (asinh stretch).")
    var preview: String?

    @Flag(help: "Replace the output if it exists.")
    var overwrite = false

    func run() throws {
        do {
            let img = try FITSIO.readImage(path: input, hdu: hdu)
            let m = try PSFEstimation.measure(pixels: img.pixels, invalid: img.invalid, width: img.width, height: img.height,
                                              maxStars: max(3, maxStars))
            let prov = FITSIO.Provenance(keywords: [
                ("PSFFWHM", .float(m.fwhm), "[px] FWHM of the Moffat fitted to this kernel"),
                ("PSFBETA", .float(m.beta), "beta of the Moffat fitted to this kernel"),
                ("PSFELLIP", .float(m.ellipticity), "1 - b/a from the kernel's second moments"),
                ("PSFNSTAR", .int(Int64(m.stars)), "stars stacked (per-pixel median)"),
                ("PSFFITER", .float(m.fitError), "relative RMS misfit of the Moffat"),
            ], history: ["PSF measured by astrocnn \(AstroCNN.version) from \(input)" + (hdu.map { " HDU \($0)" } ?? ""),
                         "Isolated unsaturated stars, local background removed, recentred (Lanczos-3), unit flux, median-stacked",
                         "Command: " + CommandLine.arguments.joined(separator: " ")])
            try FITSIO.writeImage(path: output, width: m.kernel.width, height: m.kernel.height, pixels: m.kernel.pixels.map(Float.init),
                                  headerCards: [], provenance: prov, overwrite: overwrite)
            print(String(format: "PSF of %@: %d stars stacked (of %d peaks %.0f sigma above the sky); Moffat FWHM %.2f px, beta %.2f (misfit %.1f%%), ellipticity %.3f; %dx%d kernel -> %@",
                         input, m.stars, m.candidates, m.threshold, m.fwhm, m.beta, 100 * m.fitError, m.ellipticity, m.kernel.width, m.kernel.height, output))
            if let png = preview {
                let peak = m.kernel.pixels.max() ?? 1
                try Preview.sideBySide([("PSF", m.kernel.pixels.map { Float($0 / peak) })], width: m.kernel.width, height: m.kernel.height).write(to: png)
                print("wrote \(png)")
            }
        } catch let e as ValidationError {
            throw e
        } catch {
            throw failure(describe(error))
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a deconvolved image without a truth: the output blurred by the PSF must reproduce the input within its noise (reduced chi-square near 1, overall and on the sources), and show no period-2 (checkerboard or stripe) power beyond the input's.",
        discussion: "Exit status 0 when both checks pass, 3 when one fails (so pipelines can stop), 1 on errors.")

    @Argument(help: "The input image (as given to restore).")
    var input: String

    @Argument(help: "The restored image (same shape and units).")
    var restored: String

    @Option(help: "The PSF the image was deconvolved for: auto (measured from the input's stars), airy:..., gaussian:fwhm=F, moffat:fwhm=F,beta=B or a FITS kernel.")
    var psf: String

    @Option(help: "HDU of the input: index or EXTNAME.")
    var hdu: String?

    @Option(help: "Gain, electrons per image unit, for the photon noise of bright pixels (default: the header's GAIN, EGAIN, CCDGAIN or GAINEFF; without one only the sky noise is used).")
    var gain: Double?

    @Option(help: "Pixel noise sigma of the input in its units (default: measured from its second differences).")
    var sigma: Double?

    func run() throws {
        let report: RestorationCheck
        do {
            let a = try FITSIO.readImage(path: input, hdu: hdu), b = try FITSIO.readImage(path: restored)
            guard a.width == b.width, a.height == b.height else {
                throw ScaleError.mismatch("\(restored) is \(b.width)x\(b.height), \(input) is \(a.width)x\(a.height)")
            }
            let (kernel, what) = try resolvePSF(psf, image: a)
            let g = gain ?? ExposureKeywords(keyword: a.keyword).gain?.value
            report = try RestorationCheck.run(input: a.pixels, restored: b.pixels, invalid: a.invalid, width: a.width, height: a.height,
                                              psf: kernel, sigma: sigma, gain: g, threads: ParallelFor.availableCores)
            print("PSF: \(what)" + (g.map { String(format: "; gain %.4g e-/unit", $0) } ?? "; no gain: sky noise only"))
            print(report)
        } catch {
            throw failure(describe(error))
        }
        print(report.passes ? "check: PASS" : "check: FAIL")
        if !report.passes { throw ExitCode(3) }
    }
}
