"""Tests for atelier.drift.settings: one field, one env var, one flag; bad values named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atelier.drift import server
from atelier.drift.methods import DriftMethods
from atelier.drift.settings import (
    DriftSettings,
    default_of,
    env_name,
    flag_parser,
    from_args,
    parse_flags,
    setting_paths,
)
from atelier.runtime.errors import ConfigError
from atelier.tools.drift import DriftSidecar, SidecarSettings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_drift_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ATELIER_DRIFT_"):
            monkeypatch.delenv(name)


def flags() -> set[str]:
    return {s for a in flag_parser()._actions for s in a.option_strings if s.startswith("--")}


def test_every_field_has_a_flag() -> None:
    expected = {"--" + name.replace("_", "-") for name in DriftSettings.model_fields
                if name != "methods"}  # fmt: skip
    methods = DriftMethods.model_fields
    expected |= {"--methods." + name.replace("_", "-") for name in methods}
    expected |= {"--no-report-html", "--help"}
    assert flags() == expected


def test_the_launchers_flags_parse(tmp_path: Path) -> None:
    sidecar = DriftSidecar(
        SidecarSettings(spool_dir=tmp_path / "spool", store=tmp_path / "store",
                        run_dir=tmp_path / "run", port=8123,
                        report_every_records=500, report_every_seconds=2.5)
    )  # fmt: skip
    argv = sidecar.command()[3:]  # after: python -m atelier.drift
    s = from_args(argv)
    assert (s.port, s.report_every_records, s.report_every_seconds) == (8123, 500, 2.5)
    assert s.spool_dir == (tmp_path / "spool").resolve()
    assert s.database_url == f"sqlite:///{sidecar.run_dir / 'inference-log.db'}"
    assert s.pod_name == "sidecar-8123"


def test_flags_override_env_and_nested_flags_merge_with_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATELIER_DRIFT_PORT", "9001")
    monkeypatch.setenv("ATELIER_DRIFT_RETENTION", "7")
    monkeypatch.setenv("ATELIER_DRIFT_METHODS__CLASS_METHOD", "psi")
    s = from_args(["--port", "9002", "--methods.numeric-method", "wasserstein", "--no-report-html"])
    assert (s.port, s.retention, s.report_html) == (9002, 7, False)
    assert (s.methods.numeric_method, s.methods.class_method) == ("wasserstein", "psi")
    assert s.methods.numeric_threshold == 0.1  # wasserstein's default


def test_no_flags_no_env_is_the_defaults() -> None:
    assert parse_flags([]) == {}
    assert from_args([]) == DriftSettings()


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--report-every-records", "often"], {},
         "--report-every-records, ATELIER_DRIFT_REPORT_EVERY_RECORDS"),
        (["--port", "0"], {}, "--port, ATELIER_DRIFT_PORT"),
        (["--methods.numeric-method", "chi2"], {},
         "--methods.numeric-method, ATELIER_DRIFT_METHODS__NUMERIC_METHOD"),
        ([], {"ATELIER_DRIFT_WINDOW_SHORT": "abc"}, "--window-short, ATELIER_DRIFT_WINDOW_SHORT"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_flag_and_env_var(
    argv: list[str], env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        from_args(argv)
    assert named in info.value.message
    assert "got '" in info.value.message


def test_an_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_flags(["--report-every-record", "5", "--bogus"])
    assert info.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_main_exits_2_naming_the_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        server.main(["--report-every-seconds", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: drift setting report_every_seconds (--report-every-seconds" in err


def test_help_lists_env_vars() -> None:
    out = subprocess.run([sys.executable, "-m", "atelier.drift", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "--report-every-records" in out and "ATELIER_DRIFT_REPORT_EVERY_RECORDS" in out


def test_the_env_example_lists_every_setting_with_its_default() -> None:
    example = Path(__file__).resolve().parents[3] / "services" / "drift" / "drift.env.example"
    listed: dict[str, str] = {}
    for line in example.read_text().splitlines():
        line = line.removeprefix("# ")
        if line.startswith("ATELIER_DRIFT_"):
            name, _, value = line.partition("=")
            listed[name] = value.split("(")[0].strip()
    expected = {}
    for path in setting_paths(DriftSettings):
        default = default_of(path)
        expected[env_name(*path)] = "" if default is None else str(default).lower()
    normalised = {k: v.lower() for k, v in listed.items()}
    assert set(normalised) == set(expected)
    for k, v in expected.items():
        assert same(normalised[k], v), (k, normalised[k], v)


def same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
