"""``decide`` as a table: a row, what the provider says, the clock → the Decision.

Pure: no store, no clock, no network. Every rule of an observation is a row here: the
visibility window, listings missing a row, the command grace (stale readings, one
"failed" inside it), drift (new and already on record), an unknown raw status, an id
found by tag, price/region facts, the two moves of a CREATING row, the health gate.
Behaviour over a real store is the referee in test_reconcile_batch, test_fleet,
test_health_gate and test_absence; this table pins each branch on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufsm.adapters import Observation, ProviderInstance
from gpufsm.engine import Decision, Health, Need, decide
from gpufsm.health import HealthSpec, ProbeResult
from gpufsm.machines import Event, InstanceState
from gpufsm.store import InstanceRecord, TrackedInstance

S = InstanceState
E = Event
T0 = datetime(2025, 1, 1, tzinfo=UTC)
GRACE = 30.0
WINDOW = 120.0
GATE = HealthSpec(tcp_ports=(22,), deadline=600)


def row(state: S = S.RUNNING, **fields: Any) -> InstanceRecord:
    """A row that entered ``state`` at T0 by an observation, long after its launch."""
    base: dict[str, Any] = dict(
        id="row-1", provider="sim", state=state, version=4, client_token="t",
        tag="gpufsm-t", name="job", billable=True, spec={"provider": "sim"},
        created_at=T0 - timedelta(hours=1), updated_at=T0, state_entered_at=T0,
        provider_instance_id="sim-1", price_per_hour=0.75, ip="10.0.0.9",
        last_raw_status="running", previous_state=S.STARTING, entered_by=E.OBSERVED_RUNNING,
        accepted_at=T0 - timedelta(hours=1))
    base.update(fields)
    return InstanceRecord(**base)


def seen(raw: str, state: S | None, **fields: Any) -> Observation:
    base: dict[str, Any] = dict(provider_instance_id="sim-1", raw_status=raw, state=state,
                                tag="gpufsm-t", ip="10.0.0.9", price_per_hour=0.75)
    base.update(fields)
    return Observation.present(ProviderInstance(**base))


GONE = Observation.absent(confirmed=True, reason="provider: not found")
MISSING = Observation.absent(confirmed=False, reason="not in the listing")


def probe(ok: bool) -> ProbeResult:
    return ProbeResult("tcp:22", ok, None if ok else "refused", "", 0.01, T0)


@dataclass(frozen=True)
class Case:
    name: str
    row: InstanceRecord | TrackedInstance
    observation: Observation
    kind: str  # Decision.kind
    events: tuple[Event, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)  # a subset of the facts written
    drift: Event | None = None
    note: int | None = None  # the level of the one log line, if any
    after: float = 10.0  # seconds from T0 to "now"
    grace: bool = True
    health: Health | None = None


STOPPED_BY_US = dict(state=S.STOPPING, previous_state=S.RUNNING, entered_by=E.STOP)
STARTED_BY_US = dict(state=S.STARTING, previous_state=S.STOPPED, entered_by=E.START,
                     last_raw_status="stopped")
FOUND = dict(state=S.CREATING, provider_instance_id=None, accepted_at=None,
             previous_state=None, entered_by=E.LAUNCH, last_raw_status=None, ip=None)
NOW = T0 + timedelta(seconds=10)

CASES = [
    # -- nothing to learn
    Case("listing unknown", row(), Observation.unknown("listing failed"), "nothing"),
    Case("terminated is absorbing", row(S.TERMINATED), seen("running", S.RUNNING), "nothing"),
    Case("quiet: same state, same facts", row(), seen("running", S.RUNNING), "nothing"),
    # -- absence
    Case("first listing without it", row(S.CREATING, provider_instance_id=None), MISSING,
         "facts", facts={"missing_count": 1, "missing_since": NOW}),
    Case("another listing without it: since is kept",
         row(S.CREATING, provider_instance_id=None, missing_count=2,
             missing_since=T0 - timedelta(minutes=5)), MISSING,
         "facts", facts={"missing_count": 3, "missing_since": T0 - timedelta(minutes=5)}),
    Case("slim row cannot count a miss", TrackedInstance.of(row(S.CREATING)), MISSING,
         "record"),
    Case("not found inside the visibility window",
         row(accepted_at=T0 - timedelta(seconds=5)), GONE, "nothing", note=logging.DEBUG),
    Case("not found after the window: gone", row(), GONE, "move",
         events=(E.OBSERVED_GONE,)),
    Case("not found while terminating: gone", row(S.TERMINATING), GONE, "move",
         events=(E.OBSERVED_GONE,)),
    # -- facts
    Case("new address", row(), seen("running", S.RUNNING, ip="10.0.0.10"), "facts",
         facts={"ip": "10.0.0.10", "last_seen_at": NOW}),
    Case("new price", row(), seen("running", S.RUNNING, price_per_hour=0.8), "facts",
         facts={"price_per_hour": 0.8}),
    Case("region the provider picked", row(region=None),
         seen("running", S.RUNNING, region="eu-1"), "facts", facts={"region": "eu-1"}),
    Case("region already known is kept", row(region="us-1"),
         seen("running", S.RUNNING, region="eu-1"), "nothing"),
    Case("seen again after listings missed it", row(missing_count=2, missing_since=T0),
         seen("running", S.RUNNING), "facts", facts={"missing_count": 0,
                                                      "missing_since": None}),
    Case("id found by tag for a row that moved on",
         row(S.TERMINATING, provider_instance_id=None, last_raw_status=None),
         seen("terminating", S.TERMINATING), "facts",
         facts={"provider_instance_id": "sim-1", "accepted_at": T0 - timedelta(hours=1)}),
    Case("unknown raw status: state left, warned", row(), seen("zz-new", None), "facts",
         facts={"last_raw_status": "zz-new"}, note=logging.WARNING),
    # -- the command grace
    Case("stale after our stop", row(**STOPPED_BY_US), seen("running", S.RUNNING),
         "nothing"),
    Case("stale after our stop, grace over", row(**STOPPED_BY_US),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_RUNNING,), after=31,
         health=Health(None)),
    Case("stale after our stop, grace off (a refused command)", row(**STOPPED_BY_US),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_RUNNING,), grace=False,
         health=Health(None)),
    Case("news after a restart is not stale",
         row(S.STARTING, previous_state=S.RUNNING, entered_by=E.RESTART,
             last_raw_status="rebooting"), seen("running", S.RUNNING), "move",
         events=(E.OBSERVED_RUNNING,), health=Health(None)),
    Case("failed inside the grace of our start", row(**STARTED_BY_US),
         seen("exited", S.FAILED), "facts", facts={"last_raw_status": "exited"},
         note=logging.INFO),
    Case("failed inside the grace of the launch's acceptance",
         row(accepted_at=T0 - timedelta(seconds=5)), seen("exited", S.FAILED), "facts",
         note=logging.INFO, after=0),
    Case("failed after the grace", row(**STARTED_BY_US),
         seen("exited", S.FAILED, detail="GPU fell off"), "move",
         events=(E.OBSERVED_FAILED,), facts={"last_error": "GPU fell off"}, after=31),
    Case("failed inside the grace, grace off", row(**STARTED_BY_US),
         seen("exited", S.FAILED), "move", events=(E.OBSERVED_FAILED,), grace=False),
    # -- drift
    Case("no edge: drift, facts kept", row(S.TERMINATING, last_raw_status="terminating"),
         seen("running", S.RUNNING), "drift", facts={"last_raw_status": "running"},
         drift=E.OBSERVED_RUNNING, note=logging.INFO, health=Health(None)),
    Case("drift already on record", row(S.TERMINATING), seen("running", S.RUNNING),
         "nothing", health=Health(None)),
    Case("drift with a detail on a slim row needs the record",
         TrackedInstance.of(row(S.TERMINATING)),
         seen("running", S.RUNNING, detail="odd"), "record", health=Health(None)),
    # -- a CREATING row found
    Case("found running: created, then running", row(**FOUND), seen("running", S.RUNNING),
         "moves", events=(E.OBSERVED_CREATED, E.OBSERVED_RUNNING), health=Health(None)),
    Case("found booting: created, then starting", row(**FOUND),
         seen("booting", S.STARTING), "moves",
         events=(E.OBSERVED_CREATED, E.OBSERVED_STARTING)),
    Case("found already created", row(**FOUND), seen("created", S.CREATED), "move",
         events=(E.OBSERVED_CREATED,)),
    Case("found failed: created, failed not believed yet", row(**FOUND),
         seen("error", S.FAILED, ip=None), "move", events=(E.OBSERVED_CREATED,),
         note=logging.INFO),
    Case("found terminated: no edge from CREATING, drift (no id taken)", row(**FOUND),
         seen("gone", S.TERMINATED), "drift", drift=E.OBSERVED_GONE, note=logging.INFO),
    # -- the health gate
    Case("gate: spec not read yet", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "probes"),
    Case("gate: no probes configured", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_RUNNING,),
         health=Health(HealthSpec())),
    Case("gate: probes not run yet", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "probes", health=Health(GATE)),
    Case("gate: probes passed", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_RUNNING,),
         facts={"health": {"running_since": NOW.isoformat(), "verdict": "passed",
                           "results": [probe(True).to_json()]}},
         health=Health(GATE, None, (probe(True),))),
    Case("gate: pending while starting", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "facts", health=Health(GATE, T0, (probe(False),))),
    Case("gate: no address yet, pending without probes",
         row(S.STARTING, last_raw_status="booting"), seen("running", S.RUNNING, ip=None),
         "facts", facts={"health": {"running_since": NOW.isoformat(), "verdict": "pending",
                                    "results": []}}, health=Health(GATE)),
    Case("gate: pending from created is starting", row(S.CREATED, last_raw_status="new"),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_STARTING,),
         health=Health(GATE, T0, (probe(False),))),
    Case("gate: deadline passed unhealthy", row(S.STARTING, last_raw_status="booting"),
         seen("running", S.RUNNING), "move", events=(E.OBSERVED_FAILED,),
         health=Health(GATE, T0 - timedelta(seconds=601), (probe(False),))),
    Case("gate: not asked of a RUNNING row", row(), seen("running", S.RUNNING), "nothing"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    got = decide(case.row, case.observation, now=T0 + timedelta(seconds=case.after),
                 window=WINDOW, command_grace=GRACE, grace=case.grace, health=case.health)
    assert got.kind == case.kind, got
    assert tuple(s.event for s in got.steps) == case.events
    written = dict(got.facts or {})
    if got.steps:
        written.update(got.steps[-1].changes)
    for name, value in case.facts.items():
        if case.after == 10.0 or name != "last_seen_at":
            assert written.get(name, "<absent>") == value, name
    assert (got.drift.event if got.drift else None) is case.drift
    assert [level for level, _ in got.notes] == ([] if case.note is None else [case.note])


def test_a_decision_is_data() -> None:
    """Same inputs, same answer, and nothing but data in it."""
    first = decide(row(), GONE, now=NOW, window=WINDOW, command_grace=GRACE)
    again = decide(row(), GONE, now=NOW, window=WINDOW, command_grace=GRACE)
    assert first == again and isinstance(first, Decision)
    assert first.steps[0].reason == "provider: not found"
    assert Decision().kind == "nothing" and not Decision().writes
    assert Decision(needs=Need.PROBES).kind == "probes"


def test_a_created_row_is_judged_after_its_first_move() -> None:
    """The second move is decided on the row as the first leaves it (CREATED, just
    accepted), so a CREATING row seen stopped goes created → stopped."""
    got = decide(row(**FOUND), seen("stopped", S.STOPPED), now=NOW, window=WINDOW,
                 command_grace=GRACE)
    assert [s.event for s in got.steps] == [E.OBSERVED_CREATED, E.OBSERVED_STOPPED]
    assert got.steps[0].changes == {"provider_instance_id": "sim-1", "accepted_at": NOW}
