#!/usr/bin/env bash
# The long fuzz run (issue 23): 10^6 cases (500,000 mutated FITS files and 500,000 mutated
# models) in one process, with the same harness, checks and memory budget as the CI test
# (Tests/RuntimeTests/HostileInputTests.swift runs 10^4 + 10^4 with seed 1).
# Usage: bash Benchmarks/fuzz_long.sh [SEED] [FITS_CASES] [MODEL_CASES]
# A failing case's file is kept in fuzz-failing/ for replay: astrocnn fuzz --seed SEED --case N ...
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-7}"; fits="${2:-500000}"; models="${3:-500000}"
swift build -c release >/dev/null
lscpu | grep -m1 "Model name" || true
/usr/bin/env time -v .build/release/astrocnn fuzz --seed "$seed" --fits "$fits" --models "$models" \
  --memory-budget 256M --time-limit 10 --keep fuzz-failing 2>&1 | grep -v "^fuzz: \(fits\|model\) [0-9]*/" \
  | grep -v "^\s*\(Page size\|Exit status\|Signals\|Socket\|Swaps\|File system\|Average\|Voluntary\|Involuntary\|Minor\|Major\|Percent\)"
