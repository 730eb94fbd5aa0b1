"""Alembic environment: runs on the connection gpufsm hands it, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gpufsm.store._models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table="gpufsm_alembic_version",
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("gpufsm migrations run through gpufsm.store.upgrade(), not alembic's CLI")
_run(connection)
