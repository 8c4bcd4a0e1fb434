import Foundation
import Imaging
import ModelFormat
import Runtime

/// One real image as a long exposure for denoiser training, with the detector parameters its
/// short exposures are simulated with (the ratio is chosen per sample).
public struct LongExposure: Sendable {
    public var image: SourceImage
    /// Electrons per image unit, read noise (e-), subtracted sky (image units).
    public var gain: Double
    public var readNoise: Double
    public var sky: Double
    public init(image: SourceImage, gain: Double, readNoise: Double = 0, sky: Double = 0) {
        (self.image, self.gain, self.readNoise, self.sky) = (image, gain, readNoise, sky)
    }

    /// The noise model at ratio `r`.
    public func noise(ratio r: Double, clipNegative: Bool = false) -> ExposureNoise {
        ExposureNoise(ratio: r, gain: gain, readNoise: readNoise, sky: sky, clipNegative: clipNegative)
    }
}

/// Where a denoising sample comes from: image, symmetry, top-left corner, exposure ratio and
/// noise seed.
public struct CropSpec: Equatable, Sendable {
    public var image: Int
    public var variant: Int
    public var y: Int
    public var x: Int
    public var ratio: Double
    public var noiseSeed: UInt64
}

/// Draws (short exposure, long exposure) crop pairs as the Astro U-net paper trains: random
/// `cropSize` squares of the real images (in one of 8 orientations), the short exposure made on
/// the fly with the paper's noise model at a ratio drawn from `ratios`, both in the network's
/// units. Crops with almost nothing in them (fewer than `minimumSourceFraction` of their pixels
/// 5 sigma above the sky) are redrawn, up to 100 times, as the authors' code skips empty crops.
///
/// Units: the `sky_mad` rule that `restore` applies to its input, (pixel - sky) / sigma, with the
/// sky median and noise of the whole simulated short exposure of the image at that ratio (measured
/// once per image and ratio on a regular subsample, exactly as `RobustSky` measures a full image),
/// applied to both the input and the target, so the network's output inverts the same way. With
/// `sky_vst`, both are then variance-stabilised with q = the short exposure's sky noise in
/// electrons (its sky sigma x gain / ratio), as `restore` does with the input's gain.
public final class CropSampler: @unchecked Sendable {
    public let images: [LongExposure]
    public let ratios: [Double]
    public let cropSize: Int
    public let minimumSourceFraction: Double
    public let clipNegative: Bool
    public let normalization: Normalization.Kind
    /// Brightness augmentation: half of the crops (chosen by their noise seed) have the long
    /// exposure's signal above its sky median multiplied by a factor drawn log-uniformly in
    /// [1, brightnessBoost] before the short exposure is drawn, so sources are seen at signal-to-
    /// noise ratios up to that factor higher than the images have (the sky and its noise stay);
    /// 1 = off.
    public let brightnessBoost: Double
    /// Recorrupted targets (Pang et al. 2021, "recorrupted-to-recorrupted"), alpha > 0; 0 = off.
    /// The long exposure's own noise (sky sigma s, taken as white and Gaussian) is otherwise in
    /// both the input (the short exposure is drawn from it) and the target, so the network learns
    /// to keep it. With z ~ N(0, s^2) per pixel, the short exposure is drawn from long + alpha z
    /// and the target is long - z / alpha: the two noises are then uncorrelated (independent for
    /// Gaussian noise), and the loss's minimiser is the noiseless sky, not the long exposure.
    public let recorruption: Double
    let sizes: [(h: Int, w: Int)]
    /// [image][ratio index] -> (sky median, sky sigma, sky noise in electrons) of the short exposure.
    public let units: [[(offset: Double, scale: Double, noiseElectrons: Double)]]
    /// [image] -> sky median and sigma of the long exposure (for the empty-crop test).
    let longSky: [(median: Double, sigma: Double)]

    public init(images: [LongExposure], ratios: [Double], cropSize: Int, minimumSourceFraction: Double = 0.002,
                clipNegative: Bool = false, normalization: Normalization.Kind = .skyMAD, brightnessBoost: Double = 1,
                recorruption: Double = 0, seed: UInt64 = 1) throws {
        guard brightnessBoost >= 1, brightnessBoost.isFinite else { throw TrainingError.data("the brightness boost must be >= 1") }
        guard recorruption >= 0, recorruption.isFinite else { throw TrainingError.data("the recorruption factor must be >= 0") }
        self.brightnessBoost = brightnessBoost
        self.recorruption = recorruption
        guard normalization == .skyMAD || normalization == .skyVST else {
            throw TrainingError.model("denoiser crops are in sky_mad or sky_vst units, not \(normalization.rawValue)")
        }
        self.normalization = normalization
        guard !images.isEmpty else { throw TrainingError.data("no training images") }
        guard !ratios.isEmpty, ratios.allSatisfy({ $0 >= 1 && $0.isFinite }) else { throw TrainingError.data("exposure ratios must be >= 1") }
        (self.images, self.ratios, self.cropSize) = (images, ratios, cropSize)
        (self.minimumSourceFraction, self.clipNegative) = (minimumSourceFraction, clipNegative)
        sizes = images.map { ($0.image.raw.height, $0.image.raw.width) }
        for (i, im) in images.enumerated() {
            guard sizes[i].h >= cropSize && sizes[i].w >= cropSize else {
                throw TrainingError.data("\(im.image.name): \(sizes[i].w)x\(sizes[i].h) is smaller than the \(cropSize)-pixel crops")
            }
            if let p = im.noise(ratio: ratios[0]).problem { throw TrainingError.data("\(im.image.name): \(p)") }
        }
        var u: [[(offset: Double, scale: Double, noiseElectrons: Double)]] = []
        var ls: [(median: Double, sigma: Double)] = []
        for (i, im) in images.enumerated() {
            let raw = im.image.raw
            let l = RobustSky.estimate(count: raw.count) { raw.pixels[$0] }
            ls.append((l.median, l.sigma))
            var row: [(offset: Double, scale: Double, noiseElectrons: Double)] = []
            for (k, r) in ratios.enumerated() {
                // The short exposure of the pixels RobustSky would read, each drawn from its own
                // stream (seeded by image, ratio and index).
                let model = im.noise(ratio: r, clipNegative: clipNegative)
                let s = RobustSky.estimate(count: raw.count) { j in
                    let v = raw.pixels[j]
                    guard v.isFinite else { return nil }
                    var g = NoiseStreams.row(j, seed: seed ^ (UInt64(i) << 40) ^ (UInt64(k) << 32))
                    return model.sample(v, &g)
                }
                let scale = s.sigma > 0 && s.sigma.isFinite ? s.sigma : 1
                row.append((s.median.isFinite ? s.median : 0, scale, scale * model.outputGain))
            }
            u.append(row)
        }
        (units, longSky) = (u, ls)
    }

    /// Samples of one epoch (or the validation set): a pure function of (seed, stream).
    public func plan(count: Int, seed: UInt64, stream: UInt64) -> [CropSpec] {
        var rng = SplitMix64(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15) ^ 0xC209_5EED)
        return (0..<count).map { _ in
            let i = Int(rng.next() % UInt64(images.count))
            let v = Int(rng.next() % 8)
            let r = ratios[Int(rng.next() % UInt64(ratios.count))]
            var (y, x) = (0, 0)
            for attempt in 0..<100 {
                y = Int(rng.next() % UInt64(sizes[i].h - cropSize + 1))
                x = Int(rng.next() % UInt64(sizes[i].w - cropSize + 1))
                if attempt == 99 || !isEmpty(i, y, x) { break }
            }
            return CropSpec(image: i, variant: v, y: y, x: x, ratio: r, noiseSeed: rng.next())
        }
    }

    /// Whether fewer than `minimumSourceFraction` of the crop's pixels stand 5 sigma above the
    /// long exposure's sky.
    func isEmpty(_ i: Int, _ y: Int, _ x: Int) -> Bool {
        let raw = images[i].image.raw
        let (med, sig) = longSky[i]
        guard sig > 0 else { return false }
        var n = 0, hit = 0
        for yy in y..<(y + cropSize) { for xx in x..<(x + cropSize) {
            n += 1
            if raw[yy, xx] > med + 5 * sig { hit += 1 }
        } }
        return Double(hit) < minimumSourceFraction * Double(n)
    }

    /// Writes the samples' inputs and targets (cropSize^2 each, network units) and returns each
    /// sample's exposure ratio (for the network's ratio channel).
    public func fill(_ specs: ArraySlice<CropSpec>, inputs: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Float>) {
        let s = cropSize
        for (k, sp) in specs.enumerated() {
            let raw = images[sp.image].image.raw
            let model = images[sp.image].noise(ratio: sp.ratio, clipNegative: clipNegative)
            let ri = ratios.firstIndex(of: sp.ratio) ?? 0
            let (offset, scale, q) = units[sp.image][ri]
            let inv = 1 / scale
            let vst = normalization == .skyVST
            let (boost, sky0) = (brightnessFactor(sp), longSky[sp.image].median)
            let alpha = recorruption, longSigma = longSky[sp.image].sigma
            let ip = inputs + k * s * s, tp = targets + k * s * s
            for i in 0..<s {
                var g = NoiseStreams.row(i, seed: sp.noiseSeed)
                var gz = NoiseStreams.row(i, seed: sp.noiseSeed ^ 0x2EC0_2217)
                for j in 0..<s {
                    // Orientation: output (i, j) reads the crop at the dihedral image of (i, j).
                    let (a, b) = CropSampler.dihedral(sp.variant, i, j, s)
                    var v = raw[sp.y + a, sp.x + b]
                    if !v.isFinite { v = offset }
                    if boost != 1 && v > sky0 { v = sky0 + (v - sky0) * boost }
                    var target = v
                    if alpha > 0 {
                        let z = longSigma * NoiseStreams.normal(&gz)
                        target = v - z / alpha
                        v += alpha * z
                    }
                    let t = (target - offset) * inv, x = (model.sample(v, &g) - offset) * inv
                    tp[i * s + j] = Float(vst ? Normalization.stabilise(t, q: q) : t)
                    ip[i * s + j] = Float(vst ? Normalization.stabilise(x, q: q) : x)
                }
            }
        }
    }

    /// The brightness factor of a crop (1 for the half left as they are).
    public func brightnessFactor(_ sp: CropSpec) -> Double {
        guard brightnessBoost > 1 else { return 1 }
        var g = SplitMix64(seed: sp.noiseSeed ^ 0xB0057)
        let pick = g.next(), u = Double(g.next() >> 11) / 9007199254740992
        return pick & 1 == 0 ? 1 : exp(u * log(brightnessBoost))
    }

    /// The source pixel of output (i, j) under symmetry `k` of an n x n square: `k & 3` quarter
    /// turns, then a left-right flip when `k & 4`.
    @inline(__always)
    static func dihedral(_ k: Int, _ i: Int, _ j: Int, _ n: Int) -> (Int, Int) {
        var (a, b) = (i, j)
        if k & 4 != 0 { b = n - 1 - b }
        for _ in 0..<(k & 3) { (a, b) = (b, n - 1 - a) }
        return (a, b)
    }
}
