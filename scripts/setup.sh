#!/usr/bin/env bash
# Installs what AstroCNN needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# cfitsio for FITS I/O, pkg-config to find it, numpy + h5py for tools/keras2acnn.py and onnx for
# tools/onnx2acnn.py.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! pkg-config --exists cfitsio 2>/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libcfitsio-dev pkg-config gzip >/dev/null
fi
if ! python3 -c "import numpy, h5py, onnx" 2>/dev/null; then
  python3 -m pip install -q numpy h5py onnx 2>/dev/null || $SUDO apt-get install -y -qq python3-numpy python3-h5py python3-onnx >/dev/null
fi
echo "setup: cfitsio $(pkg-config --modversion cfitsio), $(python3 -c 'import numpy, h5py, onnx; print("numpy", numpy.__version__, "h5py", h5py.__version__, "onnx", onnx.__version__)')"
# Slurm (slurm-wlm: slurmctld, slurmd, sbatch) and munge, for the single-node cluster that
# Tests/RuntimeTests/SlurmTests.swift starts (the test skips with a message without them).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } \
    || echo "setup: slurm-wlm/munge could not be installed; the Slurm test will skip"
fi
