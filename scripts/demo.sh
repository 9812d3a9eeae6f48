#!/usr/bin/env bash
# make demo: smoke training -> archive into the model store -> TorchServe -> classify real
# test images with curl -> stop. Every step is the real component, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${ATELIER_PORT:-8085}
MGMT_PORT=${ATELIER_MANAGEMENT_PORT:-8081}
METRICS_PORT=${ATELIER_METRICS_PORT:-8082}
RUN=runs/demo-smoke

step() { printf '\n==> %s\n' "$*"; }

step "train the smoke config ($RUN)"
rm -rf "$RUN"
$BIN/atelier train --config training-job/configs/smoke.yaml --out "$RUN"

step "archive it as a new version in model-store/"
$BIN/atelier archive "$RUN" --store model-store
cat model-store/CURRENT.json; echo

step "start TorchServe on 127.0.0.1:$PORT"
$BIN/atelier serve --store model-store --port "$PORT" --management-port "$MGMT_PORT" \
  --metrics-port "$METRICS_PORT" --run-dir runs/demo-torchserve > runs/demo-serve.log 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  if grep -q '^ready' runs/demo-serve.log 2>/dev/null; then break; fi
  if ! kill -0 $SERVE_PID 2>/dev/null; then cat runs/demo-serve.log; exit 1; fi
  sleep 0.5
done
grep -q '^ready' runs/demo-serve.log || { echo "TorchServe did not get ready"; cat runs/demo-serve.log; exit 1; }
cat runs/demo-serve.log

step "classify Fashion-MNIST test images with curl"
$BIN/atelier samples --out runs/samples --n 8 >/dev/null
for f in runs/samples/*.png; do
  echo "\$ curl -s -H 'Content-Type: image/png' --data-binary @$f http://127.0.0.1:$PORT/predictions/fashion-mnist"
  curl -s -H "Content-Type: image/png" --data-binary @"$f" "http://127.0.0.1:$PORT/predictions/fashion-mnist" \
    | $BIN/python -c 'import json,sys; r=json.load(sys.stdin); print("  -> %-12s confidence %.3f  model_version %s" % (r["label"], r["confidence"], r["model_version"]))'
done

step "stop TorchServe (pid $SERVE_PID)"
kill -TERM $SERVE_PID
wait $SERVE_PID || true
trap - EXIT
echo "demo done: run folder $RUN (confusion_matrix.png, training_curves.png, augmentation.png)"
