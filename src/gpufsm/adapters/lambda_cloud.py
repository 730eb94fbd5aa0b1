"""Lambda Cloud (Public Cloud API v1, spec 1.8.3): the adapter, its payloads and its tables.

This room translates between gpufsm's provider-neutral contract and Lambda's API:
the raw-status table, the error-code table, the launch body (with our ownership tag in
Lambda's native ``tags`` *and* in the name), and the pydantic models of the payloads.
All HTTP goes through :class:`gpufsm.adapters.HttpSeam`; the account plumbing (key, seam,
close, repr) is :class:`gpufsm.adapters._base.HttpAdapter`'s.

Lambda facts that shape it (see tests/fixtures/provider-api/lambda/NOTES.md):

* Lambda cannot stop or start an instance: ``stop``/``start`` refuse locally.
* Every success is ``{"data": ...}``, every failure ``{"error": {"code", "message",
  "suggestion"?}}``; we branch on ``code`` only, as the spec asks.
* 429 has no documented body or code, so rate limiting is keyed on the HTTP status alone.
* ``/instances`` does not paginate: one GET is the complete listing.
* Not-found is the code ``global/object-does-not-exist`` and nothing else: a 404 without
  it is the seam's "unknown outcome" (see ``gpufsm.adapters._http``).
* The launch request has no price cap, so ``max_price_per_hour`` is honoured here: the
  type's price is read from ``/instance-types`` (cached for ``LAMBDA_PRICE_CACHE_SECONDS``) and
  a launch above the cap is refused before anything is sent.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx
import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter, scrub
from gpufsm.adapters._http import RateLimit, RetryPolicy
from gpufsm.adapters._protocol import (
    TAG_PREFIX,
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    QuotaExceeded,
    ValidationError,
)
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "LAMBDA_ERRORS",
    "LAMBDA_ERROR_PREFIXES",
    "LAMBDA_PRICE_CACHE_SECONDS",
    "LAMBDA_RATE_LIMITS",
    "LAMBDA_REGIONS",
    "LAMBDA_RETRY",
    "LAMBDA_STATUSES",
    "LAMBDA_TAG_KEY",
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
DEFAULT_BASE_URL = "https://cloud.lambda.ai"
API_KEY_ENV = "LAMBDA_API_KEY"

#: Every documented ``InstanceStatus`` (1.8.3) and what it means to gpufsm.
LAMBDA_STATUSES: Mapping[str, InstanceState] = MappingProxyType({
    "booting": InstanceState.STARTING,  # launched or restarting; no IP until active
    "active": InstanceState.RUNNING,
    # Broken but still allocated and billing: FAILED (billable) makes the reconciler
    # restart or terminate it, never forget it.
    "unhealthy": InstanceState.FAILED,
    "terminating": InstanceState.TERMINATING,
    "terminated": InstanceState.TERMINATED,  # Lambda itself confirms it is gone
    # Taken back by Lambda, yet still listed and (per spec silence) possibly billed until
    # we terminate it: FAILED + billable, so the reconciler issues a terminate. Not
    # TERMINATED, which must mean *confirmed gone*.
    "preempted": InstanceState.FAILED,
})

#: Every documented error ``code`` (1.8.3, plus 1.4.0's extra codes) → gpufsm error.
LAMBDA_ERRORS: Mapping[str, type[ProviderError]] = MappingProxyType({
    "global/invalid-api-key": AuthError,
    "global/account-inactive": AuthError,
    # A billing-address problem, 403 on launch only. Lambda bills afterwards (no balance
    # to run out of) and keeps the running instances alive, so this is the account
    # refusing new work, like account-inactive, not "the account cannot pay": mapping it
    # to InsufficientCredit would fire the destroy-everything emergency policy.
    "global/invalid-address": AuthError,
    "global/invalid-parameters": InvalidRequest,
    # On launch it names a missing ssh key / image / filesystem: see _LAUNCH_OVERRIDES.
    "global/object-does-not-exist": ProviderNotFound,
    "instance-operations/launch/insufficient-capacity": InsufficientCapacity,
    "instance-operations/launch/file-system-in-wrong-region": InvalidRequest,
    "global/quota-exceeded": QuotaExceeded,
    "global/duplicate": InvalidRequest,
    "filesystems/filesystem-in-use": InvalidRequest,
    "firewall-rulesets/firewall-ruleset-in-use": InvalidRequest,
    # "An internal server error occurred. Try again later." (sent as 409).
    "global/internal-error": ProviderUnavailable,
    # 1.4.0 only. An error Lambda could not classify: the outcome is unknown, so it is
    # temporary (a launch that answered this may have created a machine).
    "global/unknown": ProviderUnavailable,
    "instance-operations/launch/file-systems-not-supported": InvalidRequest,
    "ssh-keys/key-in-use": InvalidRequest,
})

#: Code prefixes: ``provider/*`` errors come from Lambda's upstream providers
#: (e.g. ``provider/internal-unavailable``, "Try again shortly").
LAMBDA_ERROR_PREFIXES: Mapping[str, type[ProviderError]] = MappingProxyType({
    "provider/": ProviderUnavailable,
})

# On launch, "object does not exist" is about something the request referenced (an ssh
# key, an image, a filesystem), not an instance: it must not read as "instance gone".
_LAUNCH_OVERRIDES: Mapping[str, type[ProviderError]] = MappingProxyType({
    "global/object-does-not-exist": InvalidRequest,
})

#: ``PublicRegionCode`` of spec 1.8.3: launch refuses any other region name.
LAMBDA_REGIONS: tuple[str, ...] = (
    "europe-central-1", "asia-south-1", "australia-east-1", "me-west-1",
    "asia-northeast-1", "asia-northeast-2", "us-east-1", "us-west-2", "us-west-1",
    "us-south-1", "us-west-3", "us-midwest-1", "us-east-2", "us-south-2", "us-south-3",
    "us-east-3", "us-midwest-2",
)

#: Documented limits: ~1 request/s (burst 2, so a get right after a launch does not
#: wait), and launch 1 per 12 s.
LAMBDA_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "default": RateLimit(1.0, burst=2),
    "launch": RateLimit(1 / 12, burst=1),
})

#: Backoff starting at 1 s: Lambda's limits are per second (and 12 s for launch), so
#: the seam's sub-second default would burn the attempts inside one window.
LAMBDA_RETRY = RetryPolicy(attempts=5, initial=1.0, max_backoff=30.0)

#: Our ownership tag lives under this key; the value is the tag without ``gpufsm-``.
LAMBDA_TAG_KEY = "gpufsm"

#: How long the prices read for a ``max_price_per_hour`` check are reused: prices change
#: rarely, and a batch of launches should not cost one extra request each.
LAMBDA_PRICE_CACHE_SECONDS = 300.0

_NAME_MAX = 64
_HOSTNAME_RE = re.compile(r"^[a-z0-9][0-9a-z-]{0,62}$")
_TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9-:]+$")
_TAG_KEY_MAX = 55
_TAG_VALUE_MAX = 128
_MOUNT_RE = re.compile(r"^(/home|/lambda/nfs|/data)[//a-zA-Z0-9-]*$")
_MOUNT_MAX = 256
# "cannot exceed 1MB": read as 10**6 bytes, the stricter reading, so we never send a
# body Lambda might refuse after we committed the launch row.
_USER_DATA_MAX = 1_000_000
_GPU_COUNT_RE = re.compile(r"^gpu_(\d+)x_")
_OPTIONS = ("file_system_mounts", "file_system_names", "firewall_rulesets", "hostname",
            "image", "tags")


# ---- payloads --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class LambdaRegion(_Model):
    name: str
    description: str | None = None


class LambdaInstanceTypeSpecs(_Model):
    vcpus: int | None = None
    memory_gib: int | None = None
    storage_gib: int | None = None
    gpus: int | None = None


class LambdaInstanceType(_Model):
    name: str
    description: str | None = None
    gpu_description: str | None = None
    price_cents_per_hour: float | None = None
    specs: LambdaInstanceTypeSpecs | None = None


class LambdaTag(_Model):
    key: str
    value: str = ""


class LambdaInstance(_Model):
    """``Instance``: only id and status are needed to observe; the rest may be absent
    (``ip`` and ``hostname`` are missing while it boots)."""

    id: str
    status: str
    name: str | None = None
    ip: str | None = None
    private_ip: str | None = None
    hostname: str | None = None
    region: LambdaRegion | None = None
    instance_type: LambdaInstanceType | None = None
    ssh_key_names: list[str] = Field(default_factory=list)
    file_system_names: list[str] = Field(default_factory=list)
    tags: list[LambdaTag] | None = None
    actions: dict[str, Any] | None = None


class LambdaInstanceTypesItem(_Model):
    instance_type: LambdaInstanceType
    regions_with_capacity_available: list[LambdaRegion] = Field(default_factory=list)


class LambdaLaunchResponse(_Model):
    instance_ids: list[str]


class LambdaRestartResponse(_Model):
    restarted_instances: list[LambdaInstance] = Field(default_factory=list)


class LambdaTerminateResponse(_Model):
    terminated_instances: list[LambdaInstance] = Field(default_factory=list)


class LambdaInstanceListEnvelope(_Model):
    data: list[LambdaInstance]


class LambdaInstanceEnvelope(_Model):
    data: LambdaInstance


class LambdaInstanceTypesEnvelope(_Model):
    data: dict[str, LambdaInstanceTypesItem]


class LambdaLaunchEnvelope(_Model):
    data: LambdaLaunchResponse


class LambdaRestartEnvelope(_Model):
    data: LambdaRestartResponse


class LambdaTerminateEnvelope(_Model):
    data: LambdaTerminateResponse


class LambdaError(_Model):
    code: str
    message: str = ""
    suggestion: str | None = None


class LambdaErrorEnvelope(_Model):
    error: LambdaError
    field_errors: dict[str, Any] | None = None  # 1.4.0 only


# ---- mapping ---------------------------------------------------------------------------


def map_lambda_error(response: httpx.Response, provider: str, *,
                     secret: SecretStr | None = None) -> ProviderError | None:
    """Lambda's error envelope → a gpufsm error, keyed on ``code`` only.

    None (the seam then maps by HTTP status) for 429 and 5xx, whose meaning is the
    status itself whatever the body says, and for bodies without a known code.
    ``secret`` (the API key) is masked in the body before any of its text is kept.
    """
    status = response.status_code
    if status == 429 or status >= 500:
        return None
    try:
        envelope = LambdaErrorEnvelope.model_validate_json(scrub(response.text, secret))
    except pydantic.ValidationError:
        return None
    code = envelope.error.code
    cls = LAMBDA_ERRORS.get(code)
    if cls is None:
        cls = next((c for p, c in LAMBDA_ERROR_PREFIXES.items() if code.startswith(p)), None)
    if cls is None:
        log.warning("%s: undocumented error code %r (HTTP %d); mapping by status",
                    provider, code, status)
        return None
    if _is_launch(response):
        cls = _LAUNCH_OVERRIDES.get(code, cls)
    message = envelope.error.message[:300] or f"HTTP {status}"
    if envelope.error.suggestion:
        message = f"{message} ({envelope.error.suggestion[:200]})"
    if envelope.field_errors:
        message = f"{message}; fields: {', '.join(sorted(envelope.field_errors))[:200]}"
    return cls(message, provider=provider, code=code, status_code=status)


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
    state = LAMBDA_STATUSES.get(inst.status)
    if state is None:
        log.warning("%s: instance %s reports unknown status %r; state UNKNOWN",
                    PROVIDER, inst.id, inst.status)
    cents = inst.instance_type.price_cents_per_hour if inst.instance_type else None
    return ProviderInstance(
        provider_instance_id=inst.id,
        raw_status=inst.status,
        state=state,
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
        name=PROVIDER, base_url=DEFAULT_BASE_URL, api_key_env=API_KEY_ENV,
        base_url_setting="lambda_base_url",
        capabilities=Capabilities(stop=False, restart=True, tags=True),
        error_mapper=map_lambda_error, rate_limits=LAMBDA_RATE_LIMITS, retry=LAMBDA_RETRY,
        # A client passed in is handed over for good: close() closes it too, which is
        # what this adapter's callers have always relied on.
        closes_given_client=True)

    # ---- validation ----------------------------------------------------------------

    #: (when read, type name → $/h) of the last ``/instance-types`` answer.
    _prices: tuple[float, dict[str, float]] | None = None

    def validate(self, spec: InstanceSpec) -> None:
        """Lambda's launch rules, checked before anything is written or sent.

        Every spec field is either sent (instance_type, region, name, ssh_key_names,
        command as user data, options), checked against Lambda's own data
        (max_price_per_hour at launch, gpu_count against the type) or refused here
        (image, disk_gb, env, ports): none is silently dropped.
        """
        if len(spec.ssh_key_names) != 1:
            raise ValidationError("ssh_key_names", "Lambda needs exactly one SSH key name",
                                  value=list(spec.ssh_key_names))
        if not spec.region:
            raise ValidationError("region", "required: Lambda launches into a named region")
        if spec.region not in LAMBDA_REGIONS:
            raise ValidationError("region", f"not a Lambda region; one of "
                                  f"{', '.join(LAMBDA_REGIONS)}", value=spec.region)
        if not spec.instance_type:
            raise ValidationError("instance_type", "required")
        gpus = _GPU_COUNT_RE.match(spec.instance_type)
        if spec.gpu_count is not None and gpus is None:
            raise ValidationError("gpu_count", "fixed by the Lambda instance type; leave "
                                  "unset", value=spec.gpu_count)
        if spec.gpu_count is not None and gpus and int(gpus.group(1)) != spec.gpu_count:
            raise ValidationError("gpu_count", f"{spec.instance_type} has {gpus.group(1)} "
                                  "GPU(s); the count is fixed by the type",
                                  value=spec.gpu_count)
        # Lambda rents whole VMs of fixed shape: these would be silently ignored.
        if spec.image is not None:
            raise ValidationError("image", "Lambda boots VM images, not containers: give "
                                  "options.image as {'id': ...} or {'family': ...}",
                                  value=spec.image)
        if spec.disk_gb is not None:
            raise ValidationError("disk_gb", "fixed by the Lambda instance type; leave unset")
        if spec.env:
            raise ValidationError("env", "Lambda VMs take no environment; use command "
                                  "(cloud-init user data)")
        if spec.ports:
            raise ValidationError("ports", "Lambda opens ports with firewall rulesets; use "
                                  "options.firewall_rulesets")
        if spec.command is not None and len(spec.command.encode()) > _USER_DATA_MAX:
            raise ValidationError("command", f"user data is at most {_USER_DATA_MAX} bytes")
        _validate_options(spec.options)

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
        response = self._seam.request("POST", f"{API_PREFIX}/instance-operations/launch",
                                      op="launch", idempotent=False, json=body)
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
        value = request.tag.removeprefix(TAG_PREFIX)
        if not request.tag.startswith(TAG_PREFIX) or not value:
            raise ValidationError("tag", f"must be {TAG_PREFIX}<token>", value=request.tag)
        if len(value) > _TAG_VALUE_MAX:
            raise ValidationError("tag", f"Lambda tag values are at most {_TAG_VALUE_MAX} "
                                  "characters")
        body: dict[str, Any] = {
            "region_name": spec.region,
            "instance_type_name": spec.instance_type,
            "ssh_key_names": list(spec.ssh_key_names),
            "name": _launch_name(request.tag, spec.name),
            "tags": [{"key": LAMBDA_TAG_KEY, "value": value}, *_user_tags(options)],
        }
        if spec.command is not None:
            body["user_data"] = spec.command
        for key in ("hostname", "image", "file_system_names", "file_system_mounts"):
            if options.get(key) is not None:
                body[key] = options[key]
        if options.get("firewall_rulesets") is not None:
            body["firewall_rulesets"] = [
                {"id": r} if isinstance(r, str) else {"id": r["id"]}
                for r in options["firewall_rulesets"]
            ]
        return body

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        try:
            response = self._seam.request("GET", self._instance_path(provider_instance_id),
                                          op="get", idempotent=True)
        except ProviderNotFound:  # global/object-does-not-exist, and only that
            return None
        return to_provider_instance(self._parse(response, LambdaInstanceEnvelope, "get").data)

    def list_instances(self) -> Sequence[ProviderInstance]:
        """The whole account in one call (no pagination), or an error: never partial."""
        response = self._seam.request("GET", f"{API_PREFIX}/instances", op="list",
                                      idempotent=True)
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
        self._seam.request("POST", f"{API_PREFIX}/instance-operations/restart",
                           op="restart", idempotent=False,
                           json={"instance_ids": [provider_instance_id]})

    def terminate(self, provider_instance_id: str) -> None:
        """Idempotent: Lambda's not-found for the instance means it is already gone."""
        try:
            self._seam.request("POST", f"{API_PREFIX}/instance-operations/terminate",
                               op="terminate", idempotent=True,
                               json={"instance_ids": [provider_instance_id]})
        except ProviderNotFound:
            return

    def rename(self, provider_instance_id: str, name: str) -> ProviderInstance:
        """Set the instance's name. Ownership survives: it is read from tags first."""
        if len(name) > _NAME_MAX:
            raise ValidationError("name", f"at most {_NAME_MAX} characters", value=name)
        response = self._seam.request("POST", self._instance_path(provider_instance_id),
                                      op="rename", idempotent=True, json={"name": name})
        return to_provider_instance(self._parse(response, LambdaInstanceEnvelope, "rename").data)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        response = self._seam.request("GET", f"{API_PREFIX}/instance-types",
                                      op="instance_types", idempotent=True)
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

    @staticmethod
    def _instance_path(provider_instance_id: str) -> str:
        return f"{API_PREFIX}/instances/{urllib.parse.quote(provider_instance_id, safe='')}"


# ---- helpers ---------------------------------------------------------------------------


def _usd(amount: float) -> str:
    """``$0.75``; more digits only where two would hide a difference."""
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:.4f}"


def _launch_name(tag: str, user_name: str | None) -> str:
    """``<tag>/<user name>`` cut to 64 characters; only the user part is ever cut."""
    if len(tag) > _NAME_MAX:
        raise ValidationError("tag", f"longer than Lambda's {_NAME_MAX}-character name",
                              value=tag)
    room = _NAME_MAX - len(tag) - 1
    if not user_name or room <= 0:
        return tag
    return f"{tag}/{user_name[:room]}"


def _user_tags(options: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = options.get("tags")
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [{"key": str(k), "value": str(v)} for k, v in raw.items()]
    return [{"key": str(t["key"]), "value": str(t["value"])} for t in raw]


def _validate_options(options: Mapping[str, Any]) -> None:
    for key in options:
        if key not in _OPTIONS:
            raise ValidationError(f"options.{key}", f"not a Lambda option; known: "
                                  f"{', '.join(_OPTIONS)}")
    hostname = options.get("hostname")
    if hostname is not None and (
        not isinstance(hostname, str) or not _HOSTNAME_RE.fullmatch(hostname)
    ):
        raise ValidationError("options.hostname", f"must match {_HOSTNAME_RE.pattern}",
                              value=hostname)
    _validate_tags(options.get("tags"))
    _validate_image(options.get("image"))
    names = options.get("file_system_names")
    if names is not None and (
        not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names)
    ):
        raise ValidationError("options.file_system_names", "a list of filesystem names")
    _validate_mounts(options.get("file_system_mounts"))
    rulesets = options.get("firewall_rulesets")
    if rulesets is not None and (not isinstance(rulesets, list | tuple) or not all(
        (isinstance(r, str) and r) or (isinstance(r, Mapping) and isinstance(r.get("id"), str))
        for r in rulesets
    )):
        raise ValidationError("options.firewall_rulesets",
                              "a list of ruleset ids (or {'id': ...})")


def _validate_tags(raw: object) -> None:
    if raw is None:
        return
    field = "options.tags"
    pairs: list[tuple[object, object]]
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, list | tuple) and all(
        isinstance(t, Mapping) and set(t) == {"key", "value"} for t in raw
    ):
        pairs = [(t["key"], t["value"]) for t in raw]
    else:
        raise ValidationError(field, "a mapping {key: value} or a list of {key, value}")
    for key, value in pairs:
        if not isinstance(key, str) or len(key) > _TAG_KEY_MAX or not _TAG_KEY_RE.fullmatch(key):
            raise ValidationError(f"{field}.{key}", f"keys match {_TAG_KEY_RE.pattern} and "
                                  f"are at most {_TAG_KEY_MAX} characters", value=key)
        if key == LAMBDA_TAG_KEY:
            raise ValidationError(f"{field}.{key}", "reserved for gpufsm's ownership tag")
        if not isinstance(value, str) or len(value) > _TAG_VALUE_MAX:
            raise ValidationError(f"{field}.{key}", f"values are strings of at most "
                                  f"{_TAG_VALUE_MAX} characters", value=value)


def _validate_image(image: object) -> None:
    if image is None:
        return
    if not (isinstance(image, Mapping) and len(image) == 1 and (
        isinstance(image.get("id"), str) or isinstance(image.get("family"), str)
    ) and all(image.values())):
        raise ValidationError("options.image", "exactly one of {'id': ...} or "
                              "{'family': ...}", value=json.dumps(image, default=str)[:200])


def _validate_mounts(mounts: object) -> None:
    if mounts is None:
        return
    field = "options.file_system_mounts"
    if not isinstance(mounts, list | tuple):
        raise ValidationError(field, "a list of {mount_point, file_system_id}")
    for mount in mounts:
        if not (isinstance(mount, Mapping) and isinstance(mount.get("file_system_id"), str)
                and isinstance(mount.get("mount_point"), str)):
            raise ValidationError(field, "each entry has mount_point and file_system_id")
        point = mount["mount_point"]
        if len(point) > _MOUNT_MAX or not _MOUNT_RE.fullmatch(point):
            raise ValidationError(field, f"mount_point must match {_MOUNT_RE.pattern}",
                                  value=point)
