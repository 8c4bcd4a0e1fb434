#!/usr/bin/env bash
# Issue 24's targets: the PSF-aware deconvolution model against Wiener, Richardson-Lucy and
# Prox-TV with parameters chosen against the truth over wide sweeps, and against the runtime's own
# Wiener step (wiener-risk: lambda by the risk rule, no truth: the model's input; wiener-dp: the
# rule before it, the larger of GCV's and the discrepancy principle's), on
# images never used in training or validation, for
# three PSFs not used in training (the family is continuous: no member is drawn twice) at the
# paper's noise (sigma 0.01 of the peak) and at each image's own pixel noise (noise:k=1).
# psf+dc: the model with the data-consistency correction (restore --data-consistency); psf+dc+pos:
# the same held to the truth's zero (restore --lower-bound 0), as Richardson-Lucy and Prox-TV are.
# Usage: Benchmarks/deconv_psf_eval.sh [MODEL] [OUTDIR] [MODEL2]   (needs ../shared/data; ~15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/deconv-psf.acnn}
OUT=${2:-out/deconv-psf-eval}
MODEL2=${3:-}
EXTRA=""; MODELS="psf=$MODEL"
[ -n "$MODEL2" ] && { EXTRA=",psf2,psf2+dc"; MODELS="psf=$MODEL psf2=$MODEL2"; }
A=.build/release/astrocnn
[ -x $A ] || swift build -c release >/dev/null
T=../shared/data/train F=../shared/data/fits
mkdir -p "$OUT"
[ -f demo-output/truth.fits ] || $A demo >/dev/null
IMAGES="$F/HorseHead.fits $T/sdss_r_ic3478.fits $T/ccd_r_90s_eyuma.fits.gz $T/hst_nicmos_f160w_cal.fits $T/hst_nicmos_f110w_drz.fits
        $T/muse_white_hdfs.fits $T/decam_i_330s_04a.fits $T/saao_ccd_raw_150s.fits demo-output/truth.fits"
SWEEPS="--wiener-lambdas 1e-9,1e-8,1e-7,1e-6,1e-5,1e-4,1e-3,1e-2,0.1,1,10 --rl-iterations 300 --tv-mus 1e-6,1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2"
for psf in "airy:size=64,rings=5" "moffat:fwhm=3,beta=2.5" "gaussian:fwhm=2.2"; do
  for noise in "gaussian:sigma=0.01" "noise:k=1"; do
    tag=$(echo "${psf%%:*}-${noise%%:*}")
    echo "== $psf, $noise"
    $A evaluate --images $IMAGES --psf "$psf" --noise "$noise" --methods none,wiener,wiener-dp,wiener-risk,rl,tv,psf,psf+dc,psf+dc+pos$EXTRA \
      --models $MODELS $SWEEPS --csv "$OUT/$tag.csv" --panel "$OUT/$tag.png" | tee "$OUT/$tag.txt"
  done
done
