#!/usr/bin/env bash
# Converts the published Flamary 2017 weights (../shared/data) with tools/keras2acnn.py, inspects
# the model and restores the HorseHead plate with it. Output in ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
if [ ! -d "$DATA/flamary2017-models" ]; then
  echo "run-published: $DATA/flamary2017-models not found (set DATA=...)" >&2; exit 1
fi
mkdir -p out
BASE="$DATA/flamary2017-models/32x32_10x10-64_6x6-16_5x5-1_PSF64_sigma0.010_M51a"
python3 tools/keras2acnn.py "$BASE.h5" "$BASE.json" -o out/flamary2017-M51a.acnn \
  --name flamary2017-M51a --normalization clip_max --overwrite
swift build -c release
.build/release/astrocnn inspect out/flamary2017-M51a.acnn
.build/release/astrocnn restore "$DATA/fits/HorseHead.fits" -m out/flamary2017-M51a.acnn \
  -o out/HorseHead-restored.fits --overwrite
