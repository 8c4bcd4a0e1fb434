#!/usr/bin/env bash
# Installs astrocnn into a prefix: PREFIX/bin/astrocnn and the shipped models in
# PREFIX/share/astrocnn/models (where the binary finds them: `astrocnn models` lists them).
#
#   bash scripts/install.sh PREFIX            # builds release first (swift build -c release)
#   bash scripts/install.sh --no-build PREFIX # copies the release binary already built (.build/release)
#   bash scripts/install.sh --static PREFIX   # Swift runtime linked in (.build-static/): needs only cfitsio
#   ASTROCNN_BIN=path/astrocnn bash scripts/install.sh PREFIX  # copies that binary (no build)
#
# At run time the default binary needs cfitsio (libcfitsio) and the Swift runtime libraries of
# the toolchain it was built with (found through the binary's rpath); the --static one needs
# only cfitsio, libstdc++ and the C library (a separate full build, a few minutes).
set -euo pipefail
build=1
static=0
prefix=""
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        --static) static=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $a" >&2; exit 2 ;;
        *) if [ -n "$prefix" ]; then echo "install.sh: one PREFIX only" >&2; exit 2; fi; prefix="$a" ;;
    esac
done
if [ -z "$prefix" ]; then echo "usage: bash scripts/install.sh [--no-build] PREFIX" >&2; exit 2; fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
bin="${ASTROCNN_BIN:-}"
if [ -z "$bin" ]; then
    flags=(-c release)
    if [ "$static" = 1 ]; then flags+=(--static-swift-stdlib --scratch-path .build-static); fi
    if [ "$build" = 1 ]; then
        swift build "${flags[@]}" --product astrocnn
        bin="$(swift build "${flags[@]}" --show-bin-path)/astrocnn"
    elif [ "$static" = 1 ]; then
        bin=".build-static/release/astrocnn"
    else
        bin=".build/release/astrocnn"
    fi
fi
if [ ! -x "$bin" ]; then echo "install.sh: $bin not found; build it first (swift build -c release) or drop --no-build" >&2; exit 1; fi
mkdir -p "$prefix/bin" "$prefix/share/astrocnn/models"
# Copy to temporary names and rename, so a running binary or a reader never sees half a file.
tmp="$prefix/bin/.astrocnn.tmp.$$"
cp "$bin" "$tmp" && chmod 755 "$tmp" && mv -f "$tmp" "$prefix/bin/astrocnn"
n=0
for m in models/*.acnn; do
    case "$m" in *.ckpt.acnn) continue ;; esac
    t="$prefix/share/astrocnn/models/.$(basename "$m").tmp.$$"
    cp "$m" "$t" && chmod 644 "$t" && mv -f "$t" "$prefix/share/astrocnn/models/$(basename "$m")"
    n=$((n + 1))
done
cp models/README.md "$prefix/share/astrocnn/models/README.md"
echo "installed $prefix/bin/astrocnn and $n models in $prefix/share/astrocnn/models"
