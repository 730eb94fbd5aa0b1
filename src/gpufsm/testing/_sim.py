"""A simulated GPU cloud: a ProviderAdapter with no network, driven by a clock you control.

It behaves like the real providers where that matters to gpufsm: instances boot after a
(seeded, random) delay, stop and terminate take time, terminated instances linger in
listings before they vanish, and every fault the real APIs show can be injected — a
refused launch, a call that times out *after* doing its work, instances that die or are
preempted, raw statuses no adapter knows, listings that fail or lie (come back empty),
a type, a region or the whole provider sold out (gone from the catalog, launches refused
for capacity), and launches refused for quota.

It is also the backing store of the HTTP emulators, which translate its phases into
each provider's own status words. Public, so users can test their policies with it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufsm.adapters import (
    TAG_PREFIX,
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.clock import Clock
from gpufsm.errors import (
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    TemporaryProviderError,
    ValidationError,
)
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing._clock import FakeClock

__all__ = ["REGION_PRICES", "SIM_STATUSES", "SimInstance", "SimTimings", "SimulatedCloud",
           "region_price"]

#: ``InstanceTypeOffer.extra`` key of a type whose price differs by region: region → $/h.
#: The simulated cloud bills an instance at its region's price, and dialects that can say
#: so (Vast's asks, one per machine) show it; regions it omits cost ``price_per_hour``.
REGION_PRICES = "region_prices"

#: A sell-out or quota target: (instance type, region), None meaning every one.
_Target = tuple[str | None, str | None]


def region_price(offer: InstanceTypeOffer, region: str | None) -> float:
    """What ``offer`` costs per hour in ``region`` (see :data:`REGION_PRICES`)."""
    prices = offer.extra.get(REGION_PRICES)
    if isinstance(prices, dict) and region in prices:
        return float(prices[region])
    return offer.price_per_hour


def _covers(targets: Iterable[_Target], instance_type: str, region: str | None) -> bool:
    """Whether any target names this type (or every type) and this region (or all)."""
    return any((t is None or t == instance_type) and (r is None or r == region)
               for t, r in targets)

#: The simulated provider's raw status words and what they mean to gpufsm.
SIM_STATUSES: dict[str, InstanceState] = {
    "provisioning": InstanceState.CREATED,
    "booting": InstanceState.STARTING,
    "rebooting": InstanceState.STARTING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED,
    "unhealthy": InstanceState.FAILED,
    "preempted": InstanceState.FAILED,
    "terminating": InstanceState.TERMINATING,
    "terminated": InstanceState.TERMINATED,
}

_FAULT_ERRORS: dict[str, type[ProviderError]] = {
    "capacity": InsufficientCapacity,
    "credit": InsufficientCredit,
    "quota": QuotaExceeded,
    "invalid": InvalidRequest,
    "rate_limit": RateLimited,
    "unavailable": ProviderUnavailable,
    "timeout": ProviderTimeout,
}

_DEFAULT_TYPES = (
    InstanceTypeOffer("sim", "gpu_1x_a10", 0.75, ("us-east-1", "us-west-1"), 1, "A10 (24 GB)"),
    InstanceTypeOffer("sim", "gpu_1x_h100", 2.49, ("us-east-1",), 1, "H100 (80 GB)"),
    InstanceTypeOffer("sim", "gpu_8x_h100", 23.92, (), 8, "8x H100 (80 GB)"),
)


@dataclass
class SimInstance:
    """The simulator's own record of one instance. ``phase`` is its raw status."""

    id: str
    name: str
    tag: str | None
    instance_type: str
    region: str
    price_per_hour: float
    ip: str
    created_at: float
    phase: str = "provisioning"
    raw_override: str | None = None  # a status word to report instead of ``phase``
    epoch: int = 0  # bumped on every plan change so stale scheduled steps are ignored
    removed: bool = False  # vanished from the provider entirely
    meta: dict[str, Any] = field(default_factory=dict)  # dialect extras (image, ports, …)

    @property
    def raw_status(self) -> str:
        return self.raw_override or self.phase


@dataclass
class _Fault:
    error: str  # key of _FAULT_ERRORS
    after_work: bool  # do the work, then raise (the dangerous kind of timeout)
    remaining: int


@dataclass
class SimTimings:
    """Delay ranges in seconds; each delay is drawn from the seeded generator."""

    provision: tuple[float, float] = (1.0, 5.0)
    boot: tuple[float, float] = (20.0, 60.0)
    stop: tuple[float, float] = (5.0, 15.0)
    start: tuple[float, float] = (10.0, 30.0)
    restart: tuple[float, float] = (10.0, 30.0)
    terminate: tuple[float, float] = (3.0, 10.0)
    linger: tuple[float, float] = (30.0, 60.0)  # listed as terminated before vanishing


def _within(target: _Target, scope: _Target) -> bool:
    """Whether ``target`` lies inside ``scope`` (what a restock names): each part of the
    scope is None (anything) or equal. A target broader than the scope is not inside."""
    return all(s is None or s == t for t, s in zip(target, scope, strict=True))


def _target_order(target: _Target) -> tuple[str, str]:
    return target[0] or "", target[1] or ""


def _our_tag(inst: SimInstance) -> str | None:
    """The one ownership rule: our prefix on the tag, else a tagged name."""
    if inst.tag and inst.tag.startswith(TAG_PREFIX):
        return inst.tag
    return tag_from_name(inst.name)


class SimulatedCloud:
    """An in-memory provider implementing ProviderAdapter; thread-safe.

    All randomness comes from ``seed`` and all time from ``clock``, so a failing test
    replays exactly. ``calls`` counts every adapter call by operation.
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        clock: Clock | None = None,
        seed: int = 0,
        capabilities: Capabilities = Capabilities(stop=True, restart=True, tags=True),  # noqa: B008
        instance_types: Iterable[InstanceTypeOffer] = _DEFAULT_TYPES,
        timings: SimTimings | None = None,
        on_call: Callable[[str], None] | None = None,
        id_prefix: str | None = None,
        id_width: int = 6,
    ) -> None:
        self._name = name
        self._id_prefix = f"{name}-" if id_prefix is None else id_prefix
        self._id_width = id_width  # 0 with prefix "": bare integers, as Vast's ids are
        self.clock: Clock = clock or FakeClock()
        self._rng = random.Random(seed)
        self._caps = capabilities
        self._types = {t.name: t for t in instance_types}
        self.timings = timings or SimTimings()
        self._on_call = on_call
        self._lock = threading.RLock()
        self._instances: dict[str, SimInstance] = {}
        self._heap: list[tuple[float, int, str, int, str]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._faults: dict[str, deque[_Fault]] = {}
        self._outage_mode: str | None = None
        self._outage_left = 0
        self.credit_ok = True
        self._sold_out: set[_Target] = set()
        self._quota_refused: set[_Target] = set()
        #: Seconds after its creation during which reads (get, list) do not show an
        #: instance: the eventual consistency of real providers (see ``lag_reads``).
        self.read_lag = 0.0
        self.calls: Counter[str] = Counter()

    # ---- ProviderAdapter --------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def validate(self, spec: InstanceSpec) -> None:
        if spec.instance_type not in self._types:
            known = ", ".join(sorted(self._types))
            raise ValidationError(
                "instance_type", f"unknown type {spec.instance_type!r}; known: {known}"
            )
        offer = self._types[spec.instance_type]
        if spec.region is not None and offer.regions and spec.region not in offer.regions:
            raise ValidationError(
                "region", f"{spec.instance_type} is offered in {', '.join(offer.regions)}"
            )

    def launch(self, request: LaunchRequest) -> str:
        """Create the instance, honouring the spec's price cap as the real adapters do:
        a type above ``max_price_per_hour`` is refused (InsufficientCapacity) before
        anything is created, with no launch counted."""
        limit = request.spec.max_price_per_hour
        offer = self._types.get(request.spec.instance_type)
        price = region_price(offer, request.spec.region) if offer is not None else 0.0
        if limit is not None and offer is not None and price > limit:
            raise InsufficientCapacity(
                f"{offer.name} costs ${price:.2f}/h, above "
                f"max_price_per_hour ${limit:.2f}/h", provider=self._name)
        return self.create_instance(
            instance_type=request.spec.instance_type,
            region=request.spec.region,
            name=request.display_name,
            tag=request.tag,
        )

    def create_instance(
        self,
        *,
        instance_type: str,
        region: str | None = None,
        name: str,
        tag: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """Create an instance as a provider would; the emulators' launch calls this.

        Faults queued for ``launch`` apply, as do the credit, quota and capacity rules
        (``refuse_quota``, ``sell_out``).
        """
        with self._lock:
            self._call("launch")
            after = self._fault("launch")
            if not self.credit_ok:
                raise InsufficientCredit("your account lacks credit", provider=self._name)
            self._check_refusals(instance_type, region)
            pid = self._create(instance_type=instance_type, region=region, name=name, tag=tag,
                               meta=meta)
            self._raise_after(after)
            return pid

    def _create(self, *, instance_type: str, region: str | None, name: str, tag: str | None,
                meta: dict[str, Any] | None) -> str:
        """Create without counting a call or consuming faults (see spawn_untracked)."""
        offer = self._types.get(instance_type)
        if offer is None:
            raise InvalidRequest(f"unknown instance type {instance_type}", provider=self._name)
        region = region or self._first_region(offer)
        if region not in offer.regions:
            raise InsufficientCapacity(
                f"no capacity for {offer.name} in {region or 'any region'}",
                provider=self._name,
            )
        n = next(self._ids)
        inst = SimInstance(
            id=f"{self._id_prefix}{n:0{self._id_width}d}" if self._id_width else
            f"{self._id_prefix}{n}",
            name=name,
            tag=tag,
            instance_type=offer.name,
            region=region,
            price_per_hour=region_price(offer, region),
            # 127.0.0.0/8 is all loopback: a probe or ssh aimed at a simulated instance
            # can never leave the machine (a private range like 10/8 could).
            ip=f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
            created_at=self.clock.monotonic(),
            meta=dict(meta or {}),
        )
        self._instances[inst.id] = inst
        self._plan(inst, ("booting", self.timings.provision), ("running", self.timings.boot))
        return inst.id

    def rename(self, provider_instance_id: str, name: str) -> None:
        """Change an instance's name (Lambda rename, Vast label)."""
        with self._lock:
            self._call("rename")
            after = self._fault("rename")
            self._live(provider_instance_id).name = name
            self._raise_after(after)

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        with self._lock:
            self._call("get")
            self._raise_after(self._fault("get"))
            inst = self._instances.get(provider_instance_id)
            if inst is None or inst.removed or self._lagging(inst):
                return None
            return self._view(inst)

    def list_instances(self) -> Sequence[ProviderInstance]:
        with self._lock:
            self._call("list")
            self._raise_after(self._fault("list"))
            if self._outage_left > 0:
                self._outage_left -= 1
                if self._outage_mode == "empty":
                    return []  # the lie: a real outage that looks like "nothing is running"
                raise ProviderUnavailable("listing failed (simulated outage)", provider=self._name)
            return [self._view(i) for i in self._instances.values()
                    if not i.removed and not self._lagging(i)]

    def start(self, provider_instance_id: str) -> None:
        # desired-state APIs (RunPod, Vast) accept a start while a stop is under way
        self._command("start", provider_instance_id, {"stopped", "stopping"},
                      ("booting", (0.5, 1.0)), ("running", self.timings.start))

    def stop(self, provider_instance_id: str) -> None:
        self._command("stop", provider_instance_id, {"booting", "running"},
                      ("stopping", (0.1, 0.5)), ("stopped", self.timings.stop))

    def restart(self, provider_instance_id: str) -> None:
        self._command("restart", provider_instance_id, {"running", "unhealthy"},
                      ("rebooting", (0.1, 0.5)), ("running", self.timings.restart))

    def terminate(self, provider_instance_id: str) -> None:
        with self._lock:
            self._call("terminate")
            after = self._fault("terminate")
            inst = self._instances.get(provider_instance_id)
            if inst is not None and not inst.removed and inst.phase not in (
                "terminating", "terminated"
            ):
                inst.raw_override = None
                self._plan(inst, ("terminating", (0.0, 0.0)),
                           ("terminated", self.timings.terminate), ("", self.timings.linger))
            self._raise_after(after)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        """Every type, each with only the regions that have capacity now: a region sold
        out (``sell_out``) is missing, and a type sold out everywhere has none."""
        with self._lock:
            self._call("instance_types")
            self._raise_after(self._fault("instance_types"))
            return [dataclasses.replace(o, regions=tuple(
                        r for r in o.regions if not _covers(self._sold_out, o.name, r)))
                    if self._sold_out else o for o in self._types.values()]

    # ---- capacity and quota ---------------------------------------------------------------

    def sell_out(self, instance_type: str | None = None, region: str | None = None) -> None:
        """No capacity left for ``instance_type`` in ``region`` (None: every type, every
        region; both None: the whole provider) until ``restock``.

        The region drops out of the type's regions in ``instance_types`` and a launch
        there is refused with InsufficientCapacity, which each emulator answers with
        its provider's own capacity error.
        """
        with self._lock:
            self._sold_out.add(self._target(instance_type, region))

    def restock(self, instance_type: str | None = None, region: str | None = None) -> None:
        """Lift every sell-out within the target (no arguments: all of them). A broader
        sell-out (the whole type, the whole provider) is lifted only by naming it."""
        with self._lock:
            self._sold_out = {t for t in self._sold_out
                              if not _within(t, (instance_type, region))}

    def refuse_quota(self, instance_type: str | None = None,
                     region: str | None = None) -> None:
        """Launches of ``instance_type`` in ``region`` (None: any) are refused with
        QuotaExceeded (each emulator: its provider's quota error) until ``grant_quota``
        or ``clear_faults``; the catalog still offers them, as real providers do."""
        with self._lock:
            self._quota_refused.add(self._target(instance_type, region))

    def grant_quota(self, instance_type: str | None = None,
                    region: str | None = None) -> None:
        """Lift every quota refusal within the target (no arguments: all of them)."""
        with self._lock:
            self._quota_refused = {t for t in self._quota_refused
                                   if not _within(t, (instance_type, region))}

    @property
    def sold_out(self) -> list[tuple[str | None, str | None]]:
        """The sell-outs in force, as (type, region) with None for "every"."""
        with self._lock:
            return sorted(self._sold_out, key=_target_order)

    @property
    def quota_refused(self) -> list[tuple[str | None, str | None]]:
        """The quota refusals in force, as (type, region) with None for "every"."""
        with self._lock:
            return sorted(self._quota_refused, key=_target_order)

    # ---- fault injection ----------------------------------------------------------------

    def fail_next(self, op: str, error: str, *, times: int = 1, after_work: bool = False) -> None:
        """Make the next ``times`` calls of ``op`` fail with ``error``.

        ``error`` is one of capacity, credit, quota, invalid, rate_limit, unavailable,
        timeout. With ``after_work`` the call does its work first — a launch that creates
        the machine and then times out is the case that leaks money if handled naively.
        """
        if error not in _FAULT_ERRORS:
            raise ValueError(f"unknown fault {error!r}; one of {sorted(_FAULT_ERRORS)}")
        if after_work and not issubclass(_FAULT_ERRORS[error], TemporaryProviderError):
            raise ValueError(
                f"{error} is a permanent error, which promises the provider did nothing; "
                "after_work=True is only meaningful for temporary errors")
        if op not in {"launch", "get", "list", "start", "stop", "restart", "terminate",
                      "instance_types", "rename"}:
            raise ValueError(f"unknown operation {op!r}")
        with self._lock:
            self._faults.setdefault(op, deque()).append(_Fault(error, after_work, times))

    def clear_faults(self) -> None:
        """Drop every queued fault, every quota refusal and end any outage (e.g. before a
        final clean-up). Sell-outs stay: capacity comes back with ``restock``."""
        with self._lock:
            self._faults.clear()
            self._quota_refused.clear()
            self._outage_left = 0

    def outage(self, listings: int, *, mode: str = "error") -> None:
        """The next ``listings`` list calls fail (``error``) or return nothing (``empty``)."""
        if mode not in ("error", "empty"):
            raise ValueError("mode is 'error' or 'empty'")
        with self._lock:
            self._outage_mode, self._outage_left = mode, listings

    def lag_reads(self, seconds: float) -> None:
        """Reads lag writes: for ``seconds`` after its creation an instance is missing
        from listings and a GET answers not-found, while commands (terminate …) act on it.

        What real providers do after a launch is accepted (SkyPilot retries visibility
        after a create for this reason). 0 switches the lag off.
        """
        if not seconds >= 0:
            raise ValueError("read lag is a number of seconds >= 0")
        with self._lock:
            self.read_lag = float(seconds)

    def kill(self, provider_instance_id: str, *, raw_status: str = "unhealthy") -> None:
        """The instance dies where it stands (it still bills until terminated).

        KeyError for an instance that is gone or on its way out: a terminated machine
        cannot die again (killing it must not bring it back).
        """
        with self._lock:
            inst = self._alive(provider_instance_id)
            self._replan(inst, raw_status)

    def preempt(self, provider_instance_id: str) -> None:
        """The provider takes a spot instance back: reported preempted, then gone.

        KeyError for an instance that is gone or being terminated, as for ``kill``.
        """
        with self._lock:
            inst = self._alive(provider_instance_id)
            self._plan(inst, ("preempted", (0.0, 0.0)), ("", self.timings.linger))

    def vanish(self, provider_instance_id: str) -> None:
        """The instance disappears without a trace (deleted in the console, say)."""
        with self._lock:
            self._live(provider_instance_id).removed = True

    def set_raw_status(self, provider_instance_id: str, raw_status: str | None) -> None:
        """Report ``raw_status`` verbatim (e.g. a word no adapter knows); None clears it."""
        with self._lock:
            self._live(provider_instance_id).raw_override = raw_status

    def reprice(self, provider_instance_id: str, per_hour: float) -> None:
        """The provider charges ``per_hour`` from now on (a spot price moving, a
        repricing): listings and GETs report it, and the ledger splits the machine's
        cost where gpufsm saw the change."""
        with self._lock:
            self._live(provider_instance_id).price_per_hour = per_hour

    def spawn_untracked(self, tag: str | None, *, instance_type: str = "gpu_1x_a10",
                        name: str | None = None, region: str | None = None) -> str:
        """An instance that exists on the provider with no row of ours: a crash leftover
        (``tag`` ours), or one made in the provider's console (no tag, maybe a ``name``
        of the user's own). No call is counted and no fault applies."""
        with self._lock:
            return self._create(instance_type=instance_type, region=region,
                                name=name or tag or "not-ours", tag=tag, meta=None)

    # ---- inspection ------------------------------------------------------------------

    def instance(self, provider_instance_id: str) -> SimInstance:
        with self._lock:
            self._settle()
            return self._instances[provider_instance_id]

    def live_instances(self, *, ours_only: bool = True) -> list[SimInstance]:
        """Instances that exist and are not terminated: what would still bill."""
        with self._lock:
            self._settle()
            return [
                i for i in self._instances.values()
                if not i.removed and i.phase != "terminated"
                and (not ours_only or _our_tag(i) is not None)
            ]

    def settle(self, seconds: float = 3600.0) -> None:
        """Let time pass (on a FakeClock) so every scheduled step happens."""
        if isinstance(self.clock, FakeClock):
            self.clock.advance(seconds)
        with self._lock:
            self._settle()

    # ---- internals ---------------------------------------------------------------------

    def _call(self, op: str) -> None:
        self.calls[op] += 1
        if self._on_call is not None:
            self._on_call(op)
        self._settle()

    def _fault(self, op: str) -> _Fault | None:
        """Pop the next fault for ``op``; raise now unless it is an after-work fault."""
        queue = self._faults.get(op)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        if not fault.after_work:
            self._raise(fault)
        return fault

    def _raise_after(self, fault: _Fault | None) -> None:
        if fault is not None and fault.after_work:
            self._raise(fault)

    def _raise(self, fault: _Fault) -> None:
        cls = _FAULT_ERRORS[fault.error]
        raise cls(f"injected {fault.error} fault", provider=self._name)

    def _target(self, instance_type: str | None, region: str | None) -> _Target:
        if instance_type is not None and instance_type not in self._types:
            raise ValueError(f"unknown instance type {instance_type!r}; known: "
                             f"{', '.join(sorted(self._types))}")
        return instance_type, region

    def _first_region(self, offer: InstanceTypeOffer) -> str:
        """Where a launch that names no region lands: the first region with capacity."""
        free = [r for r in offer.regions if not _covers(self._sold_out, offer.name, r)]
        return (free or list(offer.regions) or [""])[0]

    def _check_refusals(self, instance_type: str, region: str | None) -> None:
        """Raise the quota or capacity refusal a launch of this type and region meets."""
        offer = self._types.get(instance_type)
        if offer is None:
            return  # _create answers an unknown type
        where = region or self._first_region(offer)
        if _covers(self._quota_refused, instance_type, where):
            raise QuotaExceeded(f"quota exceeded for {instance_type} in {where or 'any region'}",
                                provider=self._name)
        if _covers(self._sold_out, instance_type, where):
            raise InsufficientCapacity(
                f"no capacity for {instance_type} in {where or 'any region'} (sold out)",
                provider=self._name)

    def _live(self, provider_instance_id: str) -> SimInstance:
        self._settle()
        inst = self._instances.get(provider_instance_id)
        if inst is None or inst.removed:
            raise KeyError(provider_instance_id)
        return inst

    def _alive(self, provider_instance_id: str) -> SimInstance:
        inst = self._live(provider_instance_id)
        if inst.phase in ("terminating", "terminated"):
            raise KeyError(provider_instance_id)
        return inst

    def _lagging(self, inst: SimInstance) -> bool:
        return self.clock.monotonic() - inst.created_at < self.read_lag

    def _command(
        self, op: str, pid: str, allowed: set[str], *steps: tuple[str, tuple[float, float]]
    ) -> None:
        with self._lock:
            self._call(op)
            after = self._fault(op)
            inst = self._instances.get(pid)
            if inst is None or inst.removed:
                raise ProviderNotFound(f"no instance {pid}", provider=self._name)
            if inst.phase not in allowed:
                raise InvalidRequest(f"cannot {op} an instance that is {inst.phase}",
                                     provider=self._name)
            inst.raw_override = None
            self._plan(inst, *steps)
            self._raise_after(after)

    def _replan(self, inst: SimInstance, phase: str) -> None:
        inst.epoch += 1
        inst.phase = phase

    def _plan(self, inst: SimInstance, *steps: tuple[str, tuple[float, float]]) -> None:
        """Replace the instance's future with ``steps``: (phase, delay range) in order.

        The phase "" means the instance vanishes from listings.
        """
        inst.epoch += 1
        at = self.clock.monotonic()
        for phase, (low, high) in steps:
            delay = low if high <= low else self._rng.uniform(low, high)
            at += delay
            if delay <= 0 and at <= self.clock.monotonic():
                self._apply(inst, phase)
            else:
                heapq.heappush(self._heap, (at, next(self._seq), inst.id, inst.epoch, phase))

    def _apply(self, inst: SimInstance, phase: str) -> None:
        if phase:
            inst.phase = phase
        else:
            inst.removed = True

    def _settle(self) -> None:
        now = self.clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, pid, epoch, phase = heapq.heappop(heap)
            inst = self._instances.get(pid)
            if inst is not None and inst.epoch == epoch and not inst.removed:
                self._apply(inst, phase)

    def _view(self, inst: SimInstance) -> ProviderInstance:
        raw = inst.raw_status
        state = SIM_STATUSES.get(raw)
        running = inst.phase in ("running", "rebooting", "stopping")
        return ProviderInstance(
            provider_instance_id=inst.id,
            raw_status=raw,
            state=state,
            tag=_our_tag(inst),
            name=inst.name,
            ip=inst.ip if running else None,
            region=inst.region,
            instance_type=inst.instance_type,
            price_per_hour=inst.price_per_hour,
            ssh_port=22 if running else None,
        )

