#!/bin/bash
# The AVX-512 GEMM micro-kernel of two revisions side by side in one binary (same data, best of
# 7, 36 GEMMs of one Winograd block per shape, 1 thread):
#     Benchmarks/gemm_micro/run.sh [OLD_REV]      (default f0edf78: the 4 x 4 block, 64 tiles)
# The old revision's generated kernels are renamed old*, the work tree's new*; main.swift calls
# oldGemm with blocks of 64 tiles and newGemm with 48.
set -euo pipefail
cd "$(dirname "$0")"
REV=${1:-f0edf78}
T=$(mktemp -d)
git show "$REV":Sources/KernelsAVX512/DirectConvAVX512.generated.swift | sed 's/avx512/old/g' > "$T/old.swift"
sed 's/avx512/new/g' ../../Sources/KernelsAVX512/DirectConvAVX512.generated.swift > "$T/new.swift"
cp main.swift "$T/main.swift"
swiftc -Ounchecked -target-cpu skylake-avx512 -wmo "$T/old.swift" "$T/new.swift" "$T/main.swift" -o "$T/gemm_micro"
"$T/gemm_micro"
rm -rf "$T"
