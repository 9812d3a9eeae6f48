"""Tests for atelier.serving.kserve_runtime's settings: flags, the shared ATELIER_* env, and
the batch settings read from the store's TorchServe config."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from atelier.runtime.errors import ConfigError
from atelier.runtime.settings import ServingSettings
from atelier.serving.batcher import BatchPolicy
from atelier.serving.kserve_runtime import ServerSettings, main
from atelier.serving.workers import available_cores

pytestmark = pytest.mark.unit


def store_with_mar(root: Path, name: str = "m") -> Path:
    (root / "model-store").mkdir(parents=True)
    (root / "model-store" / f"{name}.mar").write_bytes(b"")
    (root / "CURRENT.json").write_text(json.dumps({"name": name}))
    return root


def test_the_runtime_settings_come_from_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("ATELIER_SPOOL_DIR", str(tmp_path / "spool"))
    s = ServerSettings.from_args(["--store", str(store_with_mar(tmp_path / "store"))])
    assert s.model_name == "m"
    assert s.serving == ServingSettings(spool_dir=tmp_path / "spool", max_payload_bytes=2048)


def test_a_bad_env_value_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_MAX_INSTANCES", "lots")
    with pytest.raises(ConfigError, match="ATELIER_MAX_INSTANCES='lots'"):
        ServerSettings.from_args(["--store", str(store_with_mar(tmp_path / "store"))])


# --- workers, batching, threads -----------------------------------------------------------


def store_with_config(root: Path, **serving: int) -> Path:
    from atelier.training.archive import CONFIG_TEMPLATE, render_config
    from atelier.training.config import ArchiveDefaults

    store = store_with_mar(root)
    (store / "config").mkdir()
    (store / "config" / "config.properties").write_text(
        render_config(CONFIG_TEMPLATE, "m", "1", ArchiveDefaults(**serving))
    )
    return store


def test_batching_comes_from_the_stores_torchserve_config_and_flags_override(
    tmp_path: Path,
) -> None:
    store = str(store_with_config(tmp_path / "store", batch_size=16, max_batch_delay_ms=7))
    s = ServerSettings.from_args(["--store", store])
    assert s.batch == BatchPolicy(max_batch_size=16, max_batch_delay_ms=7)
    s = ServerSettings.from_args(["--store", store, "--batch-size", "4"])
    assert s.batch == BatchPolicy(max_batch_size=4, max_batch_delay_ms=7)
    s = ServerSettings.from_args(["--store", store, "--max-batch-delay-ms", "0"])
    assert s.batch == BatchPolicy(max_batch_size=16, max_batch_delay_ms=0)


def test_a_store_without_a_config_gets_atelier_archives_defaults(tmp_path: Path) -> None:
    s = ServerSettings.from_args(["--store", str(store_with_mar(tmp_path / "store"))])
    assert s.batch == BatchPolicy(max_batch_size=8, max_batch_delay_ms=2)


def test_workers_and_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(store_with_mar(tmp_path / "store"))
    monkeypatch.delenv("ATELIER_KSERVE_WORKERS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert ServerSettings.from_args(["--store", store]).workers == 1
    monkeypatch.setenv("ATELIER_KSERVE_WORKERS", "3")
    s = ServerSettings.from_args(["--store", store])
    assert s.workers == 3 and s.torch_threads == max(1, available_cores() // 3)
    assert ServerSettings.from_args(["--store", store, "--workers", "2"]).workers == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ServerSettings.from_args(["--store", store]).torch_threads == 1
    s = ServerSettings.from_args(["--store", store, "--torch-threads", "4"])
    assert s.torch_threads == 4
    # A worker process gets its settings back from the flags the supervisor hands it.
    assert ServerSettings.from_args(s.to_argv()) == s
    assert not s.access_log
    s = ServerSettings.from_args(["--store", store, "--workers", "2", "--access-log"])
    assert s.access_log and ServerSettings.from_args(s.to_argv()) == s


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--workers", "0"], {}, "error: --workers 0: must be between 1 and 64"),
        ([], {"ATELIER_KSERVE_WORKERS": "many"}, "ATELIER_KSERVE_WORKERS='many' is not a whole"),
        ([], {"ATELIER_KSERVE_WORKERS": "0"}, "ATELIER_KSERVE_WORKERS=0: must be between 1"),
        (["--batch-size", "0"], {}, "error: --batch-size 0: must be between 1 and 512"),
        (["--batch-size", "513"], {}, "error: --batch-size 513: must be between 1 and 512"),
        (["--max-batch-delay-ms", "-1"], {}, "--max-batch-delay-ms -1: must be between 0 and"),
        (["--torch-threads", "0"], {}, "error: --torch-threads 0: must be between 1 and 256"),
        (["--workers", "two"], {}, "argument --workers: invalid int value: 'two'"),
    ],
)
def test_a_bad_flag_exits_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # main() must not take pytest's
    store = str(store_with_mar(tmp_path / "store"))
    with pytest.raises(SystemExit) as info:
        main(["--store", store, *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_bad_batch_size_in_the_stores_config_is_named(tmp_path: Path) -> None:
    store = store_with_config(tmp_path / "store")
    config = store / "config" / "config.properties"
    config.write_text(config.read_text().replace('"batchSize":8', '"batchSize":0'))
    with pytest.raises(ConfigError, match=r"config\.properties: model m: batch_size 0: must be"):
        ServerSettings.from_args(["--store", str(store)])
