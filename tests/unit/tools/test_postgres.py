"""atelier.tools.postgres: a real PostgreSQL cluster in a temp folder, reached through SQLAlchemy
and psycopg over TCP with a password; stopped and started again on the same port, its
data survives."""

from __future__ import annotations

import os
import pwd
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from atelier.runtime.errors import ServerError
from atelier.tools.postgres import PostgresServer

# Real servers on 127.0.0.1 (pyproject's markers).
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def test_url_serves_sqlalchemy_and_the_data_survives_a_restart_on_the_same_port(
    pg: PostgresServer,
) -> None:
    assert pg.url.startswith(f"postgresql+psycopg://atelier:atelier-test@127.0.0.1:{pg.port}/")
    engine = sa.create_engine(pg.url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE records (id int PRIMARY KEY, label text)"))
        conn.execute(
            sa.text("INSERT INTO records VALUES (:id, :label)"),
            [{"id": 1, "label": "shirt"}, {"id": 2, "label": "sneaker"}],
        )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "atelier"
    engine.dispose()
    port, first_pid = pg.port, pg.pid

    with pg.stopped():
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            pg.connect(connect_timeout=2).close()

    assert pg.running and pg.port == port and pg.pid != first_pid
    assert rows(pg.url, "SELECT id, label FROM records ORDER BY id") == [
        (1, "shirt"),
        (2, "sneaker"),
    ]


def test_committed_data_survives_a_kill(pg: PostgresServer) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE TABLE crash (n int)")
        conn.execute("INSERT INTO crash VALUES (7)")
    pid = pg.pid
    assert pid is not None

    pg.kill()
    assert not pg.running and not Path(f"/proc/{pid}").exists()
    pg.start()

    assert rows(pg.url, "SELECT n FROM crash") == [(7,)]


def test_tcp_login_needs_the_password(pg: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(password="wrong", connect_timeout=2).close()
    with pg.superuser_connection() as conn:
        method = conn.execute("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
        assert {row[0] for row in method} == {"scram-sha-256"}


def test_the_server_never_runs_as_root(pg: PostgresServer) -> None:
    assert pg.pid is not None
    status = Path(f"/proc/{pg.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[2])
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert uid == expected
    assert uid != 0


def test_a_taken_port_fails_with_the_log_tail_and_leaves_no_folder() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PostgresServer(port=taken.getsockname()[1], ready_timeout_s=10)
        with (
            pytest.raises(ServerError, match=r"postgres exited .*Address already in use") as err,
            server,
        ):
            pass
    log = re.search(r"see (\S+/postgres\.log)", str(err.value))
    assert log is not None
    assert not Path(log.group(1)).parent.exists()
    with pytest.raises(ServerError, match="not started"):
        server.root  # noqa: B018 - the property raises


def test_create_database_gives_the_user_a_fresh_database(pg: PostgresServer) -> None:
    url = pg.create_database("bench_shipping")
    assert url == pg.url.rsplit("/", 1)[0] + "/bench_shipping"
    assert rows(url, "SELECT current_database(), current_user") == [("bench_shipping", "atelier")]
    assert rows(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
