"""Prices: each instance's price as it changed, so cost is priced by the stretch.

Until now a row kept only the latest price its provider reported, and the ledger priced
the machine's whole life at it. Every row that has a price gets one point dated from
its creation: the same figure the ledger used before, so no existing cost moves; later
changes are recorded as they are seen.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gpufsm.store._models import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gpufsm_prices",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), sa.ForeignKey("gpufsm_instances.id"),
                  nullable=False),
        sa.Column("price_micros_per_hour", sa.BigInteger(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_prices_instance", "gpufsm_prices", ["instance_id", "seq"])
    op.execute(
        "INSERT INTO gpufsm_prices (instance_id, price_micros_per_hour, at) "
        "SELECT id, price_micros_per_hour, created_at FROM gpufsm_instances "
        "WHERE price_micros_per_hour IS NOT NULL ORDER BY created_at, id")


def downgrade() -> None:
    op.drop_index("ix_prices_instance", table_name="gpufsm_prices")
    op.drop_table("gpufsm_prices")
