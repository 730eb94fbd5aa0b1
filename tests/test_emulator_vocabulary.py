"""Every status word and error code the provider contracts document can be produced by a
running emulator through its admin API, and the real adapter reads each one.

The vocabularies are read from ``tests/fixtures/provider-api`` (the OpenAPI enums where a
provider publishes them, the NOTES.md tables where it does not), not copied here: a word
added to a contract shows up as a new case, and fails until the emulator can say it and
the adapter knows it. A user's test can then make any of them happen on demand:
``set_raw_status`` for a status, an ``error`` HTTP fault for an error code.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gpufsm.adapters import RetryPolicy, adapter_class
from gpufsm.adapters.lambda_cloud import LAMBDA_ERRORS
from gpufsm.adapters.novita import NOVITA_ERRORS
from gpufsm.adapters.vastai import VAST_ERRORS
from gpufsm.cli._emulator import PROFILES
from gpufsm.errors import ProviderError
from gpufsm.providers import PROVIDERS
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, enable_admin, make_dialect

FIXTURES = Path(__file__).parent / "fixtures" / "provider-api"
KEY = "vocabulary-test-key"
TLS = ssl.create_default_context()


# ---- the vocabularies, as the fixtures document them ----------------------------------------

def _section(notes: str, heading: str) -> str:
    """The text of one ``## heading`` section of a NOTES.md."""
    start = notes.index(f"## {heading}")
    end = notes.find("\n## ", start + 1)
    return notes[start:end if end >= 0 else None]


def _notes(provider: str) -> str:
    return (FIXTURES / provider / "NOTES.md").read_text()


def _table_words(section: str, columns: tuple[int, ...]) -> list[str]:
    """The words in the given columns of a markdown table (backticks dropped)."""
    words = []
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or set(cells[0]) <= {"-", " "}:
            continue
        words += [cells[i] for i in columns if i < len(cells) and cells[i] != "value"]
    return words


def lambda_statuses() -> list[str]:
    spec = json.loads((FIXTURES / "lambda" / "openapi-1.8.3.json").read_text())
    return list(spec["components"]["schemas"]["InstanceStatus"]["enum"])


def lambda_errors() -> list[tuple[int, str]]:
    """(HTTP status, code) for every ``ApiError*`` schema a path answers with."""
    spec = json.loads((FIXTURES / "lambda" / "openapi-1.8.3.json").read_text())
    schemas = spec["components"]["schemas"]
    found: set[tuple[int, str]] = set()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"].rsplit("/", 1)[-1]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for operations in spec["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                for name in refs(response):
                    code = schemas.get(name, {}).get("properties", {}).get("code", {})
                    if name.startswith("ApiError") and "const" in code:
                        found.add((int(status), code["const"]))
    return sorted(found)


def vast_statuses() -> list[str]:
    section = _section(_notes("vastai"), "Status vocabulary")
    table = section.split("Also seen")[0]
    also = re.findall(r"`([a-z]+)`", section.split("Also seen")[1].split("\n\n")[0])
    return [w for w in _table_words(table, (0,)) if w != "null"] + also


def vast_errors() -> list[tuple[int, str]]:
    """Each documented code after the HTTP status it is documented with."""
    found: set[tuple[int, str]] = set()
    for line in _section(_notes("vastai"), "Errors").split("\n- "):
        status = None
        for number, code in re.findall(r"\b(\d{3})\b|`(?:error: \")?([a-z_]+)\"?`", line):
            if number:
                status = int(number)
            elif status is not None:
                found.add((status, code))
    return sorted(found)


def novita_statuses() -> list[str]:
    return _table_words(_section(_notes("novita"), "Status vocabulary"), (0, 2))


def novita_errors() -> list[tuple[int, str]]:
    """``NAME 400;`` pairs; ``NETWORK_NOT_FOUND/IN_USE/MAX_LIMIT 400`` is three names."""
    section = _section(_notes("novita"), "Errors").split("Body shape")[0]
    found = set()
    for names, status in re.findall(r"\b([A-Z][A-Z_/]+[A-Z]) (\d{3})\b", section):
        first, *more = names.split("/")
        prefix = first.split("_")[0] + "_"
        found |= {(int(status), name) for name in [first] + [prefix + m for m in more]}
    return sorted(found)


def runpod_statuses() -> list[str]:
    spec = json.loads((FIXTURES / "runpod" / "openapi-rest-v1.json").read_text())
    pod = spec["components"]["schemas"]["Pod"]["properties"]
    return list(pod["desiredStatus"]["enum"])


# ---- a running emulator, its admin API and the real adapter --------------------------------

@dataclass
class Vocabulary:
    name: str  # a key of gpufsm.providers.PROVIDERS
    statuses: Callable[[], list[str]]
    errors: Callable[[], list[tuple[int, str]]]
    #: The adapter's code → error class table (the codes it tells apart).
    table: dict[str, type[ProviderError]]
    #: The path a client GETs one instance on, and where the status word sits in the body.
    get_path: Callable[[str], str]
    status_of: Callable[[Any], Any]


#: How to read each registered provider's vocabulary (a test fails while one has none).
VOCABULARIES = {
    "lambda": Vocabulary("lambda", lambda_statuses, lambda_errors, dict(LAMBDA_ERRORS),
                       lambda pid: f"/api/v1/instances/{pid}",
                       lambda body: body["data"]["status"]),
    "vastai": Vocabulary("vastai", vast_statuses, vast_errors, dict(VAST_ERRORS),
                       lambda pid: f"/api/v0/instances/{pid}/",
                       lambda body: body["instances"]["actual_status"]),
    "novita": Vocabulary("novita", novita_statuses, novita_errors, dict(NOVITA_ERRORS),
                       lambda pid: f"/gpu-instance/openapi/v1/gpu/instance?instanceId={pid}",
                       lambda body: body["status"]),
    "runpod": Vocabulary("runpod", runpod_statuses, lambda: [(401, "UnauthorizedError")], {},
                       lambda pid: f"/v1/pods/{pid}",
                       lambda body: body["desiredStatus"]),
}


@dataclass
class Rig:
    provider: Vocabulary
    server: EmulatorServer
    client: httpx.Client  # the provider API and the admin API, with the key
    adapter: Any

    def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(f"/_emulator/{path}", json=body)
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    name: str = request.param
    profile = PROFILES[name]
    clock = FakeClock()
    cloud = SimulatedCloud(name, clock=clock, seed=3, capabilities=profile.capabilities,
                           instance_types=profile.offers, id_prefix=profile.id_prefix)
    server = EmulatorServer(make_dialect(name, cloud), api_key=KEY)
    enable_admin(server, cloud)
    with server:
        adapter = adapter_class(name)(SecretStr(KEY), base_url=server.url, clock=clock,
                                      rate_limits={},
                                      retry=RetryPolicy(attempts=2, initial=0.0,
                                                        max_backoff=0.0))
        client = httpx.Client(base_url=server.url, timeout=5.0, verify=TLS,
                              headers={"Authorization": f"Bearer {KEY}"})
        try:
            yield Rig(VOCABULARIES[name], server, client, adapter)
        finally:
            client.close()
            adapter.close()


def _cases(kind: str) -> list[Any]:
    cases = []
    for name in PROVIDERS:
        if name not in VOCABULARIES:
            continue  # test_every_registered_provider_has_a_vocabulary says so
        provider = VOCABULARIES[name]
        words = provider.statuses() if kind == "status" else provider.errors()
        assert words, f"no {kind} vocabulary read from the {name} fixtures"
        cases += [pytest.param(name, w, id=f"{name}-{w}") for w in words]
    return cases


def test_every_registered_provider_has_a_vocabulary() -> None:
    """A provider added to ``gpufsm.providers.PROVIDERS`` joins the walk below: this fails
    until its fixtures folder and its readers exist."""
    assert sorted(VOCABULARIES) == sorted(PROVIDERS)
    assert [n for n in PROVIDERS if not (FIXTURES / n).is_dir()] == []


def test_the_fixtures_give_each_provider_a_vocabulary() -> None:
    """The readers find what the contracts say (so an empty parse cannot pass the walk)."""
    assert set(lambda_statuses()) >= {"booting", "active", "terminated", "preempted"}
    assert (401, "global/invalid-api-key") in lambda_errors()
    assert {"loading", "running", "exited", "scheduling"} <= set(vast_statuses())
    assert {(410, "no_such_ask"), (401, "auth_error"), (404, "not_found")} <= set(
        vast_errors())
    assert {"toCreate", "exited", "removed", "freezing"} <= set(novita_statuses())
    assert {(429, "RATE_LIMIT_EXCEEDED"), (400, "INSUFFICIENT_RESOURCE"),
            (400, "NETWORK_MAX_LIMIT")} <= set(novita_errors())
    assert runpod_statuses() == ["RUNNING", "EXITED", "TERMINATED"]


@pytest.mark.parametrize(("rig", "word"), _cases("status"), indirect=["rig"])
def test_every_documented_status_can_be_produced_and_the_adapter_knows_it(
        rig: Rig, word: str) -> None:
    spawned = rig.admin("cloud-faults", {"action": "spawn_untracked"})
    rig.admin("cloud-faults", {"action": "set_raw_status", "id": spawned["id"],
                               "raw_status": word})
    response = rig.client.get(rig.provider.get_path(spawned["provider_id"]))
    assert response.status_code == 200, response.text
    assert rig.provider.status_of(response.json()) == word
    seen = rig.adapter.get(spawned["provider_id"])
    assert seen is not None and seen.raw_status.startswith(word)  # Vast adds "(intended …)"
    assert seen.state is not None, f"the {rig.provider.name} adapter does not know {word!r}"


@pytest.mark.parametrize(("rig", "error"), _cases("error"), indirect=["rig"])
def test_every_documented_error_can_be_produced_and_the_adapter_reads_its_code(
        rig: Rig, error: tuple[int, str]) -> None:
    status, code = error
    rig.admin("http-faults", {"kind": "error", "status": status, "code": code, "times": 5})
    with pytest.raises(ProviderError) as caught:
        rig.adapter.list_instances()
    assert caught.value.status_code == status
    if rig.provider.table:  # RunPod's v1 errors carry no code: its adapter reads text
        assert caught.value.code == code
    if code in rig.provider.table:
        assert isinstance(caught.value, rig.provider.table[code]), caught.value
