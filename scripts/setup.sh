#!/usr/bin/env bash
# Create .venv and install the project with its test and benchmark extras from requirements.lock,
# the known-good version of every transitive dependency (refresh it on purpose with `make lock`).
# torch is pinned and installed in the same pip command as everything that depends on it,
# so pip never pulls a different torch build. A failed install fails the setup, with pip's error shown.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
LOCK=${LOCK:-requirements.lock}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/pip install -q --disable-pip-version-check -c "$LOCK")
  # the build tools first, at their locked versions, so the editable build below uses them
  "${pip[@]}" pip setuptools wheel
  "${pip[@]}" --no-build-isolation "torch==2.14.1" "torchvision==0.29.1" -e ".[test,bench]"
  .venv/bin/python -c "import compress, torch, onnxruntime, transformers"
  rm -f .venv/.installed-* && touch "$stamp"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "note: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); tests that need it are skipped" >&2
fi
