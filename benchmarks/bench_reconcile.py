"""Reconcile figures: whole passes, the API calls they make, and daemons sharing PostgreSQL.

A *world* is a simulated cloud with ``n`` instances of ours, all running, and a store
whose rows say exactly what the provider's adapter reports (seeded from one listing
through that adapter, so a quiet row really is quiet). Then *drift*: 1 % of the rows
disagree with the provider, half because an instance finished booting (the row says
STARTING, the provider running: one observed transition, no action) and half because
an instance died (the provider says unhealthy: observed_failed, then the step
terminates it — one action; the pass's terminates go out together, one request per 100
ids where the adapter can batch them, Lambda's, whose answer is the read-back). A pass is
then one ``Reconciler.run_once``, timed in wall time: it waits on the database's fsync
and, over HTTP, on the emulator.

Over HTTP the provider is the Lambda-dialect emulator on loopback, in this process (its
serving time is reported beside the pass), with ``LambdaCloudAdapter(rate_limits={})``:
the figure is gpufsm's, not Lambda's one request per second.

Beside each pass, its limit: the raw pass (``raw_pass.py``) on the same world, just
before gpufsm's, its writes undone in between; the rows give gpufsm's ratio to it.

Daemons: the same world on PostgreSQL, a third of the instances dead, and either one
daemon or three (processes, each with its own store, adapter and lease name, started
and connected before the clock starts) running one pass at the same moment. Actions are
instances the emulator terminated; a *double* is a second terminate for the same
instance. By default each terminate is a request of its own, as on Vast.ai, RunPod and
Novita, which have no batched terminate: that is the work sharing rows across daemons
speeds up. ``batched=True`` keeps Lambda's batched terminate (100 ids a request), where
one daemon's pass is one request however many die.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bench_store import postgres_schema, seed
from pydantic import SecretStr
from raw_pass import LAMBDA_STATES, SIM_STATES, RawRun, http_listing, sim_listing, time_raw_pass

from gpufsm import Fleet
from gpufsm.adapters import ProviderAdapter, ProviderInstance, RetryPolicy
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.machines import Event, InstanceState
from gpufsm.reconcile import PassReport, ReconcileConfig, Reconciler
from gpufsm.store import InstanceRecord, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
    make_dialect,
)

__all__ = ["DaemonResult", "PassResult", "World", "build_world", "run_daemons", "run_passes"]

S = InstanceState
E = Event
KEY = "bench-not-a-secret"
DRIFT = 0.01


@dataclass
class World:
    """One cloud, its rows, and the Fleet a daemon drives them with."""

    clock: FakeClock
    cloud: SimulatedCloud
    store: SqlInstanceStore
    adapter: ProviderAdapter
    server: EmulatorServer | None
    booted: list[str]  # row ids the provider now calls running (rows say STARTING)
    died: list[str]  # provider ids of instances that died (to be terminated)
    serving: list[float] = field(default_factory=list)  # emulator seconds per request
    terminates: Counter[str] = field(default_factory=Counter)  # pid → terminate requests

    def fleet(self, actor: str = "bench", store: SqlInstanceStore | None = None,
              adapter: ProviderAdapter | None = None) -> Fleet:
        return Fleet(store or self.store, [adapter or self.adapter], clock=self.clock,
                     actor=actor)

    def new_adapter(self) -> ProviderAdapter:
        if self.server is None:
            return self.cloud
        return LambdaCloudAdapter(SecretStr(KEY), base_url=self.server.url, rate_limits={},
                                  clock=self.clock,
                                  retry=RetryPolicy(attempts=3, initial=0.01))

    def close(self) -> None:
        if isinstance(self.adapter, LambdaCloudAdapter):
            self.adapter.close()
        if self.server is not None:
            self.server.stop()
        self.store.close()


def _serve_timed(server: EmulatorServer, serving: list[float],
                 terminates: Counter[str]) -> None:
    """Time the emulator's own work, and count terminates per instance (doubles)."""
    dialect = server.dialect
    real = dialect.handle
    lock = threading.Lock()

    def handle(request: EmulatorRequest) -> EmulatorResponse:
        start = time.perf_counter()
        try:
            return real(request)
        finally:
            took = time.perf_counter() - start
            with lock:
                serving.append(took)

    def count(request: EmulatorRequest, response: EmulatorResponse) -> None:
        if (request.method == "POST" and response.status == 200
                and request.path.endswith("/instance-operations/terminate")):
            with lock:
                terminates.update(request.json()["instance_ids"])

    dialect.handle = handle  # type: ignore[method-assign]
    server.hooks.append(count)


def _rows(listing: Sequence[ProviderInstance], provider: str, clock: FakeClock,
          booted: set[int]) -> list[InstanceRecord]:
    """Rows that say exactly what the adapter reports; ``booted`` ones still STARTING."""
    since = clock.now() - timedelta(minutes=10)
    out = []
    for i, inst in enumerate(sorted(listing, key=lambda x: x.provider_instance_id)):
        starting = i in booted
        assert inst.tag is not None
        token = inst.tag.removeprefix("gpufsm-")
        out.append(InstanceRecord(
            id=str(uuid.UUID(int=(1 << 100) | i)), provider=provider,
            state=S.STARTING if starting else S.RUNNING, version=3, client_token=token,
            tag=inst.tag, name=inst.name, billable=True,
            spec={"provider": provider, "instance_type": inst.instance_type,
                  "region": inst.region, "name": inst.name},
            created_at=since + timedelta(microseconds=i), updated_at=since,
            state_entered_at=since, provider_instance_id=inst.provider_instance_id,
            region=inst.region, instance_type=inst.instance_type,
            price_per_hour=inst.price_per_hour, ip=None if starting else inst.ip,
            last_raw_status="booting" if starting else inst.raw_status, last_seen_at=since,
            previous_state=S.CREATED if starting else S.STARTING,
            entered_by=E.OBSERVED_STARTING if starting else E.OBSERVED_RUNNING,
        ))
    return out


def build_world(n: int, *, url: str, http: bool, dead_fraction: float = DRIFT / 2,
                booted_fraction: float = DRIFT / 2, seed_: int = 7) -> World:
    """``n`` running instances and their rows; then some boot and some die."""
    clock = FakeClock()
    provider = "lambda" if http else "sim"
    cloud = SimulatedCloud(provider, clock=clock, seed=seed_)
    for i in range(n):
        cloud.spawn_untracked(f"gpufsm-w{i:09d}")
    cloud.settle(600)
    server = None
    serving: list[float] = []
    terminates: Counter[str] = Counter()
    adapter: ProviderAdapter = cloud
    if http:
        server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
        _serve_timed(server, serving, terminates)
    store = SqlInstanceStore(url, migrate=True)
    world = World(clock, cloud, store, adapter, server, [], [], serving, terminates)
    world.adapter = world.new_adapter()
    try:
        listing = world.adapter.list_instances()
        step_booted = max(1, round(1 / booted_fraction)) if booted_fraction else 0
        step_dead = max(1, round(1 / dead_fraction)) if dead_fraction else 0
        booted = {i for i in range(n) if step_booted and i % step_booted == 1}
        rows = _rows(listing, provider, clock, booted)
        seed(store, rows)
        world.booted = [rows[i].id for i in sorted(booted)]
        for i, row in enumerate(rows):
            if step_dead and i % step_dead == step_dead // 2 and i not in booted:
                assert row.provider_instance_id is not None
                cloud.kill(row.provider_instance_id)
                world.died.append(row.provider_instance_id)
        cloud.calls.clear()
        serving.clear()
        if server is not None:
            server.counts.clear()
    except BaseException:
        world.close()
        raise
    return world


# ---- one pass ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PassResult:
    instances: int
    wall: list[float]  # seconds per round
    cpu: list[float]
    serving: list[float]  # emulator seconds per round (0 without HTTP)
    listing: list[float]  # seconds in adapter.list_instances per round (HTTP + parsing)
    parsing: list[float]  # of which the adapter validating the listing's JSON (HTTP only)
    calls: Counter[str]  # API calls of the last round, by kind
    report: PassReport  # of the last round
    drifted: int  # rows that disagreed with the provider
    actions: int  # terminates issued in the last round
    raw: list[RawRun]  # the raw pass on the same world, just before gpufsm's, per round

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def ratios(self) -> list[float]:
        """gpufsm's pass over the raw pass, per round (each pair shares one world)."""
        return [w / r.seconds for w, r in zip(self.wall, self.raw, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def raw_median(self, phase: str = "seconds") -> float:
        return float(statistics.median(getattr(r, phase) for r in self.raw))

    @property
    def spread(self) -> str:
        return (f"{min(self.wall):.2f}-{max(self.wall):.2f} s over {len(self.wall)} "
                f"round{'s' if len(self.wall) > 1 else ''}")


def _calls(world: World) -> Counter[str]:
    """API calls by kind: pages (listing), terminate, get, other."""
    if world.server is None:
        raw = world.cloud.calls
        return Counter({"pages": raw["list"], "terminate": raw["terminate"],
                        "get": raw["get"],
                        "other": sum(raw.values()) - raw["list"] - raw["terminate"]
                        - raw["get"]})
    out: Counter[str] = Counter()
    for key, count in world.server.counts.items():
        method, path = key.split(" ", 1)
        if method == "GET" and path.endswith("/instances"):
            out["pages"] += count
        elif path.endswith("/instance-operations/terminate"):
            out["terminate"] += count
        elif method == "GET" and "/instances/" in path:
            out["get"] += count
        else:
            out["other"] += count
    return out


def run_passes(n: int, *, workdir: Path, http: bool, rounds: int,
               dead_fraction: float = DRIFT / 2, booted_fraction: float = DRIFT / 2,
               ) -> PassResult:
    """``rounds`` fresh worlds of ``n`` instances, one drifted pass timed in each."""
    wall: list[float] = []
    cpu: list[float] = []
    serving: list[float] = []
    listing: list[float] = []
    parsing: list[float] = []
    raw: list[RawRun] = []
    report: PassReport | None = None
    calls: Counter[str] = Counter()
    drifted = actions = 0
    for r in range(rounds):
        db = workdir / f"pass-{'http' if http else 'sim'}-{n}-{r}.db"
        world = build_world(n, url=f"sqlite:///{db}", http=http,
                            dead_fraction=dead_fraction, booted_fraction=booted_fraction,
                            seed_=r + 1)
        try:
            reconciler = Reconciler(world.fleet("bench-daemon"), ReconcileConfig(),
                                    actor="bench-daemon")
            raw.append(_raw_round(world, f"sqlite:///{db}"))
            listed = _time_listing(world.adapter)
            parsed = _time_parsing(world.adapter)
            gc.collect()  # as before the raw pass: neither pays for the other's garbage
            start, start_cpu = time.perf_counter(), time.process_time()
            report = reconciler.run_once()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            serving.append(sum(world.serving))
            listing.append(sum(listed))
            parsing.append(sum(parsed))
            if not report.ok:
                raise AssertionError(f"the benchmark pass reported problems: "
                                     f"{report.problems[:3]}")
            calls = _calls(world)
            drifted = len(world.booted) + len(world.died)
            actions = len(world.died)  # instances terminated (not requests: batched)
            _check_outcome(world, report)
        finally:
            world.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert report is not None
    return PassResult(n, wall, cpu, serving, listing, parsing, calls, report, drifted,
                      actions, raw)


def _raw_round(world: World, url: str) -> RawRun:
    """The raw pass on this world's database and provider, then the world as it was:
    its writes undone, and the calls it made forgotten (row 12 counts gpufsm's alone)."""
    client = None
    if world.server is None:
        provider, listing, states = "sim", sim_listing(world.cloud), SIM_STATES
    else:
        client = httpx.Client(base_url=world.server.url, timeout=30.0,
                              headers={"Authorization": f"Bearer {KEY}"})
        provider, states = "lambda", LAMBDA_STATES
        listing = http_listing(client, "/api/v1/instances")
    try:
        return time_raw_pass(url, provider=provider, listing=listing,
                             states=states, now=world.clock.now(),
                             drifted_ids=world.booted, drifted_pids=world.died)
    finally:
        if client is not None:
            client.close()
        world.cloud.calls.clear()
        world.serving.clear()
        if world.server is not None:
            world.server.counts.clear()


def _time_parsing(adapter: ProviderAdapter) -> list[float]:
    """Time an HTTP adapter's validation of listing answers (its ``_parse(…, "list")``)."""
    spent: list[float] = []
    real = getattr(adapter, "_parse", None)
    if real is None:
        return spent

    def timed(response: Any, model: Any, op: str) -> Any:
        start = time.perf_counter()
        try:
            return real(response, model, op)
        finally:
            if op == "list":
                spent.append(time.perf_counter() - start)

    adapter._parse = timed  # type: ignore[attr-defined]
    return spent


def _time_listing(adapter: ProviderAdapter) -> list[float]:
    """Time the adapter's listing calls from now on (the pass makes one per provider)."""
    spent: list[float] = []
    real = adapter.list_instances

    def timed() -> Sequence[ProviderInstance]:
        start = time.perf_counter()
        try:
            return real()
        finally:
            spent.append(time.perf_counter() - start)

    adapter.list_instances = timed  # type: ignore[method-assign]
    return spent


def _check_outcome(world: World, report: PassReport) -> None:
    """The pass did what the drift asks: booted rows RUNNING, dead ones terminated."""
    events = Counter(c.event for c in report.changes)
    want = {"observed_running": len(world.booted), "observed_failed": len(world.died),
            "terminate": len(world.died)}
    got = {k: events[k] for k in want}
    if got != want:
        raise AssertionError(f"pass changes {dict(events)}, expected {want}")


# ---- daemons on PostgreSQL --------------------------------------------------------------


@dataclass(frozen=True)
class DaemonResult:
    one: list[float]  # actions/s of one daemon, per round
    three: list[float]  # actions/s of three daemons, per round
    ratios: list[float]
    actions: int  # per configuration and round
    doubles: int  # second terminates of one instance, over every round
    instances: int
    latency: float  # seconds the emulator waited before each answer

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


class _OneByOne:
    """Lambda's adapter as Vast's, RunPod's and Novita's are: no ``terminate_many``, so
    the engine sends each terminate alone (``BatchTerminate`` is checked by attribute)."""

    def __init__(self, inner: LambdaCloudAdapter) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "terminate_many":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _daemon_child(url: str, base_url: str, name: str, batch: int | None, batched: bool,
                  now: datetime, ready: Any, go: Any, results: Any) -> None:
    """One reconcile daemon, a process of its own as in production: one pass on ``go``."""
    store = SqlInstanceStore(url)
    clock = FakeClock(now)
    adapter = LambdaCloudAdapter(SecretStr(KEY), base_url=base_url, rate_limits={},
                                 clock=clock, retry=RetryPolicy(attempts=3, initial=0.01))
    try:
        used: Any = adapter if batched else _OneByOne(adapter)
        fleet = Fleet(store, [used], clock=clock, actor=name)
        reconciler = Reconciler(fleet, ReconcileConfig(lease_ttl=600, lease_batch=batch),
                                actor=name)
        store.list_tracked(provider="warm-up")  # connect and compile before the start
        ready.release()
        go.wait()
        start = time.perf_counter()
        report = reconciler.run_once()
        end = time.perf_counter()
        results.put((name, start, end, len(report.changes),
                     [p.message for p in report.problems]))
    except BaseException as exc:
        results.put((name, 0.0, 0.0, 0, [f"{type(exc).__name__}: {exc}"]))
        raise
    finally:
        adapter.close()
        store.close()


def _together(url: str, world: World, daemons: int, batch: int | None, batched: bool
              ) -> float:
    """One pass of each daemon process at the same moment; seconds until the last ends.

    Processes, not threads: daemons are processes in production, and threads of one
    interpreter would share one core's worth of Python between them.
    """
    assert world.server is not None
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_daemon_child, args=(url, world.server.url, f"daemon-{d}",
                                                      batch, batched, world.clock.now(),
                                                      ready, go, results))
             for d in range(daemons)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a daemon process did not start")
        go.set()
        finished = [results.get(timeout=300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    problems = [m for *_, msgs in finished for m in msgs]
    if problems:
        raise AssertionError(f"daemon passes reported problems: {problems[:3]}")
    return max(f[2] for f in finished) - min(f[1] for f in finished)


def _daemons_once(pg_url: str, *, instances: int, daemons: int, latency: float,
                  batched: bool) -> tuple[float, int, int]:
    """(actions/s, actions, doubles) for ``daemons`` daemons sharing one PostgreSQL."""
    with postgres_schema(pg_url) as (url, _schema):
        world = build_world(instances, url=url, http=True, dead_fraction=1 / 3,
                            booted_fraction=0)
        try:
            assert world.server is not None
            if latency:  # every answer takes this long, as a remote API's would
                world.server.inject(HttpFault("slow", times=1 << 40, delay=latency))
            batch = -(-instances // daemons) if daemons > 1 else None
            took = _together(url, world, daemons, batch, batched)
            actions = sum(world.terminates.values())
            doubles = sum(c - 1 for c in world.terminates.values() if c > 1)
            if set(world.terminates) != set(world.died):
                raise AssertionError(f"{len(set(world.died) - set(world.terminates))} dead "
                                     "instances were not terminated in the pass")
            return actions / took, actions, doubles
        finally:
            world.close()


def run_daemons(pg_url: str, *, instances: int, rounds: int, latency: float,
                batched: bool = False, progress: Callable[[str], None] | None = None
                ) -> DaemonResult:
    """Alternate one daemon and three, ``rounds`` times each, on fresh schemas."""
    one: list[float] = []
    three: list[float] = []
    doubles = actions = 0
    for r in range(rounds):
        order = (1, 3) if r % 2 == 0 else (3, 1)
        got: dict[int, float] = {}
        for count in order:
            rate, acted, double = _daemons_once(pg_url, instances=instances, daemons=count,
                                                latency=latency, batched=batched)
            got[count] = rate
            actions, doubles = acted, doubles + double
            if progress is not None:
                progress(f"round {r + 1}: {count} daemon(s) {rate:.0f} actions/s")
        one.append(got[1])
        three.append(got[3])
    ratios = [t / o for t, o in zip(three, one, strict=True)]
    return DaemonResult(one, three, ratios, actions, doubles, instances, latency)


def describe_calls(calls: Counter[str]) -> str:
    parts = [f"{calls['pages']} page{'s' if calls['pages'] != 1 else ''}",
             f"{calls['terminate']} terminates", f"{calls['get']} GETs"]
    if calls["other"]:
        parts.append(f"{calls['other']} other")
    return " + ".join(parts)


def total_calls(calls: Counter[str]) -> int:
    return sum(calls.values())
