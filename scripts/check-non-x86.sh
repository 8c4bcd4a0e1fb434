#!/usr/bin/env bash
# Builds and tests the code paths that non-x86 builds (arm64 NEON) compile, on an x86-64 machine
# without an arm64 Swift SDK: a copy of the package in which every `#if arch(x86_64)` becomes
# false and every `#if arch(arm64)` true, so the AVX2/AVX-512 targets compile to nothing, the
# dispatchers take their non-x86 branches and the portable kernels use `addingProduct` (as on
# NEON; on x86 without an FMA target it calls fmaf, so the tests run about 8x slower).
# This checks that those branches compile and give correct results; it is not a cross build.
#
#   bash scripts/check-non-x86.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
rm -rf "$work/pkg" && mkdir -p "$work/pkg"
cd "$root"
git ls-files -z | xargs -0 -I{} cp --parents {} "$work/pkg/"
# The tests look for ../shared next to the package (they skip without it).
if [ -d "$root/../shared" ] && [ ! -e "$work/shared" ]; then ln -s "$(cd "$root/../shared" && pwd)" "$work/shared"; fi
cd "$work/pkg"
grep -rl --include='*.swift' -e 'arch(x86_64)' -e 'arch(arm64)' Sources Package.swift | while read -r f; do
    sed -i 's/#if arch(x86_64)/#if ASTROCNN_NEVER_DEFINED/g; s/#if arch(arm64)/#if !ASTROCNN_NEVER_DEFINED/g' "$f"
done
if grep -rn --include='*.swift' -e 'arch(x86_64)' -e 'arch(arm64)' Sources Package.swift; then
    echo "check-non-x86: an architecture condition was not rewritten" >&2; exit 1
fi
swift build -c release --build-tests
swift test -c release --skip-build
echo "check-non-x86: the non-x86 configuration builds and passes the tests ($work/pkg)"
