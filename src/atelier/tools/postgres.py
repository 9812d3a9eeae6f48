"""A throwaway PostgreSQL server for tests and benchmarks: its own cluster in a temp folder,
on 127.0.0.1.

``initdb`` makes a fresh cluster (binaries from the newest /usr/lib/postgresql/<major>/bin);
the server listens on 127.0.0.1 on a free port, with its unix socket inside the temp
folder. The client user logs in over TCP with a password (scram-sha-256); the cluster's
superuser ``postgres`` is reachable only through the unix socket (trust), which is how the
user and the databases are made and how readiness is polled. ``fsync`` is off (test data
need not survive the machine crashing) unless ``settings`` say otherwise, as a benchmark's do.

initdb and postgres refuse to run as root. As root, both run as the ``postgres`` system
user through ``setpriv``, which execs, so the pid held is the postmaster's; the temp folder
is chowned to that user. Otherwise both run as the current user.

The package's default cluster (/etc/postgresql) is never used.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from atelier.runtime.errors import ServerError
from atelier.tools.process import ServerProcess, free_port

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"  # the Debian package's system user, and the cluster's superuser

# postgres's own shutdown signals, sent to the postmaster only: it stops its children itself.
ShutdownMode = Literal["smart", "fast", "immediate"]
SHUTDOWN_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,  # waits for every client to disconnect
    "fast": signal.SIGINT,  # disconnects clients, checkpoints
    "immediate": signal.SIGQUIT,  # no checkpoint: recovery from the WAL at the next start
}


def pg_bin_dir() -> Path:
    """The bin folder of the newest PostgreSQL major version installed."""
    majors = sorted(
        int(p.name)
        for p in (PG_ROOT.iterdir() if PG_ROOT.is_dir() else [])
        if p.name.isdigit() and (p / "bin" / "postgres").is_file()
    )
    if not majors:
        raise ServerError(
            f"no PostgreSQL server in {PG_ROOT}/<major>/bin; scripts/setup.sh installs it"
        )
    return PG_ROOT / str(majors[-1]) / "bin"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...; comm may hold spaces and parentheses.
    state, ppid = stat.rpartition(")")[2].split()[:2]
    return state, int(ppid)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``. Backends call setsid(), so they are not in the
    postmaster's process group: they are found by parent instead."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[1] == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie holds no shared memory


class _Postmaster(ServerProcess):
    """One run of the postmaster on an existing cluster."""

    label = "postgres"
    log_file = "postgres.log"
    poll_interval_s = 0.05

    def __init__(self, server: PostgresServer) -> None:
        super().__init__(server.root, "postgres", server.ready_timeout_s)
        self.server = server
        self.subject = f"PostgreSQL on {server.host}:{server.port}"

    def command(self) -> list[str]:
        s = self.server
        settings = {
            "listen_addresses": s.host,
            "unix_socket_directories": str(s.socket_dir),
            # Test data need not survive the machine crashing, only the server
            # (``settings`` may turn it back on).
            "fsync": "off",
            **s.settings,
        }
        args = [str(s.bin_dir / "postgres"), "-D", str(s.data_dir), "-p", str(s.port)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return [*s.run_as, *args]

    def environment(self) -> dict[str, str]:
        return self.server.environment()

    def log_tail(self, lines: int = 10) -> str:
        return super().log_tail(lines)

    def is_ready(self) -> bool:
        try:
            with self.server.superuser_connection(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout: float = 30.0, mode: ShutdownMode = "fast") -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        pid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SHUTDOWN_SIGNALS[mode])
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the postmaster and its children, then wait until they are gone: a new
        postmaster refuses to start while an old backend holds the shared memory."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        pids = [proc.pid, *_children(proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids[1:]):
            if time.monotonic() > deadline:
                raise ServerError(f"postgres children {pids[1:]} still alive after SIGKILL")
            time.sleep(0.02)


class PostgresServer:
    """A fresh PostgreSQL cluster on ``127.0.0.1:<port>``; ``url`` is its SQLAlchemy URL.

    ``start()`` makes the cluster the first time and waits until it accepts connections;
    ``shutdown()``/``kill()`` stop the server and keep the data, and a later ``start()``
    brings it back on the same port; ``stop()`` stops it and removes the folder.
    """

    def __init__(
        self,
        *,
        dbname: str = "atelier",
        user: str = "atelier",
        password: str = "atelier-test",
        host: str = "127.0.0.1",
        port: int | None = None,
        base_dir: Path | None = None,
        ready_timeout_s: float = 30.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.dbname = dbname
        self.user = user
        self.password = password
        self.host = host
        self.port = port or free_port(host)
        self.base_dir = base_dir
        self.ready_timeout_s = ready_timeout_s
        self.settings = dict(settings or {})  # extra `-c name=value` server settings
        self.bin_dir = pg_bin_dir()
        self._root: Path | None = None
        self._postmaster: _Postmaster | None = None
        self.run_as: list[str] = []  # the prefix that drops root, when running as root
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise ServerError(
                    f"running as root, but there is no {SERVICE_USER!r} user to run "
                    "initdb and postgres as (the postgresql package makes it)"
                ) from None
            self._owner = (pw.pw_uid, pw.pw_gid)
            self.run_as = [
                "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
            ]  # fmt: skip

    # --- where things are
    @property
    def root(self) -> Path:
        if self._root is None:
            raise ServerError("PostgresServer is not started")
        return self._root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database, as the client user, over TCP."""
        return self.url_of(self.dbname)

    def url_of(self, dbname: str) -> str:
        """SQLAlchemy URL of another database of this server (see `create_database`)."""
        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    @property
    def conninfo(self) -> dict[str, Any]:
        """psycopg.connect() keyword arguments for the same database and user."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    @property
    def running(self) -> bool:
        pm = self._postmaster
        return pm is not None and pm.proc is not None and pm.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        pm = self._postmaster
        return pm.proc.pid if pm is not None and pm.proc is not None and self.running else None

    def log_tail(self, lines: int = 10) -> str:
        return self._postmaster.log_tail(lines) if self._postmaster else "(no log yet)"

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**{**self.conninfo, **kwargs})

    def superuser_connection(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection as the cluster's superuser, through the unix socket (autocommit)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SERVICE_USER,
            dbname="postgres",
            autocommit=True,
            **kwargs,
        )

    def environment(self) -> dict[str, str]:
        # No PG* variable of the caller's may point the tools elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "LC_ALL": "C.UTF-8"}

    # --- lifecycle
    def start(self) -> Self:
        """Start the server (making the cluster first, once) and wait for connections."""
        if self.running:
            return self
        first = self._root is None
        if first:
            self._init_cluster()
        self._postmaster = _Postmaster(self)
        self._postmaster.start()
        try:
            self._postmaster.wait_ready()
            if first:
                self._create_user_and_database()
            with self.connect(connect_timeout=5):  # the clients' path: TCP and a password
                pass
        except BaseException:
            self._postmaster.kill()
            raise
        return self

    def shutdown(self, mode: ShutdownMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server by its pid and keep the data; ``start()`` brings it back on
        the same port. ``immediate`` skips the checkpoint, like a crash."""
        if self._postmaster is not None:
            self._postmaster.stop(timeout=timeout, mode=mode)

    def kill(self) -> None:
        """SIGKILL the server and its backends; the data stays for the next ``start()``."""
        if self._postmaster is not None:
            self._postmaster.kill()

    def restart(self, mode: ShutdownMode = "fast") -> Self:
        self.shutdown(mode)
        return self.start()

    @contextlib.contextmanager
    def stopped(self, mode: ShutdownMode = "fast") -> Iterator[None]:
        """An outage: the server is down inside the block and back on the same port after
        it (traffic sees connections refused, not a hang)."""
        self.shutdown(mode)
        try:
            yield
        finally:
            self.start()

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.shutdown()
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None
                self._postmaster = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the cluster
    def _init_cluster(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="atelier-pg-", dir=self.base_dir)).resolve()
        self.socket_dir.mkdir()
        if self._owner is not None:
            for path in (self._root, self.socket_dir):
                os.chown(path, *self._owner)
        log = self.root / _Postmaster.log_file
        cmd = [
            *self.run_as, str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir), "-U", SERVICE_USER, "--encoding=UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        with log.open("ab") as out:
            result = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.environment(), cwd=self.root
            )
        if result.returncode != 0:
            tail = " | ".join(log.read_text(errors="replace").splitlines()[-10:])
            raise ServerError(f"initdb exited with {result.returncode}: {log}: {tail}")

    def create_database(self, dbname: str) -> str:
        """A new empty database owned by the client user; returns its URL."""
        with self.superuser_connection() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(self.user)
                )
            )
        return self.url_of(dbname)

    def _create_user_and_database(self) -> None:
        with self.superuser_connection() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
        self.create_database(self.dbname)
