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
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from gpufsm import Fleet, GpufsmError, InstanceState
from gpufsm.adapters import RetryPolicy
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.store import SqlInstanceStore

# Warm imports: what a worker loads lazily (migrations, the PostgreSQL driver), loaded
# once here so every fork inherits it.
for _module in ("alembic.command", "alembic.config", "alembic.runtime.migration",
                "alembic.script", "psycopg"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_module)

__all__ = ["SPEC", "main"]

S = InstanceState
SPEC: dict[str, Any] = {"provider": "lambda", "instance_type": "gpu_1x_a10",
                        "region": "us-east-1", "ssh_key_names": ["crash-key"]}
MAX_LIVE = 10  # keep the cloud small: above this a worker terminates instead of launching


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
