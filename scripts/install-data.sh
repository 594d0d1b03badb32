#!/usr/bin/env bash
# Fashion-MNIST (full 60k/10k IDX files) from Debian's dataset-fashion-mnist; needs root.
set -euo pipefail
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
