"""The emulator's own control room: inspect and break a running emulator over HTTP.

An ``EmulatorServer`` speaks a provider's dialect; this room lets a person (or a test in
another process) see and steer what lies behind it while it runs: the simulated
instances, the queued faults, the request counts and the clock. It is served by the same
server, on the same socket, under ``ADMIN_PREFIX`` (``/_emulator/``), a path no provider
uses, and only once ``enable_admin`` has installed it. It asks for no API key (it is not
the provider's API) and sees no HTTP fault, so it keeps working while the provider API is
made to fail; the server listens on loopback unless told otherwise, and so does this.

JSON in, JSON out. Bad input is a 400 ``{"error": why, "field": name}``.

=======  ==========================  ====================================================
GET      /_emulator/state            live instances (not terminated or vanished), queued
                                     faults, request counts, the clock
GET      /_emulator/http-faults      the queued HTTP faults
POST     /_emulator/http-faults      queue an ``HttpFault`` (its fields as the body):
                                     kind 429 | 5xx | 401 | 404 (bare, as a proxy
                                     answers) | error (``code`` [+ ``message``]:
                                     the provider's documented error, in its own
                                     envelope, with ``status`` 400-599) | slow |
                                     drop; ``echo_key`` puts the
                                     caller's key in the error text; ``after`` lets
                                     that many matching requests through first
DELETE   /_emulator/http-faults      drop every queued HTTP fault
POST     /_emulator/cloud-faults     ``{"action": ..., ...}``: a SimulatedCloud fault
GET      /_emulator/clock            ``{"fake", "monotonic", "now"}``
POST     /_emulator/clock            ``{"advance": seconds}`` (FakeClock only, else 409)
POST     /_emulator/settle           let every scheduled step happen: a FakeClock moves
                                     ``{"seconds": s}`` (default 3600) first; on the real
                                     clock only what is already due is applied
=======  ==========================  ====================================================

Cloud-fault actions and their fields (defaults in brackets):

=================  ================================================================
fail_next          op, error, times [1], after_work [false]
outage             listings, mode ["error" | "empty": the next listings answer an
                   empty list, as a deprecated endpoint did]
lag_reads          seconds: for that long after its creation an instance is missing
                   from listings and a GET answers the provider's not-found, while
                   commands act on it (read-after-write lag; 0 switches it off)
spawn_untracked    instance_type [the first offered], tag [null], name [null],
                   region [null]: an instance made in the provider's console (no tag
                   of ours, maybe a name of the user's); answers its ``id`` and the
                   ``provider_id`` a client sees
kill               id, raw_status ["unhealthy"]
preempt            id
vanish             id
set_raw_status     id, raw_status (a string, or null to clear it)
credit             ok (false: launches are refused for lack of credit)
sell_out           instance_type [null: every type], region [null: every region]: no
                   capacity there until restocked; gone from the catalog answer, and a
                   launch there gets the provider's own capacity error
restock            instance_type [null], region [null]: lift the sell-outs within that
                   target (both null: all of them)
refuse_quota       instance_type [null], region [null]: launches there get the
                   provider's own quota error; the catalog still offers them
grant_quota        instance_type [null], region [null]: lift those quota refusals
clear              (none): drop queued cloud faults and quota refusals, end any outage
                   (sell-outs stay: ``restock``)
=================  ================================================================

The state lists the sell-outs and quota refusals in force as ``sold_out`` and
``quota_refused``: ``{"instance_type", "region"}`` objects, null meaning "every".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from gpufsm.errors import ProviderError
from gpufsm.testing._clock import FakeClock
from gpufsm.testing._sim import _FAULT_ERRORS, SIM_STATUSES, SimInstance, SimulatedCloud
from gpufsm.testing.emulators._server import (
    ADMIN_PREFIX,
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)

__all__ = ["ADMIN_PREFIX", "CLOUD_FAULT_ACTIONS", "EmulatorAdmin", "enable_admin"]

#: What POST /_emulator/cloud-faults accepts as ``action``.
CLOUD_FAULT_ACTIONS = ("clear", "credit", "fail_next", "grant_quota", "kill", "lag_reads",
                       "outage", "preempt", "refuse_quota", "restock", "sell_out",
                       "set_raw_status", "spawn_untracked", "vanish")
_HTTP_FAULT_KINDS = ("429", "5xx", "401", "404", "error", "slow", "drop")
_HTTP_FAULT_FIELDS = frozenset(f.name for f in dataclasses.fields(HttpFault))
# SimulatedCloud.fail_next's operations, checked here so the 400 can name the field.
_CLOUD_OPS = ("get", "instance_types", "launch", "list", "rename", "restart", "start",
              "stop", "terminate")
_MISSING = object()
_SETTLE_SECONDS = 3600.0  # SimulatedCloud.settle's default: every scheduled step happens


class _BadInput(Exception):
    """A 400: ``field`` is the offending body field (or "body" for the body itself)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _json(status: int, body: Any, **headers: str) -> EmulatorResponse:
    return EmulatorResponse(status, body, headers=dict(headers))


def _error(status: int, message: str, field: str | None = None) -> EmulatorResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _json(status, body)


class _Body:
    """A JSON object body, read field by field; every field must be used (no typos)."""

    def __init__(self, request: EmulatorRequest) -> None:
        if not request.body.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(request.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _BadInput("body", f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _BadInput("body", "the body must be a JSON object")
        self._data: dict[str, Any] = data
        self._used: set[str] = set()

    def _get(self, name: str, default: Any) -> Any:
        self._used.add(name)
        value = self._data.get(name, default)
        if value is _MISSING:
            raise _BadInput(name, f"{name} is required")
        return value

    def string(self, name: str, default: Any = _MISSING, *,
               choices: tuple[str, ...] | None = None, nullable: bool = False) -> Any:
        value = self._get(name, default)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value:
            raise _BadInput(name, f"{name} must be a non-empty string")
        if choices is not None and value not in choices:
            raise _BadInput(name, f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(self, name: str, default: Any = _MISSING, *, low: int, high: int) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _BadInput(name, f"{name} must be an integer from {low} to {high}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, nullable: bool = False
               ) -> float | None:
        value = self._get(name, default)
        if value is None and nullable:
            return None
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0):
            raise _BadInput(name, f"{name} must be a finite number of seconds >= 0")
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise _BadInput(name, f"{name} must be true or false")
        return value

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise _BadInput(unknown[0], f"unknown field {unknown[0]!r}")


def _targets(targets: list[tuple[str | None, str | None]]) -> list[dict[str, str | None]]:
    return [{"instance_type": t, "region": r} for t, r in targets]


def _fault_json(fault: HttpFault) -> dict[str, Any]:
    return dataclasses.asdict(fault)


def _instance_json(inst: SimInstance, now: float) -> dict[str, Any]:
    state = SIM_STATUSES.get(inst.raw_status)
    return {
        "id": inst.id,
        "name": inst.name,
        "tag": inst.tag,
        "phase": inst.phase,
        "raw_status": inst.raw_status,
        "state": state.value if state is not None else None,
        "instance_type": inst.instance_type,
        "region": inst.region,
        "ip": inst.ip,
        "age": round(now - inst.created_at, 3),
    }


class EmulatorAdmin:
    """Answers ``/_emulator/...`` for ``server`` over ``cloud``; see the module docstring.

    Install it with ``enable_admin`` (or ``server.admin = EmulatorAdmin(server, cloud)``).
    ``cloud`` may be swapped later, as tests swap a server's dialect.
    """

    def __init__(self, server: EmulatorServer, cloud: SimulatedCloud) -> None:
        self.server = server
        self.cloud = cloud
        self._routes: Mapping[str, Mapping[str, Callable[[EmulatorRequest],
                                                          EmulatorResponse]]] = {
            "state": {"GET": self._state},
            "http-faults": {"GET": self._http_faults, "POST": self._add_http_fault,
                            "DELETE": self._clear_http_faults},
            "cloud-faults": {"POST": self._cloud_fault},
            "clock": {"POST": self._clock, "GET": self._clock_now},
            "settle": {"POST": self._settle},
        }

    def __call__(self, request: EmulatorRequest) -> EmulatorResponse:
        route = request.path.removeprefix(ADMIN_PREFIX).strip("/")
        methods = self._routes.get(route)
        if methods is None:
            return _error(404, f"no admin route {request.path!r}; known: "
                          + ", ".join(ADMIN_PREFIX + r for r in self._routes))
        handler = methods.get(request.method)
        if handler is None:
            return _json(405, {"error": f"{request.method} is not allowed on {request.path}"},
                         Allow=", ".join(sorted(methods)))
        try:
            return handler(request)
        except _BadInput as exc:
            return _error(400, str(exc), exc.field)
        except Exception as exc:  # an admin bug must answer, not drop the connection
            return _error(500, f"{type(exc).__name__}: {exc}")

    # ---- inspection -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What GET /_emulator/state answers, for in-process callers."""
        cloud, server = self.cloud, self.server
        now = cloud.clock.monotonic()
        instances = [_instance_json(i, now) for i in cloud.live_instances(ours_only=False)]
        with server._lock:  # the server's own lock guards its queue and counts
            http_faults = [_fault_json(f) for f in server._faults]
            counts = dict(sorted(server.counts.items()))
        with cloud._lock:  # the simulator keeps its fault queue private; read it under its lock
            cloud_faults = [
                {"op": op, "error": f.error, "times": f.remaining, "after_work": f.after_work}
                for op, queue in sorted(cloud._faults.items()) for f in queue
            ]
            outage = ({"listings": cloud._outage_left, "mode": cloud._outage_mode}
                      if cloud._outage_left > 0 else None)
            calls = dict(sorted(cloud.calls.items()))
            credit_ok = cloud.credit_ok
            sold_out, quota_refused = cloud.sold_out, cloud.quota_refused
        return {
            "dialect": server.dialect.name,
            "clock": self._clock_json(),
            "instances": instances,
            "http_faults": http_faults,
            "cloud_faults": cloud_faults,
            "outage": outage,
            "credit_ok": credit_ok,
            "sold_out": _targets(sold_out),
            "quota_refused": _targets(quota_refused),
            "requests": counts,
            "requests_total": sum(counts.values()),
            "cloud_calls": calls,
        }

    def _clock_json(self) -> dict[str, Any]:
        clock = self.cloud.clock
        return {"fake": isinstance(clock, FakeClock), "monotonic": clock.monotonic(),
                "now": clock.now().isoformat()}

    def _state(self, request: EmulatorRequest) -> EmulatorResponse:
        return _json(200, self.state())

    def _clock_now(self, request: EmulatorRequest) -> EmulatorResponse:
        return _json(200, self._clock_json())

    # ---- HTTP faults ------------------------------------------------------------------

    def _http_faults(self, request: EmulatorRequest) -> EmulatorResponse:
        with self.server._lock:
            return _json(200, {"http_faults": [_fault_json(f) for f in self.server._faults]})

    def _add_http_fault(self, request: EmulatorRequest) -> EmulatorResponse:
        body = _Body(request)
        raw_kind = body._data.get("kind")
        if isinstance(raw_kind, int) and not isinstance(raw_kind, bool):
            body._data["kind"] = str(raw_kind)  # {"kind": 429} means "429"
        kind = body.string("kind", choices=_HTTP_FAULT_KINDS)
        method = body.string("method", None, nullable=True)
        fault = HttpFault(
            kind=kind,
            times=body.integer("times", 1, low=1, high=1_000_000),
            method=method.upper() if method is not None else None,
            path_contains=body.string("path_contains", None, nullable=True),
            retry_after=body.number("retry_after", None, nullable=True),
            status=body.integer("status", 503, low=400 if kind == "error" else 500,
                                high=599),
            delay=body.number("delay", 0.0) or 0.0,
            after_work=body.boolean("after_work", False),
            echo_key=body.boolean("echo_key", False),
            after=body.integer("after", 0, low=0, high=1_000_000),
            code=body.string("code", None if kind != "error" else _MISSING,
                             nullable=kind != "error"),
            message=body.string("message", None, nullable=True),
        )
        body.done()
        if fault.code is not None and kind != "error":
            raise _BadInput("code", "code is for kind error (the provider's error code)")
        if kind == "slow" and fault.delay <= 0:
            raise _BadInput("delay", "a slow fault needs delay > 0")
        self.server.inject(fault)
        with self.server._lock:
            queued = [_fault_json(f) for f in self.server._faults]
        return _json(201, {"queued": _fault_json(fault), "http_faults": queued})

    def _clear_http_faults(self, request: EmulatorRequest) -> EmulatorResponse:
        with self.server._lock:
            cleared = len(self.server._faults)
        self.server.clear_faults()
        return _json(200, {"cleared": cleared})

    # ---- cloud faults -----------------------------------------------------------------

    def _cloud_fault(self, request: EmulatorRequest) -> EmulatorResponse:
        body = _Body(request)
        action = body.string("action", choices=CLOUD_FAULT_ACTIONS)
        handlers: Mapping[str, Callable[[_Body], dict[str, Any]]] = {
            "fail_next": self._fail_next,
            "outage": self._outage,
            "lag_reads": self._lag_reads,
            "spawn_untracked": self._spawn_untracked,
            "credit": self._credit,
            "clear": self._clear,
            "sell_out": self._capacity,
            "restock": self._capacity,
            "refuse_quota": self._capacity,
            "grant_quota": self._capacity,
        }
        handler = handlers.get(action)
        if handler is not None:
            return _json(200, {"action": action, **handler(body)})
        return self._instance_fault(action, body)

    def _fail_next(self, body: _Body) -> dict[str, Any]:
        op = body.string("op", choices=_CLOUD_OPS)
        error = body.string("error", choices=tuple(sorted(_FAULT_ERRORS)))
        times = body.integer("times", 1, low=1, high=1_000_000)
        after_work = body.boolean("after_work", False)
        body.done()
        try:
            self.cloud.fail_next(op, error, times=times, after_work=after_work)
        except ValueError as exc:  # after_work on a permanent error
            raise _BadInput("after_work", str(exc)) from None
        return {"op": op, "error": error, "times": times, "after_work": after_work}

    def _outage(self, body: _Body) -> dict[str, Any]:
        listings = body.integer("listings", low=0, high=1_000_000)
        mode = body.string("mode", "error", choices=("error", "empty"))
        body.done()
        self.cloud.outage(listings, mode=mode)
        return {"listings": listings, "mode": mode}

    def _lag_reads(self, body: _Body) -> dict[str, Any]:
        seconds = body.number("seconds") or 0.0
        body.done()
        self.cloud.lag_reads(seconds)
        return {"seconds": seconds}

    def _spawn_untracked(self, body: _Body) -> dict[str, Any]:
        cloud = self.cloud
        with cloud._lock:  # the offered types, read without counting a call
            types = tuple(cloud._types)
        instance_type = body.string("instance_type", types[0] if types else _MISSING,
                                    choices=types)
        tag = body.string("tag", None, nullable=True)
        name = body.string("name", None, nullable=True)
        region = body.string("region", None, nullable=True)
        body.done()
        try:
            pid = cloud.spawn_untracked(tag, instance_type=instance_type, name=name,
                                        region=region)
        except ProviderError as exc:  # a region the type is not offered in
            raise _BadInput("region", exc.message) from None
        return {"id": pid, "provider_id": self._provider_id(pid), "tag": tag, "name": name,
                "instance_type": instance_type}

    def _credit(self, body: _Body) -> dict[str, Any]:
        ok = body.boolean("ok")
        body.done()
        self.cloud.credit_ok = ok
        return {"ok": ok}

    def _capacity(self, body: _Body) -> dict[str, Any]:
        """sell_out, restock, refuse_quota, grant_quota: one (type, region) target."""
        action = body.string("action")
        cloud = self.cloud
        with cloud._lock:  # the offered types, read without counting a call
            types = tuple(cloud._types)
        instance_type = body.string("instance_type", None, nullable=True, choices=types)
        region = body.string("region", None, nullable=True)
        body.done()
        getattr(cloud, action)(instance_type, region)
        return {"instance_type": instance_type, "region": region,
                "sold_out": _targets(cloud.sold_out),
                "quota_refused": _targets(cloud.quota_refused)}

    def _clear(self, body: _Body) -> dict[str, Any]:
        body.done()
        self.cloud.clear_faults()
        return {}

    def _instance_fault(self, action: str, body: _Body) -> EmulatorResponse:
        """kill, set_raw_status, preempt, vanish: one live instance, by its sim id."""
        cloud = self.cloud
        pid = body.string("id")
        raw: str | None = None
        if action == "kill":
            raw = body.string("raw_status", "unhealthy")
        elif action == "set_raw_status":
            raw = body.string("raw_status", nullable=True)
        body.done()
        try:
            if action == "kill":
                cloud.kill(pid, raw_status=raw or "unhealthy")
            elif action == "set_raw_status":
                cloud.set_raw_status(pid, raw)
            elif action == "preempt":
                cloud.preempt(pid)
            else:
                cloud.vanish(pid)
        except KeyError:
            return _error(404, f"no live instance {pid!r}", "id")
        result: dict[str, Any] = {"action": action, "id": pid}
        if action in ("kill", "set_raw_status"):
            result.update(raw_status=raw)
        return _json(200, result)

    def _provider_id(self, sim_id: str) -> str:
        """The id a client of the dialect sees (Vast numbers its instances itself)."""
        translate = getattr(self.server.dialect, "provider_id", None)
        return str(translate(sim_id)) if callable(translate) else sim_id

    # ---- time ---------------------------------------------------------------------------

    def _clock(self, request: EmulatorRequest) -> EmulatorResponse:
        body = _Body(request)
        seconds = body.number("advance") or 0.0
        body.done()
        clock = self.cloud.clock
        if not isinstance(clock, FakeClock):
            return _error(409, "this emulator runs on the real clock; only a fake clock "
                          "(gpufsm emulator --fake-clock) can be advanced", "advance")
        clock.advance(seconds)
        self.cloud.settle(0.0)  # apply what became due, so the state shows it at once
        return _json(200, self._clock_json())

    def _settle(self, request: EmulatorRequest) -> EmulatorResponse:
        body = _Body(request)
        given = "seconds" in body._data
        seconds = body.number("seconds", _SETTLE_SECONDS) or 0.0
        body.done()
        fake = isinstance(self.cloud.clock, FakeClock)
        if given and seconds and not fake:
            return _error(409, "seconds needs a fake clock; the real one cannot be advanced",
                          "seconds")
        self.cloud.settle(seconds)  # on the real clock: only what is already due
        return _json(200, {"advanced": seconds if fake else 0.0, **self.state()})

def enable_admin(server: EmulatorServer, cloud: SimulatedCloud) -> EmulatorAdmin:
    """Serve the admin API on ``server`` (same host and port) over ``cloud``."""
    admin = EmulatorAdmin(server, cloud)
    server.admin = admin
    return admin
