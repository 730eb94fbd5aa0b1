"""Lambda Cloud's API v1 (spec 1.8.3) on loopback, over a SimulatedCloud.

The dialect answers on the production paths (``/api/v1/...``) with Lambda's envelopes
(``{"data": ...}`` / ``{"error": {code, message, suggestion}}``), status words, HTTP codes
and launch-body rules, so the real adapter can be exercised over real sockets. Simulator
phases become Lambda words (stopping/stopped cannot happen on Lambda: build the cloud
with ``Capabilities(stop=False)``); a ``raw_override`` is reported verbatim. Launch
options that Lambda keeps (ssh keys, tags, hostname, filesystems …) live in
``SimInstance.meta``.

It also keeps the account's SSH keys (``/ssh-keys``: list, add, generate, delete), since
every launch names one and clients manage them through the same API.

Choices where the spec is silent: the 429 body is plain text (Lambda documents none, and
clients key on the status); 5xx bodies use ``global/internal-error``; a simulated
timeout is a 504; the simulator's "no credit" is Lambda's launch-time billing refusal,
403 ``global/invalid-address``; restarting an instance in the wrong state is a 400
``global/invalid-parameters``; adding a key under a name already taken, and deleting a
key id that does not exist, are 400 ``global/invalid-parameters`` (the only error those
paths document). A terminate takes many ``instance_ids`` at once: one id the account does
not hold refuses the whole request (404 ``global/object-does-not-exist``, the one error
the path documents for an instance) and terminates none; an id already terminating, or
terminated and still listed, is answered as it stands (terminating it again is no error).
"""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from gpufsm.adapters import TAG_PREFIX, InstanceTypeOffer, tag_from_name
from gpufsm.errors import (
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
)
from gpufsm.testing._sim import SimInstance, SimulatedCloud
from gpufsm.testing.emulators._server import EmulatorRequest, EmulatorResponse

__all__ = ["LAMBDA_CATALOG", "LAMBDA_PHASE_WORDS", "LAMBDA_REGION_CODES", "LambdaDialect"]

#: Simulator phase → Lambda ``InstanceStatus``. Lambda shows ``booting`` from the
#: moment of launch and again while an instance restarts.
LAMBDA_PHASE_WORDS: Mapping[str, str] = {
    "provisioning": "booting",
    "booting": "booting",
    "rebooting": "booting",
    "running": "active",
    "unhealthy": "unhealthy",
    "preempted": "preempted",
    "terminating": "terminating",
    "terminated": "terminated",
}

#: ``PublicRegionCode`` (spec 1.8.3): launch refuses any other ``region_name``.
LAMBDA_REGION_CODES: tuple[str, ...] = (
    "europe-central-1", "asia-south-1", "australia-east-1", "me-west-1",
    "asia-northeast-1", "asia-northeast-2", "us-east-1", "us-west-2", "us-west-1",
    "us-south-1", "us-west-3", "us-midwest-1", "us-east-2", "us-south-2", "us-south-3",
    "us-east-3", "us-midwest-2",
)
#: What ``gpufsm emulator --dialect lambda`` sells, in Lambda's words. Lambda prices a type
#: once for every region and sells no spot, so its A100 differs in price by type (one GPU,
#: eight), not by region; the last type is sold out everywhere.
LAMBDA_CATALOG: tuple[InstanceTypeOffer, ...] = (
    InstanceTypeOffer("lambda", "gpu_1x_a10", 0.75, ("us-east-1", "us-west-1"), 1,
                      "A10 (24 GB PCIe)"),
    InstanceTypeOffer("lambda", "gpu_1x_a100_sxm4", 1.29, ("us-east-1", "us-west-2"), 1,
                      "A100 (40 GB SXM4)"),
    InstanceTypeOffer("lambda", "gpu_8x_a100_80gb_sxm4", 14.32, ("us-east-1",), 8,
                      "A100 (80 GB SXM4)"),
    InstanceTypeOffer("lambda", "gpu_1x_h100_pcie", 2.49, ("us-west-3",), 1,
                      "H100 (80 GB PCIe)"),
    InstanceTypeOffer("lambda", "gpu_8x_h100_sxm5", 23.92, (), 8, "H100 (80 GB SXM5)"),
)

# The spec describes one region; the others are described by their code rather than
# by a guess.
_REGION_DESCRIPTIONS = {"us-west-1": "California, USA"}

_TAG_KEY = "gpufsm"  # where gpufsm's adapter keeps its ownership tag
_PREFIX = "/api/v1"
_HAS_IP = frozenset({"running", "rebooting", "unhealthy"})
_NOT_LAUNCHED = frozenset({"provisioning", "booting", "rebooting"})
_GONE = frozenset({"terminating", "terminated"})
_HOSTNAME_RE = re.compile(r"^[a-z0-9][0-9a-z-]{0,62}$")
_TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9-:]+$")
_MOUNT_RE = re.compile(r"^(/home|/lambda/nfs|/data)[//a-zA-Z0-9-]*$")
_USER_DATA_MAX = 1_000_000
_SSH_KEY_NAME_MAX = 64
_PUBLIC_KEY_MAX = 4096

#: The spec's default ``message`` and ``suggestion`` for each documented error code
#: (``ApiError*`` schemas, 1.8.3); a schema that requires a suggestion has one here, so
#: an injected error parses with the generated client's models.
_ERROR_TEXT: Mapping[str, tuple[str, str | None]] = {
    "global/invalid-api-key": ("API key was invalid, expired, or deleted.",
                               "Check your API key or create a new one, then try again."),
    "global/account-inactive": ("Your account is inactive.",
                                "Make sure you have verified your email address and have a "
                                "valid payment method. Contact Support if problems continue."),
    "global/invalid-address": ("Your billing address is invalid.",
                               "Make sure your billing address is valid. Contact Support if "
                               "problems continue."),
    "global/invalid-parameters": ("Invalid request data.", None),
    "global/object-does-not-exist": ("Specified instance does not exist.",
                                     "Check the names and ids in your request."),
    "instance-operations/launch/insufficient-capacity": (
        "Not enough capacity to fulfill launch request.", None),
    "instance-operations/launch/file-system-in-wrong-region": (
        "File system is in a different region.", None),
    "global/quota-exceeded": ("Quota exceeded.", "Contact Support to increase your quota."),
    "global/duplicate": ("A resource with this name already exists.", None),
    "filesystems/filesystem-in-use": ("Filesystem is in use.", None),
    "firewall-rulesets/firewall-ruleset-in-use": (
        "Firewall ruleset is in use by one or more instances.",
        "Terminate all instances that are using the ruleset before deleting it."),
    "global/internal-error": ("An internal server error occurred.",
                              "Try again later. Contact Support if the problem persists."),
}
_UPSTREAM_TEXT = ("Provider unavailable", "Try again shortly")  # ``provider/*`` codes


class _BadRequestError(Exception):
    """A launch/rename body Lambda would refuse with 400 global/invalid-parameters."""


def _error(status: int, code: str, message: str,
           suggestion: str | None = None) -> EmulatorResponse:
    body: dict[str, str] = {"code": code, "message": message}
    if suggestion is not None:
        body["suggestion"] = suggestion
    return EmulatorResponse(status, {"error": body})


def _invalid(message: str) -> EmulatorResponse:
    return _error(400, "global/invalid-parameters", f"Invalid request data: {message}")


def _instance_not_found() -> EmulatorResponse:
    return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")


class LambdaDialect:
    """Lambda Cloud API v1 over ``cloud``.

    ``known_ssh_keys``: when given, the account starts with these keys (``/ssh-keys``
    lists them) and launch refuses other key names as Lambda does (404
    ``global/object-does-not-exist``); keys added or deleted through ``/ssh-keys`` join or
    leave the set. None accepts any name at launch (``/ssh-keys`` still keeps what is
    added), so a cloud built without keys needs no set-up step.
    """

    name = "lambda"
    catalog = LAMBDA_CATALOG
    id_prefix: str | None = None

    def __init__(self, cloud: SimulatedCloud, *,
                 known_ssh_keys: Iterable[str] | None = None) -> None:
        self.cloud = cloud
        self.known_ssh_keys = set(known_ssh_keys) if known_ssh_keys is not None else None
        # The account's keys (id → SSHKey), seeded with the known names; adding and
        # deleting one keeps ``known_ssh_keys`` in step when it is a set (None: launch
        # accepts any name, whatever is stored).
        self._ssh_keys: dict[str, dict[str, str]] = {}
        self._ssh_serial = 0
        self._ssh_lock = threading.Lock()
        for key_name in sorted(self.known_ssh_keys or ()):
            self._store_key(key_name, _public_key(key_name))
        # Types are fixed for a cloud's life; read them once without counting a call.
        calls = cloud.calls.copy()
        self._offers = {o.name: o for o in cloud.instance_types()}
        cloud.calls = calls

    # ---- Dialect ---------------------------------------------------------------------

    def unauthorized(self) -> EmulatorResponse:
        return _error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                      "Check your API key or create a new one, then try again.")

    def rate_limited(self) -> EmulatorResponse:
        # No documented body, code or header: a status-only answer, as from a gateway.
        return EmulatorResponse(429, "Too Many Requests")

    def server_error(self) -> EmulatorResponse:
        return _error(500, "global/internal-error", "An internal server error occurred.",
                      "Try again later. Contact Support if the problem persists.")

    def provider_error(self, request: EmulatorRequest, status: int, code: str,
                       message: str | None) -> EmulatorResponse:
        """Any documented error ``code`` in Lambda's envelope, with the spec's own
        message and suggestion for it, so a test can make one happen that the simulated
        cloud has no cause for (an inactive account, a filesystem in the wrong region)."""
        default, suggestion = _ERROR_TEXT.get(
            code, _UPSTREAM_TEXT if code.startswith("provider/") else (code, None))
        if code == "global/object-does-not-exist" and request.path.endswith("/launch"):
            default = "A resource named in the launch request does not exist."
        return _error(status, code, message or default, suggestion)

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        if not request.path.startswith(f"{_PREFIX}/"):
            return EmulatorResponse(404, "Not Found")
        parts = [urllib.parse.unquote(p) for p in request.path[len(_PREFIX) + 1:].split("/")]
        route = (request.method, *parts)
        try:
            answer = self._route(route, request)
        except _BadRequestError as exc:
            return _invalid(str(exc))
        except ProviderError as exc:
            return self._from_sim(exc)
        if answer is not None:
            return answer
        return EmulatorResponse(404, "Not Found")

    def _route(self, route: tuple[str, ...], request: EmulatorRequest) -> EmulatorResponse | None:
        """The route's answer, or None when no route matches (the caller's 404)."""
        match route:
            case ("GET", "instances"):
                return self._list()
            case ("GET", "instances", pid):
                return self._get(pid)
            case ("POST", "instances", pid):
                return self._rename(pid, request)
            case ("GET", "instance-types"):
                return self._instance_types()
            case ("POST", "instance-operations", "launch"):
                return self._launch(request)
            case ("POST", "instance-operations", "restart"):
                return self._restart(request)
            case ("POST", "instance-operations", "terminate"):
                return self._terminate(request)
            case ("GET", "ssh-keys"):
                return self._list_ssh_keys()
            case ("POST", "ssh-keys"):
                return self._add_ssh_key(request)
            case ("DELETE", "ssh-keys", key_id):
                return self._delete_ssh_key(key_id)
        return None

    # ---- routes ----------------------------------------------------------------------

    def _list(self) -> EmulatorResponse:
        views = self.cloud.list_instances()  # outages: an error, or the empty lie
        data = [self._instance(self.cloud.instance(v.provider_instance_id)) for v in views]
        return EmulatorResponse(200, {"data": data})

    def _get(self, pid: str) -> EmulatorResponse:
        if self.cloud.get(pid) is None:
            return _instance_not_found()
        return EmulatorResponse(200, {"data": self._instance(self.cloud.instance(pid))})

    def _rename(self, pid: str, request: EmulatorRequest) -> EmulatorResponse:
        body = _object(request)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            raise _BadRequestError("name must be a string of at most 64 characters")
        if self._existing(pid) is None:
            return _instance_not_found()
        if name is not None:
            try:
                self.cloud.rename(pid, name)
            except KeyError:
                return _instance_not_found()
        return EmulatorResponse(200, {"data": self._instance(self.cloud.instance(pid))})

    def _instance_types(self) -> EmulatorResponse:
        data = {
            offer.name: {
                "instance_type": self._instance_type(offer.name, offer.price_per_hour),
                "regions_with_capacity_available": [_region(r) for r in offer.regions],
            }
            for offer in self.cloud.instance_types()
        }
        return EmulatorResponse(200, {"data": data})

    def _launch(self, request: EmulatorRequest) -> EmulatorResponse:
        body = _object(request)
        meta = _check_launch(body)
        if self.known_ssh_keys is not None:
            for key in meta["ssh_key_names"]:
                if key not in self.known_ssh_keys:
                    return _error(404, "global/object-does-not-exist",
                                  f"SSH key {key!r} does not exist.",
                                  "Check the SSH key name, or add the key first.")
        name = body.get("name") or ""
        tag = next((f"{TAG_PREFIX}{t['value']}" for t in meta["tags"]
                    if t["key"] == _TAG_KEY and t["value"]), None) or tag_from_name(name)
        try:
            pid = self.cloud.create_instance(instance_type=body["instance_type_name"],
                                             region=body["region_name"], name=name, tag=tag,
                                             meta=meta)
        except ProviderError as exc:
            return self._from_sim(exc, launch=True)
        return EmulatorResponse(200, {"data": {"instance_ids": [pid]}})

    def _restart(self, request: EmulatorRequest) -> EmulatorResponse:
        ids = _instance_ids(request)
        for pid in ids:
            self.cloud.restart(pid)  # ProviderNotFound → 404, wrong state → 400
        data = [self._instance(self.cloud.instance(pid)) for pid in ids]
        return EmulatorResponse(200, {"data": {"restarted_instances": data}})

    def _terminate(self, request: EmulatorRequest) -> EmulatorResponse:
        ids = _instance_ids(request)
        # Lambda answers not-found for an unknown id (the simulator alone would not), for
        # the whole request: nothing is terminated (see the module docstring).
        if any(self._existing(pid) is None for pid in ids):
            return _instance_not_found()
        for pid in ids:
            self.cloud.terminate(pid)
        data = [self._instance(self.cloud.instance(pid)) for pid in ids]
        return EmulatorResponse(200, {"data": {"terminated_instances": data}})

    def _list_ssh_keys(self) -> EmulatorResponse:
        with self._ssh_lock:
            data = [dict(k) for k in self._ssh_keys.values()]
        return EmulatorResponse(200, {"data": data})

    def _add_ssh_key(self, request: EmulatorRequest) -> EmulatorResponse:
        """``AddSSHKeyRequest``: store ``public_key``, or generate a pair when it is
        absent and answer the ``GeneratedSSHKey`` (the only time the private half shows)."""
        body = _object(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= _SSH_KEY_NAME_MAX:
            raise _BadRequestError(f"name must be 1 to {_SSH_KEY_NAME_MAX} characters")
        public = body.get("public_key")
        if public is not None and (
            not isinstance(public, str) or not 1 <= len(public) <= _PUBLIC_KEY_MAX
        ):
            raise _BadRequestError(f"public_key must be 1 to {_PUBLIC_KEY_MAX} characters")
        with self._ssh_lock:
            if any(k["name"] == name for k in self._ssh_keys.values()):
                raise _BadRequestError(f"an SSH key named {name!r} already exists")
        key = self._store_key(name, public or _public_key(name))
        if public is None:
            key = {**key, "private_key": _private_key(name)}
        return EmulatorResponse(200, {"data": key})

    def _delete_ssh_key(self, key_id: str) -> EmulatorResponse:
        with self._ssh_lock:
            key = self._ssh_keys.pop(key_id, None)
        if key is None:
            raise _BadRequestError(f"no SSH key with id {key_id!r}")
        if self.known_ssh_keys is not None:
            self.known_ssh_keys.discard(key["name"])
        return EmulatorResponse(200, {"data": {}})

    def _store_key(self, name: str, public_key: str) -> dict[str, str]:
        """Keep one key under a fresh 32-hex id (Lambda's id shape)."""
        with self._ssh_lock:
            self._ssh_serial += 1
            digest = hashlib.sha256(f"{self._ssh_serial}/{name}".encode()).hexdigest()
            key = {"id": digest[:32], "name": name, "public_key": public_key}
            self._ssh_keys[key["id"]] = key
        if self.known_ssh_keys is not None:
            self.known_ssh_keys.add(name)
        return dict(key)

    # ---- shapes --------------------------------------------------------------------

    def _existing(self, pid: str) -> SimInstance | None:
        try:
            inst = self.cloud.instance(pid)
        except KeyError:
            return None
        return None if inst.removed else inst

    def _from_sim(self, exc: ProviderError, *, launch: bool = False) -> EmulatorResponse:
        match exc:
            case InsufficientCapacity():
                return _error(400, "instance-operations/launch/insufficient-capacity",
                              "Not enough capacity to fulfill launch request.")
            case InsufficientCredit():
                return _error(403, "global/invalid-address", "Your billing address is invalid.",
                              "Make sure your billing address is valid. Contact Support if "
                              "problems continue.")
            case QuotaExceeded():
                return _error(400, "global/quota-exceeded", "Quota exceeded.",
                              "Contact Support to increase your quota.")
            case InvalidRequest():
                return _invalid(str(exc))
            case ProviderNotFound():
                if launch:
                    return _error(404, "global/object-does-not-exist", str(exc),
                                  "Check the names in your request.")
                return _instance_not_found()
            case RateLimited():
                return self.rate_limited()
            case ProviderTimeout():
                response = self.server_error()
                response.status = 504
                return response
            case ProviderUnavailable():
                response = self.server_error()
                response.status = 503
                return response
        return self.server_error()

    def _instance(self, inst: SimInstance) -> dict[str, Any]:
        """One ``Instance``; optional fields are left out as Lambda leaves them out."""
        meta = inst.meta
        phase = inst.phase
        data: dict[str, Any] = {
            "id": inst.id,
            "status": inst.raw_override or LAMBDA_PHASE_WORDS.get(phase, phase),
            "ssh_key_names": list(meta.get("ssh_key_names", [])),
            "file_system_names": list(meta.get("file_system_names", [])),
            "region": _region(inst.region),
            "instance_type": self._instance_type(inst.instance_type, inst.price_per_hour),
            "actions": _actions(phase),
            "tags": self._tags(inst),
            "is_reserved": False,  # undocumented, present in Lambda's own examples
        }
        if inst.name:
            data["name"] = inst.name
        if phase in _HAS_IP:
            data["ip"] = inst.ip
            data["private_ip"] = f"10.200.{inst.ip.split('.', 2)[2]}"
            data["hostname"] = meta.get("hostname") or inst.ip.replace(".", "-")
        if meta.get("file_system_mounts"):
            data["file_system_mounts"] = list(meta["file_system_mounts"])
        if meta.get("firewall_rulesets"):
            data["firewall_rulesets"] = list(meta["firewall_rulesets"])
        return data

    @staticmethod
    def _tags(inst: SimInstance) -> list[dict[str, str]]:
        if "tags" in inst.meta:
            return [dict(t) for t in inst.meta["tags"]]
        # Made by the simulator directly (spawn_untracked): tag it as our adapter would.
        if inst.tag and inst.tag.startswith(TAG_PREFIX):
            return [{"key": _TAG_KEY, "value": inst.tag.removeprefix(TAG_PREFIX)}]
        return []

    def _instance_type(self, name: str, price_per_hour: float) -> dict[str, Any]:
        offer = self._offers.get(name) or InstanceTypeOffer("sim", name, price_per_hour)
        gpus = offer.gpus or 1
        specs = offer.extra.get("specs")
        if not isinstance(specs, dict):
            specs = {"vcpus": 30 * gpus, "memory_gib": 200 * gpus,
                     "storage_gib": 1400 * gpus, "gpus": gpus}
        gpu = offer.gpu_description or name
        description = offer.description or (gpu if gpu.startswith(f"{gpus}x ")
                                             else f"{gpus}x {gpu}")
        return {
            "name": name,
            "description": description,
            "gpu_description": gpu,
            "price_cents_per_hour": round(price_per_hour * 100),
            "specs": dict(specs),
        }


# ---- request checks ------------------------------------------------------------------


def _object(request: EmulatorRequest) -> dict[str, Any]:
    try:
        body = request.json()
    except ValueError:
        raise _BadRequestError("body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequestError("body must be a JSON object")
    return body


def _instance_ids(request: EmulatorRequest) -> list[str]:
    ids = _object(request).get("instance_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _BadRequestError("instance_ids must be a list of strings")
    return ids


def _check_launch(body: Mapping[str, Any]) -> dict[str, Any]:
    """Lambda's InstanceLaunchRequest rules; the meta to keep on the instance."""
    keys = _check_launch_required(body)
    _check_launch_optionals(body)
    tags = _check_launch_tags(body)
    names, mounts, rulesets = _check_launch_attachments(body)
    user_data = body.get("user_data")
    return {
        "ssh_key_names": list(keys),
        "file_system_names": list(names),
        "file_system_mounts": [dict(m) for m in mounts],
        "firewall_rulesets": [{"id": r["id"]} for r in rulesets],
        "hostname": body.get("hostname"),
        "image": body.get("image"),
        "tags": [{"key": t["key"], "value": t["value"]} for t in tags],
        "user_data_bytes": len(user_data.encode()) if user_data else 0,
    }


def _check_launch_required(body: Mapping[str, Any]) -> list[Any]:
    """The required fields (and quantity); the SSH key names."""
    for field in ("region_name", "instance_type_name", "ssh_key_names"):
        if field not in body:
            raise _BadRequestError(f"{field} is required")
    if body["region_name"] not in LAMBDA_REGION_CODES:
        raise _BadRequestError(f"region_name {body['region_name']!r} is not a region")
    if not isinstance(body["instance_type_name"], str):
        raise _BadRequestError("instance_type_name must be a string")
    keys = body["ssh_key_names"]
    if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], str):
        raise _BadRequestError("exactly one SSH key must be specified")
    quantity = body.get("quantity", 1)  # not in 1.8.3; older clients send it
    if quantity != 1:
        raise _BadRequestError("Requested too many instances.")
    return keys


def _check_launch_optionals(body: Mapping[str, Any]) -> None:
    """name, hostname, user_data and image, each when given."""
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 64):
        raise _BadRequestError("name must be a string of at most 64 characters")
    hostname = body.get("hostname")
    if hostname is not None and (
        not isinstance(hostname, str) or not _HOSTNAME_RE.fullmatch(hostname)
    ):
        raise _BadRequestError("hostname is not a valid hostname")
    user_data = body.get("user_data")
    if user_data is not None and (
        not isinstance(user_data, str) or len(user_data.encode()) > _USER_DATA_MAX
    ):
        raise _BadRequestError("user_data must be plain text of at most 1MB")
    image = body.get("image")
    if image is not None and not (
        isinstance(image, dict)
        and (isinstance(image.get("id"), str) or isinstance(image.get("family"), str))
    ):
        raise _BadRequestError("image must be {id} or {family}")


def _check_launch_tags(body: Mapping[str, Any]) -> list[Any]:
    tags = body.get("tags", [])
    if not isinstance(tags, list):
        raise _BadRequestError("tags must be a list")
    for tag in tags:
        if not (isinstance(tag, dict) and isinstance(tag.get("key"), str)
                and isinstance(tag.get("value"), str)):
            raise _BadRequestError("each tag is {key, value}")
        if len(tag["key"]) > 55 or not _TAG_KEY_RE.fullmatch(tag["key"]):
            raise _BadRequestError(f"tag key {tag['key']!r} is invalid")
        if len(tag["value"]) > 128:
            raise _BadRequestError("tag values are at most 128 characters")
    return tags


def _check_launch_attachments(
    body: Mapping[str, Any],
) -> tuple[list[Any], list[Any], list[Any]]:
    """File systems (by name and by mount) and firewall rulesets."""
    names = body.get("file_system_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _BadRequestError("file_system_names must be a list of strings")
    mounts = body.get("file_system_mounts", [])
    if not isinstance(mounts, list) or not all(
        isinstance(m, dict) and isinstance(m.get("file_system_id"), str)
        and isinstance(m.get("mount_point"), str) and _MOUNT_RE.fullmatch(m["mount_point"])
        for m in mounts
    ):
        raise _BadRequestError("file_system_mounts entries need a valid mount_point")
    rulesets = body.get("firewall_rulesets", [])
    if not isinstance(rulesets, list) or not all(
        isinstance(r, dict) and isinstance(r.get("id"), str) for r in rulesets
    ):
        raise _BadRequestError("firewall_rulesets entries are {id}")
    return names, mounts, rulesets


def _public_key(name: str) -> str:
    """A well-formed, made-up ed25519 public key (no real key material)."""
    blob = hashlib.sha256(name.encode()).hexdigest()
    return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{blob[:43]} {name}"


def _private_key(name: str) -> str:
    """A placeholder private key in PEM framing; it opens nothing."""
    blob = hashlib.sha256(f"private/{name}".encode()).hexdigest()
    return (f"-----BEGIN OPENSSH PRIVATE KEY-----\nemulator-{blob}\n"
            "-----END OPENSSH PRIVATE KEY-----\n")


def _region(code: str) -> dict[str, str]:
    return {"name": code, "description": _REGION_DESCRIPTIONS.get(code, code)}


def _actions(phase: str) -> dict[str, dict[str, Any]]:
    """``actions``: what Lambda would let you do now, with its reason codes."""

    def blocked(reason: str | None, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"available": False, "reason_description": text}
        if reason is not None:
            out["reason_code"] = reason
        return out

    if phase in _GONE:
        no = blocked("vm-is-terminating", "The instance is terminating.")
        return {k: dict(no) for k in ("migrate", "rebuild", "restart", "cold_reboot",
                                      "terminate")}
    ok: dict[str, Any] = {"available": True}
    if phase in _NOT_LAUNCHED:
        wait = blocked("vm-has-not-launched", "The instance has not launched yet.")
        return {"migrate": dict(wait), "rebuild": dict(wait), "restart": dict(wait),
                "cold_reboot": dict(wait), "terminate": dict(ok)}
    if phase == "preempted":
        gone = blocked(None, "The instance was preempted.")
        return {"migrate": dict(gone), "rebuild": dict(gone), "restart": dict(gone),
                "cold_reboot": dict(gone), "terminate": dict(ok)}
    return {k: dict(ok) for k in ("migrate", "rebuild", "restart", "cold_reboot", "terminate")}
