"""Novita's dialect data: status and error tables, error body, prices, the create body.

The tables are data the shared dialect interprets (``_dialect``). Novita's own readings
live here too: an instance's state from three fields (``status``, ``statusError``,
``spotStatus``), and prices, which instances do not carry (see ``novita``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx
import pydantic
from pydantic import SecretStr

from gpufsm.adapters._dialect import ErrorReport, ErrorRules, StatusTable, scrub
from gpufsm.adapters._novita_models import (
    DEFAULT_ROOTFS_GB,
    GPU_RANGE,
    CreateInstanceRequest,
    ErrorBody,
    InstancePayload,
    NovitaOptions,
    ProductPayload,
)
from gpufsm.adapters._protocol import InstanceTypeOffer
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
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "ABNORMAL_STATE",
    "NOVITA_ERRORS",
    "NOVITA_RULES",
    "NOVITA_STATUSES",
    "PRICE_UNITS_PER_USD",
    "PRICE_UNIT_USD",
    "SPOT_LOST",
    "SPOT_STATUSES",
    "cheapest_offer",
    "create_body",
    "endpoint_host_port",
    "instance_price",
    "map_novita_error",
    "novita_error_class",
    "product_offer",
    "read_state",
]

log = logging.getLogger("gpufsm.adapters.novita")

PROVIDER = "novita"

#: Units of a product ``price``/``spotPrice`` per dollar. ASSUMPTION: the docs give the
#: field as an integer with no unit; Novita's integer amounts are taken as 1/100000 USD.
#: Prices are divided by it (35000 / 100000 is 0.35; 35000 * 1e-5 is 0.35000000000000003).
PRICE_UNITS_PER_USD = 100_000
PRICE_UNIT_USD = 1 / PRICE_UNITS_PER_USD

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

#: Unknown reasons are still Novita's word for what happened: kept as the code, classed
#: by the HTTP status alone (never "not found": only RESOURCE_NOT_FOUND says an instance
#: is gone). Keys ending in ``*`` match by prefix.
NOVITA_RULES = ErrorRules(
    PROVIDER, NOVITA_ERRORS, log, unknown="status",
    prefixes={k[:-1]: c for k, c in NOVITA_ERRORS.items() if k.endswith("*")})
_STATUS = StatusTable(PROVIDER, NOVITA_STATUSES, log)


def novita_error_class(reason: str) -> type[ProviderError] | None:
    """The error class for a Novita ``reason``, exact names first, then prefixes."""
    return NOVITA_RULES.class_of(reason.strip().upper())


def map_novita_error(response: httpx.Response, provider: str, *,
                     secret: SecretStr | None = None) -> ProviderError | None:
    """The seam's mapper: read ``reason`` (an unknown one is kept as the code, classed by
    HTTP status); None, when there is no reason, lets the seam map by status.

    A 404 without a reason lands on None too: Novita's not-found is 400
    RESOURCE_NOT_FOUND, so the seam reads such a 404 as an unknown outcome, never
    "instance gone". ``secret`` (the API key) is masked before any text is kept.
    """
    try:
        body = ErrorBody.model_validate(json.loads(scrub(response.text, secret)))
    except (ValueError, pydantic.ValidationError):
        body = ErrorBody()
    reason = (body.reason or "").strip()
    text = ((body.message or "").strip()[:300] or response.reason_phrase
            or f"HTTP {response.status_code}")
    report = ErrorReport([reason.upper()] if reason else [], text, code=reason or None)
    return NOVITA_RULES.error(report, response, secret=secret)


def read_state(item: InstancePayload) -> tuple[InstanceState | None, str | None]:
    """The state and detail of one instance, from ``status`` refined by ``statusError``
    (a crash: FAILED) and ``spotStatus`` (a reclaim: FAILED), unless Novita is already
    removing it. An unknown word is UNKNOWN and logged."""
    raw = item.status
    state = _STATUS.state(item.id, raw)
    err_state = ((item.statusError.state or "") if item.statusError else "").strip()
    err_msg = ((item.statusError.message or "") if item.statusError else "").strip()
    detail: str | None = None
    if err_state.casefold() == ABNORMAL_STATE:
        detail = err_msg or err_state
        state = state if raw in _GOING_AWAY else InstanceState.FAILED
    elif err_state or err_msg:
        detail = f"{err_state}: {err_msg}" if err_state and err_msg else (err_msg or err_state)
        if err_state:
            log.warning("novita: instance %s has unknown statusError.state %r",
                        item.id, err_state)
    spot = (item.spotStatus or "").strip()
    if spot and spot not in SPOT_STATUSES:
        log.warning("novita: instance %s has unknown spotStatus %r", item.id, spot)
    if spot in SPOT_LOST and raw not in _GOING_AWAY:
        return InstanceState.FAILED, f"spot instance reclaimed by Novita (spotStatus {spot})"
    if spot == "notified" and detail is None:
        detail = f"spot reclaim notified (spotReclaimTime {item.spotReclaimTime or '?'})"
    return state, detail


def endpoint_host_port(endpoint: str | None) -> tuple[str | None, int | None]:
    """``"1.2.3.4:30022"`` (or with a scheme) → host and port, each None if absent."""
    if not endpoint:
        return None, None
    rest = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest or None, None
    return host or None, int(port) if port.isdigit() else None


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


def instance_price(item: InstancePayload,
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


def product_offer(product: ProductPayload) -> InstanceTypeOffer:
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
            # gpuNum's range (create): how far placement may multiply the per-GPU price.
            "min_gpus": GPU_RANGE[0],
            "max_gpus": GPU_RANGE[1],
            "billing_methods": list(product.billingMethods),
            "min_rootfs_gb": product.minRootFS,
            "max_rootfs_gb": product.maxRootFS,
        },
    )


# ---- the create body ---------------------------------------------------------------

_PASSTHROUGH = ("billingMode", "imageAuth", "imageAuthId", "entrypoint", "networkId",
                "month", "autoRenew", "autoRenewMonth", "minCudaVersion")

#: create-body field → the spec field a user fixes.
_BODY_FIELD = {"gpuNum": "gpu_count", "rootfsSize": "disk_gb", "imageUrl": "image",
               "envs": "env", "command": "command", "name": "name", "ports": "ports",
               "productId": "instance_type", "clusterId": "region"}




def _ports_string(ports: Sequence[int], types: Mapping[int, str]) -> str:
    return ", ".join(f"{port}/{types.get(port, 'tcp')}" for port in ports)


def create_body(spec: InstanceSpec, opts: NovitaOptions, name: str,
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
