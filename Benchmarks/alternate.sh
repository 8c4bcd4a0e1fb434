#!/bin/bash
# Before/after timing on a shared host: runs two astrocnn binaries alternately, N rounds of
# `bench ... --skip-layers`, and prints the minimum seconds of each per (side, threads).
#     Benchmarks/alternate.sh OLD_BINARY NEW_BINARY N bench-arguments...
#     Benchmarks/alternate.sh /tmp/astrocnn-old .build/release/astrocnn 4 -m models/flamary3.acnn --sizes 512,1024 --threads 1,2 --repeats 1
# Output rows: A|B side threads seconds (A = the first binary).
set -euo pipefail
A=$1; B=$2; N=$3; shift 3
for i in $(seq "$N"); do
  for X in A B; do
    BIN=${!X}
    "$BIN" bench "$@" --skip-layers 2>&1 | awk -v x="$X" '/^ +[0-9]+ +[0-9]+ +[a-z0-9]+ +[0-9.]+/{print x, $1, $2, $4}'
  done
done | awk '{k=$1" "$2" "$3; if(!(k in m) || $4<m[k]) m[k]=$4} END{for(k in m) print k, m[k]}' | sort -k2n -k3n -k1
