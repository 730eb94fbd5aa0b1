"""The webhook outbox: messages committed with their transition, delivered after."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from gpufsm.store._base import SqlBase
from gpufsm.store._columns import OUTBOX as _O
from gpufsm.store._columns import aware, outbox_message
from gpufsm.store._records import OutboxMessage

__all__ = ["OutboxQueue"]


class OutboxQueue(SqlBase):
    """The Outbox role: claim due messages, record each delivery's outcome."""

    def claim_outbox(self, *, now: datetime, hold: float, limit: int = 100
                     ) -> list[OutboxMessage]:
        """Take due messages for delivery, hiding them from other dispatchers for ``hold``.

        The claim is a write (next attempt pushed ``hold`` seconds out) so two daemons
        never post the same message at once; a dispatcher that dies mid-delivery only
        delays it. Delivery stays at-least-once: receivers dedupe on the idempotency key.
        """
        aware(now)
        pick = (select(_O.c.seq).where(_O.c.delivered_at.is_(None),
                                       _O.c.next_attempt_at.is_not(None),
                                       _O.c.next_attempt_at <= now)
                .order_by(_O.c.seq).limit(limit))
        if not self._sqlite:
            pick = pick.with_for_update(skip_locked=True)
        with self._tx() as conn:
            rows = conn.execute(
                update(_O).where(_O.c.seq.in_(pick.scalar_subquery()))
                .values(next_attempt_at=now + timedelta(seconds=hold))
                .returning(*_O.c)).all()
        return sorted((outbox_message(r) for r in rows), key=lambda m: m.seq)

    def outbox_done(self, seq: int, *, at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(_O).where(_O.c.seq == seq).values(
                delivered_at=at, next_attempt_at=None, attempts=_O.c.attempts + 1,
                last_error=None))

    def outbox_failed(self, seq: int, *, error: str, next_attempt_at: datetime | None) -> None:
        """Record a failed attempt; ``next_attempt_at`` None gives up on the message."""
        with self._tx() as conn:
            conn.execute(update(_O).where(_O.c.seq == seq).values(
                attempts=_O.c.attempts + 1, last_error=error[:2000],
                next_attempt_at=next_attempt_at))

    def outbox(self, instance_id: str | None = None) -> list[OutboxMessage]:
        """Every message (or one instance's), oldest first: for tests and inspection."""
        query = select(_O).order_by(_O.c.seq)
        if instance_id is not None:
            query = query.where(_O.c.instance_id == instance_id)
        with self._tx() as conn:
            return [outbox_message(r) for r in conn.execute(query)]
