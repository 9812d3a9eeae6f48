"""Tests for atelier.serving.kserve_runtime's settings: flags, and the shared ATELIER_* env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.runtime.errors import ConfigError
from atelier.runtime.settings import ServingSettings
from atelier.serving.kserve_runtime import ServerSettings

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


def test_workers_is_a_flag(tmp_path: Path) -> None:
    store = str(store_with_mar(tmp_path / "store"))
    assert ServerSettings.from_args(["--store", store]).workers == 1
    assert ServerSettings.from_args(["--store", store, "--workers", "1"]).workers == 1
    with pytest.raises(SystemExit) as info:
        ServerSettings.from_args(["--store", store, "--workers", "none"])
    assert info.value.code == 2
