#!/usr/bin/env bash
# Build atelier's four images: training-job, services/serving, services/drift,
# services/kserve.
#
#   scripts/build-images.sh [--local-base] [--tag TAG] [--engine podman|docker] [IMAGE...]
#
# IMAGE is training, serving, drift or kserve (default: all four). Images are tagged
# atelier-<image>:<TAG>, TAG defaulting to the chart's appVersion (charts/atelier/Chart.yaml),
# the tag the chart deploys when values leave image.tag empty.
#
# With a registry and Docker (or podman) this is four plain builds with the Dockerfiles'
# defaults: the pinned python base image and torch from PyTorch's CPU index. What a machine
# without them needs is added only when it is there:
# - --local-base: no registry to pull the python image from. A Debian bookworm base is made
#   once with debootstrap (python3, venv, CA certificates; about 60 s and 180 MB) and
#   imported as localhost/atelier-base:bookworm; every stage is built FROM it through the
#   Dockerfiles' BASE_IMAGE argument. Its Python is Debian's 3.11, not python:3.11.7: a
#   stand-in for tests, never a release image. --rebuild-base makes it again (the base's
#   packages are as new as the day it was made).
# - A CA bundle named by PIP_CERT (or pip's `cert` setting): mounted at the same path during
#   the build, with a pip.conf that names it, for a package index behind a TLS proxy.
# - A torch==2.13.0 CPU wheel in the folder pip's `find-links` setting names: mounted, and
#   torch is installed from it (TORCH_PIP_ARGS) instead of download.pytorch.org.
# The mounts are podman's `build --volume`; they exist only while RUN steps run and never
# reach a layer.
#
# Podman runs with atelier's own configuration and store (scripts/podman-env.sh): the layer
# cache is kept between builds, and each Dockerfile installs its dependencies in a layer of
# their own, so a change under src/ rebuilds only the last layers.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

usage() {
  echo "usage: $0 [--local-base] [--rebuild-base] [--tag TAG] [--engine podman|docker] [training|serving|drift|kserve ...]" >&2
  exit 2
}

LOCAL_BASE=0
REBUILD_BASE=0
TAG=""
ENGINE=""
IMAGES=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --local-base) LOCAL_BASE=1 ;;
    --rebuild-base) LOCAL_BASE=1; REBUILD_BASE=1 ;;
    --tag) [ "$#" -ge 2 ] || usage; TAG="$2"; shift ;;
    --engine) [ "$#" -ge 2 ] || usage; ENGINE="$2"; shift ;;
    training|serving|drift|kserve) IMAGES+=("$1") ;;
    -h|--help) usage ;;
    *) echo "build-images: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(training serving drift kserve)

if [ -z "$TAG" ]; then
  TAG="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/atelier/Chart.yaml)"
  [ -n "$TAG" ] || { echo "build-images: no appVersion in charts/atelier/Chart.yaml" >&2; exit 1; }
fi
if [ -z "$ENGINE" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman
  elif command -v docker >/dev/null 2>&1; then ENGINE=docker
  else echo "build-images: neither podman nor docker is installed (scripts/setup.sh installs podman)" >&2; exit 1
  fi
fi
case "$ENGINE" in
  podman) source "$root/scripts/podman-env.sh" ;;
  docker) ;;
  *) echo "build-images: --engine must be podman or docker, not '$ENGINE'" >&2; exit 2 ;;
esac

folder_of() {
  case "$1" in
    training) echo training-job ;;
    serving) echo services/serving ;;
    drift) echo services/drift ;;
    kserve) echo services/kserve ;;
  esac
}

BASE_TAG=localhost/atelier-base:bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

make_local_base() {
  if [ "$REBUILD_BASE" -eq 0 ] && $ENGINE image exists "$BASE_TAG" 2>/dev/null; then
    echo "build-images: base $BASE_TAG (cached)"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 \
    || { echo "build-images: --local-base needs debootstrap (scripts/setup.sh installs it)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "build-images: debootstrap needs root for --local-base" >&2; exit 1; }
  local rootfs start
  start=$SECONDS
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/atelier-base.XXXXXX")"
  trap 'rm -rf "$rootfs"' RETURN
  echo "build-images: making $BASE_TAG with debootstrap from $DEBIAN_MIRROR"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  # The release's updates and security suites, as the python image's Debian has them.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main
SOURCES
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | $ENGINE import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
  echo "build-images: made $BASE_TAG in $((SECONDS - start)) s"
}

BUILD_ARGS=()
TORCH_ARGS=()  # only for the images that install torch (their Dockerfile declares the ARG)
if [ "$LOCAL_BASE" -eq 1 ]; then
  [ "$ENGINE" = podman ] || { echo "build-images: --local-base needs podman" >&2; exit 2; }
  make_local_base
  BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_TAG")
fi

# What this machine's pip needs, mounted only when present (podman only: docker build has no
# --volume).
pip_setting() {  # the value of a pip config key (global. or :env:), or nothing
  command -v pip >/dev/null 2>&1 || return 0
  pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | head -n1
}
if [ "$ENGINE" = podman ]; then
  cert="${PIP_CERT:-$(pip_setting cert)}"
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    conf_dir="$ATELIER_PODMAN_HOME/build"
    mkdir -p "$conf_dir"
    printf '[global]\ncert = %s\n' "$cert" >"$conf_dir/pip.conf"
    BUILD_ARGS+=(--volume "$cert:$cert:ro" --volume "$conf_dir/pip.conf:/etc/pip.conf:ro")
    echo "build-images: pip trusts $cert (mounted for the build)"
  fi
  links="$(pip_setting find-links)"
  if [ -n "$links" ] && compgen -G "$links/torch-2.13.0+cpu-*.whl" >/dev/null; then
    TORCH_ARGS=(--volume "$links:$links:ro"
      --build-arg "TORCH_PIP_ARGS=--no-index --find-links $links")
    echo "build-images: torch from $links (mounted for the build)"
  fi
fi

for image in "${IMAGES[@]}"; do
  folder="$(folder_of "$image")"
  bash scripts/stage-image-context.sh "$folder"
  start=$SECONDS
  args=("${BUILD_ARGS[@]}")
  if grep -q '^ARG TORCH_PIP_ARGS' "$folder/Dockerfile"; then
    args+=("${TORCH_ARGS[@]}")
  fi
  $ENGINE build "${args[@]}" -t "atelier-$image:$TAG" "$folder"
  size=$($ENGINE image inspect --format '{{.Size}}' "atelier-$image:$TAG")
  echo "build-images: atelier-$image:$TAG in $((SECONDS - start)) s, $((size / 1000000)) MB"
done
