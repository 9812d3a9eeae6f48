"""Typed errors. Each class names the process exit code it becomes; errors a server can
answer with also name their HTTP status (the others are 500 and never reach a client).

Errors become answers in one place each: `http_answer` for every HTTP server (both serving
runtimes and the drift sidecar) and `exit_on_error` for every process's main() (the CLI, the
KServe runtime, the drift sidecar).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# A TorchServe worker logs this, then the error's one line, when its model cannot be loaded
# (a bad ATELIER_* setting, ...); the local launcher looks for it in TorchServe's log.
MODEL_LOAD_FAILED = "atelier model load failed:"


class AtelierError(Exception):
    """Base class. ``message`` says what is wrong, ``hint`` how to fix it."""

    http_status: int = 500
    exit_code: int = 1
    kind: str = "internal_error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message
        if self.hint:
            text += f" (fix: {self.hint})"
        return " ".join(text.split())


class ConfigError(AtelierError):
    """A config file, a --set override or a CLI flag is invalid."""

    exit_code = 2
    kind = "config_error"


class DataError(AtelierError):
    """The training data cannot be used."""

    exit_code = 3
    kind = "data_error"


class DataMissingError(DataError):
    kind = "data_missing"


class CorruptDataError(DataError):
    kind = "corrupt_data"


class GateFailedError(AtelierError):
    """The trained model is below the quality gate; nothing is published."""

    exit_code = 4
    kind = "gate_failed"


class ArchiveError(AtelierError):
    """A run cannot be archived into the model store."""

    exit_code = 5
    kind = "archive_error"


class VersionExistsError(ArchiveError):
    kind = "version_exists"


class TrackingError(AtelierError):
    """The MLflow tracking store cannot be reached or refused a call; nothing is half-logged
    without saying so."""

    exit_code = 10
    kind = "tracking_error"


class TrackingUnreachableError(TrackingError):
    """The tracking URI does not answer when a run starts."""

    kind = "tracking_unreachable"


class RegistryError(AtelierError):
    """The MLflow Model Registry and the model store cannot be changed as asked."""

    exit_code = 11
    kind = "registry_error"


class ModelVersionNotFoundError(RegistryError):
    """A version that is not in the store (or not in the registry)."""

    kind = "version_not_found"


class VersionNotPromotableError(RegistryError):
    """A version that failed its quality gate, or whose store copy and registry entry do not
    point at each other."""

    kind = "version_not_promotable"


class RegistryStoreMismatchError(RegistryError):
    """A promotion stopped between the registry and the store and could not be rolled back;
    the message says what each one holds and the command that repairs it."""

    kind = "registry_store_mismatch"


class ServerError(AtelierError):
    """A server the project starts (TorchServe, ...) failed to start or to get ready."""

    exit_code = 6
    kind = "server_error"


class TargetUnreachableError(ConfigError):
    """A URL given as a setting (the load test's host, the drift sidecar) does not answer."""

    kind = "target_unreachable"


class LoadTestError(AtelierError):
    """The load generator (locust) failed to run or wrote no statistics."""

    exit_code = 7
    kind = "loadtest_failed"


class SLOBreachError(LoadTestError):
    """A load test ran, and its error ratio or p99 latency broke a threshold."""

    exit_code = 8
    kind = "slo_breach"


class TuningError(AtelierError):
    """`atelier tune` could not finish its search: trials left unrun (its workers exited) or
    none completed."""

    exit_code = 12
    kind = "tuning_failed"


# --- Serving: every bad request is one of these, answered with http_status (never a 5xx),
# the kind in the X-Atelier-Error header, and the body http_answer builds for its protocol.


class RequestError(AtelierError):
    http_status = 400
    kind = "bad_request"
    # The protocol the body was recognised as ("v1", "v2") before it was refused, if known.
    protocol: str | None = None


class EmptyBodyError(RequestError):
    kind = "empty_body"


class MalformedRequestError(RequestError):
    kind = "malformed_request"


class UnsupportedMediaTypeError(RequestError):
    http_status = 415
    kind = "unsupported_media_type"


class InvalidImageError(RequestError):
    kind = "invalid_image"


class WrongShapeError(RequestError):
    kind = "wrong_shape"


class WrongDatatypeError(RequestError):
    kind = "wrong_datatype"


class ShapeMismatchError(RequestError):
    kind = "shape_data_mismatch"


class InvalidValueError(RequestError):
    kind = "invalid_value"


class TooManyInstancesError(RequestError):
    kind = "too_many_instances"


class UnknownOutputError(RequestError):
    kind = "unknown_output"


class PayloadTooLargeError(RequestError):
    http_status = 413
    kind = "payload_too_large"


class ImageTooLargeError(RequestError):
    """An image (or the request's images together) declares more pixels than the budget."""

    http_status = 413
    kind = "image_too_large"


class InvalidRequestIdError(RequestError):
    """A request id (X-Request-Id, or v2's id) too long or with characters it may not hold:
    it is copied into every feature record."""

    kind = "invalid_request_id"


REQUEST_ERRORS: tuple[type[RequestError], ...] = (
    EmptyBodyError,
    MalformedRequestError,
    UnsupportedMediaTypeError,
    InvalidImageError,
    WrongShapeError,
    WrongDatatypeError,
    ShapeMismatchError,
    InvalidValueError,
    TooManyInstancesError,
    UnknownOutputError,
    PayloadTooLargeError,
    ImageTooLargeError,
    InvalidRequestIdError,
)


# --- Serving: health, metadata and routing (atelier.runtime.oip, the OIP front)


class ModelNotFoundError(AtelierError):
    """A model name, or a version of it, that this server does not serve."""

    http_status = 404
    kind = "model_not_found"


class ModelNotReadyError(AtelierError):
    """The served model cannot answer yet (loading, or no worker ready)."""

    http_status = 503
    kind = "model_not_ready"


class UpstreamUnavailableError(AtelierError):
    """The OIP front cannot reach the model server behind it (TorchServe)."""

    http_status = 503
    kind = "upstream_unavailable"


# Every error answer of every server carries its kind here, whatever the body's shape.
ERROR_KIND_HEADER = "X-Atelier-Error"


def error_body(err: AtelierError, protocol: str = "raw") -> dict[str, Any]:
    """The JSON body of an error answer. The Open Inference Protocol (v2) has a string:
    ``{"error": "<message>"}``, which its clients read; every other answer (raw, KServe v1,
    the drift sidecar) ``{"error": {"type": kind, "message": message}}``."""
    if protocol == "v2":
        return {"error": err.message}
    return {"error": {"type": err.kind, "message": err.message}}


def http_answer(
    err: AtelierError, protocol: str = "raw"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The one mapping of a typed error to an HTTP answer: (status, body, headers)."""
    return err.http_status, error_body(err, protocol), {ERROR_KIND_HEADER: err.kind}


@contextmanager
def exit_on_error(echo: Callable[[str], None] | None = None) -> Iterator[None]:
    """The one tail of every main(): a typed error becomes one line on stderr and its exit
    code; Ctrl-C becomes "aborted" and 130."""
    say = echo or (lambda line: print(line, file=sys.stderr))
    try:
        yield
    except AtelierError as exc:
        say(f"error: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        say("aborted")
        sys.exit(130)


# --- Drift sidecar


class InvalidFeedbackError(AtelierError):
    http_status = 422
    kind = "invalid_feedback"


class UnknownRequestError(AtelierError):
    """Feedback for a request id (and index) the sidecar has no recent prediction for."""

    http_status = 404
    kind = "unknown_request"


class InvalidLabelError(AtelierError):
    """A feedback label that is neither a class id nor a class name."""

    http_status = 422
    kind = "invalid_label"


class InvalidRecordsError(AtelierError):
    """No record of an /ingest body can be stored: the message names each one (its index in
    the body, the field, why). A body with some good records is answered 200 instead."""

    http_status = 422
    kind = "invalid_records"


class ReferenceUnavailableError(AtelierError):
    http_status = 503
    kind = "reference_unavailable"


class SpoolUnavailableError(AtelierError):
    """Records sent to the sidecar's /ingest could not be stored (full or read-only disk)."""

    http_status = 503
    kind = "spool_unavailable"


class DatabaseUnavailableError(AtelierError):
    """The inference log's database cannot be reached or refused the statement; retry later."""

    http_status = 503
    kind = "database_unavailable"


class NotEnoughDataError(AtelierError):
    """Too few rows to say anything: "no data" must not be reported as "no drift"."""

    http_status = 409
    kind = "not_enough_data"


class DriftInputError(AtelierError):
    """A reference or current frame lacks feature columns, or holds no usable values."""

    http_status = 400
    kind = "drift_input_invalid"


class ReportNotFoundError(AtelierError):
    """No such report, or an id that is not a report id (e.g. a path traversal attempt)."""

    http_status = 404
    kind = "report_not_found"


# --- monitoring: the local Prometheus/Alertmanager stack


class MonitoringError(AtelierError):
    """Prometheus or Alertmanager cannot be started, configured or queried."""

    exit_code = 9
    kind = "monitoring_error"


class PrometheusUnreachableError(MonitoringError):
    """A Prometheus URL (`atelier dashboards snapshot --prometheus`) does not answer."""

    kind = "prometheus_unreachable"


class DashboardQueryError(MonitoringError):
    """Prometheus answered but rejected dashboard queries; the message names the panels."""

    kind = "dashboard_query_failed"


class StaleDashboardsError(MonitoringError):
    """Generated dashboard JSON differs from a fresh `atelier dashboards build`."""

    kind = "dashboards_stale"
