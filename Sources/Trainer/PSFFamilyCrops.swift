import Foundation
import Imaging
import ModelFormat
import Runtime

/// Training crops for a PSF-aware deconvolution U-net (`deconv-psf`, issue 24; Tikhonet, Sureau,
/// Lechat & Starck 2020): every crop has its own PSF, noise level and Wiener regularisation, drawn
/// from `family` with the crop's seed, so one network learns to correct the Wiener step for any
/// member of the family at any noise level. For one crop:
///
/// 1. a square of the max-normalised truth (negatives clipped, as `Degradation.normalise`), of
///    side crop + 2 (context + PSF half-side), in one of the 8 orientations;
/// 2. blurred by the drawn PSF (exact 'valid' convolution, by FFT), plus Gaussian noise of the
///    drawn sigma: the (crop + 2 context)^2 observation the model's Wiener step sees;
/// 3. put in `noise_mad` units fitted on that observation (`Normalization.fit`, as `restore`
///    fits the whole image);
/// 4. deconvolved by `WienerDeconvolution` (the runtime's own step) with the PSF and the GCV lambda
///    times the drawn jitter; the central crop^2 is the network input (the model's Wiener step is
///    removed for training: `Model.withoutInputStep`), the truth's central crop^2 in the same
///    units the target.
///
/// Each sample's loss is weighted by 1 / (the mean squared error of its Wiener input + 0.1, in
/// noise units), so the loss is the network's squared error relative to the Wiener step's, crop
/// by crop: a nearly noiseless crop counts as much as a noisy one (in peak units the noisy crops
/// would drown the noiseless ones; in noise units the reverse); the 0.1 keeps crops the Wiener
/// step already restores below a third of the noise from dominating. With a bias-free network
/// (positively homogeneous) the weighted loss does not depend on the crop's scale at all. A
/// validation loss below about 1 means the network improves on its own input.
public final class PSFFamilyCropSampler: CropSource {
    public let cropSize: Int
    public let family: PSFFamily
    /// The model's Wiener context (pixels each side of the crop the step sees).
    public let context: Int
    let names: [String]
    let checksums: [UInt32]
    /// Max-normalised truths.
    let truths: [Image2D]
    let validation: Bool
    let threads: Int
    private var relativeScales: [Key: Double] = [:]
    private let lock = NSLock()

    struct Key: Hashable { let image: Int, variant: Int, y: Int, x: Int, seed: UInt64 }

    /// The side of the truth square one crop needs.
    public var regionSide: Int { cropSize + 2 * (context + family.side / 2) }

    public init(images: [SourceImage], family: PSFFamily, context: Int, cropSize: Int, validation: Bool, threads: Int = 1) throws {
        guard !images.isEmpty else { throw TrainingError.data(validation ? "no validation images" : "no training images") }
        self.cropSize = cropSize
        self.family = family
        self.context = context
        self.validation = validation
        self.threads = max(1, threads)
        names = images.map(\.name)
        checksums = images.map(\.checksum)
        truths = images.map { Degradation.normalise($0.raw) }
        let side = cropSize + 2 * (context + family.side / 2)
        for (im, t) in zip(images, truths) {
            if t.height < side || t.width < side {
                throw TrainingError.data("\(im.name): \(t.width)x\(t.height) is smaller than the \(side)-pixel squares the crops are cut from")
            }
            if t.maximum <= 0 { throw TrainingError.data("\(im.name): no positive pixel") }
        }
    }

    public var imageList: String {
        zip(names, zip(checksums, truths)).map { n, ct in "\(n) (crc32c \(checksumString(ct.0)), \(ct.1.width)x\(ct.1.height))" }
            .joined(separator: "; ") + "; family \(family); context \(context)"
    }
    public var sampleParameter: String? { nil }
    public var referenceLossScale: Double? { 1 }
    public var assumedNoiseElectrons: Double? { nil }

    /// Images drawn with equal probability (by area, the nine 2600² KiDS/VIKING bands of the
    /// training set would be 91% of the crops and the other instruments rarely seen); positions
    /// uniform; orientation uniform; the noise seed fixes the PSF, noise and lambda jitter.
    public func plan(count: Int, seed: UInt64, stream: UInt64) -> [CropSpec] {
        var g = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 ^ stream &+ (validation ? 0x5A11D : 0))
        let side = regionSide
        return (0..<count).map { _ in
            let i = Int(g.next() % UInt64(truths.count))
            let t = truths[i]
            let y = Int(g.next() % UInt64(t.height - side + 1)), x = Int(g.next() % UInt64(t.width - side + 1))
            return CropSpec(image: i, variant: Int(g.next() % 8), y: y, x: x, ratio: 1, noiseSeed: g.next())
        }
    }

    /// One sample: (network input, target, mean squared error of the input against the target).
    public func sample(_ sp: CropSpec) -> (input: [Float], target: [Float], wienerMSE: Double, member: PSFFamily.Member, sigma: Double) {
        var g = SplitMix64(seed: sp.noiseSeed)
        let (member, sigma, lambdaFactor) = family.draw(&g)
        let k = family.side, h = k / 2
        let side = regionSide
        let truth = truths[sp.image].crop(y: sp.y, x: sp.x, height: side, width: side).dihedral(sp.variant)
        // Blur: circular convolution on the side^2 grid (2-3-5 smooth or not, FFTPlan takes any
        // length); the outputs at least h from the edges are exact 'valid' values.
        let psf = member.kernel(side: k)
        var f = ComplexImage(height: side, width: side)
        f.re = truth.pixels
        f.transform(inverse: false)
        var t = ComplexImage(height: side, width: side)
        for u in 0..<k { for v in 0..<k {
            t.re[((u - h + side) % side) * side + (v - h + side) % side] += psf.pixels[u * k + v]
        } }
        t.transform(inverse: false)
        for i in 0..<(side * side) {
            let (a, b, c, d) = (f.re[i], f.im[i], t.re[i], t.im[i])
            f.re[i] = a * c - b * d; f.im[i] = a * d + b * c
        }
        f.transform(inverse: true)
        let o = side - 2 * h, scale = 1 / Double(side * side)
        var observed = [Float](repeating: 0, count: o * o)
        for y in 0..<o { for x in 0..<o {
            observed[y * o + x] = Float(f.re[(y + h) * side + x + h] * scale + sigma * NoiseStreams.normal(&g))
        } }
        let norm = Normalization.fit(.noiseMAD, pixels: observed, invalid: [Bool](repeating: false, count: observed.count), width: o)
        let off = Float(norm.offset), inv = Float(1 / norm.scale)
        for i in observed.indices { observed[i] = (observed[i] - off) * inv }
        // The PSF the crop is deconvolved with: the blur's, or a perturbed one (a measured PSF's errors).
        let used = family.psfError > 0 ? family.deconvolutionMember(member, &g).kernel(side: k) : psf
        let kernel = try! PSFKernel(height: k, width: k, values: used.pixels)
        let w = WienerDeconvolution.apply(observed, height: o, width: o, psf: kernel, lambdaFactor: lambdaFactor,
                                          noiseVariance: family.lambdaRule == .gcv ? nil : 1,
                                          noiseRule: family.lambdaRule == .risk ? .risk : .discrepancy).image
        let n = cropSize, c = context
        var input = [Float](repeating: 0, count: n * n), target = input
        var se = 0.0
        for y in 0..<n { for x in 0..<n {
            let v = w[(y + c) * o + x + c]
            let tv = (Float(truth.pixels[(y + c + h) * side + x + c + h]) - off) * inv
            input[y * n + x] = v; target[y * n + x] = tv
            se += Double(v - tv) * Double(v - tv)
        } }
        return (input, target, se / Double(n * n), member, sigma)
    }

    public func fill(_ specs: ArraySlice<CropSpec>, inputs: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Float>) {
        let list = Array(specs), n = cropSize * cropSize
        nonisolated(unsafe) let ip = inputs, tp = targets
        var mses = [Double](repeating: 0, count: list.count)
        mses.withUnsafeMutableBufferPointer { mb in
            nonisolated(unsafe) let m = mb.baseAddress!
            ParallelFor.run(list.count, threads: min(threads, list.count)) { i in
                let s = self.sample(list[i])
                (ip + i * n).update(from: s.input, count: n)
                (tp + i * n).update(from: s.target, count: n)
                m[i] = s.wienerMSE
            }
        }
        lock.lock()
        if relativeScales.count > 4096 { relativeScales.removeAll() }
        for (sp, m) in zip(list, mses) {
            relativeScales[Key(image: sp.image, variant: sp.variant, y: sp.y, x: sp.x, seed: sp.noiseSeed)] = Self.scale(m)
        }
        lock.unlock()
    }

    /// 1 / RMS error of each sample's Wiener input (after `fill` made it; recomputed otherwise).
    public func lossScales(_ specs: ArraySlice<CropSpec>) -> [Double]? {
        specs.map { sp in
            lock.lock()
            let v = relativeScales[Key(image: sp.image, variant: sp.variant, y: sp.y, x: sp.x, seed: sp.noiseSeed)]
            lock.unlock()
            return v ?? Self.scale(sample(sp).wienerMSE)
        }
    }

    /// The loss scale of a sample whose Wiener input has this mean squared error (noise units).
    static func scale(_ wienerMSE: Double) -> Double { 1 / (wienerMSE + 0.1).squareRoot() }
}
