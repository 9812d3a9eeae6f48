"""The inference log, pending labels, per-version stats, reporter lease, shippers, reports.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

FEATURES = (
    "brightness",
    "contrast",
    "ink_fraction",
    "edge_density",
    "center_x",
    "center_y",
    "confidence",
    "entropy",
)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inference_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("idx", sa.SmallInteger, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("shipped_at", sa.Float, nullable=False),
        sa.Column("pod", sa.String(253), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("predicted_class", sa.SmallInteger, nullable=False),
        *(sa.Column(f, sa.Float, nullable=False) for f in FEATURES),
        sa.Column("label", sa.SmallInteger, nullable=True),
        sa.Column("labelled_at", sa.Float, nullable=True),
        sa.Column("input", sa.LargeBinary, nullable=True),
        sa.UniqueConstraint("request_id", "idx", "model_name", name="uq_inference_log_request"),
    )
    op.create_index(
        "ix_inference_log_version", "inference_log", ["model_name", "model_version", "id"]
    )
    op.create_index("ix_inference_log_time", "inference_log", ["time"])
    op.create_table(
        "pending_labels",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("idx", sa.SmallInteger, primary_key=True),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_table(
        "version_stats",
        sa.Column("model_name", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.String(64), primary_key=True),
        sa.Column("labelled", sa.BigInteger, nullable=False),
        sa.Column("correct", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "since_live_state",
        sa.Column("model_name", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.String(64), primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "reporter_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(253), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "shippers",
        sa.Column("pod", sa.String(253), primary_key=True),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("lag_records", sa.BigInteger, nullable=False),
        sa.Column("shipped_total", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("window", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("html_gz", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_drift_reports_created", "drift_reports", ["created"])


def downgrade() -> None:
    for name in (
        "drift_reports",
        "shippers",
        "reporter_lease",
        "since_live_state",
        "version_stats",
        "pending_labels",
        "inference_log",
    ):
        op.drop_table(name)
