#!/usr/bin/env python3
"""Classical denoisers side by side: astrocnn (Evaluation.Denoisers) against SciPy and
scikit-image on the same arrays, quality and speed in one table.

    python3 Benchmarks/denoise_peers.py [--size 512] [--noise 0.02] [--threads 1] [--repeats 3]
                                       [--data ../shared/data/train] [--speed-sizes 1024,2600]

Images (each written to FITS with astropy, and read by `astrocnn bench-classical --task denoise`):
  * a simulated star field (Moffat stars with a power-law luminosity function, a few elliptical
    galaxies, a sky gradient; maximum 1) with white Gaussian noise of sigma `--noise`;
  * if the shared data is there, a real pair: DECam i-band exposure 04a (330 s) as the noisy image
    and the mean of the four other exposures 04b-e of the same field (same pixel grid) as the truth.

Methods, every parameter chosen against the truth by PSNR (10 log10(range^2 / MSE), range = truth
max - min); SSIM is scikit-image's with Gaussian weights (sigma 1.5) and the same range:
  astrocnn   gaussian (sigma: 12-point log grid 0.3..4 + golden-section refinement), median
             (size 3, 5, 7, 9), starlet k-sigma hard thresholding (k grid 1..5 step 0.5 + refinement,
             4 or 5 scales, noise from the MAD of the finest scale);
  scipy      ndimage.gaussian_filter (the same sigma search, done here in Python), median_filter
             (the same sizes);
  skimage    restoration.denoise_nl_means (fast_mode, patch 5, distance 6, sigma from
             estimate_sigma, h = factor x sigma swept), denoise_wavelet BayesShrink (soft,
             parameter-free) and VisuShrink (soft, sigma = factor x estimate_sigma swept).
'search s' is the whole parameter search (including scoring), 'run s' one call at the chosen
parameter (median of --repeats). Timings are single-threaded unless --threads says otherwise.

Install the peers with: pip install numpy scipy scikit-image PyWavelets astropy
"""
import argparse
import math
import os
import subprocess
import tempfile
import time

import numpy as np
from astropy.io import fits
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.restoration import denoise_nl_means, denoise_wavelet, estimate_sigma

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def star_field(n, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    img = 0.02 + 0.01 * (x / n) - 0.005 * (y / n)
    count = max(1, n * n // 250)
    # N(>F) ~ F^-1 between 0.05 and 10: inverse transform sampling.
    u = rng.uniform(size=count)
    fluxes = 0.05 * (10 / 0.05) ** u
    for f, cy, cx, fwhm in zip(fluxes, rng.uniform(0, n, count), rng.uniform(0, n, count), rng.uniform(2.0, 3.0, count)):
        beta = 3.5
        alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
        r = int(6 * fwhm) + 1
        y0, y1, x0, x1 = max(0, int(cy) - r), min(n, int(cy) + r), max(0, int(cx) - r), min(n, int(cx) + r)
        if y0 >= y1 or x0 >= x1:
            continue
        rr = ((y[y0:y1, x0:x1] - cy) ** 2 + (x[y0:y1, x0:x1] - cx) ** 2) / alpha ** 2
        img[y0:y1, x0:x1] += f * (beta - 1) / (math.pi * alpha ** 2) * (1 + rr) ** (-beta)
    for _ in range(max(1, n * n // 40000)):
        cy, cx = rng.uniform(0, n, 2)
        a, q, th, i0 = rng.uniform(3, 20), rng.uniform(0.3, 1), rng.uniform(0, math.pi), rng.uniform(0.05, 0.3)
        dx, dy = x - cx, y - cy
        u1 = dx * math.cos(th) + dy * math.sin(th)
        v1 = -dx * math.sin(th) + dy * math.cos(th)
        img += i0 * np.exp(-np.sqrt(u1 ** 2 + (v1 / q) ** 2) / a)
    return img / img.max()


def decam_pair(data):
    names = [os.path.join(data, f"decam_i_330s_04{c}.fits") for c in "abcde"]
    if not all(os.path.exists(p) for p in names):
        return None
    frames = [fits.getdata(p).astype(np.float64) for p in names]
    return frames[0], np.mean(frames[1:], axis=0)


def psnr(truth, img, rng_):
    return 10 * math.log10(rng_ * rng_ / np.mean((truth - img) ** 2))


def ssim(truth, img, rng_):
    return structural_similarity(truth, img, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=rng_)


def round3(x):
    if x == 0 or not math.isfinite(x):
        return x
    s = 10 ** (math.floor(math.log10(abs(x))) - 2)
    return round(x / s) * s


def search_continuous(grid, f, rnd, refine=8):
    """The grid, then golden-section search between the best point's neighbours (as astrocnn)."""
    cache = {}

    def ev(x):
        r = rnd(x)
        if r not in cache:
            cache[r] = f(r)
        return cache[r]

    g = sorted(grid)
    scores = [ev(x) for x in g]
    b = int(np.argmax(scores))
    lo, hi = g[max(0, b - 1)], g[min(len(g) - 1, b + 1)]
    phi = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
    f1, f2 = ev(x1), ev(x2)
    for _ in range(refine):
        if f1 >= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - phi * (hi - lo)
            f1 = ev(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + phi * (hi - lo)
            f2 = ev(x2)
    best = max(cache.items(), key=lambda kv: (kv[1], -kv[0]))
    return best[0], best[1]


def median_time(f, repeats):
    t = []
    for _ in range(max(1, repeats)):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    return sorted(t)[len(t) // 2]


def peers(noisy, truth, repeats):
    """(implementation, method, parameters, PSNR, SSIM, search s, run s) for each peer."""
    r = float(truth.max() - truth.min())
    score = lambda img: psnr(truth, img, r)
    rows = []

    def add(impl, method, params, run, search_s):
        img = run()
        once = median_time(run, repeats)
        # A parameter-free method's search is its one run.
        rows.append((impl, method, params, score(img), ssim(truth, img, r), once if search_s is None else search_s, once))

    sigmas = [round3(0.3 * (4 / 0.3) ** (i / 11)) for i in range(12)]
    t = time.perf_counter()
    s, _ = search_continuous(sigmas, lambda s: score(ndimage.gaussian_filter(noisy, s, mode="reflect", truncate=4.0)), round3)
    add("scipy", "gaussian_filter", f"sigma={s:g}", lambda: ndimage.gaussian_filter(noisy, s, mode="reflect", truncate=4.0),
        time.perf_counter() - t)

    t = time.perf_counter()
    size = max([3, 5, 7, 9], key=lambda k: score(ndimage.median_filter(noisy, size=k, mode="reflect")))
    add("scipy", "median_filter", f"size={size}", lambda: ndimage.median_filter(noisy, size=size, mode="reflect"), time.perf_counter() - t)

    t = time.perf_counter()
    sig = float(estimate_sigma(noisy))
    nlm = lambda h: denoise_nl_means(noisy, h=h * sig, sigma=sig, fast_mode=True, patch_size=5, patch_distance=6)
    hs = [0.4, 0.6, 0.8, 1.0, 1.2, 1.5]
    h = max(hs, key=lambda h: score(nlm(h)))
    add("skimage", "denoise_nl_means", f"h={h:g}sigma", lambda: nlm(h), time.perf_counter() - t)

    bayes = lambda: denoise_wavelet(noisy, method="BayesShrink", mode="soft", rescale_sigma=True)
    add("skimage", "wavelet BayesShrink", "-", bayes, None)

    t = time.perf_counter()
    sig = float(estimate_sigma(noisy))
    visu = lambda f: denoise_wavelet(noisy, sigma=f * sig, method="VisuShrink", mode="soft", rescale_sigma=True)
    fs = [0.125, 0.25, 0.5, 0.75, 1.0]
    f = max(fs, key=lambda f: score(visu(f)))
    add("skimage", "wavelet VisuShrink", f"sigma={f:g}est", lambda: visu(f), time.perf_counter() - t)
    return rows


def ours(astrocnn, noisy_path, truth_path, threads, repeats):
    out = subprocess.run([astrocnn, "bench-classical", "--task", "denoise", "--noisy", noisy_path, "--truth", truth_path,
                          "--threads", str(threads), "--repeats", str(repeats), "--csv"],
                         check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.strip().splitlines()[1:]:
        # image,height,width,method,"parameters",psnr,ssim,search_s,run_s
        head, params, tail = line.split('"')
        method = head.split(",")[3]
        p, s, search, run = [float(v) for v in tail.strip(",").split(",")]
        rows.append(("astrocnn" if method != "noisy" else "-", method, params, p, s, search, run))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="side of the simulated star field")
    ap.add_argument("--noise", type=float, default=0.02, help="noise sigma of the simulated field (max 1)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "train"))
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build", "release", "astrocnn"))
    ap.add_argument("--speed-sizes", default="", help="also time one run of each filter at these sides (e.g. 1024,2600)")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed + 1000)
    cases = []
    truth = star_field(a.size, a.seed)
    cases.append((f"stars {a.size}^2 s={a.noise:g}", truth + rng.normal(0, a.noise, truth.shape), truth))
    pair = decam_pair(a.data)
    if pair is None:
        print(f"(no DECam frames under {a.data}: real pair skipped)")
    else:
        cases.append(("DECam 04a vs mean(04b-e)", pair[0], pair[1]))

    work = tempfile.mkdtemp(prefix="denoise_peers_")
    table = []
    for k, (label, noisy, truth) in enumerate(cases):
        npath, tpath = os.path.join(work, f"noisy{k}.fits"), os.path.join(work, f"truth{k}.fits")
        fits.writeto(npath, noisy, overwrite=True)
        fits.writeto(tpath, truth, overwrite=True)
        rows = ours(a.astrocnn, npath, tpath, a.threads, a.repeats) + peers(noisy, truth, a.repeats)
        table.append((label, noisy.shape, rows))

    print(f"{'image':26} {'impl':9} {'method':20} {'parameters':17} {'PSNR dB':>8} {'SSIM':>7} {'search s':>9} {'run s':>8}")
    for label, shape, rows in table:
        for impl, method, params, p, s, search, run in rows:
            print(f"{label:26} {impl:9} {method:20} {params:17} {p:8.2f} {s:7.4f} {search:9.3f} {run:8.4f}")

    if a.speed_sizes:
        speed(a, work)


FIXED = [("gaussian", "sigma=1.5"), ("median", "size=3"), ("median", "size=5"), ("median", "size=9"), ("starlet", "k=3,scales=5")]


def speed(a, work):
    """One call of each filter at fixed parameters on the same simulated field of each side."""
    print(f"\nOne call at fixed parameters, seconds (median of {a.repeats}; astrocnn --threads {a.threads}; "
          "the same simulated star field of each side)")
    print(f"{'side':>6} {'method':24} {'astrocnn':>9} {'peer':>9}  peer")
    for n in [int(v) for v in a.speed_sizes.split(",")]:
        truth = star_field(n, a.seed)
        noisy = truth + np.random.default_rng(n).normal(0, a.noise, truth.shape)
        npath, tpath = os.path.join(work, f"speed{n}.fits"), os.path.join(work, f"speedtruth{n}.fits")
        fits.writeto(npath, noisy, overwrite=True)
        fits.writeto(tpath, truth, overwrite=True)
        cmd = [a.astrocnn, "bench-classical", "--task", "denoise", "--noisy", npath, "--truth", tpath, "--methods", "",
               "--threads", str(a.threads), "--repeats", str(a.repeats), "--csv"]
        for m, p in FIXED:
            cmd += ["--fixed", f"{m}:{p}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        ourt = {}
        for line in out.strip().splitlines()[2:]:
            head, params, tail = line.split('"')
            ourt[(head.split(",")[3], params)] = float(tail.strip(",").split(",")[3])
        peer = {
            ("gaussian", "sigma=1.5"): ("scipy gaussian_filter", lambda: ndimage.gaussian_filter(noisy, 1.5)),
            ("median", "size=3"): ("scipy median_filter", lambda: ndimage.median_filter(noisy, size=3)),
            ("median", "size=5"): ("scipy median_filter", lambda: ndimage.median_filter(noisy, size=5)),
            ("median", "size=9"): ("scipy median_filter", lambda: ndimage.median_filter(noisy, size=9)),
            ("starlet", "k=3,scales=5"): ("skimage BayesShrink", lambda: denoise_wavelet(noisy, method="BayesShrink", mode="soft",
                                                                                         rescale_sigma=True)),
        }
        for key in FIXED:
            name, f = peer[key]
            print(f"{n:6d} {key[0] + ' ' + key[1]:24} {ourt[key]:9.4f} {median_time(f, a.repeats):9.4f}  {name}")
        if n <= 1024:
            sig = float(estimate_sigma(noisy))
            t = median_time(lambda: denoise_nl_means(noisy, h=0.8 * sig, sigma=sig, fast_mode=True, patch_size=5, patch_distance=6), 1)
            print(f"{n:6d} {'(no astrocnn NL-means)':24} {'-':>9} {t:9.4f}  skimage denoise_nl_means fast_mode")


if __name__ == "__main__":
    main()
