#!/usr/bin/env bash
# Create .venv and install the project with its test and benchmark extras.
# torch is pinned and installed in the same pip command as everything that depends on it,
# so pip never pulls a different torch build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import compress, torch, onnxruntime, transformers" 
  rm -f .venv/.installed-* && touch "$stamp"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "note: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); tests that need it are skipped" >&2
fi
