"""Every exception gpufsm raises, in one tree, so callers can catch by meaning.

::

    GpufsmError
    ├─ DefinitionError                    the transition table is malformed (raised at import)
    ├─ TransitionNotAllowed               illegal command: no provider call, nothing written
    ├─ ValidationError                    bad input, naming the field and the rule it broke
    ├─ WaitTimeout                        wait_for ran out of time
    ├─ WaitFailed                         wait_for's target can no longer be reached
    ├─ PlacementFailed                    no offer of a placement produced a machine
    ├─ RecoveryExhausted                  a recovering run lost its last allowed machine
    ├─ StoreError                         the database could not do what was asked
    │  ├─ VersionConflict                 someone else moved the row first; re-read
    │  └─ InstanceNotFound                no row with that id
    └─ ProviderError                      the provider said no, or did not answer
       ├─ TemporaryProviderError          retried by the HTTP seam; may have been applied
       │  ├─ RateLimited                  429; ``retry_after`` when the provider says
       │  ├─ ProviderTimeout              no answer in time; the work may have been done
       │  ├─ ProviderUnavailable          5xx, connection dropped, outage
       │  └─ CircuitOpen                  too many failures: calls are refused locally
       └─ PermanentProviderError          not retried; the provider certainly refused
          ├─ AuthError                    bad or inactive API key
          ├─ InsufficientCapacity         no machine of that type/region right now
          ├─ InsufficientCredit           the account cannot pay: see the emergency policy
          ├─ QuotaExceeded                account limit reached
          ├─ ProviderNotFound             the provider has no such object (confirms absence)
          └─ InvalidRequest               the provider rejected the request's content

Temporary errors are the ones where the outcome is *unknown*: a launch that timed out may
have created a machine, so callers must never read them as "nothing happened". Permanent
errors are the ones where the provider certainly did not act, which is what lets the
engine mark a failed launch as not billable.

Errors never carry an API key: messages are built from provider error codes and our own
text, and request ids, never from request headers.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CircuitOpen",
    "DefinitionError",
    "GpufsmError",
    "InstanceNotFound",
    "InsufficientCapacity",
    "InsufficientCredit",
    "InvalidRequest",
    "PermanentProviderError",
    "PlacementFailed",
    "ProviderError",
    "ProviderNotFound",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "RecoveryExhausted",
    "StoreError",
    "TemporaryProviderError",
    "TransitionNotAllowed",
    "ValidationError",
    "VersionConflict",
    "WaitFailed",
    "WaitTimeout",
]


class GpufsmError(Exception):
    """Root of every error gpufsm raises on purpose."""


class DefinitionError(GpufsmError):
    """The transition table breaks a structural rule; found at import, never at run time."""


class TransitionNotAllowed(GpufsmError):
    """A command that the table or a guard forbids. Nothing was called or written."""

    def __init__(self, instance_id: str, state: str, event: str, reason: str) -> None:
        self.instance_id = instance_id
        self.state = state
        self.event = event
        self.reason = reason
        super().__init__(f"cannot {event} instance {instance_id} in state {state}: {reason}")


class ValidationError(GpufsmError, ValueError):
    """Bad input. ``field`` is the dotted path of the offending field, ``rule`` why."""

    def __init__(self, field: str, rule: str, *, value: object = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        super().__init__(f"{field}: {rule}")


class WaitTimeout(GpufsmError, TimeoutError):
    """wait_for gave up; the instance is left as it is (it may still get there)."""

    def __init__(self, instance_id: str, wanted: str, state: str, timeout: float) -> None:
        self.instance_id = instance_id
        self.wanted = wanted
        self.state = state
        super().__init__(
            f"instance {instance_id} still {state} after {timeout:g}s waiting for {wanted}"
        )


class WaitFailed(GpufsmError):
    """wait_for stopped early: from the current state the target is no longer reachable."""

    def __init__(self, instance_id: str, wanted: str, state: str, last_error: str | None) -> None:
        self.instance_id = instance_id
        self.wanted = wanted
        self.state = state
        detail = f" (last error: {last_error})" if last_error else ""
        super().__init__(
            f"instance {instance_id} reached {state}, from which {wanted} cannot follow{detail}"
        )


class StoreError(GpufsmError):
    """The database refused or failed; the operation was rolled back."""


class VersionConflict(StoreError):
    """Optimistic concurrency: the row's version moved since it was read."""

    def __init__(self, instance_id: str, expected_version: int) -> None:
        self.instance_id = instance_id
        self.expected_version = expected_version
        super().__init__(
            f"instance {instance_id} changed since version {expected_version}; re-read it"
        )


class InstanceNotFound(StoreError, KeyError):
    """No instance row with this id (it may belong to another database)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"no instance {instance_id!r} in the store")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class ProviderError(GpufsmError):
    """A provider call failed. ``code`` is the provider's own error code when it gave one.

    ``instance_id`` is set by the engine when the call was for one of our rows, so a
    scheduler catching a failed launch knows which (FAILED or CREATING) row it left.
    """

    instance_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.code = code
        self.status_code = status_code
        self.request_id = request_id
        super().__init__(message)

    def __str__(self) -> str:
        # Built on demand: the HTTP seam learns the request id after the error is made.
        parts = [f"{self.provider}: {self.message}"]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.request_id:
            parts.append(f"(request {self.request_id})")
        return " ".join(parts)


class TemporaryProviderError(ProviderError):
    """Worth retrying; the request may or may not have taken effect.

    ``not_sent`` is True only when the request surely never reached the provider (the
    connection was refused), which is what makes retrying a launch safe.
    """

    retry_after: float | None = None
    not_sent: bool = False


class RateLimited(TemporaryProviderError):
    """The provider asked us to slow down (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderTimeout(TemporaryProviderError):
    """No answer in time. The provider may have done the work anyway."""


class ProviderUnavailable(TemporaryProviderError):
    """5xx, a dropped connection or an outage."""


class CircuitOpen(TemporaryProviderError):
    """Calls to this provider are refused locally after repeated failures."""


class PermanentProviderError(ProviderError):
    """The provider certainly refused; retrying the same request will not help."""


class AuthError(PermanentProviderError):
    """The API key is missing, wrong, or the account is inactive."""


class InsufficientCapacity(PermanentProviderError):
    """No capacity for that type in that region now; try another, or later."""


class InsufficientCredit(PermanentProviderError):
    """The account cannot pay. Instances of ours on this provider should be destroyed."""


class QuotaExceeded(PermanentProviderError):
    """An account limit (instances, GPUs) was reached."""


class ProviderNotFound(PermanentProviderError):
    """The provider has no such object; for an instance this confirms it is gone."""


class InvalidRequest(PermanentProviderError):
    """The provider rejected the request's content (bad parameters, wrong state)."""


class PlacementFailed(GpufsmError):
    """No offer of a placement produced a machine: one line per attempt and its reason.

    ``attempts`` are (offer, reason) texts in the order tried; ``skipped`` says why
    offers were not tried at all (none matched, refused lately, a provider's catalog
    unreadable). Nothing of the placement bills: an attempt whose outcome was unknown
    is tracked, and its machine is terminated if it ever turns up.
    """

    def __init__(self, placement_id: str, attempts: tuple[tuple[str, str], ...],
                 skipped: tuple[str, ...] = ()) -> None:
        self.placement_id = placement_id
        self.attempts = attempts
        self.skipped = skipped
        lines = [f"placement {placement_id}: no machine after {len(attempts)} attempt(s)"]
        lines += [f"  {offer}: {reason}" for offer, reason in attempts]
        lines += [f"  {why}" for why in skipped]
        super().__init__("\n".join(lines))


class RecoveryExhausted(GpufsmError):
    """A recovering run lost its last allowed machine: one line per generation, how it
    ended (preempted, died, its launch failed). Every generation has been terminated
    (or is TERMINATING, which the reconciler finishes) by the time this is raised
    out of the session."""

    def __init__(self, run_id: str, ends: tuple[str, ...]) -> None:
        self.run_id = run_id
        self.ends = ends
        lines = [f"run {run_id}: gave up after {len(ends)} machine(s), "
                 f"{max(len(ends) - 1, 0)} replacement(s)"]
        lines += [f"  generation {n}: {why}" for n, why in enumerate(ends, 1)]
        super().__init__("\n".join(lines))
