"""EmulatorServer: a real loopback HTTP server, its auth check, faults, log and hooks.

A tiny dialect over a dict stands in for a provider. One server is shared by the module
(each stop waits out ``serve_forever``'s poll interval) and reset before every test;
the lifecycle tests start their own.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)

KEY = "emu-key-1"
#: Plain HTTP only; one context, so each client does not reload the CA bundle (~60 ms).
TLS = ssl.create_default_context()


class DictDialect:
    """A key-value provider: ``/kv/<key>`` GET/PUT/DELETE, plus fixed body shapes."""

    name = "dict"

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.handled: list[EmulatorRequest] = []

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        self.handled.append(request)
        path = request.path
        if path == "/json":
            return EmulatorResponse(200, {"a": [1, 2.5, None], "b": "ünï", "c": {"d": True}},
                                    headers={"X-Request-Id": "rid-1"})
        if path == "/text":
            return EmulatorResponse(200, "plain words\nline two")
        if path == "/bytes":
            return EmulatorResponse(200, b"\x00\x01\xfe\xff", content_type="image/png")
        if path == "/empty":
            return EmulatorResponse(200)
        if path == "/echo":
            return EmulatorResponse(200, {
                "method": request.method, "path": request.path, "query": request.query,
                "page": request.param("page"), "missing": request.param("nope", "dflt"),
                "json": request.json(), "x_custom": request.headers.get("x-custom"),
            })
        if path.startswith("/kv/"):
            key = path.removeprefix("/kv/")
            if request.method == "PUT":
                self.data[key] = request.json()
                return EmulatorResponse(201, {"key": key})
            if request.method == "DELETE":
                self.data.pop(key, None)
                return EmulatorResponse(204)
            if key in self.data:
                return EmulatorResponse(200, {"key": key, "value": self.data[key]})
            return EmulatorResponse(404, {"error": "not found"})
        return EmulatorResponse(404, {"error": "no route"})

    def unauthorized(self) -> EmulatorResponse:
        return EmulatorResponse(401, {"error": "invalid api key"})

    def rate_limited(self) -> EmulatorResponse:
        return EmulatorResponse(429, {"error": "too many requests"})

    def server_error(self) -> EmulatorResponse:
        return EmulatorResponse(500, {"error": "internal"})


@pytest.fixture(scope="module")
def shared() -> Iterator[EmulatorServer]:
    with EmulatorServer(DictDialect()) as server:
        yield server


@pytest.fixture
def server(shared: EmulatorServer) -> EmulatorServer:
    shared.dialect = DictDialect()
    shared.clear_faults()
    shared.counts.clear()
    shared.log.clear()
    shared.hooks.clear()
    return shared


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0, verify=TLS) as c:
        yield c


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---- serving and bodies --------------------------------------------------------------------


class TestServing:
    def test_url_is_loopback_with_a_free_port(self, server):
        assert server.url.startswith("http://127.0.0.1:")
        port = int(server.url.rsplit(":", 1)[1])
        assert 0 < port < 65536
        assert not port_is_closed(port)

    def test_json_body(self, client):
        response = client.get("/json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "rid-1"
        assert response.json() == {"a": [1, 2.5, None], "b": "ünï", "c": {"d": True}}

    def test_text_body(self, client):
        response = client.get("/text")
        assert response.headers["content-type"] == "text/plain"
        assert response.text == "plain words\nline two"

    def test_bytes_body(self, client):
        response = client.get("/bytes")
        assert response.headers["content-type"] == "image/png"
        assert response.content == b"\x00\x01\xfe\xff"
        assert response.headers["content-length"] == "4"

    def test_empty_body(self, client):
        response = client.get("/empty")
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-length"] == "0"

    def test_204_no_content(self, client, server):
        client.put("/kv/a", json=1)
        response = client.delete("/kv/a")
        assert response.status_code == 204
        assert response.content == b""
        assert "content-type" not in response.headers
        assert server.dialect.data == {}

    def test_request_is_parsed(self, client):
        response = client.post("/echo", params={"page": "2", "tag": ["x", "y"]},
                               json={"n": [1, 2]}, headers={"X-Custom": "hello"})
        assert response.json() == {
            "method": "POST", "path": "/echo", "query": {"page": ["2"], "tag": ["x", "y"]},
            "page": "2", "missing": "dflt", "json": {"n": [1, 2]}, "x_custom": "hello",
        }

    def test_no_body_is_none(self, client):
        assert client.get("/echo").json()["json"] is None

    def test_state_round_trip_and_methods(self, client):
        assert client.put("/kv/k1", json={"v": [1]}).status_code == 201
        assert client.get("/kv/k1").json() == {"key": "k1", "value": {"v": [1]}}
        assert client.get("/kv/other").status_code == 404
        assert client.patch("/nowhere").status_code == 404

    def test_no_key_configured_accepts_anything(self, client):
        assert client.get("/json", headers={"Authorization": "Bearer x"}).status_code == 200

    def test_keep_alive_connection_serves_many_requests(self, client, server):
        for i in range(5):
            assert client.put(f"/kv/{i}", json=i).status_code == 201
        assert server.dialect.data == {str(i): i for i in range(5)}


    def test_keep_alive_answers_with_a_body_are_fast(self, client):
        # Headers and body are two writes: with Nagle on, each answer waited ~40 ms.
        client.get("/json")  # connect first
        t0 = time.perf_counter()
        for _ in range(5):
            client.get("/json")
        assert time.perf_counter() - t0 < 0.1


# ---- the bearer key ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_shared() -> Iterator[EmulatorServer]:
    with EmulatorServer(DictDialect(), api_key=KEY) as server:
        yield server


class TestAuth:
    @pytest.fixture
    def keyed(self, keyed_shared):
        keyed_shared.dialect = DictDialect()
        keyed_shared.clear_faults()
        keyed_shared.counts.clear()
        keyed_shared.log.clear()
        return keyed_shared

    @pytest.fixture
    def client(self, keyed):
        with httpx.Client(base_url=keyed.url, timeout=5.0, verify=TLS) as c:
            yield c

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                         {"Authorization": KEY},
                                         {"Authorization": f"bearer {KEY}"}])
    def test_bad_or_missing_key_is_unauthorized(self, keyed, client, headers):
        response = client.get("/json", headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "invalid api key"}
        assert keyed.dialect.handled == []
        assert keyed.log[-1] == ("GET", "/json", 401)
        assert keyed.counts["GET /json"] == 1

    def test_right_key_passes(self, keyed, client):
        response = client.get("/json", headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 200
        assert len(keyed.dialect.handled) == 1

    def test_auth_is_checked_before_faults(self, keyed, client):
        keyed.inject(HttpFault("5xx"))
        assert client.get("/json").status_code == 401
        ok = client.get("/json", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 503  # the fault was still waiting


# ---- faults --------------------------------------------------------------------------------


class TestFaults:
    def test_429_with_retry_after(self, server, client):
        server.inject(HttpFault("429", retry_after=2.5))
        response = client.get("/json")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2.5"
        assert response.json() == {"error": "too many requests"}
        assert server.dialect.handled == []
        assert client.get("/json").status_code == 200

    def test_429_whole_seconds_format(self, server, client):
        server.inject(HttpFault("429", retry_after=30))
        assert client.get("/json").headers["retry-after"] == "30"

    def test_429_without_retry_after(self, server, client):
        server.inject(HttpFault("429"))
        response = client.get("/json")
        assert response.status_code == 429
        assert "retry-after" not in response.headers

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_5xx_with_chosen_status(self, server, client, status):
        server.inject(HttpFault("5xx", status=status))
        response = client.get("/json")
        assert response.status_code == status
        assert response.json() == {"error": "internal"}
        assert server.dialect.handled == []

    def test_5xx_defaults_to_503(self, server, client):
        server.inject(HttpFault("5xx"))
        assert client.get("/json").status_code == 503

    def test_slow_then_normal_answer(self, server, client):
        server.inject(HttpFault("slow", delay=0.05))
        t0 = time.perf_counter()
        response = client.get("/json")
        elapsed = time.perf_counter() - t0
        assert elapsed >= 0.05
        assert response.status_code == 200
        assert response.json()["b"] == "ünï"
        assert len(server.dialect.handled) == 1

    def test_drop_without_work(self, server, client):
        server.inject(HttpFault("drop"))
        with pytest.raises(httpx.RemoteProtocolError):
            client.put("/kv/a", json=1)
        assert server.dialect.handled == []
        assert server.dialect.data == {}
        assert server.counts["PUT /kv/a"] == 1
        assert list(server.log) == [("PUT", "/kv/a", 0)]
        # the same client reconnects for the next request
        assert client.put("/kv/a", json=2).status_code == 201
        assert server.dialect.data == {"a": 2}

    def test_drop_after_work(self, server, client):
        server.inject(HttpFault("drop", after_work=True))
        with pytest.raises(httpx.TransportError):
            client.put("/kv/a", json="done")
        assert server.dialect.data == {"a": "done"}  # the work happened, the answer did not
        assert len(server.dialect.handled) == 1

    def test_times(self, server, client):
        server.inject(HttpFault("5xx", times=2))
        statuses = [client.get("/json").status_code for _ in range(3)]
        assert statuses == [503, 503, 200]

    def test_method_filter(self, server, client):
        server.inject(HttpFault("5xx", method="PUT"))
        assert client.get("/kv/a").status_code == 404  # not the fault's method
        assert client.put("/kv/a", json=1).status_code == 503
        assert client.put("/kv/a", json=1).status_code == 201

    def test_path_filter(self, server, client):
        server.inject(HttpFault("429", path_contains="/kv/"))
        assert client.get("/json").status_code == 200
        assert client.get("/kv/x").status_code == 429
        assert client.get("/kv/x").status_code == 404

    def test_faults_apply_in_order_per_match(self, server, client):
        server.inject(HttpFault("5xx", status=500, path_contains="/json"))
        server.inject(HttpFault("5xx", status=502))
        server.inject(HttpFault("429"))
        assert client.get("/text").status_code == 502  # first fault matching /text
        assert client.get("/json").status_code == 500
        assert client.get("/json").status_code == 429
        assert client.get("/json").status_code == 200

    def test_401_is_the_dialects_own_refusal(self, server, client):
        server.inject(HttpFault("401"))
        response = client.get("/json")
        assert (response.status_code, response.json()) == (401, {"error": "invalid api key"})
        assert server.dialect.handled == []

    def test_404_is_bare_html_with_no_provider_body(self, server, client):
        server.inject(HttpFault("404", path_contains="/kv/"))
        response = client.get("/kv/a")
        assert response.status_code == 404
        assert response.headers["content-type"] == "text/html"
        assert "404 Not Found" in response.text and "error" not in response.text
        assert server.dialect.handled == []

    @pytest.mark.parametrize("kind", ["401", "404", "429", "5xx"])
    def test_echo_key_repeats_the_callers_key_in_the_error(self, server, client, kind):
        server.inject(HttpFault(kind, echo_key=True))
        response = client.get("/json", headers={"Authorization": "Bearer sk-live-ECHOED"})
        assert "sk-live-ECHOED" in response.text
        assert client.get("/json").status_code == 200  # one answer only

    @pytest.mark.parametrize(("body", "echoed"), [
        ({"error": {"code": "x/y", "message": "m"}},  # the code is left alone
         {"error": {"code": "x/y", "message": "m (key K)"}}),
        ({"success": False, "error": "auth_error", "msg": "bad"},
         {"success": False, "error": "auth_error", "msg": "bad (key K)"}),
        ({"error": "Pod not found.", "status": 404},
         {"error": "Pod not found. (key K)", "status": 404}),
        ({"title": "Too Many Requests", "detail": "slow"},
         {"title": "Too Many Requests", "detail": "slow (key K)"}),
    ])
    def test_echo_keeps_the_codes_a_mapper_reads(self, body, echoed):
        from gpufsm.testing.emulators._server import _echo

        assert _echo(EmulatorResponse(400, body), "K").body == echoed
        assert body != echoed  # the dialect's own body is not changed

    def test_after_lets_requests_through_first(self, server, client):
        server.inject(HttpFault("5xx", after=2, times=1))
        statuses = [client.get("/json").status_code for _ in range(4)]
        assert statuses == [200, 200, 503, 200]

    def test_clear_faults(self, server, client):
        server.inject(HttpFault("5xx", times=10))
        server.inject(HttpFault("drop"))
        assert client.get("/json").status_code == 503
        server.clear_faults()
        assert [client.get("/json").status_code for _ in range(3)] == [200, 200, 200]

    def test_unknown_kind_answers_normally(self, server, client):
        server.inject(HttpFault("gremlin"))
        assert client.get("/json").status_code == 200
        assert server.dialect.handled != []


# ---- log, counts and hooks -----------------------------------------------------------------


class TestRecording:
    def test_counts_and_log(self, server, client):
        client.get("/json")
        client.get("/json?x=1")
        client.put("/kv/a", json=1)
        server.inject(HttpFault("429"))
        client.get("/kv/a")
        assert server.counts == Counter({"GET /json": 2, "PUT /kv/a": 1, "GET /kv/a": 1})
        assert list(server.log) == [("GET", "/json", 200), ("GET", "/json", 200),
                                    ("PUT", "/kv/a", 201), ("GET", "/kv/a", 429)]

    def test_hooks_see_request_and_response(self, server, client):
        seen: list[tuple[str, str, bytes, int, Any]] = []
        server.hooks.append(lambda req, resp: seen.append(
            (req.method, req.path, req.body, resp.status, resp.body)))
        client.put("/kv/z", json={"v": 1})
        server.inject(HttpFault("5xx", status=502))
        client.get("/kv/z")
        assert seen == [("PUT", "/kv/z", b'{"v":1}', 201, {"key": "z"}),
                        ("GET", "/kv/z", b"", 502, {"error": "internal"})]

    def test_every_hook_is_called(self, server, client):
        calls: list[str] = []
        server.hooks.append(lambda req, resp: calls.append("a"))
        server.hooks.append(lambda req, resp: calls.append("b"))
        client.get("/json")
        assert calls == ["a", "b"]

    def test_a_hook_may_change_the_response(self, server, client):
        def stamp(req: EmulatorRequest, resp: EmulatorResponse) -> None:
            resp.headers["X-Hooked"] = req.path

        server.hooks.append(stamp)
        assert client.get("/json").headers["x-hooked"] == "/json"


# ---- lifecycle -----------------------------------------------------------------------------


class TestLifecycle:
    def test_stop_frees_the_port(self):
        server = EmulatorServer(DictDialect()).start()
        port = int(server.url.rsplit(":", 1)[1])
        with httpx.Client(timeout=5.0, verify=TLS) as c:
            assert c.get(f"{server.url}/json").status_code == 200
        server.stop()
        assert port_is_closed(port)
        again = EmulatorServer(DictDialect(), port=port)  # the port can be bound again
        try:
            assert again.url == f"http://127.0.0.1:{port}"
        finally:
            again.stop()

    def test_stop_is_quick(self):
        server = EmulatorServer(DictDialect()).start()
        t0 = time.perf_counter()
        server.stop()
        assert time.perf_counter() - t0 < 0.3

    def test_context_manager_starts_and_stops(self):
        with EmulatorServer(DictDialect(), api_key=KEY) as server:
            port = int(server.url.rsplit(":", 1)[1])
            with httpx.Client(base_url=server.url, timeout=5.0, verify=TLS) as c:
                response = c.get("/json", headers={"Authorization": f"Bearer {KEY}"})
                assert response.status_code == 200
            assert server.start() is server  # starting twice is harmless
        assert port_is_closed(port)
        server.stop()  # stopping twice is harmless

    def test_never_started_server_can_be_stopped(self):
        server = EmulatorServer(DictDialect())
        port = int(server.url.rsplit(":", 1)[1])
        server.stop()
        assert port_is_closed(port)

    def test_two_servers_get_different_ports(self, server):
        other = EmulatorServer(DictDialect())
        try:
            assert other.url != server.url
        finally:
            other.stop()
