#!/usr/bin/env bash
# Issue 25's measurements for denoisers, each model against the classical denoisers (parameters
# chosen against the reference) on data never used in training:
#  1. the five real DECam exposures: each frame against the mean of the frames not in its stack of
#     two (--stacks 2: a real stack of two is scored as a method), 200 injected point sources per
#     frame (completeness, depth, flux error of sources of known flux);
#     then again with PSF-matched pixel scores (a Gaussian blur between the measured FWHMs), and
#     with a matching kernel fitted between frame and reference (--psf-match-fit, since session 17
#     the protocol's PSNR: it removes the profile mismatch common to every method);
#  2. simulated ratio-2 short exposures of four held-out images (SDSS, the amateur CCD, HST NICMOS
#     F160W, MUSE) against their long exposures (the paper's Table 2 rows).
# Usage: [FLUX=SIGMA] [CAP=K] [ENSEMBLE=N] Benchmarks/denoise_eval.sh OUTDIR NAME=MODEL.acnn [NAME=MODEL.acnn ...]   (needs ../shared/data)
# FLUX=1.5 also scores each network as NAME+flux (--flux-restore 1.5); CAP=K as NAME+cap (--cap K: input capped at
# sky + K sigma, the excess added back); ENSEMBLE=8 runs every network as a self-ensemble (--ensemble 8).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: denoise_eval.sh OUTDIR NAME=MODEL ...}; shift
A=.build/release/astrocnn
F="--flux-restore ${FLUX:-0} --cap ${CAP:-0} --ensemble ${ENSEMBLE:-1}"
[ -x $A ] || swift build -c release >/dev/null
T=../shared/data/train
mkdir -p "$OUT"
$A evaluate --task denoise --frames $T/decam_i_330s_04{a,b,c,d,e}.fits --ratio 4 --models "$@" $F --stacks 2 --inject 200 \
    --csv "$OUT/decam.csv" --inject-csv "$OUT/decam-inject.csv" --inject-plot "$OUT/decam-inject" --panel "$OUT/decam.png" | tee "$OUT/decam.txt"
# The same frames with PSF-matched pixel scores (--psf-match: the sharper of frame and reference
# blurred to the other's measured FWHM; the exposures were taken at FWHM 3.7 to 5.5 px).
$A evaluate --task denoise --frames $T/decam_i_330s_04{a,b,c,d,e}.fits --ratio 4 --models "$@" $F --stacks 2 --psf-match \
    --csv "$OUT/decam-psf-matched.csv" | tee "$OUT/decam-psf-matched.txt"
$A evaluate --task denoise --frames $T/decam_i_330s_04{a,b,c,d,e}.fits --ratio 4 --models "$@" $F --stacks 2 --psf-match --psf-match-fit \
    --csv "$OUT/decam-psf-fitted.csv" | tee "$OUT/decam-psf-fitted.txt"
$A evaluate --task denoise --ratio 2 --models "$@" $F \
    --images $T/sdss_r_ic3478.fits $T/ccd_r_90s_eyuma.fits.gz $T/hst_nicmos_f160w_cal.fits $T/muse_white_hdfs.fits \
    --csv "$OUT/simulated.csv" --panel "$OUT/simulated.png" | tee "$OUT/simulated.txt"
