"""The MLflow Model Registry beside the model store, on a real local MLflow store (SQLite):
`atelier archive` registers, `promote` moves `champion` and CURRENT.json together, and a
failure between the two leaves both as they were or says how to repair them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from atelier.runtime.errors import (
    ModelVersionNotFoundError,
    RegistryError,
    RegistryStoreMismatchError,
    TrackingUnreachableError,
    VersionExistsError,
    VersionNotPromotableError,
)
from atelier.tools.process import free_port
from atelier.training import archive as archive_mod
from atelier.training.archive import archive_run, current
from atelier.training.loop import RunResult
from atelier.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_GATE,
    TAG_MAR_SHA256,
    TAG_STORAGE_URI,
    TAG_STORE_VERSION,
    Registry,
    list_versions,
    promote,
)
from atelier.training.tracking import RunRecord, artifact_root_for, local_store_uri

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return local_store_uri(tmp_path_factory.mktemp("mlflow") / "run")


@pytest.fixture(scope="module")
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


@pytest.fixture
def tracked_run(
    smoke_run: RunResult, tmp_path: Path, client: MlflowClient, tracking_uri: str
) -> Path:
    """The session's smoke run folder, recorded as an MLflow run of the module's store."""
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    exp = client.get_experiment_by_name("registry-tests")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("registry-tests", artifact_root_for(tracking_uri))
    )
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    RunRecord(tracking_uri, exp_id, "registry-tests", run.info.run_id, "FINISHED").write(run_dir)
    return run_dir


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return "m-" + request.node.name.replace("_", "-").replace("[", "-").rstrip("]")[:40]


def champion(client: MlflowClient, name: str) -> str | None:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}.get(CHAMPION)


def card(store: Path, version: str) -> dict[str, Any]:
    return json.loads((store / "versions" / version / "model_card.json").read_text())


def state(store: Path, client: MlflowClient, name: str) -> tuple[bytes, dict[str, int]]:
    """What must not change: CURRENT.json's bytes and the registry's aliases."""
    return (store / "CURRENT.json").read_bytes(), dict(client.get_registered_model(name).aliases)


def test_archive_registers_and_the_two_point_at_each_other(
    tracked_run: Path, tmp_path: Path, client: MlflowClient, name: str
) -> None:
    store = tmp_path / "store"
    result = archive_run(tracked_run, store, name=name, storage_uri="pvc://models/")
    assert result.registry is not None and result.current
    mv = client.get_model_version(name, result.registry.version)
    c = card(store, result.version)
    assert mv.tags[TAG_STORE_VERSION] == result.version
    assert mv.tags[TAG_STORAGE_URI] == f"pvc://models/versions/{result.version}"
    assert mv.tags[TAG_MAR_SHA256] == c["mar_sha256"] and mv.tags[TAG_GATE] == "passed"
    record = RunRecord.read(tracked_run)
    assert record is not None and mv.run_id == record.run_id
    assert c["registry"] == {
        "tracking_uri": record.tracking_uri,
        "name": name,
        "version": str(mv.version),
        "run_id": record.run_id,
    }
    assert current(store)["registry"] == c["registry"]  # type: ignore[index]
    assert champion(client, name) == str(mv.version)
    # The registry version's source is the version's files, logged to the training run.
    files = {a.path for a in client.list_artifacts(record.run_id, f"store/{result.version}")}
    assert files == {
        f"store/{result.version}/{p}" for p in ("config", "model-store", "model_card.json")
    }
    assert mv.source.endswith(f"/artifacts/store/{result.version}")


def test_challenger_then_promote_moves_alias_and_current_together(
    tracked_run: Path, tmp_path: Path, client: MlflowClient, name: str
) -> None:
    store = tmp_path / "store"
    first = archive_run(tracked_run, store, name=name)
    second = archive_run(tracked_run, store, name=name, challenger=True)
    assert not second.current and second.registry is not None and first.registry is not None
    assert current(store)["version"] == first.version  # type: ignore[index]
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases == {CHAMPION: first.registry.version, CHALLENGER: second.registry.version}

    result = promote(store, name, second.version)
    assert result.changed and result.previous == first.version
    assert current(store)["version"] == second.version  # type: ignore[index]
    assert current(store)["registry"]["version"] == second.registry.version  # type: ignore[index]
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases == {CHAMPION: second.registry.version}  # the challenger won
    assert (store / "model-store" / f"{name}.mar").read_bytes() == second.mar_path.read_bytes()
    assert not promote(store, name, second.version).changed

    rows = {r.store_version: r for r in list_versions(store, name, None, say=print)}
    assert rows[second.version].aliases == [CHAMPION] and rows[second.version].current
    assert rows[first.version].aliases == [] and not rows[first.version].current


def test_promote_refuses_missing_and_gate_failed_versions_and_changes_nothing(
    tracked_run: Path, tmp_path: Path, client: MlflowClient, name: str
) -> None:
    store = tmp_path / "store"
    first = archive_run(tracked_run, store, name=name)
    second = archive_run(tracked_run, store, name=name, challenger=True)
    before = state(store, client, name)
    with pytest.raises(ModelVersionNotFoundError, match=r"has no version 9 \(versions: 1, 2\)"):
        promote(store, name, "9")
    with pytest.raises(ModelVersionNotFoundError, match="is model"):
        promote(store, "another-model", first.version)
    # A registry version whose gate failed is refused, whatever its store copy says.
    assert second.registry is not None
    client.set_model_version_tag(name, second.registry.version, TAG_GATE, "failed")
    with pytest.raises(VersionNotPromotableError, match=r"atelier\.gate=failed"):
        promote(store, name, second.version)
    # So is a store version whose card says it failed.
    path = store / "versions" / second.version / "model_card.json"
    path.write_text(json.dumps({**card(store, second.version), "gate": {"passed": False}}))
    with pytest.raises(VersionNotPromotableError, match="did not pass its quality gate"):
        promote(store, name, second.version)
    assert state(store, client, name) == before


def test_a_store_failure_after_the_alias_moved_rolls_the_alias_back(
    tracked_run: Path,
    tmp_path: Path,
    client: MlflowClient,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    first = archive_run(tracked_run, store, name=name)
    second = archive_run(tracked_run, store, name=name, challenger=True)
    before = state(store, client, name)
    real_replace = archive_mod._replace_file
    failed: list[Path] = []

    def disk_full(src: Path, dest: Path) -> None:
        # The new .mar lands in the store root, then its config cannot be written (once).
        if dest.name == "config.properties" and not failed:
            failed.append(dest)
            raise OSError(28, "No space left on device")
        real_replace(src, dest)

    monkeypatch.setattr(archive_mod, "_replace_file", disk_full)
    with pytest.raises(RegistryError, match="put back to version 1: nothing changed") as err:
        promote(store, name, second.version)
    assert "No space left on device" in err.value.message
    monkeypatch.undo()
    assert state(store, client, name) == before
    # The root's .mar is the current version's again, not the half-published one.
    assert (store / "model-store" / f"{name}.mar").read_bytes() == first.mar_path.read_bytes()


def test_when_the_rollback_fails_too_the_error_says_how_to_repair(
    tracked_run: Path,
    tmp_path: Path,
    client: MlflowClient,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    first = archive_run(tracked_run, store, name=name)
    second = archive_run(tracked_run, store, name=name, challenger=True)
    assert first.registry and second.registry
    real_set_alias = Registry.set_alias
    calls: list[str | None] = []

    def flaky(self: Registry, model: str, alias: str, version: str | None) -> None:
        calls.append(version)
        if len(calls) > 1:  # the registry goes away after moving the alias
            raise RegistryError("MLflow registry: connection refused")
        real_set_alias(self, model, alias, version)

    def publish_fails(store_: Path, version: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Registry, "set_alias", flaky)
    monkeypatch.setattr(archive_mod, "publish", publish_fails)
    with pytest.raises(RegistryStoreMismatchError) as err:
        promote(store, name, second.version)
    line = err.value.one_line()
    assert f"champion is version {second.registry.version}" in line
    assert f"current version is {first.version}" in line
    assert f"repair with `atelier promote {name} {second.version} --store {store}`" in line
    monkeypatch.undo()
    # They disagree now, as the error said; models list says so too, and the repair works.
    said: list[str] = []
    list_versions(store, name, None, say=said.append)
    assert len(said) == 1 and f"repair: atelier promote {name} {first.version}" in said[0]
    promote(store, name, second.version)
    assert current(store)["version"] == second.version  # type: ignore[index]
    assert champion(client, name) == second.registry.version


def test_archive_with_an_unreachable_registry_writes_nothing(
    tracked_run: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnreachableError) as err:
        archive_run(tracked_run, store, tracking_uri=uri)
    assert uri in err.value.one_line() and "--no-register" in err.value.one_line()
    assert not store.exists()
    # A SQLite store that is not there is not made (MLflow would make an empty one).
    missing = tmp_path / "elsewhere" / "mlflow.db"
    missing.parent.mkdir()
    with pytest.raises(TrackingUnreachableError, match="does not exist"):
        archive_run(tracked_run, store, tracking_uri=f"sqlite:///{missing}")
    assert not missing.exists() and not store.exists()
    result = archive_run(tracked_run, store, register=False, say=lambda _: None)
    assert result.registry is None and "registry" not in card(store, result.version)


def test_a_failed_rename_removes_the_registry_version(
    tracked_run: Path,
    tmp_path: Path,
    client: MlflowClient,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    archive_run(tracked_run, store, name=name)

    def taken(src: Any, dst: Any) -> None:
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(archive_mod.os, "rename", taken)
    with pytest.raises(VersionExistsError):
        archive_run(tracked_run, store, name=name)
    monkeypatch.undo()
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert sorted(p.name for p in (store / "versions").iterdir()) == ["1"]


def test_versions_of_an_untracked_run_change_only_the_store(
    smoke_run: RunResult, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    said: list[str] = []
    one = archive_run(smoke_run.run_dir, store, say=said.append)
    two = archive_run(smoke_run.run_dir, store, say=said.append)
    assert one.registry is None and "run was not tracked" in said[0]
    result = promote(store, "fashion-mnist", one.version, say=said.append)
    assert result.changed and result.registry_version is None
    assert current(store)["version"] == one.version != two.version  # type: ignore[index]
    assert "only the store changed" in said[-1]
