"""Reading atelier's error answers the way a client does, for the integration suites."""

from __future__ import annotations

from typing import Any

ERROR_KIND_HEADER = "X-Atelier-Error"


def route_protocol(response: Any) -> str:
    """The protocol of the route a request went to: "v2", "v1" or "raw"."""
    path = str(response.request.path_url)
    return "v2" if path.startswith("/v2/") else "v1" if path.startswith("/v1/") else "raw"


def error_kind(response: Any, protocol: str | None = None) -> str:
    """The error kind of an error answer, from its X-Atelier-Error header, after checking the
    body's shape for the protocol: ``{"error": "<message>"}`` on v2 (Open Inference
    Protocol), ``{"error": {"type": kind, "message": ...}}`` on raw and v1."""
    protocol = protocol or route_protocol(response)
    body = response.json()
    kind = response.headers[ERROR_KIND_HEADER]
    assert list(body) == ["error"], body
    if protocol == "v2":
        assert isinstance(body["error"], str) and body["error"], body
    else:
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == kind, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return str(kind)


def error_message(response: Any) -> str:
    body = response.json()
    error = body["error"]
    return str(error if isinstance(error, str) else error["message"])
