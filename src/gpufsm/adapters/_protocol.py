"""The contract every provider adapter keeps, and the values that cross it.

The contract, which the engine and the reconciler rely on:

* **Eventually consistent.** A listing may lag a command by seconds: a just-stopped
  instance may still read ``running``. Callers never treat one reading as final.
* **Terminate is idempotent.** Terminating an instance the provider does not know is a
  success (not-found = done), so a retry after a timeout is always safe. "Not found"
  means the provider's own not-found envelope (``ProviderNotFound``, which only a
  provider's error mapper may produce): a bare 404 from a proxy or a wrong base URL is
  an unknown outcome, never "done" (see ``gpufsm.adapters._http``).
* **Observations are three-valued.** For one of our instances a caller learns PRESENT
  (with the raw status), ABSENT, or UNKNOWN. ``list_instances`` returns a *complete*
  listing or raises; it never returns a partial or empty list on failure, because "the
  listing was empty" would read as "everything is gone" and we would stop watching
  machines that still bill. ``get`` returns None only when the provider says not-found
  in its own words. Right after a launch, that may still be read lag: absence inside a
  visibility window proves nothing, which the engine, not the adapter, decides.
* **Unknown raw statuses are not errors.** They map to ``state=None`` (UNKNOWN), are
  logged with the raw value, and change nothing.
* **Ownership.** ``launch`` marks the instance with ``request.tag`` (a provider tag where
  one exists, else the name) so a crash between the launch and our commit is healed by
  finding the tag. ``ProviderInstance.tag`` gives the tag back when it is ours.
* **Timeouts and errors** are the tree in ``gpufsm.errors``: temporary errors may have
  been applied; permanent ones certainly were not. A temporary error marked
  ``not_sent`` (a refused connection, a read before the launch that failed) means the
  request itself never left.
* **What only some adapters do** is a protocol of its own, so a caller asks
  ``isinstance(adapter, Renamable)`` and gets a typed method instead of reaching for it
  with ``getattr``: :class:`Closable` (holds connections: close it when done; every HTTP
  adapter), :class:`HasSeam` (its HTTP seam, for call counts and metrics; every HTTP
  adapter), :class:`Renamable` (renames an instance at the provider; Lambda) and
  :class:`BatchTerminate` (terminates many instances in one request; Lambda). The
  simulated cloud and test doubles keep the core protocol only.
* **Every spec field is honoured or refused.** ``validate`` refuses, naming the field,
  what the provider cannot do; everything else reaches the provider's request (or is
  checked against the provider's own data, like a price cap) — nothing is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gpufsm.adapters._http import HttpSeam
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "TAG_PREFIX",
    "BatchTerminate",
    "Closable",
    "HasSeam",
    "InstanceTypeOffer",
    "LaunchRequest",
    "Observation",
    "ObservationKind",
    "ProviderAdapter",
    "ProviderInstance",
    "Renamable",
    "ownership_tag",
    "tag_from_name",
]

TAG_PREFIX = "gpufsm-"


def ownership_tag(client_token: str) -> str:
    """The mark that says "this instance is ours" on providers and in names."""
    return f"{TAG_PREFIX}{client_token}"


def tag_from_name(name: str | None) -> str | None:
    """Find our tag in an instance name, for providers without native tags.

    Names are ``<tag>`` or ``<tag>/<user name>``; anything else is not ours.
    """
    if not name or not name.startswith(TAG_PREFIX):
        return None
    tag = name.split("/", 1)[0]
    return tag if len(tag) > len(TAG_PREFIX) else None


@dataclass(frozen=True, slots=True)
class ProviderInstance:
    """One instance as the provider reports it, with the raw status already mapped.

    ``state`` is None when the raw status is one the adapter has never seen: UNKNOWN.
    SSH goes to ``ssh_host:ssh_port``, or to ``ip:ssh_port`` when ``ssh_host`` is None.
    """

    provider_instance_id: str
    raw_status: str
    state: InstanceState | None
    tag: str | None = None
    name: str | None = None
    ip: str | None = None
    region: str | None = None
    instance_type: str | None = None
    price_per_hour: float | None = None
    ssh_port: int | None = None
    detail: str | None = None  # provider's failure text, e.g. Novita statusError.message
    ssh_host: str | None = None  # when SSH is not on ``ip``, e.g. Vast's proxy sshN.vast.ai


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """What the engine hands an adapter: the spec plus our ownership marks."""

    spec: InstanceSpec
    tag: str
    client_token: str

    @property
    def display_name(self) -> str:
        """``<tag>/<user name>`` so the tag survives on providers that only keep a name."""
        return f"{self.tag}/{self.spec.name}" if self.spec.name else self.tag


@dataclass(frozen=True, slots=True)
class InstanceTypeOffer:
    """A type (or a marketplace offer) with price and where capacity exists now."""

    provider: str
    name: str
    price_per_hour: float
    regions: tuple[str, ...] = ()
    gpus: int | None = None
    gpu_description: str | None = None
    description: str | None = None
    offer_id: str | None = None  # Vast ask id, Novita product id
    spot_price_per_hour: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.regions)


class ObservationKind(enum.StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one look at the provider says about one of our instances.

    ABSENT with ``confirmed=False`` (missing from one listing) only counts on the row;
    only a confirmed absence (the provider's own not-found on a direct GET, or, for a
    launch that never showed an id, N good listings in a row without its tag) may mark an
    instance TERMINATED, and not inside the visibility window after its launch.
    """

    kind: ObservationKind
    instance: ProviderInstance | None = None
    confirmed: bool = False
    reason: str = ""

    @classmethod
    def present(cls, instance: ProviderInstance) -> Observation:
        return cls(ObservationKind.PRESENT, instance, confirmed=True)

    @classmethod
    def absent(cls, *, confirmed: bool, reason: str) -> Observation:
        return cls(ObservationKind.ABSENT, None, confirmed=confirmed, reason=reason)

    @classmethod
    def unknown(cls, reason: str) -> Observation:
        return cls(ObservationKind.UNKNOWN, None, reason=reason)


@runtime_checkable
class ProviderAdapter(Protocol):
    """One provider account. See the module docstring for the contract."""

    @property
    def name(self) -> str:
        """Registry key, e.g. ``lambda``; stored on every row."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def validate(self, spec: InstanceSpec) -> None:
        """Raise ValidationError (field + rule) for a spec this provider would refuse."""
        ...

    def launch(self, request: LaunchRequest) -> str:
        """Create one instance marked with ``request.tag``; return its provider id."""
        ...

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        """A fresh direct read. None means the provider answered not-found."""
        ...

    def list_instances(self) -> Sequence[ProviderInstance]:
        """Every instance of the account, all pages, or raise. Never partial."""
        ...

    def start(self, provider_instance_id: str) -> None: ...

    def stop(self, provider_instance_id: str) -> None: ...

    def restart(self, provider_instance_id: str) -> None: ...

    def terminate(self, provider_instance_id: str) -> None:
        """Idempotent: an unknown id is success."""
        ...

    def instance_types(self) -> Sequence[InstanceTypeOffer]: ...


@runtime_checkable
class Closable(Protocol):
    """An adapter holding connections (an HTTP client): close it when done with it."""

    def close(self) -> None: ...


@runtime_checkable
class HasSeam(Protocol):
    """An adapter that calls through an :class:`~gpufsm.adapters.HttpSeam`, exposed for
    its call count, breaker and observers (metrics, the reconciler's report)."""

    @property
    def seam(self) -> HttpSeam: ...


@runtime_checkable
class Renamable(Protocol):
    """An adapter whose provider can rename an instance; ``name`` keeps our tag first
    (``<tag>/<user name>``), so ownership survives the rename."""

    def rename(self, provider_instance_id: str, name: str) -> object: ...


@runtime_checkable
class BatchTerminate(Protocol):
    """An adapter whose provider terminates many instances in one request (Lambda's
    ``instance_ids``), so a reconcile pass ending fifty instances makes one call, not
    fifty terminates and fifty confirming reads.

    ``terminate_many`` takes 1 to ``terminate_batch_max`` ids and answers, per id the
    provider says it terminated, the instance as that answer shows it: a fresh read,
    which the engine applies as it would a GET. An id missing from the answer proves
    nothing (never "gone"): the caller sends and reads it one by one, as it does every
    id of a call that raised. The call is idempotent like ``terminate``, but an unknown
    id may make the provider refuse the whole request (its not-found, raised as
    ``ProviderNotFound``: it cannot say which id), which is why one by one follows.
    """

    @property
    def terminate_batch_max(self) -> int:
        """The most ids one ``terminate_many`` call takes."""
        ...

    def terminate_many(self, provider_instance_ids: Sequence[str]
                       ) -> Mapping[str, ProviderInstance]: ...
