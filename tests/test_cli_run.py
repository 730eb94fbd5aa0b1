"""``gpufsm run`` against a real OpenSSH server on loopback and a Lambda emulator.

The emulated instance's IP is 127.0.0.1 and ``--ssh-port`` points at an sshd this module
starts as the current user (keys in a temporary directory), so the upload, the remote
command and the download are the real ssh/scp/rsync. What must hold on every way out:
the instance is terminated — after success, after a failing command (results still
fetched), when SSH never comes up, and when the process is interrupted mid-command.

sshd missing is a skip with the reason, or a failure when GPUFSM_TEST_REQUIRE_SSHD is set
(.ci/run sets it after installing openssh-server), never a silent pass.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from typer.testing import CliRunner, Result

from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.adapters._http import RetryPolicy
from gpufsm.cli import _providers, app
from gpufsm.cli._run import parse_download, remote_path
from gpufsm.clock import SystemClock
from gpufsm.providers import PROVIDERS
from gpufsm.testing import SimTimings, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

KEY = "cli-run-key-5150"
S = InstanceState
SSHD = Path("/usr/sbin/sshd")
FAST = SimTimings(provision=(0.02, 0.05), boot=(0.05, 0.1), terminate=(0.05, 0.1),
                  linger=(30.0, 30.0))
#: The ssh-heavy tests run on SQLite only: their subject is ssh, scp and signals (seconds
#: each), and the same CLI paths are run on both backends by tests/test_cli_commands.py.
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
SPEC = ["--provider", "lambda", "--type", "gpu_1x_a10", "--region", "us-east-1",
        "--ssh-key", "laptop"]


# ---- a real sshd ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sshd:
    port: int
    client_key: Path
    user: str


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("GPUFSM_TEST_REQUIRE_SSHD"):
        pytest.fail(f"GPUFSM_TEST_REQUIRE_SSHD is set but no usable sshd: {reason}")
    pytest.skip(f"needs a local OpenSSH server (apt-get install openssh-server; .ci/run "
                f"installs it): {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """``/usr/sbin/sshd -D`` on 127.0.0.1:<free port>, keys and config in a temp dir."""
    missing = [t for t in ("ssh", "scp", "ssh-keygen") if shutil.which(t) is None]
    if not SSHD.is_file() or missing:
        _unavailable(f"{SSHD} or {', '.join(missing) or 'the client'} not installed")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        try:  # sshd refuses to start as root without its privilege-separation directory
            Path("/run/sshd").mkdir(mode=0o755)
        except OSError as exc:
            _unavailable(f"cannot create /run/sshd: {exc}")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, capture_output=True)
    port = _free_port()
    config = d / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'client_key.pub'}", "StrictModes no",
        f"PidFile {d / 'sshd.pid'}", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE", ""]))
    checked = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True,
                             text=True, check=False)
    if checked.returncode != 0:
        _unavailable(f"sshd -t: {checked.stderr.strip()}")
    log_path = d / "sshd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _unavailable(f"sshd did not listen: {log_path.read_text()[-500:]}")
                time.sleep(0.05)
        yield Sshd(port, d / "client_key", getpass.getuser())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- a Lambda account whose instances live at 127.0.0.1 -------------------------------------


class LoopbackCloud(SimulatedCloud):
    """Every instance reports 127.0.0.1, where the test's sshd listens."""

    def create_instance(self, **kwargs: Any) -> str:
        pid = super().create_instance(**kwargs)
        self.instance(pid).ip = "127.0.0.1"
        return pid


@dataclass
class Env:
    cloud: LoopbackCloud
    server: EmulatorServer
    store: SqlInstanceStore
    url: str
    tmp: Path

    @property
    def variables(self) -> dict[str, str]:
        return {"LAMBDA_API_KEY": KEY, "GPUFSM_LAMBDA_BASE_URL": self.server.url,
                "GPUFSM_DATABASE_URL": self.url}

    def run(self, *args: str) -> Result:
        result = CliRunner().invoke(app, ["run", *SPEC, "--poll-interval", "0.05", *args],
                                    env=self.variables)
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            result.exception
        assert KEY not in result.output
        return result

    def only_instance(self) -> str:
        (row,) = self.store.list()
        assert row.provider_instance_id is not None
        return row.provider_instance_id

    def assert_terminated(self, pid: str) -> None:
        """The terminate was sent once, the row says so, and the emulator finishes it."""
        assert self.cloud.calls["terminate"] == 1
        (row,) = self.store.list()
        assert row.provider_instance_id == pid
        assert row.state in (S.TERMINATING, S.TERMINATED)
        deadline = time.monotonic() + 5
        while self.cloud.instance(pid).phase != "terminated":
            assert time.monotonic() < deadline, self.cloud.instance(pid).phase
            time.sleep(0.02)


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    others = [p.key_env for p in PROVIDERS.values() if p.name != "lambda"]
    for var in (*others, "GPUFSM_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    real = _providers.adapter_class  # in process: no rate limits, no retries
    monkeypatch.setattr(_providers, "adapter_class", lambda name: functools.partial(
        real(name), rate_limits={}, retry=RetryPolicy(attempts=1)))
    cloud = LoopbackCloud("lambda", clock=SystemClock(), seed=9, timings=FAST)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    try:
        yield Env(cloud, server, store, store_url, tmp_path)
    finally:
        server.stop()


def _ssh_args(sshd: Sshd) -> list[str]:
    return ["--ssh-user", sshd.user, "--ssh-key-file", str(sshd.client_key),
            "--ssh-port", str(sshd.port), "--ssh-timeout", "20"]


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    (project / "sub").mkdir(parents=True)
    (project / "input.txt").write_text("hello gpu\n")
    (project / "sub" / "data.txt").write_text("d\n")
    (project / ".hidden").write_text("h\n")
    return project


# ---- the job ------------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("transfer", ["scp", "rsync"])
def test_run_uploads_runs_downloads_and_terminates(env: Env, sshd: Sshd,
                                                   transfer: str) -> None:
    if transfer == "rsync" and shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    remote = env.tmp / "remote" / "project"  # absolute: never the real ~ of the user
    result = env.run(
        "--upload", str(_project(env.tmp)), "--remote-dir", str(remote),
        "--transfer", transfer, *_ssh_args(sshd),
        "-c", "test -f .hidden && test -f sub/data.txt && echo files-ok",
        "-c", "mkdir -p out && tr a-z A-Z < input.txt > out/result.txt",
        "--download", f"out:{env.tmp / 'results'}")
    assert result.exit_code == 0, result.output
    assert (env.tmp / "results" / "result.txt").read_text() == "HELLO GPU\n"
    assert "files-ok" in result.stdout  # the remote output is relayed
    assert "[2/2] $ mkdir -p out" in result.stderr
    assert "run succeeded" in result.stderr
    assert re.search(r"cost \$\d+\.\d{4} \(from its history", result.stderr), result.stderr
    env.assert_terminated(env.only_instance())


@SQLITE_ONLY
def test_a_failing_command_still_downloads_and_terminates(env: Env, sshd: Sshd) -> None:
    remote = env.tmp / "remote"
    result = env.run(
        "--remote-dir", str(remote), *_ssh_args(sshd),
        "-c", "echo partial > out.txt; exit 3", "-c", "echo never > never.txt",
        "--download", f"out.txt:{env.tmp / 'got' / 'out.txt'}")
    assert result.exit_code == 1
    assert "error: command 1 exited 3: echo partial > out.txt; exit 3" in result.stderr
    assert (env.tmp / "got" / "out.txt").read_text() == "partial\n"
    assert not (remote / "never.txt").exists()  # stopped at the first failure
    assert "run failed (exit 1)" in result.stderr
    env.assert_terminated(env.only_instance())


@SQLITE_ONLY
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_command_still_terminates(env: Env, sshd: Sshd, sig: signal.Signals,
                                               code: int) -> None:
    """A real process, a real signal while the remote command runs (real rate limits)."""
    remote = env.tmp / "remote"
    gpufsm = Path(sys.executable).with_name("gpufsm")
    with subprocess.Popen(
        [str(gpufsm), "run", *SPEC, "--poll-interval", "0.2", "--remote-dir", str(remote),
         *_ssh_args(sshd), "-c", "touch started && sleep 4"],
        env={**os.environ, **env.variables}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 60
        while not (remote / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the remote command never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    assert f"error: interrupted ({sig.name}): terminating the instance" in err
    assert "Traceback" not in err
    assert f"run failed (exit {code})" in err
    env.assert_terminated(env.only_instance())


def test_ssh_that_never_comes_up_fails_and_terminates(env: Env) -> None:
    closed = _free_port()
    result = env.run("--ssh-port", str(closed), "--ssh-timeout", "1", "-c", "true")
    assert result.exit_code == 1
    assert f"error: SSH on 127.0.0.1:{closed} not ready after 1s (last: TCP:" in result.stderr
    env.assert_terminated(env.only_instance())


def test_a_refused_launch_fails_with_nothing_left_to_pay_for(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity")
    result = env.run("-c", "true")
    assert result.exit_code == 1
    assert "error: lambda: Not enough capacity" in result.stderr
    assert env.cloud.calls["terminate"] == 0  # the launch made nothing
    (row,) = env.store.list()
    assert row.state is S.TERMINATED and not row.billable


@pytest.mark.parametrize(("args", "message"), [
    (["--upload", "no-such-dir"], "--upload: not a directory"),
    (["--download", ":x"], "--download: expected REMOTE:LOCAL"),
    (["--transfer", "ftp"], "--transfer: scp or rsync"),
    (["--ssh-key-file", "nope"], "--ssh-key-file: no such file"),
])
def test_bad_run_input_is_usage_and_launches_nothing(env: Env, args: list[str],
                                                     message: str) -> None:
    result = env.run(*args, "-c", "true")
    assert result.exit_code == 2
    assert message in result.stderr
    assert env.cloud.calls["launch"] == 0 and env.store.list() == []


# ---- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "quoted"), [
    ("~/project", "~/project"), ("~", "~"), ("~/my dir", "~/'my dir'"),
    ("/abs/x", "/abs/x"), ("rel; rm -rf x", "'rel; rm -rf x'"),
])
def test_remote_paths_keep_the_tilde_and_quote_the_rest(path: str, quoted: str) -> None:
    assert remote_path(path) == quoted


def test_downloads_parse_remote_and_local() -> None:
    d = parse_download("results/a.txt:/tmp/a.txt")
    assert (d.remote, d.local) == ("results/a.txt", Path("/tmp/a.txt"))
    same = parse_download("results")
    assert (same.remote, same.local) == ("results", Path("results"))


# ---- recovery -------------------------------------------------------------------------------

#: Generation 1 marks that it started, waits for the test to preempt its machine, and
#: exits 255 as ssh does when the connection drops; generation 2 finds the mark.
RECOVERING_JOB = ("if [ -e first ]; then echo finished-on-second; else touch first; "
                  "while [ ! -e preempted ]; do sleep 0.05; done; exit 255; fi")


def _preempt_when_started(env: Env, remote: Path) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 60
        while not (remote / "first").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        (live,) = env.cloud.live_instances()
        env.cloud.preempt(live.id)
        (remote / "preempted").touch()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@SQLITE_ONLY
def test_a_preempted_run_finishes_on_its_second_machine(env: Env, sshd: Sshd) -> None:
    """``run --recover 2``: the provider takes the first machine back mid-command; the
    run launches a second, runs the command again there, terminates both, and prints
    the total cost of both from their history."""
    remote = env.tmp / "remote"
    watcher = _preempt_when_started(env, remote)
    result = env.run("--recover", "2", "--recover-settle", "10", "--remote-dir",
                     str(remote), *_ssh_args(sshd), "-c", RECOVERING_JOB)
    watcher.join(5)
    assert result.exit_code == 0, result.output
    assert "finished-on-second" in result.stdout
    rows = sorted(env.store.list(), key=lambda r: r.generation or 0)
    assert [r.generation for r in rows] == [1, 2] and rows[0].run_id == rows[1].run_id
    assert all(r.state in (S.TERMINATING, S.TERMINATED) for r in rows)
    assert env.cloud.calls["terminate"] == 2
    assert "generation 1 lost its machine" in result.stderr and "'preempted'" in result.stderr
    assert "replacement 1 of 2" in result.stderr
    assert re.search(r"run succeeded in \d+s; instance \w{8} TERMINAT\w+ \(generation 2, "
                     r"after 1 lost\); cost \$\d+\.\d{4} for 2 machine\(s\)", result.stderr), \
        result.stderr
    launch = env.store.history(rows[1].id)[0].reason or ""
    assert f"run {rows[0].run_id}, generation 2 (generation 1 lost its machine" in launch
    # the generations, linked: the run's own view, and each machine's history names it
    run_id = rows[0].run_id or ""
    shown = CliRunner().invoke(app, ["history", run_id[:8]], env=env.variables)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}: 2 generation(s), 2 machine row(s); cost $")
    assert lines[1].startswith("generation 1  lambda/gpu_1x_a10@us-east-1  TERMINAT")
    assert f"run {run_id}: generation 1 lost its machine" in lines[2]
    assert lines[3].startswith("generation 2  lambda/gpu_1x_a10@us-east-1  TERMINAT")
    assert "gpufsm run ended" in lines[4]
    one = CliRunner().invoke(app, ["history", rows[1].id], env=env.variables)
    assert f"generation 2 of run {run_id}: `gpufsm history {run_id[:8]}`" in one.stdout


@SQLITE_ONLY
def test_a_failing_command_on_a_live_machine_is_not_recovered(env: Env, sshd: Sshd) -> None:
    """The provider says the machine runs: the failure is the command's, raised as it
    is, and no second machine is paid for."""
    result = env.run("--recover", "2", "--remote-dir", str(env.tmp / "remote"),
                     *_ssh_args(sshd), "-c", "exit 255")
    assert result.exit_code == 1
    assert "command 1 exited 255" in result.stderr and "replacement" not in result.stderr
    assert env.cloud.calls["launch"] == 1
    env.assert_terminated(env.only_instance())


def test_recover_rejects_a_negative_count(env: Env) -> None:
    result = env.run("--recover", "-1", "-c", "true")
    assert result.exit_code == 2 and "--recover" in result.stderr
    assert env.cloud.calls["launch"] == 0
