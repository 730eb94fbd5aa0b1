"""Lambda Cloud (Public Cloud API v1, spec 1.8.3): the adapter.

This room translates between gpufsm's provider-neutral contract and Lambda's API: the
launch body (with our ownership tag in Lambda's native ``tags`` *and* in the name), the
price cap, the error envelope. Its tables, payloads and options are data in
``_lambda_models``, read by the shared dialect (``_dialect``). All HTTP goes through
:class:`gpufsm.adapters.HttpSeam`; the account plumbing (key, seam, close, repr) is
:class:`gpufsm.adapters._base.HttpAdapter`'s.

Lambda facts that shape it (see tests/fixtures/provider-api/lambda/NOTES.md):

* Lambda cannot stop or start an instance: ``stop``/``start`` refuse locally.
* Every success is ``{"data": ...}``, every failure ``{"error": {"code", "message",
  "suggestion"?}}``; we branch on ``code`` only, as the spec asks.
* 429 has no documented body or code, so rate limiting is keyed on the HTTP status alone.
* ``/instances`` does not paginate: one GET is the complete listing.
* Not-found is the code ``global/object-does-not-exist`` and nothing else: a 404 without
  it is the seam's "unknown outcome" (see ``gpufsm.adapters._http``).
* The launch request has no price cap, so ``max_price_per_hour`` is honoured here: a type
  priced above it by ``/instance-types`` (cached) is refused before anything is sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx
import pydantic
from pydantic import SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter
from gpufsm.adapters._dialect import (
    SERVER_ERRORS,
    Endpoint,
    ErrorReport,
    ErrorRules,
    StatusTable,
    parse_options,
    scrub,
)
from gpufsm.adapters._http import RateLimit, RetryPolicy
from gpufsm.adapters._lambda_models import (
    LAMBDA_ERROR_PREFIXES,
    LAMBDA_ERRORS,
    LAMBDA_LAUNCH_OVERRIDES,
    LAMBDA_NAME_MAX,
    LAMBDA_REGIONS,
    LAMBDA_STATUSES,
    LAMBDA_TAG_KEY,
    LAMBDA_TERMINATE_BATCH_MAX,
    LambdaError,
    LambdaErrorEnvelope,
    LambdaInstance,
    LambdaInstanceEnvelope,
    LambdaInstanceListEnvelope,
    LambdaInstanceType,
    LambdaInstanceTypesEnvelope,
    LambdaInstanceTypesItem,
    LambdaLaunchEnvelope,
    LambdaOptions,
    LambdaRegion,
    LambdaRestartEnvelope,
    LambdaTag,
    LambdaTerminateEnvelope,
    check_spec,
    launch_name,
    rulesets,
    tag_value,
    user_tags,
)
from gpufsm.adapters._protocol import (
    TAG_PREFIX,
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.errors import (
    InsufficientCapacity,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
    ValidationError,
)
from gpufsm.machines import Capabilities
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec

__all__ = [
    "LAMBDA_ENDPOINTS",
    "LAMBDA_ERRORS",
    "LAMBDA_ERROR_PREFIXES",
    "LAMBDA_PRICE_CACHE_SECONDS",
    "LAMBDA_RATE_LIMITS",
    "LAMBDA_REGIONS",
    "LAMBDA_RETRY",
    "LAMBDA_STATUSES",
    "LAMBDA_TAG_KEY",
    "LAMBDA_TERMINATE_BATCH_MAX",
    "LambdaCloudAdapter",
    "LambdaError",
    "LambdaErrorEnvelope",
    "LambdaInstance",
    "LambdaInstanceEnvelope",
    "LambdaInstanceListEnvelope",
    "LambdaInstanceType",
    "LambdaInstanceTypesEnvelope",
    "LambdaInstanceTypesItem",
    "LambdaLaunchEnvelope",
    "LambdaOptions",
    "LambdaRegion",
    "LambdaRestartEnvelope",
    "LambdaTag",
    "LambdaTerminateEnvelope",
    "map_lambda_error",
    "to_provider_instance",
]

log = logging.getLogger("gpufsm.adapters.lambda_cloud")

PROVIDER = "lambda"
API_PREFIX = "/api/v1"

#: Documented limits: ~1 request/s (burst 2, so a get right after a launch does not
#: wait), and launch 1 per 12 s.
LAMBDA_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "default": RateLimit(1.0, burst=2),
    "launch": RateLimit(1 / 12, burst=1),
})

#: Backoff starting at 1 s: Lambda's limits are per second (and 12 s for launch), so
#: the seam's sub-second default would burn the attempts inside one window.
LAMBDA_RETRY = RetryPolicy(attempts=5, initial=1.0, max_backoff=30.0)

#: How long the prices read for a ``max_price_per_hour`` check are reused: prices change
#: rarely, and a batch of launches should not cost one extra request each.
LAMBDA_PRICE_CACHE_SECONDS = 300.0

#: Lambda's operations. Restart is not retried after an unclear failure: a restart that
#: did happen makes the retry fail (the instance is booting), which would report a
#: success as refused. Terminate is (terminating twice is harmless).
LAMBDA_ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType({
    "launch": Endpoint("POST", f"{API_PREFIX}/instance-operations/launch", idempotent=False),
    "get": Endpoint("GET", f"{API_PREFIX}/instances/{{id}}", idempotent=True),
    "list": Endpoint("GET", f"{API_PREFIX}/instances", idempotent=True),
    "restart": Endpoint("POST", f"{API_PREFIX}/instance-operations/restart",
                        idempotent=False),
    "terminate": Endpoint("POST", f"{API_PREFIX}/instance-operations/terminate",
                          idempotent=True),
    "rename": Endpoint("POST", f"{API_PREFIX}/instances/{{id}}", idempotent=True),
    "instance_types": Endpoint("GET", f"{API_PREFIX}/instance-types", idempotent=True),
})

# 429 and 5xx mean the status itself whatever the body says; an undocumented code is
# logged and left to the seam.
_RULES = ErrorRules(PROVIDER, LAMBDA_ERRORS, log, prefixes=LAMBDA_ERROR_PREFIXES,
                    status_decides=SERVER_ERRORS | {429}, text_limit=800)
_LAUNCH_RULES = dataclasses.replace(_RULES, codes={**LAMBDA_ERRORS, **LAMBDA_LAUNCH_OVERRIDES})
_STATUS = StatusTable(PROVIDER, LAMBDA_STATUSES, log)


# ---- mapping ---------------------------------------------------------------------------


def map_lambda_error(response: httpx.Response, provider: str, *,
                     secret: SecretStr | None = None) -> ProviderError | None:
    """Lambda's error envelope → a gpufsm error, keyed on ``code`` only.

    None (the seam then maps by HTTP status) for 429 and 5xx, whose meaning is the
    status itself whatever the body says, and for bodies without a known code.
    ``secret`` (the API key) is masked before any of the provider's text is kept.
    """
    try:
        envelope = LambdaErrorEnvelope.model_validate_json(scrub(response.text, secret))
    except pydantic.ValidationError:
        return None
    error = envelope.error
    message = error.message[:300] or f"HTTP {response.status_code}"
    if error.suggestion:
        message = f"{message} ({error.suggestion[:200]})"
    if envelope.field_errors:
        message = f"{message}; fields: {', '.join(sorted(envelope.field_errors))[:200]}"
    rules = _LAUNCH_RULES if _is_launch(response) else _RULES
    return rules.error(ErrorReport([error.code], message), response, secret=secret)


def _is_launch(response: httpx.Response) -> bool:
    try:
        path = response.request.url.path
    except RuntimeError:  # a Response built by hand has no request
        return False
    return path.endswith("/instance-operations/launch")


def _tag_of(inst: LambdaInstance) -> str | None:
    """Our tag from Lambda's native tags first, else from the name (older views)."""
    for entry in inst.tags or ():
        if entry.key == LAMBDA_TAG_KEY:
            return f"{TAG_PREFIX}{entry.value}" if entry.value else None
    return tag_from_name(inst.name)


def to_provider_instance(inst: LambdaInstance) -> ProviderInstance:
    """One Lambda ``Instance`` as gpufsm sees it; unknown statuses become UNKNOWN."""
    cents = inst.instance_type.price_cents_per_hour if inst.instance_type else None
    return ProviderInstance(
        provider_instance_id=inst.id,
        raw_status=inst.status,
        state=_STATUS.state(inst.id, inst.status),
        tag=_tag_of(inst),
        name=inst.name,
        ip=inst.ip,
        region=inst.region.name if inst.region else None,
        instance_type=inst.instance_type.name if inst.instance_type else None,
        price_per_hour=cents / 100 if cents is not None else None,
        ssh_port=22 if inst.ip else None,
    )


# ---- the adapter -----------------------------------------------------------------------


class LambdaCloudAdapter(HttpAdapter):
    """One Lambda Cloud account. See ``gpufsm.adapters.ProviderAdapter`` for the contract."""

    profile = AdapterProfile(
        PROVIDERS[PROVIDER], statuses=LAMBDA_STATUSES,
        capabilities=Capabilities(stop=False, restart=True, tags=True),
        error_mapper=map_lambda_error, rate_limits=LAMBDA_RATE_LIMITS, retry=LAMBDA_RETRY,
        # A client passed in is handed over for good: close() closes it too, which is
        # what this adapter's callers have always relied on.
        closes_given_client=True)
    endpoints = LAMBDA_ENDPOINTS

    # ---- validation ----------------------------------------------------------------

    #: (when read, type name → $/h) of the last ``/instance-types`` answer.
    _prices: tuple[float, dict[str, float]] | None = None

    def validate(self, spec: InstanceSpec) -> None:
        """Lambda's launch rules (``_lambda_models.check_spec``), before anything is
        written or sent: no spec field is silently dropped."""
        check_spec(spec)

    # ---- commands ------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        """One instance, tagged natively and by name; its id, or an error.

        Not retried unless the seam proves the request unprocessed: a launch that timed
        out may have created a machine, which the reconciler finds by its tag.
        """
        self.validate(request.spec)
        body = self.launch_body(request)
        if request.spec.max_price_per_hour is not None:
            with self._before_launch():
                self._check_price(request.spec.instance_type, request.spec.max_price_per_hour)
        response = self._call("launch", json=body)
        ids = self._parse(response, LambdaLaunchEnvelope, "launch").data.instance_ids
        if not ids:
            raise ProviderUnavailable("launch answered 200 without an instance id; "
                                      "the reconciler will look for the tag",
                                      provider=PROVIDER)
        if len(ids) > 1:
            log.error("%s: one launch created %d instances %s; tracking the first, the "
                      "others carry tag %s", PROVIDER, len(ids), ids, request.tag)
        return ids[0]

    def _check_price(self, instance_type: str, limit: float) -> None:
        """Refuse (nothing sent) a type whose price is above ``limit`` or unknown."""
        price = self.type_prices().get(instance_type)
        if price is None:
            raise InvalidRequest(f"{instance_type} is not among Lambda's instance types, so "
                                 "max_price_per_hour cannot be checked", provider=PROVIDER,
                                 code="unknown-instance-type")
        if price > limit:
            raise InsufficientCapacity(
                f"{instance_type} costs {_usd(price)}/h, above max_price_per_hour "
                f"{_usd(limit)}/h", provider=PROVIDER, code="above-max-price")

    def type_prices(self) -> Mapping[str, float]:
        """Type name → $/h from ``/instance-types``, read at most every
        ``LAMBDA_PRICE_CACHE_SECONDS`` per adapter."""
        now = self._clock.monotonic()
        if self._prices is not None and now - self._prices[0] < LAMBDA_PRICE_CACHE_SECONDS:
            return self._prices[1]
        self.instance_types()  # refreshes the cache
        assert self._prices is not None
        return self._prices[1]

    def launch_body(self, request: LaunchRequest) -> dict[str, Any]:
        """The ``InstanceLaunchRequest`` for ``request`` (no ``quantity``: 1.8.3 has none)."""
        spec = request.spec
        options = spec.options
        parsed = parse_options(LambdaOptions, options, provider="Lambda")
        value = tag_value(request.tag)
        body: dict[str, Any] = {
            "region_name": spec.region,
            "instance_type_name": spec.instance_type,
            "ssh_key_names": list(spec.ssh_key_names),
            "name": launch_name(request.tag, spec.name),
            "tags": [{"key": LAMBDA_TAG_KEY, "value": value}, *user_tags(parsed)],
        }
        if spec.command is not None:
            body["user_data"] = spec.command
        for key in ("hostname", "image", "file_system_names", "file_system_mounts"):
            if options.get(key) is not None:
                body[key] = options[key]
        if options.get("firewall_rulesets") is not None:
            body["firewall_rulesets"] = rulesets(options["firewall_rulesets"])
        return body

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        # None only on global/object-does-not-exist, and nothing else.
        response = self._call_unless_absent("get", id=provider_instance_id)
        if response is None:
            return None
        return to_provider_instance(self._parse(response, LambdaInstanceEnvelope, "get").data)

    def list_instances(self) -> Sequence[ProviderInstance]:
        """The whole account in one call (no pagination), or an error: never partial."""
        response = self._call("list")
        data = self._parse(response, LambdaInstanceListEnvelope, "list").data
        return [to_provider_instance(inst) for inst in data]

    def start(self, provider_instance_id: str) -> None:
        raise InvalidRequest(f"cannot start {provider_instance_id}: Lambda Cloud has no "
                             "stop/start", provider=PROVIDER)

    def stop(self, provider_instance_id: str) -> None:
        raise InvalidRequest(f"cannot stop {provider_instance_id}: Lambda Cloud has no "
                             "stop/start; terminate it instead", provider=PROVIDER)

    def restart(self, provider_instance_id: str) -> None:
        """Not retried after an unclear failure: a restart that did happen makes the
        retry fail (the instance is booting), which would report a success as refused."""
        self._call("restart", json={"instance_ids": [provider_instance_id]})

    def terminate(self, provider_instance_id: str) -> None:
        """Idempotent: Lambda's not-found for the instance means it is already gone."""
        self._call_unless_absent("terminate", json={"instance_ids": [provider_instance_id]})

    terminate_batch_max = LAMBDA_TERMINATE_BATCH_MAX

    def terminate_many(self, provider_instance_ids: Sequence[str]
                       ) -> Mapping[str, ProviderInstance]:
        """Up to ``LAMBDA_TERMINATE_BATCH_MAX`` instances in one request (``BatchTerminate``):
        each one Lambda answered, as the answer shows it. One unknown id makes Lambda
        refuse them all (``ProviderNotFound``, raised: it cannot say which one)."""
        ids = list(provider_instance_ids)
        if not 0 < len(ids) <= LAMBDA_TERMINATE_BATCH_MAX:
            raise ValueError(f"1 to {LAMBDA_TERMINATE_BATCH_MAX} ids, not {len(ids)}")
        response = self._call("terminate", json={"instance_ids": ids})
        answer = self._parse(response, LambdaTerminateEnvelope, "terminate").data
        asked = set(ids)
        return {i.id: to_provider_instance(i) for i in answer.terminated_instances
                if i.id in asked}

    def rename(self, provider_instance_id: str, name: str) -> ProviderInstance:
        """Set the instance's name. Ownership survives: it is read from tags first."""
        if len(name) > LAMBDA_NAME_MAX:
            raise ValidationError("name", f"at most {LAMBDA_NAME_MAX} characters", value=name)
        response = self._call("rename", id=provider_instance_id, json={"name": name})
        return to_provider_instance(self._parse(response, LambdaInstanceEnvelope, "rename").data)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        response = self._call("instance_types")
        items = self._parse(response, LambdaInstanceTypesEnvelope, "instance_types").data
        offers = []
        for key, item in items.items():
            itype = item.instance_type
            if itype.price_cents_per_hour is None:
                log.warning("%s: instance type %s has no price; left out", PROVIDER, key)
                continue
            offers.append(InstanceTypeOffer(
                provider=PROVIDER,
                name=itype.name or key,
                price_per_hour=itype.price_cents_per_hour / 100,
                regions=tuple(r.name for r in item.regions_with_capacity_available),
                gpus=itype.specs.gpus if itype.specs else None,
                gpu_description=itype.gpu_description,
                description=itype.description,
                extra=itype.specs.model_dump() if itype.specs else {},
            ))
        self._prices = (self._clock.monotonic(), {o.name: o.price_per_hour for o in offers})
        return offers


# ---- helpers ---------------------------------------------------------------------------


def _usd(amount: float) -> str:
    """``$0.75``; more digits only where two would hide a difference."""
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:.4f}"
