import ArgumentParser
import Foundation
import Imaging
import ModelFormat
import Runtime

/// `astrocnn degrade`: makes a (long, short) training or test pair from a real image, with the
/// noise model of the Astro U-net paper or Gaussian noise, optionally blurred by a PSF first.
struct Degrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Simulate a degraded observation of a FITS image: a shorter exposure (Poisson + dark + read noise) or Gaussian noise, optionally after a PSF.",
        discussion: """
        The input is taken as the truth (the long exposure). With --noise poisson each pixel becomes \
        Poisson((I + sky) * gain / ratio) electrons + N(0, sqrt(dark * exptime / ratio)) + N(0, read noise), \
        mapped back to the input's units at the long exposure's level (--scale long, the default: same flux \
        scale as the input) or as the short exposure would record it (--scale short). Gain, exposure time, \
        read noise and a subtracted sky level come from the header (GAIN/EGAIN/CCDGAIN, BUNIT electrons or \
        electrons/s; EXPTIME/EXPOSURE; RDNOISE/READNOIS/RON) unless given. The subtracted sky (its photons \
        still count) is --sky, else a header SKYLEVEL the image's median shows was subtracted, else the level \
        that the image's measured sky noise implies (--sky auto). With --noise gaussian, --sigma S adds N(0, S^2) \
        in image units and --sigma-sky K adds K times the image's robust sky noise. The output keeps the \
        header (WCS included) and says in HISTORY and ACNN* keywords exactly what was done.
        """)

    @Argument(help: "Input FITS file (the truth / long exposure).") var input: String
    @Option(name: [.short, .long], help: "Output FITS file (written atomically).") var output: String
    @Option(help: "HDU to read: index or EXTNAME (default: the first image HDU).") var hdu: String?
    @Option(help: "Noise: poisson (the Astro U-net short-exposure model), gaussian or none.") var noise: String = "poisson"
    @Option(help: "Exposure-time ratio r = t_long / t_short (poisson).") var ratio: Double?
    @Option(help: "Gain, electrons per image unit (default: from the header).") var gain: Double?
    @Option(help: "Read-out noise, electrons RMS (default: the header's, else 0).") var readNoise: Double?
    @Option(help: "Dark current, electrons per pixel per hour (default 0).") var dark: Double = 0
    @Option(help: "Exposure time of the input, seconds (default: EXPTIME/EXPOSURE).") var exptime: Double?
    @Option(help: "Sky level subtracted from the image, in image units, or auto (the default: a header SKYLEVEL the image shows was subtracted, else the level its sky noise implies).") var sky: String?
    @Flag(help: "Clip negative pixels to 0 before the Poisson draw (as the paper did).") var clip = false
    @Option(help: "Output level for poisson: long (the input's flux scale) or short (as the short exposure records it).") var scale: String = "long"
    @Option(help: "Gaussian noise: standard deviation in image units.") var sigma: Double?
    @Option(help: "Gaussian noise: a multiple of the image's robust sky noise.") var sigmaSky: Double?
    @Option(help: "PSF applied before the noise: airy:size=64,rings=5, gaussian:fwhm=F, moffat:fwhm=F,beta=B, FILE.fits or none.") var psf: String = "none"
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Threads (default: all cores).") var threads: Int?
    @Flag(help: "Replace an existing output file.") var overwrite = false

    func run() throws {
        do { try degrade() } catch let e as ExitCode { throw e } catch let e as ValidationError { throw e } catch { throw failure(describe(error)) }
    }

    func degrade() throws {
        let threads = self.threads ?? ParallelFor.availableCores
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        let psfSpec = try PSFSpec(parsing: psf)
        let psfKernel = try psfSpec.kernel()
        do { try AtomicFile.checkWritable(output, overwrite: overwrite) } catch let e as AtomicFile.Failure {
            if case .exists = e { throw FITSError.exists(output) }
            throw FITSError.io(e.description)
        }
        let fits = try FITSIO.readImage(path: input, hdu: hdu)
        guard fits.invalidCount < fits.pixels.count else { throw ValidationError("\(input): every pixel is NaN or BLANK") }
        var truth = Image2D(height: fits.height, width: fits.width,
                            pixels: (0..<fits.pixels.count).map { fits.invalid[$0] ? .nan : Double(fits.pixels[$0]) })
        var history = ["Degraded by astrocnn \(AstroCNN.version) from \(input) HDU \(fits.hdu) (BITPIX \(fits.bitpix)), seed \(seed)"]
        var keywords: [(String, MetaValue, String)] = [("ACNNVER", .string(AstroCNN.version), "astrocnn version"),
                                                       ("ACNNSEED", .int(Int64(seed)), "noise seed")]
        if let k = psfKernel {
            // Blur the valid pixels; invalid ones count as 0 in the convolution and stay NaN.
            let filled = truth.map { $0.isNaN ? 0 : $0 }
            var blurred = LinearConvolution(kernel: k, height: truth.height, width: truth.width, threads: threads).apply(filled)
            for i in 0..<blurred.count where truth.pixels[i].isNaN { blurred.pixels[i] = .nan }
            truth = blurred
            history.append("Blurred by the PSF \(psfSpec) (zero boundary, origin at ((h-1)/2, (w-1)/2))")
            keywords.append(("ACNNPSF", .string(psfSpec.description), "PSF applied before the noise"))
        }
        let degraded: Image2D
        switch noise.lowercased() {
        case "poisson":
            guard let r = ratio else { throw ValidationError("--noise poisson needs --ratio R (t_long / t_short)") }
            guard sigma == nil && sigmaSky == nil else { throw ValidationError("--sigma and --sigma-sky are for --noise gaussian") }
            guard let outScale = ExposureNoise.Scale(rawValue: scale) else { throw ValidationError("--scale must be long or short") }
            let header = ExposureKeywords(keyword: fits.keyword)
            guard let g = gain ?? header.gain?.value else {
                throw ValidationError("\(input): no gain in the header (GAIN, EGAIN, CCDGAIN, BUNIT electrons or electrons/s): give --gain (electrons per image unit)")
            }
            let ron = readNoise ?? header.readNoise?.value ?? 0
            let t = exptime ?? header.exposureTime?.value ?? 0
            var skyLevel = 0.0, skyNote = "0"
            if let s = sky, s.lowercased() != "auto" {
                guard let v = Double(s), v.isFinite else { throw ValidationError("--sky must be a number or auto") }
                skyLevel = v; skyNote = s
            } else {
                (skyLevel, skyNote) = ExposureNoise.subtractedSky(header: header, stats: SkyStatistics.estimate(truth), gain: g, readNoise: ron)
            }
            let model = ExposureNoise(ratio: r, gain: g, readNoise: ron, darkRate: dark / 3600, exposureTime: t, sky: skyLevel,
                                      clipNegative: clip, outputScale: outScale)
            if let p = model.problem { throw ValidationError(p) }
            degraded = model.apply(truth, seed: seed, threads: threads)
            history.append("Short exposure: ratio \(r), gain \(g) e-/unit" + (gain == nil ? " (\(header.gain!.source))" : "")
                           + ", read noise \(ron) e-, dark \(dark) e-/px/h, exposure \(t) s, sky \(skyNote)")
            history.append("e_short = Poisson((I+sky)*gain/r) + N(0,sqrt(dark*t/r)) + N(0,RON); out = "
                           + (outScale == .long ? "e_short*r/gain - sky (long-exposure level)" : "e_short/gain - sky/r (short-exposure level)")
                           + (clip ? "; negatives clipped" : ""))
            keywords += [("ACNNNOIS", .string("poisson"), "noise model"),
                         ("ACNNRATI", .float(r), "exposure-time ratio t_long/t_short"),
                         ("ACNNGAIN", .float(g), "[e-/unit] gain used"),
                         ("ACNNRON", .float(ron), "[e-] read noise used"),
                         ("ACNNDARK", .float(dark), "[e-/px/h] dark current used"),
                         ("ACNNSKY", .float(skyLevel), "sky level added back for the noise"),
                         ("ACNNSCAL", .string(outScale.rawValue), "output level: long or short exposure")]
        case "gaussian":
            guard ratio == nil else { throw ValidationError("--ratio is for --noise poisson") }
            let level: GaussianNoise.Level
            switch (sigma, sigmaSky) {
            case (let s?, nil): guard s >= 0, s.isFinite else { throw ValidationError("--sigma must be >= 0") }; level = .absolute(s)
            case (nil, let k?): guard k >= 0, k.isFinite else { throw ValidationError("--sigma-sky must be >= 0") }; level = .skyMultiple(k)
            default: throw ValidationError("--noise gaussian needs exactly one of --sigma S or --sigma-sky K")
            }
            let model = GaussianNoise(level)
            let s = model.sigma(for: truth)
            guard s.isFinite else { throw ValidationError("\(input): the sky noise cannot be measured") }
            degraded = GaussianNoise(.absolute(s)).apply(truth, seed: seed, threads: threads)
            history.append("Gaussian noise \(model.description): sigma \(s) in image units")
            keywords += [("ACNNNOIS", .string("gaussian"), "noise model"), ("ACNNSIGM", .float(s), "noise sigma, image units")]
        case "none":
            guard psfKernel != nil else { throw ValidationError("--noise none without --psf would copy the input") }
            degraded = truth
        default:
            throw ValidationError("--noise must be poisson, gaussian or none")
        }
        history.append("Command: astrocnn " + CommandLine.arguments.dropFirst().joined(separator: " "))
        try FITSIO.writeImage(path: output, width: fits.width, height: fits.height, pixels: degraded.pixels.map { Float($0) },
                              headerCards: fits.headerCards, provenance: .init(keywords: keywords, history: history), overwrite: overwrite)
        print("degrade: \(fits.width)x\(fits.height) -> \(output)")
        for h in history.dropFirst().dropLast() { print("  " + h) }
    }
}
