"""A process to kill: it drives a Fleet against a Lambda emulator until SIGKILL ends it.

tests/test_crash.py runs this file with ``sys.executable crash_driver.py`` as a *zygote*:
the interpreter imports gpufsm, SQLAlchemy, Alembic, httpx and psycopg once, then forks
one worker per ``run`` command it reads on stdin. A worker is a process of its own: it
opens its own store connection and HTTP client after the fork, works, and is killed with
SIGKILL by the test (or by itself, in the targeted modes). Forking a warm interpreter
costs milliseconds where starting one costs a second, which is what lets the test kill
25 workers in a few seconds instead of half a minute.

The protocol is one JSON object per line. In: ``{"cmd": "run", ...}``,
``{"cmd": "reap", "pid": n}``, ``{"cmd": "quit"}``. Out: ``{"event": "forked", "pid"}``
(zygote), ``{"event": "ready", "pid"}`` (worker, once its store and client are open),
``{"event": "exit", "pid", "signal", "code"}`` (zygote, after waitpid). Every line is
written with one ``os.write`` so the zygote's and the workers' lines never interleave.

Worker scripts (``script``):

* ``loop``: forever pick at random among launch, terminate, refresh, restart and a
  short pause, on every live row in the store (so a worker also finishes, or trips
  over, what its killed predecessors left);
* ``launch``: one launch, then idle;
* ``launch-run-terminate``: launch, wait for RUNNING, terminate, then idle.

``die`` = ``"before:launch"`` / ``"after:launch"`` / ``"before:terminate"`` /
``"after:terminate"`` wraps that adapter method so the worker SIGKILLs itself right
before the HTTP call or right after it returned: the exact points where the database
and the provider disagree.

Crash points (``point``, tests/test_crash_points.py): the general form of ``die``. A point
is ``"<script>/<before|after>:<store|adapter>.<method>#<n>"``, e.g.
``"terminate/after:store.transition#1"`` (TERMINATING committed, terminate not sent) or
``"orphan/after:store.insert#1"``. The worker counts every call of the store's writes and
the adapter's provider calls (``STORE_METHODS``, ``ADAPTER_METHODS``), runs the script
(``SCRIPTS``), and at the n-th call of the named method — just before it, or just after it
returned or raised — says ``{"event": "point", "pid", "point", "calls", "raised"}`` and
SIGKILLs itself. A script that ends without reaching its point says
``{"event": "missed", ...}`` and exits with ``MISSED``: a point the code no longer reaches
fails the test instead of passing unkilled. The world a script needs (a running instance,
an orphan, a fault on the emulator) is made by the test process, which owns the emulator.

The test process's half of the protocol, ``Zygote``, lives here too, beside the half it
talks to.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gpufsm import Fleet, GpufsmError, InstanceState
from gpufsm.adapters import RetryPolicy
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.placement import Requirements
from gpufsm.reconcile import OrphanPolicy, ReconcileConfig, Reconciler
from gpufsm.store import SqlInstanceStore
from gpufsm.testing.emulators import EmulatorServer

# Warm imports: what a worker loads lazily (migrations, the PostgreSQL driver), loaded
# once here so every fork inherits it.
for _module in ("alembic.command", "alembic.config", "alembic.runtime.migration",
                "alembic.script", "psycopg"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_module)

__all__ = ["ADAPTER_METHODS", "MISSED", "SCRIPTS", "SPEC", "STORE_METHODS",
           "VISIBILITY_WINDOW", "CrashPoint", "Script", "Tripwire", "Zygote", "main",
           "point_config", "quiet_when_client_died"]

S = InstanceState
SPEC: dict[str, Any] = {"provider": "lambda", "instance_type": "gpu_1x_a10",
                        "region": "us-east-1", "ssh_key_names": ["crash-key"]}
MAX_LIVE = 10  # keep the cloud small: above this a worker terminates instead of launching
DRIVER = Path(__file__)
#: The emulator's reads never lag its writes: a second of visibility window is plenty,
#: and lets a real-time test confirm absences (a crash-point worker and its recovery).
VISIBILITY_WINDOW = 1.0
#: A crash-point worker's exit code when its script ended without reaching the point.
MISSED = 3


def _say(**event: Any) -> None:
    os.write(1, (json.dumps(event) + "\n").encode())


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal arrives first


def _wrap(adapter: LambdaCloudAdapter, die: str) -> None:
    """Make ``adapter.<op>`` kill this process before or after the real call."""
    when, _, op = die.partition(":")
    real: Callable[..., Any] = getattr(adapter, op)

    def dying(*args: Any, **kwargs: Any) -> Any:
        if when == "before":
            _die()
        result = real(*args, **kwargs)
        _die()
        return result  # pragma: no cover

    setattr(adapter, op, dying)


def _worker(cmd: dict[str, Any]) -> None:
    store = SqlInstanceStore(cmd["db"])
    adapter = LambdaCloudAdapter(cmd["key"], base_url=cmd["base_url"], rate_limits={},
                                 retry=RetryPolicy(attempts=2, initial=0.01), timeout=5.0)
    if cmd.get("point"):
        _run_to_the_point(CrashPoint.parse(cmd["point"]), store, adapter, cmd)
    if cmd.get("die"):
        _wrap(adapter, cmd["die"])
    fleet = Fleet(store, [adapter], actor=cmd["actor"], command_grace=0.2)
    _say(event="ready", pid=os.getpid())
    script = cmd["script"]
    if script == "launch":
        fleet.launch(SPEC)
    elif script == "launch-run-terminate":
        record = fleet.launch(SPEC)
        fleet.wait_for(record.id, S.RUNNING, timeout=20, poll_interval=0.05)
        fleet.terminate(record.id)
    elif script == "loop":
        _loop(fleet, random.Random(cmd["seed"]))
    time.sleep(600)  # the targeted modes have died by now; the test reaps us if not


def _loop(fleet: Fleet, rng: random.Random) -> None:
    """Random user traffic, as fast as the emulator answers: the kill lands mid-work."""
    while True:
        rows = [r for r in fleet.list() if r.state is not S.TERMINATED]
        live = [r for r in rows if r.state not in (S.TERMINATING, S.FAILED)]
        choice = rng.choices(["launch", "terminate", "refresh", "restart", "pause"],
                             weights=[4, 3, 2, 1, 1])[0]
        if choice == "launch" and len(live) >= MAX_LIVE:
            choice = "terminate"
        try:
            if choice == "launch":
                fleet.launch({**SPEC, "name": f"crash-{rng.randrange(10**6)}"})
            elif choice == "terminate" and rows:
                fleet.terminate(rng.choice(rows).id, reason="crash driver")
            elif choice == "refresh" and rows:
                fleet.refresh(rng.choice(rows).id)
            elif choice == "restart" and live:
                fleet.restart(rng.choice(live).id, reason="crash driver")
            else:
                time.sleep(rng.uniform(0.0, 0.01))
        except GpufsmError:
            pass  # refused, raced or the provider failed: a user would carry on too


# ---- crash points: die at the n-th call of a named store or adapter method -------------

#: The store's writes (each one commit) and the adapter's provider calls a point can name.
STORE_METHODS = ("insert", "transition", "transition_many", "apply_batch", "update",
                 "record_drift", "open_placement", "claim_winner", "fail_placement")
ADAPTER_METHODS = ("launch", "get", "list_instances", "start", "stop", "restart", "terminate",
                   "terminate_many")
_METHODS = {"store": STORE_METHODS, "adapter": ADAPTER_METHODS}
_POINT = re.compile(r"(?P<script>[a-z-]+)/(?P<when>before|after):"
                    r"(?P<target>[a-z]+)\.(?P<method>[a-z_]+)#(?P<nth>[0-9]+)")


@dataclass(frozen=True)
class CrashPoint:
    """Where a worker dies: just before, or just after, the n-th call of one method.

    "After" means the call came back, with an answer or an exception: the work is done
    (or refused) and nothing the caller meant to do next has happened.
    """

    script: str
    when: str  # "before" | "after"
    target: str  # "store" | "adapter"
    method: str
    nth: int = 1

    def __post_init__(self) -> None:
        if self.script not in SCRIPTS:
            raise ValueError(f"crash point {self}: unknown script {self.script!r}; one of "
                             f"{', '.join(SCRIPTS)}")
        if self.when not in ("before", "after"):
            raise ValueError(f"crash point {self}: when is 'before' or 'after'")
        if self.method not in _METHODS.get(self.target, ()):
            raise ValueError(f"crash point {self}: {self.call} is not watched; watched: "
                             + ", ".join(f"{t}.{m}" for t, ms in _METHODS.items() for m in ms))
        if self.nth < 1:
            raise ValueError(f"crash point {self}: calls are counted from 1")

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        """``"launch/after:adapter.launch#1"`` → the point; ValueError names what is wrong."""
        match = _POINT.fullmatch(text)
        if match is None:
            raise ValueError(f"crash point {text!r} is not <script>/<before|after>:"
                             "<store|adapter>.<method>#<n>")
        return cls(match["script"], match["when"], match["target"], match["method"],
                   int(match["nth"]))

    @property
    def call(self) -> str:
        return f"{self.target}.{self.method}"

    def __str__(self) -> str:
        return f"{self.script}/{self.when}:{self.call}#{self.nth}"


class Tripwire:
    """Counts every call of the watched methods, in order, and SIGKILLs this process at
    ``point``, after telling the zygote's reader which point it was and what came before.

    The methods are replaced on the *instances* (the store and the adapter the Fleet
    holds), so every path of the engine goes through them, and nothing else is changed.
    """

    def __init__(self, point: CrashPoint) -> None:
        self.point = point
        self.calls: list[str] = []  # "store.insert#1", "adapter.launch#1", …
        self._counts: Counter[str] = Counter()

    def install(self, target: str, obj: object, methods: Sequence[str]) -> None:
        for method in methods:
            setattr(obj, method, self._watched(f"{target}.{method}", getattr(obj, method)))

    def _watched(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            self._counts[name] += 1
            self.calls.append(f"{name}#{self._counts[name]}")
            here = name == self.point.call and self._counts[name] == self.point.nth
            if here and self.point.when == "before":
                self._fire(None)
            try:
                result = real(*args, **kwargs)
            except BaseException as exc:
                if here:
                    self._fire(exc)
                raise
            if here:
                self._fire(None)
            return result

        return watched

    def _fire(self, raised: BaseException | None) -> None:
        _say(event="point", pid=os.getpid(), point=str(self.point), calls=self.calls,
             raised=None if raised is None else f"{type(raised).__name__}: {raised}")
        _die()


@dataclass(frozen=True)
class Script:
    """What a crash-point worker does (the test process sets up the world it needs)."""

    summary: str
    run: Callable[[Fleet, dict[str, Any]], object]


def _launch(fleet: Fleet, cmd: dict[str, Any]) -> object:
    return fleet.launch({**SPEC, "name": "crash-point"})


def _place(fleet: Fleet, cmd: dict[str, Any]) -> object:
    return fleet.launch(Requirements(gpus=("A10",)),
                        template={"ssh_key_names": ["crash-key"], "name": "crash-point"})


def _terminate(fleet: Fleet, cmd: dict[str, Any]) -> object:
    return fleet.terminate(cmd["instance_id"], reason="crash point")


def _restart(fleet: Fleet, cmd: dict[str, Any]) -> object:
    return fleet.restart(cmd["instance_id"], reason="crash point")


def _reconcile(fleet: Fleet, cmd: dict[str, Any]) -> object:
    return Reconciler(fleet, point_config(cmd["script"]), actor=cmd["actor"]).run_once()


SCRIPTS: dict[str, Script] = {
    "launch": Script("Fleet.launch: CREATING row, provider launch, CREATED with its id",
                     _launch),
    "launch-lost": Script("Fleet.launch whose answer is dropped after the provider created "
                          "it: error noted, tag search, adoption", _launch),
    "launch-refused": Script("Fleet.launch refused by the provider (no capacity): FAILED, "
                             "not billable", _launch),
    "place": Script("Fleet.launch(Requirements): the cheapest A10 offer refused for "
                    "capacity, the next placed and claimed as the winner", _place),
    "place-lost": Script("Fleet.launch(Requirements): the first offer's answer lost and "
                         "its tag unseen, the next placed", _place),
    "heal": Script("reconcile pass adopting by tag a CREATING row whose launch answer was "
                   "lost", _reconcile),
    "terminate": Script("Fleet.terminate of a RUNNING instance: TERMINATING, provider "
                        "terminate, a GET to confirm", _terminate),
    "terminate-pidless": Script("Fleet.terminate of a CREATING row with no provider id whose "
                                "instance exists: tag search, id recorded, terminate",
                                _terminate),
    "restart": Script("Fleet.restart of a RUNNING instance", _restart),
    "orphan": Script("reconcile pass, orphans=terminate, over a tagged instance with no row",
                     _reconcile),
    "orphan-adopt": Script("reconcile pass, orphans=adopt, over a tagged instance with no "
                           "row", _reconcile),
    "resurrect": Script("reconcile pass over a live tagged instance whose only row is "
                        "TERMINATED (a wrong 'gone')", _reconcile),
    "reterminate": Script("reconcile pass re-issuing the terminate of a TERMINATING row whose "
                          "instance still runs", _reconcile),
    "failed": Script("reconcile pass terminating a FAILED, billable row", _reconcile),
}

_ORPHANS = {"orphan": OrphanPolicy.TERMINATE, "orphan-adopt": OrphanPolicy.ADOPT}


def point_config(script: str) -> ReconcileConfig:
    """The reconcile settings of a crash-point script's pass and of its recovery alike:
    the same orphan policy on both sides, deadlines and backoffs in real-time tenths."""
    return ReconcileConfig(
        orphans=_ORPHANS.get(script, OrphanPolicy.REPORT),
        terminate_backoff=0.05, terminate_backoff_cap=0.2,
        deadlines={S.CREATING: 0.3, S.CREATED: 60.0, S.STARTING: 60.0, S.STOPPING: 60.0})


def _run_to_the_point(point: CrashPoint, store: SqlInstanceStore,
                      adapter: LambdaCloudAdapter, cmd: dict[str, Any]) -> NoReturn:
    """Run the point's script with the tripwire set: killed at the point, or exits MISSED."""
    tripwire = Tripwire(point)
    tripwire.install("store", store, STORE_METHODS)
    tripwire.install("adapter", adapter, ADAPTER_METHODS)
    fleet = Fleet(store, [adapter], actor=cmd["actor"], command_grace=0.2,
                  visibility_window=VISIBILITY_WINDOW)
    _say(event="ready", pid=os.getpid())
    error = None
    try:
        SCRIPTS[point.script].run(fleet, {**cmd, "script": point.script})
    except GpufsmError as exc:  # a refused launch raises, and may still be short of its point
        error = f"{type(exc).__name__}: {exc}"
    _say(event="missed", pid=os.getpid(), point=str(point), calls=tripwire.calls,
         error=error)
    os._exit(MISSED)


def _run(cmd: dict[str, Any]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _say(event="forked", pid=pid)
        return
    try:  # the worker: never returns into the zygote's loop
        os.close(0)
        random.seed()
        _worker(cmd)
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


# ---- the test process's half: the zygote client ---------------------------------------


class Zygote:
    """tests/crash_driver.py running as a fork server; see its docstring for the protocol."""

    def __init__(self, stderr: Path) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen([sys.executable, str(DRIVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr,
                                     cwd=DRIVER.parent)
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def _send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def _next(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    def _wait_for(self, kind: str | tuple[str, ...], pid: int | None, timeout: float
                  ) -> dict[str, Any] | None:
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while True:
            for seen in self._events:
                if seen["event"] in kinds and (pid is None or seen["pid"] == pid):
                    self._events.remove(seen)
                    return seen
            news = self._next(deadline)
            if news is None:
                return None
            self._events.append(news)

    def start(self, **cmd: Any) -> int:
        """Fork a worker and return its pid once its store and client are open."""
        self._send(cmd="run", **cmd)
        forked = self._wait_for("forked", None, 10)
        assert forked is not None, f"the zygote did not fork:\n{self.tail()}"
        pid = int(forked["pid"])
        if self._wait_for("ready", pid, 15) is None:
            os.kill(pid, signal.SIGKILL)
            self.reap(pid)
            raise AssertionError(f"worker {pid} never got ready:\n{self.tail()}")
        return pid

    def reap(self, pid: int) -> tuple[int | None, int | None]:
        """Wait for a worker to end: (signal, exit code)."""
        self._send(cmd="reap", pid=pid)
        event = self._wait_for("exit", pid, 30)
        assert event is not None, f"worker {pid} was not reaped:\n{self.tail()}"
        return event["signal"], event["code"]

    def said(self, pid: int, *kinds: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event of one of ``kinds`` worker ``pid`` wrote (None if none came).

        A worker writes before it dies, so once it is reaped its last words are in the
        pipe: a short timeout is plenty.
        """
        return self._wait_for(kinds, pid, timeout)

    def tail(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        try:
            self._send(cmd="quit")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._stderr.close()


def quiet_when_client_died(server: EmulatorServer) -> None:
    """The emulator answering a client that is gone fails to write: expected here, and
    socketserver would print each one's traceback."""
    httpd = server._httpd
    handle_error = httpd.handle_error

    def handle(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(request, client_address)

    setattr(httpd, "handle_error", handle)  # noqa: B010 - an instance override


def main() -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            _run(cmd)
        elif cmd["cmd"] == "reap":
            _, status = os.waitpid(cmd["pid"], 0)
            _say(event="exit", pid=cmd["pid"],
                 signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                 code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)
        elif cmd["cmd"] == "quit":
            return


if __name__ == "__main__":
    main()
