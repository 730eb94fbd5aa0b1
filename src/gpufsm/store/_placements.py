"""Placements: requests for a GPU, the one winner each may keep, and refused offers.

The winner is the heart of "failover never double-launches": every attempt that
produced a machine asks to be the winner with one conditional UPDATE (``WHERE winner_id
IS NULL``), so whichever process sees a machine first wins, and every other machine of
the request is surplus (``surplus_rows``), which the reconciler terminates.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, and_, delete, func, insert, or_, select, update

from gpufsm.errors import StoreError
from gpufsm.machines import InstanceState
from gpufsm.store._base import SqlBase
from gpufsm.store._columns import HISTORY as _T
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import RECORD_SELECT, aware
from gpufsm.store._models import BlockedOfferRow, PlacementRow
from gpufsm.store._records import (
    BlockedOffer,
    InstanceRecord,
    PlacementRecord,
    PlacementState,
    SurplusRow,
)

__all__ = ["PlacementTable"]

_P = cast(Table, PlacementRow.__table__)
_B = cast(Table, BlockedOfferRow.__table__)
S = InstanceState
P = PlacementState
#: States of a machine that may still bill and that nobody is terminating yet.
_LIVE = [s.value for s in S if s not in (S.TERMINATING, S.TERMINATED)]


class PlacementTable(SqlBase):
    """The Placements role."""

    def open_placement(self, placement: PlacementRecord) -> PlacementRecord:
        aware(placement.created_at, placement.updated_at)
        with self._tx() as conn:
            conn.execute(insert(_P).values(
                id=placement.id, name=placement.name, requirements=placement.requirements,
                template=placement.template, state=placement.state.value,
                winner_id=placement.winner_id, reason=placement.reason,
                created_at=placement.created_at, updated_at=placement.updated_at))
        return placement

    def get_placement(self, placement_id: str) -> PlacementRecord:
        with self._tx() as conn:
            row = conn.execute(select(_P).where(_P.c.id == placement_id)).first()
        if row is None:
            raise StoreError(f"no placement {placement_id!r}")
        return _placement(row)

    def list_placements(self, *, states: Iterable[PlacementState] | None = None
                        ) -> list[PlacementRecord]:
        query = select(_P).order_by(_P.c.created_at, _P.c.id)
        if states is not None:
            query = query.where(_P.c.state.in_([P(s).value for s in states]))
        with self._tx() as conn:
            return [_placement(r) for r in conn.execute(query)]

    def claim_winner(self, placement_id: str, instance_id: str, *, at: datetime
                     ) -> PlacementRecord:
        """Make ``instance_id`` the request's winner if it has none and is still OPEN;
        the placement after (its ``winner_id`` says who won: maybe someone else)."""
        aware(at)
        with self._tx() as conn:
            conn.execute(update(_P).where(
                _P.c.id == placement_id, _P.c.winner_id.is_(None),
                _P.c.state == P.OPEN.value,
            ).values(winner_id=instance_id, state=P.PLACED.value, updated_at=at))
            row = conn.execute(select(_P).where(_P.c.id == placement_id)).first()
        if row is None:
            raise StoreError(f"no placement {placement_id!r}")
        return _placement(row)

    def fail_placement(self, placement_id: str, *, reason: str, at: datetime
                       ) -> PlacementRecord:
        """OPEN → FAILED, unless a winner was claimed meanwhile; the placement after."""
        aware(at)
        with self._tx() as conn:
            conn.execute(update(_P).where(
                _P.c.id == placement_id, _P.c.state == P.OPEN.value,
            ).values(state=P.FAILED.value, reason=reason, updated_at=at))
            row = conn.execute(select(_P).where(_P.c.id == placement_id)).first()
        if row is None:
            raise StoreError(f"no placement {placement_id!r}")
        return _placement(row)

    def attempts(self, placement_id: str) -> list[InstanceRecord]:
        """The instance rows of a request's attempts, in the order they were made (two
        made at one instant: by their launch history row, which is committed first)."""
        launched = (select(func.min(_T.c.seq)).where(_T.c.instance_id == _I.c.id)
                    .scalar_subquery())
        query = (select(*RECORD_SELECT).where(_I.c.placement_id == placement_id)
                 .order_by(_I.c.created_at, launched))
        with self._tx() as conn:
            return [self._record(r) for r in conn.execute(query)]

    def generations(self, run_id: str) -> list[InstanceRecord]:
        """Every instance row a recovering run launched: generation by generation, and
        within one (a placement's attempts) in the order they were made."""
        launched = (select(func.min(_T.c.seq)).where(_T.c.instance_id == _I.c.id)
                    .scalar_subquery())
        query = (select(*RECORD_SELECT).where(_I.c.run_id == run_id)
                 .order_by(_I.c.generation, _I.c.created_at, launched))
        with self._tx() as conn:
            return [self._record(r) for r in conn.execute(query)]

    def find_run(self, prefix: str) -> str | None:
        """The run whose id is ``prefix`` or starts with it, if exactly one does."""
        if not prefix:
            return None
        query = (select(_I.c.run_id).where(_I.c.run_id.startswith(prefix, autoescape=True))
                 .distinct().limit(2))
        with self._tx() as conn:
            found = [r[0] for r in conn.execute(query)]
        return found[0] if len(found) == 1 else None

    def surplus_rows(self) -> list[SurplusRow]:
        """Live, billable attempts whose request may not keep them, or may now choose
        one: the placement FAILED, or its winner is another row, or it is OPEN with no
        winner and this row's machine is known (it can be claimed)."""
        query = (
            select(_I.c.id, _I.c.placement_id, _P.c.state, _P.c.winner_id,
                   _I.c.provider_instance_id)
            .join(_P, _P.c.id == _I.c.placement_id)
            .where(_I.c.state.in_(_LIVE), _I.c.billable.is_(True), or_(
                _P.c.state == P.FAILED.value,
                and_(_P.c.winner_id.is_not(None), _P.c.winner_id != _I.c.id),
                and_(_P.c.winner_id.is_(None), _P.c.state == P.OPEN.value,
                     _I.c.provider_instance_id.is_not(None))))
            .order_by(_I.c.created_at, _I.c.id))
        with self._tx() as conn:
            return [SurplusRow(r[0], r[1], P(r[2]), r[3], r[4] is not None)
                    for r in conn.execute(query)]

    def block_offer(self, offer: BlockedOffer) -> None:
        """Skip this offer until ``offer.until`` (a later block of it replaces this one)."""
        aware(offer.until)
        key = (_B.c.provider == offer.provider, _B.c.instance_type == offer.instance_type,
               _B.c.region == offer.region, _B.c.interruptible.is_(offer.interruptible))
        with self._tx() as conn:
            conn.execute(delete(_B).where(*key))
            conn.execute(insert(_B).values(
                provider=offer.provider, instance_type=offer.instance_type,
                region=offer.region, interruptible=offer.interruptible, until=offer.until,
                reason=offer.reason))

    def blocked_offers(self, *, now: datetime) -> list[BlockedOffer]:
        """Offers still blocked at ``now``."""
        aware(now)
        with self._tx() as conn:
            rows = conn.execute(select(_B).where(_B.c.until > now)).all()
        return [BlockedOffer(r.provider, r.instance_type, r.region, bool(r.interruptible),
                             r.until, r.reason) for r in rows]


def _placement(row: Row[Any]) -> PlacementRecord:
    m = row._mapping
    return PlacementRecord(
        id=m["id"], requirements=m["requirements"], template=m["template"],
        state=P(m["state"]), created_at=m["created_at"], updated_at=m["updated_at"],
        name=m["name"], winner_id=m["winner_id"], reason=m["reason"])
