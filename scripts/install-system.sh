#!/usr/bin/env bash
# Debian packages the project uses; needs root.
#  - dataset-fashion-mnist: the full 60k/10k Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist)
#  - g++-aarch64-linux-gnu: cross-links the Apache TVM library built for a Jetson (aarch64)
set -euo pipefail
need=()
for pkg in dataset-fashion-mnist g++-aarch64-linux-gnu; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
