"""A real HTTP server on loopback that speaks one provider's dialect over a SimulatedCloud.

The server owns what every dialect shares: the socket and threads, bearer-key checks,
a request log with counts, and network-level faults switchable at run time (429 with or
without Retry-After, 5xx, 401, a bare 404 as a proxy would send, slow answers, dropped
connections, and error bodies that echo the caller's key). A ``Dialect`` turns a request
into a response in its provider's exact shapes; it never sees the faults.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = [
    "ADMIN_PREFIX",
    "Dialect",
    "EmulatorRequest",
    "EmulatorResponse",
    "EmulatorServer",
    "HttpFault",
]

#: Paths under this prefix go to ``EmulatorServer.admin`` when one is set (no provider
#: uses it): the emulator's own controls, outside auth, faults and the counts.
ADMIN_PREFIX = "/_emulator/"


@dataclass(frozen=True, slots=True)
class EmulatorRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        """The JSON body, or None when there is none (dialects answer the 400 themselves)."""
        if not self.body:
            return None
        return json.loads(self.body)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(slots=True)
class EmulatorResponse:
    status: int
    body: Any = None  # JSON-able, str (sent as text/plain), bytes, or None (empty)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Dialect(Protocol):
    """One provider's API over the simulated cloud."""

    name: str

    def handle(self, request: EmulatorRequest) -> EmulatorResponse: ...

    def unauthorized(self) -> EmulatorResponse:
        """The provider's 401 body."""
        ...

    def rate_limited(self) -> EmulatorResponse:
        """The provider's 429 body (headers are added by the fault)."""
        ...

    def server_error(self) -> EmulatorResponse:
        """The provider's 5xx body."""
        ...

    def provider_error(self, request: EmulatorRequest, status: int, code: str,
                       message: str | None) -> EmulatorResponse:
        """The provider's own error envelope carrying ``code`` (its documented word for
        the error), answered with ``status``: how a test makes any documented error
        happen, including ones the simulated cloud has no cause for."""
        ...


@dataclass(slots=True)
class HttpFault:
    """A fault for the next ``times`` matching requests.

    kind: ``429`` (``retry_after`` None = no header), ``5xx`` (``status``), ``401`` (the
    provider's own "bad key" answer), ``error`` (the provider's documented error
    ``code`` with ``status`` and an optional ``message``, in its own envelope), ``404``
    (a bare HTML 404 with none of the provider's error body: what a proxy or a wrong
    base URL answers), ``slow`` (sleep ``delay``
    seconds, then answer normally), ``drop`` (close the connection without answering,
    after doing the work when ``after_work``).

    ``echo_key``: the error body repeats the caller's bearer key in its message, as some
    servers do ("invalid key sk-…"), so tests can prove the adapters scrub it.
    ``after``: let that many matching requests through first (the second page of a
    listing fails, say).
    """

    kind: str
    times: int = 1
    method: str | None = None
    path_contains: str | None = None
    retry_after: float | None = None
    status: int = 503
    delay: float = 0.0
    after_work: bool = False
    echo_key: bool = False
    after: int = 0
    code: str | None = None
    message: str | None = None

    def matches(self, request: EmulatorRequest) -> bool:
        return (self.method is None or self.method == request.method) and (
            self.path_contains is None or self.path_contains in request.path
        )


#: What a proxy or a web server says for a path it does not know: no provider's body.
_BARE_404 = (b"<html><head><title>404 Not Found</title></head><body><center>"
             b"<h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>")

#: JSON fields that carry an error's human text, in every dialect's shapes.
_MESSAGE_FIELDS = ("message", "msg", "detail")


def _bearer(request: EmulatorRequest) -> str:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip()


def _echo(response: EmulatorResponse, key: str) -> EmulatorResponse:
    """``response`` with ``key`` added to its human text, wherever the dialect keeps it:
    the message fields of a JSON body (nested ones too), else a string ``error`` (RunPod
    v1), else the whole text body. Codes are left alone, so the error still maps."""
    suffix = f" (key {key})"

    def walk(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        found = False
        for name in _MESSAGE_FIELDS:
            if isinstance(node.get(name), str):
                node[name] += suffix
                found = True
        for value in node.values():
            found = walk(value) or found
        return found

    body = response.body
    if isinstance(body, dict):
        body = json.loads(json.dumps(body))  # a copy: dialects may share their bodies
        if not walk(body) and isinstance(body.get("error"), str):
            body["error"] += suffix
    elif isinstance(body, str):
        body += suffix
    elif isinstance(body, bytes):
        body += suffix.encode()
    else:
        body = f"error{suffix}"
    return EmulatorResponse(response.status, body, headers=dict(response.headers),
                            content_type=response.content_type)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each keep-alive answer waits
    # ~40 ms for a delayed ACK. Off, an emulator test suite runs twice as fast.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the emulator keeps its own log; stderr noise hides test output

    def _serve(self) -> None:
        emulator = self.server.emulator
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = EmulatorRequest(
            method=self.command,
            path=parsed.path,
            query=urllib.parse.parse_qs(parsed.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        response = emulator.dispatch(request)
        if response is None:  # drop: no answer at all
            self.close_connection = True
            self.connection.shutdown(2)
            return
        payload: bytes
        content_type = response.content_type
        if response.body is None:
            payload = b""
        elif isinstance(response.body, bytes):
            payload = response.body
        elif isinstance(response.body, str):
            payload, content_type = response.body.encode(), "text/plain"
        else:
            payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload or response.status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: EmulatorServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timeout, a Ctrl-C, a "slow" fault outlasting it) is
        what an emulator is for, not an error: socketserver would print a traceback for
        each, into whatever stderr the test runner holds at that moment."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EmulatorServer:
    """Serve ``dialect`` on 127.0.0.1 (a free port unless given) in a background thread.

    Use as a context manager. ``faults`` may be pushed at any time with ``inject``;
    ``counts`` tallies answered requests by ``"METHOD /path"`` for call-count assertions.
    """

    def __init__(self, dialect: Dialect, *, api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.dialect = dialect
        self._api_key = api_key
        self._faults: deque[HttpFault] = deque()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.log: deque[tuple[str, str, int]] = deque(maxlen=10_000)
        self.hooks: list[Callable[[EmulatorRequest, EmulatorResponse], None]] = []
        #: Answers ``ADMIN_PREFIX`` paths when set (see gpufsm.testing.emulators._admin).
        self.admin: Callable[[EmulatorRequest], EmulatorResponse] | None = None
        self._httpd = _Server((host, port), _Handler)
        self._httpd.emulator = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmulatorServer:
        if self._thread is None:
            # a short poll so stop() returns in ~50 ms instead of the default 0.5 s
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"emulator-{self.dialect.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, fault: HttpFault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, request: EmulatorRequest) -> HttpFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(request):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def dispatch(self, request: EmulatorRequest) -> EmulatorResponse | None:
        """Auth, faults, then the dialect. None means: drop the connection."""
        if self.admin is not None and request.path.startswith(ADMIN_PREFIX):
            return self.admin(request)  # the emulator's own controls: no key, no fault
        key = f"{request.method} {request.path}"
        if self._api_key is not None and request.headers.get("authorization") != (
            f"Bearer {self._api_key}"
        ):
            return self._record(key, self.dialect.unauthorized(), request)
        fault = self._take_fault(request)
        if fault is not None:
            answer = self._fault_answer(fault, request)
            if answer is not None:
                if fault.echo_key:
                    answer = _echo(answer, _bearer(request))
                return self._record(key, answer, request)
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "drop":
                if fault.after_work:
                    self.dialect.handle(request)
                with self._lock:
                    self.counts[key] += 1
                    self.log.append((request.method, request.path, 0))
                return None
        return self._record(key, self.dialect.handle(request), request)

    def _fault_answer(self, fault: HttpFault, request: EmulatorRequest) -> EmulatorResponse | None:
        """The canned answer a fault stands for, or None for the kinds that answer
        nothing themselves (slow, drop)."""
        answer: EmulatorResponse | None = None
        if fault.kind == "429":
            answer = self.dialect.rate_limited()
            if fault.retry_after is not None:
                answer.headers["Retry-After"] = f"{fault.retry_after:g}"
        elif fault.kind == "5xx":
            answer = self.dialect.server_error()
            answer.status = fault.status
        elif fault.kind == "401":
            answer = self.dialect.unauthorized()
        elif fault.kind == "error":
            answer = self.dialect.provider_error(request, fault.status, fault.code or "",
                                                 fault.message)
        elif fault.kind == "404":
            answer = EmulatorResponse(404, _BARE_404, content_type="text/html")
        return answer

    def _record(self, key: str, response: EmulatorResponse,
                request: EmulatorRequest) -> EmulatorResponse:
        with self._lock:
            self.counts[key] += 1
            self.log.append((request.method, request.path, response.status))
        for hook in self.hooks:
            hook(request, response)
        return response
