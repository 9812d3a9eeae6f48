"""The tests' PostgreSQL server is the package's (`atelier.tools.postgres`), which the drift
bench starts too: one implementation."""

from atelier.tools.postgres import PostgresServer, ShutdownMode, pg_bin_dir

__all__ = ["PostgresServer", "ShutdownMode", "pg_bin_dir"]
