import Foundation
import ModelFormat
import Runtime
import Imaging

/// Where a sample comes from: image, symmetry variant, top-left corner, noise seed.
public struct SampleSpec: Equatable, Sendable {
    public var image: Int
    public var variant: Int
    public var y: Int
    public var x: Int
    public var noiseSeed: UInt64
}

/// Draws (degraded input, clean target) patch pairs as Flamary 2017 does: an `inputSize` square
/// of the observed image and the `outputSize` square of the truth at offset
/// (inputSize - outputSize + 1) / 2 (9 for 32 -> 14).
///
/// Each image is normalised, then split: the bottom `validationFraction` of its rows is the
/// validation region, the rest the training region (patches never straddle the cut). With
/// augmentation every image is used in its 8 orientations (rotations by 90 degrees and flips,
/// applied to the truth *before* blurring so the blur stays the paper's operator), and every
/// sample gets its own noise draw; without, one orientation and one fixed noise draw per image
/// (the paper's setting).
public final class PatchSampler: @unchecked Sendable {
    public let images: [SourceImage]
    public let degradation: Degradation
    public let augment: Bool
    public let validationFraction: Double
    let truths: [[[Float]]]      // [image][variant] pixels
    let blurred: [[[Float]]]
    let fixedNoise: [[[Float]]]  // without augmentation, Gaussian noise: [image][0] the one noise draw
    let fixedObserved: [[[Float]]]  // without augmentation, Poisson noise: [image][0] the one observation
    /// The robust sky sigma of each image in normalised units (`Degradation.skySigma(raw:)`;
    /// 0 unless the noise is sky-relative).
    public let skySigmas: [Double]
    let sizes: [[(h: Int, w: Int)]]
    let trainBoxes: [[(y0: Int, y1: Int, x0: Int, x1: Int)]]
    let valBoxes: [[(y0: Int, y1: Int, x0: Int, x1: Int)]]

    public var variants: Int { augment ? 8 : 1 }

    public init(images: [SourceImage], degradation: Degradation, augment: Bool, validationFraction: Double = 0.2,
                noiseSeed: UInt64 = 1, threads: Int = 1) {
        self.images = images
        self.degradation = degradation
        self.augment = augment
        self.validationFraction = validationFraction
        let nv = augment ? 8 : 1
        var t: [[[Float]]] = [], b: [[[Float]]] = [], fn: [[[Float]]] = [], fo: [[[Float]]] = [], sz: [[(h: Int, w: Int)]] = []
        var skies: [Double] = []
        var tb: [[(y0: Int, y1: Int, x0: Int, x1: Int)]] = [], vb: [[(y0: Int, y1: Int, x0: Int, x1: Int)]] = []
        for (ii, img) in images.enumerated() {
            let truth = Degradation.normalise(img.raw)
            let skySigma = degradation.referenceSigma(raw: img.raw)
            skies.append(skySigma)
            let cut = Int((Double(truth.height) * (1 - validationFraction)).rounded())
            var regionMask = Image2D(height: truth.height, width: truth.width)
            for y in 0..<cut { for x in 0..<truth.width { regionMask[y, x] = 1 } }
            var tv: [[Float]] = [], bv: [[Float]] = [], s: [(h: Int, w: Int)] = []
            var tbv: [(y0: Int, y1: Int, x0: Int, x1: Int)] = [], vbv: [(y0: Int, y1: Int, x0: Int, x1: Int)] = []
            for v in 0..<nv {
                let tr = truth.dihedral(v)
                let bl = degradation.blur(tr, threads: threads)
                tv.append(tr.pixels.map(Float.init)); bv.append(bl.pixels.map(Float.init)); s.append((tr.height, tr.width))
                let m = regionMask.dihedral(v)
                tbv.append(PatchSampler.box(m, 1)); vbv.append(PatchSampler.box(m, 0))
            }
            // Without augmentation: one noise draw per image, at one level drawn from its seed.
            // Additive (Gaussian) noise is drawn on zeros and added to the Float blur, as the
            // paper path always did; Poisson noise depends on the signal and is applied to it.
            fn.append([]); fo.append([])
            if !augment {
                let seed = noiseSeed &+ UInt64(ii)
                switch degradation.level(seed: seed, skySigma: skySigma) {
                case .poisson:
                    let blurredImage = Image2D(height: s[0].h, width: s[0].w, pixels: bv[0].map(Double.init))
                    fo[ii] = [degradation.addNoise(blurredImage, seed: seed, skySigma: skySigma, threads: threads).pixels.map(Float.init)]
                case .gaussian, .none:
                    fn[ii] = [degradation.addNoise(Image2D(height: s[0].h, width: s[0].w), seed: seed, skySigma: skySigma).pixels.map(Float.init)]
                }
            }
            t.append(tv); b.append(bv); sz.append(s); tb.append(tbv); vb.append(vbv)
        }
        (truths, blurred, fixedNoise, fixedObserved, sizes, trainBoxes, valBoxes) = (t, b, fn, fo, sz, tb, vb)
        skySigmas = skies
    }

    static func box(_ m: Image2D, _ value: Double) -> (y0: Int, y1: Int, x0: Int, x1: Int) {
        var (y0, y1, x0, x1) = (Int.max, -1, Int.max, -1)
        for y in 0..<m.height { for x in 0..<m.width where m[y, x] == value {
            y0 = min(y0, y); y1 = max(y1, y + 1); x0 = min(x0, x); x1 = max(x1, x + 1)
        } }
        return (y0, y1, x0, x1)
    }

    /// Whether every image's regions hold at least one patch of `size` (and, for sky-relative
    /// noise, has a measurable sky noise).
    public func check(inputSize size: Int) throws {
        for (i, img) in images.enumerated() {
            if degradation.needsSkySigma && !(skySigmas[i] > 0 && skySigmas[i].isFinite) {
                throw TrainingError.data("\(img.name): no measurable sky noise (robust sigma \(skySigmas[i])) for --noise \(degradation.noise); use gaussian:sigma=S")
            }
            for box in [trainBoxes[i][0], valBoxes[i][0]] where box.y1 - box.y0 < size || box.x1 - box.x0 < size {
                throw TrainingError.data("\(img.name): \(sizes[i][0].h)x\(sizes[i][0].w) is too small for \(size)-pixel patches in both the training and the validation region")
            }
        }
    }

    /// The samples of one epoch (or the validation set), a pure function of (seed, stream).
    public func plan(count: Int, validation: Bool, seed: UInt64, stream: UInt64) -> [SampleSpec] {
        var rng = SplitMix64(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15) ^ (validation ? 0x5A5A_5A5A : 0))
        return (0..<count).map { _ in
            let i = Int(rng.next() % UInt64(images.count))
            let v = Int(rng.next() % UInt64(variants))
            let box = validation ? valBoxes[i][v] : trainBoxes[i][v]
            let size = currentInputSize
            let y = box.y0 + Int(rng.next() % UInt64(box.y1 - box.y0 - size + 1))
            let x = box.x0 + Int(rng.next() % UInt64(box.x1 - box.x0 - size + 1))
            return SampleSpec(image: i, variant: v, y: y, x: x, noiseSeed: rng.next())
        }
    }

    /// Patch sizes used by `plan` and `fill`.
    public var currentInputSize = 32
    public var currentOutputSize = 14

    /// Writes the samples' inputs (inputSize^2 each) and targets (outputSize^2 each).
    public func fill(_ specs: ArraySlice<SampleSpec>, inputs: UnsafeMutablePointer<Float>, targets: UnsafeMutablePointer<Float>) {
        let s = currentInputSize, o = currentOutputSize
        let off = (s - o + 1) / 2
        for (k, sp) in specs.enumerated() {
            let w = sizes[sp.image][sp.variant].w
            let b = blurred[sp.image][sp.variant], t = truths[sp.image][sp.variant]
            let ip = inputs + k * s * s, tp = targets + k * o * o
            if augment {
                // Each sample its own noise level (drawn from its seed when the spec is a range)
                // and its own draw; a fixed Gaussian sigma is the paper path exactly.
                switch degradation.level(seed: sp.noiseSeed, skySigma: skySigmas[sp.image]) {
                case .gaussian(let sigma):
                    var g = GaussianStream(seed: sp.noiseSeed)
                    for i in 0..<s { for j in 0..<s { ip[i * s + j] = Float(Double(b[(sp.y + i) * w + sp.x + j]) + sigma * g.next()) } }
                case .poisson(let e, let r, let sky):
                    let model = ExposureNoise(ratio: 1, gain: e, readNoise: r, sky: sky)
                    var rng = SplitMix64(seed: sp.noiseSeed)
                    for i in 0..<s { for j in 0..<s { ip[i * s + j] = Float(model.sample(Double(b[(sp.y + i) * w + sp.x + j]), &rng)) } }
                case .none:
                    for i in 0..<s { for j in 0..<s { ip[i * s + j] = b[(sp.y + i) * w + sp.x + j] } }
                }
            } else if let o = fixedObserved[sp.image].first {
                for i in 0..<s { for j in 0..<s { ip[i * s + j] = o[(sp.y + i) * w + sp.x + j] } }
            } else {
                let n = fixedNoise[sp.image][0]
                for i in 0..<s { for j in 0..<s { let q = (sp.y + i) * w + sp.x + j; ip[i * s + j] = b[q] + n[q] } }
            }
            for i in 0..<o { for j in 0..<o { tp[i * o + j] = t[(sp.y + off + i) * w + sp.x + off + j] } }
        }
    }
}

public enum TrainingError: Error, CustomStringConvertible {
    case data(String)
    case model(String)
    case checkpoint(String)
    public var description: String {
        switch self {
        case .data(let s): return "training data: \(s)"
        case .model(let s): return "model: \(s)"
        case .checkpoint(let s): return "checkpoint: \(s)"
        }
    }
}
