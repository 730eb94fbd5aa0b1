"""The health gate's probing room: specs, probes over real loopback sockets, retries, verdicts.

Every probe here talks to something real on 127.0.0.1: a listening socket, a closed port,
a listener whose accept queue is full (SYNs are dropped, so connect times out), a
``ThreadingHTTPServer`` with scripted endpoints, and child Python processes. Backoff
sleeps go to a FakeClock, so retries are asserted, never waited for; the only real waits
are the timeouts under test (a few tenths of a second each).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pydantic
import pytest

from gpufsm.errors import ValidationError
from gpufsm.health import (
    ERROR_KINDS,
    GateVerdict,
    HealthSpec,
    HttpCheck,
    ProbeResult,
    classify,
    gate_passed,
    gate_verdict,
    parse_health_spec,
    run_probes,
)
from gpufsm.testing import FakeClock

HOST = "127.0.0.1"
PY = sys.executable


# --- loopback fixtures ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Scripted endpoints; the server object carries the shared state."""

    server: _ProbeServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # probe gave up
            self._route()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        path = self.path
        self.server.seen.append(path)
        if path == "/ok":
            self._send(200, b"model ready\n")
        elif path == "/error":
            self._send(500, b"boom")
        elif path == "/redirect":
            self._send(302, headers={"Location": "/ok"})
        elif path == "/slow":
            self.server.release.wait(5)
            self._send(200, b"too late")
        elif path.startswith("/delay/"):
            time.sleep(int(path.split("/")[2]) / 1000)
            self._send(200, b"ready")
        elif path.startswith("/flaky/"):
            with self.server.lock:
                self.server.hits[path] = self.server.hits.get(path, 0) + 1
                hit = self.server.hits[path]
            self._send(503 if hit <= 2 else 200, b"ready" if hit > 2 else b"loading")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                if self.server.release.wait(0.05):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            self._send(404)


class _ProbeServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close joins every handler: nothing outlives a test
    block_on_close = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.seen: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def web() -> Iterator[_ProbeServer]:
    server = _ProbeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def listener() -> Iterator[int]:
    """A port with a socket listening on it."""
    with socket.create_server((HOST, 0)) as sock:
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nobody listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops new SYNs, connect hangs.

    Filled by connecting until a connect itself times out, so the fixture proves the
    behaviour it promises before any test relies on it.
    """
    with socket.create_server((HOST, 0), backlog=0) as server:
        port = server.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(16):
                try:
                    fillers.append(socket.create_connection((HOST, port), timeout=0.2))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel accepts past the backlog; no loopback blackhole")
            yield port
        finally:
            for sock in fillers:
                sock.close()


def _spec(**kw: object) -> HealthSpec:
    """A spec that fails fast: one attempt, a short timeout, unless a test says otherwise."""
    return HealthSpec.model_validate({"attempts": 1, "timeout": 2.0, **kw})


def _one(host: str, spec: HealthSpec, *, clock: FakeClock | None = None,
         transport: httpx.BaseTransport | None = None,
         rng: random.Random | None = None) -> ProbeResult:
    results = run_probes(host, spec, clock=clock, transport=transport, rng=rng)
    assert len(results) == 1
    return results[0]


# --- the spec ------------------------------------------------------------------------


class TestSpec:
    def test_defaults(self) -> None:
        spec = HealthSpec()
        assert (spec.timeout, spec.attempts, spec.deadline) == (5.0, 3, 600.0)
        assert spec.is_empty
        assert spec.probe_names == ()
        assert spec.command_port == 22

    def test_probe_names_in_run_order(self) -> None:
        spec = HealthSpec(tcp_ports=(22, 2222), command=("true",), http=(
            HttpCheck(port=8000, path="/health"),
            HttpCheck(port=443, path="/", scheme="https")))
        assert not spec.is_empty
        assert spec.probe_names == ("tcp:22", "tcp:2222", "http:8000/health", "https:443/",
                                    "command")
        assert spec.command_port == 22

    @pytest.mark.parametrize(("data", "field"), [
        ({"tcp_ports": [0]}, "tcp_ports.0"),
        ({"tcp_ports": [22, 65536]}, "tcp_ports.1"),
        ({"tcp_ports": [22, 22]}, "tcp_ports"),
        ({"http": [{"port": 8000, "path": "health"}]}, "http.0.path"),
        ({"http": [{"port": 8000, "path": "/a b"}]}, "http.0.path"),
        ({"http": [{"port": 70000, "path": "/"}]}, "http.0.port"),
        ({"http": [{"port": 80, "path": "/", "scheme": "ftp"}]}, "http.0.scheme"),
        ({"http": [{"port": 80, "path": "/", "expect_status": 99}]}, "http.0.expect_status"),
        ({"http": [{"port": 80, "path": "/", "contains": ""}]}, "http.0.contains"),
        ({"http": [{"port": 80, "path": "/", "method": "POST"}]}, "http.0.method"),
        ({"http": [{"port": 80, "path": "/"}, {"port": 80, "path": "/"}]}, "http"),
        ({"command": []}, "command"),
        ({"command": ["  "]}, "command"),
        ({"command": "ssh host true"}, "command"),  # a shell string is not an argv
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"attempts": 0}, "attempts"),
        ({"deadline": -1}, "deadline"),
        ({"backoff": 5, "backoff_max": 1}, "backoff_max"),
        ({"tcp_port": [22]}, "tcp_port"),  # a typo fails instead of gating on nothing
    ])
    def test_errors_name_the_field(self, data: dict[str, object], field: str) -> None:
        with pytest.raises(ValidationError) as info:
            parse_health_spec(data)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")
        assert isinstance(info.value.__cause__, pydantic.ValidationError)

    def test_direct_construction_names_the_field_too(self) -> None:
        with pytest.raises(pydantic.ValidationError, match=r"tcp_ports\.0"):
            HealthSpec(tcp_ports=(0,))

    def test_parse_accepts_a_spec_and_json_data(self) -> None:
        spec = HealthSpec(tcp_ports=(22,))
        assert parse_health_spec(spec) is spec
        data = json.loads(HealthSpec(tcp_ports=(22,), http=(
            HttpCheck(port=8000, path="/health", contains="ok"),)).model_dump_json())
        assert parse_health_spec(data).http[0].name == "http:8000/health"
        assert parse_health_spec(data).http[0].contains == "ok"

    def test_frozen(self) -> None:
        spec = HealthSpec()
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            spec.timeout = 1.0  # type: ignore[misc]


# --- TCP -----------------------------------------------------------------------------


class TestTcp:
    def test_listening_port_is_ok(self, listener: int) -> None:
        result = _one(HOST, _spec(tcp_ports=(listener,)))
        assert (result.name, result.ok, result.error_kind) == (f"tcp:{listener}", True, None)
        assert result.detail == f"connected to port {listener}"
        assert 0 < result.latency < 2.0
        assert result.attempts == 1

    def test_closed_port_is_refused(self, closed_port: int) -> None:
        result = _one(HOST, _spec(tcp_ports=(closed_port,)))
        assert (result.ok, result.error_kind) == (False, "refused")
        assert "ConnectionRefusedError" in result.detail

    def test_full_accept_queue_times_out(self, blackhole: int) -> None:
        started = time.perf_counter()
        result = _one(HOST, _spec(tcp_ports=(blackhole,), timeout=0.2))
        assert (result.ok, result.error_kind) == (False, "timeout")
        assert 0.19 <= result.latency < 1.0
        assert time.perf_counter() - started < 1.0


# --- HTTP ----------------------------------------------------------------------------


class TestHttp:
    def _check(self, web: _ProbeServer, path: str, **kw: object) -> ProbeResult:
        check = HttpCheck.model_validate({"port": web.port, "path": path, **kw})
        return _one(HOST, _spec(http=(check,)))

    def test_200_is_ok(self, web: _ProbeServer) -> None:
        result = self._check(web, "/ok")
        assert (result.name, result.ok, result.detail) == (f"http:{web.port}/ok", True,
                                                           "status 200")
        assert web.seen == ["/ok"]

    def test_500_is_http_status(self, web: _ProbeServer) -> None:
        result = self._check(web, "/error")
        assert (result.ok, result.error_kind) == (False, "http_status")
        assert result.detail == "status 500, expected 200"

    def test_expected_status_other_than_200(self, web: _ProbeServer) -> None:
        assert self._check(web, "/error", expect_status=500).ok

    def test_redirect_is_not_followed(self, web: _ProbeServer) -> None:
        result = self._check(web, "/redirect")
        assert (result.error_kind, result.detail) == ("http_status", "status 302, expected 200")
        assert web.seen == ["/redirect"]

    def test_body_contains(self, web: _ProbeServer) -> None:
        result = self._check(web, "/ok", contains="model ready")
        assert (result.ok, result.detail) == (True, "status 200, body contains 'model ready'")

    def test_body_without_the_text_is_body_mismatch(self, web: _ProbeServer) -> None:
        result = self._check(web, "/ok", contains="loaded")
        assert (result.ok, result.error_kind) == (False, "body_mismatch")
        assert result.detail == "status 200, body lacks 'loaded'"

    def test_slow_answer_times_out(self, web: _ProbeServer) -> None:
        check = HttpCheck(port=web.port, path="/slow")
        result = _one(HOST, _spec(http=(check,), timeout=0.2))
        assert (result.ok, result.error_kind) == (False, "timeout")
        assert "ReadTimeout" in result.detail
        assert 0.19 <= result.latency < 1.5

    def test_dripping_body_is_bounded_by_the_attempt_timeout(self, web: _ProbeServer) -> None:
        # Each byte arrives well within the read timeout; only the total is too slow.
        check = HttpCheck(port=web.port, path="/drip", contains="never")
        result = _one(HOST, _spec(http=(check,), timeout=0.3))
        assert (result.ok, result.error_kind) == (False, "timeout")
        assert result.detail == "body not read within 0.3s"
        assert result.latency < 1.5

    def test_closed_port_is_refused(self, closed_port: int) -> None:
        result = _one(HOST, _spec(http=(HttpCheck(port=closed_port, path="/"),)))
        assert (result.ok, result.error_kind) == (False, "refused")

    def test_https_against_plain_http_is_tls(self, web: _ProbeServer) -> None:
        check = HttpCheck(port=web.port, path="/ok", scheme="https", verify_tls=False)
        result = _one(HOST, _spec(http=(check,)))
        assert (result.name, result.ok, result.error_kind) == (f"https:{web.port}/ok", False,
                                                               "tls")

    def test_injected_transport_gets_the_url_and_stays_open(self) -> None:
        requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            return httpx.Response(200, text="ok")

        transport = httpx.MockTransport(handler)
        spec = _spec(http=(HttpCheck(port=8000, path="/health?full=1", contains="ok"),))
        result = _one("::1", spec, transport=transport)
        assert (result.name, result.ok) == ("http:8000/health?full=1", True)
        assert [str(r.url) for r in requests] == ["http://[::1]:8000/health?full=1"]
        assert requests[0].headers["user-agent"] == "gpufsm-health/0.1"
        with httpx.Client(transport=transport) as client:  # still usable by its owner
            assert client.get("http://example.test/").text == "ok"

    def test_a_probe_that_blows_up_is_a_result(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise RuntimeError("bug in a custom transport")

        spec = _spec(http=(HttpCheck(port=8000, path="/"),))
        result = _one(HOST, spec, transport=httpx.MockTransport(handler))
        assert (result.ok, result.error_kind) == (False, "error")
        assert result.detail == "RuntimeError: bug in a custom transport"


# --- command -------------------------------------------------------------------------


class TestCommand:
    def test_exit_0_is_ok(self) -> None:
        result = _one(HOST, _spec(command=(PY, "-c", "import sys; sys.exit(0)")))
        assert (result.name, result.ok, result.detail) == ("command", True, "exit status 0")

    def test_exit_1_is_exit_status_with_stderr(self) -> None:
        code = "import sys; sys.stderr.write('ssh: no route\\n'); sys.exit(1)"
        result = _one(HOST, _spec(command=(PY, "-c", code)))
        assert (result.ok, result.error_kind) == (False, "exit_status")
        assert result.detail == "exit status 1: ssh: no route"

    def test_host_and_port_are_in_the_environment(self, listener: int) -> None:
        code = ("import os, sys; e = os.environ; "
                "sys.exit(0 if (e['GPUFSM_PROBE_HOST'], e['GPUFSM_PROBE_PORT']) "
                "== (sys.argv[1], sys.argv[2]) else 3)")
        assert _one(HOST, _spec(command=(PY, "-c", code, HOST, "22"))).ok
        results = run_probes(HOST, _spec(tcp_ports=(listener,),
                                         command=(PY, "-c", code, HOST, str(listener))))
        assert [(r.name, r.ok) for r in results] == [(f"tcp:{listener}", True), ("command", True)]

    def test_arguments_are_not_shell_parsed(self, tmp_path: Path) -> None:
        marker = tmp_path / "pwned"
        payload = f"$(touch {marker}); true"
        code = f"import sys; sys.exit(0 if sys.argv[1] == {payload!r} else 4)"
        result = _one(HOST, _spec(command=(PY, "-c", code, payload)))
        assert result.ok  # the argument arrived verbatim …
        assert not marker.exists()  # … and nothing ran it

    def test_probe_variables_do_not_leak_into_our_environment(self) -> None:
        assert _one(HOST, _spec(command=(PY, "-c", "pass"))).ok
        assert "GPUFSM_PROBE_HOST" not in os.environ

    def test_sleeping_command_times_out_and_is_killed(self, tmp_path: Path) -> None:
        # The command starts a grandchild (as an ssh wrapper script would): the whole
        # process group must die, not only the direct child.
        pidfile = tmp_path / "grandchild.pid"
        code = ("import subprocess, sys, time; "
                "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(30)")
        started = time.perf_counter()
        result = _one(HOST, _spec(command=(PY, "-c", code), timeout=0.5))
        assert (result.ok, result.error_kind) == (False, "timeout")
        assert result.detail == "still running after 0.5s; killed"
        assert time.perf_counter() - started < 3.0
        grandchild = int(pidfile.read_text())
        assert _dead_soon(grandchild), f"grandchild {grandchild} survived the probe"

    def test_missing_program_is_error(self, tmp_path: Path) -> None:
        result = _one(HOST, _spec(command=(str(tmp_path / "no-such-ssh"), "host")))
        assert (result.ok, result.error_kind) == (False, "error")
        assert result.detail.startswith("cannot run ")
        assert "No such file or directory" in result.detail


def _dead_soon(pid: int, within: float = 3.0) -> bool:
    """Gone, or a zombie (PID 1 in a container may never reap it): either way not running."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


# --- retries -------------------------------------------------------------------------


class TestRetries:
    def test_fails_twice_then_passes_within_three_attempts(self, web: _ProbeServer) -> None:
        clock = FakeClock()
        spec = _spec(http=(HttpCheck(port=web.port, path="/flaky/a", contains="ready"),),
                     attempts=3, backoff=1.0, backoff_max=10.0)
        result = _one(HOST, spec, clock=clock)
        assert (result.ok, result.attempts, result.detail) == (
            True, 3, "status 200, body contains 'ready'")
        assert 0 < result.latency < 2.0
        assert web.hits["/flaky/a"] == 3
        # Two jittered waits, each between half and all of its step: [0.5, 1] + [1, 2].
        assert 1.5 <= clock.monotonic() <= 3.0
        assert result.at == clock.now()

    def test_gives_up_after_the_attempts_with_the_last_failure(self, web: _ProbeServer
                                                                ) -> None:
        clock = FakeClock()
        spec = _spec(http=(HttpCheck(port=web.port, path="/flaky/b"),), attempts=2)
        result = _one(HOST, spec, clock=clock)
        assert (result.ok, result.error_kind, result.attempts) == (False, "http_status", 2)
        assert result.detail == "status 503, expected 200"
        assert web.hits["/flaky/b"] == 2

    def test_a_passing_probe_is_not_retried(self, listener: int) -> None:
        clock = FakeClock()
        result = _one(HOST, _spec(tcp_ports=(listener,), attempts=5), clock=clock)
        assert (result.ok, result.attempts) == (True, 1)
        assert clock.monotonic() == 0.0

    def test_backoff_is_capped_and_seeded_jitter_repeats(self, closed_port: int) -> None:
        spec = _spec(tcp_ports=(closed_port,), attempts=5, backoff=1.0, backoff_max=2.0)
        waits = []
        for _ in range(2):
            clock = FakeClock()
            result = _one(HOST, spec, clock=clock, rng=random.Random(7))
            assert (result.error_kind, result.attempts) == ("refused", 5)
            waits.append(clock.monotonic())
        # steps 1, 2, 2, 2 (capped), each waited for half to all of it
        assert 3.5 <= waits[0] <= 7.0
        assert waits[0] == waits[1]

    def test_results_are_stamped_by_the_injected_clock(self, listener: int) -> None:
        start = datetime(2030, 5, 1, 12, tzinfo=UTC)
        result = _one(HOST, _spec(tcp_ports=(listener,)), clock=FakeClock(start))
        assert result.at == start
        assert result.at.tzinfo is UTC


# --- one round -----------------------------------------------------------------------


class TestRound:
    def test_probes_run_in_parallel(self, web: _ProbeServer) -> None:
        spec = _spec(http=(HttpCheck(port=web.port, path="/delay/300/a"),
                           HttpCheck(port=web.port, path="/delay/300/b")),
                     command=(PY, "-c", "import time; time.sleep(0.3)"))
        started = time.perf_counter()
        results = run_probes(HOST, spec)
        elapsed = time.perf_counter() - started
        assert [(r.name, r.ok) for r in results] == [
            (f"http:{web.port}/delay/300/a", True), (f"http:{web.port}/delay/300/b", True),
            ("command", True)]
        assert all(r.latency >= 0.29 for r in results)
        assert elapsed < 0.75, f"three 0.3 s probes took {elapsed:.2f}s: not parallel"

    def test_mixed_round_reports_every_probe_in_order(self, web: _ProbeServer, listener: int,
                                                      closed_port: int) -> None:
        spec = _spec(tcp_ports=(listener, closed_port),
                     http=(HttpCheck(port=web.port, path="/ok"),
                           HttpCheck(port=web.port, path="/error")),
                     command=(PY, "-c", "raise SystemExit(2)"))
        results = run_probes(HOST, spec)
        assert [r.name for r in results] == list(spec.probe_names)
        assert [r.error_kind for r in results] == [None, "refused", None, "http_status",
                                                   "exit_status"]
        assert not gate_passed(results)

    def test_empty_spec_runs_nothing(self) -> None:
        assert run_probes(HOST, HealthSpec()) == []

    @pytest.mark.parametrize("host", ["", "  ", "10.0.0.1 ; rm"])
    def test_a_bad_host_is_a_caller_error(self, host: str) -> None:
        with pytest.raises(ValidationError) as info:
            run_probes(host, HealthSpec(tcp_ports=(22,)))
        assert info.value.field == "host"


# --- results and the verdict ---------------------------------------------------------


AT = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)


def _result(name: str = "tcp:22", kind: str | None = None) -> ProbeResult:
    return ProbeResult(name=name, ok=kind is None, error_kind=kind,  # type: ignore[arg-type]
                       detail="d", latency=0.012, at=AT, attempts=2)


class TestResults:
    def test_json_round_trip(self) -> None:
        for result in (_result(), _result("http:8000/health", "timeout")):
            data = result.to_json()
            assert ProbeResult.from_json(json.loads(json.dumps(data))) == result
            assert ProbeResult.from_json(json.dumps(data)) == result
        assert _result("command", "exit_status").to_json() == {
            "name": "command", "ok": False, "error_kind": "exit_status", "detail": "d",
            "latency": 0.012, "at": "2026-01-01T09:30:00+00:00", "attempts": 2}

    def test_round_trip_of_a_real_probe(self, closed_port: int) -> None:
        result = _one(HOST, _spec(tcp_ports=(closed_port,)))
        assert ProbeResult.from_json(json.dumps(result.to_json())) == result

    def test_from_json_normalises_the_offset_to_utc(self) -> None:
        data = _result().to_json() | {"at": "2026-01-01T11:30:00+02:00"}
        assert ProbeResult.from_json(data).at == AT
        assert ProbeResult.from_json(data).at.utcoffset() == timedelta(0)

    @pytest.mark.parametrize(("change", "field"), [
        ({"error_kind": "on_fire"}, "error_kind"),
        ({"at": "yesterday"}, "at"),
        ({"at": "2026-01-01T09:30:00"}, "at"),
        ({"latency": "fast"}, "latency"),
        ({"ok": "yes"}, "ok"),
        ({"name": None}, "name"),
        ({"attempts": 1.5}, "attempts"),
        ({"ok": True}, "probe_result"),  # ok with an error kind: not something we wrote
    ])
    def test_from_json_rejects_what_we_never_wrote(self, change: dict[str, object],
                                                   field: str) -> None:
        data = _result("tcp:22", "refused").to_json() | change
        with pytest.raises(ValidationError) as info:
            ProbeResult.from_json(data)
        assert info.value.field == field

    def test_from_json_rejects_non_objects(self) -> None:
        for bad in ("[1, 2]", "not json"):
            with pytest.raises(ValidationError) as info:
                ProbeResult.from_json(bad)
            assert info.value.field == "probe_result"

    def test_results_keep_their_invariants(self) -> None:
        with pytest.raises(ValueError, match="ok exactly when"):
            ProbeResult(name="x", ok=True, error_kind="timeout", detail="", latency=0, at=AT)
        with pytest.raises(ValueError, match="aware UTC"):
            ProbeResult(name="x", ok=True, error_kind=None, detail="", latency=0,
                        at=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="aware UTC"):
            ProbeResult(name="x", ok=True, error_kind=None, detail="", latency=0,
                        at=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))

    def test_error_kinds(self) -> None:
        assert sorted(ERROR_KINDS) == ["body_mismatch", "dns", "error", "exit_status",
                                       "http_status", "refused", "timeout", "tls",
                                       "unreachable"]


class TestVerdict:
    SPEC = HealthSpec(tcp_ports=(22,), http=(HttpCheck(port=8000, path="/health"),),
                      deadline=600)

    def _verdict(self, results: list[ProbeResult], after: float) -> GateVerdict:
        return gate_verdict(self.SPEC, results, running_since=AT,
                            now=AT + timedelta(seconds=after))

    def test_all_ok_passes_even_late(self) -> None:
        ok = [_result("tcp:22"), _result("http:8000/health")]
        assert gate_passed(ok)
        assert self._verdict(ok, 10) is GateVerdict.PASSED
        assert self._verdict(ok, 10_000) is GateVerdict.PASSED

    def test_failing_waits_until_the_deadline_then_fails(self) -> None:
        half = [_result("tcp:22"), _result("http:8000/health", "http_status")]
        assert not gate_passed(half)
        assert self._verdict(half, 599.9) is GateVerdict.PENDING
        assert self._verdict(half, 600) is GateVerdict.FAILED

    def test_missing_results_never_pass(self) -> None:
        assert gate_passed([])  # nothing failed …
        assert self._verdict([], 1) is GateVerdict.PENDING  # … but nothing was probed
        assert self._verdict([_result("tcp:22")], 1) is GateVerdict.PENDING
        assert self._verdict([], 601) is GateVerdict.FAILED

    def test_no_probes_means_running_is_running(self) -> None:
        assert gate_verdict(HealthSpec(), [], running_since=AT, now=AT) is GateVerdict.PASSED


# --- classification ------------------------------------------------------------------


def _raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        raise outer from inner
    except Exception as exc:
        return exc


class TestClassify:
    @pytest.mark.parametrize(("exc", "kind"), [
        (TimeoutError("timed out"), "timeout"),
        (httpx.ReadTimeout("read"), "timeout"),
        (subprocess.TimeoutExpired(["ssh"], 1.0), "timeout"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "tls"),
        (_raised_from(httpx.ConnectError("x"),
                      _raised_from(RuntimeError("httpcore"), ConnectionRefusedError())),
         "refused"),
        (_raised_from(httpx.ConnectError("x"), socket.gaierror(-2, "unknown")), "dns"),
        (_raised_from(httpx.ConnectError("x"), ssl.SSLError(1, "handshake")), "tls"),
        (httpx.RemoteProtocolError("server disconnected"), "error"),
        (OSError(errno.EPERM, "Operation not permitted"), "error"),
        (ValueError("bug"), "error"),
    ])
    def test_kinds(self, exc: BaseException, kind: str) -> None:
        assert classify(exc)[0] == kind

    def test_detail_is_short_and_single_line(self) -> None:
        kind, detail = classify(RuntimeError("line one\nline two " + "x" * 1000))
        assert kind == "error"
        assert detail.startswith("RuntimeError: line one line two x")
        assert len(detail) == 300
        assert "\n" not in detail

    def test_a_cyclic_cause_chain_ends(self) -> None:
        a, b = ValueError("a"), ValueError("b")
        a.__cause__, b.__cause__ = b, a
        assert classify(a) == ("error", "ValueError: a")
