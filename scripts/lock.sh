#!/usr/bin/env bash
# Refresh requirements.lock on purpose: resolve every dependency afresh (newest versions the
# registry serves for Python 3.11 on this platform, torch and torchvision at their pins) in a
# throw-away venv, write the lock, then rebuild .venv from it and run the test suite.
# Review `git diff requirements.lock` and commit it only if the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" -e ".[test,bench]"
{
  echo "# requirements.lock: every transitive dependency of compress-deploy[test,bench] at known-good versions,"
  echo "# used as pip constraints (-c) by scripts/setup.sh, so make test, make demo and .ci/run install the same"
  echo "# packages every time. For CI and the demo on Linux x86_64, CPython 3.11; users install the package's own"
  echo "# loose ranges from pyproject.toml. Refresh on purpose with 'make lock' (scripts/lock.sh), which re-resolves"
  echo "# and runs the test suite. Resolved $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" --version)."
  "$tmp/venv/bin/pip" freeze --all --exclude-editable | LC_ALL=C sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages); running the test suite on it" >&2
make test
