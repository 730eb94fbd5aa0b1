"""Runs: the generations of a recovering session, linked.

A session with recovery (``fleet.session(..., recovery=...)``, ``gpufsm run --recover``)
launches a replacement when its machine is preempted or dies. Every machine it launches
carries the run's id and its generation (1, 2, ...; a placement's attempts share their
generation), so the history can show the chain, cancelling the run can end every
generation, and a budget can cap what one run has cost in all.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.add_column(sa.Column("run_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=True))
    op.create_index("ix_instances_run", "gpufsm_instances", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_instances_run", table_name="gpufsm_instances")
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.drop_column("generation")
        batch.drop_column("run_id")
