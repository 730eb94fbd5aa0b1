"""The schema, as SQLAlchemy 2.0 typed models. Migrations (not create_all) build it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BlockedOfferRow", "DriftRow", "InstanceRow", "OutboxRow", "PlacementRow",
           "PriceRow", "TransitionRow", "UtcDateTime"]


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit sequence.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class InstanceRow(Base):
    __tablename__ = "gpufsm_instances"
    __table_args__ = (
        # One live row per provider instance (two daemons adopting one orphan collide
        # here). Partial (0006): a TERMINATED row keeps its id for the record, and an
        # instance that turns up again after a wrong "gone" gets a new, live row.
        Index("uq_instances_live_pid", "provider", "provider_instance_id", unique=True,
              sqlite_where=text("state <> 'TERMINATED'"),
              postgresql_where=text("state <> 'TERMINATED'")),
        Index("ix_instances_state", "state"),
        Index("ix_instances_tag", "tag"),
        Index("ix_instances_created", "created_at", "id"),  # list order (0005)
        Index("ix_instances_placement", "placement_id"),  # a request's attempts (0007)
        Index("ix_instances_run", "run_id"),  # a recovering run's generations (0008)
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_instance_id: Mapped[str | None] = mapped_column(String(128))
    client_token: Mapped[str] = mapped_column(String(64), unique=True)
    tag: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    previous_state: Mapped[str | None] = mapped_column(String(16))
    entered_by: Mapped[str] = mapped_column(String(32))
    billable: Mapped[bool] = mapped_column(Boolean)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    region: Mapped[str | None] = mapped_column(String(64))
    instance_type: Mapped[str | None] = mapped_column(String(128))
    # Money is stored exactly: integer millionths of a dollar per hour (0006).
    price_micros_per_hour: Mapped[int | None] = mapped_column(BigInteger)
    ip: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state_entered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_raw_status: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    # Which daemon may act on this row until when (0002); never part of a record.
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # gate results (0004)
    # Evidence about absence, persisted so a cron `reconcile --once` decides as a daemon
    # does (0006): when the provider accepted the launch (absence inside the visibility
    # window after it proves nothing), and how many good listings in a row lacked the
    # instance's tag, since when.
    accepted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    missing_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    missing_count: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The placement (request for a GPU) this row is an attempt of (0007).
    placement_id: Mapped[str | None] = mapped_column(String(36))
    # The recovering run this row is a generation of, and which generation (0008).
    run_id: Mapped[str | None] = mapped_column(String(36))
    generation: Mapped[int | None] = mapped_column(Integer)


class TransitionRow(Base):
    __tablename__ = "gpufsm_transitions"
    __table_args__ = (Index("ix_transitions_instance", "instance_id", "seq"),)

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("gpufsm_instances.id"))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    raw_status: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class DriftRow(Base):
    __tablename__ = "gpufsm_drift"
    __table_args__ = (Index("ix_drift_instance", "instance_id", "seq"),)

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("gpufsm_instances.id"))
    state: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class PriceRow(Base):
    """A price the provider reported for an instance, holding from ``at`` on (0009).

    Written when a row's price first becomes known (dated from the row's creation: the
    first price seen is taken as the price the machine was launched at) and whenever it
    changes (dated when the change was seen), so the ledger prices each stretch of a
    machine's life at what it cost then, not its whole life at its last price.
    """

    __tablename__ = "gpufsm_prices"
    __table_args__ = (Index("ix_prices_instance", "instance_id", "seq"),)

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("gpufsm_instances.id"))
    price_micros_per_hour: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class OutboxRow(Base):
    """A webhook message; ``next_attempt_at`` NULL means delivered or given up."""

    __tablename__ = "gpufsm_outbox"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "next_attempt_at"),)

    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("gpufsm_instances.id"))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class PlacementRow(Base):
    """A request for a GPU (0007): its attempts are instance rows with its id."""

    __tablename__ = "gpufsm_placements"
    __table_args__ = (Index("ix_placements_state", "state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    requirements: Mapped[dict[str, Any]] = mapped_column(JSON)
    template: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # OPEN, PLACED, FAILED
    winner_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BlockedOfferRow(Base):
    """An offer refused for capacity, quota, price or region, skipped until ``until``."""

    __tablename__ = "gpufsm_blocked_offers"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance_type: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)  # "": any region
    interruptible: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    until: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
