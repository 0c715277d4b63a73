#!/usr/bin/env bash
# Fetches the Debian build dependencies as .deb files into ./.deps (ignored
# by git), for a GPU machine that has the CUDA toolkit but no apt access:
# kernels/gpu-check.sh unpacks them there. Run where apt-get works.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps
cd .deps
apt-get download libstb-dev libstb0 libcjson-dev libcjson1 libopenblas-dev libopenblas0 \
    libopenblas0-pthread libopenblas-pthread-dev libgfortran5 zlib1g-dev pkgconf pkgconf-bin \
    libpkgconf3 zlib1g libquadmath0
ls -la
