"""Absence evidence on the row, exact money, and one *live* row per provider instance.

* ``accepted_at``: when the provider accepted the launch (or the row adopted a listed
  instance). Providers are eventually consistent: inside a visibility window after it, a
  not-found proves nothing. Backfilled with ``created_at`` for rows that have an id.
* ``missing_since`` / ``missing_count``: good listings in a row without the row's tag.
  Kept in memory before, so a cron ``reconcile --once`` never reached the count a daemon
  reaches; persisted, both decide alike.
* ``price_micros_per_hour`` replaces the float ``price_per_hour``: integer millionths of
  a dollar, exact on every backend (a float column printed 0.35000000000000003).
* The unique (provider, provider id) constraint becomes a partial unique index over
  rows that are not TERMINATED: the old row of an instance wrongly concluded gone keeps
  its id (TERMINATED is absorbing and its history must stay true), and the instance,
  when it turns up billing, is adopted into a new row that may hold the same id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gpufsm.store._models import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LIVE = sa.text("state <> 'TERMINATED'")


def upgrade() -> None:
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.add_column(sa.Column("accepted_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("missing_since", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("missing_count", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("price_micros_per_hour", sa.BigInteger(), nullable=True))
    op.execute("UPDATE gpufsm_instances SET accepted_at = created_at "
               "WHERE provider_instance_id IS NOT NULL")
    op.execute("UPDATE gpufsm_instances SET price_micros_per_hour = "
               "CAST(ROUND(price_per_hour * 1000000) AS BIGINT) WHERE price_per_hour IS NOT NULL")
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.drop_constraint("uq_instances_provider_pid", type_="unique")
        batch.drop_column("price_per_hour")
    op.create_index("uq_instances_live_pid", "gpufsm_instances",
                    ["provider", "provider_instance_id"], unique=True,
                    sqlite_where=_LIVE, postgresql_where=_LIVE)


def downgrade() -> None:
    op.drop_index("uq_instances_live_pid", table_name="gpufsm_instances")
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.add_column(sa.Column("price_per_hour", sa.Float(), nullable=True))
    op.execute("UPDATE gpufsm_instances SET price_per_hour = price_micros_per_hour / 1000000.0 "
               "WHERE price_micros_per_hour IS NOT NULL")
    with op.batch_alter_table("gpufsm_instances") as batch:
        batch.drop_column("price_micros_per_hour")
        batch.drop_column("missing_count")
        batch.drop_column("missing_since")
        batch.drop_column("accepted_at")
        batch.create_unique_constraint("uq_instances_provider_pid",
                                       ["provider", "provider_instance_id"])
