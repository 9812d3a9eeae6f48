"""The MLflow Model Registry beside the model store.

Every version `atelier archive` publishes from a tracked run is registered under the model's
name, and the two point at each other:

- the registry version carries tags ``atelier.store_version``, ``atelier.storage_uri`` (the
  version folder as serving reads it), ``atelier.mar_sha256`` and ``atelier.gate``; its source
  is the version's files (config/, model-store/<name>.mar, model_card.json), logged as
  artifacts of the training run under ``store/<version>/``;
- the store version's ``model_card.json`` (and ``CURRENT.json`` while it is current) carries
  ``registry``: the tracking URI, the registered name and version, and the run id.

Aliases, not stages (deprecated since MLflow 2.9): ``champion`` is the version the store
serves (its ``CURRENT.json``), ``challenger`` a candidate (`atelier archive --challenger`).
`promote` moves ``champion`` and the store's current version in one step: the alias first
(a registry that fails changes nothing), then the store; a store that fails puts the alias
back. If that too fails, the error says what each holds and the command that repairs it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.runtime.errors import (
    AtelierError,
    ModelVersionNotFoundError,
    RegistryError,
    RegistryStoreMismatchError,
    TrackingUnreachableError,
    VersionNotPromotableError,
)
from atelier.training.tracking import connect, short_error

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_STORE_VERSION = "atelier.store_version"
TAG_STORAGE_URI = "atelier.storage_uri"
TAG_MAR_SHA256 = "atelier.mar_sha256"
TAG_GATE = "atelier.gate"
ARTIFACT_DIR = "store"  # the run's artifacts: store/<store version>/...
REGISTRY_FIX = (
    "start the tracking server or pass --tracking-uri (MLFLOW_TRACKING_URI) where the "
    "registry answers; or archive without registering: --no-register"
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class RegistryLink:
    """Where a store version is registered (``registry`` in its model card)."""

    tracking_uri: str
    name: str
    version: str
    run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> RegistryLink | None:
        reg = card.get("registry")
        return cls(**reg) if isinstance(reg, dict) else None


class Registry:
    """One registry (a tracking URI) through MlflowClient."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self.client = client
        self.uri = uri

    @classmethod
    def connect(cls, uri: str) -> Registry:
        # MLflow makes an empty SQLite store where none is: a registry is never made here.
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise TrackingUnreachableError(
                f"MLflow store {uri} does not exist", hint=f"pass --tracking-uri; {REGISTRY_FIX}"
            )
        return cls(connect(uri, fix=REGISTRY_FIX), uri)

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except AtelierError:
            raise
        except Exception as exc:
            raise RegistryError(
                f"MLflow registry at {self.uri}: {what} failed: {short_error(exc)}"
            ) from exc

    # -- reading
    def versions(self, name: str) -> list[ModelVersion]:
        def search() -> list[ModelVersion]:
            found = self.client.search_model_versions(f"name = '{name}'", max_results=10_000)
            return sorted(found, key=lambda mv: int(mv.version))

        return list(self._guard(f"listing versions of {name}", search))

    def get(self, name: str, version: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(
                f"MLflow registry at {self.uri}: reading {name} version {version} failed: "
                f"{short_error(exc)}"
            ) from exc

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of a registered model (search results carry no aliases)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_registered_model(name).aliases or {}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise RegistryError(
                f"MLflow registry at {self.uri}: reading {name} failed: {short_error(exc)}"
            ) from exc
        return {str(k): str(v) for k, v in found.items()}

    def alias(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryError(
                f"MLflow registry at {self.uri}: reading alias {alias} of {name} failed: "
                f"{short_error(exc)}"
            ) from exc

    # -- writing
    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version``; None removes it."""
        if version is None:
            if self.alias(name, alias) is not None:
                self._guard(
                    f"removing alias {alias}",
                    lambda: self.client.delete_registered_model_alias(name, alias),
                )
            return
        self._guard(
            f"setting alias {alias} to version {version}",
            lambda: self.client.set_registered_model_alias(name, alias, version),
        )

    def register(
        self,
        name: str,
        store_version: str,
        run_id: str,
        version_dir: Path,
        card: dict[str, Any],
        storage_uri: str,
    ) -> RegistryLink:
        """Log the version's files to the run, then create the registry version with tags."""
        from mlflow.exceptions import MlflowException

        artifact_path = f"{ARTIFACT_DIR}/{store_version}"

        def upload() -> str:
            for sub in ("config", "model-store"):
                self.client.log_artifacts(run_id, str(version_dir / sub), f"{artifact_path}/{sub}")
            return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

        source = self._guard(f"logging store version {store_version} to run {run_id}", upload)

        def ensure_model() -> None:
            try:
                self.client.create_registered_model(
                    name, description="atelier model: versions published by `atelier archive`"
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

        self._guard(f"creating registered model {name}", ensure_model)
        tags = {
            TAG_STORE_VERSION: store_version,
            TAG_STORAGE_URI: storage_uri,
            TAG_MAR_SHA256: card["mar_sha256"],
            TAG_GATE: "passed" if (card.get("gate") or {}).get("passed") else "failed",
        }
        accuracy = (card.get("metrics") or {}).get("test_accuracy")
        mv = self._guard(
            f"registering store version {store_version}",
            lambda: self.client.create_model_version(
                name,
                source,
                run_id=run_id,
                tags=tags,
                description=f"store version {store_version} ({storage_uri}), test accuracy "
                f"{accuracy}",
                await_creation_for=0,
            ),
        )
        return RegistryLink(self.uri, name, str(mv.version), run_id)

    def upload_card(self, link: RegistryLink, store_version: str, card_path: Path) -> None:
        """The version's model card (with its registry link) beside its files in the run."""
        run_id = link.run_id
        assert run_id is not None
        self._guard(
            "logging the model card",
            lambda: self.client.log_artifact(
                run_id, str(card_path), f"{ARTIFACT_DIR}/{store_version}"
            ),
        )

    def delete_version(self, name: str, version: str) -> None:
        self._guard(
            f"removing version {version}", lambda: self.client.delete_model_version(name, version)
        )


# --- the store side, read through archive's files


def _store_ops() -> Any:
    from atelier.training import archive

    return archive


def read_card(store: Path, version: str) -> dict[str, Any]:
    path = store / "versions" / version / "model_card.json"
    if not path.is_file():
        have = ", ".join(_store_ops().existing_versions(store)) or "none"
        raise ModelVersionNotFoundError(
            f"model store {store} has no version {version} (versions: {have})",
            hint="`atelier models list` shows the versions",
        )
    card: dict[str, Any] = json.loads(path.read_text())
    return card


def registry_for(card: dict[str, Any], tracking_uri: str | None) -> Registry | None:
    """The registry a store version is linked to (``tracking_uri`` overrides the recorded
    URI, e.g. a port-forward to the cluster's server); None for an unregistered version."""
    link = RegistryLink.from_card(card)
    if link is None:
        return None
    return Registry.connect(tracking_uri or link.tracking_uri)


@dataclass
class PromoteResult:
    name: str
    version: str
    registry_version: str | None
    previous: str | None  # the store's current version before
    previous_champion: str | None
    changed: bool


def _check_link(reg: Registry, card: dict[str, Any], store_version: str) -> str:
    """The registry version of a store version, checked to point back at it."""
    link = RegistryLink.from_card(card)
    assert link is not None
    mv = reg.get(link.name, link.version)
    if mv is None:
        raise ModelVersionNotFoundError(
            f"{link.name} version {link.version} (store version {store_version}) is not in the "
            f"registry at {reg.uri}",
            hint="pass --tracking-uri for the registry it was registered in",
        )
    tags = mv.tags or {}
    if tags.get(TAG_STORE_VERSION) != store_version or tags.get(TAG_MAR_SHA256) != card.get(
        "mar_sha256"
    ):
        raise VersionNotPromotableError(
            f"registry {link.name} version {link.version} points at store version "
            f"{tags.get(TAG_STORE_VERSION)} (mar {str(tags.get(TAG_MAR_SHA256))[:12]}), not at "
            f"store version {store_version} (mar {str(card.get('mar_sha256'))[:12]})",
            hint="the store and the registry are different ones: check --store and --tracking-uri",
        )
    if tags.get(TAG_GATE) != "passed":
        raise VersionNotPromotableError(
            f"registry {link.name} version {link.version} is tagged {TAG_GATE}="
            f"{tags.get(TAG_GATE)}; only versions that passed their quality gate are promoted"
        )
    return link.version


def _unpublish(store: Path, name: str) -> None:
    """Remove what a first, failed publish may have copied to the store root."""
    for path in (
        store / "model-store" / f"{name}.mar",
        store / "config" / "config.properties",
        store / "config" / "metrics.yaml",
        store / "CURRENT.json",
    ):
        path.unlink(missing_ok=True)


def promote(
    store: Path,
    name: str,
    version: str,
    *,
    tracking_uri: str | None = None,
    registry: Registry | None = None,
    say: Say = print,
) -> PromoteResult:
    """Make ``version`` the store's current version and the registry's ``champion``."""
    ops = _store_ops()
    card = read_card(store, version)
    if card.get("name") != name:
        raise ModelVersionNotFoundError(
            f"store version {version} in {store} is model {card.get('name')!r}, not {name!r}"
        )
    gate = card.get("gate") or {}
    if not gate.get("passed"):
        raise VersionNotPromotableError(
            f"{name} version {version} did not pass its quality gate (test accuracy "
            f"{(card.get('metrics') or {}).get('test_accuracy')} < {gate.get('min_accuracy')}); "
            "nothing changed"
        )
    before = ops.current(store)
    previous = before["version"] if before and before.get("name") == name else None
    reg = registry if registry is not None else registry_for(card, tracking_uri)
    if RegistryLink.from_card(card) is None:
        reg = None
    if reg is None:
        ops.publish(store, version)
        say(
            f"{name} version {version} has no registry entry (its run was not tracked): "
            "only the store changed"
        )
        return PromoteResult(name, version, None, previous, None, previous != version)

    reg_version = _check_link(reg, card, version)
    prev_champion = reg.alias(name, CHAMPION)
    if prev_champion == reg_version and previous == version:
        return PromoteResult(name, version, reg_version, previous, prev_champion, False)
    current_file = store / ops.CURRENT_FILE
    saved = current_file.read_bytes() if current_file.is_file() else None
    reg.set_alias(name, CHAMPION, reg_version)  # a failure here changed nothing
    try:
        ops.publish(store, version)
    except BaseException as exc:
        _roll_back(store, name, version, reg, reg_version, (previous, saved), prev_champion, exc)
        raise  # _roll_back raises; this keeps type checkers sure
    if reg.alias(name, CHALLENGER) == reg_version:
        with contextlib.suppress(RegistryError):
            reg.set_alias(name, CHALLENGER, None)
    return PromoteResult(name, version, reg_version, previous, prev_champion, True)


def _roll_back(
    store: Path,
    name: str,
    version: str,
    reg: Registry,
    reg_version: str,
    before: tuple[str | None, bytes | None],
    prev_champion: str | None,
    cause: BaseException,
) -> None:
    """The store failed after the alias moved: put both back (the root's files republished
    from the previous version, CURRENT.json byte for byte), or say how to repair."""
    ops = _store_ops()
    previous, saved = before
    why = short_error(cause) if isinstance(cause, Exception) else type(cause).__name__
    problems = []
    try:
        reg.set_alias(name, CHAMPION, prev_champion)
    except Exception as exc:
        problems.append(f"the registry's {CHAMPION} could not be put back ({short_error(exc)})")
    try:
        if previous is not None and saved is not None:
            ops.publish(store, previous)
            tmp = store / f".{ops.CURRENT_FILE}.tmp"
            tmp.write_bytes(saved)
            tmp.replace(store / ops.CURRENT_FILE)
        else:
            _unpublish(store, name)
    except Exception as exc:
        problems.append(f"the store's root could not be restored ({short_error(exc)})")
    if problems:
        now_champion = reg_version if problems[0].startswith("the registry") else prev_champion
        raise RegistryStoreMismatchError(
            f"promoting {name} version {version} failed in the store ({why}) and "
            f"{' and '.join(problems)}: the registry's {CHAMPION} is version {now_champion}, "
            f"the store's current version is {previous}",
            hint=f"repair with `atelier promote {name} {version} --store {store}` (or promote "
            f"{previous} back) once the store and the registry are reachable",
        ) from cause
    if isinstance(cause, KeyboardInterrupt):
        raise cause
    raise RegistryError(
        f"promoting {name} version {version} failed in the store ({why}); the registry's "
        f"{CHAMPION} was put back to version {prev_champion}: nothing changed",
        hint="fix the store (disk space, permissions) and promote again",
    ) from cause


@dataclass
class VersionRow:
    store_version: str | None
    registry_version: str | None
    aliases: list[str]
    test_accuracy: float | None
    gate: str
    published: str
    current: bool
    run_id: str | None


def list_versions(
    store: Path, name: str | None, tracking_uri: str | None, say: Say
) -> list[VersionRow]:
    """Store versions joined with their registry versions (and registry-only versions)."""
    ops = _store_ops()
    cur = ops.current(store)
    rows: list[VersionRow] = []
    links: dict[str, RegistryLink] = {}
    uri = tracking_uri
    for v in ops.existing_versions(store):
        card = json.loads((store / "versions" / v / "model_card.json").read_text())
        if name and card.get("name") != name:
            continue
        link = RegistryLink.from_card(card)
        if link:
            links[v] = link
            uri = uri or link.tracking_uri
        rows.append(
            VersionRow(
                v,
                link.version if link else None,
                [],
                (card.get("metrics") or {}).get("test_accuracy"),
                "passed" if (card.get("gate") or {}).get("passed") else "failed",
                str(card.get("created", "-")),
                bool(cur and cur.get("version") == v),
                link.run_id if link else None,
            )
        )
    model_name = name or (cur or {}).get("name") or next((k.name for k in links.values()), None)
    if uri is None or model_name is None:
        return rows
    try:
        reg = Registry.connect(uri)
        versions = reg.versions(model_name)
        aliases = reg.aliases(model_name)
    except AtelierError as exc:
        say(f"registry: {exc.message}; aliases not shown")
        return rows
    by_reg = {r.registry_version: r for r in rows if r.registry_version}
    for mv in versions:
        row = by_reg.get(str(mv.version))
        if row is None:
            tags = mv.tags or {}
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000))
            row = VersionRow(
                None, str(mv.version), [], None, tags.get(TAG_GATE, "-"), stamp, False, mv.run_id
            )
            rows.append(row)
        row.aliases = sorted(a for a, v in aliases.items() if v == str(mv.version))
    champion = next((r for r in rows if CHAMPION in r.aliases), None)
    current_row = next((r for r in rows if r.current), None)
    if current_row and current_row.registry_version and champion is not current_row:
        say(
            f"registry: {CHAMPION} is {model_name} version "
            f"{champion.registry_version if champion else 'unset'} but the store serves store "
            f"version {current_row.store_version}; repair: atelier promote {model_name} "
            f"{current_row.store_version} --store {store}"
        )
    return rows
