#!/usr/bin/env bash
# make demo: smoke training (tracked in MLflow) -> archive into the model store (registered
# in MLflow's Model Registry as @champion) -> the MLflow UI (mlflow server over runs/mlflow.db)
# -> TorchServe -> Prometheus and
# Alertmanager -> classify real test images with curl over raw, multipart, KServe v1 and v2
# -> drift sidecar, clean then shifted traffic -> alerts -> dashboard snapshots -> stop.
# Every step is the real component, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${ATELIER_PORT:-8085}
MGMT_PORT=${ATELIER_MANAGEMENT_PORT:-8081}
METRICS_PORT=${ATELIER_METRICS_PORT:-8082}
DRIFT_PORT=${ATELIER_DRIFT_PORT:-8095}
PROM_PORT=${ATELIER_PROMETHEUS_PORT:-9090}
AM_PORT=${ATELIER_ALERTMANAGER_PORT:-9093}
WEBHOOK_PORT=${ATELIER_WEBHOOK_PORT:-9099}
MLFLOW_PORT=${ATELIER_MLFLOW_PORT:-5000}
SPOOL="$PWD/runs/demo-spool"  # absolute: TorchServe runs in its own folder
RUN=runs/demo-smoke

step() { printf '\n==> %s\n' "$*"; }

step "train the smoke config ($RUN), tracked in MLflow (runs/mlflow.db, beside the run folder)"
rm -rf "$RUN"
$BIN/atelier train --config training-job/configs/smoke.yaml --out "$RUN"

step "the tracked run, read back through MLflow's client"
$BIN/python - "$RUN" <<'PY'
import json, sys, logging
from pathlib import Path
from mlflow import MlflowClient
logging.getLogger("mlflow").setLevel(logging.WARNING)
rec = json.loads((Path(sys.argv[1]) / "mlflow.json").read_text())
client = MlflowClient(rec["tracking_uri"])
run = client.get_run(rec["run_id"])
m, t = run.data.metrics, run.data.tags
print(f"  run {rec['run_id']} ({run.info.status}) in experiment {rec['experiment_name']!r}")
print(f"  {len(run.data.params)} params, e.g. optim.lr={run.data.params['optim.lr']} train.epochs={run.data.params['train.epochs']}")
val = [round(x.value, 4) for x in client.get_metric_history(rec["run_id"], "val_accuracy")]
print(f"  val_accuracy per epoch {val}; test_accuracy {m['test_accuracy']}, weighted F1 {m['test_f1_weighted']}")
print(f"  system metrics: {sorted(k for k in m if k.startswith('system/'))[:3]} ...")
print(f"  tags: git {t['atelier.git_commit'][:12]}, data {t['atelier.data.digest'][:12]} ({t['atelier.data.sizes']}), gate {t['atelier.gate']}")
print(f"  artifacts: {', '.join(a.path for a in client.list_artifacts(rec['run_id']))}")
PY

step "archive it as a new version in model-store/, registered in the MLflow Model Registry"
$BIN/atelier archive "$RUN" --store model-store
cat model-store/CURRENT.json; echo
$BIN/atelier models list --store model-store

step "start the MLflow UI on 127.0.0.1:$MLFLOW_PORT (mlflow server over runs/mlflow.db)"
rm -rf runs/demo-mlflow
$BIN/python -m atelier.tools.mlflow_server --root runs/demo-mlflow --port "$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$PWD/runs/mlflow.db" > runs/demo-mlflow.log 2>&1 &
MLFLOW_PID=$!
SERVE_PID=""
DRIFT_PID=""
MON_PID=""
# Wait (up to TRIES half-seconds) until a server started in the background prints its
# "ready" line into LOG; if it exits first, show its log and stop the demo.
wait_ready() {
  local log=$1 pid=$2 tries=$3
  for _ in $(seq 1 "$tries"); do
    grep -q '^ready' "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.5
  done
}
cleanup() {
  [ -n "$MON_PID" ] && kill -TERM "$MON_PID" 2>/dev/null && wait "$MON_PID" 2>/dev/null
  [ -n "$DRIFT_PID" ] && kill -TERM "$DRIFT_PID" 2>/dev/null && wait "$DRIFT_PID" 2>/dev/null
  [ -n "$SERVE_PID" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  [ -n "$MLFLOW_PID" ] && kill -TERM "$MLFLOW_PID" 2>/dev/null && wait "$MLFLOW_PID" 2>/dev/null
  true
}
trap cleanup EXIT
wait_ready runs/demo-mlflow.log "$MLFLOW_PID" 240
cat runs/demo-mlflow.log
MLFLOW_URL=http://127.0.0.1:$MLFLOW_PORT
RUN_PAGE="$MLFLOW_URL/#/experiments/$($BIN/python -c 'import json, sys
r = json.load(open(sys.argv[1])); print(r["experiment_id"] + "/runs/" + r["run_id"])' "$RUN/mlflow.json")"
echo "  the run:   $RUN_PAGE"
echo "  the model: $MLFLOW_URL/#/models/fashion-mnist"
echo "\$ curl -s '$MLFLOW_URL/api/2.0/mlflow/registered-models/alias?name=fashion-mnist&alias=champion'"
curl -s "$MLFLOW_URL/api/2.0/mlflow/registered-models/alias?name=fashion-mnist&alias=champion" \
  | $BIN/python -c 'import json,sys; v=json.load(sys.stdin)["model_version"]; print("  -> @champion is version", v["version"], "of", v["name"], "from run", v["run_id"], v["status"])'
if command -v chromium >/dev/null; then
  # The run's page as a browser renders it (headless Chromium, as tests/integration/test_mlflow.py).
  timeout -k 5 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir=runs/demo-mlflow/chromium --window-size=1400,1400 --virtual-time-budget=10000 \
    --screenshot=runs/demo-mlflow/run-page.png "$RUN_PAGE" >/dev/null 2>&1 \
    && echo "  the run's page, drawn by headless Chromium: runs/demo-mlflow/run-page.png"
fi

step "start TorchServe on 127.0.0.1:$PORT (feature spool: $SPOOL)"
rm -rf "$SPOOL" runs/demo-drift
mkdir -p "$SPOOL"
ATELIER_SPOOL_DIR="$SPOOL" $BIN/atelier serve --store model-store --port "$PORT" --management-port "$MGMT_PORT" \
  --metrics-port "$METRICS_PORT" --run-dir runs/demo-torchserve > runs/demo-serve.log 2>&1 &
SERVE_PID=$!
wait_ready runs/demo-serve.log "$SERVE_PID" 240
grep -q '^ready' runs/demo-serve.log || { echo "TorchServe did not get ready"; cat runs/demo-serve.log; exit 1; }
cat runs/demo-serve.log

step "start Prometheus (:$PROM_PORT) and Alertmanager (:$AM_PORT) with monitoring/"
# Short intervals so the demo's alerts fire within its run; the rules are monitoring/'s own.
rm -rf runs/demo-monitoring
$BIN/atelier monitoring up --torchserve "127.0.0.1:$METRICS_PORT" --drift "127.0.0.1:$DRIFT_PORT" \
  --prometheus-port "$PROM_PORT" --alertmanager-port "$AM_PORT" --webhook-port "$WEBHOOK_PORT" \
  --scrape-interval 2s --evaluation-interval 2s --group-wait 2s --group-interval 10s \
  --run-dir runs/demo-monitoring > runs/demo-monitoring.log 2>&1 &
MON_PID=$!
wait_ready runs/demo-monitoring.log "$MON_PID" 120
cat runs/demo-monitoring.log

step "classify Fashion-MNIST test images with curl: raw PNG bodies"
$BIN/atelier samples --out runs/samples --n 8 >/dev/null
URL=http://127.0.0.1:$PORT
show_raw() { $BIN/python -c 'import json,sys; r=json.load(sys.stdin); print("  -> %-12s confidence %.3f  model_version %s" % (r["label"], r["confidence"], r["model_version"]))'; }
for f in runs/samples/000[0-3]-*.png; do
  echo "\$ curl -s -H 'Content-Type: image/png' --data-binary @$f $URL/predictions/fashion-mnist"
  curl -s -H "Content-Type: image/png" --data-binary @"$f" "$URL/predictions/fashion-mnist" | show_raw
done

step "multipart upload"
f=$(ls runs/samples/0004-*.png)
echo "\$ curl -s -F data=@$f $URL/predictions/fashion-mnist"
curl -s -F data=@"$f" "$URL/predictions/fashion-mnist" | show_raw

step "KServe v1: {\"instances\": [{\"b64\": ...}, ...]}"
$BIN/python - <<'PY'
import base64, json, pathlib
files = sorted(pathlib.Path("runs/samples").glob("000[5-7]-*.png"))
b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]
pathlib.Path("runs/samples/v1.json").write_text(json.dumps({"instances": [{"b64": b} for b in b64]}))
tensor = {"name": "images", "shape": [len(b64)], "datatype": "BYTES", "data": b64}
pathlib.Path("runs/samples/v2.json").write_text(json.dumps({"id": "demo-1", "inputs": [tensor]}))
print("  true labels:", ", ".join(f.stem.split("-", 1)[1] for f in files))
PY
echo "\$ curl -s -H 'Content-Type: application/json' -d @runs/samples/v1.json $URL/v1/models/fashion-mnist:predict"
curl -s -H "Content-Type: application/json" -d @runs/samples/v1.json "$URL/v1/models/fashion-mnist:predict" \
  | $BIN/python -c 'import json,sys; print("  ->", ", ".join(p["label"] for p in json.load(sys.stdin)["predictions"]))'

step "KServe v2 (Open Inference Protocol): a BYTES tensor of encoded images"
echo "\$ curl -s -H 'Content-Type: application/json' -d @runs/samples/v2.json $URL/v2/models/fashion-mnist/infer"
curl -s -H "Content-Type: application/json" -d @runs/samples/v2.json "$URL/v2/models/fashion-mnist/infer" \
  | $BIN/python -c 'import json,sys; r=json.load(sys.stdin); o={x["name"]: x for x in r["outputs"]}; print("  -> id", r["id"], "labels", o["label"]["data"], "probabilities", o["probabilities"]["shape"])'

step "a bad request gets a 4xx with a typed error, and the server keeps serving"
echo "\$ curl -s -H 'Content-Type: image/png' --data-binary 'not an image' $URL/predictions/fashion-mnist"
curl -s -w '  (HTTP %{http_code})\n' -H "Content-Type: image/png" --data-binary 'not an image' "$URL/predictions/fashion-mnist"
curl -s -H "Content-Type: image/png" --data-binary @runs/samples/0000-Ankle-boot.png "$URL/predictions/fashion-mnist" | show_raw

step "the handler's metrics on http://127.0.0.1:$METRICS_PORT/metrics"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^atelier_(requests|errors)_total' | sed 's/^/  /'

step "start the drift sidecar on 127.0.0.1:$DRIFT_PORT, reading $SPOOL"
$BIN/atelier drift --spool-dir "$SPOOL" --store model-store --state-dir runs/demo-drift/state \
  --database-url sqlite:///runs/demo-drift/inference-log.db --port "$DRIFT_PORT" --report-every-records 500 \
  --report-every-seconds 2 > runs/demo-drift.log 2>&1 &
DRIFT_PID=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$DRIFT_PORT/readyz" >/dev/null && break
  kill -0 $DRIFT_PID 2>/dev/null || { cat runs/demo-drift.log; exit 1; }
  sleep 0.5
done
curl -s "http://127.0.0.1:$DRIFT_PORT/readyz"; echo

drift_gauges() {
  $BIN/python - "$DRIFT_PORT" "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, want, drift = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "drift"
base = f"http://127.0.0.1:{port}"
get = lambda path: urllib.request.urlopen(base + path, timeout=10).read().decode()
deadline = time.time() + 120
while time.time() < deadline:
    status = json.loads(get("/reports"))["status"].get("last_1000", {})
    d = status.get("detail", {})
    if d.get("rows", 0) >= want and d.get("dataset_drift") is drift:
        break
    time.sleep(1)
for line in get("/metrics").splitlines():
    if line.startswith(("atelier_drift_records_ingested_total", "atelier_drift_share{", "atelier_drift_severity{",
                        "atelier_drift_confidence_zscore{")) or (
        line.startswith("atelier_drift_feature_drifted{") and "brightness" in line
    ):
        if "last_1000" in line or "ingested" in line:
            print("  " + line)
d = status.get("detail", {})
print(f"  -> last_1000: severity {status.get('severity')}, drift share {status.get('drift_share')}, "
      f"dataset drift {d.get('dataset_drift')}, report {status.get('report_id')}")
PY
}

step "clean traffic: 1,024 held-out test images (KServe v2, 32 per request)"
$BIN/atelier send --url "$URL" --n 1024 --offset 0
drift_gauges 1000 clean

step "shifted traffic: the next 1,024 test images, inverted"
$BIN/atelier send --url "$URL" --n 1024 --offset 1024 --shift invert
drift_gauges 1000 drift
echo "  Evidently report: curl http://127.0.0.1:$DRIFT_PORT/reports/latest.html (and latest.json); list: curl http://127.0.0.1:$DRIFT_PORT/reports"

step "load test: locust headless for 20 s (raw PNG, KServe v1 and v2, singles and batches; true labels to the drift sidecar; inverted images from 10 s on)"
$BIN/atelier loadtest "$URL" --drift-url "http://127.0.0.1:$DRIFT_PORT" --users 4 --duration 20 --drift --report-dir runs/demo-loadtest

step "alerts: the inverted images raise DriftDetected (for: 1m) -- waiting for it to fire"
for _ in $(seq 1 60); do
  $BIN/python -c 'import json, sys, urllib.request
alerts = json.load(urllib.request.urlopen(sys.argv[1]))["data"]["alerts"]
sys.exit(not any(a["labels"]["alertname"] == "DriftDetected" and a["state"] == "firing" for a in alerts))' \
    "http://127.0.0.1:$PROM_PORT/api/v1/alerts" && break
  sleep 2
done
$BIN/atelier monitoring alerts --prometheus "http://127.0.0.1:$PROM_PORT" --alertmanager "http://127.0.0.1:$AM_PORT"
for _ in $(seq 1 15); do [ -s runs/demo-monitoring/webhook.jsonl ] && break; sleep 1; done
echo "  notifications Alertmanager sent to the webhook receiver (runs/demo-monitoring/webhook.jsonl):"
$BIN/python - <<'PY'
import json, pathlib
path = pathlib.Path("runs/demo-monitoring/webhook.jsonl")
for line in (path.read_text().splitlines() if path.exists() else []):
    n = json.loads(line)
    for a in n["payload"]["alerts"]:
        labels = a["labels"]
        print(f"  -> /alerts/{n['receiver']:<7} {a['status']:<8} {labels['alertname']} "
              f"severity={labels.get('severity')} window={labels.get('window', '-')}")
PY

step "dashboard snapshots: every panel queried from Prometheus and drawn to PNG"
$BIN/atelier dashboards snapshot --prometheus "http://127.0.0.1:$PROM_PORT" --out runs/demo-dashboards --range 10m

step "stop Prometheus and Alertmanager (pid $MON_PID)"
kill -TERM "$MON_PID"; wait "$MON_PID" || true
MON_PID=""

step "stop the drift sidecar (pid $DRIFT_PID)"
kill -TERM "$DRIFT_PID"; wait "$DRIFT_PID" || true
DRIFT_PID=""

step "stop TorchServe (pid $SERVE_PID)"
kill -TERM $SERVE_PID
wait $SERVE_PID || true
SERVE_PID=""

step "stop the MLflow UI (pid $MLFLOW_PID)"
kill -TERM "$MLFLOW_PID"; wait "$MLFLOW_PID" || true
MLFLOW_PID=""
trap - EXIT
echo "demo done: run folder $RUN (confusion_matrix.png, training_curves.png, augmentation.png, model_card.md)"
echo "  its MLflow run and registry again: $BIN/python -m atelier.tools.mlflow_server --backend-store-uri sqlite:///$PWD/runs/mlflow.db --root runs/demo-mlflow --port $MLFLOW_PORT"
echo "  (or $BIN/mlflow ui --backend-store-uri sqlite:///$PWD/runs/mlflow.db --port $MLFLOW_PORT), then $MLFLOW_URL"
