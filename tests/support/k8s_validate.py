"""Strict offline validation of rendered Kubernetes objects for one pinned Kubernetes version.

No API server is needed. Each object goes to exactly one checker, chosen by apiVersion and kind:

- KServe kinds (InferenceService, ServingRuntime, ClusterServingRuntime) are walked against the
  ``kserve`` package's generated models (``openapi_types`` / ``attribute_map``): an unknown
  field, a wrong type or a missing required field is a problem. A field whose type is a
  Kubernetes type (``V1Container``, ``V1ObjectMeta``, ``K8sIoApiAppsV1DeploymentStrategy``, ...)
  is checked against that type's strict JSON schema for the pinned version, taken from the
  ``kubernetes-validate`` package. That is what the KServe CRDs embed; the ``kubernetes``
  client's own models describe a newer Kubernetes and type quantities such as ``cpu: 1`` as
  strings only.
- Prometheus Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule, AlertmanagerConfig)
  are walked against the ``cloudcoil`` pydantic models generated from the operator's CRDs:
  the walk rejects unknown keys (by their JSON names), and ``model_validate(strict=True)``
  checks types, enums, patterns and required fields. The models alone ignore unknown keys.
- Every other kind goes to ``kubernetes_validate.validate(..., strict=True)``. A kind with no
  schema there is a problem, as is any other kind in the KServe or Prometheus Operator groups.

:func:`check_names` adds what schemas do not say: names and label values fit their length and
character rules (63 characters for every object name, 52 for a CronJob, DNS-1035 for a Service
and an InferenceService, 15 for a container port name).

Importing this module needs the dev extras (kubernetes-validate, cloudcoil); the rest of the
package never imports it.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import jsonschema
import kserve.models
import kubernetes_validate
import pydantic
import referencing
from cloudcoil.models.keda import v1alpha1 as keda_v1alpha1
from cloudcoil.models.prometheus_operator import v1 as prom_v1
from cloudcoil.models.prometheus_operator import v1alpha1 as prom_v1alpha1
from kserve.configuration import Configuration as KServeConfiguration

K8S_VERSION = "1.31.0"
"""The Kubernetes version every object is validated for."""

NAME_MAX = 63
CRONJOB_NAME_MAX = 52  # the CronJob controller appends an 11-character suffix to Job names
PORT_NAME_MAX = 15  # IANA_SVC_NAME

KSERVE_GROUP = "serving.kserve.io"
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"
KEDA_GROUP = "keda.sh"

KSERVE_KINDS: dict[tuple[str, str], str] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}
"""(apiVersion, kind) -> model class name in ``kserve.models``."""

PROMETHEUS_OPERATOR_KINDS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prom_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prom_v1.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prom_v1.PrometheusRule,
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): prom_v1alpha1.AlertmanagerConfig,
}

KEDA_KINDS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda_v1alpha1.ScaledObject,
}
"""KEDA (optional in the chart): pydantic models from its CRDs, checked like the above."""

PathItem = str | int


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an object, at a JSON path inside it."""

    path: tuple[PathItem, ...]
    message: str

    @property
    def where(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def format_path(path: Sequence[PathItem]) -> str:
    """``("spec", "containers", 0, "name")`` -> ``spec.containers[0].name``; the root is ``.``."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else str(item)
    return out or "."


def object_id(obj: Mapping[str, Any]) -> str:
    """``Kind/name`` of a rendered object, with placeholders for what is missing."""
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind') or '<no kind>'}/{name or '<no name>'}"


def describe(scenario: str, obj: Mapping[str, Any], problems: Sequence[Problem]) -> list[str]:
    """One ``<scenario> <kind>/<name>: <path>: <problem>`` line per problem."""
    return [f"{scenario} {object_id(obj)}: {problem}" for problem in problems]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- dispatch


def validate_object(obj: object) -> list[Problem]:
    """Every schema problem of one rendered object, by the checker its apiVersion/kind picks."""
    if not isinstance(obj, dict):
        return [Problem((), f"a rendered document must be a mapping, got {_type_name(obj)}")]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return [Problem(("apiVersion",), "missing or not a string")]
    if not isinstance(kind, str) or not kind:
        return [Problem(("kind",), "missing or not a string")]
    group = api_version.split("/")[0] if "/" in api_version else ""
    key = (api_version, kind)
    if key in KSERVE_KINDS:
        return validate_kserve(obj, KSERVE_KINDS[key])
    if key in PROMETHEUS_OPERATOR_KINDS:
        return validate_prometheus_operator(obj, PROMETHEUS_OPERATOR_KINDS[key])
    if key in KEDA_KINDS:
        return validate_prometheus_operator(obj, KEDA_KINDS[key])
    if group in (KSERVE_GROUP, PROMETHEUS_OPERATOR_GROUP, KEDA_GROUP):
        known = sorted(
            f"{k} ({a})"
            for a, k in [*KSERVE_KINDS, *PROMETHEUS_OPERATOR_KINDS, *KEDA_KINDS]
            if a.startswith(group)
        )
        return [
            Problem(
                (),
                f"no strict checker for {api_version} {kind} (checked kinds in {group}: "
                f"{', '.join(known)})",
            )
        ]
    return validate_core(obj)


# --------------------------------------------------------------------------- core kinds


def validate_core(obj: dict[str, Any]) -> list[Problem]:
    """kubernetes-validate in strict mode; a kind it has no schema for is a problem."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [Problem(tuple(exc.path), exc.message)]
    except kubernetes_validate.SchemaNotFoundError:
        return [
            Problem(
                (),
                f"kind {obj['kind']} with apiVersion {obj['apiVersion']} has no schema in "
                f"Kubernetes {K8S_VERSION} and is not a CRD kind checked another way",
            )
        ]
    except kubernetes_validate.InvalidSchemaError as exc:
        return [Problem((), f"kubernetes-validate could not read its schema: {exc.message}")]
    return []


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    """The strict JSON schema definitions kubernetes-validate ships for K8S_VERSION."""
    major_minor = ".".join(K8S_VERSION.split(".")[:2])
    folder = f"v{major_minor}.0-local-strict"
    ref = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / folder
        / "_definitions.json"
    )
    loaded: dict[str, Any] = json.loads(ref.read_text())
    return loaded


def _camel(part: str) -> str:
    return part[:1].upper() + part[1:]


@functools.cache
def _k8s_type_index() -> dict[str, str | None]:
    """Generated-model type name -> definition key; ``None`` for an ambiguous short name.

    ``io.k8s.api.apps.v1.DeploymentStrategy`` is known as ``V1DeploymentStrategy`` (the
    kubernetes client's name), ``AppsV1DeploymentStrategy`` (its name when the short one
    clashes, e.g. ``CoreV1ResourceClaim``) and ``K8sIoApiAppsV1DeploymentStrategy`` (the
    Go-package name that KServe's generator uses).
    """
    index: dict[str, str | None] = {}
    short_names: dict[str, set[str]] = {}
    for key in _k8s_definitions()["$defs"]:
        parts = key.split(".")
        if len(parts) < 4:
            continue
        kind, version, group = parts[-1], parts[-2], parts[-3]
        short = _camel(version) + kind
        short_names.setdefault(short, set()).add(key)
        index[_camel(group) + short] = key
        go_path = [parts[1], parts[0], *parts[2:-1]]
        index["".join(_camel(p) for p in go_path) + kind] = key
    for short, keys in short_names.items():
        index.setdefault(short, next(iter(keys)) if len(keys) == 1 else None)
    return index


@functools.cache
def _k8s_type_validator(def_key: str) -> jsonschema.protocols.Validator:
    definitions = _k8s_definitions()
    resource = referencing.Resource.from_contents(definitions)
    registry: referencing.Registry[Any] = resource @ referencing.Registry()
    schema = {"$ref": f"{definitions['$id']}#/$defs/{def_key}"}
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(
        schema, registry=registry
    )
    return validator


def _validate_k8s_type(
    value: object, def_key: str, path: tuple[PathItem, ...], problems: list[Problem]
) -> None:
    validator = _k8s_type_validator(def_key)
    for error in validator.iter_errors(value):
        problems.append(Problem(path + tuple(error.absolute_path), error.message))


# --------------------------------------------------------------------------- KServe kinds

_LIST_TYPE = re.compile(r"(?:list|List)\[(?P<item>.+)\]")
_DICT_TYPE = re.compile(r"(?:dict\(str, (?P<a>.+)\)|Dict\[str, (?P<b>.+)\])")
_QUANTITY_TYPES = frozenset({"ResourceQuantity", "V1beta1MetricQuantity"})
"""KServe's names for Kubernetes quantities (int-or-string in its CRDs)."""

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str, datetime),
    "date": (str, date),
}


def _kserve_model(type_name: str) -> type | None:
    model = getattr(kserve.models, type_name, None)
    if (
        isinstance(model, type)
        and model.__module__.startswith("kserve.")
        and hasattr(model, "openapi_types")
    ):
        return model
    return None


@functools.cache
def _kserve_required(model: type) -> frozenset[str]:
    """Attributes whose generated setter refuses ``None`` under client-side validation."""
    probe: Any = object.__new__(model)
    config = KServeConfiguration()
    config.client_side_validation = True
    probe.local_vars_configuration = config
    required = set()
    for attr in model.openapi_types:  # type: ignore[attr-defined]
        try:
            setattr(probe, attr, None)
        except ValueError as exc:
            if "must not be `None`" in str(exc):
                required.add(attr)
    return frozenset(required)


def validate_kserve(obj: dict[str, Any], model_name: str) -> list[Problem]:
    """Walk a KServe object against its generated model; every problem found, not just one."""
    problems: list[Problem] = []
    _walk_openapi(obj, model_name, (), problems)
    return problems


def _walk_openapi(
    value: object, type_name: str, path: tuple[PathItem, ...], problems: list[Problem]
) -> None:
    if value is None:  # null is an absent field; _walk_model reports required ones
        return
    if type_name == "object":
        return
    if type_name in _PRIMITIVES:
        allowed = _PRIMITIVES[type_name]
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            problems.append(
                Problem(path, f"expected {type_name}, got {_type_name(value)} {_shown(value)}")
            )
        return
    if type_name in _QUANTITY_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            problems.append(
                Problem(path, f"expected a quantity (string or number), got {_type_name(value)}")
            )
        return
    if match := _LIST_TYPE.fullmatch(type_name):
        if not isinstance(value, list):
            problems.append(
                Problem(path, f"expected a list ({type_name}), got {_type_name(value)}")
            )
            return
        for i, item in enumerate(value):
            _walk_openapi(item, match["item"], (*path, i), problems)
        return
    if match := _DICT_TYPE.fullmatch(type_name):
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a map ({type_name}), got {_type_name(value)}"))
            return
        item_type = match["a"] or match["b"]
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(Problem((*path, str(key)), "map key is not a string"))
                continue
            _walk_openapi(item, item_type, (*path, key), problems)
        return
    model = _kserve_model(type_name)
    if model is not None:
        _walk_model(value, model, path, problems)
        return
    def_key = _k8s_type_index().get(type_name)
    if def_key is not None:
        _validate_k8s_type(value, def_key, path, problems)
        return
    problems.append(
        Problem(
            path,
            f"no schema for type {type_name}: neither a kserve model nor a Kubernetes "
            f"{K8S_VERSION} type",
        )
    )


def _walk_model(
    value: object, model: type, path: tuple[PathItem, ...], problems: list[Problem]
) -> None:
    if not isinstance(value, dict):
        problems.append(
            Problem(path, f"expected an object ({model.__name__}), got {_type_name(value)}")
        )
        return
    openapi_types: dict[str, str] = model.openapi_types  # type: ignore[attr-defined]
    attribute_map: dict[str, str] = model.attribute_map  # type: ignore[attr-defined]
    by_json_key = {json_key: attr for attr, json_key in attribute_map.items()}
    for key, item in value.items():
        attr = by_json_key.get(key) if isinstance(key, str) else None
        if attr is None:
            problems.append(Problem((*path, str(key)), f"unknown field (not in {model.__name__})"))
            continue
        _walk_openapi(item, openapi_types[attr], (*path, key), problems)
    for attr in sorted(_kserve_required(model)):
        json_key = attribute_map[attr]
        if value.get(json_key) is None:
            problems.append(
                Problem((*path, json_key), f"required field missing (in {model.__name__})")
            )


# --------------------------------------------------------------------------- Prometheus Operator


def validate_prometheus_operator(
    obj: dict[str, Any], model: type[pydantic.BaseModel]
) -> list[Problem]:
    """Unknown keys (strict walk by JSON name) plus the model's own strict validation."""
    problems: list[Problem] = []
    _walk_pydantic(obj, model, (), problems)
    try:
        model.model_validate(obj, strict=True)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            message = error["msg"]
            if error["type"] != "missing":
                got = error.get("input")
                message += f" (got {_type_name(got)} {_shown(got)})"
            problems.append(Problem(tuple(error["loc"]), message))
    return problems


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _walk_pydantic(
    value: object, annotation: Any, path: tuple[PathItem, ...], problems: list[Problem]
) -> None:
    """Reject keys that no field declares, recursively. Types are left to model_validate."""
    if value is None or annotation is Any:
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        _walk_pydantic(value, args[0], path, problems)
        return
    if origin is typing.Union or origin is types.UnionType:
        branches = [a for a in args if a is not type(None)]
        if len(branches) == 1:
            _walk_pydantic(value, branches[0], path, problems)
            return
        first: list[Problem] | None = None
        for branch in branches:
            found: list[Problem] = []
            _walk_pydantic(value, branch, path, found)
            if not found:
                return
            first = found if first is None else first
        problems.extend(first or [])
        return
    if origin is Literal:
        return
    if origin is list:
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk_pydantic(item, args[0], (*path, i), problems)
        return
    if origin is dict:
        if isinstance(value, dict):
            for key, item in value.items():
                _walk_pydantic(item, args[1], (*path, str(key)), problems)
        return
    if isinstance(annotation, type) and issubclass(annotation, pydantic.RootModel):
        _walk_pydantic(value, annotation.model_fields["root"].annotation, path, problems)
        return
    if _is_model(annotation) and isinstance(value, dict):
        fields = {(field.alias or name): field for name, field in annotation.model_fields.items()}
        for key, item in value.items():
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                problems.append(
                    Problem((*path, str(key)), f"unknown field (not in {annotation.__name__})")
                )
                continue
            _walk_pydantic(item, field.annotation, (*path, key), problems)


# --------------------------------------------------------------------------- names and labels

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

_RBAC_KINDS = frozenset({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})
_DNS1035_KINDS = frozenset({"Service", "InferenceService"})
_KSERVE_COMPONENTS = ("predictor", "transformer", "explainer")
_CONTAINER_LISTS = frozenset({"containers", "initContainers", "ephemeralContainers"})


def check_names(obj: object) -> list[Problem]:
    """Length and character rules for names and label values that schemas do not encode."""
    if not isinstance(obj, dict):
        return []
    problems: list[Problem] = []
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    where: tuple[PathItem, ...] = ("metadata", "name")
    if not isinstance(name, str) or not name:
        problems.append(Problem(where, "an object needs a non-empty string name"))
    else:
        problems.extend(_object_name_problems(kind, name, where))
        if kind == "InferenceService":
            problems.extend(_kserve_derived_name_problems(obj, name))
    for path, labels in _label_maps(obj, ()):
        problems.extend(_label_problems(labels, path))
    if isinstance(metadata, dict) and isinstance(metadata.get("annotations"), dict):
        for key in metadata["annotations"]:
            problems.extend(_qualified_name_problems(key, ("metadata", "annotations", str(key))))
    problems.extend(_container_problems(obj, ()))
    return problems


def _object_name_problems(kind: object, name: str, where: tuple[PathItem, ...]) -> list[Problem]:
    problems = []
    if len(name) > NAME_MAX:
        problems.append(Problem(where, f"name {name!r} is {len(name)} characters (max {NAME_MAX})"))
    if kind == "CronJob" and len(name) > CRONJOB_NAME_MAX:
        problems.append(
            Problem(
                where,
                f"CronJob name {name!r} is {len(name)} characters (max {CRONJOB_NAME_MAX}: "
                "the controller appends 11 characters to name its Jobs)",
            )
        )
    if kind in _DNS1035_KINDS:
        if not _DNS1035_LABEL.fullmatch(name):
            problems.append(Problem(where, f"{kind} name {name!r} is not a DNS-1035 label"))
    elif kind in _RBAC_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            problems.append(Problem(where, f"{kind} name {name!r} is not a valid path segment"))
    elif not _DNS1123_SUBDOMAIN.fullmatch(name):
        problems.append(Problem(where, f"name {name!r} is not a DNS-1123 subdomain"))
    return problems


def _kserve_derived_name_problems(obj: dict[str, Any], name: str) -> list[Problem]:
    """KServe names each component's Deployment/Service (or Knative Service) ``<isvc>-<comp>``."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    problems = []
    for component in _KSERVE_COMPONENTS:
        if spec.get(component) is None:
            continue
        derived = f"{name}-{component}"
        if len(derived) > NAME_MAX:
            problems.append(
                Problem(
                    ("metadata", "name"),
                    f"KServe names the {component}'s Service {derived!r}, {len(derived)} "
                    f"characters (max {NAME_MAX})",
                )
            )
    return problems


def _label_maps(node: object, path: tuple[PathItem, ...]) -> Iterator[tuple[tuple, dict]]:
    """Every Kubernetes label map: metadata.labels and selectors, at any depth.

    Alerting-rule ``labels`` (PrometheusRule) are not Kubernetes labels and are left out.
    """
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _label_maps(item, (*path, i))
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = (*path, str(key))
        if key == "metadata" and isinstance(value, dict):
            if isinstance(value.get("labels"), dict):
                yield (*here, "labels"), value["labels"]
        elif key == "matchLabels" and isinstance(value, dict):
            yield here, value
        elif (
            key == "selector"
            and path == ("spec",)
            and isinstance(value, dict)
            and "matchLabels" not in value
            and "matchExpressions" not in value
        ):
            yield here, value  # a Service's (or ReplicationController's) plain selector
        yield from _label_maps(value, here)


def _label_problems(labels: dict, path: tuple[PathItem, ...]) -> list[Problem]:
    problems = []
    for key, value in labels.items():
        here = (*path, str(key))
        problems.extend(_qualified_name_problems(key, here))
        if not isinstance(value, str):
            problems.append(Problem(here, f"label value must be a string, got {_type_name(value)}"))
        elif len(value) > NAME_MAX:
            problems.append(
                Problem(here, f"label value {value!r} is {len(value)} characters (max {NAME_MAX})")
            )
        elif not _LABEL_VALUE.fullmatch(value):
            problems.append(Problem(here, f"label value {value!r} has characters not allowed"))
    return problems


def _qualified_name_problems(key: object, here: tuple[PathItem, ...]) -> list[Problem]:
    if not isinstance(key, str):
        return [Problem(here, "key must be a string")]
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        problems.append(Problem(here, f"key prefix {prefix!r} is not a DNS-1123 subdomain"))
    if len(name) > NAME_MAX or not _QUALIFIED_NAME.fullmatch(name):
        problems.append(Problem(here, f"key name {name!r} is not a qualified name (max 63)"))
    return problems


def _container_problems(node: object, path: tuple[PathItem, ...]) -> list[Problem]:
    """Container names are DNS-1123 labels; container port names are IANA service names."""
    problems: list[Problem] = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            problems.extend(_container_problems(item, (*path, i)))
        return problems
    if not isinstance(node, dict):
        return problems
    for key, value in node.items():
        here = (*path, str(key))
        if key in _CONTAINER_LISTS and isinstance(value, list):
            for i, container in enumerate(value):
                if isinstance(container, dict):
                    problems.extend(_one_container_problems(container, (*here, i)))
        problems.extend(_container_problems(value, here))
    return problems


def _one_container_problems(container: dict, path: tuple[PathItem, ...]) -> list[Problem]:
    problems = []
    name = container.get("name")
    if (
        isinstance(name, str)
        and name
        and (len(name) > NAME_MAX or not _DNS1123_LABEL.fullmatch(name))
    ):
        problems.append(
            Problem((*path, "name"), f"container name {name!r} is not a DNS-1123 label")
        )
    ports = container.get("ports")
    for i, port in enumerate(ports if isinstance(ports, list) else []):
        port_name = port.get("name") if isinstance(port, dict) else None
        if not isinstance(port_name, str):
            continue
        if (
            len(port_name) > PORT_NAME_MAX
            or not _IANA_SVC_NAME.fullmatch(port_name)
            or "--" in port_name
            or not re.search("[a-z]", port_name)
        ):
            problems.append(
                Problem(
                    (*path, "ports", i, "name"),
                    f"port name {port_name!r} is not an IANA service name "
                    f"(max {PORT_NAME_MAX} characters, a-z0-9 and single '-', one letter)",
                )
            )
    return problems


def duplicate_problems(objects: Sequence[object]) -> list[str]:
    """Two objects with one kind, namespace and name cannot both be installed."""
    seen: dict[tuple[str, str, str, str], int] = {}
    out = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            continue
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        key = (
            group,
            str(obj.get("kind")),
            str(obj["metadata"].get("namespace", "")),
            str(obj["metadata"].get("name")),
        )
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            out.append(f"{object_id(obj)}: rendered more than once")
    return out
