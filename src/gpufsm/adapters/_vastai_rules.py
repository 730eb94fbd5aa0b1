"""Vast.ai's dialect data: status and error tables, error bodies, the two launch bodies.

The tables are data the shared dialect interprets (``_dialect``); ``vast_state`` is Vast's
one status that three fields make; ``search_body`` and ``create_body`` are the two requests
of Vast's search-then-accept launch, which the adapter (``vastai``) sends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import httpx
from pydantic import (
    SecretStr,
)

from gpufsm.adapters._dialect import (
    SERVER_ERRORS,
    ErrorReport,
    ErrorRules,
    json_or_none,
    scrub,
)
from gpufsm.adapters._vastai_models import (
    VAST_CREATE_OPTIONS,
    VastErrorBody,
    VastOffer,
    normalize_gpu_name,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    QuotaExceeded,
    RateLimited,
)
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "NULL_STATUS",
    "VAST_ERRORS",
    "VAST_ERROR_PHRASES",
    "VAST_ERROR_PRIORITY",
    "VAST_RULES",
    "VAST_STATUSES",
    "create_body",
    "error_report",
    "refused_on_200",
    "search_body",
    "vast_state",
]

log = logging.getLogger("gpufsm.adapters.vastai")

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
    # Not a Vast code: Vast documents no quota error. The key under which the phrase of
    # an account-limit refusal (below) is recorded.
    "instance_limit": QuotaExceeded,
})

#: Phrases Vast puts in ``msg``/``detail``/plain-text bodies without any code.
VAST_ERROR_PHRASES: Mapping[str, str] = MappingProxyType({
    "lacks credit": "insufficient_credit",  # "Your account lacks credit"
    "insufficient credit": "insufficient_credit",
    "too frequent": "rate_limit_exceeded",  # "API requests too frequent ..."
    "invalid user key": "auth_error",  # 401, and the search endpoint's odd 404
    # An account limit on instances, in an ``invalid_args`` 400 ("... account instance
    # limit reached"): a quota, which another provider may not share, not a bad request.
    "instance limit": "instance_limit",
})

#: When one body names several codes (404 ``error: invalid_args`` with ``msg: "...
#: no_such_ask ..."``), the most specific class wins; the generic InvalidRequest last.
VAST_ERROR_PRIORITY: tuple[type[ProviderError], ...] = (
    InsufficientCredit, AuthError, RateLimited, InsufficientCapacity, ProviderNotFound,
    QuotaExceeded, InvalidRequest,
)
_EMBEDDED = re.compile(r"error\s+(\d{3})/\d+:\s*([a-z_]+)", re.IGNORECASE)

#: 429 is always RateLimited (its body may be plain text) and 5xx always the seam's
#: ProviderUnavailable; when one body names several codes the most specific class wins.
VAST_RULES = ErrorRules("vastai", VAST_ERRORS, log, phrases=VAST_ERROR_PHRASES,
                    priority=VAST_ERROR_PRIORITY, status_decides=SERVER_ERRORS,
                    forced={429: RateLimited})

# ---- error bodies ----------------------------------------------------------------------


def error_report(response: httpx.Response) -> ErrorReport:
    """Vast's error body in whichever of its shapes: codes from ``error`` and from
    ``"error 404/3603: <code> ..."`` in the text (the rules add its phrases); plain text
    (429 "API requests too frequent") is the text. Bare words in free text are not
    codes: a message that merely mentions ``not_found`` must not read as "gone"."""
    data = json_or_none(response)
    if isinstance(data, dict):
        body = VastErrorBody.model_validate(data)
    elif isinstance(data, str):
        body = VastErrorBody(msg=data[:500])
    elif data is None and response.text.strip():
        body = VastErrorBody(msg=response.text.strip()[:500])
    else:
        return ErrorReport(())
    text = body.text or ""
    codes = [body.error.lower()] if body.error else []
    codes += [match.group(2).lower() for match in _EMBEDDED.finditer(text)]
    return ErrorReport(codes, text)


def refused_on_200(response: httpx.Response, data: Any,
                    secret: SecretStr | None = None) -> ProviderError | None:
    """Vast sometimes answers 200 with ``success: false`` and a ``msg``: still a refusal."""
    if not isinstance(data, dict) or data.get("success") is not False:
        return None
    report = error_report(response)
    error = VAST_RULES.error(report, response, secret=secret)
    if error is None:
        text = scrub(report.text or "success=false", secret)
        error = InvalidRequest(f"refused: {text[:300]}", provider="vastai",
                               code=data.get("error") if isinstance(data.get("error"), str)
                               else None, status_code=response.status_code)
    return error


# ---- the two launch bodies -------------------------------------------------------------


def search_body(spec: InstanceSpec) -> dict[str, Any]:
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

def create_body(spec: InstanceSpec, label: str, offer: VastOffer) -> dict[str, Any]:
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
