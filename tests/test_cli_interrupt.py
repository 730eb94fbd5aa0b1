"""Issue 9, item 9: Ctrl-C while the launch request is in flight.

The row is committed (CREATING, may bill) before the provider is called, and the
provider may well create the machine after we stopped listening. So an interrupt there
must end with the line that says which row may bill and the command that ends it —
never a silent exit 130. A real process and a real SIGINT, while the emulator holds
the launch POST (an ``HttpFault("slow")``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_env import GPUFSM, LAUNCH, Env, lambda_env
from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.testing.emulators import HttpFault

S = InstanceState
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


def _interrupt_mid_launch(env: Env, argv: list[str], delay: float
                          ) -> tuple[int, str, str]:
    """Start ``gpufsm argv``; SIGINT once the emulator holds its launch POST."""
    held = HttpFault("slow", method="POST", path_contains="launch", delay=delay)
    env.server.inject(held)
    with subprocess.Popen([str(GPUFSM), *argv], env=env.process_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 30
        while held.times > 0:  # taken by the server: the request is in flight
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the launch request never arrived"
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@SQLITE_ONLY
def test_ctrl_c_during_the_launch_call_names_the_row_that_may_bill(env: Env) -> None:
    code, out, err = _interrupt_mid_launch(env, LAUNCH, delay=5.0)
    assert code == 130, err
    (row,) = env.store.list()
    assert row.state is S.CREATING and row.billable
    assert err.splitlines() == [
        f"interrupted during the launch call: row {row.id} is CREATING and may bill: "
        f"gpufsm terminate {row.id}"]
    assert out == ""


@SQLITE_ONLY
def test_ctrl_c_during_the_launch_call_of_run_still_terminates(env: Env) -> None:
    """``run`` holds the signal until the launch call returns, then terminates."""
    if shutil.which("ssh") is None or shutil.which("scp") is None:
        pytest.skip("gpufsm run needs ssh and scp installed")
    code, _out, err = _interrupt_mid_launch(
        env, ["run", *LAUNCH[1:], "--poll-interval", "0.2", "-c", "true"], delay=2.0)
    assert code == 130, err
    (row,) = env.store.list()
    assert row.state in (S.TERMINATING, S.TERMINATED)
    assert "SIGINT received: finishing this provider call first" in err
    assert "error: interrupted (SIGINT): terminating the instance" in err
    assert f"instance {row.id[:8]} {row.state.value}: terminate" in err
    assert "Traceback" not in err
    assert env.cloud.calls["terminate"] == 1
