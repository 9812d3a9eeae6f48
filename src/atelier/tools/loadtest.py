"""Load testing with locust: typed settings, load shapes, the request corpus, the run, its
summary and the SLO check.

Locust monkey-patches the standard library with gevent when it is imported, so it never runs
in the `atelier` process: `run` starts `locust --headless` as a child process on
`loadtest/locustfile.py` and hands it the settings as ``ATELIER_LOADTEST_*`` env vars. The
locustfile reads the same `LoadTestSettings` and takes its shapes, request bodies, response
checks and feedback queue from here, so it stays thin and this module never imports locust.

Only inference requests go through locust's statistics, so locust's "Aggregated" row is
"all inference requests" and the SLO reads it directly. Feedback to the drift sidecar is sent
with a plain HTTP session and counted by the `Workload`, which writes its counters to
``run-stats.json`` when locust quits.
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atelier.runtime.errors import (
    ConfigError,
    LoadTestError,
    SLOBreachError,
    TargetUnreachableError,
)
from atelier.training.config import DEFAULT_FASHION_MNIST_DIR

ENV_PREFIX = "ATELIER_LOADTEST_"
DEFAULT_HOST = "http://127.0.0.1:8085"  # the local stack (make demo's TorchServe)
DEFAULT_DRIFT_URL = "http://127.0.0.1:8095"  # the local stack's drift sidecar
REQUEST_TYPES = ("raw", "v1", "v1_batch", "v2", "v2_batch")
CSV_PREFIX = "locust"  # locust writes locust_stats.csv, locust_failures.csv, ...
RUN_STATS = "run-stats.json"
# CLI flag for each setting, so an error names what the user typed.
FLAGS = {
    "host": "URL",
    "host_header": "--host-header",
    "shape": "--shape",
    "users": "--users",
    "spawn_rate": "--spawn-rate",
    "duration_s": "--duration",
    "drift": "--drift",
    "drift_url": "--drift-url",
    "feedback_share": "--feedback-share",
    "report_dir": "--report-dir",
    "slo_p99_ms": "--slo-p99-ms",
    "slo_error_ratio": "--slo-error-ratio",
    "model": "--model",
}


class Shape(StrEnum):
    steady = "steady"
    ramp = "ramp"
    spike = "spike"


class RequestMix(BaseModel):
    """Relative weights of the request types (0 turns one off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raw: int = Field(4, ge=0)  # one PNG, POST /predictions/<model>
    v1: int = Field(1, ge=0)  # KServe v1, one {"b64": ...} instance
    v1_batch: int = Field(1, ge=0)  # KServe v1, batch_size instances
    v2: int = Field(1, ge=0)  # KServe v2, a BYTES tensor of one image
    v2_batch: int = Field(1, ge=0)  # KServe v2, a BYTES tensor of batch_size images

    @model_validator(mode="after")
    def _not_all_zero(self) -> RequestMix:
        if not any(self.weights().values()):
            raise ValueError("at least one request type needs a weight above 0")
        return self

    def weights(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in REQUEST_TYPES if getattr(self, k) > 0}


class LoadTestSettings(BaseSettings):
    """One typed settings object for the CLI and the locustfile (env ATELIER_LOADTEST_*)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = DEFAULT_HOST
    # Host header for an ingress that routes by name (KServe: the InferenceService's
    # status.url host); None sends the URL's own.
    host_header: str | None = None
    model: str = Field("fashion-mnist", min_length=1)

    # Load shape: steady holds `users`; ramp climbs to `users` in `ramp_steps` equal steps;
    # spike holds `spike_base_share` of `users` and jumps to all of them for a while.
    shape: Shape = Shape.steady
    users: int = Field(4, gt=0)
    spawn_rate: float = Field(4.0, gt=0)  # users started per second
    duration_s: float = Field(60.0, gt=0)
    ramp_steps: int = Field(4, ge=1)
    spike_base_share: float = Field(0.25, gt=0, le=1)
    spike_start: float = Field(0.4, ge=0, lt=1)  # fraction of the duration
    spike_length: float = Field(0.2, gt=0, le=1)  # fraction of the duration
    wait_s: float = Field(0.1, ge=0)  # each user's mean pause between requests

    mix: RequestMix = Field(default_factory=RequestMix)
    batch_size: int = Field(8, ge=2, le=64)
    images: int = Field(2000, ge=1, le=10_000)  # Fashion-MNIST test images cycled through
    data_dir: Path = DEFAULT_FASHION_MNIST_DIR
    request_timeout_s: float = Field(30.0, gt=0)
    seed: int = 0

    # Ground truth: a share of the answered requests sends each image's true label to the
    # drift sidecar's /feedback (after feedback_delay_s, so the sidecar has read the spool).
    drift_url: str | None = None
    feedback_share: float = Field(0.1, ge=0, le=1)
    feedback_delay_s: float = Field(2.0, ge=0)
    feedback_attempts: int = Field(3, ge=1)

    # Drift mode: from drift_at (fraction of the duration) on, drift_share of the requests
    # carry shifted images.
    drift: bool = False
    drift_shift: str = "invert"
    drift_at: float = Field(0.5, ge=0, lt=1)
    drift_share: float = Field(0.5, gt=0, le=1)

    # SLO over all inference requests: the run fails when either is broken.
    slo_p99_ms: float = Field(250.0, gt=0)
    slo_error_ratio: float = Field(0.01, ge=0, le=1)
    report_dir: Path = Path("runs/loadtest/latest")

    @field_validator("host", "drift_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("drift_shift")
    @classmethod
    def _shift(cls, value: str) -> str:
        from atelier.tools.shifts import SHIFTS

        kinds = [k for k in SHIFTS if k != "none"]
        if value not in kinds:
            raise ValueError(f"unknown shift {value!r}, choose one of {', '.join(kinds)}")
        return value

    def env(self) -> dict[str, str]:
        """These settings as ATELIER_LOADTEST_* env vars (how the locustfile gets them)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            key = ENV_PREFIX + name.upper()
            out[key] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        return out


def load_settings(**overrides: Any) -> LoadTestSettings:
    """Env vars, then explicit overrides (flags); a bad value names the setting and its flag."""
    try:
        return LoadTestSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        key = ".".join(loc) or "settings"
        env = ENV_PREFIX + "__".join(loc).upper()
        flag = FLAGS.get(loc[0]) if loc else None
        names = f"{flag}, {env}" if flag else env
        got = first.get("input")
        got_text = f", got {got!r}" if isinstance(got, str | int | float) else ""
        msg = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"loadtest setting {key} ({names}): {msg}{got_text}{more}") from exc


# --- Load shapes: tick(run_time) -> (users, spawn rate), or None to stop. Locust's
# LoadTestShape in the locustfile calls the one the settings choose.


class LoadShape(Protocol):
    @property
    def duration_s(self) -> float: ...

    def tick(self, run_time: float) -> tuple[int, float] | None: ...


@dataclass(frozen=True)
class SteadyShape:
    users: int
    spawn_rate: float
    duration_s: float

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.duration_s:
            return None
        return self.users, self.spawn_rate


@dataclass(frozen=True)
class RampShape:
    """A step ramp: `steps` equal steps of the duration, users/steps more at each."""

    users: int
    steps: int
    spawn_rate: float
    duration_s: float

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.duration_s:
            return None
        step = min(self.steps - 1, int(run_time / (self.duration_s / self.steps)))
        return max(1, math.ceil(self.users * (step + 1) / self.steps)), self.spawn_rate


@dataclass(frozen=True)
class SpikeShape:
    """`base` users, then all `users` between start and end (seconds), then `base` again."""

    users: int
    base: int
    start_s: float
    end_s: float
    spawn_rate: float
    duration_s: float

    def tick(self, run_time: float) -> tuple[int, float] | None:
        if run_time >= self.duration_s:
            return None
        if self.start_s <= run_time < self.end_s:
            # A spike arrives at once: start every extra user within about a second.
            return self.users, max(self.spawn_rate, float(self.users))
        return self.base, max(self.spawn_rate, float(self.users))


def make_shape(s: LoadTestSettings) -> LoadShape:
    if s.shape is Shape.ramp:
        return RampShape(s.users, min(s.ramp_steps, s.users), s.spawn_rate, s.duration_s)
    if s.shape is Shape.spike:
        base = max(1, round(s.users * s.spike_base_share))
        start = s.spike_start * s.duration_s
        end = min(s.duration_s, start + s.spike_length * s.duration_s)
        return SpikeShape(s.users, base, start, end, s.spawn_rate, s.duration_s)
    return SteadyShape(s.users, s.spawn_rate, s.duration_s)


def describe_shape(shape: LoadShape, every_s: float = 1.0) -> list[tuple[float, int]]:
    """(time, users) at each change of the user count."""
    out: list[tuple[float, int]] = []
    t = 0.0
    while (tick := shape.tick(t)) is not None:
        if not out or out[-1][1] != tick[0]:
            out.append((t, tick[0]))
        t += every_s
    return out


# --- The request corpus and the request bodies


@dataclass
class PreparedRequest:
    kind: str
    path: str
    body: bytes
    headers: dict[str, str]
    request_id: str
    labels: list[int]  # the true label of each image, in request order (= spool index)
    shifted: bool


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Workload:
    """Real Fashion-MNIST test images (and shifted copies in drift mode) as request bodies.

    Not thread-safe; locust runs every user in one thread (gevent), one Workload a process.
    """

    def __init__(
        self,
        s: LoadTestSettings,
        images: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from atelier.runtime.preprocess import encode_png

        if images is None or labels is None:
            from atelier.training.data.idx import load_fashion_mnist

            data = load_fashion_mnist(s.data_dir)
            images, labels = data["test_x"], data["test_y"]
        images, labels = images[: s.images], labels[: s.images]
        self.s = s
        self.clock = clock
        self.labels = [int(y) for y in labels]
        self.pngs = [encode_png(x) for x in images]
        self.b64 = [_b64(p) for p in self.pngs]
        self.shifted_pngs: list[bytes] = []
        self.shifted_b64: list[str] = []
        if s.drift:
            from atelier.tools.shifts import shift_images

            self.shifted_pngs = [encode_png(x) for x in shift_images(images, s.drift_shift)]
            self.shifted_b64 = [_b64(p) for p in self.shifted_pngs]
        self.rng = random.Random(s.seed)
        self.run_id = uuid.uuid4().hex[:10]
        self._seq = itertools.count(1)
        self.started: float | None = None
        self.counts: Counter[str] = Counter()

    # time
    def start(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def drifting(self) -> bool:
        return self.s.drift and self.elapsed() >= self.s.drift_at * self.s.duration_s

    # requests
    def request(self, kind: str) -> PreparedRequest:
        if kind not in REQUEST_TYPES:
            raise ValueError(f"unknown request type {kind!r}")
        n = self.s.batch_size if kind.endswith("_batch") else 1
        idx = [self.rng.randrange(len(self.pngs)) for _ in range(n)]
        shifted = self.drifting() and self.rng.random() < self.s.drift_share
        rid = f"lt-{self.run_id}-{next(self._seq)}"
        headers = {"X-Request-Id": rid}
        if self.s.host_header:
            headers["Host"] = self.s.host_header
        model = self.s.model
        b64 = self.shifted_b64 if shifted else self.b64
        if kind == "raw":
            png = (self.shifted_pngs if shifted else self.pngs)[idx[0]]
            path, body = f"/predictions/{model}", png
            headers["Content-Type"] = "image/png"
        elif kind.startswith("v1"):
            path = f"/v1/models/{model}:predict"
            body = json.dumps({"instances": [{"b64": b64[i]} for i in idx]}).encode()
            headers["Content-Type"] = "application/json"
        else:
            path = f"/v2/models/{model}/infer"
            tensor = {"name": "images", "shape": [n], "datatype": "BYTES",
                      "data": [b64[i] for i in idx]}  # fmt: skip
            body = json.dumps({"id": rid, "inputs": [tensor]}).encode()
            headers["Content-Type"] = "application/json"
        self.counts[f"sent_{kind}"] += 1
        if shifted:
            self.counts["shifted_requests"] += 1
        return PreparedRequest(kind, path, body, headers, rid, [self.labels[i] for i in idx],
                               shifted)  # fmt: skip

    def check(self, req: PreparedRequest, status: int, body: bytes | str | None) -> str | None:
        """Why the answer is wrong, or None when it is a full answer to this request."""
        text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
        if status != 200:
            return f"HTTP {status}: {text[:200]}" if status else f"no answer: {text[:200]}"
        try:
            data = json.loads(text)
        except ValueError:
            return f"answer is not JSON: {text[:200]}"
        n = len(req.labels)
        if not isinstance(data, dict):
            return "answer is not a JSON object"
        if req.kind == "raw":
            if "label" not in data:
                return "raw answer has no label"
            if data.get("request_id") != req.request_id:
                return f"request_id {data.get('request_id')!r} is not {req.request_id!r}"
        elif req.kind.startswith("v1"):
            preds = data.get("predictions")
            if not isinstance(preds, list) or len(preds) != n:
                return f"v1 answer does not hold {n} predictions"
        else:
            if data.get("id") != req.request_id:
                return f"v2 id {data.get('id')!r} is not {req.request_id!r}"
            outputs = {o.get("name"): o for o in data.get("outputs", []) if isinstance(o, dict)}
            label = outputs.get("label")
            if label is None or len(label.get("data", [])) != n:
                return f"v2 answer has no label output of {n}"
        return None

    def wants_feedback(self) -> bool:
        return self.s.drift_url is not None and self.rng.random() < self.s.feedback_share

    def stats(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "counts": dict(self.counts)}


@dataclass(order=True)
class _Pending:
    due: float
    attempt: int
    body: dict[str, Any] = field(compare=False)


class FeedbackQueue:
    """True labels waiting to be sent to the drift sidecar's /feedback.

    A label is sent ``delay_s`` after its request was answered. The sidecar answers 200 when
    it joined the label to the logged prediction, 202 when it keeps the label until the
    prediction is shipped (then joins it itself), and 404 only when no replica logged the
    request; a 404 is retried anyway (a sidecar that was down may not have said so yet).
    """

    def __init__(self, s: LoadTestSettings, counts: Counter[str], clock: Callable[[], float]):
        self.s = s
        self.counts = counts
        self.clock = clock
        self.pending: deque[_Pending] = deque()

    def add(self, req: PreparedRequest) -> None:
        due = self.clock() + self.s.feedback_delay_s
        for index, label in enumerate(req.labels):
            body = {"request_id": req.request_id, "index": index, "label": label}
            self.pending.append(_Pending(due, 1, body))

    def flush(self, post: Callable[[str, dict[str, Any]], int]) -> int:
        """Send every label that is due; ``post(url, body)`` returns the HTTP status (0 when
        the sidecar did not answer). Returns how many were sent."""
        if self.s.drift_url is None:
            return 0
        url = f"{self.s.drift_url}/feedback"
        now = self.clock()
        sent = 0
        retry: list[_Pending] = []
        while self.pending and self.pending[0].due <= now:
            item = self.pending.popleft()
            status = post(url, item.body)
            sent += 1
            self.counts["feedback_sent"] += 1
            if status == 200:
                self.counts["feedback_joined"] += 1
            elif status == 202:
                self.counts["feedback_kept"] += 1
            elif status == 404 and item.attempt < self.s.feedback_attempts:
                self.counts["feedback_retried"] += 1
                retry.append(_Pending(now + max(1.0, self.s.feedback_delay_s), item.attempt + 1,
                                      item.body))  # fmt: skip
            else:
                self.counts[f"feedback_failed_{status or 'no_answer'}"] += 1
        self.pending.extend(retry)
        return sent


# --- Before the run: the targets answer


def check_host(s: LoadTestSettings, timeout: float = 10.0) -> None:
    """One request of each enabled type must be answered in full, or the run does not start."""
    import requests

    def unreachable(exc: Exception) -> TargetUnreachableError:
        return TargetUnreachableError(
            f"loadtest setting host (URL, {ENV_PREFIX}HOST): {s.host} does not answer "
            f"({_why(exc, timeout)})",
            hint="start the local stack (make demo, or atelier serve), or give the URL of "
            "the ingress or a kubectl port-forward",
        )

    try:  # any HTTP answer will do here; the requests below check the model
        requests.get(s.host + "/", timeout=timeout)
    except requests.RequestException as exc:
        raise unreachable(exc) from exc
    work = Workload(s.model_copy(update={"images": min(s.images, 16), "drift": False}))
    for kind in s.mix.weights():
        req = work.request(kind)
        url = s.host + req.path
        try:
            r = requests.post(url, data=req.body, headers=req.headers, timeout=timeout)
        except requests.RequestException as exc:
            raise unreachable(exc) from exc
        problem = work.check(req, r.status_code, r.content)
        if problem:
            raise TargetUnreachableError(
                f"loadtest settings host (URL) and model (--model): POST {url} ({kind}) is "
                f"not answered in full: {problem}",
                hint="check the URL and --model, and that the server serves that model",
            )


def _why(exc: Exception, timeout: float) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or host unreachable"
    return exc.__class__.__name__


def check_drift_url(url: str, timeout: float = 5.0) -> str | None:
    """None when the sidecar answers ready, else why not."""
    import requests

    try:
        r = requests.get(f"{url}/readyz", timeout=timeout)
    except requests.RequestException as exc:
        return f"does not answer ({_why(exc, timeout)})"
    if r.status_code != 200:
        return f"/readyz answered HTTP {r.status_code}: {r.text[:200]}"
    return None


# --- After the run: the summary and the SLO


@dataclass
class Row:
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    req_per_s: float

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:  # "N/A" when a row has no requests
        return None


def read_locust_stats(path: Path) -> tuple[list[Row], Row]:
    """Per-request-type rows and the total ("Aggregated": all inference requests)."""
    if not path.is_file():
        raise LoadTestError(f"locust wrote no statistics ({path} is missing)")
    rows: list[Row] = []
    total: Row | None = None
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            row = Row(
                name=rec["Name"],
                requests=int(rec["Request Count"]),
                failures=int(rec["Failure Count"]),
                p50_ms=_num(rec["50%"]),
                p95_ms=_num(rec["95%"]),
                p99_ms=_num(rec["99%"]),
                req_per_s=float(rec["Requests/s"]),
            )
            if rec["Name"] == "Aggregated":
                total = row
            else:
                rows.append(row)
    if total is None:
        raise LoadTestError(f"{path} has no Aggregated row")
    order = {k: i for i, k in enumerate(REQUEST_TYPES)}
    rows.sort(key=lambda r: order.get(r.name, len(order)))
    return rows, total


@dataclass
class SLOCheck:
    name: str
    setting: str
    threshold: float
    value: float | None
    ok: bool

    def line(self) -> str:
        unit = " ms" if self.name == "p99" else ""
        shown = "no data" if self.value is None else _fmt(self.value, self.name)
        cmp = "<=" if self.ok else ">"
        if self.value is None:
            cmp = "vs"
        return (
            f"{self.name} {shown}{unit if self.value is not None else ''} {cmp} "
            f"{self.setting} {_fmt(self.threshold, self.name)}{unit}: "
            f"{'ok' if self.ok else 'BROKEN'}"
        )


def _fmt(value: float, name: str) -> str:
    return f"{value:.2%}" if name == "error ratio" else f"{value:g}"


def evaluate_slo(total: Row, s: LoadTestSettings) -> list[SLOCheck]:
    """Error ratio and p99 over all inference requests. No requests is a failure, not a pass."""
    if total.requests == 0:
        return [
            SLOCheck("error ratio", "slo_error_ratio", s.slo_error_ratio, None, False),
            SLOCheck("p99", "slo_p99_ms", s.slo_p99_ms, None, False),
        ]
    ratio = total.error_ratio
    p99 = total.p99_ms
    return [
        SLOCheck("error ratio", "slo_error_ratio", s.slo_error_ratio, ratio,
                 ratio <= s.slo_error_ratio),
        SLOCheck("p99", "slo_p99_ms", s.slo_p99_ms, p99, p99 is not None and p99 <= s.slo_p99_ms),
    ]  # fmt: skip


def build_summary(report_dir: Path, s: LoadTestSettings) -> dict[str, Any]:
    rows, total = read_locust_stats(report_dir / f"{CSV_PREFIX}_stats.csv")
    run_stats_path = report_dir / RUN_STATS
    run_stats = json.loads(run_stats_path.read_text()) if run_stats_path.is_file() else {}
    counts = run_stats.get("counts", {})
    feedback = {k.removeprefix("feedback_"): v for k, v in counts.items() if "feedback" in k}
    slo = evaluate_slo(total, s)
    return {
        "host": s.host,
        "model": s.model,
        "shape": s.shape.value,
        "users": s.users,
        "duration_s": s.duration_s,
        "drift": s.drift,
        "drift_url": s.drift_url,
        "rows": [asdict(r) for r in rows],
        "total": asdict(total),
        "feedback": feedback,
        "shifted_requests": int(counts.get("shifted_requests", 0)),
        "slo": [asdict(c) for c in slo],
        "passed": all(c.ok for c in slo),
        "files": sorted(p.name for p in report_dir.iterdir()),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary_lines(summary: Mapping[str, Any]) -> list[list[str]]:
    """The table: a header, one row per request type, the total."""
    head = ["type", "requests", "failures", "p50 ms", "p95 ms", "p99 ms", "req/s"]
    out = [head]
    for r in [*summary["rows"], {**summary["total"], "name": "all inference"}]:
        out.append([r["name"], f"{r['requests']:,}", f"{r['failures']:,}", _ms(r["p50_ms"]),
                    _ms(r["p95_ms"]), _ms(r["p99_ms"]), f"{r['req_per_s']:.1f}"])  # fmt: skip
    return out


def _notes(summary: Mapping[str, Any]) -> list[str]:
    notes = []
    fb = summary["feedback"]
    if summary["drift_url"]:
        failed = sum(v for k, v in fb.items() if k.startswith("failed"))
        notes.append(
            f"feedback to {summary['drift_url']}: {fb.get('sent', 0)} sent, "
            f"{fb.get('joined', 0)} joined, {fb.get('retried', 0)} retried, {failed} failed"
        )
    else:
        notes.append("feedback: off (no drift sidecar)")
    if summary["drift"]:
        notes.append(f"drift mode: {summary['shifted_requests']} requests carried shifted images")
    return notes


def write_summary(report_dir: Path, summary: Mapping[str, Any]) -> None:
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = summary_lines(summary)
    md = [
        f"# Load test: {summary['shape']}, {summary['users']} users, "
        f"{summary['duration_s']:g} s against {summary['host']}",
        "",
        "| " + " | ".join(table[0]) + " |",
        "| --- | " + " | ".join("---:" for _ in table[0][1:]) + " |",
        *("| " + " | ".join(r) + " |" for r in table[1:]),
        "",
        *(f"- {n}" for n in _notes(summary)),
        *(f"- SLO {SLOCheck(**c).line()}" for c in summary["slo"]),
        "",
    ]
    (report_dir / "summary.md").write_text("\n".join(md))


def print_summary(summary: Mapping[str, Any], report_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table(
        title=f"atelier loadtest: {summary['shape']}, {summary['users']} users, "
        f"{summary['duration_s']:g} s, {summary['host']}"
    )
    lines = summary_lines(summary)
    for i, col in enumerate(lines[0]):
        table.add_column(col, justify="left" if i == 0 else "right")
    for line in lines[1:]:
        table.add_row(*line)
    console.print(table)
    for note in _notes(summary):
        console.print(note, highlight=False)
    for c in summary["slo"]:
        console.print(f"SLO {SLOCheck(**c).line()}", highlight=False)
    console.print(
        f"report: {report_dir}/ (report.html, {CSV_PREFIX}_stats.csv, summary.md)", highlight=False
    )


def raise_on_breach(summary: Mapping[str, Any]) -> None:
    broken = [SLOCheck(**c) for c in summary["slo"] if not c["ok"]]
    if not broken:
        return
    parts = []
    for c in broken:
        flag = FLAGS[c.setting]
        if c.value is None:
            parts.append(f"no inference requests were made, so {c.setting} ({flag}) is unproven")
        else:
            parts.append(c.line().removesuffix(": BROKEN") + f" ({flag})")
    raise SLOBreachError("SLO broken: " + "; ".join(parts))


# --- The run


def locustfile() -> Path:
    from atelier.tools.paths import project_file

    path = project_file("loadtest/locustfile.py")
    if not path.is_file():
        raise LoadTestError(f"{path} does not exist", hint="set ATELIER_HOME to the checkout")
    return path


def locust_command(s: LoadTestSettings, report_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless",
        "--host", s.host, "--csv", str(report_dir / CSV_PREFIX),
        "--html", str(report_dir / "report.html"), "--only-summary",
        "--exit-code-on-error", "0", "--stop-timeout", "5", "--loglevel", "WARNING",
    ]  # fmt: skip


def clean_env(s: LoadTestSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**env, **s.env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def is_local(url: str) -> bool:
    from urllib.parse import urlparse

    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def run(
    s: LoadTestSettings, echo: Callable[[str], None] = print, find_drift_url: bool = False
) -> dict[str, Any]:
    """Check the targets, run locust headless, write and print the summary; raise
    `SLOBreachError` when the SLO is broken.

    ``find_drift_url``: with no drift_url set, a local host and feedback on, use the local
    stack's sidecar (DEFAULT_DRIFT_URL) if it answers.
    """
    check_host(s)
    if find_drift_url and s.drift_url is None and is_local(s.host) and s.feedback_share > 0:
        why = check_drift_url(DEFAULT_DRIFT_URL)
        if why is None:
            s = s.model_copy(update={"drift_url": DEFAULT_DRIFT_URL})
        else:
            echo(f"feedback off: drift sidecar {DEFAULT_DRIFT_URL} {why}")
    elif s.drift_url is not None:
        why = check_drift_url(s.drift_url)
        if why:
            raise TargetUnreachableError(
                f"loadtest setting drift_url (--drift-url, {ENV_PREFIX}DRIFT_URL): "
                f"{s.drift_url} {why}",
                hint="start the drift sidecar (atelier drift), or leave --drift-url out",
            )
    report_dir = s.report_dir.resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob(f"{CSV_PREFIX}_*.csv"):
        old.unlink()
    (report_dir / RUN_STATS).unlink(missing_ok=True)
    s = s.model_copy(update={"report_dir": report_dir})
    stages = ", ".join(f"{u} users at {t:g} s" for t, u in describe_shape(make_shape(s)))
    echo(f"locust: {s.shape.value} ({stages}), {s.duration_s:g} s against {s.host}")
    log = report_dir / "locust.log"
    with log.open("w") as fh:
        try:
            proc = subprocess.run(
                locust_command(s, report_dir), env=clean_env(s), stdout=fh,
                stderr=subprocess.STDOUT, timeout=s.duration_s + 180, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise LoadTestError(f"locust did not stop; see {log}") from exc
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
        raise LoadTestError(f"locust exited with {proc.returncode}: {tail}", hint=f"see {log}")
    summary = build_summary(report_dir, s)
    write_summary(report_dir, summary)
    print_summary(summary, report_dir)
    raise_on_breach(summary)
    return summary


def write_run_stats(
    s: LoadTestSettings, work: Workload, extra: Iterable[tuple[str, Any]] = ()
) -> None:
    """Called by the locustfile when locust quits: the workload's counters."""
    report_dir = s.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    body = {**work.stats(), **dict(extra)}
    (report_dir / RUN_STATS).write_text(json.dumps(body, indent=2) + "\n")
