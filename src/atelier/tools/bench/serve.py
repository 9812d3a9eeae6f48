"""`atelier bench serve`: the in-process limit against TorchServe and the KServe runtime.

Every number comes from one run on this machine. The servers are driven by wrk (a C load
generator, so the client costs little) over 127.0.0.1; the in-process pipeline (decode +
preprocess + forward, one thread like one server worker) is the limit they are compared
against. TorchServe's rows go through the OIP front, as it is deployed; ``front_cost``
measures what the front adds, on the same TorchServe in the same run. Nothing here is
asserted in tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from atelier.runtime.errors import ServerError
from atelier.runtime.inference import Classifier
from atelier.runtime.preprocess import encode_png
from atelier.runtime.records import FeatureSpool
from atelier.runtime.service import InferenceService, Item
from atelier.serving.workers import available_cores
from atelier.tools.paths import project_file
from atelier.tools.process import free_port
from atelier.training.archive import archive_run, current
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR, load_config
from atelier.training.data.idx import load_fashion_mnist

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("ATELIER_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("ATELIER_CONTENT_TYPE")
local extra = os.getenv("ATELIER_EXTRA_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Row:
    target: str
    protocol: str
    images_per_request: int
    concurrency: int | str
    req_per_s: float
    img_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    limit_img_per_s: float

    @property
    def ratio(self) -> float:
        return self.img_per_s / self.limit_img_per_s if self.limit_img_per_s else 0.0


def ensure_store(store: Path, work: Path) -> None:
    if current(store) is not None:
        return
    from atelier.training.loop import train

    run = work / "smoke-run"
    if not (run / "metrics.json").is_file():
        train(load_config(project_file("training-job/configs/smoke.yaml")), run)
    archive_run(run, store)


def _unpack(store: Path, name: str, dest: Path) -> Path:
    with zipfile.ZipFile(store / "model-store" / f"{name}.mar") as z:
        z.extractall(dest)
    return dest


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def in_process(model_dir: Path, pngs: list[bytes], spool_dir: Path) -> dict[str, float]:
    """Images/s of decode + preprocess + forward, single images and batches of 32, on one
    thread; and the per-request cost of the feature spool."""
    torch.set_num_threads(1)
    clf = Classifier.from_dir(model_dir)
    n = len(pngs)
    single = _timed(lambda: [clf.predict_images([p]) for p in pngs], 3) / n
    chunks = [pngs[i : i + 32] for i in range(0, n - n % 32, 32)]
    batch = _timed(lambda: [clf.predict_images(c) for c in chunks], 3) / (32 * len(chunks))
    plain = InferenceService(clf)
    spooled = InferenceService(clf, spool=FeatureSpool(spool_dir))
    items = [Item(p, content_type="image/png") for p in pngs]
    # Interleave the two so machine noise hits both alike.
    t_plain, t_spool = [], []
    for _ in range(5):
        t_plain.append(_timed(lambda: [plain.handle([it]) for it in items], 1) / n)
        t_spool.append(_timed(lambda: [spooled.handle([it]) for it in items], 1) / n)
    assert spooled.spool is not None
    spooled.spool.close()
    return {
        "single_img_per_s": 1 / single,
        "batch32_img_per_s": 1 / batch,
        "request_s_without_spool": float(np.median(t_plain)),
        "request_s_with_spool": float(np.median(t_spool)),
    }


def run_wrk(
    url: str,
    body: Path,
    content_type: str,
    connections: int,
    seconds: float,
    script: Path,
    extra_header: str = "",
) -> dict[str, float]:
    """``extra_header``: one more request header, ``"Name: value"``."""
    if shutil.which("wrk") is None:
        raise ServerError("wrk is not installed", hint="run make setup (apt-get install wrk)")
    env = {**os.environ, "ATELIER_BODY": str(body), "ATELIER_CONTENT_TYPE": content_type,
           "ATELIER_EXTRA_HEADER": extra_header}  # fmt: skip
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise ServerError(f"wrk printed no summary: {out.stdout[-300:]} {out.stderr[-300:]}")
    r = json.loads(line[len("WRKJSON ") :])
    return {
        "req_per_s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "non_2xx": r["non2xx"] + r["socket_errors"],
    }


def _bodies(work: Path, x: np.ndarray) -> dict[str, tuple[Path, str, int]]:
    png = work / "one.png"
    png.write_bytes(encode_png(x[0]))
    v2 = work / "v2-32.json"
    tensor = {
        "name": "input-0",
        "shape": [32, 28, 28],
        "datatype": "UINT8",
        "data": x[:32, 0].ravel().tolist(),
    }
    v2.write_text(json.dumps({"inputs": [tensor]}))
    return {"raw": (png, "image/png", 1), "v2": (v2, "application/json", 32)}


def _binary_v2_body(work: Path, x: np.ndarray) -> tuple[Path, str, int, str]:
    """32 images as one UINT8 tensor in the binary tensor data extension, outputs asked in
    binary too (what tritonclient sends by default): body, content type, images, header."""
    data = np.ascontiguousarray(x[:32, 0], dtype=np.uint8).tobytes()
    head = json.dumps({
        "inputs": [{"name": "input-0", "shape": [32, 28, 28], "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    path = work / "v2-32.bin"
    path.write_bytes(head + data)
    return path, "application/octet-stream", 32, f"Inference-Header-Content-Length: {len(head)}"


WRK_GET_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""
# What the front's cost is measured on: a raw PNG classified (the brief's request), and
# TorchServe's GET /ping, which costs TorchServe next to nothing, so the hop alone shows.
FRONT_REQUESTS = ("raw", "ping")
FRONT_CONCURRENCY = (1, 32)
FRONT_ROUNDS = 3


@dataclass
class FrontRow:
    """One request kind at one concurrency: TorchServe direct and through the OIP front, the
    median of interleaved rounds."""

    request: str
    concurrency: int
    direct_p50_ms: float
    front_p50_ms: float
    direct_p99_ms: float
    front_p99_ms: float
    direct_req_per_s: float
    front_req_per_s: float
    non_2xx: int

    @property
    def p50_cost_ms(self) -> float:
        return self.front_p50_ms - self.direct_p50_ms

    @property
    def p99_cost_ms(self) -> float:
        return self.front_p99_ms - self.direct_p99_ms


def front_cost(server: Any, name: str, png: Path, work: Path, seconds: float) -> list[FrontRow]:
    """The OIP front's latency cost on one TorchServe: each request kind and concurrency is
    sent to TorchServe's own inference port and to the front in turn, FRONT_ROUNDS times, so
    machine noise hits both alike; the medians are compared."""
    post_script, get_script = work / "post.lua", work / "get.lua"
    get_script.write_text(WRK_GET_SCRIPT)
    targets = {"direct": server.torchserve_url, "front": server.inference_url}
    paths = {"raw": f"/predictions/{name}", "ping": "/ping"}
    rows = []
    for request in FRONT_REQUESTS:
        script = post_script if request == "raw" else get_script
        for c in FRONT_CONCURRENCY:
            runs: dict[str, list[dict[str, float]]] = {"direct": [], "front": []}
            for _ in range(FRONT_ROUNDS):
                for target, base in targets.items():
                    url = base + paths[request]
                    runs[target].append(
                        run_wrk(url, png, "image/png", c, max(2.0, seconds / 2), script)
                    )
            direct, front = runs["direct"], runs["front"]
            rows.append(
                FrontRow(
                    request,
                    c,
                    _median(direct, "p50_ms"),
                    _median(front, "p50_ms"),
                    _median(direct, "p99_ms"),
                    _median(front, "p99_ms"),
                    _median(direct, "req_per_s"),
                    _median(front, "req_per_s"),
                    int(sum(r["non_2xx"] for r in direct + front)),
                )
            )
    return rows


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def _print_front(rows: list[FrontRow]) -> None:
    if not rows:
        return
    table = Table(
        title=f"OIP front on TorchServe: direct vs through the front, same TorchServe, "
        f"interleaved, median of {FRONT_ROUNDS} (raw = PNG classified, ping = GET /ping)"
    )
    for col in ("request", "conc", "p50 direct", "p50 front", "p50 cost", "p99 direct",
                "p99 front", "p99 cost", "req/s direct", "req/s front", "non-2xx"):  # fmt: skip
        table.add_column(col, justify="left" if col == "request" else "right")
    for r in rows:
        table.add_row(
            r.request,
            str(r.concurrency),
            f"{r.direct_p50_ms:.2f}",
            f"{r.front_p50_ms:.2f}",
            f"{r.p50_cost_ms:+.2f}",
            f"{r.direct_p99_ms:.2f}",
            f"{r.front_p99_ms:.2f}",
            f"{r.p99_cost_ms:+.2f}",
            f"{r.direct_req_per_s:,.0f}",
            f"{r.front_req_per_s:,.0f}",
            str(r.non_2xx),
        )
    Console(width=200).print(table)


def _start(
    runtime: str,
    store: Path,
    name: str,
    run_dir: Path,
    spool: Path | None,
    kserve_workers: int | None = None,
) -> Any:
    env = {"ATELIER_SPOOL_DIR": str(spool)} if spool else {}
    if runtime == "torchserve":
        from atelier.tools.torchserve import TorchServe, TorchServeSettings

        return TorchServe(
            TorchServeSettings(store=store, run_dir=run_dir, model_name=name, extra_env=env)
        )
    from atelier.tools.kserve import KServeRuntime, KServeSettings

    return KServeRuntime(
        KServeSettings(
            store=store, run_dir=run_dir, model_name=name, extra_env=env, workers=kserve_workers
        )
    )


def bench_serve(
    store: Path,
    out: Path,
    seconds: float,
    concurrency: list[int],
    runtimes: list[str],
    kserve_workers: int | None = None,
) -> list[Row]:
    """``runtimes``: torchserve, kserve, and the peers (PEER_TARGETS). The KServe runtime
    runs ``kserve_workers`` processes (default: one per core)."""
    cores = available_cores()
    kserve_workers = kserve_workers or cores
    out = out.resolve()  # the peers and servers run in folders of their own
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=out))
    ensure_store(store, out)
    cur = current(store)
    assert cur is not None
    name = str(cur["name"])
    x = load_fashion_mnist(DEFAULT_FASHION_MNIST_DIR)["test_x"][:320]
    pngs = [encode_png(img) for img in x]
    limit = in_process(_unpack(store, name, work / "model"), pngs, work / "spool-inproc")
    rows = [
        Row(
            "in-process",
            "decode+forward",
            1,
            "-",
            limit["single_img_per_s"],
            limit["single_img_per_s"],
            1000 / limit["single_img_per_s"],
            float("nan"),
            0,
            limit["single_img_per_s"],
        ),
        Row(
            "in-process",
            "decode+forward",
            32,
            "-",
            limit["batch32_img_per_s"] / 32,
            limit["batch32_img_per_s"],
            32000 / limit["batch32_img_per_s"],
            float("nan"),
            0,
            limit["batch32_img_per_s"],
        ),
    ]
    bodies = _bodies(work, x)
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    paths = {"raw": f"/predictions/{name}", "v2": f"/v2/models/{name}/infer"}
    limits = {"raw": limit["single_img_per_s"], "v2": limit["batch32_img_per_s"]}
    server_spool: dict[str, float] = {}
    front_rows: list[FrontRow] = []
    binary = _binary_v2_body(work, x)
    for runtime in [r for r in runtimes if r not in PEER_TARGETS]:
        with _start(runtime, store, name, work / runtime, work / f"spool-{runtime}",
                    kserve_workers) as server:  # fmt: skip
            if runtime == "torchserve":
                front_rows = front_cost(server, name, bodies["raw"][0], work, seconds)
            for protocol in ("raw", "v2"):
                body, ctype, n_img = bodies[protocol]
                url = server.inference_url + paths[protocol]
                run_wrk(url, body, ctype, 4, 1.0, script)  # warm-up
                for c in concurrency:
                    r = run_wrk(url, body, ctype, c, seconds, script)
                    rows.append(
                        Row(
                            runtime,
                            protocol,
                            n_img,
                            c,
                            r["req_per_s"],
                            r["req_per_s"] * n_img,
                            r["p50_ms"],
                            r["p99_ms"],
                            int(r["non_2xx"]),
                            limits[protocol],
                        )
                    )
            rows += _binary_rows(runtime, server.inference_url + paths["v2"], binary,
                                 concurrency, seconds, script, limits["v2"])  # fmt: skip
            # The spool's cost, side by side: a second server without the spool, both up,
            # driven in turn (raw, 8 connections) so machine noise hits both alike.
            with _start(runtime, store, name, work / f"{runtime}-nospool", None,
                        kserve_workers) as bare:  # fmt: skip
                body, ctype, _ = bodies["raw"]
                on: list[dict[str, float]] = []
                off: list[dict[str, float]] = []
                for _ in range(3):
                    for target, sink in ((bare, off), (server, on)):
                        url = target.inference_url + paths["raw"]
                        sink.append(run_wrk(url, body, ctype, 8, max(2.0, seconds / 2), script))
                for key, runs in (("on", on), ("off", off)):
                    server_spool[f"{runtime}_{key}_p50_ms"] = float(
                        np.median([r["p50_ms"] for r in runs])
                    )
                    server_spool[f"{runtime}_{key}_req_per_s"] = float(
                        np.median([r["req_per_s"] for r in runs])
                    )
    peers = [r for r in runtimes if r in PEER_TARGETS]
    if peers:
        rows += _peer_rows(peers, store, name, work, bodies["raw"][0], concurrency, seconds,
                           script, limits["raw"])  # fmt: skip
    _print(rows, limit, server_spool)
    _print_targets(rows, limit, cores, kserve_workers)
    _print_front(front_rows)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-serve-{stamp}.json").write_text(
        json.dumps(
            {
                "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows],
                "in_process": limit,
                "spool": server_spool,
                "cores": cores,
                "kserve_workers": kserve_workers,
                "oip_front": [
                    r.__dict__ | {"p50_cost_ms": r.p50_cost_ms, "p99_cost_ms": r.p99_cost_ms}
                    for r in front_rows
                ],
            },
            indent=2,
            default=str,
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    return rows


def _print(rows: list[Row], limit: dict[str, float], spool: dict[str, float]) -> None:
    console = Console(width=200)
    table = Table(title="atelier bench serve (one run, 2-core machine, wrk over 127.0.0.1)")
    for col in (
        "target",
        "protocol",
        "img/req",
        "conc",
        "req/s",
        "img/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "x in-process limit",
    ):
        table.add_column(col, justify="right" if col not in ("target", "protocol") else "left")
    for r in rows:
        table.add_row(
            r.target,
            r.protocol,
            str(r.images_per_request),
            str(r.concurrency),
            f"{r.req_per_s:,.0f}",
            f"{r.img_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            "-" if np.isnan(r.p99_ms) else f"{r.p99_ms:.2f}",
            str(r.non_2xx),
            f"{r.ratio:.2f}",
        )
    console.print(table)
    plain, spooled = limit["request_s_without_spool"], limit["request_s_with_spool"]
    console.print(
        f"feature spool, in-process: {plain * 1e6:.0f} us/request without, "
        f"{spooled * 1e6:.0f} us with (+{(spooled / plain - 1) * 100:.1f}%)"
    )
    for runtime in ("torchserve", "kserve"):
        on, off = spool.get(f"{runtime}_on_p50_ms"), spool.get(f"{runtime}_off_p50_ms")
        if on and off:
            console.print(
                f"feature spool, {runtime} raw c=8: p50 {off:.2f} ms without, {on:.2f} ms with "
                f"(+{(on / off - 1) * 100:.1f}%); req/s "
                f"{spool[f'{runtime}_off_req_per_s']:,.0f} without, "
                f"{spool[f'{runtime}_on_req_per_s']:,.0f} with"
            )


# --- v2 in binary, the peers, and the targets of issue 16 -----------------------------

# The servers a user would write instead (atelier.tools.bench.peers): bench target -> peer.
PEER_TARGETS = {"kserve-model": "kserve", "fastapi": "fastapi"}


def _binary_rows(
    runtime: str,
    url: str,
    binary: tuple[Path, str, int, str],
    concurrency: list[int],
    seconds: float,
    script: Path,
    limit: float,
) -> list[Row]:
    body, ctype, n_img, header = binary
    run_wrk(url, body, ctype, 4, 1.0, script, header)  # warm-up
    rows = []
    for c in concurrency:
        r = run_wrk(url, body, ctype, c, seconds, script, header)
        rows.append(Row(runtime, "v2 binary", n_img, c, r["req_per_s"], r["req_per_s"] * n_img,
                        r["p50_ms"], r["p99_ms"], int(r["non_2xx"]), limit))  # fmt: skip
    return rows


def _peer_rows(
    peers: list[str],
    store: Path,
    name: str,
    work: Path,
    png: Path,
    concurrency: list[int],
    seconds: float,
    script: Path,
    limit: float,
) -> list[Row]:
    """Raw PNG against each peer, one at a time, on the .mar's own model files."""
    from atelier.tools.bench.peers import PeerServer

    model_dir = work / "model"  # unpacked by the in-process measurement
    rows = []
    for target in peers:
        server = PeerServer(PEER_TARGETS[target], model_dir, name, work / target, free_port(),
                            png.read_bytes())  # fmt: skip
        with server:
            url = server.inference_url + server.path
            run_wrk(url, png, "image/png", 4, 1.0, script)  # warm-up
            for c in concurrency:
                r = run_wrk(url, png, "image/png", c, seconds, script)
                rows.append(Row(target, "raw", 1, c, r["req_per_s"], r["req_per_s"],
                                r["p50_ms"], r["p99_ms"], int(r["non_2xx"]), limit))  # fmt: skip
    return rows


def _print_targets(rows: list[Row], limit: dict[str, float], cores: int, workers: int) -> None:
    """Raw PNG side by side (the KServe runtime against TorchServe and the peers), and the
    issue's targets against the in-process limit on every core."""
    console = Console(width=200)
    single, batch32 = limit["single_img_per_s"] * cores, limit["batch32_img_per_s"] * cores
    raw = {(r.target, r.concurrency): r for r in rows if r.protocol == "raw"}
    others = [t for t in ("torchserve", *PEER_TARGETS) if any(k[0] == t for k in raw)]
    table = Table(title=f"raw PNG, req/s side by side (KServe runtime: {workers} workers; "
                        f"{cores}-core limit {single:,.0f} img/s)")  # fmt: skip
    for col in ("conc", "kserve", "x limit", "p99 ms", *others, *(f"kserve / {t}" for t in others)):
        table.add_column(col, justify="right")
    concurrencies = sorted({c for t, c in raw if t == "kserve" and isinstance(c, int)})
    for c in concurrencies:
        k = raw[("kserve", c)]
        theirs = [raw.get((t, c)) for t in others]
        speeds = [f"{o.req_per_s:,.0f}" if o else "-" for o in theirs]
        ratios = [f"{k.req_per_s / o.req_per_s:.2f}" if o else "-" for o in theirs]
        mine = [f"{k.req_per_s:,.0f}", f"{k.img_per_s / single:.2f}", f"{k.p99_ms:.1f}"]
        table.add_row(str(c), *mine, *speeds, *ratios)
    if concurrencies:
        console.print(table)
    top = raw.get(("kserve", 32))
    if top is not None:
        ahead = all(raw[("kserve", c)].req_per_s > raw[(t, c)].req_per_s
                    for c in concurrencies for t in PEER_TARGETS if (t, c) in raw)  # fmt: skip
        console.print(
            f"target: KServe runtime raw PNG c32 {top.img_per_s:,.0f} img/s = "
            f"{top.img_per_s / single:.2f} x the {cores}-core limit (>= 0.7), p99 "
            f"{top.p99_ms:.1f} ms (<= 50); ahead of the peers at every concurrency: "
            f"{'yes' if ahead else 'no'}"
        )
    for r in rows:
        if r.protocol == "v2 binary" and r.concurrency == max(concurrencies or [0]):
            console.print(
                f"target: {r.target} v2 binary, 32 images/request, c{r.concurrency}: "
                f"{r.img_per_s:,.0f} img/s = {r.img_per_s / batch32:.2f} x the {cores}-core "
                "batch-32 limit (>= 0.7)"
            )
