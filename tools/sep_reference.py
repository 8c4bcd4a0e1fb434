#!/usr/bin/env python3
"""Reference values for Tests/EvaluationTests/DetectionTests.swift from sep (SExtractor as a library).

    pip install sep==1.4.1 numpy
    python3 tools/sep_reference.py > Tests/EvaluationTests/SepReference.generated.swift

Images are made in code: a sky with a gradient, Gaussian and Moffat (beta = 3) stars from an
explicit list, and noise from a splitmix64 generator (sum of 12 uniforms - 6), rounded to whole
ADU. Only the star lists, seeds and sep's outputs are written out; the Swift test renders the
same images with the same formulas (same order of double operations, so the same integers) and
checks a checksum of them first.

Optional comparison on a real FITS file with the output of `astrocnn detect`:

    astrocnn detect IMAGE.fits --csv swift.csv
    python3 tools/sep_reference.py --real IMAGE.fits --swift-csv swift.csv [--hdu N]

runs sep with the same settings (thresh 5, minarea 5, back size 64, filter 3, the 3x3 conv
filter, deblending 32/0.005, cleaning, aperture radius 5) and prints the counts, the fraction of
sources matched one-to-one within 1 px and the median position and flux differences.
"""
import math
import sys

import numpy as np
import sep

MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)

    def normal(self):
        s = 0.0
        for _ in range(12):
            s += self.uniform()
        return s - 6.0


def star_list(seed, w, h, n, pairs, faint):
    """(x, y, flux, kind, width): kind 0 = Gaussian (width = sigma), 1 = Moffat beta 3 (width = alpha)."""
    g = SplitMix64(seed)
    stars = []
    for _ in range(n):
        x = 4 + g.uniform() * (w - 8)
        y = 4 + g.uniform() * (h - 8)
        flux = 200.0 * math.exp(g.uniform() * math.log(300.0))
        kind = 0 if g.uniform() < 0.6 else 1
        width = 1.2 + 1.3 * g.uniform()
        stars.append((x, y, flux, kind, width))
    for _ in range(pairs):
        x = 12 + g.uniform() * (w - 24)
        y = 12 + g.uniform() * (h - 24)
        sep_px = 3.5 + 3.0 * g.uniform()
        ang = g.uniform() * 2 * math.pi
        f1 = 3000.0 + 9000.0 * g.uniform()
        f2 = f1 * (0.25 + 0.6 * g.uniform())
        stars.append((x, y, f1, 0, 1.4))
        stars.append((x + sep_px * math.cos(ang), y + sep_px * math.sin(ang), f2, 0, 1.4))
    for _ in range(faint):
        x = 5 + g.uniform() * (w - 10)
        y = 5 + g.uniform() * (h - 10)
        stars.append((x, y, 60.0 + 140.0 * g.uniform(), 0, 1.5))
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in s) for s in stars]


def render(w, h, sky, stars, noise_seed, sigma):
    """Pixel (x, y) = floor(sky + stars + noise + 0.5): the same formulas in DetectionTests.swift."""
    s0, sx, sy, sxx = sky
    g = SplitMix64(noise_seed)
    out = np.zeros((h, w), dtype=np.float32)
    for y in range(h):
        for x in range(w):
            v = s0 + sx * x + sy * y + sxx * (x - w / 2) * (x - w / 2)
            for (cx, cy, flux, kind, width) in stars:
                dx = x - cx
                dy = y - cy
                r2 = dx * dx + dy * dy
                if r2 > 225.0:
                    continue
                if kind == 0:
                    v += flux * math.exp(-r2 / (2 * width * width)) / (2 * math.pi * width * width)
                else:
                    q = 1 + r2 / (width * width)
                    v += flux * 2 / (math.pi * width * width) / (q * q * q)
            v += sigma * g.normal()
            out[y, x] = math.floor(v + 0.5)
    return out


def checksum(img):
    flat = img.astype(np.int64).ravel()
    return int(flat.sum()), int(((np.arange(flat.size, dtype=np.int64) % 1009 + 1) * flat).sum())


def holes(w, h):
    """NaN rectangles and masked rectangles (x0, y0, x1, y1 exclusive)."""
    nan_rects = [(20, 30, 29, 41), (100, 5, 140, 9), (150, 90, 156, 140)]
    mask_rects = [(60, 60, 75, 72), (0, 120, 12, 151), (170, 0, 187, 20)]
    return nan_rects, mask_rects


def fmt(v):
    v = float(v)
    return ".nan" if math.isnan(v) else repr(v)


def swift_doubles(name, vals, indent="        "):
    return f"{indent}static let {name}: [Double] = [{', '.join(fmt(v) for v in vals)}]\n"


def swift_ints(name, vals, indent="        "):
    return f"{indent}static let {name}: [Int] = [{', '.join(str(int(v)) for v in vals)}]\n"


def run_case(name, img, mask, bw, fw, thresh, minarea, use_filter, radius, gain, sample_step):
    data = img.copy()
    invalid = np.isnan(data)
    if mask is not None:
        invalid |= mask
    m = invalid.astype(np.float32)
    bkg = sep.Background(data, mask=m, bw=bw, bh=bw, fw=fw, fh=fw)
    back = bkg.back()
    rms = bkg.rms()
    sub = (data - back).astype(np.float32)
    kwargs = dict(err=rms, mask=m, minarea=minarea, filter_type="conv", deblend_nthresh=32,
                  deblend_cont=0.005, clean=True, clean_param=1.0)
    if not use_filter:
        kwargs["filter_kernel"] = None
    objs = sep.extract(sub, thresh, **kwargs)
    unclean = sep.extract(sub, thresh, **dict(kwargs, clean=False))
    flux, ferr, fflag = sep.sum_circle(sub, objs["x"], objs["y"], radius, err=rms, mask=m, gain=gain, subpix=0)
    h, w = img.shape
    ys, xs = np.mgrid[0:h:sample_step, 0:w:sample_step]
    xs = np.concatenate([xs.ravel(), [w - 1, w - 1, 0]])
    ys = np.concatenate([ys.ravel(), [h - 1, 0, h - 1]])
    # Extra apertures: near the edges and on holes.
    ax = [2.0, w - 1.5, 24.3, 67.0, w / 2 + 0.37, 10.25]
    ay = [h / 2, 3.2, 35.0, 66.0, h / 2 - 0.61, h - 2.0]
    afl, aerr, aflag = sep.sum_circle(sub, np.array(ax), np.array(ay), radius, err=rms, mask=m, gain=gain, subpix=0)
    out = [f"    enum {name} {{\n",
           f"        static let boxSize = {bw}\n        static let filterSize = {fw}\n",
           f"        static let threshold = {fmt(thresh)}\n        static let minArea = {minarea}\n",
           f"        static let useFilter = {'true' if use_filter else 'false'}\n",
           f"        static let countWithoutClean = {len(unclean)}\n",
           f"        static let radius = {fmt(radius)}\n        static let gain = {fmt(gain)}\n",
           f"        static let globalBack = {fmt(bkg.globalback)}\n        static let globalRMS = {fmt(bkg.globalrms)}\n",
           swift_ints("sampleX", xs), swift_ints("sampleY", ys),
           swift_doubles("sampleBack", back[ys, xs]), swift_doubles("sampleRMS", rms[ys, xs]),
           swift_doubles("x", objs["x"]), swift_doubles("y", objs["y"]),
           swift_ints("npix", objs["npix"]), swift_doubles("peak", objs["peak"]),
           swift_ints("flag", objs["flag"]), swift_doubles("isoFlux", objs["flux"]),
           swift_doubles("a", objs["a"]), swift_doubles("b", objs["b"]), swift_doubles("theta", objs["theta"]),
           swift_doubles("flux", flux), swift_doubles("fluxErr", ferr), swift_ints("fluxFlag", fflag),
           swift_doubles("apertureX", ax), swift_doubles("apertureY", ay),
           swift_doubles("apertureFlux", afl), swift_doubles("apertureFluxErr", aerr), swift_ints("apertureFlag", aflag),
           "    }\n"]
    return "".join(out), len(objs)


def swift_stars(name, stars):
    rows = ", ".join(f"({fmt(x)}, {fmt(y)}, {fmt(f)}, {k}, {fmt(wd)})" for (x, y, f, k, wd) in stars)
    return f"    static let {name}: [(Double, Double, Double, Int, Double)] = [{rows}]\n"


def generate():
    w1, h1 = 203, 170
    sky1 = (1000.0, 0.35, -0.2, 0.0015)
    stars1 = star_list(11, w1, h1, 34, 4, 10)
    img1 = render(w1, h1, sky1, stars1, 12345, 8.0)
    w2, h2 = 187, 151
    sky2 = (500.0, -0.1, 0.4, 0.0)
    stars2 = star_list(29, w2, h2, 26, 3, 6)
    img2 = render(w2, h2, sky2, stars2, 777, 6.0)
    nan_rects, mask_rects = holes(w2, h2)
    sum1 = checksum(img1)
    sum2 = checksum(img2)
    mask2 = np.zeros((h2, w2), dtype=bool)
    for (x0, y0, x1, y1) in nan_rects:
        img2[y0:y1, x0:x1] = np.nan
    for (x0, y0, x1, y1) in mask_rects:
        mask2[y0:y1, x0:x1] = True
    out = [f"// GENERATED by tools/sep_reference.py with sep {sep.__version__}, numpy {np.__version__}: do not edit.\n",
           "enum SepReference {\n",
           f"    static let image1 = (width: {w1}, height: {h1}, sky: ({', '.join(fmt(v) for v in sky1)}), noiseSeed: UInt64(12345), sigma: 8.0)\n",
           swift_stars("stars1", stars1),
           f"    static let checksum1 = ({sum1[0]}, {sum1[1]})\n",
           f"    static let image2 = (width: {w2}, height: {h2}, sky: ({', '.join(fmt(v) for v in sky2)}), noiseSeed: UInt64(777), sigma: 6.0)\n",
           swift_stars("stars2", stars2),
           f"    static let checksum2 = ({sum2[0]}, {sum2[1]})\n",
           "    static let nanRects: [(Int, Int, Int, Int)] = [" + ", ".join(str(r) for r in nan_rects) + "]\n",
           "    static let maskRects: [(Int, Int, Int, Int)] = [" + ", ".join(str(r) for r in mask_rects) + "]\n"]
    counts = []
    for (name, img, mask, bw, fw, thresh, minarea, filt, radius, gain) in [
            ("CaseA", img1, None, 32, 3, 3.0, 5, True, 5.0, 2.0),
            ("CaseB", img2, mask2, 32, 3, 5.0, 5, True, 4.0, 1.5),
            ("CaseC", img1, None, 64, 3, 4.0, 4, False, 6.5, 3.0),
            ("CaseD", img1, None, 32, 3, 1.5, 5, True, 3.0, 2.0)]:
        text, n = run_case(name, img, mask, bw, fw, thresh, minarea, filt, radius, gain, 11)
        out.append(text)
        counts.append((name, n))
    out.append("}\n")
    print("".join(out), end="")
    print("sources per case: " + ", ".join(f"{n}={c}" for n, c in counts), file=sys.stderr)


def real(path, hdu, swift_csv):
    from astropy.io import fits
    with fits.open(path) as f:
        if hdu is None:
            hdu = next(i for i, x in enumerate(f) if x.data is not None and x.data.ndim == 2)
        data = np.asarray(f[hdu].data, dtype=np.float32)
    invalid = ~np.isfinite(data)
    m = invalid.astype(np.float32)
    bkg = sep.Background(data, mask=m, bw=64, bh=64, fw=3, fh=3)
    sub = (data - bkg.back()).astype(np.float32)
    rms = bkg.rms()
    objs = sep.extract(sub, 5.0, err=rms, mask=m, minarea=5, filter_type="conv", deblend_nthresh=32,
                       deblend_cont=0.005, clean=True, clean_param=1.0)
    flux, ferr, _ = sep.sum_circle(sub, objs["x"], objs["y"], 5.0, err=rms, mask=m, subpix=0)
    print(f"sep: {len(objs)} sources, globalback {bkg.globalback:.6g}, globalrms {bkg.globalrms:.6g}")
    if swift_csv is None:
        return
    sw = np.genfromtxt(swift_csv, delimiter=",", names=True)
    sw = np.atleast_1d(sw)
    print(f"astrocnn: {len(sw)} sources")
    used = set()
    offsets, dflux = [], []
    for k in range(len(objs)):
        d2 = (sw["x"] - objs["x"][k]) ** 2 + (sw["y"] - objs["y"][k]) ** 2
        j = int(np.argmin(d2)) if len(sw) else -1
        if j >= 0 and d2[j] < 1.0 and j not in used:
            used.add(j)
            offsets.append(math.sqrt(d2[j]))
            dflux.append(abs(sw["flux"][j] - flux[k]) / max(abs(flux[k]), 1e-30))
    frac = len(offsets) / max(len(objs), 1)
    print(f"matched within 1 px: {len(offsets)} ({100 * frac:.2f}% of sep's, {100 * len(offsets) / max(len(sw), 1):.2f}% of astrocnn's)")
    if offsets:
        print(f"position offset: median {np.median(offsets):.3g} px, max {np.max(offsets):.3g} px")
        print(f"aperture flux relative difference: median {np.median(dflux):.3g}, max {np.max(dflux):.3g}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--real":
        path = args[1]
        swift_csv = args[args.index("--swift-csv") + 1] if "--swift-csv" in args else None
        hdu = int(args[args.index("--hdu") + 1]) if "--hdu" in args else None
        real(path, hdu, swift_csv)
    else:
        generate()
