#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: apt packages, the venv, pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist curl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# TorchServe's frontend needs Java 11 or newer.
if ! command -v java >/dev/null 2>&1; then
  missing+=(openjdk-17-jre-headless)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# torch first, pinned, so nothing can pull a CUDA build in its place.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  .venv/bin/pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
fi
echo "setup: installing atelier and pinned dependencies"
.venv/bin/pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, ts, model_archiver; assert torch.__version__.startswith('2.13.0')"
echo "setup: done"
