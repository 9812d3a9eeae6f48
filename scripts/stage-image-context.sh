#!/usr/bin/env bash
# Stage what an image needs from outside its folder into <folder>/.build/.
#
# Each image's build context is its own folder (training-job/, services/serving/,
# services/drift/, services/kserve/): one deployable, one folder. A build context cannot reach outside itself,
# but every image installs the atelier package (its own extra of it). This script copies the
# package into <folder>/.build/ (ignored by git), where the folder's Dockerfile COPYs it from:
#
#   .build/atelier/   pip-installable source: pyproject.toml, README.md, constraints.txt, src/
#                     (the package data under src/ holds the TorchServe templates)
#   .build/deps/      the same metadata with an empty README and an empty atelier module: the
#                     Dockerfiles install the dependencies from it in a layer of their own,
#                     which stays cached until pyproject.toml or constraints.txt change
#
# Skaffold runs it as each artifact's before-build hook (Skaffold.yaml). Skaffold hashes a
# context before that hook runs, so run it yourself before `skaffold run` (or pass
# --cache-artifacts=false) when only src/ changed; docs/kubernetes.md does.
#
# Usage: scripts/stage-image-context.sh FOLDER...   (or --all: every image folder)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The image folders, in the order of the artifacts in Skaffold.yaml (a test checks both).
ALL=(training-job services/serving services/drift services/kserve)

if [ "$#" -eq 0 ]; then
  echo "usage: $0 FOLDER... | --all   (folders: ${ALL[*]})" >&2
  exit 2
fi
if [ "$1" = "--all" ]; then
  set -- "${ALL[@]}"
fi

stage() {
  local folder="$1" ctx stage
  folder="${folder%/}"
  case "$folder" in
    /*) ctx="$folder" ;;
    *) ctx="$root/$folder" ;;
  esac
  if [ ! -f "$ctx/Dockerfile" ]; then
    echo "stage-image-context: $folder has no Dockerfile (folders: ${ALL[*]})" >&2
    exit 2
  fi
  stage="$(mktemp -d "$ctx/.build.tmp.XXXXXX")"
  mkdir -p "$stage/atelier/src"
  cp "$root/pyproject.toml" "$root/README.md" "$root/constraints.txt" "$stage/atelier/"
  cp -R "$root/src/atelier" "$stage/atelier/src/atelier"
  mkdir -p "$stage/deps/src/atelier"
  cp "$root/pyproject.toml" "$root/constraints.txt" "$stage/deps/"
  : >"$stage/deps/README.md"
  : >"$stage/deps/src/atelier/__init__.py"
  find "$stage" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  find "$stage" -name '*.pyc' -delete
  # The staged tree replaces the old one in one rename, so a build never sees half of it.
  rm -rf "$ctx/.build"
  mv "$stage" "$ctx/.build"
  chmod -R u=rwX,go=rX "$ctx/.build"
  echo "staged $folder/.build (atelier $(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml"))"
}

for folder in "$@"; do
  stage "$folder"
done
