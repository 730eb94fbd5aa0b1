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

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx
import pydantic
from pydantic import SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter, scrub
from gpufsm.adapters._http import RateLimit
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.adapters._vastai_models import (
    VastCreateResponse,
    VastErrorBody,
    VastInstance,
    VastListPage,
    VastOffer,
    VastSearchResponse,
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
    "NULL_STATUS",
    "VAST_CREATE_OPTIONS",
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
DEFAULT_BASE_URL = "https://console.vast.ai"
V0 = "/api/v0"
V1 = "/api/v1"

#: JSON ``null`` in ``actual_status`` ("being provisioned") is reported under this word.
NULL_STATUS = "null"

S = InstanceState

#: ``actual_status`` (the container) → state, before ``intended_status``/``cur_state``
#: refine it in :func:`vast_state`. Vocabulary: NOTES.md "Status vocabulary".
VAST_STATUSES: Mapping[str, InstanceState] = MappingProxyType({
    NULL_STATUS: S.CREATED,  # being provisioned: Vast accepted, nothing runs yet
    "created": S.CREATED,  # seen by SkyPilot; same meaning as null
    "scheduling": S.STARTING,  # waiting for the host's GPUs (stuck >30 s: no resources)
    "loading": S.STARTING,  # pulling the image / starting the container
    "rebooting": S.STARTING,  # reboot endpoint: docker stop + start
    "restarting": S.STARTING,  # seen by SkyPilot; transient like rebooting
    "recycling": S.STARTING,  # recycle endpoint: container re-created from the image
    "running": S.RUNNING,  # executing; GPU charges apply
    # Paused with memory kept, and GPU charges still apply. gpufsm never freezes, so this
    # comes from outside; reading it STOPPED would hide GPU-hour charges from budget and
    # lifetime policies. It bills like RUNNING, so it is RUNNING.
    "frozen": S.RUNNING,
    "stopped": S.STOPPED,  # halted; disk still bills, GPU does not
    # The docs: exited/unknown/offline "will never reach running": destroy and retry.
    # FAILED keeps the instance billable so policy restarts or terminates it.
    "exited": S.FAILED,  # the container exited unexpectedly (see vast_state for stops)
    "unknown": S.FAILED,  # no recent heartbeat from the host
    "offline": S.FAILED,  # host disconnected from Vast
})

#: ``cur_state`` (the machine contract) that overrides everything: "released on destroy".
_RELEASED = "unloaded"
_STOPPING_FROM = frozenset({S.RUNNING, S.STARTING})

#: Vast error codes (the ``error`` field, or embedded in ``msg``) → gpufsm error class.
VAST_ERRORS: Mapping[str, type[ProviderError]] = MappingProxyType({
    "invalid_args": InvalidRequest,  # 400 bad parameters; 403 "not your own offer"
    "invalid_price": InvalidRequest,  # 400 bid price out of range
    "no_ssh_key_for_vm": InvalidRequest,  # 400 VM offers need a registered SSH key first
    # 404/410: the offer was taken or withdrawn between search and accept. Nothing was
    # created, the market simply has no such capacity any more.
    "no_such_ask": InsufficientCapacity,
    "auth_error": AuthError,  # 401 "Invalid user key"
    "not_found": ProviderNotFound,  # 404 on destroy/manage: no such instance
    "invalid_request": InvalidRequest,  # 400 on v1 listing / search: bad filter or body
    "invalid_token": InvalidRequest,  # 400 on v1 listing: a bad ``after_token`` cursor
    "rate_limit_exceeded": RateLimited,  # 429 JSON form
    "insufficient_credit": InsufficientCredit,  # third-party clients; not in the spec
    "insufficient_balance": InsufficientCredit,  # the spec's name on credit transfers
})

#: Phrases Vast puts in ``msg``/``detail``/plain-text bodies without any code.
VAST_ERROR_PHRASES: Mapping[str, str] = MappingProxyType({
    "lacks credit": "insufficient_credit",  # "Your account lacks credit"
    "insufficient credit": "insufficient_credit",
    "too frequent": "rate_limit_exceeded",  # "API requests too frequent ..."
    "invalid user key": "auth_error",  # 401, and the search endpoint's odd 404
})

#: When one body names several codes (404 ``error: invalid_args`` with ``msg: "...
#: no_such_ask ..."``), the most specific class wins; the generic InvalidRequest last.
_PRIORITY: tuple[type[ProviderError], ...] = (
    InsufficientCredit, AuthError, RateLimited, InsufficientCapacity, ProviderNotFound,
    QuotaExceeded, InvalidRequest,
)
_EMBEDDED = re.compile(r"error\s+(\d{3})/\d+:\s*([a-z_]+)", re.IGNORECASE)

#: Vast rate-limits each endpoint as a minimum interval per identity; the spec's 429
#: examples give thresholds of 1.0-4.5 and the official CLI retries after 0.15-0.3 s.
#: Two requests a second with a burst of two keeps a reconcile pass (one listing page per
#: call) under the common thresholds without a token per endpoint; 429s are retried.
VAST_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "default": RateLimit(2.0, burst=2),
})

#: ``runtype`` values the create endpoint accepts (openapi enum).
VAST_RUNTYPES = frozenset({
    "ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct",
})
#: Words a ``runtype`` may combine, space-separated: the enum, plus what Vast's own CLI and
#: SDK send for direct connections (``--ssh --direct`` is "ssh_direc ssh_proxy"; the v1
#: listing's example ``image_runtype`` reads "ssh ssh_direc ssh_proxy").
_RUNTYPE_WORDS = VAST_RUNTYPES | {"ssh_direc", "jupyter_direc"}
VAST_FILTER_OPS = frozenset({"eq", "neq", "gt", "lt", "gte", "lte", "in", "notin"})

#: Documented create-instance fields a spec may pass through ``options`` unchanged.
VAST_CREATE_OPTIONS = frozenset({
    "template_hash_id", "target_state", "cancel_unavail", "vm", "args", "args_str",
    "use_jupyter_lab", "jupyter_dir", "python_utf8", "lang_utf8", "force", "user",
    "image_login", "volume_info",
})
#: Options the adapter itself reads.
_OWN_OPTIONS = frozenset({
    "offer_id", "filters", "runtype", "price", "interruptible", "search_limit",
    "max_offer_attempts",
})
_ONSTART_MAX = 4048  # openapi: "onstart field is limited to 4048 characters"
_LABEL_MAX = 1024
_GPU_MAX = 16
_PRICE_RANGE = (0.001, 128.0)
_PAGE = 25
_MAX_PAGES = 10_000
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def normalize_gpu_name(name: str) -> str:
    """``RTX_4090`` and ``RTX 4090`` both mean the card Vast reports as ``RTX 4090``.

    The official CLI turns underscores into spaces (its query language cannot quote),
    and offers and instances report names with spaces, so that is what we send.
    """
    return " ".join(name.replace("_", " ").split())


def vast_state(actual_status: str | None, intended_status: str | None = None,
               cur_state: str | None = None) -> tuple[str, InstanceState | None]:
    """The raw word to record and the state it means; None state = UNKNOWN.

    Rules, first match wins:

    1. ``cur_state == "unloaded"``: the contract was released on destroy → TERMINATED.
    2. ``actual_status`` not in :data:`VAST_STATUSES` → None (logged by the caller).
    3. ``exited`` while ``intended_status`` or ``cur_state`` is ``stopped``: that is how a
       stopped container reads, not a crash → STOPPED.
    4. ``exited`` while ``intended_status`` is ``running``: right after a start Vast still
       shows the stopped container as exited while intent and contract already say
       running. An exited container whose intent is running is *starting* → STARTING,
       raw ``exited (intended running)``. Reading it FAILED made the next pass destroy a
       machine (and its disk) the user had merely stopped and started (issue 9 item 12);
       a container that really died stays here until the engine's STARTING deadline.
    5. RUNNING/STARTING while ``intended_status == "stopped"``: stop requested, the
       container is not down yet → STOPPING.
    6. otherwise the table.
    """
    word = actual_status if actual_status is not None else NULL_STATUS
    if (cur_state or "").lower() == _RELEASED:
        return _RELEASED, S.TERMINATED
    state = VAST_STATUSES.get(word.lower())
    if state is None:
        return word, None
    intended = (intended_status or "").lower()
    if word.lower() == "exited" and "stopped" in (intended, (cur_state or "").lower()):
        return f"{word} (stopped)", S.STOPPED
    if word.lower() == "exited" and intended == "running":
        return f"{word} (intended running)", S.STARTING
    if state in _STOPPING_FROM and intended == "stopped":
        return f"{word} (intended stopped)", S.STOPPING
    return word, state


def to_provider_instance(inst: VastInstance) -> ProviderInstance:
    """One Vast instance as gpufsm sees it; an unknown status is logged, never raised."""
    raw, state = vast_state(inst.actual_status, inst.intended_status, inst.cur_state)
    if state is None:
        log.warning("%s: instance %s reports unknown actual_status %r: state UNKNOWN",
                    PROVIDER, inst.id, raw)
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


def _body(response: httpx.Response, secret: SecretStr | None = None) -> VastErrorBody | None:
    """The error body in whichever of Vast's shapes; plain text (429 "API requests too
    frequent") becomes ``msg``."""
    text = scrub(response.text, secret).strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return VastErrorBody(msg=text[:500])
    if isinstance(data, dict):
        return VastErrorBody.model_validate(data)
    if isinstance(data, str):
        return VastErrorBody(msg=data[:500])
    return None


def _codes(body: VastErrorBody) -> list[str]:
    """Known codes the body names: ``error``, ``"error 404/3603: <code> ..."``, phrases.

    Bare words in free text are not scanned: a message that merely mentions
    ``not_found`` must not be read as "this instance is gone".
    """
    found: list[str] = []
    if body.error:
        found.append(body.error.lower())
    text = body.text or ""
    found.extend(match.group(2).lower() for match in _EMBEDDED.finditer(text))
    lowered = text.lower()
    found.extend(code for phrase, code in VAST_ERROR_PHRASES.items() if phrase in lowered)
    return found


def _error_from_body(body: VastErrorBody, status: int, provider: str = PROVIDER,
                     secret: SecretStr | None = None) -> ProviderError | None:
    classes = {code: VAST_ERRORS[code] for code in _codes(body) if code in VAST_ERRORS}
    if not classes:
        return None
    code, cls = min(classes.items(), key=lambda item: _PRIORITY.index(item[1]))
    message = scrub(body.text or code, secret)[:300]
    return cls(message, provider=provider, code=code, status_code=status)


def map_vast_error(response: httpx.Response, provider: str = PROVIDER, *,
                   secret: SecretStr | None = None) -> ProviderError | None:
    """The seam's mapper: Vast's body → our error, or None to map by HTTP status.

    429 is always RateLimited (its body may be plain text) and 5xx always the seam's
    ProviderUnavailable. ProviderNotFound only from a body naming ``not_found``: a 404
    without one is left to the seam, which reads it as an unknown outcome.
    """
    status = response.status_code
    body = _body(response, secret)
    if status == 429:
        text = (body.text if body is not None else None) or "API requests too frequent"
        return RateLimited(f"rate limited: {text[:200]}", provider=provider,
                           status_code=status, code=body.error if body is not None else None)
    if status >= 500:
        return None
    return _error_from_body(body, status, provider) if body is not None else None


def _refused_on_200(data: Any, status: int,
                    secret: SecretStr | None = None) -> ProviderError | None:
    """Vast sometimes answers 200 with ``success: false`` and a ``msg``: still a refusal."""
    if not isinstance(data, dict) or data.get("success") is not False:
        return None
    body = VastErrorBody.model_validate(data)
    error = _error_from_body(body, status, secret=secret)
    if error is None:
        text = scrub(body.text or "success=false", secret)
        error = InvalidRequest(f"refused: {text[:300]}", provider=PROVIDER, code=body.error,
                               status_code=status)
    return error


# ---- the adapter ---------------------------------------------------------------------


class VastAdapter(HttpAdapter):
    """One Vast.ai account. See the module docstring for the dialect's traps."""

    profile = AdapterProfile(
        name=PROVIDER, base_url=DEFAULT_BASE_URL, api_key_env="VAST_API_KEY",
        base_url_setting="vast_base_url",
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_vast_error, rate_limits=VAST_RATE_LIMITS)

    def _answer(self, response: httpx.Response) -> Any:
        """The JSON body of a 2xx (None if empty), unless it is a refusal in disguise."""
        data = _json_or_none(response)
        refused = _refused_on_200(data, response.status_code, self._api_key)
        if refused is not None:
            raise refused
        return data

    # ---- validation ------------------------------------------------------------------

    def validate(self, spec: InstanceSpec) -> None:
        """Refuse locally what Vast would refuse (or silently mangle) at launch.

        Every spec field is either sent (instance_type, gpu_count, region, disk_gb and
        max_price_per_hour as search filters; image, name as the label, command as
        onstart, env and ports as docker flags, options) or refused here
        (ssh_key_names): none is silently dropped.
        """
        if not spec.image:
            raise ValidationError("image", "required: Vast launches a Docker image")
        if spec.ssh_key_names:
            raise ValidationError(
                "ssh_key_names", "Vast installs the SSH keys registered on the account and "
                "takes no key names: add the key in the Vast console and leave this empty",
                value=list(spec.ssh_key_names))
        if not normalize_gpu_name(spec.instance_type):
            raise ValidationError("instance_type", "a Vast GPU name such as RTX_4090")
        if spec.disk_gb is not None and spec.disk_gb < 1:
            raise ValidationError("disk_gb", "at least 1 GB", value=spec.disk_gb)
        if spec.gpu_count is not None and not 1 <= spec.gpu_count <= _GPU_MAX:
            raise ValidationError("gpu_count", f"Vast offers 1..{_GPU_MAX} GPUs",
                                  value=spec.gpu_count)
        if spec.name is not None and len(spec.name) > _LABEL_MAX - 64:
            raise ValidationError("name", f"at most {_LABEL_MAX - 64} characters: the label "
                                  f"'<tag>/<name>' is limited to {_LABEL_MAX}")
        if spec.command is not None and len(spec.command) > _ONSTART_MAX:
            raise ValidationError("command", f"Vast's onstart is limited to {_ONSTART_MAX} "
                                  "characters: gzip+base64 a longer script")
        for key, value in spec.env.items():
            if not _ENV_KEY.match(key):
                raise ValidationError(f"env.{key}",
                                      "a shell variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if any(c.isspace() for c in value):
                raise ValidationError(f"env.{key}", "no whitespace: Vast takes env as one "
                                      "docker-flag string")
        self._validate_options(spec.options)
        price, limit = spec.options.get("price"), spec.max_price_per_hour
        if price is not None and limit is not None and price > limit:
            raise ValidationError("options.price", f"a bid of ${price}/h exceeds "
                                  f"max_price_per_hour ${limit}/h", value=price)

    def _validate_options(self, options: Mapping[str, Any]) -> None:
        for key in options:
            if key not in _OWN_OPTIONS and key not in VAST_CREATE_OPTIONS:
                known = ", ".join(sorted(_OWN_OPTIONS | VAST_CREATE_OPTIONS))
                raise ValidationError(f"options.{key}", f"not a Vast option; known: {known}")
        runtype = options.get("runtype")
        if runtype is not None and not (isinstance(runtype, str) and runtype.split()
                                        and set(runtype.split()) <= _RUNTYPE_WORDS):
            raise ValidationError("options.runtype", "one or more (space-separated) of "
                                  f"{', '.join(sorted(_RUNTYPE_WORDS))}", value=runtype)
        price = options.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, int | float)
                                  or not _PRICE_RANGE[0] <= price <= _PRICE_RANGE[1]):
            raise ValidationError("options.price",
                                  f"a bid in $/hour within {_PRICE_RANGE[0]}..{_PRICE_RANGE[1]}",
                                  value=price)
        offer_id = options.get("offer_id")
        if offer_id is not None and _as_int(offer_id) is None:
            raise ValidationError("options.offer_id", "an integer offer (ask) id", value=offer_id)
        interruptible = options.get("interruptible")
        if interruptible is not None and not isinstance(interruptible, bool):
            raise ValidationError("options.interruptible", "true or false", value=interruptible)
        target = options.get("target_state")
        if target is not None and target not in ("running", "stopped"):
            raise ValidationError("options.target_state", "running or stopped", value=target)
        for name in ("search_limit", "max_offer_attempts"):
            value = options.get(name)
            if value is not None and (_as_int(value) is None or int(value) < 1):
                raise ValidationError(f"options.{name}", "a positive integer", value=value)
        filters = options.get("filters")
        if filters is not None:
            if not isinstance(filters, Mapping):
                raise ValidationError("options.filters", "a mapping {field: {op: value}}")
            for field, cond in filters.items():
                if not isinstance(cond, Mapping) or not cond or set(cond) - VAST_FILTER_OPS:
                    raise ValidationError(
                        f"options.filters.{field}",
                        f"{{op: value}} with op one of {', '.join(sorted(VAST_FILTER_OPS))}")

    # ---- launch ------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        """Accept the cheapest matching offer (or ``options["offer_id"]``); return the id.

        Only ``no_such_ask`` moves on to the next offer: it proves nothing was created.
        Any other error, and every outcome-unknown one, is raised as it is.
        """
        spec = request.spec
        self.validate(spec)
        label = request.display_name
        if len(label) > _LABEL_MAX:
            raise ValidationError("name", f"the label {label[:40]!r}… exceeds {_LABEL_MAX}")
        options = spec.options
        explicit = options.get("offer_id")
        with self._before_launch():
            candidates = self._search(self._search_body(spec))
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
                return self._accept(offer, self._create_body(spec, label, offer))
            except InsufficientCapacity as exc:
                log.info("%s: offer %s is gone (%s); trying the next", PROVIDER, offer.id,
                         exc.code)
                last = exc
        assert last is not None
        raise last

    def _search_body(self, spec: InstanceSpec) -> dict[str, Any]:
        options = spec.options
        bid = bool(options.get("interruptible")) or options.get("price") is not None
        body: dict[str, Any] = {
            "gpu_name": {"eq": normalize_gpu_name(spec.instance_type)},
            "rentable": {"eq": True},
            "rented": {"eq": False},
        }
        # One card unless asked: a missing count must not let the next-offer fallback
        # rent an 8-GPU box at eight times the price.
        body["num_gpus"] = {"eq": spec.gpu_count or 1}
        if spec.max_price_per_hour is not None:
            body["dph_total"] = {"lte": spec.max_price_per_hour}
        if spec.region:
            body["geolocation"] = {"in": [spec.region]}
        if spec.disk_gb is not None:
            body["disk_space"] = {"gte": spec.disk_gb}
            body["allocated_storage"] = spec.disk_gb
        for field, cond in (options.get("filters") or {}).items():
            body[field] = dict(cond)
        if options.get("offer_id") is not None:
            # The one offer asked for, still held to every other field of the spec.
            body["id"] = {"eq": int(options["offer_id"])}
        body["limit"] = int(options.get("search_limit", 10))
        body["type"] = "bid" if bid else "on-demand"
        # Cheapest first; among equal prices the more reliable host.
        body["order"] = [["dph_total", "asc"], ["reliability2", "desc"]]
        return body

    def _create_body(self, spec: InstanceSpec, label: str, offer: VastOffer) -> dict[str, Any]:
        options = spec.options
        body: dict[str, Any] = {"image": spec.image, "label": label,
                                "runtype": options.get("runtype", "ssh")}
        if spec.disk_gb is not None:
            body["disk"] = spec.disk_gb
        flags = [f"-e {k}={v}" for k, v in spec.env.items()]
        flags += [f"-p {p}:{p}" for p in spec.ports]
        if flags:
            body["env"] = " ".join(flags)
        if spec.command:
            body["onstart"] = spec.command
        if options.get("price") is not None:
            body["price"] = float(options["price"])
        elif options.get("interruptible") and offer.min_bid is not None:
            body["price"] = offer.min_bid
        # Fail fast instead of leaving a contract in "scheduling" that bills storage.
        body["cancel_unavail"] = True
        for key in VAST_CREATE_OPTIONS:
            if key in options:
                body[key] = options[key]
        return body

    def _accept(self, offer: VastOffer, body: dict[str, Any]) -> str:
        response = self._seam.request("PUT", f"{V0}/asks/{offer.id}/", op="launch",
                                      idempotent=False, json=body)
        data = self._answer(response)
        try:
            created = VastCreateResponse.model_validate(data)
        except pydantic.ValidationError:
            created = VastCreateResponse()
        if created.new_contract is None:
            # Vast answered 2xx: the instance may well exist. Temporary (outcome unknown):
            # the reconciler finds it by its label.
            raise ProviderUnavailable("launch answered without new_contract; the instance "
                                      "may exist", provider=PROVIDER,
                                      status_code=response.status_code)
        return str(created.new_contract)

    def _search(self, body: Mapping[str, Any]) -> list[VastOffer]:
        """Offers, cheapest first (then the more reliable); unreadable offers skipped."""
        response = self._seam.request("POST", f"{V0}/bundles/", op="search", idempotent=True,
                                      json=dict(body))
        data = self._answer(response)
        try:
            offers = VastSearchResponse.model_validate(data).offers
        except pydantic.ValidationError as exc:
            raise ProviderUnavailable("offer search answered without an offers list",
                                      provider=PROVIDER) from exc
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
        try:
            response = self._seam.request("GET", f"{V0}/instances/{pid}/", op="get",
                                          idempotent=True)
            data = self._answer(response)
        except ProviderNotFound:  # a 404 with Vast's body, or a refusal naming not_found
            return None
        if not isinstance(data, dict) or "instances" not in data:
            raise ProviderUnavailable("show instance answered without 'instances'",
                                      provider=PROVIDER, status_code=response.status_code)
        raw = data["instances"]
        if isinstance(raw, list):  # tolerate the legacy list shape
            raw = next((i for i in raw if isinstance(i, dict) and _as_int(i.get("id")) == pid),
                       None)
        if raw is None:
            return None
        return to_provider_instance(_parse_instance(raw))

    def list_instances(self) -> Sequence[ProviderInstance]:
        """Every page of the v1 listing; any failure (or a cursor loop) fails it all."""
        return [to_provider_instance(inst) for inst in self._pages()]

    def _pages(self) -> Iterator[VastInstance]:
        seen_tokens: set[str] = set()
        seen_ids: set[int] = set()
        token: str | None = None
        for _ in range(_MAX_PAGES):
            params: dict[str, Any] = {"limit": _PAGE}
            if token is not None:
                params["after_token"] = token
            # With the slash, as Vast's own SDK calls it (the spec's keys drop every
            # trailing slash; the v0 paths are known to need theirs).
            response = self._seam.request("GET", f"{V1}/instances/", op="list",
                                          idempotent=True, params=params)
            data = self._answer(response)
            try:
                page = VastListPage.model_validate(data)
            except pydantic.ValidationError as exc:
                raise ProviderUnavailable("instance listing page is unreadable",
                                          provider=PROVIDER) from exc
            for raw in page.instances:
                inst = _parse_instance(raw)
                if inst.id not in seen_ids:
                    seen_ids.add(inst.id)
                    yield inst
            token = page.next_token
            if token is None:
                return
            if token in seen_tokens:
                raise ProviderUnavailable("instance listing repeats a page cursor",
                                          provider=PROVIDER)
            seen_tokens.add(token)
        raise ProviderUnavailable(f"instance listing exceeds {_MAX_PAGES} pages",
                                  provider=PROVIDER)

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        """The cheapest rentable offer per (GPU name, GPU count), with where it is."""
        body = {"rentable": {"eq": True}, "rented": {"eq": False}, "limit": 1000,
                "type": "on-demand", "order": [["dph_total", "asc"]]}
        groups: dict[tuple[str, int], list[VastOffer]] = {}
        for offer in self._search(body):
            if offer.gpu_name is None or offer.dph_total is None:
                continue
            groups.setdefault((offer.gpu_name, offer.num_gpus or 1), []).append(offer)
        result: list[InstanceTypeOffer] = []
        for (gpu, count), offers in sorted(groups.items()):
            best = min(offers, key=lambda o: o.dph_total or 0.0)
            bids = [o.min_bid for o in offers if o.min_bid is not None]
            regions = sorted({o.geolocation or "unknown" for o in offers})
            result.append(InstanceTypeOffer(
                provider=PROVIDER,
                name=gpu,
                price_per_hour=float(best.dph_total or 0.0),
                regions=tuple(regions),
                gpus=count,
                gpu_description=f"{count}x {gpu}" + (
                    f" ({best.gpu_ram // 1024} GB)" if best.gpu_ram else ""),
                offer_id=str(best.id),
                spot_price_per_hour=min(bids) if bids else None,
                extra={"offers": len(offers), "machine_id": best.machine_id},
            ))
        return result

    # ---- commands --------------------------------------------------------------------

    def start(self, provider_instance_id: str) -> None:
        self._manage(provider_instance_id, "start", {"state": "running"})

    def stop(self, provider_instance_id: str) -> None:
        self._manage(provider_instance_id, "stop", {"state": "stopped"})

    def _manage(self, provider_instance_id: str, op: str, body: dict[str, Any]) -> None:
        pid = _instance_id(provider_instance_id)
        # Setting a desired state twice is harmless, so the seam may retry it.
        self._answer(self._seam.request("PUT", f"{V0}/instances/{pid}/", op=op,
                                        idempotent=True, json=body))

    def restart(self, provider_instance_id: str) -> None:
        pid = _instance_id(provider_instance_id)
        # A blind retry could reboot twice mid-job: only retried when surely unsent.
        self._answer(self._seam.request("PUT", f"{V0}/instances/reboot/{pid}/", op="restart",
                                        idempotent=False))

    def terminate(self, provider_instance_id: str) -> None:
        """Destroy; an instance Vast does not know is already gone (success)."""
        pid = _instance_id(provider_instance_id)
        try:
            self._answer(self._seam.request("DELETE", f"{V0}/instances/{pid}/",
                                            op="terminate", idempotent=True))
        except ProviderNotFound:
            return


# ---- helpers -------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _instance_id(provider_instance_id: str) -> int:
    pid = _as_int(provider_instance_id)
    if pid is None:
        raise ValidationError("provider_instance_id", "Vast instance ids are integers",
                              value=provider_instance_id)
    return pid


def _json_or_none(response: httpx.Response) -> Any:
    """The JSON body; None for an empty one (destroy may answer 200 with nothing)."""
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _parse_instance(raw: Any) -> VastInstance:
    try:
        return VastInstance.model_validate(raw)
    except pydantic.ValidationError as exc:
        # Without an id we cannot say which instance this is: the listing is unusable.
        raise ProviderUnavailable("an instance record has no usable id",
                                  provider=PROVIDER) from exc
