"""One emulated Lambda account and one database, and a CLI runner wired to both.

Shared by the CLI test modules (tests/test_cli_commands.py, test_cli_first_hour.py,
test_cli_blind.py, test_cli_interrupt.py): each defines its ``env`` fixture as
``yield from lambda_env(...)``, so the fixture stays visible where it is used.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gpufsm import SqlInstanceStore
from gpufsm.adapters._http import RetryPolicy
from gpufsm.cli import _providers, app
from gpufsm.clock import SystemClock
from gpufsm.providers import PROVIDERS
from gpufsm.store import InstanceRecord
from gpufsm.testing import SimTimings, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

__all__ = ["FAST", "GPUFSM", "KEY", "LAUNCH", "OTHER_KEYS", "Env", "free_port", "lambda_env"]

KEY = "cli-commands-key-7731"
FAST = SimTimings(provision=(0.02, 0.05), boot=(0.05, 0.1), stop=(0.05, 0.1),
                  start=(0.05, 0.1), restart=(0.05, 0.1), terminate=(0.05, 0.1),
                  linger=(30.0, 30.0))
LAUNCH = ["launch", "--provider", "lambda", "--type", "gpu_1x_a10", "--region", "us-east-1",
          "--ssh-key", "laptop"]
#: Keys of the providers the tests never configure (set, they would point an adapter at
#: the real provider): every provider's but Lambda's, in both spellings, read from the
#: registry so a new provider's key is cleared too.
OTHER_KEYS = tuple(var for p in PROVIDERS.values() if p.name != "lambda"
                   for var in (p.key_env, f"GPUFSM_{p.key_setting.upper()}"))
#: The installed entry point, for tests that need a real process (signals, main()).
GPUFSM = Path(sys.executable).with_name("gpufsm")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Env:
    """One emulated Lambda account and one database, and a runner wired to both."""

    cloud: SimulatedCloud
    server: EmulatorServer
    store: SqlInstanceStore
    url: str

    @property
    def variables(self) -> dict[str, str]:
        return {"LAMBDA_API_KEY": KEY, "GPUFSM_LAMBDA_BASE_URL": self.server.url,
                "GPUFSM_DATABASE_URL": self.url}

    def cli(self, *args: str, input: str | None = None,
            env: Mapping[str, str | None] | None = None) -> Result:
        """``gpufsm *args``; ``env`` overrides the variables (None unsets one)."""
        result = CliRunner().invoke(app, list(args), env={**self.variables, **(env or {})},
                                    input=input)
        assert KEY not in result.output
        # every failure is handled: an exit status, never an escaped exception
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            result.exception
        return result

    def launch(self, *extra: str) -> str:
        result = self.cli(*LAUNCH, *extra)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    def row(self, row_id: str) -> InstanceRecord:
        return self.store.get(row_id)

    def requests(self) -> int:
        """Every request the emulated provider answered (or dropped)."""
        return sum(self.server.counts.values())

    def wait_phase(self, pid: str, phase: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cloud.instance(pid).phase != phase:
            assert time.monotonic() < deadline, self.cloud.instance(pid).phase
            time.sleep(0.02)

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The environment for a real ``gpufsm`` process: ours, minus other keys."""
        base = {k: v for k, v in os.environ.items()
                if k not in OTHER_KEYS and not k.startswith("GPUFSM_")}
        return {**base, **self.variables, **overrides}


def lambda_env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """Lambda on loopback in real (fast) time; no rate limits, no retries, no other keys."""
    for var in (*OTHER_KEYS, "GPUFSM_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    real = _providers.adapter_class
    monkeypatch.setattr(_providers, "adapter_class", lambda name: functools.partial(
        real(name), rate_limits={}, retry=RetryPolicy(attempts=1)))
    cloud = SimulatedCloud("lambda", clock=SystemClock(), seed=3, timings=FAST)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    try:
        yield Env(cloud, server, store, store_url)
    finally:
        server.stop()
