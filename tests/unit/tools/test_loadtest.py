"""atelier.tools.loadtest: settings, shapes, request bodies, feedback, summary and SLO; bad input on
the command line is reported before any load is sent."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.runtime.errors import ConfigError, SLOBreachError, TargetUnreachableError
from atelier.tools import loadtest as lt
from atelier.tools.process import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]

STATS_CSV = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,v2_batch,80,0,17,20.9,8.1,156.7,3627.3,3.99,0.0,17,23,25,34,47,77,120,160,160,160,160
POST,raw,311,2,13,16.9,6.3,110.3,501.3,15.51,0.1,13,16,19,21,29,38,50,100,110,110,110
POST,v1,86,0,12,16.3,7.3,51.1,462.7,4.29,0.0,12,15,20,22,34,37,49,51,51,51,51
,Aggregated,477,2,14,18.4,6.3,156.7,1100.2,23.79,0.1,14,18,21,24,33,41,58,83,160,160,160
"""  # noqa: E501


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**kw: object) -> lt.LoadTestSettings:
    return lt.load_settings(**kw)


def images(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    return x, np.arange(n) % 10


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- settings


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    assert s.host == "http://127.0.0.1:8085" and s.shape is lt.Shape.steady
    monkeypatch.setenv("ATELIER_LOADTEST_USERS", "7")
    monkeypatch.setenv("ATELIER_LOADTEST_MIX__RAW", "0")
    monkeypatch.setenv("ATELIER_LOADTEST_SHAPE", "spike")
    s = settings(users=3)  # a flag beats the env var
    assert (s.users, s.mix.raw, s.shape) == (3, 0, lt.Shape.spike)
    assert "raw" not in s.mix.weights()


def test_env_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI hands the locustfile its settings as env vars: nothing is lost on the way."""
    s = settings(host="http://example:9/", users=5, drift=True, drift_url="http://side:1",
                 mix={"raw": 0, "v1": 2, "v1_batch": 0, "v2": 1, "v2_batch": 3})  # fmt: skip
    assert s.host == "http://example:9"
    for key, value in s.env().items():
        monkeypatch.setenv(key, value)
    assert lt.LoadTestSettings() == s


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"shape": "zigzag"}, ["shape", "--shape", "ATELIER_LOADTEST_SHAPE", "zigzag"]),
        ({"users": 0}, ["users", "--users", "greater than 0"]),
        ({"users": -4}, ["users", "--users"]),
        ({"duration_s": 0}, ["duration_s", "--duration"]),
        ({"host": "ftp://x"}, ["host", "URL", "http://"]),
        ({"drift_shift": "melt"}, ["drift_shift", "invert"]),
        ({"feedback_share": 1.5}, ["feedback_share", "--feedback-share"]),
        ({"slo_p99_ms": 0}, ["slo_p99_ms", "--slo-p99-ms"]),
        ({"mix": {"raw": 0, "v1": 0, "v1_batch": 0, "v2": 0, "v2_batch": 0}}, ["mix", "weight"]),
        ({"mix": {"raw": 1, "v3": 1}}, ["mix.v3", "ATELIER_LOADTEST_MIX__V3"]),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**overrides)
    for name in names:
        assert name in err.value.message
    assert err.value.exit_code == 2


# --- shapes


def ticks(shape: lt.LoadShape, times: list[float]) -> list[tuple[int, float] | None]:
    return [shape.tick(t) for t in times]


def test_steady_shape() -> None:
    shape = lt.make_shape(settings(users=5, spawn_rate=2, duration_s=10))
    assert ticks(shape, [0, 5, 9.9, 10, 11]) == [(5, 2), (5, 2), (5, 2), None, None]


def test_ramp_shape_steps_up_to_users() -> None:
    shape = lt.make_shape(settings(shape="ramp", users=8, ramp_steps=4, duration_s=40))
    users = [t[0] if t else None for t in ticks(shape, [0, 9.9, 10, 20, 30, 39.9, 40])]
    assert users == [2, 2, 4, 6, 8, 8, None]
    assert lt.describe_shape(shape) == [(0.0, 2), (10.0, 4), (20.0, 6), (30.0, 8)]
    # Fewer users than steps: one more user per step, never zero.
    small = lt.make_shape(settings(shape="ramp", users=2, ramp_steps=4, duration_s=4))
    assert [t[0] if t else None for t in ticks(small, [0, 2, 3.9, 4])] == [1, 2, 2, None]


def test_spike_shape() -> None:
    s = settings(shape="spike", users=8, spike_base_share=0.25, spike_start=0.4,
                 spike_length=0.2, duration_s=10, spawn_rate=1)  # fmt: skip
    shape = lt.make_shape(s)
    users = [t[0] if t else None for t in ticks(shape, [0, 3.9, 4, 5.9, 6, 9.9, 10])]
    assert users == [2, 2, 8, 8, 2, 2, None]
    assert shape.tick(4) == (8, 8.0)  # the spike arrives within a second


# --- request bodies and checks


def test_requests_carry_ids_and_real_images() -> None:
    x, y = images()
    work = lt.Workload(settings(batch_size=4), images=x, labels=y)
    raw = work.request("raw")
    assert raw.path == "/predictions/fashion-mnist"
    assert raw.headers["Content-Type"] == "image/png"
    assert raw.headers["X-Request-Id"] == raw.request_id
    i = next(k for k in range(len(x)) if np.array_equal(decode(raw.body), x[k, 0]))
    assert raw.labels == [int(y[i])]

    v1 = work.request("v1_batch")
    body = json.loads(v1.body)
    assert v1.path == "/v1/models/fashion-mnist:predict" and len(body["instances"]) == 4
    assert decode(base64.b64decode(body["instances"][0]["b64"])).shape == (28, 28)
    assert v1.headers["X-Request-Id"] == v1.request_id

    v2 = work.request("v2")
    body = json.loads(v2.body)
    assert v2.path == "/v2/models/fashion-mnist/infer"
    assert body["id"] == v2.request_id
    tensor = body["inputs"][0]
    assert (tensor["shape"], tensor["datatype"], len(tensor["data"])) == ([1], "BYTES", 1)
    assert len(json.loads(work.request("v2_batch").body)["inputs"][0]["data"]) == 4

    ids = [work.request("raw").request_id for _ in range(50)]
    assert len(set(ids)) == 50 and raw.request_id not in ids


def test_host_header_for_an_ingress_that_routes_by_name() -> None:
    x, y = images()
    name = "fashion-mnist.default.example.com"
    work = lt.Workload(settings(host_header=name), images=x, labels=y)
    assert all(work.request(kind).headers["Host"] == name for kind in lt.REQUEST_TYPES)
    assert "Host" not in lt.Workload(settings(), images=x, labels=y).request("raw").headers


def test_drift_mode_shifts_images_after_the_switch() -> None:
    x, y = images()
    clock = FakeClock()
    s = settings(drift=True, drift_shift="invert", drift_at=0.5, drift_share=1.0, duration_s=10)
    work = lt.Workload(s, images=x, labels=y, clock=clock)
    work.start()
    before = work.request("raw")
    assert not before.shifted
    clock.now += 5
    after = work.request("raw")
    assert after.shifted and work.counts["shifted_requests"] == 1
    pixels = decode(after.body)
    assert any(np.array_equal(pixels, 255 - x[k, 0]) for k in range(len(x)))


def test_check_answers() -> None:
    x, y = images()
    work = lt.Workload(settings(batch_size=3), images=x, labels=y)
    raw = work.request("raw")
    good = json.dumps({"label": "Bag", "request_id": raw.request_id})
    assert work.check(raw, 200, good.encode()) is None
    assert "request_id" in (work.check(raw, 200, '{"label": "Bag", "request_id": "x"}') or "")
    assert (work.check(raw, 503, b"busy") or "").startswith("HTTP 503")
    assert "no answer" in (work.check(raw, 0, None) or "")
    assert "not JSON" in (work.check(raw, 200, b"<html>") or "")
    v1 = work.request("v1_batch")
    assert work.check(v1, 200, json.dumps({"predictions": [{}, {}, {}]})) is None
    assert "3 predictions" in (work.check(v1, 200, json.dumps({"predictions": [{}]})) or "")
    v2 = work.request("v2_batch")
    answer = {"id": v2.request_id, "outputs": [{"name": "label", "data": ["a", "b", "c"]}]}
    assert work.check(v2, 200, json.dumps(answer)) is None
    assert "id" in (work.check(v2, 200, json.dumps({**answer, "id": "other"})) or "")


def test_feedback_waits_joins_and_retries() -> None:
    x, y = images()
    clock = FakeClock()
    s = settings(drift_url="http://side:1", feedback_delay_s=2, feedback_attempts=2, batch_size=2)
    counts: Counter[str] = Counter()
    queue = lt.FeedbackQueue(s, counts, clock)
    work = lt.Workload(s, images=x, labels=y)
    req = work.request("v2_batch")
    queue.add(req)
    posted: list[tuple[str, dict]] = []
    answers = iter([200, 404, 404])

    def post(url: str, body: dict) -> int:
        posted.append((url, body))
        return next(answers)

    assert queue.flush(post) == 0  # not due yet: the sidecar may not have read the spool
    clock.now += 2
    assert queue.flush(post) == 2
    first = {"request_id": req.request_id, "index": 0, "label": req.labels[0]}
    assert posted[0] == ("http://side:1/feedback", first)
    assert posted[1][1]["index"] == 1
    assert counts["feedback_joined"] == 1 and counts["feedback_retried"] == 1
    clock.now += 2
    assert queue.flush(post) == 1  # the retry, and the last attempt
    assert counts["feedback_failed_404"] == 1 and not queue.pending


def test_a_kept_label_is_counted_as_kept_not_failed() -> None:
    x, y = images()
    clock = FakeClock()
    s = settings(drift_url="http://side:1", feedback_delay_s=0, batch_size=2)
    counts: Counter[str] = Counter()
    queue = lt.FeedbackQueue(s, counts, clock)
    queue.add(lt.Workload(s, images=x, labels=y).request("v2_batch"))
    assert queue.flush(lambda url, body: 202) == 2
    assert counts["feedback_kept"] == 2 and not queue.pending
    assert not any(k.startswith("feedback_failed") for k in counts)


def test_no_feedback_without_a_sidecar() -> None:
    x, y = images()
    work = lt.Workload(settings(feedback_share=1.0), images=x, labels=y)
    assert not work.wants_feedback()
    work = lt.Workload(settings(feedback_share=1.0, drift_url="http://a:1"), images=x, labels=y)
    assert work.wants_feedback()


# --- summary and SLO


def write_report(tmp_path: Path, csv_text: str = STATS_CSV) -> Path:
    (tmp_path / "locust_stats.csv").write_text(csv_text)
    counts = {"feedback_sent": 10, "feedback_joined": 9, "feedback_failed_404": 1}
    (tmp_path / lt.RUN_STATS).write_text(json.dumps({"run_id": "r", "counts": counts}))
    return tmp_path


def test_read_locust_stats_orders_rows_and_keeps_the_total(tmp_path: Path) -> None:
    rows, total = lt.read_locust_stats(write_report(tmp_path) / "locust_stats.csv")
    assert [r.name for r in rows] == ["raw", "v1", "v2_batch"]
    assert (total.requests, total.failures, total.p99_ms) == (477, 2, 83)
    assert rows[0].p95_ms == 38 and rows[0].req_per_s == pytest.approx(15.51)


def test_slo_passes_and_breaks(tmp_path: Path) -> None:
    report = write_report(tmp_path)
    ok = lt.build_summary(report, settings(slo_p99_ms=100, slo_error_ratio=0.01))
    assert ok["passed"] and ok["feedback"] == {"sent": 10, "joined": 9, "failed_404": 1}
    lt.raise_on_breach(ok)

    slow = lt.build_summary(report, settings(slo_p99_ms=50, slo_error_ratio=0.01))
    assert not slow["passed"]
    with pytest.raises(SLOBreachError) as err:
        lt.raise_on_breach(slow)
    assert "p99 83 ms > slo_p99_ms 50 ms (--slo-p99-ms)" in err.value.message
    assert "error ratio" not in err.value.message and err.value.exit_code == 8

    strict = lt.build_summary(report, settings(slo_error_ratio=0.001))
    with pytest.raises(SLOBreachError, match=r"error ratio 0\.42% > slo_error_ratio 0\.10%"):
        lt.raise_on_breach(strict)


def test_no_requests_is_not_a_pass(tmp_path: Path) -> None:
    empty = STATS_CSV.splitlines()[0] + "\n,Aggregated,0,0,0,0,0,0,0,0.0,0.0" + ",N/A" * 11 + "\n"
    summary = lt.build_summary(write_report(tmp_path, empty), settings())
    assert not summary["passed"]
    with pytest.raises(SLOBreachError, match="no inference requests"):
        lt.raise_on_breach(summary)


def test_summary_files(tmp_path: Path) -> None:
    report = write_report(tmp_path)
    summary = lt.build_summary(report, settings(drift_url="http://side:1"))
    lt.write_summary(report, summary)
    assert json.loads((report / "summary.json").read_text())["total"]["requests"] == 477
    md = (report / "summary.md").read_text()
    assert "| all inference | 477 | 2 | 14 | 41 | 83 | 23.8 |" in md
    assert "9 joined" in md and "SLO p99 83 ms <= slo_p99_ms 250 ms: ok" in md


def test_missing_stats_is_a_loadtest_error(tmp_path: Path) -> None:
    with pytest.raises(lt.LoadTestError, match="no statistics"):
        lt.read_locust_stats(tmp_path / "locust_stats.csv")


# --- before the run


def test_closed_port_is_named_before_the_run() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TargetUnreachableError) as err:
        lt.check_host(settings(host=url))
    assert url in err.value.message and "host" in err.value.message
    assert err.value.exit_code == 2
    assert "does not answer" in (lt.check_drift_url(url) or "")


def atelier(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atelier", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--shape", "zigzag"], "loadtest setting shape (--shape"),
        (["--users", "0"], "loadtest setting users (--users"),
        (["--duration", "-1"], "loadtest setting duration_s (--duration"),
    ],
)
def test_cli_bad_settings_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    proc = atelier("loadtest", *args, "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


def test_cli_url_that_does_not_answer_exits_2(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = atelier("loadtest", url, "--report-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert f"{url} does not answer" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_the_cli_never_imports_locust() -> None:
    """locust monkey-patches the standard library with gevent: it runs as a child process."""
    code = ("import sys, atelier.cli, atelier.tools.loadtest; "
            "assert not {'locust', 'gevent'} & set(sys.modules), sorted(sys.modules)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
