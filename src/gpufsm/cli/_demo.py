"""``gpufsm demo``: a small fleet's whole life on Lambda's API, with faults and a crash.

Everything a user would run is real here: the Lambda adapter speaks HTTP to a
Lambda-dialect emulator on loopback, through the one HTTP seam (rate limits, retries,
breaker); the rows live in SQLite (a file in a temporary folder, removed at the end,
unless ``--database-url`` says where); the reconciler is the one ``gpufsm reconcile``
runs. Only the cloud behind the emulator is simulated, and one FakeClock drives it, the
seam's sleeps and the fleet's polls, so minutes of provider time pass in a few seconds.

A seed replays the same run: the simulated cloud and every process's retry jitter draw
from it, the clock is fake, and the reconciler's changes are printed in launch order
(a pass visits rows in id order, and ids are random). Only the row ids, the emulator's
port and the wall time differ between two runs with one seed.

The faults are the ones that cost money when handled naively: 429s with and without
Retry-After and 5xx answers (retried), a capacity refusal, a launch whose answer is lost
after the machine was made while the tag search fails too, an instance that dies, a
preemption, and the reconciler killed between committing TERMINATING and calling
terminate. A fresh reconciler on the same file must heal both rows it left behind.

The demo ends with the checks that matter: every invariant holds, every row is
finished, and the emulator holds no instance. Any failing makes the exit status 1.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gpufsm.adapters import ProviderInstance, RateLimit, RetryPolicy
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.errors import GpufsmError, InsufficientCapacity, ProviderError
from gpufsm.fleet import Fleet
from gpufsm.machines import Capabilities, Event, InstanceState
from gpufsm.reconcile import PassReport, ReconcileConfig, Reconciler, insufficient_credit_emergency
from gpufsm.store import InstanceRecord, SqlInstanceStore, TransitionRecord
from gpufsm.testing import FakeClock, SimInstance, SimulatedCloud, check_invariants
from gpufsm.testing.emulators import EmulatorServer, HttpFault, make_dialect
from gpufsm.testing.emulators.lambda_cloud import LAMBDA_PHASE_WORDS

__all__ = ["DEMO_RATE_LIMITS", "DEMO_RETRY", "history_lines", "run_demo"]

S = InstanceState

#: The emulator is on loopback, so the demo does not wait on Lambda's own limits
#: (LAMBDA_RATE_LIMITS: ~1 request/s, launch 1 per 12 s): on the FakeClock they would
#: cost no wall time, only stretch simulated minutes past the boots the demo watches.
#: The buckets stay in the seam's path, sized so that no call waits even with
#: ``--instances 50``: a wait on a FakeClock can spin forever today (float rounding in
#: TokenBucket.acquire; tests/test_token_bucket_fake_clock.py).
DEMO_RATE_LIMITS = MappingProxyType({
    "default": RateLimit(100.0, burst=500),
    "launch": RateLimit(10.0, burst=100),
})
#: Four attempts: one GET is refused three times in a row (429, 503, 502) and must
#: still get through. Backoff sleeps on the FakeClock, so it costs no wall time.
DEMO_RETRY = RetryPolicy(attempts=4, initial=0.5, max_backoff=4.0)
#: The demo's reconciler re-issues a terminate after 10 s instead of 30 s, so the
#: restarted daemon's re-issue shows before the preempted machine leaves on its own.
DEMO_RECONCILE = ReconcileConfig(terminate_backoff=10.0)

_TYPE = "gpu_1x_a10"
_SOLD_OUT = "gpu_8x_h100"  # the simulated cloud offers it in no region: a capacity refusal
_REGION = "us-east-1"
_POLL = 5.0  # seconds (simulated) between the scheduler's polls and reconcile passes
_PASS_LIMIT = 60  # reconcile passes per phase before the demo gives up (and fails)
_RESTART_AFTER = 5.0  # seconds (simulated) until a supervisor restarts the killed daemon
_PACE = 0.04  # seconds (real) per live-table update, only on a terminal, so eyes can follow
_IDLE = 3600.0  # seconds (simulated) the emulator is left alone before the final look
_RETRY_LOG = re.compile(r"^\S+ \S+: retry \d+ after \w+$")  # HttpSeam's before_sleep line


def _daemon_lock_file(url: str) -> Path | None:
    """The file ``SqlInstanceStore.daemon_lock`` keeps beside an SQLite database."""
    if not url.startswith("sqlite:///"):
        return None
    database = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return database.with_name(database.name + ".daemon.lock")


def history_lines(rows: list[TransitionRecord]) -> list[str]:
    """One line per transition: narrow enough for an 80-column terminal."""
    out = []
    for h in rows:
        moved = f"{h.from_state.value if h.from_state else '(new)'} → {h.to_state.value}"
        raw = f" raw={h.raw_status}" if h.raw_status else ""
        why = f" — {h.reason}" if h.reason else ""
        out.append(f"  v{h.version:<2} {h.at:%H:%M:%S} {moved:<24} {h.event.value} "
                   f"({h.kind.value}) by {h.actor}{raw}{why}")
    return out


class _ReconcilerKilled(BaseException):
    """The demo's SIGKILL. A BaseException, so no ``except Exception`` on the way up
    (the pass isolates errors per row) runs the clean-up a killed process never runs."""


class _KillableLambda(LambdaCloudAdapter):
    """The reconciler daemon's adapter, with a kill switch the demo arms once.

    Armed, the next terminate kills the process *after* the engine committed
    TERMINATING and *before* the request leaves: the row is ahead of the provider,
    which is exactly what writing the intent first promises to survive. A pass sends
    its terminates together (``terminate_many``), a command alone: both are armed.
    """

    kill_before_terminate = False

    def _kill_if_armed(self, what: object) -> None:
        if self.kill_before_terminate:
            self.kill_before_terminate = False
            raise _ReconcilerKilled(what)

    def terminate(self, provider_instance_id: str) -> None:
        self._kill_if_armed(provider_instance_id)
        super().terminate(provider_instance_id)

    def terminate_many(self, provider_instance_ids: Sequence[str]
                       ) -> Mapping[str, ProviderInstance]:
        self._kill_if_armed(provider_instance_ids)
        return super().terminate_many(provider_instance_ids)


@dataclass
class _Process:
    """What one OS process would hold: its own database connection, HTTP seam, Fleet."""

    name: str
    store: SqlInstanceStore
    adapter: _KillableLambda
    fleet: Fleet
    reconciler: Reconciler | None = None
    stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        """Clean shutdown, or what the kernel does for a killed process: the daemon
        lock (an flock) is released and the sockets are closed. Nothing else runs."""
        self.stack.close()
        self.adapter.close()
        self.store.close()


@dataclass
class _Fault:
    """One kind of fault: how many were injected, and whether the demo saw it healed."""

    kind: str
    count: int
    http: list[HttpFault] = field(default_factory=list)
    survived: bool = False

    @property
    def consumed(self) -> bool:
        """The emulator answered every queued HTTP fault (it counts them down)."""
        return all(f.times <= 0 for f in self.http)


class _LogTap(logging.Handler):
    """Counts the HTTP seam's retries (one INFO line each) and passes warnings on."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.retries = 0
        self._say = say

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "gpufsm.http" and _RETRY_LOG.match(message):
            self.retries += 1
            return
        if record.levelno >= logging.WARNING:
            self._say(f"    [dim]log {record.name}: {escape(message)}[/dim]")

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route gpufsm's logs here for the demo only (they would garble the live
        table), then put the loggers back as they were."""
        loggers = [logging.getLogger("gpufsm"), logging.getLogger("gpufsm.http")]
        saved = [(lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.INFO)
        loggers[0].propagate = False
        loggers[0].addHandler(self)
        try:
            yield
        finally:
            loggers[0].removeHandler(self)
            for lg, (level, propagate) in zip(loggers, saved, strict=True):
                lg.setLevel(level)
                lg.propagate = propagate


class _Demo:
    """The demo's phases; each prints what it did unless quiet."""

    def __init__(self, instances: int, seed: int, url: str, console: Console,
                 quiet: bool) -> None:
        self.n = instances
        self.seed = seed
        self.url = url
        self.console = console
        self.quiet = quiet
        self.live_table = console.is_terminal and not quiet
        # Paced only for eyes on a real terminal (a forced-terminal console in a test
        # renders the live table at full speed).
        isatty = getattr(console.file, "isatty", None)
        self.pace = _PACE if self.live_table and isatty is not None and isatty() else 0.0
        self.started = time.perf_counter()
        self.clock = FakeClock()
        self.cloud = SimulatedCloud("lambda", clock=self.clock, seed=seed,
                                    capabilities=Capabilities(stop=False, restart=True,
                                                              tags=True))
        self._key = SecretStr(secrets.token_urlsafe(24))  # never printed
        self.server = EmulatorServer(make_dialect("lambda", self.cloud),
                                     api_key=self._key.get_secret_value())
        self.tap = _LogTap(self.say)
        self.processes: list[_Process] = []
        self.scheduler: _Process | None = None
        self.daemon: _Process | None = None
        self.generation = 0  # reconciler generations started
        self.passes = 0
        self.faults: list[_Fault] = []
        self.ids: dict[str, str] = {}  # name → row id, in launch order
        self.work_time: float | None = None  # simulated s until all was confirmed gone
        self._live: Live | None = None

    # ---- output ------------------------------------------------------------------------

    def say(self, *things: object, soft_wrap: bool = False, markup: bool = True) -> None:
        if not self.quiet:
            self.console.print(*things, highlight=False, soft_wrap=soft_wrap, markup=markup)

    def name_of(self, instance_id: str) -> str:
        return next((n for n, i in self.ids.items() if i == instance_id), instance_id[:8])

    def _on_emulator(self, r: InstanceRecord) -> SimInstance | None:
        """The emulator's own record of a row's machine: by provider id, else by tag."""
        if r.provider_instance_id is not None:
            try:
                return self.cloud.instance(r.provider_instance_id)
            except KeyError:
                return None
        return next((i for i in self.cloud.live_instances(ours_only=False) if i.tag == r.tag),
                    None)

    def _emulator_word(self, r: InstanceRecord) -> str:
        inst = self._on_emulator(r)
        if inst is None:
            return "-"
        if inst.removed:
            return "gone"
        word = inst.raw_override or LAMBDA_PHASE_WORDS.get(inst.phase, inst.phase)
        return word if r.provider_instance_id else f"{word} (by tag)"

    def simulated_time(self) -> str:
        """Simulated time so far; once the work is done, that time and the idle hour
        after it, so the last table and the summary give the same figure."""
        if self.work_time is None:
            return f"{self.clock.monotonic():.0f}s"
        return f"{self.work_time:.0f}s, then {_IDLE / 3600:.0f} h idle"

    def board(self) -> Table:
        """The rows as the database has them, beside what the emulator says."""
        table = Table("id", "name", "state", "lambda id", "emulator", "bills")
        for r in self._rows():
            name, state = self.name_of(r.id), r.state.value
            if r.state in (S.CREATING, S.TERMINATING, S.FAILED):
                state = f"[yellow]{state}[/yellow]"
            table.add_row(r.id[:8], name, state, r.provider_instance_id or "-",
                          self._emulator_word(r), "yes" if r.billable else "no")
        table.caption = (f"simulated t+{self.simulated_time()} · "
                         f"{self.api_calls()} API calls, {self.tap.retries} retried · "
                         f"{self.passes} reconcile passes")
        return table

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        """One phase: a live table on a terminal, else one plain snapshot at its end.

        The title is printed once, above; the table has none of its own.
        """
        self.say(f"\n[bold]{title}[/bold]")
        if not self.live_table:
            yield
            if self.ids:
                self.say(self.board())
            return
        with Live(self.board(), console=self.console, auto_refresh=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None
                live.update(self.board(), refresh=True)

    def update(self) -> None:
        """Re-render the live table after a step (a no-op when piped or quiet)."""
        if self._live is not None:
            self._live.update(self.board(), refresh=True)
            if self.pace:
                time.sleep(self.pace)

    # ---- processes -----------------------------------------------------------------------

    def _store(self) -> SqlInstanceStore:
        process = self.daemon or self.scheduler
        assert process is not None
        return process.store

    def _process(self, name: str, *, daemon: bool) -> _Process:
        store = SqlInstanceStore(self.url)
        # Retry jitter from the seed, one stream per process: same seed, same run.
        adapter = _KillableLambda(self._key, base_url=self.server.url,
                                  rate_limits=DEMO_RATE_LIMITS, retry=DEMO_RETRY,
                                  clock=self.clock, rng=random.Random(f"{self.seed}:{name}"))
        fleet = Fleet(store, [adapter], clock=self.clock, actor=name)
        process = _Process(name, store, adapter, fleet)
        self.processes.append(process)
        if daemon:
            process.stack.enter_context(store.daemon_lock())  # one daemon per SQLite file
            process.reconciler = Reconciler(fleet, DEMO_RECONCILE, actor=name,
                                            policies=[insufficient_credit_emergency()])
        return process

    def api_calls(self) -> int:
        """HTTP requests the emulator answered (dropped ones included), retries included."""
        return sum(self.server.counts.values())

    def _spec(self, name: str, instance_type: str = _TYPE) -> dict[str, Any]:
        return {"provider": "lambda", "name": name, "instance_type": instance_type,
                "region": _REGION, "ssh_key_names": ["demo-key"]}

    def _inject(self, kind: str, *faults: HttpFault) -> _Fault:
        for f in faults:
            self.server.inject(f)
        entry = _Fault(kind, sum(f.times for f in faults), list(faults))
        self.faults.append(entry)
        return entry

    def _fault(self, kind: str, count: int = 1) -> _Fault:
        entry = _Fault(kind, count)
        self.faults.append(entry)
        return entry

    def _pass(self) -> PassReport:
        assert self.daemon is not None and self.daemon.reconciler is not None
        report = self.daemon.reconciler.run_once()
        self.passes += 1
        order = {instance_id: n for n, instance_id in enumerate(self.ids.values())}
        # sorted() is stable: one row's changes keep their order within the pass
        for c in sorted(report.changes, key=lambda c: order.get(c.instance_id, len(order))):
            why = f" — {escape(c.why)}" if c.why else ""
            self.say(f"    {self.daemon.name}: {self.name_of(c.instance_id)} "
                     f"{c.from_state or '(new)'} → {c.to_state} ({c.event}){why}")
        for p in report.problems:
            self.say(f"    {self.daemon.name}: [yellow]{p.kind}[/yellow] {escape(p.message)}")
        self.update()
        return report

    def _reconcile_until(self, done: Callable[[list[InstanceRecord]], bool]) -> bool:
        """Run a pass every _POLL seconds until ``done(rows)``; False if it never is."""
        for _ in range(_PASS_LIMIT):
            if done(self._rows()):
                return True
            self.clock.sleep(_POLL)
            self._pass()
        return done(self._rows())

    def _rows(self) -> list[InstanceRecord]:
        if not self.ids:
            return []
        store = self._store()
        return [store.get(i) for i in self.ids.values()]

    # ---- phases -------------------------------------------------------------------------

    def launch(self) -> None:
        """A capacity refusal, then the fleet through 429s with Retry-After."""
        self.scheduler = s = self._process("scheduler", daemon=False)
        self.say(f"A scheduler launches {self.n} x {_TYPE} in {_REGION}, and first a big "
                 f"job on {_SOLD_OUT}.")
        fault = self._fault("capacity refusal (HTTP 400)")
        try:
            big = s.fleet.launch(self._spec("big-job", _SOLD_OUT), reason="demo: a big job")
            self.ids["big-job"] = big.id  # not refused: the fault counts as not survived
        except InsufficientCapacity as exc:  # the emulator's 400 insufficient-capacity
            if exc.instance_id is None:  # the engine always names the row it wrote
                raise
            self.ids["big-job"] = exc.instance_id
            row = s.store.get(exc.instance_id)
            self.say(f"  big-job: [yellow]{escape(str(exc))}[/yellow] → {row.state.value}, "
                     "not billable")
            fault.survived = (row.state is S.FAILED and not row.billable
                              and self._on_emulator(row) is None)
        self.update()
        f429 = self._inject("429 with Retry-After: 2", HttpFault(
            "429", times=2, method="POST", path_contains="/launch", retry_after=2.0))
        for n in range(self.n):
            record = s.fleet.launch(self._spec(f"worker-{n}"), reason="demo: the fleet")
            self.ids[f"worker-{n}"] = record.id
            self.update()
        f429.survived = f429.consumed and all(
            s.store.get(self.ids[f"worker-{n}"]).provider_instance_id
            for n in range(self.n))
        self.say(f"  worker-0's launch was answered 429 twice and retried after the "
                 f"Retry-After; {self.n} launched")

    def boot(self) -> None:
        """Wait for RUNNING through a 429 without Retry-After, a 503 and a 502."""
        s = self.scheduler
        assert s is not None
        f429 = self._inject("429 without Retry-After", HttpFault("429", method="GET"))
        f5xx = self._inject("5xx (503, then 502)", HttpFault("5xx", method="GET", status=503),
                            HttpFault("5xx", method="GET", status=502))
        for n in range(self.n):
            s.fleet.wait_for(self.ids[f"worker-{n}"], S.RUNNING, timeout=900,
                             poll_interval=_POLL, on_progress=lambda _r: self.update())
        f429.survived, f5xx.survived = f429.consumed, f5xx.consumed
        self.say("  one status GET was answered 429, 503, 502 and retried each time "
                 f"(backoff on the fake clock); all {self.n} RUNNING after "
                 f"{self.clock.monotonic():.0f}s simulated")
        self.generation += 1
        self.daemon = self._process(f"reconciler#{self.generation}", daemon=True)
        report = self._pass()
        self.say(f"  {self.daemon.name} started: first pass, {len(report.changes)} changes "
                 "(the database agrees with Lambda)")

    def trouble(self) -> tuple[str, str]:
        """A death, a preemption, and a launch whose outcome is unknown.

        Returns (preempted row id, in-doubt row id).
        """
        s = self.scheduler
        assert s is not None
        dead, preempted = self.ids[f"worker-{self.n - 1}"], self.ids["worker-0"]
        died = self._fault("instance died (unhealthy)")
        self.cloud.kill(s.store.get(dead).provider_instance_id or "")
        seen = s.fleet.refresh(dead)
        self.say(f"  {self.name_of(dead)} dies: Lambda says {seen.last_raw_status!r} → "
                 f"{seen.state.value}; the scheduler restarts it")
        self.update()
        s.fleet.restart(dead, reason="demo: restart the dead instance")
        died.survived = s.fleet.wait_for(dead, S.RUNNING, timeout=900, poll_interval=_POLL,
                                         on_progress=lambda _r: self.update()
                                         ).state is S.RUNNING
        self._fault("preemption")
        self.cloud.preempt(s.store.get(preempted).provider_instance_id or "")
        self.say(f"  Lambda preempts {self.name_of(preempted)} (the scheduler does not "
                 "look; the reconciler will)")
        name = f"worker-{self.n}"
        dropped = self._inject("launch answer lost after the work", HttpFault(
            "drop", method="POST", path_contains="/launch", after_work=True))
        search = self._inject(f"tag search failed (504 x {DEMO_RETRY.attempts})", HttpFault(
            "5xx", times=DEMO_RETRY.attempts, method="GET", path_contains="/api/v1/instances",
            status=504))
        try:
            record = s.fleet.launch(self._spec(name), reason="demo: scale up")
            in_doubt = record.id
        except ProviderError as exc:
            if exc.instance_id is None:
                raise
            in_doubt = exc.instance_id
            self.say(f"  {name}: the connection dropped after Lambda made the machine "
                     f"([yellow]{type(exc).__name__}[/yellow]); the tag search failed too")
        self.ids[name] = in_doubt
        row = s.store.get(in_doubt)
        search.survived = (search.consumed and dropped.consumed and row.state is S.CREATING
                           and row.billable)
        self.say(f"  {name} stays {row.state.value}, billable: the outcome is unknown, and "
                 "unknown is never read as 'nothing was made'")
        self.update()
        return preempted, in_doubt

    def crash(self) -> None:
        """The reconciler is killed between committing TERMINATING and calling Lambda."""
        daemon = self.daemon
        assert daemon is not None
        killed = self._fault("reconciler killed mid-terminate")
        daemon.adapter.kill_before_terminate = True
        try:
            self._pass()
        except _ReconcilerKilled:
            self.passes += 1  # it died in this pass
            self.say(f"  [red]{daemon.name} killed[/red] after it committed TERMINATING for "
                     "the preempted worker and before the terminate left")
        else:
            killed.count = 0  # nothing was terminated, so nothing to kill it in
            self.say("  [yellow]the pass terminated nothing; no kill happened[/yellow]")
        self.update()
        daemon.close()
        self.daemon = None

    def recover(self, preempted: str, in_doubt: str) -> None:
        """A fresh reconciler on the same file heals what the dead one left."""
        self.clock.sleep(_RESTART_AFTER)
        self.generation += 1
        self.daemon = self._process(f"reconciler#{self.generation}", daemon=True)
        self.say(f"  {_RESTART_AFTER:.0f}s later a supervisor starts {self.daemon.name} on "
                 "the same SQLite file (the dead daemon's lock went with it)")
        settled = (S.RUNNING, S.TERMINATED)

        def healed(rows: list[InstanceRecord]) -> bool:
            return all(r.state in settled or (r.state is S.FAILED and not r.billable)
                       for r in rows)

        self._reconcile_until(healed)
        store = self._store()
        gone, adopted = store.get(preempted), store.get(in_doubt)
        machine = self._on_emulator(adopted)
        found_by_tag = (machine is not None and machine.tag == adopted.tag
                        and adopted.provider_instance_id == machine.id)
        left = self._on_emulator(gone)
        terminated = gone.state is S.TERMINATED and (left is None or left.removed
                                                     or left.phase == "terminated")
        for f in self.faults:
            if f.kind == "preemption":
                f.survived = terminated
            elif f.kind == "launch answer lost after the work":
                f.survived = f.consumed and found_by_tag
            elif f.kind == "reconciler killed mid-terminate":
                f.survived = terminated and found_by_tag and adopted.state is S.RUNNING
        reissued = any(h.event is Event.TERMINATE and h.actor == self.daemon.name
                       for h in store.history(preempted))
        self.say(f"  {self.name_of(in_doubt)}: adopted by its tag as "
                 f"{adopted.provider_instance_id} → {adopted.state.value}; "
                 f"{self.name_of(preempted)}: "
                 f"{'terminate re-issued, then' if reissued else 'absence'} confirmed → "
                 f"{gone.state.value}")

    def clean_up(self) -> None:
        """The scheduler terminates everything; the reconciler confirms each is gone."""
        s = self.scheduler
        assert s is not None
        for name, instance_id in self.ids.items():
            try:
                s.fleet.terminate(instance_id, reason="demo: clean up")
            except GpufsmError as exc:  # the row is TERMINATING: the reconciler goes on
                self.say(f"  {name}: terminate failed ({type(exc).__name__}: "
                         f"{escape(str(exc))}); the reconciler will re-issue it")
            self.update()
        self._reconcile_until(lambda rows: all(r.state is S.TERMINATED for r in rows))
        self.work_time = self.clock.monotonic()
        # An hour later Lambda lists nothing we made: anything still there would bill.
        self.cloud.settle(_IDLE)
        self.say("  an hour later (simulated) the emulator is asked what is left")
        self.update()

    def histories(self) -> None:
        store = self._store()
        for name, instance_id in self.ids.items():
            self.say(f"[bold]history of {instance_id}[/bold] ({name})")
            for line in history_lines(list(store.history(instance_id))):
                self.say(line, soft_wrap=True, markup=False)

    def summary(self) -> bool:
        store = self._store()
        ids = list(self.ids.values())
        problems = check_invariants(store, ids)
        rows = [store.get(i) for i in ids]
        open_rows = [r for r in rows if r.state is not S.TERMINATED]
        leaked = self.cloud.live_instances(ours_only=False)
        injected = sum(f.count for f in self.faults)
        survived = sum(f.count for f in self.faults if f.survived)
        answered = sum(1 for _, _, status in self.server.log if status in (0, 429)
                       or status >= 500)
        table = Table("figure", "value", title="demo summary")
        table.add_row("instances", str(len(ids)))
        table.add_row("transitions persisted", str(sum(len(store.history(i)) for i in ids)))
        table.add_row("faults injected", str(injected))
        table.add_row("faults survived", str(survived))
        for f in self.faults:
            table.add_row(f"  {f.kind}", f"{f.count if f.survived else 0}/{f.count}")
        table.add_row("API calls (HTTP)", str(self.api_calls()))
        table.add_row("  answered 429/5xx/dropped", str(answered))
        table.add_row("  retried by the seam", str(self.tap.retries))
        table.add_row("reconcile passes", str(self.passes))
        table.add_row("reconciler restarts", str(max(0, self.generation - 1)))
        table.add_row("simulated time", self.simulated_time())
        table.add_row("wall time", f"{time.perf_counter() - self.started:.1f}s")
        table.add_row("rows not terminated", str(len(open_rows)))
        table.add_row("invariants broken", str(len(problems)))
        table.add_row("instances left on the emulator", str(len(leaked)))
        self.console.print(table)
        for p in problems:
            self.console.print(f"[red]invariant broken:[/red] {p}")
        for r in open_rows:
            self.console.print(f"[red]not terminated:[/red] {r.id} ({r.name}) {r.state}")
        for inst in leaked:
            self.console.print(f"[red]left on the emulator:[/red] {inst.id} ({inst.phase})")
        for f in self.faults:
            if not f.survived:
                self.console.print(f"[red]fault not survived:[/red] {f.kind}")
        ok = not problems and not open_rows and not leaked and survived == injected
        self.console.print("[green]OK[/green]" if ok else "[red]FAILED[/red]")
        return ok

    def run(self, where: str) -> bool:
        self.say(f"[bold]gpufsm demo[/bold]: {self.n + 2} instances ({self.n} workers, a "
                 "big job that is refused, and one more worker whose launch ends in doubt) "
                 "through the real Lambda adapter, over HTTP to a Lambda-dialect emulator "
                 f"at {self.server.url}; {where}")
        with self.stage("1. launch: a capacity refusal, then 429s with Retry-After"):
            self.launch()
        with self.stage("2. boot: 429 without Retry-After, 503, 502 — retried"):
            self.boot()
        with self.stage("3. trouble: a death, a preemption, a launch in doubt"):
            preempted, in_doubt = self.trouble()
        with self.stage("4. crash: the reconciler is killed mid-terminate"):
            self.crash()
        with self.stage("5. restart: a fresh reconciler heals both rows"):
            self.recover(preempted, in_doubt)
        with self.stage("6. clean up: terminate everything, confirm it is gone"):
            self.clean_up()
        if not self.quiet:
            self.histories()
        return self.summary()

    def close(self) -> None:
        for process in self.processes:
            process.close()
        self.server.stop()


def run_demo(*, instances: int, seed: int, database_url: str | None, console: Console,
             quiet: bool = False) -> bool:
    """Run the demo; True when every invariant held, every fault was survived and
    nothing was left on the emulator.

    Without ``database_url`` the rows live in a temporary folder that is removed at the
    end. With one, the rows stay there; the daemon lock file the demo's reconcilers
    create beside an SQLite file is removed again if it was not there before.
    """
    with ExitStack() as cleanup:
        if database_url is None:
            folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="gpufsm-demo-"))
            url = f"sqlite:///{Path(folder) / 'demo.db'}"
            where = "database: a temporary SQLite file, removed at the end"
        else:
            url, where = database_url, f"database {database_url}"
            lock = _daemon_lock_file(url)
            if lock is not None and not lock.exists():
                cleanup.callback(lock.unlink, missing_ok=True)
        demo = _Demo(instances, seed, url, console, quiet)
        demo.server.start()
        try:
            with demo.tap.installed():
                return demo.run(where)
        except GpufsmError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            return False
        finally:
            demo.close()
