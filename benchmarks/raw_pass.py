"""The raw pass: the limit a reconcile pass is measured against (rows 9 to 11).

What no reconcile pass can avoid, written as plainly as Python allows: fetch the
provider's listing (over HTTP: one ``httpx`` GET per page the adapter needs, the body
parsed with ``json.loads``; in process: the simulated cloud's ``list_instances()``), one
SELECT of the live rows, a dict diff of each listed raw status against the stored one,
and the rows that differ written with one ``executemany`` UPDATE in one transaction.

Why it is a limit and not a rival: it does none of what makes gpufsm's pass safe. No
state-machine check (a status word maps straight to a state through a table), no
history row, no per-row version check (``WHERE id = ?`` only), no drift record, no
lease, no health probe, no typed validation of the JSON, and no provider action (a dead
instance is marked FAILED, never terminated). gpufsm's ratio to it says what all of
that costs, measured on the same database file, against the same emulator, in the same
run — each raw pass runs on a world just before gpufsm's pass runs on it, and its writes
are undone (untimed, verified) in between, so both passes find the same rows drifted.

The raw pass is correct, not a straw man: it must find and write exactly the rows the
world drifted, or the run fails.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import DateTime, Engine, bindparam, text

from gpufsm.machines import InstanceState
from gpufsm.store import make_engine

__all__ = [
    "LAMBDA_STATES",
    "SIM_STATES",
    "Listing",
    "RawRun",
    "http_listing",
    "raw_pass",
    "sim_listing",
    "time_raw_pass",
]

S = InstanceState

#: What a listing says per provider instance id: (raw status word, ip).
Listing = Callable[[], dict[str, tuple[str, str | None]]]

#: The raw pass's own status tables, as a hand-written reconcile would carry them: the
#: words each world's provider can report, and the state each means.
LAMBDA_STATES: Mapping[str, str] = {
    "booting": S.STARTING.value, "active": S.RUNNING.value, "unhealthy": S.FAILED.value,
    "preempted": S.FAILED.value, "terminating": S.TERMINATING.value,
    "terminated": S.TERMINATED.value,
}
SIM_STATES: Mapping[str, str] = {
    "provisioning": S.CREATED.value, "booting": S.STARTING.value,
    "rebooting": S.STARTING.value, "running": S.RUNNING.value,
    "stopping": S.STOPPING.value, "stopped": S.STOPPED.value, "unhealthy": S.FAILED.value,
    "preempted": S.FAILED.value, "terminating": S.TERMINATING.value,
    "terminated": S.TERMINATED.value,
}

_TABLE = "gpufsm_instances"
_SELECT = text(f"SELECT id, provider_instance_id, state, last_raw_status FROM {_TABLE} "
               "WHERE provider = :provider AND state <> 'TERMINATED'")
_UPDATE = text(
    f"UPDATE {_TABLE} SET state = :state, previous_state = :previous, "
    "last_raw_status = :raw, ip = :ip, version = version + 1, updated_at = :now, "
    "state_entered_at = :now, last_seen_at = :now WHERE id = :id",
).bindparams(bindparam("now", type_=DateTime()))
#: What the raw pass overwrites, so its writes can be undone before gpufsm's pass.
_RESTORED = ("state", "previous_state", "last_raw_status", "ip", "version", "updated_at",
             "state_entered_at", "last_seen_at")


def http_listing(client: httpx.Client, path: str) -> Listing:
    """The whole account from ``path`` (Lambda lists it in one page, as the adapter reads
    it), parsed with ``json.loads`` and nothing else."""

    def listing() -> dict[str, tuple[str, str | None]]:
        response = client.get(path)
        response.raise_for_status()
        return {i["id"]: (i["status"], i.get("ip"))
                for i in json.loads(response.content)["data"]}

    return listing


def sim_listing(cloud: Any) -> Listing:
    """The in-process simulated cloud's listing, the one gpufsm's pass reads."""

    def listing() -> dict[str, tuple[str, str | None]]:
        return {i.provider_instance_id: (i.raw_status, i.ip)
                for i in cloud.list_instances()}

    return listing


@dataclass(frozen=True)
class RawRun:
    """One timed raw pass: wall seconds in all and by phase, and the rows it wrote."""

    seconds: float
    listing: float
    select: float
    diff: float
    write: float
    written: int


def _stamp(engine: Engine, now: datetime) -> datetime:
    # the store keeps naive UTC on SQLite (no zone there) and aware elsewhere
    return now.astimezone(UTC).replace(tzinfo=None) if engine.dialect.name == "sqlite" \
        else now


def raw_pass(engine: Engine, *, provider: str, listing: Listing, states: Mapping[str, str],
             now: datetime) -> tuple[RawRun, list[str]]:
    """One raw pass; the timing and the ids of the rows it wrote."""
    t0 = time.perf_counter()
    listed = listing()
    t1 = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(_SELECT, {"provider": provider}).all()
    t2 = time.perf_counter()
    at = _stamp(engine, now)
    changed = []
    for row_id, pid, state, raw in rows:
        seen = listed.get(pid)
        if seen is None or seen[0] == raw:
            continue  # not listed (absence needs evidence a raw pass lacks) or unchanged
        status, ip = seen
        changed.append({"id": row_id, "state": states[status], "previous": state,
                        "raw": status, "ip": ip, "now": at})
    t3 = time.perf_counter()
    if changed:
        with engine.begin() as conn:
            result = conn.execute(_UPDATE, changed)
            if engine.dialect.supports_sane_multi_rowcount and result.rowcount != len(changed):
                raise AssertionError(f"raw UPDATE wrote {result.rowcount} of {len(changed)}")
    t4 = time.perf_counter()
    run = RawRun(t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3, len(changed))
    return run, [c["id"] for c in changed]


def _snapshot(engine: Engine, ids: Collection[str], pids: Collection[str]
              ) -> list[dict[str, Any]]:
    """The columns the raw pass overwrites, of the rows the world drifted, as stored."""
    select = text(f"SELECT id, {', '.join(_RESTORED)} FROM {_TABLE} "
                  "WHERE id IN :ids OR provider_instance_id IN :pids").bindparams(
        bindparam("ids", expanding=True), bindparam("pids", expanding=True))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select, {"ids": list(ids) or [""], "pids": list(pids) or [""]})]


def _restore(engine: Engine, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    sets = ", ".join(f"{c} = :{c}" for c in _RESTORED)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {_TABLE} SET {sets} WHERE id = :id"), rows)


def _checkpoint(engine: Engine) -> None:
    """Empty SQLite's write-ahead log, so each pass starts from the same file state and
    neither pays for a checkpoint of the other's (or the seed's) pages."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def time_raw_pass(url: str, *, provider: str, listing: Listing, states: Mapping[str, str],
                  now: datetime, drifted_ids: Collection[str],
                  drifted_pids: Collection[str]) -> RawRun:
    """Time one raw pass on the database at ``url``, check it, and undo its writes.

    The engine is connected and the listing fetched once before the clock starts, as
    gpufsm's store and adapter are by the time its pass is timed. The pass must write
    exactly the drifted rows (``drifted_ids`` by row id, ``drifted_pids`` by provider
    instance id); then they are put back as they were, for gpufsm's pass to find. The
    write-ahead log is emptied before the raw pass and again before gpufsm's.
    """
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
        listing()
        before = _snapshot(engine, drifted_ids, drifted_pids)
        expected = {r["id"] for r in before}
        if len(expected) != len(drifted_ids) + len(drifted_pids):
            raise AssertionError(f"{len(expected)} drifted rows found, "
                                 f"{len(drifted_ids) + len(drifted_pids)} injected")
        _checkpoint(engine)
        gc.collect()
        run, written = raw_pass(engine, provider=provider, listing=listing, states=states,
                                now=now)
        if len(written) != len(expected) or set(written) != expected:
            raise AssertionError(f"the raw pass wrote {len(written)} rows, "
                                 f"{len(expected)} drifted ({len(set(written) ^ expected)} "
                                 "differ)")
        _restore(engine, before)
        _checkpoint(engine)
        return run
    finally:
        engine.dispose()
