"""A test-only nginx load balancer on 127.0.0.1: routes by path prefix to groups of upstreams.

    with NginxProxy({"/": [ts1, ts2], "/drift/": [d1, d2]}, strip_prefix={"/drift/"}) as lb:
        requests.post(f"{lb.url}/drift/feedback", ...)  # reaches d1 or d2 as /feedback

Each route is a round-robin upstream group with keepalive connections. Failed requests are
not passed to the next upstream by default (``next_upstream="off"``): a request is never
silently sent twice, and a test sees every failure. The config, pid file, logs and temp
folders live in a temp folder (nginx's prefix); the access log records which upstream
answered each request (``entries()``). The system nginx and /etc/nginx are never used.

As root, nginx would run its workers as ``nobody``, who cannot write the temp folder: the
config says ``user root;`` then (a test-only server on 127.0.0.1). Otherwise nginx runs as
the current user and the ``user`` directive is left out.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Self

from atelier.runtime.errors import ServerError
from atelier.tools.process import ServerProcess, free_port

NGINX = "nginx"  # /usr/sbin/nginx from nginx-light (scripts/setup.sh)
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_LOG_FIELDS = (
    "$msec", "$request_method", "$request_uri", "$status", "$upstream_addr",
    "$upstream_status", "$request_time",
)  # fmt: skip


class AccessEntry(NamedTuple):
    """One access log line: who answered what."""

    method: str
    uri: str  # as the client sent it, before any prefix stripping
    status: int
    upstream: str  # "127.0.0.1:8080"; several, comma-separated, when nginx tried more than one
    upstream_status: str
    request_time_s: float


def _host_port(upstream: str) -> str:
    """``127.0.0.1:8080`` or ``http://127.0.0.1:8080[/]`` -> ``127.0.0.1:8080``."""
    value = upstream.removeprefix("http://").rstrip("/")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or "/" in value:
        raise ValueError(f"an upstream is host:port or http://host:port, not {upstream!r}")
    return value


class NginxProxy(ServerProcess):
    """nginx on ``127.0.0.1:<port>`` in front of ``routes``: path prefix -> upstreams.

    ``strip_prefix`` names the routes whose prefix is replaced by ``/`` on the way to the
    upstream (``/drift/feedback`` -> ``/feedback``); the other routes pass the URI as is.
    nginx picks the longest matching prefix, so ``/`` is the catch-all.
    """

    label = "nginx"
    log_file = "nginx.out"
    poll_interval_s = 0.05

    def __init__(
        self,
        routes: Mapping[str, Sequence[str]],
        *,
        strip_prefix: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        next_upstream: str = "off",
        client_max_body_size: str = "64m",
        read_timeout_s: float = 120.0,
        keepalive: int = 16,
        keepalive_timeout_s: float = 2.0,
        base_dir: Path | None = None,
        ready_timeout_s: float = 15.0,
    ) -> None:
        if not routes:
            raise ValueError("NginxProxy needs at least one route")
        self.routes = {path: [_host_port(u) for u in ups] for path, ups in routes.items()}
        for path, ups in self.routes.items():
            if not path.startswith("/") or not ups:
                raise ValueError(f"route {path!r}: a path starting with / and some upstreams")
        self.strip_prefix = set(strip_prefix)
        if unknown := self.strip_prefix - set(self.routes):
            raise ValueError(f"strip_prefix names no route: {sorted(unknown)}")
        if "/" in self.strip_prefix:
            raise ValueError("strip_prefix: the / route has no prefix to strip")
        self.host = host
        self.port = port or free_port(host)
        self.next_upstream = next_upstream
        self.client_max_body_size = client_max_body_size
        self.read_timeout_s = read_timeout_s
        self.keepalive = keepalive
        self.keepalive_timeout_s = keepalive_timeout_s
        self.base_dir = base_dir
        # The prefix folder is made by start() and removed by stop().
        super().__init__(Path("/nonexistent/nginx-not-started"), "nginx", ready_timeout_s)
        self._prefix_made = False
        self.subject = f"nginx on {host}:{self.port}"

    # --- where things are
    @property
    def prefix(self) -> Path:
        return self.run_dir

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def entries(self) -> list[AccessEntry]:
        """The access log so far, oldest first (nginx writes each line as it logs it)."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            _, method, uri, status, upstream, upstream_status, rtime = line.split("\t")
            entry = AccessEntry(method, uri, int(status), upstream, upstream_status, float(rtime))
            out.append(entry)
        return out

    # --- the config
    def config(self) -> str:
        p = self.prefix
        groups = {path: f"route{i}" for i, path in enumerate(self.routes)}
        lines = []
        if os.geteuid() == 0:
            lines.append("user root;")
        lines += [
            "worker_processes 1;",
            f"pid {self.pid_path};",
            f"error_log {self.error_log} info;",
            "events { worker_connections 1024; }",
            "http {",
            f"  log_format upstreams '{chr(9).join(_LOG_FIELDS)}';",
            f"  access_log {self.access_log} upstreams;",
            *(f"  {name}_temp_path {p / 'temp' / name};" for name in _TEMP_PATHS),
            f"  client_max_body_size {self.client_max_body_size};",
            "  proxy_http_version 1.1;",  # needed by keepalive to upstreams
            '  proxy_set_header Connection "";',
            "  proxy_set_header Host $http_host;",
            "  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            f"  proxy_next_upstream {self.next_upstream};",
            f"  proxy_read_timeout {self.read_timeout_s:g}s;",
            f"  proxy_send_timeout {self.read_timeout_s:g}s;",
        ]
        for path, ups in self.routes.items():
            lines.append(f"  upstream {groups[path]} {{")
            lines += [f"    server {u};" for u in ups]
            # An idle connection the upstream closes as nginx reuses it is a 502 when
            # next_upstream is off: nginx lets go of idle ones first (uvicorn keeps 5 s).
            lines += [
                f"    keepalive {self.keepalive};",
                f"    keepalive_timeout {self.keepalive_timeout_s:g}s;",
                "  }",
            ]
        lines += ["  server {", f"    listen {self.host}:{self.port};"]
        for path in self.routes:
            # With a URI part ("/"), proxy_pass replaces the matched prefix with it.
            target = f"http://{groups[path]}" + ("/" if path in self.strip_prefix else "")
            lines += [f"    location {path} {{", f"      proxy_pass {target};", "    }"]
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    # --- ServerProcess
    def check_can_start(self) -> None:
        if shutil.which(NGINX) is None and not Path("/usr/sbin/nginx").is_file():
            raise ServerError("no nginx binary; scripts/setup.sh installs nginx-light")
        self.run_dir = Path(tempfile.mkdtemp(prefix="atelier-nginx-", dir=self.base_dir)).resolve()
        self._prefix_made = True
        for name in _TEMP_PATHS:
            (self.prefix / "temp" / name).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config())

    def command(self) -> list[str]:
        binary = shutil.which(NGINX) or "/usr/sbin/nginx"
        return [binary, "-p", f"{self.prefix}/", "-c", str(self.conf_path), "-g", "daemon off;"]

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def is_ready(self) -> bool:
        # The pid file is written once the listening sockets are bound; the connect proves
        # the port is this nginx's.
        try:
            if int(self.pid_path.read_text().strip()) != (self.proc.pid if self.proc else -1):
                return False
        except (OSError, ValueError):
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self
        super().start()
        try:
            return self.wait_ready()
        except BaseException:
            super().stop()
            raise

    def log_tail(self, lines: int = 5) -> str:
        tail = super().log_tail(lines)
        if self.error_log.exists():
            errors = self.error_log.read_text(errors="replace").splitlines()[-lines:]
            tail += f"; {self.error_log}: " + " | ".join(errors)
        return tail

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx by its pid (the process group: master and workers); remove the folder."""
        try:
            super().stop(timeout)
        finally:
            if self._prefix_made:
                shutil.rmtree(self.prefix, ignore_errors=True)
                self._prefix_made = False

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise
