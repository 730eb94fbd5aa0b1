"""Crash points: kill -9 at every named point of launch, terminate, restart, the orphan
sweep, the resurrection sweep and the re-issued terminate, then recover — nothing bills
without a live row.

Each case forks a worker (tests/crash_driver.py) that drives a real Lambda adapter over
loopback HTTP against a Lambda-dialect emulator living in this process. The worker
counts every store write and every provider call and SIGKILLs itself at the case's point
(``"<script>/<before|after>:<store|adapter>.<method>#<n>"``); a point the script no
longer reaches fails the case. Then this process recovers as a restarted operator would:
a fresh Fleet and Reconciler (the same orphan policy as the killed process), pass after
pass until a clean pass (no change, no problem, no row half-way), and checks:

(a) after *every* recovery pass, every live instance carrying our tag has a live row
    (not TERMINATED, not FAILED-and-unbillable) holding its provider id — zero
    instances billing without a live row;
(b) every history row is an edge of the table (``check_invariants``);
(c) the rows settle where the point says they must (the user's committed intent
    survives the crash: a committed terminate ends TERMINATED, a launch the provider
    carried out ends RUNNING, one it never got ends FAILED and unbillable);
(d) after a final clean-up (terminate every row, passes until done) the emulator holds
    nothing of ours.

``pytest -s`` prints one line per case and, at the end, the table of points and
outcomes (``OUTCOMES``) for the figures.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from crash_driver import (
    SCRIPTS,
    SPEC,
    VISIBILITY_WINDOW,
    CrashPoint,
    Zygote,
    point_config,
    quiet_when_client_died,
)
from gpufsm import Fleet, InstanceState, ProviderError, SqlInstanceStore
from gpufsm.adapters import TAG_PREFIX, Observation, RetryPolicy, ownership_tag
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.clock import SystemClock
from gpufsm.machines import Capabilities
from gpufsm.reconcile import Reconciler
from gpufsm.store import InstanceRecord
from gpufsm.testing import SimTimings, SimulatedCloud, check_invariants
from gpufsm.testing.emulators import (
    EmulatorAdmin,
    EmulatorServer,
    HttpFault,
    enable_admin,
    make_dialect,
)

S = InstanceState
KEY = "crash-points-key"
LAMBDA_CAPS = Capabilities(stop=False, restart=True, tags=True)
LIST_PATH = "/api/v1/instances"
# A cloud that boots and terminates in a few hundredths of a second, so each case takes
# well under a second; terminated instances linger (listed as terminated) for seconds,
# so a terminate is confirmed by the provider's terminal status, not by waiting out the
# visibility window for a not-found.
TIMINGS = SimTimings(provision=(0.01, 0.03), boot=(0.02, 0.05), stop=(0.02, 0.05),
                     start=(0.02, 0.05), restart=(0.02, 0.05), terminate=(0.02, 0.05),
                     linger=(2.0, 3.0))
PAUSE = 0.05  # between recovery passes: time for the emulator to move on
SETTLE = 5.0  # recovery must reach a clean pass within this many seconds
CLEAN_UP = 5.0


# ---- the points -------------------------------------------------------------------------

RUN = "RUNNING"
GONE = "TERMINATED"
REFUSED = "FAILED/unbillable"


@dataclass(frozen=True)
class Case:
    """A crash point, what the store and the provider hold when the worker dies there,
    and where recovery must leave the rows (sorted summaries, see ``_summary``)."""

    point: str
    holds: str
    after: tuple[str, ...]


CASES: list[Case] = [
    # Fleet.launch: insert CREATING → adapter.launch → transition CREATED (+ provider id)
    Case("launch/before:store.insert#1", "nothing written, nothing sent", ()),
    Case("launch/after:store.insert#1", "CREATING committed; launch not sent", (REFUSED,)),
    Case("launch/before:adapter.launch#1", "CREATING; at the launch call", (REFUSED,)),
    Case("launch/after:adapter.launch#1", "instance created; its id known to no row",
         (RUN,)),
    Case("launch/before:store.transition#1", "id in hand, CREATED not committed", (RUN,)),
    Case("launch/after:store.transition#1", "CREATED with the provider id", (RUN,)),
    # the launch's answer is lost: error noted → tag search → adoption
    Case("launch-lost/after:adapter.launch#1", "instance created; answer lost (raised)",
         (RUN,)),
    Case("launch-lost/after:store.update#1", "CREATING, no id, error noted", (RUN,)),
    Case("launch-lost/after:adapter.list_instances#1", "tag found, not adopted", (RUN,)),
    Case("launch-lost/after:store.transition#1", "adopted: CREATED with the id", (RUN,)),
    # the provider refuses: FAILED, not billable
    Case("launch-refused/after:adapter.launch#1", "refused; refusal not recorded",
         (REFUSED,)),
    Case("launch-refused/after:store.transition#1", "FAILED, not billable", (REFUSED,)),
    # a placement (launch by requirements): the cheapest A10 offer (us-east-1) refused for
    # capacity, the next (us-west-1) placed and claimed as the request's one winner
    Case("place/after:store.open_placement#1", "placement OPEN; no attempt yet", ()),
    Case("place/after:adapter.launch#1", "first offer refused; refusal not recorded",
         (REFUSED,)),
    Case("place/after:store.insert#2", "first FAILED; second CREATING, not sent",
         (REFUSED, REFUSED)),
    Case("place/after:adapter.launch#2", "second created; its id known to no row",
         (REFUSED, RUN)),
    Case("place/before:store.claim_winner#1", "second CREATED; the win not claimed",
         (REFUSED, RUN)),
    Case("place/after:store.claim_winner#1", "placed", (REFUSED, RUN)),
    # the first offer's answer lost and its tag unseen: tracked while the next is placed;
    # recovery keeps one machine and terminates the other
    Case("place-lost/before:adapter.launch#2", "first machine exists, unknown; next not "
         "sent", (RUN, GONE)),
    Case("place-lost/before:store.claim_winner#1", "two machines; no winner claimed",
         (RUN, GONE)),
    Case("place-lost/after:store.claim_winner#1", "the second won; the first unknown",
         (RUN, GONE)),
    # a reconcile pass healing a launch in doubt (CREATING, no id, instance exists)
    Case("heal/after:adapter.list_instances#1", "tag listed; nothing written", (RUN,)),
    Case("heal/after:store.apply_batch#1", "adopted: CREATED with the id", (RUN,)),
    # Fleet.terminate of a RUNNING instance: TERMINATING → terminate → GET to confirm
    Case("terminate/before:store.transition#1", "RUNNING; the intent never committed",
         (RUN,)),
    Case("terminate/after:store.transition#1", "TERMINATING committed; terminate not sent",
         (GONE,)),
    Case("terminate/before:adapter.terminate#1", "TERMINATING; at the terminate call",
         (GONE,)),
    Case("terminate/after:adapter.terminate#1", "terminate sent, not confirmed", (GONE,)),
    Case("terminate/after:adapter.get#1", "confirming GET read, not applied", (GONE,)),
    # Fleet.terminate of a launch in doubt: TERMINATING → tag search → id → terminate
    Case("terminate-pidless/after:store.transition#1", "TERMINATING without an id; "
         "instance runs", (GONE,)),
    Case("terminate-pidless/after:adapter.list_instances#1", "found by tag, id not "
         "recorded", (GONE,)),
    Case("terminate-pidless/after:store.update#1", "id recorded; terminate not sent",
         (GONE,)),
    Case("terminate-pidless/after:adapter.terminate#1", "terminate sent, not confirmed",
         (GONE,)),
    # Fleet.restart: STARTING → restart
    Case("restart/after:store.transition#1", "STARTING committed; restart not sent", (RUN,)),
    Case("restart/after:adapter.restart#1", "restart sent, not observed", (RUN,)),
    # the orphan sweep, orphans=terminate: one insert (CREATING → CREATED → TERMINATING)
    Case("orphan/after:adapter.list_instances#1", "orphan listed; nothing written", (GONE,)),
    Case("orphan/before:store.insert#1", "at the adoption's commit", (GONE,)),
    Case("orphan/after:store.insert#1", "adopted into TERMINATING; terminate not sent",
         (GONE,)),
    Case("orphan/before:adapter.terminate#1", "TERMINATING; at the terminate call",
         (GONE,)),
    Case("orphan/after:adapter.terminate#1", "terminate sent, not confirmed", (GONE,)),
    Case("orphan/after:adapter.get#1", "confirming GET read, not applied", (GONE,)),
    # the orphan sweep, orphans=adopt: insert CREATING (+ id) → CREATED → …
    Case("orphan-adopt/after:store.insert#1", "CREATING row holding the id", (RUN,)),
    Case("orphan-adopt/after:store.transition#1", "CREATED", (RUN,)),
    # the resurrection sweep: a new row, linked to the TERMINATED one, into TERMINATING
    Case("resurrect/after:adapter.list_instances#1", "listed under a TERMINATED row; "
         "nothing written", (GONE, GONE)),
    Case("resurrect/after:store.insert#1", "new row TERMINATING; terminate not sent",
         (GONE, GONE)),
    Case("resurrect/after:adapter.terminate#1", "terminate sent, not confirmed",
         (GONE, GONE)),
    Case("resurrect/after:adapter.get#1", "confirming GET read, not applied", (GONE, GONE)),
    # the reconciler re-issuing the terminate of a TERMINATING row whose instance runs
    Case("reterminate/after:adapter.list_instances#1", "still listed running; nothing "
         "written", (GONE,)),
    Case("reterminate/after:store.apply_batch#1", "re-issue committed; not sent",
         (GONE,)),
    Case("reterminate/before:adapter.terminate_many#1", "at the re-issued call (one "
         "request for the pass's terminates)", (GONE,)),
    Case("reterminate/after:adapter.terminate_many#1", "re-issue sent and answered; the "
         "answer not applied", (GONE,)),
    Case("reterminate/after:store.apply_batch#2", "the answer applied as the look",
         (GONE,)),
    # the reconciler terminating a FAILED, billable row
    Case("failed/after:store.apply_batch#1", "TERMINATING committed; terminate not sent",
         (GONE,)),
    Case("failed/before:adapter.terminate_many#1", "TERMINATING; at the terminate call",
         (GONE,)),
    Case("failed/after:adapter.terminate_many#1", "terminate sent, not confirmed", (GONE,)),
]


@dataclass
class Outcome:
    backend: str
    point: str
    holds: str
    at_kill: str  # rows / provider phases when the worker died
    after: str  # rows once recovery reached a clean pass
    passes: int
    leaks: int  # instances seen billing without a live row, over every recovery pass
    illegal: int  # broken invariants (check_invariants) after recovery or clean-up
    left: int  # our instances the emulator still held after clean-up
    seconds: float
    calls: str  # the watched calls the worker made, the last one its point


#: One entry per case run, in order; printed as a table at the end of the module.
OUTCOMES: list[Outcome] = []


def _table(outcomes: list[Outcome]) -> str:
    head = ("backend", "point", "at the kill: rows | provider", "after recovery", "passes",
            "leaks", "illegal", "left", "s")
    rows = [head] + [(o.backend, o.point, o.at_kill, o.after, str(o.passes), str(o.leaks),
                      str(o.illegal), str(o.left), f"{o.seconds:.2f}") for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    backends = sorted({o.backend for o in outcomes})
    total = (f"{len({o.point for o in outcomes})} points x {len(backends)} backends "
             f"({', '.join(backends)}) = {len(outcomes)} kills; leaks "
             f"{sum(o.leaks for o in outcomes)}, illegal history rows "
             f"{sum(o.illegal for o in outcomes)}, left after clean-up "
             f"{sum(o.left for o in outcomes)}")
    described = {o.point: o.holds for o in outcomes}
    width = max(len(p) for p in described)
    legend = [f"{p.ljust(width)}  {holds}" for p, holds in described.items()]
    named = max(len(name) for name in SCRIPTS)
    scripts = [f"{name.ljust(named)}  {script.summary}" for name, script in SCRIPTS.items()]
    return "\n".join(["", "crash points:", *lines, total, "", "scripts:", *scripts, "",
                      "what each point holds:", *legend])


@pytest.fixture(scope="module", autouse=True)
def _print_table() -> Iterator[None]:
    yield
    if OUTCOMES:
        print(_table(OUTCOMES))


def test_the_points_are_many_distinct_and_name_every_script() -> None:
    points = [CrashPoint.parse(c.point) for c in CASES]
    assert len({str(p) for p in points}) == len(CASES) >= 25
    assert [str(p) for p in points] == [c.point for c in CASES]  # the names round-trip
    assert {p.script for p in points} == set(SCRIPTS) == set(SETUPS)


# ---- the world: an emulator on the real clock, a store, a Fleet to set things up --------


@dataclass
class World:
    url: str
    store: SqlInstanceStore
    cloud: SimulatedCloud
    server: EmulatorServer
    admin: EmulatorAdmin
    fleet: Fleet  # this process's, for setting up what a script needs

    def adapter(self) -> LambdaCloudAdapter:
        return LambdaCloudAdapter(KEY, base_url=self.server.url, rate_limits={},
                                  retry=RetryPolicy(attempts=3, initial=0.01), timeout=5.0)

    def live(self) -> list[dict[str, Any]]:
        """The emulator's own view: every instance not terminated or vanished."""
        instances: list[dict[str, Any]] = self.admin.state()["instances"]
        return instances


@pytest.fixture
def world(store_url: str) -> Iterator[World]:
    store = SqlInstanceStore(store_url, migrate=True)
    cloud = SimulatedCloud("lambda", clock=SystemClock(), seed=7, capabilities=LAMBDA_CAPS,
                           timings=TIMINGS)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY)
    admin = enable_admin(server, cloud)
    quiet_when_client_died(server)
    server.start()
    adapter = LambdaCloudAdapter(KEY, base_url=server.url, rate_limits={},
                                 retry=RetryPolicy(attempts=3, initial=0.01), timeout=5.0)
    # Set-up only: believes a not-found at once and holds no reading back.
    fleet = Fleet(store, [adapter], actor="setup", visibility_window=0.0, command_grace=0.0)
    try:
        yield World(store_url, store, cloud, server, admin, fleet)
    finally:
        adapter.close()
        store.close()
        server.stop()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.txt")
    try:
        yield z
    finally:
        z.close()


# ---- what each script needs, made in this process ----------------------------------------


def _nothing(world: World) -> dict[str, Any]:
    return {}


def _answer_lost(world: World) -> dict[str, Any]:
    world.server.inject(HttpFault("drop", method="POST", path_contains="launch",
                                  after_work=True))
    return {}


def _refused(world: World) -> dict[str, Any]:
    world.cloud.fail_next("launch", "capacity")
    return {}


def _first_unseen(world: World) -> dict[str, Any]:
    """The first launch's answer dropped after the work, and the tag search that follows
    it fails: its outcome stays unknown (CREATING, no id) while its machine runs."""
    world.server.inject(HttpFault("drop", method="POST", path_contains="launch",
                                  after_work=True))
    world.server.inject(HttpFault("5xx", times=3, method="GET", path_contains=LIST_PATH))
    return {}


def _running(world: World) -> dict[str, Any]:
    record = world.fleet.launch({**SPEC, "name": "crash-point"})
    world.fleet.wait_for(record.id, S.RUNNING, timeout=10, poll_interval=0.02)
    return {"instance_id": record.id}


def _in_doubt(world: World) -> dict[str, Any]:
    """A launch whose answer was lost and whose tag search failed too: CREATING, no id,
    and the instance running on the provider."""
    world.server.inject(HttpFault("drop", method="POST", path_contains="launch",
                                  after_work=True))
    world.server.inject(HttpFault("5xx", times=3, method="GET", path_contains=LIST_PATH))
    with pytest.raises(ProviderError):
        world.fleet.launch({**SPEC, "name": "crash-point"})
    world.server.clear_faults()
    [row] = world.store.list()
    assert (row.state, row.provider_instance_id) == (S.CREATING, None)
    assert [i["tag"] for i in world.live()] == [row.tag]
    return {"instance_id": row.id}


def _orphan(world: World) -> dict[str, Any]:
    """An instance with our tag and no row (another process's crash, say)."""
    world.cloud.spawn_untracked(ownership_tag(secrets.token_hex(8)))
    return {}


def _wrongly_gone(world: World) -> dict[str, Any]:
    """A RUNNING instance whose row was concluded gone: TERMINATED while it bills."""
    made = _running(world)
    world.fleet.observe(made["instance_id"], Observation.absent(
        confirmed=True, reason="crash-point set-up: a wrong 'gone'"))
    [row] = world.store.list()
    assert row.state is S.TERMINATED
    assert [i["id"] for i in world.live()] == [row.provider_instance_id]
    return {}


def _terminate_refused(world: World) -> dict[str, Any]:
    """TERMINATING, the terminate refused (5xx) so the instance still runs; the backoff
    before the reconciler's re-issue already past."""
    made = _running(world)
    world.server.inject(HttpFault("5xx", times=3, method="POST", path_contains="terminate"))
    with pytest.raises(ProviderError):
        world.fleet.terminate(made["instance_id"])
    world.server.clear_faults()
    row = world.store.get(made["instance_id"])
    assert row.state is S.TERMINATING
    assert [i["id"] for i in world.live()] == [row.provider_instance_id]
    time.sleep(point_config("reterminate").terminate_backoff)
    return made


def _failed(world: World) -> dict[str, Any]:
    """A RUNNING instance that died: FAILED and billable, for the reconciler to end."""
    made = _running(world)
    row = world.store.get(made["instance_id"])
    assert row.provider_instance_id is not None
    world.cloud.kill(row.provider_instance_id)
    row = world.fleet.refresh(row.id)
    assert (row.state, row.billable) == (S.FAILED, True)
    return made


SETUPS: dict[str, Callable[[World], dict[str, Any]]] = {
    "launch": _nothing,
    "launch-lost": _answer_lost,
    "launch-refused": _refused,
    "place": _refused,
    "place-lost": _first_unseen,
    "heal": _in_doubt,
    "terminate": _running,
    "terminate-pidless": _in_doubt,
    "restart": _running,
    "orphan": _orphan,
    "orphan-adopt": _orphan,
    "resurrect": _wrongly_gone,
    "reterminate": _terminate_refused,
    "failed": _failed,
}


# ---- checks ------------------------------------------------------------------------------


def _live(row: InstanceRecord) -> bool:
    """Watched and meant to be ended if it bills: not TERMINATED, not a refused launch."""
    return row.state is not S.TERMINATED and not (row.state is S.FAILED and not row.billable)


def _unwatched(world: World) -> dict[str, str]:
    """Instances carrying our tag that bill with no live row holding their provider id:
    provider id → what the emulator says of it."""
    live = world.live()  # read first: no pass runs meanwhile, so rows cannot move on
    held = {r.provider_instance_id for r in world.store.list() if _live(r)}
    return {i["id"]: f"{i['phase']}, tag {i['tag']}" for i in live
            if (i["tag"] or "").startswith(TAG_PREFIX) and i["id"] not in held}


def _summary(row: InstanceRecord) -> str:
    text = row.state.name
    if row.state is S.FAILED:
        text += "/billable" if row.billable else "/unbillable"
    if row.provider_instance_id is None and _live(row):
        text += "/no-id"
    return text


def _rows(world: World) -> tuple[str, ...]:
    return tuple(sorted(_summary(r) for r in world.store.list()))


def _resurrections(world: World) -> list[tuple[str, str]]:
    """(new row, old row) for every row adopted as a resurrection; asserts each link
    names a TERMINATED row with the same tag."""
    rows = {r.id: r for r in world.store.list()}
    links = [(r.id, str(r.spec["resurrected"])) for r in rows.values()
             if "resurrected" in r.spec]
    for new, old in links:
        assert rows[old].state is S.TERMINATED and rows[old].tag == rows[new].tag
    return links


def _settled(row: InstanceRecord) -> bool:
    """Nothing left for the reconciler to finish on this row."""
    return row.state is S.RUNNING or not _live(row)


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


# ---- the test ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_crash_point(case: Case, world: World, zygote: Zygote) -> None:
    started = time.monotonic()
    point = CrashPoint.parse(case.point)
    extra = SETUPS[point.script](world)

    pid = zygote.start(db=world.url, base_url=world.server.url, key=KEY, actor="worker",
                       point=case.point, **extra)
    sig, code = zygote.reap(pid)
    said = zygote.said(pid, "point", "missed")
    assert sig == signal.SIGKILL and said is not None and said["event"] == "point", (
        f"{case.point}: the worker was not killed at its point (signal {sig}, exit {code}); "
        f"it said {said}\n{zygote.tail()}")
    assert said["point"] == case.point
    at_kill = (f"{' '.join(_rows(world)) or '-'} | "
               f"{' '.join(sorted(i['phase'] for i in world.live())) or '-'}")

    # Recover as a restarted operator would: a fresh Fleet and Reconciler, pass after pass
    # until a clean one. Nothing may bill without a live row after any of them.
    adapter = world.adapter()
    fleet = Fleet(world.store, [adapter], actor="recovery", command_grace=0.2,
                  visibility_window=VISIBILITY_WINDOW)
    reconciler = Reconciler(fleet, point_config(point.script), actor="recovery")
    leaks: dict[str, str] = {}  # instance → the first pass that left it unwatched, and how
    passes, clean, problems = 0, False, []
    deadline = time.monotonic() + SETTLE
    try:
        while not clean and time.monotonic() < deadline:
            report = reconciler.run_once()
            passes += 1
            for instance, seen in _unwatched(world).items():
                leaks.setdefault(instance, f"after pass {passes}: {seen}")
            problems = report.problems
            clean = (report.changes == [] and problems == []
                     and all(_settled(r) for r in world.store.list()))
            if not clean:
                time.sleep(PAUSE)
        after = _rows(world)
        illegal_after_recovery = check_invariants(world.store)
        links = _resurrections(world)

        # Clean up: terminate every row, passes until the provider holds nothing of ours.
        for row in world.store.list():
            if row.state is not S.TERMINATED:
                with contextlib.suppress(ProviderError):
                    fleet.terminate(row.id, reason="crash-point clean-up")
        deadline = time.monotonic() + CLEAN_UP
        while time.monotonic() < deadline:
            reconciler.run_once()
            if all(r.state is S.TERMINATED for r in world.store.list()) and not world.live():
                break
            time.sleep(PAUSE)
        left = world.live()
        unfinished = [_summary(r) for r in world.store.list() if r.state is not S.TERMINATED]
        illegal = sorted(set(illegal_after_recovery) | set(check_invariants(world.store)))
    finally:
        adapter.close()

    outcome = Outcome(_backend(world.url), case.point, case.holds, at_kill,
                      " ".join(after) or "-", passes, len(leaks), len(illegal), len(left),
                      time.monotonic() - started, " ".join(said["calls"]))
    OUTCOMES.append(outcome)
    print(f"\n{outcome.backend} {case.point} ({case.holds}; calls: {outcome.calls}): at the "
          f"kill {at_kill}; after {passes} recovery passes {outcome.after}; leaks "
          f"{len(leaks)}; illegal {len(illegal)}; left {len(left)} ({outcome.seconds:.2f}s)")

    assert leaks == {}, f"{case.point}: billing without a live row: {leaks}"
    assert illegal == []
    assert clean, (f"{case.point}: no clean recovery pass in {SETTLE}s; rows "
                   f"{after}, last problems {problems}")
    assert after == case.after, f"{case.point}: rows after recovery"
    # a resurrected instance is recorded on a new row linked to the old, which stays ended
    assert len(links) == (1 if point.script == "resurrect" else 0), links
    assert left == [] and unfinished == [], f"{case.point}: after clean-up"
