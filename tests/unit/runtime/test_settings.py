"""Tests for atelier.runtime.settings: the serving runtime's one typed settings object."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from atelier.runtime import torchserve
from atelier.runtime.errors import MODEL_LOAD_FAILED, ConfigError
from atelier.runtime.protocol import Limits
from atelier.runtime.service import InferenceService
from atelier.runtime.settings import DOC, ENV, MAX, MIN, ServingSettings, env_vars

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[3] / "handlers" / "README.md"


def test_defaults_are_the_protocol_limits_and_no_spool() -> None:
    s = ServingSettings.from_env({})
    assert s == ServingSettings()
    assert s.limits == Limits()
    assert s.spool_dir is None and s.open_spool() is None
    assert (s.spool_max_bytes, s.spool_backups) == (50_000_000, 5)


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    env = {
        "ATELIER_SPOOL_DIR": str(tmp_path / "spool"),
        "ATELIER_SPOOL_MAX_BYTES": "2048",
        "ATELIER_SPOOL_BACKUPS": "3",
        "ATELIER_MAX_INSTANCES": "8",
        "ATELIER_MAX_PAYLOAD_BYTES": " 65536 ",
        "ATELIER_DEFAULT_TOP_K": "3",
        "ATELIER_SOMETHING_ELSE": "ignored",
    }
    s = ServingSettings.from_env(env)
    assert s.limits == Limits(max_instances=8, max_payload_bytes=65536, default_top_k=3)
    spool = s.open_spool()
    assert spool is not None
    try:
        assert spool.path.parent == tmp_path / "spool"
        assert (spool.max_bytes, spool.backups) == (2048, 3)
    finally:
        spool.close()


def test_empty_values_are_the_defaults() -> None:
    assert ServingSettings.from_env({name: "" for name in env_vars()}) == ServingSettings()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_MAX_INSTANCES", "9")
    assert ServingSettings.from_env().max_instances == 9


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("ATELIER_SPOOL_MAX_BYTES", "50MB", "is not a whole number"),
        ("ATELIER_SPOOL_MAX_BYTES", "1.5e6", "is not a whole number"),
        ("ATELIER_SPOOL_MAX_BYTES", "100", "must be between 1024 and"),
        ("ATELIER_SPOOL_BACKUPS", "0", "must be between 1 and 1000"),
        ("ATELIER_MAX_INSTANCES", "-1", "must be between 1 and 4096"),
        ("ATELIER_MAX_PAYLOAD_BYTES", "999999999", "must be between 1024 and 67108864"),
        ("ATELIER_DEFAULT_TOP_K", "five", "is not a whole number"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServingSettings.from_env({name: value})
    assert info.value.exit_code == 2
    assert f"{name}={value!r} {problem}" in info.value.message


def test_bounds_hold_when_made_in_code_too() -> None:
    with pytest.raises(ConfigError, match=r"ATELIER_MAX_INSTANCES=.0."):
        ServingSettings(max_instances=0)


def test_a_spool_folder_that_cannot_be_made_does_not_stop_serving(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = ServingSettings.from_env({"ATELIER_SPOOL_DIR": str(blocker / "spool")})
    spool = settings.open_spool()
    assert spool is not None and not spool.writable
    assert spool.write([{"schema": "x"}]) is False
    assert spool.take_errors() == {"missing": 2}  # the open, then the write it skipped


def test_every_field_has_an_env_var_and_bounds_or_none() -> None:
    for f in dataclasses.fields(ServingSettings):
        assert f.metadata[ENV].startswith("ATELIER_") and f.metadata[DOC]
        if f.type == "int":
            assert f.metadata[MIN] <= f.default <= f.metadata[MAX], f.name


# --- the table in handlers/README.md is the code's


def readme_rows() -> dict[str, list[str]]:
    text = README.read_text()
    section = text.split("## Settings (env vars)", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `ATELIER_"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def expected_row(f: dataclasses.Field[Any]) -> list[str]:
    if f.metadata[MIN] is None:
        return ["unset", "a folder (best effort)", f.metadata[DOC]]
    return [f"`{f.default}`", f"{f.metadata[MIN]} to {f.metadata[MAX]}", f.metadata[DOC]]


def test_the_readme_table_matches_the_settings() -> None:
    rows = readme_rows()
    assert list(rows) == list(env_vars())
    for name, f in env_vars().items():
        assert rows[name] == expected_row(f), name


# --- a bad setting stops the model load, before the model is read


def test_from_dir_checks_the_settings_before_reading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_SPOOL_BACKUPS", "many")
    with pytest.raises(ConfigError, match="ATELIER_SPOOL_BACKUPS='many'"):
        InferenceService.from_dir(tmp_path / "no-model-here")


def test_a_torchserve_worker_logs_the_reason_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ATELIER_MAX_PAYLOAD_BYTES", "4MiB")
    context = SimpleNamespace(
        system_properties={"model_dir": str(tmp_path)}, manifest={"model": {"modelVersion": "1"}}
    )
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigError):
        torchserve.load(context)
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        re.match(rf"{MODEL_LOAD_FAILED} serving setting ATELIER_MAX_PAYLOAD_BYTES='4MiB'", line)
        for line in lines
    ), lines
