"""Placement figures: what one placement with failover costs in API calls, and placements
at a hundred at a time beside plain launches, over the four providers' emulators.

A *world* is the four providers (Lambda, Novita, RunPod, Vast), each a SimulatedCloud
with the catalog ``gpufsm emulator`` serves (``PROFILES``) behind its dialect's HTTP
emulator on loopback, driven by the real adapter (``rate_limits={}``: the figure is
gpufsm's, not the providers' rate limits), one store, and one Fleet over the four.
Every request an adapter sends is counted by operation through its seam's observers
(retries included), and cross-checked against what each emulator answered.

API calls. The catalog is read once (as a burst's first placement reads it); then the
three cheapest offers the placement will try refuse, each in its provider's own words
through the SimulatedCloud: the cheapest region sold out since the catalog was read,
the next refused for quota, the third refused for capacity by the create endpoint
itself. One placement follows. The bound counts each attempt as the requests one launch
takes on that provider (``LAUNCH_REQUESTS``: Vast searches the ask and then accepts it,
Novita looks the product up and then creates, Lambda and RunPod post once), plus one
listing per attempt whose outcome was unknown (the tag search that settles it). A GET
of an offer or an instance, or a catalog read again, is a failure of the row.

Concurrent placements. One shared Fleet (one catalog cache, one store) and a thread
pool; every launch request that reaches a provider draws, from a seeded generator,
whether it is refused (capacity or quota), answered 504 after the machine was made (the
answer lost), or answered 504 before anything was made. Reads lag creates on every
cloud, so the tag search after a lost answer finds nothing and the attempt stays
tracked: its machine is the one a reconcile pass must find and terminate. After the
burst, reconcile passes run (the fake clock moved past the lag and the deadlines) until
nothing is CREATING, TERMINATING or surplus; then every live machine on the emulators is
matched with the rows. Beside it, in the same round on a fresh world, plain
``fleet.launch(spec)`` of the cheapest offer, no faults, same threads.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from gpufsm import Fleet
from gpufsm.adapters import HasSeam, ProviderAdapter, RetryPolicy, adapter_class, tag_from_name
from gpufsm.cli._emulator import PROFILES
from gpufsm.engine import PlacementPolicy
from gpufsm.engine._placement import describe, spec_for
from gpufsm.errors import PlacementFailed, ValidationError
from gpufsm.machines import InstanceState
from gpufsm.placement import Offer, Requirements, rank
from gpufsm.reconcile import ReconcileConfig, Reconciler
from gpufsm.store import InstanceRecord, SqlInstanceStore
from gpufsm.testing import FakeClock, SimInstance, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

__all__ = [
    "A100",
    "LAUNCH_REQUESTS",
    "TEMPLATE",
    "ApiCallsResult",
    "ConcurrentResult",
    "Faults",
    "World",
    "build_world",
    "postgres_databases",
    "run_api_calls",
    "run_concurrent",
    "sqlite_databases",
]

S = InstanceState
KEY = "bench-not-a-secret"
A100 = Requirements(gpus=("A100",))
#: Everything of the spec but what each offer chooses. The container clouds need an
#: image; Lambda boots VM images and refuses one, so its offers are left out by the
#: placement's own check before any call (see the README).
TEMPLATE: dict[str, Any] = {"name": "bench", "ssh_key_names": ["bench"],
                            "image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"}
#: Requests one launch takes on each provider's API, as its adapter makes it: Vast
#: searches for the ask, then accepts it; Novita looks the product up, then creates.
LAUNCH_REQUESTS: Mapping[str, int] = {"lambda": 1, "runpod": 1, "vastai": 2, "novita": 2}
#: Operations that read a provider's catalog (RunPod's is two requests: the v2 catalog
#: and the GraphQL query for spot prices).
CATALOG_OPS = frozenset({"instance_types", "spot_prices", "search", "products"})
#: Seconds after a create during which reads do not show the machine (every cloud).
LAG = 300.0
WORKERS = 16


# ---- a world -------------------------------------------------------------------------------


class Faults:
    """Seeded draws for every launch request that reaches a provider: refused for
    capacity or quota, answered 504 after the machine was made, 504 before, or none.

    Called by the SimulatedCloud with its lock held, so the fault it queues is the one
    this very request consumes.
    """

    def __init__(self, seed: int, *, refuse: float = 0.2, lost: float = 0.1,
                 timeout: float = 0.05) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.refuse, self.lost, self.timeout = refuse, lost, timeout
        self.drawn: Counter[str] = Counter()

    def __call__(self, cloud: SimulatedCloud) -> None:
        with self._lock:
            x = self._rng.random()
            kind = ("capacity" if x < self.refuse / 2 else
                    "quota" if x < self.refuse else
                    "lost" if x < self.refuse + self.lost else
                    "timeout" if x < self.refuse + self.lost + self.timeout else "ok")
            self.drawn[kind] += 1
        if kind in ("capacity", "quota"):
            cloud.fail_next("launch", kind)
        elif kind != "ok":
            cloud.fail_next("launch", "timeout", after_work=kind == "lost")


@dataclass
class World:
    """The four providers on loopback, one store, one Fleet over them."""

    clock: FakeClock
    clouds: dict[str, SimulatedCloud]
    servers: dict[str, EmulatorServer]
    adapters: dict[str, ProviderAdapter]
    store: SqlInstanceStore
    fleet: Fleet
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (provider, op) sent
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, provider: str, op: str, _outcome: str) -> None:
        with self._lock:
            self.ops[(provider, op)] += 1

    def take_ops(self) -> dict[str, Counter[str]]:
        """Requests sent since the last call, per provider and operation; then zero."""
        with self._lock:
            out: dict[str, Counter[str]] = {name: Counter() for name in self.clouds}
            for (provider, op), n in self.ops.items():
                out[provider][op] += n
            self.ops.clear()
        return out

    def answered(self) -> dict[str, int]:
        """Requests each emulator answered (its own count), for the cross-check."""
        return {name: sum(s.counts.values()) for name, s in self.servers.items()}

    def seam_calls(self) -> dict[str, int]:
        return {name: cast(HasSeam, a).seam.calls for name, a in self.adapters.items()}

    def close(self) -> None:
        for adapter in self.adapters.values():
            close = getattr(adapter, "close", None)
            if close is not None:
                close()
        for server in self.servers.values():
            server.stop()
        self.store.close()


def build_world(url: str, *, faults: Faults | None = None, lag: float = 0.0,
                seed: int = 5) -> World:
    """The four emulators and their adapters; ``faults`` drawn for every launch."""
    clock = FakeClock()
    clouds: dict[str, SimulatedCloud] = {}
    servers: dict[str, EmulatorServer] = {}
    adapters: dict[str, ProviderAdapter] = {}
    store = SqlInstanceStore(url, migrate=True)
    try:
        for name, profile in PROFILES.items():
            holder: list[SimulatedCloud] = []

            def on_call(op: str, holder: list[SimulatedCloud] = holder) -> None:
                if op == "launch" and faults is not None:
                    faults(holder[0])

            cloud = SimulatedCloud(name, clock=clock, seed=seed,
                                   capabilities=profile.capabilities,
                                   instance_types=profile.offers, id_prefix=profile.id_prefix,
                                   on_call=on_call)
            holder.append(cloud)
            cloud.lag_reads(lag)
            clouds[name] = cloud
            servers[name] = EmulatorServer(make_dialect(name, cloud), api_key=KEY).start()
            adapters[name] = adapter_class(name)(
                SecretStr(KEY), base_url=servers[name].url, clock=clock, rate_limits={},
                retry=RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05))
        world = World(clock, clouds, servers, adapters, store,
                      Fleet(store, adapters, clock=clock, actor="bench"))
    except BaseException:
        for adapter in adapters.values():
            getattr(adapter, "close", lambda: None)()
        for server in servers.values():
            server.stop()
        store.close()
        raise
    for adapter in adapters.values():
        cast(HasSeam, adapter).seam.observers.append(world.count)
    return world


def tryable(world: World, requirements: Requirements = A100,
            template: Mapping[str, Any] = TEMPLATE) -> list[Offer]:
    """The offers a placement will try, in its order: matching, cheapest first, and
    accepted by the provider's adapter as launched from ``template`` (no request sent)."""
    out = []
    for offer in rank(world.fleet.catalog.offers().offers, requirements):
        try:
            world.adapters[offer.provider].validate(spec_for(template, offer, requirements))
        except ValidationError:
            continue
        out.append(offer)
    return out


def _cloud_type(name: str, offer: Offer) -> str:
    """The simulated cloud's name for an offer's type (Vast's adapter says ``A100 SXM4``
    for the cloud's ``A100_SXM4``)."""
    def norm(text: str) -> str:
        return text.replace("_", " ").casefold()
    for t in PROFILES[name].offers:
        if norm(t.name) == norm(offer.instance_type):
            return t.name
    raise LookupError(f"{name} has no type {offer.instance_type!r}")


# ---- API calls of one placement ---------------------------------------------------------------


@dataclass(frozen=True)
class ApiCallsResult:
    catalog: dict[str, Counter[str]]  # provider → operation → requests, the catalog read
    placement: dict[str, Counter[str]]  # the same during the placement
    attempts: list[tuple[str, str]]  # (provider, what happened) in the order tried
    refused: list[str]  # the three refusing offers and how each refused
    tried_as_arranged: bool  # the attempts were the three refusing offers, then a winner
    winner: str
    matching: int  # offers the ranking kept (what a GET per offer would read)
    settlements: int  # attempts whose outcome was unknown
    seconds: float  # wall time of the placement (the catalog already read)
    answered: dict[str, int]  # requests each emulator answered, catalog and placement
    sent: dict[str, int]  # requests each adapter's seam sent

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in (*self.catalog.values(), *self.placement.values()))

    @property
    def catalog_calls(self) -> int:
        return sum(sum(c.values()) for c in self.catalog.values())

    @property
    def launch_requests(self) -> int:
        return sum(LAUNCH_REQUESTS[p] for p, _ in self.attempts)

    @property
    def bound(self) -> int:
        """Catalog calls + each attempt's launch requests + one listing per settlement."""
        return self.catalog_calls + self.launch_requests + self.settlements

    @property
    def strict_bound(self) -> int:
        """The same with every attempt counted as one request."""
        return self.catalog_calls + len(self.attempts) + self.settlements

    @property
    def gets(self) -> int:
        """GETs of one offer or instance, and catalogs read again: each must be 0."""
        again = sum(n for p, c in self.placement.items() for op, n in c.items()
                    if op in CATALOG_OPS and op not in _PRE_LAUNCH.get(p, ()))
        return again + sum(c["get"] for c in self.placement.values())

    @property
    def naive(self) -> int:
        """The pattern the target forbids: one GET per matching offer, besides the rest."""
        return self.total + self.matching

    @property
    def ok(self) -> bool:
        return (self.total <= self.bound and self.gets == 0 and self.tried_as_arranged
                and self.answered == self.sent)


#: Reads an adapter makes as part of one launch (not a catalog read again).
_PRE_LAUNCH: Mapping[str, tuple[str, ...]] = {"vastai": ("search",), "novita": ("products",)}


def _arrange_refusals(world: World, offers: list[Offer]) -> list[str]:
    """The three cheapest offers refuse, each a different way, in its provider's words."""
    ways: list[tuple[str, Callable[[SimulatedCloud, str, str], None]]] = [
        ("capacity: its region sold out since the catalog was read",
         lambda c, t, r: c.sell_out(t, r)),
        ("quota: the provider refuses the launch for quota",
         lambda c, t, r: c.refuse_quota(t, r)),
        ("capacity: the create request itself is refused",
         lambda c, t, r: c.fail_next("launch", "capacity")),
    ]
    out = []
    for offer, (how, arrange) in zip(offers, ways, strict=False):
        arrange(world.clouds[offer.provider], _cloud_type(offer.provider, offer),
                offer.region or "")
        out.append(f"{describe(offer)} — {how}")
    return out


def run_api_calls(url: str, *, requirements: Requirements = A100,
                  template: Mapping[str, Any] = TEMPLATE) -> ApiCallsResult:
    """One placement over the four emulators with the three cheapest offers refusing."""
    world = build_world(url)
    try:
        world.fleet.catalog.offers()  # what a burst's first placement does first
        catalog = world.take_ops()
        offers = tryable(world, requirements, template)
        if len(offers) < 4:
            raise AssertionError(f"only {len(offers)} offers can be tried: the row needs "
                                 "three to refuse and one to place")
        refused = _arrange_refusals(world, offers[:3])
        start = time.perf_counter()
        record = world.fleet.launch(requirements, template=template)
        seconds = time.perf_counter() - start
        placement = world.take_ops()
        rows = list(world.store.attempts(record.placement_id or ""))
        attempts = [(r.provider, _outcome(r, record)) for r in rows]
        arranged = ([(r.provider, r.instance_type, r.region) for r in rows]
                    == [(o.provider, o.instance_type, o.region) for o in offers[:4]]
                    and rows[-1].id == record.id)
        unknown = sum(1 for r in rows if r.id != record.id and r.billable)
        return ApiCallsResult(
            catalog=catalog, placement=placement, attempts=attempts, refused=refused,
            tried_as_arranged=arranged, winner=_where(record), matching=len(offers),
            settlements=unknown, seconds=seconds, answered=world.answered(),
            sent=world.seam_calls())
    finally:
        world.close()


def _where(record: InstanceRecord) -> str:
    return f"{record.provider}/{record.instance_type}@{record.region}"


def _outcome(row: InstanceRecord, kept: InstanceRecord) -> str:
    if row.id == kept.id:
        return f"{_where(row)} placed"
    return f"{_where(row)} {row.state.value}: {(row.last_error or '?')[:120]}"


def describe_ops(ops: Mapping[str, Counter[str]]) -> str:
    """``vastai 3 (search 2, launch 1)`` per provider with any request."""
    parts = []
    for name in sorted(ops):
        c = ops[name]
        if sum(c.values()):
            inner = ", ".join(f"{op} {n}" for op, n in sorted(c.items()))
            parts.append(f"{name} {sum(c.values())} ({inner})")
    return "; ".join(parts) or "none"


# ---- concurrent placements -------------------------------------------------------------------


#: Yields a fresh database URL per world (the label names it).
Databases = Callable[[str], contextlib.AbstractContextManager[str]]


def sqlite_databases(workdir: Path) -> Databases:
    @contextlib.contextmanager
    def db(label: str) -> Iterator[str]:
        path = workdir / f"placement-{label}-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return db


def postgres_databases(pg_url: str) -> Databases:
    from bench_store import postgres_schema

    @contextlib.contextmanager
    def db(_label: str) -> Iterator[str]:
        with postgres_schema(pg_url) as (url, _schema):
            yield url
    return db


@dataclass(frozen=True)
class Burst:
    """One side of one round: n requests in the pool, and what became of them."""

    seconds: float
    done: int  # placed (placements) or launched (plain)
    failed: int  # PlacementFailed: every attempt refused or unknown
    errors: list[str]  # anything else raised (must be empty)
    attempts: int  # instance rows written
    in_flight_surplus: int  # placements with more than one live machine before the passes
    passes: int  # reconcile passes until settled
    settled: bool
    doubles: int  # requests with more than one live machine after the passes
    leaked: int  # live machines not held by a live, billable row
    faults: Counter[str]
    requests: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class ConcurrentResult:
    placements: list[Burst]
    launches: list[Burst]
    workers: int

    @property
    def ratios(self) -> list[float]:
        return [p.rate / b.rate for p, b in zip(self.placements, self.launches, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def doubles(self) -> int:
        return sum(b.doubles for b in (*self.placements, *self.launches))

    @property
    def leaked(self) -> int:
        return sum(b.leaked for b in (*self.placements, *self.launches))

    @property
    def errors(self) -> list[str]:
        return [e for b in (*self.placements, *self.launches) for e in b.errors]

    @property
    def ok(self) -> bool:
        return (self.doubles == 0 and self.leaked == 0 and not self.errors
                and all(b.settled for b in (*self.placements, *self.launches)))


def _pool(n: int, workers: int, one: Callable[[int], str]) -> tuple[float, Counter[str],
                                                                     list[str]]:
    """Run ``one(i)`` for i < n on ``workers`` threads; seconds, outcomes, errors."""
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        futures = [pool.submit(one, i) for i in range(n)]
        for f in futures:
            exc = f.exception()
            if exc is None:
                outcomes[f.result()] += 1
            else:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        seconds = time.perf_counter() - start
    return seconds, outcomes, errors


def _live(world: World) -> list[tuple[str, SimInstance]]:
    return [(name, inst) for name, cloud in world.clouds.items()
            for inst in cloud.live_instances()]


def _tag(inst: SimInstance) -> str | None:
    return inst.tag or tag_from_name(inst.name)


def _machines_per_request(world: World) -> Counter[str]:
    """Live machines per request: a placement's attempts share its id; a plain launch
    is its own request."""
    owner = {r.tag: r.placement_id or r.id for r in world.store.list()}
    found = (owner.get(_tag(inst) or "") for _, inst in _live(world))
    return Counter(o for o in found if o is not None)  # the others are leaks, counted apart


def _leaked(world: World) -> int:
    held = {r.tag for r in world.store.list() if r.billable and r.state is not S.TERMINATED}
    return sum(1 for _, inst in _live(world) if _tag(inst) not in held)


def _settle(world: World, *, max_passes: int = 24) -> tuple[int, bool]:
    """Reconcile passes, the clock moved past the read lag and a pass's worth between,
    until nothing is CREATING, TERMINATING or surplus."""
    reconciler = Reconciler(world.fleet, ReconcileConfig(), actor="bench-reconciler")
    world.clock.advance(LAG + 1)
    for n in range(1, max_passes + 1):
        reconciler.run_once()
        world.clock.advance(120)
        busy = world.store.list(states=[S.CREATING, S.TERMINATING])
        if not busy and not world.store.surplus_rows():
            return n, True
    return max_passes, False


def _burst(db: Databases, label: str, n: int, workers: int, seed: int, *,
           place: bool, rates: Mapping[str, float]) -> Burst:
    faults = Faults(seed, **rates) if place else None
    with db(label) as url:
        world = build_world(url, faults=faults, lag=LAG if place else 0.0)
        try:
            policy = PlacementPolicy(block_for=0)
            if place:
                def one(_i: int) -> str:
                    try:
                        world.fleet.launch(A100, template=TEMPLATE, policy=policy)
                    except PlacementFailed:
                        return "failed"
                    return "placed"
            else:
                # the cheapest offer the placement would try first, named outright
                offer = tryable(world)[0]
                spec = spec_for(TEMPLATE, offer, A100)
                world.take_ops()

                def one(_i: int) -> str:
                    world.fleet.launch(spec)
                    return "placed"
            seconds, outcomes, errors = _pool(n, workers, one)
            surplus = sum(1 for c in _machines_per_request(world).values() if c > 1)
            passes, settled = _settle(world)
            doubles = sum(1 for c in _machines_per_request(world).values() if c > 1)
            return Burst(
                seconds=seconds, done=outcomes["placed"], failed=outcomes["failed"],
                errors=errors, attempts=len(world.store.list()), in_flight_surplus=surplus,
                passes=passes, settled=settled, doubles=doubles, leaked=_leaked(world),
                faults=faults.drawn if faults else Counter(), requests=n)
        finally:
            world.close()


def run_concurrent(db: Databases, *, placements: int, rounds: int, workers: int = WORKERS,
                   seed: int = 13, refuse: float = 0.2, lost: float = 0.1,
                   timeout: float = 0.05) -> ConcurrentResult:
    """``rounds`` rounds of ``placements`` placements and as many plain launches, each on
    a fresh world, swapping which goes first each round. The rates are the chances that
    a launch request is refused (capacity or quota, half each), answered 504 after the
    machine was made, or 504 before (see ``Faults``)."""
    rates = {"refuse": refuse, "lost": lost, "timeout": timeout}
    ours: list[Burst] = []
    plain: list[Burst] = []
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for place in order:
            burst = _burst(db, f"{'place' if place else 'plain'}-{r}", placements, workers,
                           seed + r, place=place, rates=rates)
            (ours if place else plain).append(burst)
    return ConcurrentResult(ours, plain, workers)


def describe_burst(b: Burst) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(b.faults.items()))
    return (f"{b.done} placed, {b.failed} failed (every attempt refused), "
            f"{b.attempts} attempt rows ({b.attempts / b.requests:.2f} per placement); "
            f"launch requests drew: {faults}; {b.in_flight_surplus} placements had a second "
            f"machine (a lost answer) before the passes; {b.passes} reconcile passes")
