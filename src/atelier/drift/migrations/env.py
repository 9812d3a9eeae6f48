"""Alembic environment for the inference log: always run by `atelier.drift.inference_log.migrate`,
which hands over an open connection (``config.attributes["connection"]``) holding the
migration lock."""

from __future__ import annotations

from alembic import context

from atelier.drift.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
)
with context.begin_transaction():
    context.run_migrations()
