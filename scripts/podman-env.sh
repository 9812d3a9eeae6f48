#!/usr/bin/env bash
# Podman with atelier's own configuration, never the machine's: source this file.
#
#   source scripts/podman-env.sh            # exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF
#   bash scripts/podman-env.sh --print      # prints them as NAME=value lines (tests read these)
#
# Everything lives under ATELIER_PODMAN_HOME (default ~/.cache/atelier/podman): the two
# config files, the image and layer store, and podman's run state. The store outlives a
# checkout on purpose: the image tests and scripts/build-images.sh reuse its layer cache, so
# a second build on the same machine only redoes the layers whose inputs changed.
#
# Why the settings (verified with podman 4.3.1 on Debian bookworm):
# - runtime runc: crun fails here; runc works.
# - default_ulimits: podman's defaults fail to apply on this machine ("error setting rlimit
#   type 7"), so containers get explicit, ordinary limits.
# - storage driver overlay on the store folder (an ext4 or xfs disk; fuse-overlayfs is the
#   fallback podman picks itself when the kernel's overlay cannot be used).
ATELIER_PODMAN_HOME="${ATELIER_PODMAN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/atelier/podman}"
mkdir -p "$ATELIER_PODMAN_HOME/storage" "$ATELIER_PODMAN_HOME/run"
cat >"$ATELIER_PODMAN_HOME/containers.conf" <<CONF
# Written by scripts/podman-env.sh: edit that file, not this one.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
cat >"$ATELIER_PODMAN_HOME/storage.conf" <<CONF
# Written by scripts/podman-env.sh: edit that file, not this one.
[storage]
driver = "overlay"
graphroot = "$ATELIER_PODMAN_HOME/storage"
runroot = "$ATELIER_PODMAN_HOME/run"
CONF
export ATELIER_PODMAN_HOME
export CONTAINERS_CONF="$ATELIER_PODMAN_HOME/containers.conf"
export CONTAINERS_STORAGE_CONF="$ATELIER_PODMAN_HOME/storage.conf"

if [ "${1:-}" = "--print" ]; then
  for name in ATELIER_PODMAN_HOME CONTAINERS_CONF CONTAINERS_STORAGE_CONF; do
    echo "$name=${!name}"
  done
fi
