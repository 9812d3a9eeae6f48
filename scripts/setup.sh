#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: apt packages, the venv, pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus (2.42, with promtool) and prometheus-alertmanager (0.25, with amtool): monitoring/.
APT_PACKAGES=(dataset-fashion-mnist curl wrk prometheus prometheus-alertmanager)
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

# pip, with the machine's notes about absent local index folders filtered out; fails when pip fails.
pip_install() {
  local log rc=0
  log=$(mktemp)
  .venv/bin/pip install -q "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored" "$log" || true
  rm -f "$log"
  return $rc
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# torch first, pinned, so nothing can pull a CUDA build in its place.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  pip_install torch==2.13.0
fi
echo "setup: installing atelier and pinned dependencies"
pip_install -c constraints.txt -e '.[dev]'
.venv/bin/python -c "import torch, ts, model_archiver, grafana_foundation_sdk, locust; assert torch.__version__.startswith('2.13.0')"
echo "setup: done"
