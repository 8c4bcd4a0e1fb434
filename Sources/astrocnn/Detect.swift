import ArgumentParser
import Evaluation
import Foundation
import Imaging
import ModelFormat
import Reporting
import Runtime

struct Detect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detect sources and measure aperture fluxes in a FITS image, as SExtractor/sep do.",
        discussion: """
        Background and RMS maps on a mesh (--back-size, median filter --back-filter, bicubic splines), \
        detection of pixels whose filtered value exceeds --thresh times the RMS, 8-connected grouping, \
        --minarea, multi-threshold deblending and cleaning, then circular-aperture photometry with exact \
        pixel overlap at each barycentre. Matches sep 1.4.1 (Background, extract with err=rms and \
        filter_type='conv', sum_circle with subpix=0). The CSV has 0-based pixel coordinates (pixel \
        centres at integers, FITS row 1 = y 0) in sep's order.
        """)

    @Argument(help: "Input FITS file (cfitsio extended syntax allowed).")
    var input: String

    @Option(help: "HDU to read: index (0 = primary) or EXTNAME. Default: the first HDU holding an image.")
    var hdu: String?

    @Option(help: "Detection threshold in units of the background RMS.") var thresh: Double = 5
    @Option(help: "Minimum number of pixels of a source.") var minarea: Int = 5
    @Option(help: "Photometry aperture radius in pixels.") var aperture: Double = 5
    @Option(help: "Background mesh size in pixels.") var backSize: Int = 64
    @Option(help: "Median filter size of the background mesh grid.") var backFilter: Int = 3
    @Flag(help: "No detection filter (default: the 3x3 kernel [[1,2,1],[2,4,2],[1,2,1]]).") var noFilter = false
    @Option(help: "Number of deblending thresholds.") var deblendNthresh: Int = 32
    @Option(help: "Minimum flux fraction of a deblended branch.") var deblendCont: Double = 0.005
    @Flag(help: "No cleaning of spurious detections near bright sources.") var noClean = false
    @Option(help: "Gain in e-/ADU for the Poisson term of flux errors (default: no Poisson term).") var gain: Double?
    @Option(help: "Output CSV (x,y,flux,flux_err,snr,npix,peak,flags), written atomically.") var csv: String
    @Option(help: "Also write a DS9 region file of circles of the aperture radius.") var regions: String?
    @Option(help: "Also write a PNG preview: asinh stretch with the apertures drawn.") var preview: String?
    @Option(help: "Worker threads for background and photometry (default: all cores).") var threads: Int?

    func run() throws {
        if let t = threads, t < 1 { throw failure("--threads must be at least 1") }
        guard thresh.isFinite, thresh > 0 else { throw failure("--thresh must be positive") }
        guard minarea >= 1 else { throw failure("--minarea must be at least 1") }
        guard aperture.isFinite, aperture > 0 else { throw failure("--aperture must be positive") }
        guard backSize >= 1 else { throw failure("--back-size must be at least 1") }
        guard backFilter >= 1 else { throw failure("--back-filter must be at least 1") }
        guard deblendNthresh >= 1 else { throw failure("--deblend-nthresh must be at least 1") }
        guard deblendCont.isFinite, deblendCont >= 0 else { throw failure("--deblend-cont must be >= 0") }
        if let g = gain, !(g.isFinite && g > 0) { throw failure("--gain must be positive") }
        do {
            for path in [csv] + [regions, preview].compactMap({ $0 }) { try AtomicFile.checkWritable(path, overwrite: true) }
            let start = Date()
            let fits = try FITSIO.readImage(path: input, hdu: hdu)
            var px = [Double](repeating: 0, count: fits.pixels.count)
            for i in 0..<px.count { px[i] = fits.invalid[i] ? .nan : Double(fits.pixels[i]) }
            let image = Image2D(height: fits.height, width: fits.width, pixels: px)
            var o = DetectionOptions()
            o.threshold = thresh; o.minArea = minarea; o.apertureRadius = aperture
            o.backSize = backSize; o.backFilterSize = backFilter
            o.filter = noFilter ? nil : o.filter
            o.deblendThresholds = deblendNthresh; o.deblendContrast = deblendCont
            o.clean = !noClean; o.gain = gain
            let r = try SourceDetector.detect(image, mask: fits.invalid, options: o, threads: threads ?? ParallelFor.availableCores)
            let seconds = Date().timeIntervalSince(start)
            var text = "x,y,flux,flux_err,snr,npix,peak,flags\n"
            for s in r.sources {
                text += "\(s.x),\(s.y),\(s.flux),\(s.fluxErr),\(s.snr),\(s.npix),\(s.peak),\(s.flags)\n"
            }
            try AtomicFile.write(Array(text.utf8), to: csv, overwrite: true)
            if let reg = regions {
                // DS9 image coordinates are 1-based.
                var t = "# Region file format: DS9 version 4.1\nimage\n"
                for s in r.sources { t += String(format: "circle(%.4f,%.4f,%.4f)\n", s.x + 1, s.y + 1, aperture) }
                try AtomicFile.write(Array(t.utf8), to: reg, overwrite: true)
            }
            if let png = preview { try drawPreview(fits, r.sources, radius: aperture).write(to: png) }
            print(String(format: "%d sources in %@ (%dx%d, %d invalid pixels): global background %.6g, RMS %.6g, %.2f s -> %@",
                         r.sources.count, input, fits.width, fits.height, fits.invalidCount, r.background.globalLevel,
                         r.background.globalRMS, seconds, csv))
        } catch let e as ExitCode {
            throw e
        } catch let e as FITSError {
            throw failure(describe(e))
        } catch {
            throw failure("\(input): \(describe(error))")
        }
    }

    /// The image on an asinh stretch (FITS row 0 at the bottom) with a red circle per source.
    func drawPreview(_ fits: FITSImage, _ sources: [DetectedSource], radius: Double, maxSide: Int = 1200) -> Canvas {
        let w = fits.width, h = fits.height
        let scale = max(1, (max(w, h) + maxSide - 1) / maxSide)
        let cw = max(1, w / scale), ch = max(1, h / scale)
        var c = Canvas(width: cw, height: ch, background: .black)
        let grey = Preview.asinhStretch(fits.pixels, reference: fits.pixels)
        for y in 0..<ch {
            for x in 0..<cw {
                let v = grey[(h - 1 - y * scale) * w + x * scale]
                c.set(x, y, RGB(v, v, v))
            }
        }
        let red = RGB(230, 40, 40)
        let rr = max(2, radius / Double(scale))
        for s in sources {
            let cx = s.x / Double(scale), cy = Double(ch - 1) - s.y / Double(scale)
            let steps = max(16, Int(2 * Double.pi * rr * 1.5))
            for k in 0..<steps {
                let t = 2 * Double.pi * Double(k) / Double(steps)
                c.set(Int((cx + rr * cos(t)).rounded()), Int((cy + rr * sin(t)).rounded()), red)
            }
        }
        return c
    }
}
