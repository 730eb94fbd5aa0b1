"""What "healthy" means for one instance: the probes to run and how patiently to run them.

A spec is data, stored with the instance's record of intent, so it is frozen and strict
(``extra="forbid"``): a typo such as ``tcp_port`` must fail loudly rather than leave an
instance gated on nothing. ``parse_health_spec`` turns pydantic's report into gpufsm's
ValidationError naming the dotted field, like ``gpufsm.specs.parse_spec`` does.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from gpufsm.errors import ValidationError

__all__ = ["HealthSpec", "HttpCheck", "parse_health_spec"]

Port = Annotated[int, Field(ge=1, le=65535)]


class HttpCheck(BaseModel):
    """One HTTP GET: ``scheme://host:port/path`` must answer ``expect_status``.

    Redirects are not followed: the status compared is the first one the server sends,
    so a check for 200 against an endpoint that redirects to a login page fails instead
    of passing on the login page.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: Port
    path: str = Field(pattern=r"^/\S*$", max_length=2048,
                      description='starts with "/"; no whitespace (it goes on the request line)')
    expect_status: int = Field(default=200, ge=100, le=599)
    scheme: Literal["http", "https"] = "http"
    contains: str | None = Field(default=None, min_length=1,
                                 description="text the body must contain (first 1 MiB)")
    verify_tls: bool = Field(default=True,
                             description="https only: False accepts a self-signed certificate")

    @property
    def name(self) -> str:
        """The probe's name in results, e.g. ``http:8000/health`` or ``https:443/``."""
        return f"{self.scheme}:{self.port}{self.path}"


class HealthSpec(BaseModel):
    """The health gate between "the provider says running" and RUNNING.

    Each probe is tried up to ``attempts`` times per round, each attempt bounded by
    ``timeout``, with jittered exponential backoff (``backoff`` doubling up to
    ``backoff_max``) between attempts. The engine runs rounds until every probe passes or
    ``deadline`` seconds have gone by since the provider first reported the instance
    running; then the instance is FAILED (billable) and policy terminates it.

    ``command`` is an argv run locally (never through a shell) with ``GPUFSM_PROBE_HOST``
    and ``GPUFSM_PROBE_PORT`` in its environment (the port is the first of ``tcp_ports``,
    or 22 when there is none) — typically ``ssh … "$GPUFSM_PROBE_HOST" true`` from a
    wrapper script. Exit status 0 is healthy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tcp_ports: tuple[Port, ...] = ()
    http: tuple[HttpCheck, ...] = ()
    command: tuple[Annotated[str, Field(max_length=65536)], ...] | None = None
    timeout: float = Field(default=5.0, gt=0, le=3600, allow_inf_nan=False)
    attempts: int = Field(default=3, ge=1, le=100)
    backoff: float = Field(default=1.0, ge=0, le=3600, allow_inf_nan=False)
    backoff_max: float = Field(default=10.0, ge=0, le=3600, allow_inf_nan=False)
    deadline: float = Field(default=600.0, gt=0, le=7 * 86400, allow_inf_nan=False)

    @pydantic.field_validator("tcp_ports")
    @classmethod
    def _unique_ports(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(ports)) != len(ports):
            raise ValueError("each port may appear once (results are named by port)")
        return ports

    @pydantic.field_validator("http")
    @classmethod
    def _unique_checks(cls, checks: tuple[HttpCheck, ...]) -> tuple[HttpCheck, ...]:
        names = [c.name for c in checks]
        if len(set(names)) != len(names):
            raise ValueError("each scheme:port/path may appear once (results are named by it)")
        return checks

    @pydantic.field_validator("command")
    @classmethod
    def _runnable(cls, argv: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if argv is not None and (not argv or not argv[0].strip()):
            raise ValueError("needs a program to run (an argv, not a shell string)")
        if argv is not None and any("\x00" in arg for arg in argv):
            raise ValueError("arguments cannot contain NUL")
        return argv

    @pydantic.field_validator("backoff_max")
    @classmethod
    def _backoff_order(cls, cap: float, info: pydantic.ValidationInfo) -> float:
        if cap < info.data.get("backoff", 0.0):  # absent when backoff itself was invalid
            raise ValueError("must be at least backoff")
        return cap

    @property
    def is_empty(self) -> bool:
        """No probe configured: the gate is open, and running means RUNNING."""
        return not self.tcp_ports and not self.http and self.command is None

    @property
    def command_port(self) -> int:
        """``GPUFSM_PROBE_PORT`` for the command: the first TCP port, else SSH's 22."""
        return self.tcp_ports[0] if self.tcp_ports else 22

    @property
    def probe_names(self) -> tuple[str, ...]:
        """The names ``run_probes`` will report, in its order."""
        names = [f"tcp:{p}" for p in self.tcp_ports] + [c.name for c in self.http]
        if self.command is not None:
            names.append("command")
        return tuple(names)


def parse_health_spec(data: object) -> HealthSpec:
    """Build a spec from untrusted data (YAML, JSON column, CLI), raising our error.

    The first problem is raised as gpufsm's ValidationError with its dotted field path
    (``http.0.path``, ``tcp_ports.1``); pydantic's full report is kept as ``__cause__``.
    """
    if isinstance(data, HealthSpec):
        return data
    try:
        return HealthSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "health"
        raise ValidationError(field, first["msg"], value=first.get("input")) from exc
