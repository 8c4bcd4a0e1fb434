#!/usr/bin/env python3
"""Side-by-side timing of astrocnn's FFT and classical deconvolution against numpy, SciPy and
scikit-image on the same sizes, in one run.

    python3 Benchmarks/classical_peers.py [--sizes 512,1024] [--threads 2] [--astrocnn .build/release/astrocnn]

Measured: a 2-D complex FFT (numpy.fft.fft2 single-threaded; scipy.fft.fft2 with `workers`);
Wiener with its lambda choice (astrocnn: 6-lambda sweep plus 4 refinements, each scored by PSNR
against the truth; scikit-image: one call of `restoration.wiener` per lambda for the same 10
lambdas, the way a user sweeps it, and one call alone); Richardson-Lucy
per iteration (scikit-image `restoration.richardson_lucy`, 64x64 Airy PSF). Medians of
`--repeats`. Ratios > 1 mean astrocnn is faster.

Install the peers with: pip install numpy scipy scikit-image
"""
import argparse
import os
import subprocess
import time

import numpy as np
import scipy.fft
import scipy.special
from skimage import restoration

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def airy(n=64, nr=5):
    x = np.linspace(-1, 1, n)
    xg, yg = np.meshgrid(x, x)
    r = np.sqrt(xg ** 2 + yg ** 2) * np.pi * nr
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (scipy.special.j1(r) / r) ** 2
    p[np.isnan(p)] = 0.25
    return p / p.sum()


def median_time(f, repeats):
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        f()
        t.append(time.perf_counter() - s)
    return sorted(t)[len(t) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build/release/astrocnn"))
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    out = subprocess.run([a.astrocnn, "bench-classical", "--sizes", a.sizes, "--threads", str(a.threads),
                          "--repeats", str(a.repeats), "--csv"], check=True, capture_output=True, text=True).stdout
    ours = {}
    for line in out.strip().splitlines()[1:]:
        n, fft, wien, rl = line.split(",")
        ours[int(n)] = (float(fft), float(wien), float(rl))
    psf = airy()
    lambdas = [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 0.03, 0.3, 0.06, 0.17]
    print(f"threads {a.threads}; medians of {a.repeats}; ratio = peer time / astrocnn time (> 1: astrocnn faster)")
    print(f"{'side':>5} {'what':<34} {'astrocnn s':>11} {'peer s':>10} {'ratio':>7}  peer")
    for n in sizes:
        rng = np.random.default_rng(1)
        img = rng.random((n, n))
        z = img + 0j
        f_np = median_time(lambda: np.fft.fft2(z), a.repeats)
        f_sp = median_time(lambda: scipy.fft.fft2(z, workers=a.threads), a.repeats)
        w_one = median_time(lambda: restoration.wiener(img, psf, 0.1, clip=False), a.repeats)
        w_sweep = median_time(lambda: [restoration.wiener(img, psf, l, clip=False) for l in lambdas], 1)
        rl = median_time(lambda: restoration.richardson_lucy(img, psf, num_iter=3, clip=False), a.repeats) / 3
        fo, wo, ro = ours[n]
        rows = [("FFT2 complex", fo, f_np, "numpy.fft.fft2"), ("FFT2 complex", fo, f_sp, f"scipy.fft.fft2 workers={a.threads}"),
                ("Wiener incl. lambda choice", wo, w_sweep, "skimage wiener x10 lambdas"),
                ("Wiener incl. lambda choice", wo, w_one, "skimage wiener, one lambda"),
                ("Richardson-Lucy per iteration", ro, rl, "skimage richardson_lucy")]
        for what, o, p, peer in rows:
            print(f"{n:>5} {what:<34} {o:>11.4f} {p:>10.4f} {p / o:>7.2f}  {peer}")


if __name__ == "__main__":
    main()
