"""What a pass holds of one provider's listing, and whose each listed instance is.

``View`` indexes the listing once per pass (by provider id; by tag only when a row
needs it). ``Ownership`` sorts the listed instances that carry our tag and that no live
row holds: orphans, resurrected instances and duplicates. ``live_row`` is the one rule
for "may still bill and is watched", shared with destroy-all and the status view.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from operator import attrgetter

from gpufsm.adapters import ProviderInstance
from gpufsm.machines import InstanceState
from gpufsm.reconcile._report import Change
from gpufsm.store import InstanceRecord, InstanceStore, Move, TrackedInstance

__all__ = ["PID", "WATCHED", "Ownership", "Row", "View", "changes", "live_row",
           "needs_watching"]

S = InstanceState
#: The states a pass looks at: all but the absorbing one.
WATCHED = [s for s in S if s is not S.TERMINATED]
#: A row as the pass holds it: the slim view from the listing, or a full record after
#: an engine call. Both carry every field the pass reads, under the same names.
Row = InstanceRecord | TrackedInstance
PID = attrgetter("provider_instance_id")


class View:
    """One provider's listing for this pass; ``instances`` None means UNKNOWN.

    ``by_tag`` is built on first use: only rows without a provider id, or missing from
    ``by_pid``, look there, and a pass over 100k quiet rows has none.
    """

    def __init__(self, instances: Sequence[ProviderInstance] | None) -> None:
        self.instances = instances
        listing = instances or ()
        self.by_pid: dict[str, ProviderInstance] = dict(zip(
            map(PID, listing), listing, strict=True))

    @cached_property
    def by_tag(self) -> dict[str, ProviderInstance]:
        return {i.tag: i for i in self.instances or () if i.tag}

    @property
    def ok(self) -> bool:
        return self.instances is not None


def changes(after: Row, moves: Sequence[Move]) -> list[Change]:
    """The report's lines for the moves a batch committed (what their history says)."""
    return [Change(after.id, after.provider, m.from_state.value, m.to_state.value,
                   m.event.value,
                   m.reason or (f"provider reports {m.raw_status!r}" if m.raw_status else ""))
            for m in moves]


def needs_watching(record: Row) -> bool:
    """A FAILED row that never reached the provider bills nothing and needs no look."""
    return not (record.state is S.FAILED and not record.billable
                and record.provider_instance_id is None)


class Ownership:
    """Which listed instances with our tag no live row holds, and why.

    Rows of this pass answer most questions; the rest (an instance whose tag or id no
    row of this pass holds) are answered from one batched ``find_tracked`` over every
    state, so 100k listed instances cost one query per thousand, not 100k queries.
    """

    def __init__(self, store: InstanceStore, provider: str,
                 listing: Sequence[ProviderInstance], rows: Sequence[Row]) -> None:
        # Listed ids no row of this pass holds, by set difference (in C, not a Python
        # loop over 100k): at scale there are none, and nothing else is walked.
        unheld = set(map(PID, listing)).difference(filter(None, map(PID, rows)))
        self._unheld: list[ProviderInstance] = []
        if unheld:
            waiting_tags = {r.tag for r in rows if r.provider_instance_id is None}
            self._unheld = [
                i for i in listing
                if i.provider_instance_id in unheld and i.tag is not None
                and i.state not in (S.TERMINATED, S.TERMINATING)
                and i.tag not in waiting_tags]
        self._by_tag: dict[str, list[Row]] = {}
        self._by_pid: dict[str, list[Row]] = {}
        if self._unheld:
            for row in store.find_tracked(
                    provider, tags=[i.tag for i in self._unheld if i.tag is not None],
                    provider_instance_ids=[i.provider_instance_id for i in self._unheld]):
                self._by_tag.setdefault(row.tag, []).append(row)
                if row.provider_instance_id is not None:
                    self._by_pid.setdefault(row.provider_instance_id, []).append(row)

    def strays(self) -> list[tuple[ProviderInstance, str, Row | None]]:
        """(instance, "orphan" | "resurrected" | "duplicate", the row it relates to)."""
        out: list[tuple[ProviderInstance, str, Row | None]] = []
        for inst in self._unheld:
            by_pid = self._by_pid.get(inst.provider_instance_id, [])
            by_tag = self._by_tag.get(inst.tag or "", [])
            if any(live_row(r) for r in by_pid):
                continue  # tracked (by a row another daemon holds, say)
            if any(live_row(r) and r.provider_instance_id is None for r in by_tag):
                continue  # a launch in doubt that will adopt it by tag
            twin = next((r for r in by_tag if live_row(r)), None)
            if twin is not None:
                out.append((inst, "duplicate", twin))
            elif by_pid or by_tag:
                out.append((inst, "resurrected", (by_pid or by_tag)[-1]))
            else:
                out.append((inst, "orphan", None))
        return out


def live_row(row: InstanceRecord | TrackedInstance) -> bool:
    """May still bill and is watched: not TERMINATED, not a launch refused or written off.
    (Shared with destroy-all, which sorts listed instances the same way.)"""
    return row.state is not S.TERMINATED and not (row.state is S.FAILED and not row.billable)
