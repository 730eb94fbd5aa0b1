"""``gpufsm run``: launch → wait → upload → run → download → terminate, always terminate.

This is the job people script by hand around a provider API (a folder to a fresh GPU
box, a command or two, the results back). The part worth a library is the last step:
the instance is terminated on every way out — success, a failing command, an
unreachable SSH, an error from the provider, Ctrl-C, SIGTERM. SIGINT and SIGTERM raise
KeyboardInterrupt in the main thread so the ``finally`` runs; while the launch call is
in flight and while the terminate runs they are held back (noted, acted on after), since
an interrupt there is exactly what would leave a machine billing with nobody knowing.

SSH goes through the system's ``ssh``/``scp``/``rsync`` with host keys not checked
(instances are new every time, their keys unknowable in advance), batch mode (a
password prompt would hang a script) and a connect timeout.
"""

from __future__ import annotations

import codecs
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    SpecFlags,
    WaitProgress,
    cli_actor,
    close_adapters,
    error_line,
    exit_code_for,
    handled,
    open_store,
    stderr,
)
from gpufsm.cli._placing import what_to_launch
from gpufsm.cli._providers import build_adapters
from gpufsm.cli._ssh import DEFAULT_SSH_PORT, DEFAULT_SSH_USERS, ssh_user
from gpufsm.config import Settings
from gpufsm.engine import Recovering, Recovery
from gpufsm.errors import GpufsmError, ProviderError, ValidationError
from gpufsm.fleet import Fleet
from gpufsm.ledger import Ledger
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord

__all__ = [
    "DEFAULT_SSH_USERS",
    "Download",
    "Interrupts",
    "RunOptions",
    "SshTarget",
    "StepFailed",
    "parse_download",
    "remote_path",
    "run_job",
]

S = InstanceState



class StepFailed(Exception):
    """A step of the job failed; the message says which and why."""


def remote_path(path: str) -> str:
    """``path`` quoted for the remote shell, keeping a leading ``~`` expandable."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~/"
    return shlex.quote(path)


@dataclass(frozen=True)
class Download:
    remote: str
    local: Path


def parse_download(value: str) -> Download:
    """``REMOTE:LOCAL``, or ``PATH`` for the same relative path on both sides."""
    remote, sep, local = value.partition(":")
    if not sep:
        local = remote
    if not remote or not local:
        raise ValidationError("--download", "expected REMOTE:LOCAL (or one relative path)",
                              value=value)
    if not sep and remote.startswith(("/", "~")):
        raise ValidationError("--download", "an absolute remote path needs a local one: "
                              "REMOTE:LOCAL", value=value)
    return Download(remote, Path(local))


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int
    key_file: Path | None = None
    connect_timeout: int = 10

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def scp_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}"

    def options(self) -> list[str]:
        opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=30",
                "-o", "ServerAliveCountMax=4"]
        if self.key_file is not None:
            opts += ["-i", str(self.key_file), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh(self, command: str) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.port), self.login, command]

    def scp(self, *paths: str) -> list[str]:
        return ["scp", *self.options(), "-P", str(self.port), "-r", "-q", *paths]

    def rsync_shell(self) -> str:
        return shlex.join(["ssh", *self.options(), "-p", str(self.port)])


@dataclass(frozen=True)
class RunOptions:
    upload: Path | None = None
    commands: Sequence[str] = ()
    downloads: Sequence[Download] = ()
    remote_dir: str = "~/project"
    ssh_user: str | None = None
    ssh_key_file: Path | None = None
    ssh_port: int | None = None
    ssh_timeout: float = 600.0
    connect_timeout: int = 10
    transfer: str = "scp"
    timeout: float = 1800.0
    poll_interval: float = 5.0
    recover: int = 0  # replacements allowed when the provider reports the machine lost
    recover_settle: float = 30.0  # seconds the provider gets to say so after ssh fails


# ---- signals ------------------------------------------------------------------------------


class Interrupts:
    """SIGINT/SIGTERM as KeyboardInterrupt in the main thread, or held while shielded.

    Installed only from the main thread (Python delivers signals there); the previous
    handlers come back on exit. ``signum`` remembers which signal arrived, for the exit
    status (128 + signum, as shells report it).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._shield = 0
        self._pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self._shield:
            self._pending = True
            stderr.print(f"{signal.Signals(signum).name} received: finishing this provider "
                         "call first, then cleaning up", highlight=False)
            return
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    @contextmanager
    def shielded(self, *, deliver: bool = True) -> Iterator[None]:
        """Hold signals back for the block; with ``deliver``, act on one afterwards."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if deliver and not self._shield and self._pending:
            self._pending = False
            raise KeyboardInterrupt


# ---- processes ----------------------------------------------------------------------------


def _relay(argv: Sequence[str]) -> int:
    """Run ``argv``, copying its output (stderr merged) to our stdout as it comes.

    Relayed rather than inherited so the output goes wherever ``sys.stdout`` goes; the
    child is killed if we leave early (an interrupt), never left running behind us.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # argv is ssh/scp/rsync with our options, never a local shell: the user's command is
    # one argument, run by the remote shell as the user asked.
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S603
                          stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 65536):
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
            sys.stdout.write(decoder.decode(b"", final=True))
            sys.stdout.flush()
            return proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_for_ssh(target: SshTarget, *, timeout: float, interval: float) -> None:
    """TCP first (cheap, quiet), then a real login running ``true`` (keys installed,
    sshd past its start-up): either can lag the provider's "running" by minutes."""
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    stderr.print(f"  waiting for SSH on {target.login} port {target.port}", highlight=False)
    with WaitProgress(f"waiting for SSH on {target.host}:{target.port}"):
        while True:
            try:
                with socket.create_connection((target.host, target.port),
                                              timeout=min(5.0, target.connect_timeout)):
                    pass
            except OSError as exc:
                last = f"TCP: {exc.strerror or exc}"
            else:
                done = subprocess.run(target.ssh("true"), stdin=subprocess.DEVNULL,  # noqa: S603
                                      capture_output=True, text=True, check=False,
                                      timeout=target.connect_timeout + 30)
                if done.returncode == 0:
                    stderr.print(f"  SSH is up on {target.login}", highlight=False)
                    return
                lines = done.stderr.strip().splitlines()
                last = f"ssh: {lines[-1] if lines else f'exit {done.returncode}'}"
            if time.monotonic() >= deadline:
                raise StepFailed(f"SSH on {target.host}:{target.port} not ready after "
                                 f"{timeout:g}s (last: {last})")
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def _upload(target: SshTarget, local: Path, remote_dir: str, transfer: str) -> None:
    stderr.print(f"  uploading {local} to {remote_dir}", highlight=False)
    if _relay(target.ssh(f"mkdir -p {remote_path(remote_dir)}")) != 0:
        raise StepFailed(f"cannot create {remote_dir} on the instance")
    if transfer == "rsync":
        rc = _relay(["rsync", "-az", "-e", target.rsync_shell(), f"{local}/",
                     f"{target.scp_host}:{remote_dir}/"])
    else:
        # Each top-level entry by name (dot-files too): "dir/." is refused by older scp.
        entries = sorted(str(p) for p in local.iterdir())
        rc = _relay(target.scp(*entries, f"{target.scp_host}:{remote_dir}/")) if entries else 0
    if rc != 0:
        raise StepFailed(f"upload of {local} failed ({transfer} exit {rc})")


def _download(target: SshTarget, item: Download, remote_dir: str) -> bool:
    remote = item.remote
    if not remote.startswith(("/", "~")):
        remote = f"{remote_dir.rstrip('/')}/{remote}"
    stderr.print(f"  downloading {remote} to {item.local}", highlight=False)
    item.local.parent.mkdir(parents=True, exist_ok=True)
    # Always scp: ``scp -r REMOTE LOCAL`` makes LOCAL a copy of REMOTE, file or folder,
    # where rsync's result would depend on trailing slashes we cannot know remotely.
    rc = _relay(target.scp(f"{target.scp_host}:{remote}", str(item.local)))
    if rc != 0:
        error_line(f"download of {remote} failed (scp exit {rc})")
    return rc == 0


# ---- the job ------------------------------------------------------------------------------


def _check_local(options: RunOptions) -> None:
    """Everything that can be checked before paying for a machine."""
    if not options.commands and options.upload is None and not options.downloads:
        raise ValidationError("--command", "nothing to run: give -c/--command, --upload or "
                              "--download (run launches a paid machine to do them)")
    if options.upload is not None and not options.upload.is_dir():
        raise ValidationError("--upload", "not a directory", value=str(options.upload))
    if options.transfer not in ("scp", "rsync"):
        raise ValidationError("--transfer", "scp or rsync", value=options.transfer)
    if options.ssh_key_file is not None and not options.ssh_key_file.is_file():
        raise ValidationError("--ssh-key-file", "no such file",
                              value=str(options.ssh_key_file))
    for tool in ("ssh", "scp", *(("rsync",) if options.transfer == "rsync" else ())):
        if shutil.which(tool) is None:
            raise ValidationError("--transfer", f"{tool} is not installed here",
                                  value=options.transfer)


def _ssh_port(fleet: Fleet, record: InstanceRecord) -> int:
    """The port the provider maps SSH to (RunPod and Vast map it); 22 when it says none."""
    if record.provider_instance_id is None:
        return DEFAULT_SSH_PORT
    try:
        seen = fleet.adapters[record.provider].get(record.provider_instance_id)
    except ProviderError as exc:
        stderr.print(f"  could not read the SSH port ({exc}); trying 22", highlight=False,
                     markup=False)
        return DEFAULT_SSH_PORT
    return seen.ssh_port if seen is not None and seen.ssh_port else DEFAULT_SSH_PORT


def _ended(rows: Sequence[InstanceRecord]) -> None:
    """One line per machine the run ended (each generation, each placement attempt that
    made one): its state now, and who finishes a terminate still open."""
    for row in rows:
        if row.provider_instance_id is None and not row.billable:
            continue  # a refused attempt: nothing was made, nothing to say
        if row.state is S.TERMINATED:
            how = "terminate confirmed"
        elif row.state is S.TERMINATING:
            how = "terminate sent; `gpufsm reconcile --once` confirms it"
        else:
            how = "terminate failed: `gpufsm terminate` or the reconciler retries it"
        stderr.print(f"instance {row.id[:8]} {row.state.value}: {how}", highlight=False)


@handled
def run_job(flags: SpecFlags, options: RunOptions, *, database_url: str | None) -> int:
    """The whole job; the exit status: 0, 1 (a step or the command failed), 2 (usage),
    128 + signal number when interrupted. Every machine it launched is terminated in
    every case: its rows carry the run's id, so the ``finally`` finds them in the store
    even when a signal lands inside a launch call."""
    what, template, providers = what_to_launch(flags)
    _check_local(options)
    adapters = build_adapters(Settings(), providers)
    started = time.monotonic()
    run: Recovering | None = None
    record: InstanceRecord | None = None
    spent: Ledger | None = None
    code = EXIT_FAILURE
    try:
        with open_store(database_url) as store, Interrupts() as interrupts:
            fleet = Fleet(store, adapters, actor=cli_actor())
            run = Recovering(fleet, what, Recovery(options.recover,
                                                   settle=options.recover_settle),
                             template=template, reason="gpufsm run", timeout=options.timeout,
                             poll_interval=options.poll_interval)
            try:
                with interrupts.shielded():
                    record = run.launch()
                _launched(record)
                code = _recovering(fleet, run, record, options, interrupts)
            except KeyboardInterrupt:
                name = signal.Signals(interrupts.signum or signal.SIGINT).name
                error_line(f"interrupted ({name}): terminating the instance"
                           if run.generations() else
                           f"interrupted ({name}) before anything was launched")
                code = interrupts.exit_code
            except StepFailed as exc:
                error_line(exc)
                code = EXIT_FAILURE
            except GpufsmError as exc:
                error_line(exc)
                code = exit_code_for(exc)
            finally:
                with interrupts.shielded(deliver=False):
                    run.end("gpufsm run ended")
                    _ended(run.generations())
            spent = _spent(fleet, run.run_id)
            record = _last(fleet, run)
    finally:
        close_adapters(adapters)
    _summary(record, code, time.monotonic() - started, spent, run)
    return code


def _launched(record: InstanceRecord) -> None:
    stderr.print(f"launched {record.id} on {record.provider} ({record.instance_type})",
                 highlight=False)


def _recovering(fleet: Fleet, run: Recovering, record: InstanceRecord, options: RunOptions,
                interrupts: Interrupts) -> int:
    """The job on each generation until it ends on its own: success, its own failure,
    or (with ``--recover N``) the N-th replacement lost too (RecoveryExhausted)."""
    while True:
        failure: Exception | None = None
        try:
            code, unreachable = _job(fleet, record, record.provider, options)
        except (StepFailed, GpufsmError) as exc:
            if not options.recover:
                raise
            failure, code, unreachable = exc, EXIT_FAILURE, True
        if code == EXIT_OK or not options.recover:
            return code
        why = run.lost(record, settle=options.recover_settle if unreachable else 0.0)
        if why is None:  # the provider says the machine is fine: the job's own failure
            if failure is not None:
                raise failure
            return code
        stderr.print(f"generation {run.generation} {why}: replacement "
                     f"{len(run.ends) + 1} of {options.recover}", highlight=False)
        with interrupts.shielded():
            record = run.replace(record, why)
        _launched(record)


def _last(fleet: Fleet, run: Recovering) -> InstanceRecord | None:
    """The run's last machine as it is now (for the summary), None if none was made."""
    if run.record is None:
        return None
    try:
        return fleet.get(run.record.id)
    except GpufsmError:
        return run.record


def _spent(fleet: Fleet, run_id: str) -> Ledger | None:
    """What the run's machines cost, from their transition history (the ledger): every
    generation's and every placement attempt's. None if the database cannot say (the
    run's own outcome matters more than its bill)."""
    try:
        return Ledger.read(fleet.store, fleet.store.generations(run_id),
                           now=fleet.clock.now())
    except GpufsmError:
        return None


def _job(fleet: Fleet, record: InstanceRecord, provider: str, options: RunOptions
         ) -> tuple[int, bool]:
    """One generation's job: the exit status, and whether a command's failure may be
    the machine's (ssh's own 255: the connection, not the command)."""
    with WaitProgress(f"waiting for {record.id[:8]} to be RUNNING") as progress:
        record = fleet.wait_for(record.id, S.RUNNING, timeout=options.timeout,
                                poll_interval=options.poll_interval, on_progress=progress)
    if not record.ip:
        raise StepFailed(f"{record.id[:8]} is RUNNING but the provider reports no IP")
    target = SshTarget(
        user=options.ssh_user or ssh_user(provider),
        host=record.ip,
        port=options.ssh_port or _ssh_port(fleet, record),
        key_file=options.ssh_key_file,
        connect_timeout=options.connect_timeout,
    )
    _wait_for_ssh(target, timeout=options.ssh_timeout,
                  interval=min(max(options.poll_interval, 0.2), 5.0))
    if options.upload is not None:
        _upload(target, options.upload, options.remote_dir, options.transfer)
    code, unreachable = EXIT_OK, False
    cd = remote_path(options.remote_dir)
    for n, command in enumerate(options.commands, 1):
        stderr.print(f"  [{n}/{len(options.commands)}] $ {command}", highlight=False,
                     markup=False)
        rc = _relay(target.ssh(f"mkdir -p {cd} && cd {cd} && {command}"))
        if rc != 0:
            error_line(f"command {n} exited {rc}: {command}"
                       + (" (255: ssh itself may have failed)" if rc == 255 else ""))
            code, unreachable = EXIT_FAILURE, rc == 255
            break
    for item in options.downloads:
        if not _download(target, item, options.remote_dir):
            code = EXIT_FAILURE
    return code, unreachable


def _summary(record: InstanceRecord | None, code: int, elapsed: float,
             spent: Ledger | None, run: Recovering | None) -> None:
    cost = ""
    if spent is not None and spent.rows:
        machines = sum(1 for row in spent.rows if row.record.provider_instance_id)
        cost = (f"; cost ${spent.total:.4f} for {machines} machine(s) (from their history"
                if machines > 1 else f"; cost ${spent.total:.4f} (from its history")
        if spent.burn_rate:
            cost += f"; billing ${spent.burn_rate:.2f}/h until the terminate is confirmed"
        if spent.estimates():
            cost += "; partly estimated: " + ", ".join(sorted(spent.estimates()))
        cost += ")"
    elif record is not None and record.price_per_hour:
        cost = (f"; about ${record.price_per_hour * elapsed / 3600:.2f} at "
                f"${record.price_per_hour:.2f}/h")
    state = f"; instance {record.id[:8]} {record.state.value}" if record else ""
    if run is not None and run.ends:
        state += f" (generation {run.generation}, after {len(run.ends)} lost)"
    outcome = "succeeded" if code == EXIT_OK else f"failed (exit {code})"
    stderr.print(f"run {outcome} in {elapsed:.0f}s{state}{cost}", highlight=False,
                 markup=False)
