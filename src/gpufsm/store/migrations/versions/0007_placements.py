"""Placements: a request for a GPU, its attempts, and offers refused recently.

* ``gpufsm_placements``: one row per request (its requirements, the spec template, its
  state OPEN → PLACED | FAILED, and the winner: the one instance the request keeps).
  The winner is claimed by a conditional UPDATE, so of two machines that turn up for
  one request, only one can ever be the winner, whichever process saw it first.
* ``gpufsm_instances.placement_id``: every attempt is an instance row of its own (its
  history says which offer, which price, and why it failed), linked to its request.
* ``gpufsm_blocked_offers``: an offer a provider refused for capacity, quota, price or
  region, skipped until ``until`` by every process and daemon sharing the database.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gpufsm.store._models import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpufsm_placements",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("requirements", sa.JSON(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("winner_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_placements_state", "gpufsm_placements", ["state"])
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.add_column(sa.Column("placement_id", sa.String(36), nullable=True))
    op.create_index("ix_instances_placement", "gpufsm_instances", ["placement_id"])
    op.create_table(
        "gpufsm_blocked_offers",
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("instance_type", sa.String(128), primary_key=True),
        sa.Column("region", sa.String(64), primary_key=True),  # "" for any region
        sa.Column("interruptible", sa.Boolean(), primary_key=True),
        sa.Column("until", UtcDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("gpufsm_blocked_offers")
    op.drop_index("ix_instances_placement", table_name="gpufsm_instances")
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.drop_column("placement_id")
    op.drop_index("ix_placements_state", table_name="gpufsm_placements")
    op.drop_table("gpufsm_placements")
