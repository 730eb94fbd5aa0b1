"""``gpufsm emulator``: one provider's HTTP API on loopback, over a fresh simulated cloud.

For trying gpufsm (or any client) against a provider without an account or a bill: the
server speaks the chosen dialect on the production paths, so the real adapter only needs
its ``base_url`` pointed here. The admin API (``/_emulator/...``, see
``gpufsm.testing.emulators._admin``) on the same port shows the instances and switches
faults at run time. By default time is real and the timings short (an instance boots in
seconds, not minutes) so a person can watch it happen; ``--fake-clock`` stops time until
the admin API moves it, for scripted tests.

The banner prints the ``export`` line the CLI needs (the dialect's base URL variable and
key variable, as ``gpufsm.config.Settings`` reads them), so a person can paste it and run
``gpufsm types`` against the emulator. A key given with ``--api-key`` is never printed.

It serves until SIGINT or SIGTERM and then exits 0. It refuses a non-loopback address
unless told ``--allow-remote``: the emulator has no TLS, and its admin API needs no key.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from gpufsm.adapters import InstanceTypeOffer, adapter_class
from gpufsm.clock import Clock, SystemClock
from gpufsm.config import Settings
from gpufsm.machines import Capabilities
from gpufsm.providers import PROVIDERS
from gpufsm.testing import FakeClock, SimTimings, SimulatedCloud
from gpufsm.testing.emulators import (
    DIALECTS,
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    dialect_class,
    enable_admin,
    make_dialect,
)
from gpufsm.testing.emulators._admin import ADMIN_PREFIX

__all__ = ["EMULATOR_TIMINGS", "PROFILES", "DialectProfile", "is_loopback", "run_emulator",
           "shell_exports"]

#: The key the printed ``export`` line sets when the emulator accepts any key.
ANY_KEY = "emulator-key"

#: Seconds, not minutes: long enough to see every phase, short enough to wait for.
EMULATOR_TIMINGS = SimTimings(
    provision=(1.0, 3.0),
    boot=(5.0, 15.0),
    stop=(2.0, 5.0),
    start=(3.0, 8.0),
    restart=(3.0, 8.0),
    terminate=(2.0, 5.0),
    linger=(10.0, 20.0),
)


@dataclass(frozen=True)
class DialectProfile:
    """What the simulated cloud behind one dialect offers: the provider's own words."""

    capabilities: Capabilities
    offers: tuple[InstanceTypeOffer, ...]
    id_prefix: str | None = None


def _profile(provider: str) -> DialectProfile:
    """The simulated cloud for ``provider``: the offers its dialect module sells (its
    ``catalog``), and the capabilities its adapter declares (one source: Lambda cannot
    stop, in both)."""
    capabilities: Capabilities = adapter_class(provider).profile.capabilities
    dialect = dialect_class(provider)
    return DialectProfile(capabilities, tuple(getattr(dialect, "catalog", ())),
                          getattr(dialect, "id_prefix", None))


#: One profile per dialect, keyed as ``gpufsm.providers.PROVIDERS`` (a test holds the keys
#: equal), derived from each dialect module's ``catalog``: adding a provider adds no line
#: here. The last offer of each is sold out everywhere.
PROFILES: dict[str, DialectProfile] = {name: _profile(name) for name in DIALECTS}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; a name could resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shell_exports(dialect: str, url: str, *, key_checked: bool) -> str:
    """The shell line that points the CLI's adapter for ``dialect`` at ``url``.

    With a checked key (``--api-key``) the key variable is named in a comment, not set:
    the key is never printed.
    """
    provider = PROVIDERS[dialect]
    url_env = f"{Settings.model_config.get('env_prefix', '')}{provider.url_setting}".upper()
    key_env = provider.key_env
    if key_checked:
        return f"export {url_env}={url}  # and {key_env}=the key given with --api-key"
    return f"export {url_env}={url} {key_env}={ANY_KEY}"


def _build(dialect: str, *, seed: int, real_time: bool, host: str, port: int,
           api_key: str | None) -> tuple[SimulatedCloud, EmulatorServer]:
    profile = PROFILES[dialect]
    clock: Clock = SystemClock() if real_time else FakeClock()
    cloud = SimulatedCloud(dialect, clock=clock, seed=seed, capabilities=profile.capabilities,
                           instance_types=profile.offers, timings=EMULATOR_TIMINGS,
                           id_prefix=profile.id_prefix)
    server = EmulatorServer(make_dialect(dialect, cloud), api_key=api_key, host=host,
                            port=port)
    enable_admin(server, cloud)
    return cloud, server


def _request_printer(out: TextIO) -> Callable[[EmulatorRequest, EmulatorResponse], None]:
    lock = threading.Lock()

    def show(request: EmulatorRequest, response: EmulatorResponse) -> None:
        with lock:
            out.write(f"{time.strftime('%H:%M:%S')} {request.method} {request.path} "
                      f"-> {response.status}\n")
            out.flush()

    return show


def run_emulator(
    *,
    dialect: str,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    seed: int = 0,
    real_time: bool = True,
    allow_remote: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); the exit status.

    0 after a clean stop, 1 when the emulator cannot start (a dialect that is not
    available, an address in use), 2 for bad usage (an unknown dialect, a remote host
    without ``allow_remote``).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if dialect not in DIALECTS:
        err.write(f"error: --dialect: unknown dialect {dialect!r}; "
                  f"known: {', '.join(sorted(DIALECTS))}\n")
        return 2
    if not is_loopback(host) and not allow_remote:
        err.write(
            f"error: --host {host}: not a loopback address. The emulator speaks plain HTTP "
            f"and its admin API ({ADMIN_PREFIX}) needs no key: anyone who can reach the "
            "port could kill instances, inject faults and read the state. Pass "
            "--allow-remote if you mean it.\n")
        return 2
    try:
        cloud, server = _build(dialect, seed=seed, real_time=real_time, host=host, port=port,
                               api_key=api_key)
    except (ImportError, AttributeError, SyntaxError) as exc:
        err.write(f"error: the {dialect} emulator dialect is not available in this build "
                  f"({DIALECTS[dialect]}): {exc}\n")
        return 1
    except OSError as exc:
        err.write(f"error: cannot listen on {host}:{port}: {exc}\n")
        return 1

    stop = stop or threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    server.hooks.append(_request_printer(out))
    try:
        server.start()
        url = server.url
        clock = "real clock" if real_time else "fake clock (move it with POST "\
            f"{url}{ADMIN_PREFIX}clock)"
        key = "checked: the one given with --api-key" if api_key else \
            "not checked (any key is accepted)"
        adapter = PROVIDERS[dialect].adapter.partition(":")[2]
        out.write(
            f"gpufsm emulator: {dialect} dialect over a simulated cloud, seed {seed}, {clock}\n"
            f"url:      {url}\n"
            f"base_url: {url}   (from gpufsm.adapters import {adapter}; "
            f"{adapter}(key, base_url={url!r}))\n"
            f"admin:    {url}{ADMIN_PREFIX}state\n"
            f"api key:  {key}\n"
            f"shell:    {shell_exports(dialect, url, key_checked=api_key is not None)}\n"
            f"          then e.g. gpufsm types --provider {dialect}; gpufsm instances --remote\n"
            "serving; stop with Ctrl-C or SIGTERM\n")
        out.flush()
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(signum, handler)
    live = len(cloud.live_instances(ours_only=False))
    served = sum(server.counts.values())
    out.write(f"stopped: {served} requests served, {live} instances were live\n")
    out.flush()
    return 0
