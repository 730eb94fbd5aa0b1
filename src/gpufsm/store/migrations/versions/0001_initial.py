"""Instances, their append-only transition history, and drift observations.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gpufsm.store._models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gpufsm_instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_instance_id", sa.String(128), nullable=True),
        sa.Column("client_token", sa.String(64), nullable=False, unique=True),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous_state", sa.String(16), nullable=True),
        sa.Column("entered_by", sa.String(32), nullable=False),
        sa.Column("billable", sa.Boolean(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("instance_type", sa.String(128), nullable=True),
        sa.Column("price_per_hour", sa.Float(), nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("state_entered_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=True),
        sa.Column("last_raw_status", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("provider", "provider_instance_id", name="uq_instances_provider_pid"),
    )
    op.create_index("ix_instances_state", "gpufsm_instances", ["state"])
    op.create_index("ix_instances_tag", "gpufsm_instances", ["tag"])
    op.create_table(
        "gpufsm_transitions",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), sa.ForeignKey("gpufsm_instances.id"),
                  nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("raw_status", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_transitions_instance", "gpufsm_transitions", ["instance_id", "seq"])
    op.create_table(
        "gpufsm_drift",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), sa.ForeignKey("gpufsm_instances.id"),
                  nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("raw_status", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_drift_instance", "gpufsm_drift", ["instance_id", "seq"])


def downgrade() -> None:
    op.drop_table("gpufsm_drift")
    op.drop_table("gpufsm_transitions")
    op.drop_table("gpufsm_instances")
