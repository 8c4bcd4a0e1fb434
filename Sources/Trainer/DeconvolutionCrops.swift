import Foundation
import Imaging
import ModelFormat
import Runtime

/// A source of (input, target) crop pairs for the U-net trainer (`DenoiserSession`): the Astro
/// U-net's short/long exposures (`CropSampler`) or blurred/sharp pairs for deconvolution
/// (`DeconvolutionCropSampler`). Both give `cropSize`^2 inputs and targets in the network's units.
public protocol CropSource: AnyObject {
    var cropSize: Int { get }
    /// The images and what was derived from them, recorded in checkpoints (a resume needs the same).
    var imageList: String { get }
    /// The run-time parameter each sample sets from its spec's ratio ("exposure_ratio"), or nil.
    var sampleParameter: String? { get }
    /// The samples of one epoch (or the validation set): a pure function of (seed, stream).
    func plan(count: Int, seed: UInt64, stream: UInt64) -> [CropSpec]
    func fill(_ specs: ArraySlice<CropSpec>, inputs: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Float>)
    /// Each sample's unit of the network's values in the units the loss is meant in (the
    /// max-normalised truth's for deconvolution: the sky sigma of its image), or nil.
    func lossScales(_ specs: ArraySlice<CropSpec>) -> [Double]?
    /// The root mean square of the images' loss scales (the loss weights are relative to it).
    var referenceLossScale: Double? { get }
    /// `sky_vst`: the sky noise in electrons the model assumes for an input without a gain (the
    /// median over the images at the first ratio), or nil for the other rules.
    var assumedNoiseElectrons: Double? { get }
}

extension CropSampler: CropSource {
    public var imageList: String {
        images.map { "\($0.image.name) (crc32c \(checksumString($0.image.checksum)), \($0.image.raw.width)x\($0.image.raw.height), gain \($0.gain), RON \($0.readNoise), sky \($0.sky))" }
            .joined(separator: "; ")
    }
    public var sampleParameter: String? { "exposure_ratio" }
    public func lossScales(_ specs: ArraySlice<CropSpec>) -> [Double]? { nil }
    public var referenceLossScale: Double? { nil }
    public var assumedNoiseElectrons: Double? {
        guard normalization == .skyVST else { return nil }
        var q = units.map { $0[0].noiseElectrons }
        return SkyStatistics.median(&q)
    }
}

/// (degraded, sharp) crop pairs for a deconvolution U-net ('same' convolutions: the input and
/// target squares coincide). Each image is degraded as `Degradation` does (clip at 0, divide by
/// the maximum, blur by the PSF in each of its 8 orientations, so the blur stays the PSF's own
/// operator), every crop gets its own noise draw at a level drawn from its seed, and both input
/// and target are put in the units `restore` applies for the model's normalisation (`noise_mad`:
/// (pixel - sky median) / noise sigma; or `sky_mad`) fitted by `Normalization.fit` on the whole
/// degraded image as Float pixels, once per image (one noise draw at the level its index seeds;
/// for a noise range that is one level of the range).
///
/// Crops are not filtered: empty sky teaches the network that a dark sky stays dark.
public final class DeconvolutionCropSampler: CropSource {
    public let patches: PatchSampler
    public let cropSize: Int
    /// [image] -> (offset, scale) of the normalisation of the degraded image, in max-normalised units.
    public let units: [(offset: Double, scale: Double)]
    let validation: Bool

    /// `validation`: the whole of each image is the validation region of a held-out image (else
    /// the whole image trains).
    public init(images: [SourceImage], degradation: Degradation, cropSize: Int, validation: Bool,
                normalization: Normalization.Kind = .noiseMAD, seed: UInt64 = 1, threads: Int = 1) throws {
        guard normalization.isAffineInvariant else { throw TrainingError.model("deconvolution crops need an image-relative normalisation (noise_mad, sky_mad), not \(normalization.rawValue)") }
        guard !images.isEmpty else { throw TrainingError.data(validation ? "no validation images" : "no training images") }
        for im in images where im.raw.height < cropSize || im.raw.width < cropSize {
            throw TrainingError.data("\(im.name): \(im.raw.width)x\(im.raw.height) is smaller than the \(cropSize)-pixel crops")
        }
        for im in images { if let p = degradation.problem(raw: im.raw, name: im.name) { throw TrainingError.data(p) } }
        patches = PatchSampler(images: images, degradation: degradation, augment: true, validationFraction: validation ? 1 : 0,
                               noiseSeed: seed, threads: threads)
        patches.currentInputSize = cropSize
        patches.currentOutputSize = cropSize
        self.cropSize = cropSize
        self.validation = validation
        var u: [(offset: Double, scale: Double)] = []
        for (i, im) in images.enumerated() {
            let (_, observed) = degradation.degrade(im.raw, seed: seed ^ (UInt64(i) << 32) ^ 0xDEC0, threads: threads)
            let px = observed.pixels.map { Float($0) }
            let n = Normalization.fit(normalization, pixels: px, invalid: [Bool](repeating: false, count: px.count), width: observed.width)
            u.append((n.offset, n.scale))
        }
        units = u
    }

    public var sampleParameter: String? { nil }

    /// The scale of each sample's image (its noise sigma): one network unit in max-normalised units.
    public func lossScales(_ specs: ArraySlice<CropSpec>) -> [Double]? { specs.map { units[$0.image].scale } }

    public var referenceLossScale: Double? { (units.reduce(0) { $0 + $1.scale * $1.scale } / Double(units.count)).squareRoot() }
    public var assumedNoiseElectrons: Double? { nil }

    public var imageList: String {
        zip(patches.images, units).map { im, u in
            "\(im.name) (crc32c \(checksumString(im.checksum)), \(im.raw.width)x\(im.raw.height), sky \(String(format: "%.6g", u.offset)) sigma \(String(format: "%.6g", u.scale)))"
        }.joined(separator: "; ")
    }

    public func plan(count: Int, seed: UInt64, stream: UInt64) -> [CropSpec] {
        patches.plan(count: count, validation: validation, seed: seed, stream: stream).map {
            CropSpec(image: $0.image, variant: $0.variant, y: $0.y, x: $0.x, ratio: 1, noiseSeed: $0.noiseSeed)
        }
    }

    public func fill(_ specs: ArraySlice<CropSpec>, inputs: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Float>) {
        let n = cropSize * cropSize
        for (k, sp) in specs.enumerated() {
            let s = SampleSpec(image: sp.image, variant: sp.variant, y: sp.y, x: sp.x, noiseSeed: sp.noiseSeed)
            let ip = inputs + k * n, tp = targets + k * n
            patches.fill([s][...], inputs: ip, targets: tp)
            let (offset, scale) = units[sp.image]
            let o = Float(offset), inv = Float(1 / scale)
            for j in 0..<n {
                ip[j] = (ip[j] - o) * inv
                tp[j] = (tp[j] - o) * inv
            }
        }
    }
}
