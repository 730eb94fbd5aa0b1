"""Running the probes: TCP connect, HTTP GET, a local command — in parallel, retried.

One round (``run_probes``) runs every probe of a spec at once on its own thread, so a
round costs the slowest probe, not the sum. Each probe retries with jittered exponential
backoff (tenacity, sleeping on the injected clock) until it passes or its attempts are
spent, and never raises: every failure — refused, timed out, wrong status, a command
that exits 1, even a bug in a probe — becomes a ``ProbeResult`` with an error kind.

Failures are classified in exactly one place, ``classify``, by walking the exception's
cause chain (httpx wraps httpcore wraps the ``OSError`` that says what really happened).

Nothing here touches the store or the state machine: the engine calls ``run_probes`` and
judges the results with ``gate_verdict``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx
import tenacity

from gpufsm.clock import Clock, SystemClock
from gpufsm.errors import ValidationError
from gpufsm.health._result import ErrorKind, ProbeResult
from gpufsm.health._spec import HealthSpec, HttpCheck

__all__ = ["classify", "run_probes"]

log = logging.getLogger("gpufsm.health")

_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN,
                          errno.ENETDOWN, errno.EADDRNOTAVAIL})
_BODY_LIMIT = 1 << 20  # ``contains`` looks at the first MiB: a probe is not a download
_DETAIL_LIMIT = 300


class _Outcome(NamedTuple):
    """One attempt: ok, or why not."""

    error_kind: ErrorKind | None
    detail: str
    latency: float


def run_probes(
    host: str,
    spec: HealthSpec,
    *,
    clock: Clock | None = None,
    transport: httpx.BaseTransport | None = None,
    rng: random.Random | None = None,
) -> list[ProbeResult]:
    """Run one round of every probe in ``spec`` against ``host``, all at once.

    Returns one result per probe, in ``spec.probe_names`` order (TCP ports, HTTP checks,
    the command); an empty spec returns ``[]``. A failing probe is a result, never an
    exception; only a caller's mistake (an empty ``host``) raises ValidationError.

    ``clock`` stamps results and does the backoff sleeps (a FakeClock makes retries
    instant). ``transport`` replaces the network for every HTTP check (tests, proxies);
    it stays the caller's to close. ``rng`` drives the jitter.
    """
    if not host or not host.strip() or any(c.isspace() for c in host):
        raise ValidationError("host", "must be a host name or address", value=host)
    clock = clock or SystemClock()
    rng = rng or random.Random()
    attempts: list[tuple[str, Callable[[], _Outcome]]] = [
        (f"tcp:{port}", _bind_tcp(host, port, spec.timeout)) for port in spec.tcp_ports
    ]
    attempts += [(check.name, _bind_http(host, check, spec.timeout, transport))
                 for check in spec.http]
    if spec.command is not None:
        attempts.append(("command",
                         _bind_command(host, spec.command_port, spec.command, spec.timeout)))
    if not attempts:
        return []
    with ThreadPoolExecutor(max_workers=len(attempts),
                            thread_name_prefix="gpufsm-probe") as pool:
        futures = [pool.submit(_retrying, name, attempt, spec, clock, rng)
                   for name, attempt in attempts]
        return [f.result() for f in futures]


def _retrying(name: str, attempt: Callable[[], _Outcome], spec: HealthSpec, clock: Clock,
              rng: random.Random) -> ProbeResult:
    """Try ``attempt`` until it passes or ``spec.attempts`` are spent; return the last."""
    def wait(state: tenacity.RetryCallState) -> float:
        # "Equal jitter": never less than half the step, so retries cannot hot-loop,
        # and never in lockstep, so a fleet booting together does not probe together.
        step = min(spec.backoff_max, spec.backoff * 2.0 ** (state.attempt_number - 1))
        return step / 2 + rng.uniform(0, step / 2)

    tries = 0

    def once() -> ProbeResult:
        nonlocal tries
        tries += 1
        outcome = _guarded(attempt)
        return ProbeResult(name=name, ok=outcome.error_kind is None,
                           error_kind=outcome.error_kind, detail=outcome.detail,
                           latency=outcome.latency, at=clock.now(), attempts=tries)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(spec.attempts),
        wait=wait,
        sleep=clock.sleep,
        retry=tenacity.retry_if_result(lambda r: not r.ok),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        before_sleep=lambda state: log.debug(
            "probe %s attempt %d failed: %s", name, state.attempt_number,
            state.outcome.result().detail if state.outcome else "?"),
    )
    result: ProbeResult = retrying(once)
    return result


def _guarded(attempt: Callable[[], _Outcome]) -> _Outcome:
    """Run one attempt; an exception that escaped a probe is still only a result."""
    started = time.perf_counter()
    try:
        return attempt()
    except Exception as exc:  # a probe must never take the engine's loop down
        kind, detail = classify(exc)
        return _Outcome(kind, detail, time.perf_counter() - started)


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """Map any probe failure to (error kind, short detail): the one place that knows how.

    The cause chain is walked because the meaningful error is usually wrapped: httpx's
    ConnectError is raised from httpcore's, which is raised from the ``OSError`` that
    says "refused" or the ``ssl.SSLError`` that says the handshake failed.
    """
    for err in _chain(exc):
        kind = _kind_of(err)
        if kind is not None:
            return kind, _short(f"{type(err).__name__}: {err}")
    return "error", _short(f"{type(exc).__name__}: {exc}")


def _kind_of(err: BaseException) -> ErrorKind | None:
    if isinstance(err, TimeoutError | httpx.TimeoutException | subprocess.TimeoutExpired):
        return "timeout"
    if isinstance(err, ssl.SSLError):  # before OSError: SSLError is one
        return "tls"
    if isinstance(err, socket.gaierror):
        return "dns"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, OSError) and err.errno in _UNREACHABLE:
        return "unreachable"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


# --- TCP ---------------------------------------------------------------------------

def _bind_tcp(host: str, port: int, timeout: float) -> Callable[[], _Outcome]:
    def attempt() -> _Outcome:
        started = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            kind, detail = classify(exc)
            return _Outcome(kind, detail, time.perf_counter() - started)
        return _Outcome(None, f"connected to port {port}", time.perf_counter() - started)
    return attempt


# --- HTTP --------------------------------------------------------------------------

def _bind_http(host: str, check: HttpCheck, timeout: float,
               transport: httpx.BaseTransport | None) -> Callable[[], _Outcome]:
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"{check.scheme}://{netloc}:{check.port}{check.path}"

    def attempt() -> _Outcome:
        # Our own transport is closed after each attempt, so a retry reconnects the way
        # a user would; an injected one belongs to the caller and is left open.
        own = None if transport is not None else httpx.HTTPTransport(
            verify=_tls_context(check.verify_tls))
        client = httpx.Client(transport=transport or own, timeout=httpx.Timeout(timeout),
                              follow_redirects=False,
                              headers={"User-Agent": "gpufsm-health/0.1"})
        started = time.perf_counter()
        try:
            kind, detail = _get(client, url, check, started, timeout)
        except httpx.HTTPError as exc:
            kind, detail = classify(exc)
        finally:
            if own is not None:
                client.close()
        return _Outcome(kind, detail, time.perf_counter() - started)
    return attempt


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One shared context per mode: loading the CA bundle costs ~0.2 s, a probe should not.

    SSLContext is safe to share between threads once configured, and this one is never
    changed after it is built.
    """
    return httpx.create_ssl_context(verify=verify)


def _get(client: httpx.Client, url: str, check: HttpCheck, started: float,
         timeout: float) -> tuple[ErrorKind | None, str]:
    with client.stream("GET", url) as response:
        status = response.status_code
        if status != check.expect_status:
            return "http_status", f"status {status}, expected {check.expect_status}"
        if check.contains is None:
            return None, f"status {status}"
        body = bytearray()
        # httpx's timeout bounds each read, not the whole body: a server dripping bytes
        # would pass every read, so the attempt's total time is checked here too.
        for chunk in response.iter_bytes():
            body += chunk
            if time.perf_counter() - started > timeout:
                return "timeout", f"body not read within {timeout:g}s"
            if len(body) >= _BODY_LIMIT:
                break
    text = bytes(body[:_BODY_LIMIT]).decode(response.encoding or "utf-8", errors="replace")
    if check.contains not in text:
        return "body_mismatch", f"status {status}, body lacks {check.contains!r}"
    return None, f"status {status}, body contains {check.contains!r}"


# --- command -----------------------------------------------------------------------

def _bind_command(host: str, port: int, argv: tuple[str, ...],
                  timeout: float) -> Callable[[], _Outcome]:
    env = {**os.environ, "GPUFSM_PROBE_HOST": host, "GPUFSM_PROBE_PORT": str(port)}

    def attempt() -> _Outcome:
        started = time.perf_counter()
        try:
            kind, detail = _run(argv, env, timeout)
        except OSError as exc:  # not found, not executable: say so, do not crash
            kind, detail = "error", _short(f"cannot run {argv[0]!r}: {exc.strerror or exc}")
        return _Outcome(kind, detail, time.perf_counter() - started)
    return attempt


def _run(argv: tuple[str, ...], env: dict[str, str], timeout: float
         ) -> tuple[ErrorKind | None, str]:
    """Run ``argv`` with no shell and no stdin; on timeout kill its whole process group.

    ``subprocess.run(timeout=…)`` kills only the direct child, so an ``ssh`` started by a
    wrapper script would outlive the probe; a new session lets us kill them all.
    """
    with subprocess.Popen(  # noqa: S603 - an argv the user configured, no shell
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return "timeout", f"still running after {timeout:g}s; killed"
    if proc.returncode == 0:
        return None, "exit status 0"
    tail = stderr.decode("utf-8", errors="replace").strip()[-200:]
    detail = f"exit status {proc.returncode}" + (f": {tail}" if tail else "")
    return "exit_status", _short(detail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited just now: nothing to kill
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a grandchild in its own session holds the pipe
        proc.kill()
        proc.wait()
