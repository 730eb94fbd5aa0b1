"""Vast.ai (REST API v0, plus the v1 instance listing): the adapter and its tables.

This room translates between gpufsm's provider-neutral contract and Vast's marketplace:
a launch is "search the cheapest matching offer, then accept it", statuses come from
three fields at once (``actual_status``, ``intended_status``, ``cur_state``), and errors
arrive in four shapes, sometimes on a 200. All HTTP goes through
:class:`gpufsm.adapters.HttpSeam`, which the shared ``HttpAdapter`` base sets up. The
contract is tests/fixtures/provider-api/vastai/ (NOTES.md and the official openapi.yaml).

Vast facts that shape it:

* Vast has no tags: ownership lives in the instance ``label`` (``<tag>/<name>``).
* ``GET /instances/{id}/`` answers ``{"instances": {...}}`` (an object); a missing
  instance reads ``{"instances": null}`` or 404 ``not_found``. Only those count as
  "gone": a 404 without Vast's error body (a proxy, a wrong base_url) is the seam's
  unknown outcome, never proof that an instance which may still bill has disappeared.
* The listing is ``GET /api/v1/instances/`` (keyset pages of at most 25); every page is
  followed, and any failure fails the whole listing.
* Offers are ephemeral: between search and accept another renter may take one, which
  Vast reports as ``no_such_ask``. Nothing was created, so the next-cheapest offer is
  tried (``options["max_offer_attempts"]``, default 3). An explicit
  ``options["offer_id"]`` is searched for too (``id eq``), so the spec's type, count,
  region, disk and price cap hold for it as for any offer.
* Vast installs the account's SSH keys itself: ``ssh_key_names`` is refused, not dropped.
* 429 carries no Retry-After, ever; the seam's jittered backoff does the waiting.
* SSH: ``ssh_host:ssh_port`` is Vast's proxy; a direct mapping of the container's 22/tcp
  (``ports``, running instances only) is preferred when present, as Vast's own CLI does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx
import pydantic
from pydantic import SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter
from gpufsm.adapters._dialect import (
    Endpoint,
    Page,
    StatusTable,
    TokenPaging,
    collect_pages,
    json_or_none,
    parse_model,
)
from gpufsm.adapters._http import RateLimit
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.adapters._vastai_models import (
    LABEL_MAX,
    VAST_CREATE_OPTIONS,
    VAST_FILTER_OPS,
    VAST_RUNTYPES,
    VastCreateResponse,
    VastInstance,
    VastListPage,
    VastOffer,
    VastSearchResponse,
    check_spec,
    normalize_gpu_name,
    whole_number,
)
from gpufsm.adapters._vastai_rules import (
    NULL_STATUS,
    VAST_ERROR_PHRASES,
    VAST_ERRORS,
    VAST_RULES,
    VAST_STATUSES,
    create_body,
    error_report,
    refused_on_200,
    search_body,
    vast_state,
)
from gpufsm.errors import (
    InsufficientCapacity,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    ValidationError,
)
from gpufsm.machines import Capabilities
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec

__all__ = [
    "NULL_STATUS",
    "VAST_CREATE_OPTIONS",
    "VAST_ENDPOINTS",
    "VAST_ERRORS",
    "VAST_ERROR_PHRASES",
    "VAST_FILTER_OPS",
    "VAST_RATE_LIMITS",
    "VAST_RUNTYPES",
    "VAST_STATUSES",
    "VastAdapter",
    "map_vast_error",
    "normalize_gpu_name",
    "to_provider_instance",
    "vast_state",
]

log = logging.getLogger("gpufsm.adapters.vastai")

PROVIDER = "vastai"
V0 = "/api/v0"
V1 = "/api/v1"


#: Vast rate-limits each endpoint as a minimum interval per identity; the spec's 429
#: examples give thresholds of 1.0-4.5 and the official CLI retries after 0.15-0.3 s.
#: Two requests a second with a burst of two keeps a reconcile pass (one listing page per
#: call) under the common thresholds without a token per endpoint; 429s are retried.
VAST_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "default": RateLimit(2.0, burst=2),
})

#: Vast's operations. The listing keeps its trailing slash, as Vast's own SDK calls it
#: (the spec's keys drop every trailing slash; the v0 paths are known to need theirs).
#: Setting a desired state twice is harmless, so start and stop may be retried; a blind
#: retry of a reboot could reboot twice mid-job, and of an accept rent twice.
VAST_ENDPOINTS: Mapping[str, Endpoint] = MappingProxyType({
    "search": Endpoint("POST", f"{V0}/bundles/", idempotent=True),
    "launch": Endpoint("PUT", f"{V0}/asks/{{id}}/", idempotent=False),
    "get": Endpoint("GET", f"{V0}/instances/{{id}}/", idempotent=True),
    "list": Endpoint("GET", f"{V1}/instances/", idempotent=True),
    "start": Endpoint("PUT", f"{V0}/instances/{{id}}/", idempotent=True),
    "stop": Endpoint("PUT", f"{V0}/instances/{{id}}/", idempotent=True),
    "restart": Endpoint("PUT", f"{V0}/instances/reboot/{{id}}/", idempotent=False),
    "terminate": Endpoint("DELETE", f"{V0}/instances/{{id}}/", idempotent=True),
})

_STATUS = StatusTable(PROVIDER, VAST_STATUSES, log, word="actual_status")
_PAGE = 25


def to_provider_instance(inst: VastInstance) -> ProviderInstance:
    """One Vast instance as gpufsm sees it; an unknown status is logged, never raised."""
    raw, state = vast_state(inst.actual_status, inst.intended_status, inst.cur_state)
    if state is None:
        _STATUS.unknown(str(inst.id), raw)
    # Direct (public_ipaddr + the host port of 22/tcp) when Vast maps one, else the proxy
    # pair ssh_host:ssh_port; never a host from one pair with the port of the other.
    ssh_host, ssh_port = None, inst.direct_ssh_port
    if ssh_port is None and inst.ssh_host and inst.ssh_port and 0 < inst.ssh_port < 65536:
        ssh_host, ssh_port = inst.ssh_host, inst.ssh_port
    return ProviderInstance(
        provider_instance_id=str(inst.id),
        raw_status=raw,
        state=state,
        tag=tag_from_name(inst.label),
        name=inst.label,
        ip=inst.public_ipaddr,
        region=inst.geolocation,
        instance_type=inst.gpu_name,
        price_per_hour=inst.dph_total,
        ssh_port=ssh_port,
        detail=inst.status_msg,
        ssh_host=ssh_host,
    )


# ---- errors ------------------------------------------------------------------------


def map_vast_error(response: httpx.Response, provider: str = PROVIDER, *,
                   secret: SecretStr | None = None) -> ProviderError | None:
    """The seam's mapper: Vast's body → our error, or None to map by HTTP status.

    ProviderNotFound only from a body naming ``not_found``: a 404 without one is left to
    the seam, which reads it as an unknown outcome.
    """
    return VAST_RULES.error(error_report(response), response, secret=secret)


# ---- the adapter ---------------------------------------------------------------------


class VastAdapter(HttpAdapter):
    """One Vast.ai account. See the module docstring for the dialect's traps."""

    profile = AdapterProfile(
        PROVIDERS[PROVIDER], statuses=VAST_STATUSES,
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_vast_error, rate_limits=VAST_RATE_LIMITS)
    endpoints = VAST_ENDPOINTS

    def _ask(self, op: str, **kw: Any) -> Any:
        """Call ``op``; the JSON body of its 2xx (None if empty), unless it is a refusal
        in disguise."""
        response = self._call(op, **kw)
        data = json_or_none(response)
        refused = refused_on_200(response, data, self._api_key)
        if refused is not None:
            raise refused
        return data

    def validate(self, spec: InstanceSpec) -> None:
        """Refuse locally what Vast would refuse or mangle (``_vastai_models.check_spec``)."""
        check_spec(spec)

    # ---- launch ------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        """Accept the cheapest matching offer (or ``options["offer_id"]``); return the id.

        Only ``no_such_ask`` moves on to the next offer: it proves nothing was created.
        Any other error, and every outcome-unknown one, is raised as it is.
        """
        spec = request.spec
        self.validate(spec)
        label = request.display_name
        if len(label) > LABEL_MAX:
            raise ValidationError("name", f"the label {label[:40]!r}… exceeds {LABEL_MAX}")
        options = spec.options
        explicit = options.get("offer_id")
        with self._before_launch():
            candidates = self._search(search_body(spec))
        limit = spec.max_price_per_hour
        if limit is not None:  # never trust the filter alone with someone's money
            candidates = [o for o in candidates
                          if o.dph_total is not None and o.dph_total <= limit]
        if not candidates:
            raise InsufficientCapacity(
                (f"offer {explicit} is not a rentable match for " if explicit is not None
                 else "no offer matches ")
                + f"{normalize_gpu_name(spec.instance_type)!r} x{spec.gpu_count or 1}"
                f"{f' in {spec.region}' if spec.region else ''}"
                f"{f' at <= ${limit}/h (max_price_per_hour)' if limit is not None else ''}",
                provider=PROVIDER, code="no_offer")
        attempts = int(options.get("max_offer_attempts", 3))
        last: InsufficientCapacity | None = None
        for offer in candidates[:attempts]:
            try:
                return self._accept(offer, create_body(spec, label, offer))
            except InsufficientCapacity as exc:
                log.info("%s: offer %s is gone (%s); trying the next", PROVIDER, offer.id,
                         exc.code)
                last = exc
        assert last is not None
        raise last

    def _accept(self, offer: VastOffer, body: dict[str, Any]) -> str:
        data = self._ask("launch", id=offer.id, json=body)
        try:
            created = VastCreateResponse.model_validate(data)
        except pydantic.ValidationError:
            created = VastCreateResponse()
        if created.new_contract is None:
            # Vast answered 2xx: the instance may well exist. Temporary (outcome unknown):
            # the reconciler finds it by its label.
            raise ProviderUnavailable("launch answered without new_contract; the instance "
                                      "may exist", provider=PROVIDER)
        return str(created.new_contract)

    def _search(self, body: Mapping[str, Any]) -> list[VastOffer]:
        """Offers, cheapest first (then the more reliable); unreadable offers skipped."""
        offers = parse_model(VastSearchResponse, self._ask("search", json=dict(body)),
                             op="search", provider=PROVIDER).offers
        parsed: list[VastOffer] = []
        for raw in offers:
            try:
                parsed.append(VastOffer.model_validate(raw))
            except pydantic.ValidationError:
                log.warning("%s: skipping an offer without an id", PROVIDER)
        return sorted(parsed, key=lambda o: (o.dph_total is None, o.dph_total or 0.0,
                                             -(o.reliability2 or 0.0)))

    # ---- reading -------------------------------------------------------------------------

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        pid = _instance_id(provider_instance_id)
        try:  # a 404 with Vast's body, or a refusal naming not_found: gone
            data = self._ask("get", id=pid)
        except ProviderNotFound:
            return None
        if not isinstance(data, dict) or "instances" not in data:
            raise ProviderUnavailable("show instance answered without 'instances'",
                                      provider=PROVIDER)
        raw = data["instances"]
        if isinstance(raw, list):  # tolerate the legacy list shape
            raw = next((i for i in raw
                        if isinstance(i, dict) and whole_number(i.get("id")) == pid), None)
        if raw is None:
            return None
        return to_provider_instance(_parse_instance(raw))

    def list_instances(self) -> Sequence[ProviderInstance]:
        """Every page of the v1 listing; any failure (or a cursor loop) fails it all."""
        instances = collect_pages(self._page, TokenPaging(), key=lambda inst: inst.id,
                                  provider=PROVIDER)
        return [to_provider_instance(inst) for inst in instances]

    def _page(self, token: str | None) -> Page[VastInstance]:
        params: dict[str, Any] = {"limit": _PAGE}
        if token is not None:
            params["after_token"] = token
        page = parse_model(VastListPage, self._ask("list", params=params), op="list",
                           provider=PROVIDER)
        return Page([_parse_instance(raw) for raw in page.instances], token=page.next_token)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        """One offer per (GPU name, GPU count, region): that region's cheapest ask, its
        price and id, and the lowest bid there.

        Vast's asks are single machines in single places, so a price (and an ask id) is
        only true of the region it was seen in: grouping regions under one cheapest ask
        would show every region at another region's price.
        """
        body = {"rentable": {"eq": True}, "rented": {"eq": False}, "limit": 1000,
                "type": "on-demand", "order": [["dph_total", "asc"]]}
        groups: dict[tuple[str, int, str], list[VastOffer]] = {}
        for offer in self._search(body):
            if offer.gpu_name is None or offer.dph_total is None:
                continue
            key = (offer.gpu_name, offer.num_gpus or 1, offer.geolocation or "unknown")
            groups.setdefault(key, []).append(offer)
        return [_region_offer(gpu, count, region, offers)
                for (gpu, count, region), offers in sorted(groups.items())]

    # ---- commands --------------------------------------------------------------------

    def start(self, provider_instance_id: str) -> None:
        self._ask("start", id=_instance_id(provider_instance_id), json={"state": "running"})

    def stop(self, provider_instance_id: str) -> None:
        self._ask("stop", id=_instance_id(provider_instance_id), json={"state": "stopped"})

    def restart(self, provider_instance_id: str) -> None:
        self._ask("restart", id=_instance_id(provider_instance_id))

    def terminate(self, provider_instance_id: str) -> None:
        """Destroy; an instance Vast does not know is already gone (success)."""
        pid = _instance_id(provider_instance_id)
        try:
            self._ask("terminate", id=pid)
        except ProviderNotFound:
            return


# ---- helpers -------------------------------------------------------------------------


def _region_offer(gpu: str, count: int, region: str,
                  offers: list[VastOffer]) -> InstanceTypeOffer:
    """The catalog row for one (GPU, count, region): its cheapest ask."""
    best = min(offers, key=lambda o: (o.dph_total or 0.0, o.id))
    bids = [o.min_bid for o in offers if o.min_bid is not None]
    return InstanceTypeOffer(
        provider=PROVIDER,
        name=gpu,
        price_per_hour=float(best.dph_total or 0.0),
        regions=(region,),
        gpus=count,
        gpu_description=f"{count}x {gpu}" + (
            f" ({best.gpu_ram // 1024} GB)" if best.gpu_ram else ""),
        offer_id=str(best.id),
        spot_price_per_hour=min(bids) if bids else None,
        extra={"offers": len(offers), "machine_id": best.machine_id},
    )


def _instance_id(provider_instance_id: str) -> int:
    pid = whole_number(provider_instance_id)
    if pid is None:
        raise ValidationError("provider_instance_id", "Vast instance ids are integers",
                              value=provider_instance_id)
    return pid


def _parse_instance(raw: Any) -> VastInstance:
    # Without an id we cannot say which instance this is: the listing is unusable.
    return parse_model(VastInstance, raw, op="list", provider=PROVIDER)
