"""`gpufsm emulator` prints the shell line the CLI needs, and that line works (issue 10, 13).

The banner used to show only a Python snippet: a person who wanted to try `gpufsm types`
against the emulator had to guess GPUFSM_<P>_BASE_URL and <P>_API_KEY. Each test starts
the real command, takes its ``export`` line and evaluates it in a shell with no provider
variables set, then runs the CLI there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gpufsm.cli._emulator import PROFILES
from gpufsm.testing.emulators import DIALECTS

GPUFSM = Path(sys.executable).with_name("gpufsm")
#: A shell with none of the variables the banner is meant to supply.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not re.fullmatch(r"(GPUFSM_\w+|\w+_API_KEY)", k)}
CLEAN_ENV["PATH"] = f"{GPUFSM.parent}:{CLEAN_ENV.get('PATH', '')}"


@contextmanager
def _emulator(*args: str) -> Iterator[str]:
    """Run `gpufsm emulator ARGS`; yield its banner once it serves; stop it with SIGTERM."""
    with subprocess.Popen([str(GPUFSM), "emulator", "--port", "0", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=CLEAN_ENV) as proc:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 30
        try:
            while not banner.endswith("stop with Ctrl-C or SIGTERM\n"):
                line = proc.stdout.readline()
                assert line and time.monotonic() < deadline, banner
                banner += line
            yield banner
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def _shell_line(banner: str) -> str:
    found = re.search(r"^shell: +(export .+)$", banner, re.M)
    assert found, f"no export line in the banner:\n{banner}"
    return found.group(1)


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=CLEAN_ENV, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_the_printed_exports_let_the_cli_reach_the_emulator(dialect: str,
                                                             tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gpufsm.db'}"
    with _emulator("--dialect", dialect) as banner:
        exports = _shell_line(banner)
        url = re.search(r"^url: +(\S+)$", banner, re.M)
        assert url and f"={url.group(1)}" in exports
        done = _bash(f"{exports}\n"
                     f"gpufsm types --provider {dialect} --json > types.json || exit 11\n"
                     f"gpufsm db upgrade --database-url {db} >/dev/null || exit 12\n"
                     f"gpufsm instances --remote --database-url {db} || exit 13\n", tmp_path)
        without = _bash(f"gpufsm types --provider {dialect}", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    types = json.loads((tmp_path / "types.json").read_text())
    assert {t["provider"] for t in types} == {dialect}
    offered = {r for o in PROFILES[dialect].offers for r in o.regions}
    assert {r for t in types for r in t["regions"]} == offered  # the emulator's own offers
    assert without.returncode != 0  # it is the export line that made it work


def test_a_checked_key_is_named_not_printed(tmp_path: Path) -> None:
    key = "emulator-secret-7311"
    with _emulator("--dialect", "lambda", "--api-key", key) as banner:
        exports = _shell_line(banner)
        done = _bash(f"{exports}\nexport LAMBDA_API_KEY={key}\n"
                     "gpufsm types --provider lambda", tmp_path)
    assert key not in banner
    assert "GPUFSM_LAMBDA_BASE_URL=http://127.0.0.1:" in exports and "LAMBDA_API_KEY" in exports
    assert done.returncode == 0, done.stdout + done.stderr
