"""Novita.ai GPU instances (``/gpu-instance/openapi/v1``) behind the ProviderAdapter contract.

This room translates, and decides nothing else: Novita's 18 status words into our states,
its ``reason`` error names into the error tree, an ``InstanceSpec`` into a create body,
and its page-number listing into one complete list (or an error). The contract we follow
is tests/fixtures/provider-api/novita/NOTES.md; the payload models are in
``_novita_models``.

Decisions the notes leave open, made here once:

* Novita has no tags, so ownership lives in the instance ``name`` (``<tag>/<name>``).
* ``exited`` is Novita's *normal* stopped state (STOPPED), not a crash. A crash shows as
  ``statusError.state == "abnormal instance status"``, which makes the instance FAILED
  whatever ``status`` says, unless Novita is already removing it.
* A spot instance whose ``spotStatus`` is ``reclaiming`` or ``terminated`` has been
  preempted: FAILED (still billable, so policy terminates it and relaunches elsewhere).
* Not-found is a **400** with reason ``RESOURCE_NOT_FOUND``. A 404 without a Novita
  reason is a path that does not exist here (a bad ``base_url``, a proxy): the seam makes
  it an unknown outcome, never "the instance is gone", so terminate cannot report success
  against a wrong URL.
* Product prices are integers in **1/100000 USD per GPU-hour** (``PRICE_UNIT_USD``). The
  docs do not state the unit; this is an assumption, kept in one constant.
* Instance payloads carry **no price**. An instance's $/h is derived from the product it
  was created from (``productId``, else its ``productName`` in its cluster): the product's
  per-GPU price times ``gpuNum`` (the spot price for spot billing; none for monthly billing,
  which is not charged by the hour). Products are read at most every
  ``PRODUCT_CACHE_SECONDS``; a product listing that fails leaves the price unknown, never
  the instance.
* A product is **per GPU**: ``instance_types`` reports ``gpus=1`` with the per-GPU price,
  and ``gpu_count`` (1..8) multiplies it at launch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, Unpack

import httpx
import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter, HttpAdapterOptions, scrub
from gpufsm.adapters._http import RateLimit
from gpufsm.adapters._novita_models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
    ErrorBody,
    InstancePayload,
    ListInstancesResponse,
    ListProductsResponse,
    NetworkStorageMount,
    ProductPayload,
    Tool,
)
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ValidationError,
)
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "API_PREFIX",
    "DEFAULT_BASE_URL",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_ROOTFS_GB",
    "NOVITA_ERRORS",
    "NOVITA_STATUSES",
    "PRICE_UNITS_PER_USD",
    "PRICE_UNIT_USD",
    "PRODUCT_CACHE_SECONDS",
    "NovitaAdapter",
    "NovitaOptions",
    "cheapest_offer",
    "map_novita_error",
    "novita_error_class",
]

log = logging.getLogger("gpufsm.adapters.novita")

PROVIDER = "novita"
DEFAULT_BASE_URL = "https://api.novita.ai"
API_PREFIX = "/gpu-instance/openapi/v1"

#: Units of a product ``price``/``spotPrice`` per dollar. ASSUMPTION: the docs give the
#: field as an integer with no unit; Novita's integer amounts are taken as 1/100000 USD.
#: Prices are divided by it (35000 / 100000 is 0.35; 35000 * 1e-5 is 0.35000000000000003).
PRICE_UNITS_PER_USD = 100_000
PRICE_UNIT_USD = 1 / PRICE_UNITS_PER_USD

#: How long a products listing is reused to price instances (prices change rarely; a
#: reconcile pass must not cost an extra request per instance).
PRODUCT_CACHE_SECONDS = 300.0

#: Root disk when the spec gives none: Novita's free container-disk quota (pricing guide),
#: raised to the product's ``minRootFS`` when that is larger.
DEFAULT_ROOTFS_GB = 60
ROOTFS_RANGE = (10, 6144)
GPU_RANGE = (1, 8)
RESERVED_PORTS = frozenset({2222, 2223, 2224})
MAX_PORTS_AND_TOOLS = 15
MAX_ENVS = 100
MAX_COMMAND = 2047
MAX_NAME = 255
#: Room kept in the 255-character name for our ``gpufsm-<token>/`` prefix.
NAME_ROOM_FOR_TAG = 56
PAGE_SIZE = 50
MAX_PAGES = 10_000

#: Not documented for the GPU API. A guess: 5 requests/s with bursts of 5; a 429 is
#: handled by the seam anyway (Retry-After honoured when sent).
DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType(
    {"default": RateLimit(5.0, burst=5)})

_S = InstanceState

#: Every ``status`` word in the notes. ``toCreate`` is accepted-not-booting (CREATED);
#: anything on its way to running (creating, pulling, starting, restarting, resetting,
#: migrating) is STARTING; ``freezing`` is the provider taking the instance down, like a
#: stop it did not ask us about (STOPPING); ``exited`` is the normal stopped state.
NOVITA_STATUSES: Mapping[str, InstanceState] = MappingProxyType({
    "toCreate": _S.CREATED,
    "creating": _S.STARTING,
    "pulling": _S.STARTING,
    "running": _S.RUNNING,
    "toStart": _S.STARTING,
    "starting": _S.STARTING,
    "toStop": _S.STOPPING,
    "stopping": _S.STOPPING,
    "exited": _S.STOPPED,
    "toRestart": _S.STARTING,
    "restarting": _S.STARTING,
    "toRemove": _S.TERMINATING,
    "removing": _S.TERMINATING,
    "removed": _S.TERMINATED,
    "toReset": _S.STARTING,
    "resetting": _S.STARTING,
    "migrating": _S.STARTING,
    "freezing": _S.STOPPING,
})

#: Statuses in which Novita is already deleting the instance: a failure flag or a spot
#: reclaim does not turn them FAILED (that would only re-issue a delete in flight).
_GOING_AWAY = frozenset({"toRemove", "removing", "removed"})
ABNORMAL_STATE = "abnormal instance status"
SPOT_STATUSES = frozenset({"running", "notified", "reclaiming", "terminated"})
SPOT_LOST = frozenset({"reclaiming", "terminated"})

#: Every ``reason`` in the notes' GPU error table (plus the documented INVALID_API_KEY).
#: Keys ending in ``*`` match by prefix. Lookalike "not found" reasons for things that are
#: not the instance (image, network, job, local storage …) are InvalidRequest on purpose:
#: ProviderNotFound would make terminate report success for an instance that still bills.
NOVITA_ERRORS: Mapping[str, type[ProviderError]] = MappingProxyType({
    "UNKNOWN": ProviderUnavailable,
    "GET_TOKEN_FAILED": AuthError,
    "FORBIDDEN": AuthError,
    "UNAUTHORIZED": AuthError,
    "INVALID_API_KEY": AuthError,
    "RATE_LIMIT_EXCEEDED": RateLimited,
    "RESOURCE_NOT_FOUND": ProviderNotFound,
    "CONFLICT": InvalidRequest,
    "VALIDATOR_PARAM": InvalidRequest,
    "REQUEST": InvalidRequest,
    "OPERATION_LIMIT": InvalidRequest,
    "INSUFFICIENT_RESOURCE": InsufficientCapacity,
    # A cluster or node that cannot take work now: the provider certainly did nothing,
    # and the cure is "another region, or later", which is what InsufficientCapacity says.
    "CLUSTER_STATUS": InsufficientCapacity,
    "NODE_STATUS": InsufficientCapacity,
    "DEPENDENT_RESOURCE_STATE": InvalidRequest,
    "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE": InvalidRequest,
    "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL": InvalidRequest,
    "INSTANCE_LOCAL_STORAGE_NOT_FOUND": InvalidRequest,
    "INVALID_COMMAND_PARAM": InvalidRequest,
    "GPU_SPEC_USED": InsufficientCapacity,
    "MIGRATE_INSUFFICIENT_RESOURCE": InsufficientCapacity,
    # A 500: a wallet lookup that failed server-side. InsufficientCredit would trigger the
    # emergency destroy-all on what may be a transient backend fault, so: temporary.
    "WALLET_NOT_FOUND": ProviderUnavailable,
    "BALANCE_NOT_ENOUGH": InsufficientCredit,
    "UNSUPPORTED_BILLING_MODE": InvalidRequest,
    "EXPIRED_OR_BALANCE_NOT_ENOUGH": InsufficientCredit,
    "CREATE_INSTANCE_LIMIT": QuotaExceeded,
    "NETWORK_STORAGE_*": InvalidRequest,
    "IMAGE_NOT_FOUND": InvalidRequest,
    "IMAGE_AUTH_IN_USE": InvalidRequest,
    "NETWORK_NOT_FOUND": InvalidRequest,
    "NETWORK_IN_USE": InvalidRequest,
    "NETWORK_MAX_LIMIT": QuotaExceeded,
    "JOB_NOT_FOUND": InvalidRequest,
    "TEMPLATE_NOT_FOUND": InvalidRequest,
    "TEMPLATE_IS_PRIVATE": InvalidRequest,
    "USER_*": AuthError,
    "BANNED_USER": AuthError,
    "INVALID_USER_TOKEN": AuthError,
})

_PREFIXES = tuple(
    (key[:-1], cls) for key, cls in NOVITA_ERRORS.items() if key.endswith("*"))


def novita_error_class(reason: str) -> type[ProviderError] | None:
    """The error class for a Novita ``reason``, exact names first, then prefixes."""
    reason = reason.strip().upper()
    cls = NOVITA_ERRORS.get(reason)
    if cls is not None:
        return cls
    for prefix, pcls in _PREFIXES:
        if reason.startswith(prefix):
            return pcls
    return None


def map_novita_error(response: httpx.Response, provider: str, *,
                     secret: SecretStr | None = None) -> ProviderError | None:
    """The seam's mapper: read ``reason`` (an unknown one is kept as the code, classed by
    HTTP status); None, when there is no reason, lets the seam map by status.

    ``secret`` (the API key) is masked in the body before any of its text is kept.
    """
    status = response.status_code
    body: ErrorBody | None = None
    try:
        body = ErrorBody.model_validate(json.loads(scrub(response.text, secret)))
    except (ValueError, pydantic.ValidationError):
        body = None
    reason = (body.reason or "").strip() if body else ""
    message = ((body.message or "") if body else "").strip()[:300]
    text = message or response.reason_phrase or f"HTTP {status}"
    if not reason:
        # A 404 lands here too: Novita's not-found is 400 RESOURCE_NOT_FOUND, so the seam
        # reads a 404 without a reason as an unknown outcome, never "instance gone".
        return None
    cls = novita_error_class(reason)
    if cls is None:
        # A reason we have no row for is still Novita's word for what happened: keep it
        # as the code (users and logs see it), classed by the HTTP status alone.
        log.warning("novita: unknown error reason %r (HTTP %d): mapping by status",
                    reason, status)
        cls = _status_class(status)
    if cls is RateLimited:
        return RateLimited(text, provider=provider, code=reason, status_code=status)
    return cls(text, provider=provider, code=reason, status_code=status)


def _status_class(status: int) -> type[ProviderError]:
    """The seam's reading of a bare status, for a reason the table does not know. Never
    ProviderNotFound: only RESOURCE_NOT_FOUND may say an instance is gone."""
    if status == 429:
        return RateLimited
    if status in (401, 403):
        return AuthError
    if status >= 500 or status == 404:
        return ProviderUnavailable
    return InvalidRequest


# ---- options -------------------------------------------------------------------------


class NovitaOptions(BaseModel):
    """``InstanceSpec.options`` Novita understands; anything else is refused (typos cost
    money when they silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    productId: str | None = Field(default=None, min_length=1, max_length=255)  # noqa: N815
    billingMode: Literal["onDemand", "monthly", "spot"] | None = None  # noqa: N815
    clusterId: str | None = Field(default=None, max_length=255)  # noqa: N815
    kind: Literal["gpu", "cpu"] | None = None
    imageAuth: str | None = None  # noqa: N815
    imageAuthId: str | None = None  # noqa: N815
    tools: list[Tool] | None = None
    entrypoint: str | None = None
    networkStorages: list[NetworkStorageMount] | None = Field(  # noqa: N815
        default=None, max_length=30)
    networkId: str | None = None  # noqa: N815
    month: int | None = Field(default=None, ge=0)
    autoRenew: bool | None = None  # noqa: N815
    autoRenewMonth: int | None = Field(default=None, ge=0)  # noqa: N815
    minCudaVersion: str | None = None  # noqa: N815
    #: port → "tcp" | "http" for ``spec.ports``; tcp when not given (works for anything).
    port_types: dict[int, Literal["tcp", "http"]] = Field(default_factory=dict)


_PASSTHROUGH = ("billingMode", "imageAuth", "imageAuthId", "entrypoint", "networkId",
                "month", "autoRenew", "autoRenewMonth", "minCudaVersion")

#: create-body field → the spec field a user fixes.
_BODY_FIELD = {"gpuNum": "gpu_count", "rootfsSize": "disk_gb", "imageUrl": "image",
               "envs": "env", "command": "command", "name": "name", "ports": "ports",
               "productId": "instance_type", "clusterId": "region"}


def _options(spec: InstanceSpec) -> NovitaOptions:
    try:
        return NovitaOptions.model_validate(spec.options)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        rule = first["msg"]
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(NovitaOptions.model_fields))
            rule = f"not a Novita option; known: {known}"
        raise ValidationError(f"options.{loc}", rule, value=first.get("input")) from exc


def cheapest_offer(offers: Iterable[InstanceTypeOffer], *, spot: bool = False,
                   region: str | None = None) -> InstanceTypeOffer | None:
    """The cheapest deployable offer (by spot price when ``spot``), or None.

    Novita may flag a product deployable without listing regions, so deployability is
    read from ``extra["available_deploy"]`` when present rather than from ``regions``.
    """
    best: tuple[float, str, InstanceTypeOffer] | None = None
    for offer in offers:
        deployable = offer.extra.get("available_deploy", offer.available)
        if not deployable or (region is not None and region not in offer.regions):
            continue
        price = offer.spot_price_per_hour if spot else offer.price_per_hour
        if price is None:
            continue
        key = (price, offer.offer_id or offer.name)
        if best is None or key < best[:2]:
            best = (*key, offer)
    return best[2] if best else None


def _ports_string(ports: Sequence[int], types: Mapping[int, str]) -> str:
    return ", ".join(f"{port}/{types.get(port, 'tcp')}" for port in ports)


def _endpoint_host_port(endpoint: str | None) -> tuple[str | None, int | None]:
    """``"1.2.3.4:30022"`` (or with a scheme) → host and port, each None if absent."""
    if not endpoint:
        return None, None
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest or None, None
    return host or None, int(port) if port.isdigit() else None


class NovitaAdapter(HttpAdapter):
    """One Novita account. Thread-safe as far as the HTTP seam is.

    ``page_size`` is how many instances one listing page asks for.
    """

    profile = AdapterProfile(
        name=PROVIDER, base_url=DEFAULT_BASE_URL, api_key_env="NOVITA_API_KEY",
        base_url_setting="novita_base_url",
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_novita_error, rate_limits=DEFAULT_RATE_LIMITS)

    def __init__(self, api_key: SecretStr | str | None = None, *, page_size: int = PAGE_SIZE,
                 **options: Unpack[HttpAdapterOptions]) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self._page_size = page_size
        #: (when read, product id → product) of the last full products listing.
        self._product_cache: tuple[float, dict[str, ProductPayload]] | None = None
        super().__init__(api_key, **options)

    # ---- validate ---------------------------------------------------------------------

    def validate(self, spec: InstanceSpec) -> None:
        """Every spec field is sent (instance_type as the product, region as clusterId,
        image, name, disk_gb, gpu_count, command, env, ports, options), checked against
        Novita's products (max_price_per_hour, at launch) or refused here (ssh_key_names):
        none is silently dropped."""
        opts = _options(spec)
        if not spec.image:
            raise ValidationError("image", "required: Novita needs an image (imageUrl)")
        if spec.ssh_key_names:
            raise ValidationError(
                "ssh_key_names", "Novita takes no SSH key names at create: put a public key "
                "in env (e.g. PUBLIC_KEY) or use the password Novita shows",
                value=list(spec.ssh_key_names))
        if spec.region is not None and opts.clusterId is not None and (
            spec.region != opts.clusterId
        ):
            raise ValidationError("region", "give either region or options.clusterId "
                                  "(both name the cluster)", value=spec.region)
        if spec.disk_gb is not None and not ROOTFS_RANGE[0] <= spec.disk_gb <= ROOTFS_RANGE[1]:
            raise ValidationError("disk_gb", "must be 10..6144 GB (Novita rootfsSize)",
                                  value=spec.disk_gb)
        gpus = spec.gpu_count or 1
        if not GPU_RANGE[0] <= gpus <= GPU_RANGE[1]:
            raise ValidationError("gpu_count", "must be 1..8 (Novita gpuNum)", value=gpus)
        for port in spec.ports:
            if port in RESERVED_PORTS:
                raise ValidationError("ports", "2222-2224 are reserved by Novita", value=port)
        if len(set(spec.ports)) != len(spec.ports):
            raise ValidationError("ports", "each port once", value=spec.ports)
        tools = len(opts.tools or ())
        if len(spec.ports) + tools > MAX_PORTS_AND_TOOLS:
            raise ValidationError("ports", f"ports plus tools must be <= {MAX_PORTS_AND_TOOLS}",
                                  value=len(spec.ports) + tools)
        for port in opts.port_types:
            if port not in spec.ports:
                raise ValidationError(f"options.port_types.{port}", "not one of spec.ports")
        if len(spec.env) > MAX_ENVS:
            raise ValidationError("env", f"at most {MAX_ENVS} variables", value=len(spec.env))
        for key in spec.env:
            if not key:
                raise ValidationError("env", "variable names must not be empty")
        if spec.command is not None and len(spec.command) > MAX_COMMAND:
            raise ValidationError("command", f"at most {MAX_COMMAND} characters",
                                  value=len(spec.command))
        if spec.name is not None and len(spec.name) > MAX_NAME - NAME_ROOM_FOR_TAG:
            raise ValidationError(
                "name", f"at most {MAX_NAME - NAME_ROOM_FOR_TAG} characters: Novita keeps "
                f"{MAX_NAME} and the ownership tag needs the rest", value=len(spec.name))
        if opts.billingMode == "monthly" and not opts.month:
            raise ValidationError("options.month", "monthly billing needs month >= 1")

    # ---- launch -----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        spec = request.spec
        self.validate(spec)
        name = request.display_name
        if len(name) > MAX_NAME:
            raise ValidationError("name", f"'<tag>/<name>' must fit in {MAX_NAME} characters",
                                  value=len(name))
        opts = _options(spec)
        with self._before_launch():
            product = self._resolve_product(spec, opts)
        body = self._create_body(spec, opts, name, product)
        try:
            response = self._seam.request("POST", f"{API_PREFIX}/gpu/instance/create",
                                          op="launch", idempotent=False, json=body)
        except ProviderNotFound as exc:
            # On create, "not found" is the product, cluster or image, not an instance.
            raise InvalidRequest(f"create refused: {exc}", provider=PROVIDER, code=exc.code,
                                 status_code=exc.status_code,
                                 request_id=exc.request_id) from exc
        return self._parse(response, CreateInstanceResponse, "launch").id

    def _resolve_product(self, spec: InstanceSpec, opts: NovitaOptions) -> ProductPayload:
        """The cheapest deployable product named ``spec.instance_type`` (only
        ``options.productId`` among them when given), within the price cap."""
        billing = opts.billingMode or "onDemand"
        gpus = spec.gpu_count or 1
        params: dict[str, Any] = {"productName": spec.instance_type, "gpuNum": gpus}
        cluster = opts.clusterId or spec.region
        if cluster:
            params["clusterId"] = cluster
        if billing != "onDemand":
            params["billingMethod"] = billing
        wanted = spec.instance_type.strip().casefold()
        named = [p for p in self._products(params) if p.name.strip().casefold() == wanted]
        if opts.productId:
            # The product asked for, still held to the type, cluster and price cap.
            mine = [p for p in named if p.id == opts.productId]
            if not mine and not named and (cluster or billing != "onDemand"):
                raise InsufficientCapacity(
                    f"product {opts.productId} is not offered"
                    + (f" in cluster {cluster}" if cluster else "")
                    + (f" billed {billing}" if billing != "onDemand" else ""),
                    provider=PROVIDER)
            if not mine:
                raise InvalidRequest(
                    f"product {opts.productId} is not a {spec.instance_type!r} product"
                    + (f" in cluster {cluster}" if cluster else ""),
                    provider=PROVIDER, code="PRODUCT_NOT_FOUND")
            named = mine
        if not named and (cluster or billing != "onDemand"):
            # The cluster or billing filter emptied the answer: the product may well exist
            # elsewhere, so this is "no capacity here", not a bad name.
            raise InsufficientCapacity(
                f"no {spec.instance_type!r} product"
                + (f" in cluster {cluster}" if cluster else "")
                + (f" billed {billing}" if billing != "onDemand" else ""), provider=PROVIDER)
        if not named:
            raise InvalidRequest(f"no Novita product named {spec.instance_type!r}",
                                 provider=PROVIDER, code="PRODUCT_NOT_FOUND")
        by_id = {p.id: p for p in named}
        best = cheapest_offer((_offer(p) for p in named), spot=billing == "spot")
        if best is None or best.offer_id is None:
            raise InsufficientCapacity(
                f"no deployable {spec.instance_type!r} product"
                + (f" in {cluster}" if cluster else "")
                + (" with a spot price" if billing == "spot" else ""), provider=PROVIDER)
        price = best.spot_price_per_hour if billing == "spot" else best.price_per_hour
        if spec.max_price_per_hour is not None and price is not None and (
            price * gpus > spec.max_price_per_hour
        ):
            raise InsufficientCapacity(
                f"cheapest {spec.instance_type!r} costs ${price * gpus:.4f}/h for {gpus} GPU(s),"
                f" above max_price_per_hour ${spec.max_price_per_hour:.4f}", provider=PROVIDER)
        return by_id[best.offer_id]

    def _create_body(self, spec: InstanceSpec, opts: NovitaOptions, name: str,
                     product: ProductPayload) -> dict[str, Any]:
        rootfs = spec.disk_gb
        if rootfs is None:
            rootfs = max(DEFAULT_ROOTFS_GB, product.minRootFS or 0)
            if product.maxRootFS:
                rootfs = min(rootfs, product.maxRootFS)
        body: dict[str, Any] = {
            "name": name,
            "productId": product.id,
            "gpuNum": spec.gpu_count or 1,
            "rootfsSize": rootfs,
            "imageUrl": spec.image,
            "kind": opts.kind or "gpu",
        }
        if spec.ports:
            body["ports"] = _ports_string(spec.ports, opts.port_types)
        if spec.env:
            body["envs"] = [{"key": k, "value": v} for k, v in spec.env.items()]
        if spec.command:
            body["command"] = spec.command
        cluster = opts.clusterId or spec.region
        if cluster:
            body["clusterId"] = cluster
        if opts.tools:
            body["tools"] = [t.model_dump() for t in opts.tools]
        if opts.networkStorages:
            body["networkStorages"] = [m.model_dump() for m in opts.networkStorages]
        for key in _PASSTHROUGH:
            value = getattr(opts, key)
            if value is not None:
                body[key] = value
        try:  # the documented contract, checked before anything is sent
            model = CreateInstanceRequest.model_validate(body)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            top = str(first["loc"][0]) if first["loc"] else "spec"
            field = _BODY_FIELD.get(top, f"options.{top}")
            raise ValidationError(field, first["msg"], value=first.get("input")) from exc
        return model.model_dump(exclude_none=True)

    # ---- observe ----------------------------------------------------------------------

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        try:
            response = self._seam.request("GET", f"{API_PREFIX}/gpu/instance", op="get",
                                          idempotent=True,
                                          params={"instanceId": provider_instance_id})
        except ProviderNotFound:
            return None
        item = self._parse(response, InstancePayload, "get")
        return self._to_instance(item, self._price_book([item]))

    def list_instances(self) -> Sequence[ProviderInstance]:
        """All pages, or raise. A page count that disagrees with ``total`` (instances
        created or deleted while paging shift the pages) is a partial listing: raise, and
        let the reconciler read UNKNOWN and try again next pass."""
        seen: dict[str, InstancePayload] = {}
        total: int | None = None
        page = 1
        while True:
            response = self._seam.request(
                "GET", f"{API_PREFIX}/gpu/instances", op="list", idempotent=True,
                params={"pageSize": self._page_size, "pageNum": page})
            listing = self._parse(response, ListInstancesResponse, "list")
            items = listing.instances or []
            if listing.total is not None:
                total = listing.total
            new = 0
            for item in items:
                if item.id not in seen:
                    seen[item.id] = item
                    new += 1
            if not items or new == 0:
                break  # an empty (or repeated) page: the end, whatever ``total`` said
            # A full page may have a successor even when ``total`` says we are done (a
            # total that lags would hide the newest instance), and a short page is not
            # the end while ``total`` says more exist (the server may cap pageSize).
            if len(items) < self._page_size and (total is None or len(seen) >= total):
                break
            page += 1
            if page > MAX_PAGES:
                raise ProviderUnavailable(f"listing did not end after {MAX_PAGES} pages",
                                          provider=PROVIDER)
        if total is not None and len(seen) != total:
            raise ProviderUnavailable(
                f"partial listing: {len(seen)} instances over {page} page(s) but total "
                f"says {total}", provider=PROVIDER)
        products = self._price_book(seen.values())
        return [self._to_instance(item, products) for item in seen.values()]

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        products = self._products({})
        self._product_cache = (self._clock.monotonic(), {p.id: p for p in products})
        offers = [_offer(p) for p in products]
        return sorted(offers, key=lambda o: (o.price_per_hour, o.name, o.offer_id or ""))

    def _price_book(self, items: Iterable[InstancePayload]
                    ) -> Mapping[str, ProductPayload] | None:
        """The products (cached) to price ``items`` by; None when none needs a price.

        Read after the instances, and never allowed to fail them: a products listing
        that fails leaves prices unknown. It is tried once (its retries would hold up
        the read and could open the breaker for calls that matter) and not again until
        the cache expires, so a broken endpoint does not slow every read.
        """
        if all((i.billingMode or "") == "monthly" for i in items):
            return None
        now = self._clock.monotonic()
        cached = self._product_cache
        if cached is not None and now - cached[0] < PRODUCT_CACHE_SECONDS:
            return cached[1]
        try:
            book = {p.id: p for p in self._products({}, attempts=1)}
        except ProviderError as exc:
            log.info("novita: products unreadable (%s): instance prices unknown for now", exc)
            book = {}
        self._product_cache = (now, book)
        return book

    def _products(self, params: Mapping[str, Any],
                  attempts: int | None = None) -> list[ProductPayload]:
        response = self._seam.request("GET", f"{API_PREFIX}/products", op="products",
                                      idempotent=True, params=params, attempts=attempts)
        return self._parse(response, ListProductsResponse, "products").data or []

    # ---- act --------------------------------------------------------------------------

    def start(self, provider_instance_id: str) -> None:
        self._command("start", provider_instance_id, idempotent=True)

    def stop(self, provider_instance_id: str) -> None:
        self._command("stop", provider_instance_id, idempotent=True)

    def restart(self, provider_instance_id: str) -> None:
        # A retried restart after a lost answer would reboot twice: not retried blindly.
        self._command("restart", provider_instance_id, idempotent=False)

    def terminate(self, provider_instance_id: str) -> None:
        try:
            self._command("delete", provider_instance_id, idempotent=True, op="terminate")
        except ProviderNotFound:
            log.info("novita: terminate %s: already gone", provider_instance_id)

    def _command(self, action: str, provider_instance_id: str, *, idempotent: bool,
                 op: str | None = None) -> None:
        # Bodies of these answers are undocumented (delete: empty 200); none is read.
        self._seam.request("POST", f"{API_PREFIX}/gpu/instance/{action}", op=op or action,
                           idempotent=idempotent, json={"instanceId": provider_instance_id})

    # ---- translation --------------------------------------------------------------------

    def _to_instance(self, item: InstancePayload,
                     products: Mapping[str, ProductPayload] | None = None) -> ProviderInstance:
        price = _instance_price(item, products) if products is not None else None
        raw = item.status
        state = NOVITA_STATUSES.get(raw)
        if state is None:
            log.warning("novita: instance %s has unknown status %r: state UNKNOWN",
                        item.id, raw)
        detail: str | None = None
        err_state = ((item.statusError.state or "") if item.statusError else "").strip()
        err_msg = ((item.statusError.message or "") if item.statusError else "").strip()
        if err_state or err_msg:
            if err_state.casefold() == ABNORMAL_STATE:
                detail = err_msg or err_state
                if raw not in _GOING_AWAY:
                    state = InstanceState.FAILED
            else:
                detail = f"{err_state}: {err_msg}" if err_state and err_msg else (
                    err_msg or err_state)
                if err_state and err_state.casefold() != ABNORMAL_STATE:
                    log.warning("novita: instance %s has unknown statusError.state %r",
                                item.id, err_state)
        spot = (item.spotStatus or "").strip()
        if spot and spot not in SPOT_STATUSES:
            log.warning("novita: instance %s has unknown spotStatus %r", item.id, spot)
        if spot in SPOT_LOST and raw not in _GOING_AWAY:
            state = InstanceState.FAILED
            detail = f"spot instance reclaimed by Novita (spotStatus {spot})"
        elif spot == "notified" and detail is None:
            detail = f"spot reclaim notified (spotReclaimTime {item.spotReclaimTime or '?'})"
        ip = item.network.ip if item.network and item.network.ip else None
        ssh_port: int | None = None
        for mapping in item.portMappings or ():
            if mapping.port == 22:
                host, port = _endpoint_host_port(mapping.endpoint)
                ip = ip or host
                ssh_port = port or 22
                break
        return ProviderInstance(
            provider_instance_id=item.id,
            raw_status=raw,
            state=state,
            tag=tag_from_name(item.name),
            name=item.name,
            ip=ip,
            region=item.clusterId or item.clusterName or None,
            instance_type=item.productName or None,
            price_per_hour=price,
            ssh_port=ssh_port,
            detail=detail,
        )


def _instance_price(item: InstancePayload,
                    products: Mapping[str, ProductPayload]) -> float | None:
    """$/h of one instance, derived from its product (instances carry no price).

    The product's per-GPU price times ``gpuNum``; the spot price when billed as spot; None
    for monthly billing (not charged by the hour) or when the product is not known. The
    product is ``productId`` when the payload has it (list items do), else the product
    of that name offered in the instance's cluster, when all such agree on the price.
    """
    billing = item.billingMode or "onDemand"
    if billing == "monthly":
        return None
    spot = billing == "spot"
    product = products.get(item.productId) if item.productId else None
    if product is None and item.productName:
        named = [p for p in products.values() if p.name == item.productName
                 and (not item.clusterId or not p.regions or item.clusterId in p.regions)]
        if len({(p.spotPrice if spot else p.price) for p in named}) == 1:
            product = named[0]
    if product is None:
        return None
    per_gpu = product.spotPrice if spot else product.price
    if not per_gpu:
        return None
    return per_gpu * (item.gpuNum or 1) / PRICE_UNITS_PER_USD


def _offer(product: ProductPayload) -> InstanceTypeOffer:
    price = (product.price or 0.0) / PRICE_UNITS_PER_USD
    spot = product.spotPrice / PRICE_UNITS_PER_USD if product.spotPrice else None
    parts = [f"{n} {unit}" for n, unit in ((product.cpuPerGpu, "vCPU"),
                                           (product.memoryPerGpu, "GB RAM"),
                                           (product.diskPerGpu, "GB disk"))
             if n is not None]
    return InstanceTypeOffer(
        provider=PROVIDER,
        name=product.name,
        price_per_hour=price,
        regions=tuple(product.regions) if product.availableDeploy else (),
        # A product is one GPU at this price; gpu_count (gpuNum, 1..8) multiplies it.
        gpus=1,
        gpu_description=product.name,
        description=f"price per GPU, {GPU_RANGE[0]}-{GPU_RANGE[1]} GPUs per instance"
        + (f"; per GPU: {', '.join(parts)}" if parts else ""),
        offer_id=product.id,
        spot_price_per_hour=spot,
        extra={
            "available_deploy": product.availableDeploy,
            "price_is_per_gpu": True,
            "billing_methods": list(product.billingMethods),
            "min_rootfs_gb": product.minRootFS,
            "max_rootfs_gb": product.maxRootFS,
        },
    )

