"""Drive a ``gpufsm emulator`` process from a test that cannot import gpufsm.

The compatibility suite runs each third-party client in a virtualenv of its own (their
pins clash with gpufsm's), so it reaches the emulator the way any user's test suite in any
environment can: it starts the ``gpufsm emulator`` command (``GPUFSM_BIN``, else the
``gpufsm`` on PATH), reads the URL from the banner, and steers the simulated cloud through
the admin API (``/_emulator/...``) with the standard library only. Nothing here knows a
provider's dialect; the tests speak it through the client under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Emulator", "emulator_process"]

_BANNER_SECONDS = 30.0


class Emulator:
    """A running emulator: its base URL and its admin API."""

    def __init__(self, url: str, dialect: str) -> None:
        self.url = url
        self.dialect = dialect

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One admin call; the decoded JSON answer. A non-2xx answer raises with its body."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/_emulator/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"admin {method} {path}: {exc.code} {exc.read()!r}") from None

    def provider_json(self, path: str, key: str) -> Any:
        """A GET on the provider API itself, decoded without any client: what the
        client under test must parse (so a test compares the two, not a copied list)."""
        req = urllib.request.Request(f"{self.url}{path}",
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    # The admin calls the compatibility tests need, by name.
    def state(self) -> dict[str, Any]:
        return dict(self.admin("GET", "state"))

    def instances(self) -> list[dict[str, Any]]:
        """The simulated cloud's live instances, as the admin API shows them."""
        return list(self.state()["instances"])

    def settle(self, seconds: float = 3600.0) -> None:
        """Let every scheduled step happen (boots finish, terminations complete)."""
        self.admin("POST", "settle", {"seconds": seconds})

    def http_fault(self, kind: str, **fields: Any) -> None:
        self.admin("POST", "http-faults", {"kind": kind, **fields})

    def cloud_fault(self, action: str, **fields: Any) -> Any:
        return self.admin("POST", "cloud-faults", {"action": action, **fields})

    def reset(self) -> None:
        """Back to a clean cloud for the next test: no faults queued, credit restored, no
        instance left (the request counts keep counting)."""
        self.admin("DELETE", "http-faults")
        self.cloud_fault("clear")
        self.cloud_fault("credit", ok=True)
        for inst in self.instances():
            self.cloud_fault("vanish", id=inst["id"])

    def requests_served(self) -> dict[str, int]:
        """Answered requests by ``"METHOD /path"`` (what the client actually called)."""
        return dict(self.state()["requests"])


def _binary() -> str:
    found = os.environ.get("GPUFSM_BIN") or shutil.which("gpufsm")
    if not found:
        raise RuntimeError("set GPUFSM_BIN to the gpufsm command (the compatibility suite "
                           "starts `gpufsm emulator`; tests/compat/run sets it)")
    return found


@contextmanager
def emulator_process(dialect: str, *, api_key: str | None = None, seed: int = 0
                     ) -> Iterator[Emulator]:
    """``gpufsm emulator --dialect … --fake-clock --port 0`` for the length of the block.

    The fake clock stands still until the test settles it, so every phase a client sees
    is the one the test asked for, whatever the host's speed.
    """
    argv = [_binary(), "emulator", "--dialect", dialect, "--port", "0", "--fake-clock",
            "--seed", str(seed)]
    if api_key is not None:
        argv += ["--api-key", api_key]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _read_url(proc)
        # Keep draining the request log so the emulator never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield Emulator(url, dialect)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _read_url(proc: subprocess.Popen[str]) -> str:
    """The ``url:`` line of the banner (or the emulator's own error, if it could not start)."""
    assert proc.stdout is not None
    timer = threading.Timer(_BANNER_SECONDS, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("url:"):
                return line.split(None, 1)[1].strip()
    finally:
        timer.cancel()
    err = proc.stderr.read() if proc.stderr else ""
    raise RuntimeError(f"gpufsm emulator exited before serving: {err.strip()}")
