"""`pytest -ra` says once why a group of tests did not run: one SKIPPED line per cause.

A machine without PostgreSQL or sshd used to get about 150 identical SKIPPED lines (a
skip raised in a fixture is reported at every test's own line), which hid any other
skip. The checks run an inner pytest on the real suites, in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _skipped_lines(*args: str, env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-q", "-p",
                           "no:cacheprovider", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]


def _environ(**unset: bool) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in unset}


def test_without_postgres_one_line_with_a_count() -> None:
    env = _environ(GPUFSM_TEST_POSTGRES=True)
    lines = _skipped_lines("-m", "postgres", "tests/test_store_contract.py",
                           "tests/test_cli_run.py", "tests/test_daemons.py", env=env)
    assert len(lines) == 1, "\n".join(lines)
    count = re.match(r"SKIPPED \[(\d+)\] ", lines[0])
    assert count and int(count.group(1)) > 20, lines[0]
    assert "GPUFSM_TEST_POSTGRES" in lines[0]


def test_without_an_ssh_client_one_line_for_the_sshd_tests(tmp_path: Path) -> None:
    """No ssh/scp/ssh-keygen on PATH: the tests that need sshd say so once."""
    env = _environ(GPUFSM_TEST_POSTGRES=True, GPUFSM_TEST_REQUIRE_SSHD=True)
    env["PATH"] = str(tmp_path)  # nothing there; the interpreter is named by full path
    lines = _skipped_lines("-m", "not postgres", "-k",
                           "uploads or failing_command or signal_mid",
                           "tests/test_cli_run.py", env=env)
    assert len(lines) == 1, "\n".join(lines)
    assert re.match(r"SKIPPED \[[2-9]\] tests/conftest\.py:\d+: needs a local OpenSSH "
                    r"server .*ssh, scp, ssh-keygen not installed", lines[0]), lines[0]
