"""The inference log's tables (SQLAlchemy Core): one definition for the code and the migrations.

``inference_log``     one row per classified image, from every replica's spool
``pending_labels``    feedback that arrived before its prediction was shipped
``version_stats``     exact labelled/correct counts per model version (since live)
``since_live_state``  the reporter's since-live reservoir per version, to resume after takeover
``reporter_lease``    which sidecar reports, until when
``shippers``          each sidecar's last heartbeat and shipping lag
``drift_reports``     reports (summary JSON, gzip'd HTML), readable by every sidecar

The Alembic migrations in ``atelier/drift/migrations`` create exactly these; a test compares
the migrated database with this metadata, so the two cannot drift apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from atelier.runtime.features import ALL_FEATURES

# SQLite gives autoincrement only to an INTEGER PRIMARY KEY (its rowid); PostgreSQL a BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

NAME_LENGTH = 64  # model names and versions (the store's safe-name rule)
REQUEST_ID_LENGTH = 128  # the serving side's bound on request ids
POD_LENGTH = 253  # a Kubernetes object name

metadata = MetaData()

FLOAT_FEATURES = tuple(f for f in ALL_FEATURES if f != "predicted_class")

inference_log = Table(
    "inference_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("model_name", String(NAME_LENGTH), nullable=False),
    Column("model_version", String(NAME_LENGTH), nullable=False),
    Column("request_id", String(REQUEST_ID_LENGTH), nullable=False),
    Column("idx", SmallInteger, nullable=False),
    Column("time", Float, nullable=False),  # when the handler answered (epoch seconds)
    Column("shipped_at", Float, nullable=False),
    Column("pod", String(POD_LENGTH), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("predicted_class", SmallInteger, nullable=False),
    *(Column(f, Float, nullable=False) for f in FLOAT_FEATURES),
    Column("label", SmallInteger, nullable=True),
    Column("labelled_at", Float, nullable=True),
    # The preprocessed 28x28 uint8 input for a sample of requests (retraining material).
    Column("input", LargeBinary, nullable=True),
    UniqueConstraint("request_id", "idx", "model_name", name="uq_inference_log_request"),
    Index("ix_inference_log_version", "model_name", "model_version", "id"),
    Index("ix_inference_log_time", "time"),
)

pending_labels = Table(
    "pending_labels",
    metadata,
    Column("request_id", String(REQUEST_ID_LENGTH), primary_key=True),
    Column("idx", SmallInteger, primary_key=True),
    Column("label", SmallInteger, nullable=False),
    Column("received_at", Float, nullable=False),
)

version_stats = Table(
    "version_stats",
    metadata,
    Column("model_name", String(NAME_LENGTH), primary_key=True),
    Column("model_version", String(NAME_LENGTH), primary_key=True),
    Column("labelled", BigInteger, nullable=False, default=0),
    Column("correct", BigInteger, nullable=False, default=0),
)

since_live_state = Table(
    "since_live_state",
    metadata,
    Column("model_name", String(NAME_LENGTH), primary_key=True),
    Column("model_version", String(NAME_LENGTH), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
)

reporter_lease = Table(
    "reporter_lease",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(POD_LENGTH), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

shippers = Table(
    "shippers",
    metadata,
    Column("pod", String(POD_LENGTH), primary_key=True),
    Column("heartbeat_at", Float, nullable=False),
    Column("lag_records", BigInteger, nullable=False),
    Column("shipped_total", BigInteger, nullable=False),
)

drift_reports = Table(
    "drift_reports",
    metadata,
    Column("id", String(96), primary_key=True),
    Column("created", Float, nullable=False),
    Column("model_name", String(NAME_LENGTH), nullable=False),
    Column("model_version", String(NAME_LENGTH), nullable=False),
    Column("window", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", Text, nullable=False),  # JSON: severity, drift share, detail (small)
    Column("summary", Text, nullable=False),  # JSON: our summary + Evidently's snapshot
    Column("html_gz", LargeBinary, nullable=True),
    Index("ix_drift_reports_created", "created"),
)
