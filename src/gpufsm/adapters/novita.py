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

import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Unpack

from pydantic import SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter, HttpAdapterOptions
from gpufsm.adapters._dialect import Endpoint, NumberPaging, Page, collect_pages
from gpufsm.adapters._http import RateLimit
from gpufsm.adapters._novita_models import (
    DEFAULT_ROOTFS_GB,
    MAX_NAME,
    CreateInstanceResponse,
    InstancePayload,
    ListInstancesResponse,
    ListProductsResponse,
    NovitaOptions,
    ProductPayload,
    check_spec,
)
from gpufsm.adapters._novita_rules import (
    NOVITA_ERRORS,
    NOVITA_STATUSES,
    PRICE_UNIT_USD,
    PRICE_UNITS_PER_USD,
    cheapest_offer,
    create_body,
    endpoint_host_port,
    instance_price,
    map_novita_error,
    novita_error_class,
    product_offer,
    read_state,
)
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.errors import (
    InsufficientCapacity,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ValidationError,
)
from gpufsm.machines import Capabilities
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec

__all__ = [
    "API_PREFIX",
    "DEFAULT_BASE_URL",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_ROOTFS_GB",
    "NOVITA_ENDPOINTS",
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
DEFAULT_BASE_URL = PROVIDERS[PROVIDER].default_url
API_PREFIX = "/gpu-instance/openapi/v1"

#: How long a products listing is reused to price instances (prices change rarely; a
#: reconcile pass must not cost an extra request per instance).
PRODUCT_CACHE_SECONDS = 300.0
PAGE_SIZE = 50

#: Not documented for the GPU API. A guess: 5 requests/s with bursts of 5; a 429 is
#: handled by the seam anyway (Retry-After honoured when sent).
DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType(
    {"default": RateLimit(5.0, burst=5)})

#: Novita's operations. Their answers' bodies are undocumented (delete: an empty 200)
#: and none is read. A retried restart after a lost answer would reboot twice.
NOVITA_ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType({
    "launch": Endpoint("POST", f"{API_PREFIX}/gpu/instance/create", idempotent=False),
    "get": Endpoint("GET", f"{API_PREFIX}/gpu/instance", idempotent=True),
    "list": Endpoint("GET", f"{API_PREFIX}/gpu/instances", idempotent=True),
    "products": Endpoint("GET", f"{API_PREFIX}/products", idempotent=True),
    "start": Endpoint("POST", f"{API_PREFIX}/gpu/instance/start", idempotent=True),
    "stop": Endpoint("POST", f"{API_PREFIX}/gpu/instance/stop", idempotent=True),
    "restart": Endpoint("POST", f"{API_PREFIX}/gpu/instance/restart", idempotent=False),
    "terminate": Endpoint("POST", f"{API_PREFIX}/gpu/instance/delete", idempotent=True),
})


class NovitaAdapter(HttpAdapter):
    """One Novita account. Thread-safe as far as the HTTP seam is.

    ``page_size`` is how many instances one listing page asks for.
    """

    profile = AdapterProfile(
        PROVIDERS[PROVIDER], statuses=NOVITA_STATUSES,
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_novita_error, rate_limits=DEFAULT_RATE_LIMITS)
    endpoints = NOVITA_ENDPOINTS

    def __init__(self, api_key: SecretStr | str | None = None, *, page_size: int = PAGE_SIZE,
                 **options: Unpack[HttpAdapterOptions]) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self._page_size = page_size
        #: (when read, product id → product) of the last full products listing.
        self._product_cache: tuple[float, dict[str, ProductPayload]] | None = None
        super().__init__(api_key, **options)

    def validate(self, spec: InstanceSpec) -> None:
        """Novita's launch rules (``_novita_models.check_spec``): every spec field is
        sent, checked against Novita's products at launch, or refused; none is dropped."""
        check_spec(spec)

    # ---- launch -----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        spec = request.spec
        self.validate(spec)
        name = request.display_name
        if len(name) > MAX_NAME:
            raise ValidationError("name", f"'<tag>/<name>' must fit in {MAX_NAME} characters",
                                  value=len(name))
        opts = check_spec(spec)
        with self._before_launch():
            product = self._resolve_product(spec, opts)
        body = create_body(spec, opts, name, product)
        try:
            response = self._call("launch", json=body)
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
        best = cheapest_offer((product_offer(p) for p in named), spot=billing == "spot")
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

    # ---- observe ----------------------------------------------------------------------

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        response = self._call_unless_absent("get", params={"instanceId": provider_instance_id})
        if response is None:
            return None
        item = self._parse(response, InstancePayload, "get")
        return self._to_instance(item, self._price_book([item]))

    def list_instances(self) -> Sequence[ProviderInstance]:
        """All pages, or raise. A page count that disagrees with ``total`` (instances
        created or deleted while paging shift the pages) is a partial listing: raise, and
        let the reconciler read UNKNOWN and try again next pass."""
        items = collect_pages(self._page, NumberPaging(self._page_size),
                              key=lambda item: item.id, provider=PROVIDER)
        products = self._price_book(items)
        return [self._to_instance(item, products) for item in items]

    def _page(self, number: int) -> Page[InstancePayload]:
        response = self._call("list", params={"pageSize": self._page_size, "pageNum": number})
        listing = self._parse(response, ListInstancesResponse, "list")
        return Page(listing.instances or [], total=listing.total)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        products = self._products({})
        self._product_cache = (self._clock.monotonic(), {p.id: p for p in products})
        offers = [product_offer(p) for p in products]
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
        response = self._call("products", params=params, attempts=attempts)
        return self._parse(response, ListProductsResponse, "products").data or []

    # ---- act --------------------------------------------------------------------------

    def start(self, provider_instance_id: str) -> None:
        self._call("start", json={"instanceId": provider_instance_id})

    def stop(self, provider_instance_id: str) -> None:
        self._call("stop", json={"instanceId": provider_instance_id})

    def restart(self, provider_instance_id: str) -> None:
        self._call("restart", json={"instanceId": provider_instance_id})

    def terminate(self, provider_instance_id: str) -> None:
        if self._call_unless_absent("terminate", json={"instanceId": provider_instance_id}) is None:
            log.info("novita: terminate %s: already gone", provider_instance_id)

    # ---- translation --------------------------------------------------------------------

    def _to_instance(self, item: InstancePayload,
                     products: Mapping[str, ProductPayload] | None = None) -> ProviderInstance:
        state, detail = read_state(item)
        ip = item.network.ip if item.network and item.network.ip else None
        ssh_port: int | None = None
        for mapping in item.portMappings or ():
            if mapping.port == 22:
                host, port = endpoint_host_port(mapping.endpoint)
                ip = ip or host
                ssh_port = port or 22
                break
        return ProviderInstance(
            provider_instance_id=item.id,
            raw_status=item.status,
            state=state,
            tag=tag_from_name(item.name),
            name=item.name,
            ip=ip,
            region=item.clusterId or item.clusterName or None,
            instance_type=item.productName or None,
            price_per_hour=instance_price(item, products) if products is not None else None,
            ssh_port=ssh_port,
            detail=detail,
        )
