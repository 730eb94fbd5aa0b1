"""RunPod pods through REST v1 (``https://rest.runpod.io/v1``), offers from the v2 catalog.

The lifecycle (create, list, get, stop, start, restart, delete) uses REST v1, the API
RunPod documents for pods. v1 has no GPU catalog, so ``instance_types`` reads the v2
catalog (``GET /v2/catalog/gpus`` on ``https://api.runpod.io``, same bearer key); when
``base_url`` is not the production v1 host (an emulator, a proxy) the v2 path is asked of
that same host instead. The v2 catalog carries no spot price, so one GraphQL query
(``gpuTypes { secureSpotPrice communitySpotPrice }``, ``POST /graphql`` on the v2 host)
adds it; if that query fails the offers come without spot prices, never without offers.

**Status.** v1's ``desiredStatus`` (RUNNING | EXITED | TERMINATED) is what RunPod *intends*,
not what it observed: a freshly rented pod says RUNNING while its image is still being
pulled. Readiness comes from ``publicIp`` and ``portMappings``, which stay empty until the
container is up. So the raw status reported here is a composite, always starting with
the word the API sent, with a suffix only where another field changes its meaning:

======================== ============ ==============================================
raw status               state        when
======================== ============ ==============================================
``RUNNING``              RUNNING      desiredStatus RUNNING, publicIp and portMappings set
``RUNNING:initializing`` STARTING     desiredStatus RUNNING, either of them still empty
``EXITED``               STOPPED      desiredStatus EXITED (stopped by the user)
``EXITED:interrupted``   FAILED       EXITED and lastStatusChange tells of an interruption
``EXITED:error``         FAILED       EXITED and lastStatusChange says RunPod or an error
                                      stopped it
``TERMINATED``           TERMINATED   desiredStatus TERMINATED, nothing left attached
``TERMINATED:releasing`` TERMINATING  TERMINATED but publicIp/portMappings still set
``PROVISIONING`` …       (v2 words)   the v2 PodStatus vocabulary, verbatim
======================== ============ ==============================================

An interrupted (spot) or platform-stopped pod is FAILED rather than STOPPED: nobody asked
for the stop, its volume still bills, and STOPPED would hide it as if the user had
stopped it. Those two suffixes come from ``lastStatusChange``, which is free text, so the
markers matched are listed in ``_INTERRUPTED_MARKERS`` and ``_PROVIDER_EXIT_MARKERS``.
A TERMINATED pod that still shows its address is TERMINATING, so a wrong guess costs one
more look, never an unwatched machine.

**Errors.** v1 documents only ``401 UnauthorizedError {message}``; its other errors are
bare statuses, in practice ``{"error": "...", "status": N}``. v2 answers RFC 7807
``application/problem+json`` ``{title, status, detail, errors?}``. RunPod documents no
capacity or credit errors: those are recognised from the message text (see
``RUNPOD_ERRORS``), as third-party clients of the API do.

**Ownership.** RunPod has no tags: the pod ``name`` is ``request.display_name``
(``<tag>/<user name>``, at most 191 characters) and the tag is read back from it.

**Launch.** ``22/tcp`` is always exposed and a COMMUNITY pod asks for a public IP
(``supportPublicIp``, unless the options say otherwise): readiness is read from the
address and the port map, so a pod without them would look STARTING for ever.
``spec.command`` becomes ``dockerStartCmd ["sh", "-c", command]``; provider-only fields
come from ``spec.options`` under their PodCreateInput names (``cloudType``,
``interruptible``, ``volumeInGb`` …). The GPU type and data center enums in the spec are
snapshots that grow, so names are left for RunPod to judge.

**Not found.** v1 documents 404 "Pod not found." with no schema; RunPod is seen to send it
as ``{"error": "Pod not found.", "status": 404}``, and v2 as problem+json with title
``Not Found``. Only those two envelopes confirm absence (``get`` → None, ``terminate`` →
done). A 404 in any other shape (an HTML page, an empty body: a proxy or a wrong
``base_url``) is the seam's unknown outcome, never "gone".

**Terminate.** v1 documents 204 for DELETE and 400 "Invalid Pod ID.". RunPod's not-found
is taken as done; a 400 is taken as done only when a GET then answers not-found.

**Rate limits.** RunPod documents none for v1; 5 requests/s with a burst of 5 is our
guess (``RUNPOD_RATE_LIMITS``). 429 answers carry ``Retry-After``, which the seam honours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from gpufsm.adapters._base import AdapterProfile, HttpAdapter
from gpufsm.adapters._dialect import (
    Endpoint,
    ErrorReport,
    ErrorRules,
    StatusTable,
    json_or_none,
    parse_options,
    refuse,
)
from gpufsm.adapters._http import RateLimit
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
)
from gpufsm.adapters._runpod_models import (
    RUNPOD_ERRORS,
    RUNPOD_STATUSES,
    SPOT_PRICES_QUERY,
    Catalog,
    CatalogGpu,
    Pod,
    PodList,
    RunPodOptions,
    SpotGpu,
    SpotPrices,
    raw_status,
    runpod_raw_status,
)
from gpufsm.errors import InvalidRequest, ProviderError, ValidationError
from gpufsm.machines import Capabilities
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec

__all__ = ["RUNPOD_ENDPOINTS", "RUNPOD_ERRORS", "RUNPOD_RATE_LIMITS", "RUNPOD_STATUSES",
           "RunPodAdapter", "map_runpod_error", "runpod_raw_status"]

log = logging.getLogger("gpufsm.adapters.runpod")

PROVIDER = "runpod"
DEFAULT_BASE_URL = PROVIDERS[PROVIDER].default_url
V2_BASE_URL = "https://api.runpod.io"
_V1 = "/v1"

#: Undocumented for v1; a guess that stays well clear of trouble.
RUNPOD_RATE_LIMITS: Mapping[str, RateLimit] = {"default": RateLimit(5.0, burst=5)}

_NAME_MAX = 191  # PodCreateInput.name maxLength
_TAG_ROOM = 64  # what we keep free in the name for "<tag>/"
_SSH_PORT = 22

#: RunPod's operations (start, stop and restart answer 200 with no documented body, and
#: are retried as they always were). v2 (the catalog) lives on another host in
#: production, given as ``{v2}``.
RUNPOD_ENDPOINTS: Mapping[str, Endpoint] = {
    "launch": Endpoint("POST", f"{_V1}/pods", idempotent=False),
    "get": Endpoint("GET", f"{_V1}/pods/{{id}}", idempotent=True),
    "list": Endpoint("GET", f"{_V1}/pods", idempotent=True),
    "start": Endpoint("POST", f"{_V1}/pods/{{id}}/start", idempotent=True),
    "stop": Endpoint("POST", f"{_V1}/pods/{{id}}/stop", idempotent=True),
    "restart": Endpoint("POST", f"{_V1}/pods/{{id}}/restart", idempotent=True),
    "terminate": Endpoint("DELETE", f"{_V1}/pods/{{id}}", idempotent=True),
    "instance_types": Endpoint("GET", "{v2}/v2/catalog/gpus", idempotent=True),
    # A read-only GraphQL query (it changes nothing, so a retry may repeat it).
    "spot_prices": Endpoint("POST", "{v2}/graphql", idempotent=True),
}

#: ``message:`` keys are fragments of the provider's text (RunPod documents no codes),
#: read except at 401, 403 and 429, which mean what they say whatever the text; then the
#: v2 title, v1's own not-found envelope, the status. The code kept is the v2 title.
_RULES = ErrorRules(
    PROVIDER, RUNPOD_ERRORS, log, text_blind=frozenset({401, 403, 429}), records="report",
    phrases={k.removeprefix("message:"): k for k in RUNPOD_ERRORS if k.startswith("message:")},
    text_limit=400)
_STATUS = StatusTable(PROVIDER, RUNPOD_STATUSES, log)

#: Fields a pod cannot take: refused by name, not dropped.
_REFUSED: Mapping[str, str] = {
    "ssh_key_names": "RunPod installs the account's SSH keys itself and takes no key "
                     "names; put a public key in env PUBLIC_KEY instead",
    "max_price_per_hour": "RunPod's pod API takes no price cap; choose the GPU type (and "
                          "options.cloudType) by price instead",
}


# ---- errors ------------------------------------------------------------------------------


def _report(response: httpx.Response) -> ErrorReport:
    """A v2 problem+json, v1's ``{"error", "status"}`` or plain text, as a report whose
    codes are the title, v1's envelope (only when its status is the HTTP status: a 404 in
    any other shape confirms nothing) and the status."""
    status = response.status_code
    data = json_or_none(response)
    title: str | None = None
    message = response.text.strip()[:300]
    v1 = False
    if isinstance(data, dict):
        title = data.get("title") if isinstance(data.get("title"), str) else None
        message = next((data[k] for k in ("detail", "error", "message")
                        if isinstance(data.get(k), str) and data[k]), "")
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            message = f"{message} ({'; '.join(str(e) for e in errors[:3])})"
        v1 = isinstance(data.get("error"), str) and data.get("status") == status
    codes = [f"title:{title}"] if title else []
    codes += [f"v1:{status}"] if v1 else []
    text = f"HTTP {status}" + (f" {title}" if title else "") + (f": {message}" if message else "")
    return ErrorReport([*codes, f"status:{status}"], text, code=title)


def map_runpod_error(response: httpx.Response, provider: str = PROVIDER,
                     *, secret: SecretStr | str | None = None) -> ProviderError | None:
    """Map a RunPod error response with ``RUNPOD_ERRORS``; None lets the seam use the status.

    ``secret`` (the API key) is blanked out of any text we keep, in case a provider
    message ever echoes it.
    """
    return _RULES.error(_report(response), response, secret=secret)


# ---- the adapter -------------------------------------------------------------------------


class RunPodAdapter(HttpAdapter):
    """One RunPod account. See the module docstring for what each answer means."""

    profile = AdapterProfile(
        PROVIDERS[PROVIDER], statuses=RUNPOD_STATUSES,
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_runpod_error, rate_limits=RUNPOD_RATE_LIMITS)
    endpoints = RUNPOD_ENDPOINTS

    @property
    def _v2_root(self) -> str:
        # v2 lives on another host in production; anywhere else one host serves both.
        return V2_BASE_URL if self._base_url == DEFAULT_BASE_URL else self._base_url

    # ---- validation and the create body ---------------------------------------------------

    def validate(self, spec: InstanceSpec) -> None:
        """Every spec field is sent in PodCreateInput terms (instance_type as gpuTypeIds,
        region as dataCenterIds, image, name, disk_gb, gpu_count, command, env, ports,
        options) or refused here (ssh_key_names, max_price_per_hour): none is dropped."""
        parse_options(RunPodOptions, spec.options, provider="RunPod pod")
        options = spec.options
        if not spec.image and "templateId" not in options:
            raise ValidationError("image", "required: RunPod runs a container image "
                                  "(or give options.templateId)")
        if spec.name is not None and len(spec.name) > _NAME_MAX - _TAG_ROOM:
            raise ValidationError(
                "name", f"at most {_NAME_MAX - _TAG_ROOM} characters: RunPod names hold "
                f"{_NAME_MAX} and the ownership tag needs the rest", value=spec.name)
        refuse(spec, _REFUSED)
        if spec.command is not None and "dockerStartCmd" in options:
            raise ValidationError("command", "give either command or options.dockerStartCmd")
        if spec.region is not None and "dataCenterIds" in options:
            raise ValidationError("region", "give either region or options.dataCenterIds")
        for key in spec.env:
            if not key or "=" in key:
                raise ValidationError(f"env.{key}", "a variable name, without '='")

    def create_body(self, request: LaunchRequest) -> dict[str, Any]:
        """The PodCreateInput for ``request`` (validated first)."""
        spec = request.spec
        self.validate(spec)
        name = request.display_name
        if len(name) > _NAME_MAX:
            raise ValidationError("name", f"tag and name together exceed {_NAME_MAX} characters")
        # 22/tcp always: readiness is read from portMappings, and SSH is how users get in.
        ports = [f"{_SSH_PORT}/tcp"] + [f"{p}/tcp" for p in spec.ports if p != _SSH_PORT]
        body: dict[str, Any] = {
            "name": name,
            "computeType": "GPU",
            "gpuTypeIds": [spec.instance_type],
            "gpuCount": spec.gpu_count or 1,
            "ports": ports,
        }
        if spec.image:
            body["imageName"] = spec.image
        if spec.disk_gb is not None:
            body["containerDiskInGb"] = spec.disk_gb
        if spec.env:
            body["env"] = dict(spec.env)
        if spec.region is not None:
            body["dataCenterIds"] = [spec.region]
        if spec.command is not None:
            body["dockerStartCmd"] = ["sh", "-c", spec.command]
        body.update(spec.options)
        if body.get("cloudType") == "COMMUNITY":
            # Without a public IP the pod never shows an address and would read as
            # STARTING forever; ask for one unless the user decided otherwise.
            body.setdefault("supportPublicIp", True)
        return body

    # ---- lifecycle -----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        body = self.create_body(request)
        response = self._call("launch", json=body)
        # Unreadable, the pod may well exist: "unknown", and the reconciler finds the tag.
        return self._parse(response, Pod, "launch").id

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        # None on RunPod's own not-found envelope, and only that.
        response = self._call_unless_absent("get", id=provider_instance_id,
                                            params={"includeMachine": "true"})
        if response is None:
            return None
        return self._instance(self._parse(response, Pod, "get"))

    def list_instances(self) -> Sequence[ProviderInstance]:
        # v1 documents no pagination: one call returns every pod of the account
        # (serverless workers excluded, as includeWorkers defaults to false).
        response = self._call("list", params={"includeMachine": "true"})
        pods = self._parse(response, PodList, "list").root
        return [self._instance(pod) for pod in pods]

    def start(self, provider_instance_id: str) -> None:
        self._call("start", id=provider_instance_id)

    def stop(self, provider_instance_id: str) -> None:
        self._call("stop", id=provider_instance_id)

    def restart(self, provider_instance_id: str) -> None:
        # runpod/runpod-python#450: restart has answered 200 without restarting; the
        # engine's observations (STARTING, then RUNNING) are what confirm it.
        self._call("restart", id=provider_instance_id)

    def terminate(self, provider_instance_id: str) -> None:
        try:  # RunPod's own not-found: already gone, terminate is idempotent
            self._call_unless_absent("terminate", id=provider_instance_id)
        except InvalidRequest as exc:
            # v1 documents 400 "Invalid Pod ID." for DELETE, never 404. A 400 alone is
            # not proof of absence; a GET answering not-found is.
            if exc.status_code == 400 and self.get(provider_instance_id) is None:
                return
            raise

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        response = self._call("instance_types", v2=self._v2_root,
                              params={"include": "AVAILABILITY", "product": "POD"})
        catalog = self._parse(response, Catalog, "instance_types")
        spot = self._spot_prices()
        return [offer for gpu in catalog.gpus
                if (offer := self._offer(gpu, spot.get(gpu.id))) is not None]

    def _spot_prices(self) -> dict[str, SpotGpu]:
        """Spot (interruptible) prices per GPU type, which the v2 catalog does not carry,
        from one GraphQL query on the v2 host; {} when it fails (logged): the catalog
        still answers, with on-demand prices only. Tried once, as a listing's extra."""
        try:
            response = self._call("spot_prices", v2=self._v2_root, attempts=1,
                                  json={"query": SPOT_PRICES_QUERY})
            answer = self._parse(response, SpotPrices, "spot_prices")
        except ProviderError as exc:
            log.info("runpod: spot prices unreadable (%s): offers without spot", exc)
            return {}
        if answer.errors:
            log.info("runpod: spot prices refused: %s", str(answer.errors[0])[:200])
        return answer.by_gpu()

    # ---- helpers -------------------------------------------------------------------------

    @staticmethod
    def _instance(pod: Pod) -> ProviderInstance:
        raw = raw_status(pod)
        state = _STATUS.state(pod.id, raw)
        ssh_port = (pod.port_mappings or {}).get(str(_SSH_PORT)) if pod.runtime_attached else None
        instance_type = (pod.gpu.id if pod.gpu and pod.gpu.id else None) or (
            pod.machine.gpu_type_id if pod.machine else None)
        return ProviderInstance(
            provider_instance_id=pod.id,
            raw_status=raw,
            state=state,
            tag=tag_from_name(pod.name),
            name=pod.name,
            ip=pod.public_ip or None,
            region=pod.machine.data_center_id if pod.machine else None,
            instance_type=instance_type,
            price_per_hour=pod.cost_per_hr,
            ssh_port=ssh_port,
            detail=pod.last_status_change or None,
        )

    @staticmethod
    def _offer(gpu: CatalogGpu, spot: SpotGpu | None) -> InstanceTypeOffer | None:
        """One offer per GPU type at one GPU; secure-cloud prices (on demand and spot)
        unless only community."""
        if gpu.secure is not False and gpu.price.secure is not None:
            price = gpu.price.secure
            spot_price = spot.secure if spot else None
        elif gpu.price.community is not None:
            price = gpu.price.community
            spot_price = spot.community if spot else None
        else:
            return None
        regions = tuple(dc.id for dc in gpu.data_centers
                        if (dc.availability or "NONE").upper() != "NONE")
        label = gpu.name or gpu.id
        memory = f" ({gpu.memory} GB)" if gpu.memory else ""
        return InstanceTypeOffer(
            provider=PROVIDER,
            name=gpu.id,
            price_per_hour=price,
            regions=regions,
            gpus=1,
            gpu_description=f"{label}{memory}",
            description=f"{label}, price per GPU; gpu_count multiplies it",
            spot_price_per_hour=spot_price or None,
            extra={
                "community_price_per_hour": gpu.price.community,
                "community_spot_price_per_hour": spot.community if spot else None,
                "max_count": dict(gpu.max_count or {}),
                "availability": gpu.availability,
            },
        )

