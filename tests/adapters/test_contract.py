"""One contract, every adapter: each real adapter against its emulator over loopback HTTP.

Every rule the engine relies on is stated once here and run over every adapter + emulator
pair (issue 9, "one adapter contract suite"): not-found with and without the provider's
own envelope, 429 with and without Retry-After, no retry of a launch that may have been
applied, a terminate the provider refuses, unknown statuses, listings that are complete or
nothing, read lag after a launch, every spec field honoured or refused, the key never
shown anywhere, where the key and the URL come from, and connections that cannot be made.
The per-adapter files keep only what is truly one provider's own (its status words, error
codes, body shapes and quirks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import gpufsm.adapters
from cli_env import free_port
from gpufsm import (
    AuthError,
    Capabilities,
    Fleet,
    InstanceState,
    InsufficientCapacity,
    PermanentProviderError,
    ProviderAdapter,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SqlInstanceStore,
    TemporaryProviderError,
    ValidationError,
)
from gpufsm.adapters import (
    InstanceTypeOffer,
    LambdaCloudAdapter,
    LaunchRequest,
    Renamable,
    RetryPolicy,
    adapter_class,
    ownership_tag,
    tag_from_name,
)
from gpufsm.config import Settings
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants
from gpufsm.testing.emulators import EmulatorRequest, EmulatorServer, HttpFault, make_dialect
from test_http_seam import full_text

S = InstanceState
KEY = "contract-key-5d3a9f"

#: (method, a path fragment) of one kind of request, for aiming an HttpFault at it.
Route = tuple[str, str]


@dataclass(frozen=True)
class Pair:
    provider: str  # a key of gpufsm.providers.PROVIDERS
    capabilities: Capabilities
    offers: tuple[InstanceTypeOffer, ...]  # the last one is sold out everywhere
    spec: dict[str, Any]
    launch: Route  # the request that creates the machine
    get: Route  # the direct read of one instance (may also match the listing)
    listing: Route  # a page of the listing
    terminate: Route
    page_size: int = 0  # instances per listing page; 0: one call is the whole listing
    credit_error: type[Exception] = field(default=PermanentProviderError)


def _offer(name: str, price: float, regions: tuple[str, ...]) -> InstanceTypeOffer:
    return InstanceTypeOffer("sim", name, price, regions, 1, name)


#: One pair per provider of ``gpufsm.providers.PROVIDERS``: the routes and spec the
#: scenarios below aim at (a test fails while a registered provider has none).
PAIR_OF = {p.provider: p for p in (
    Pair("lambda", Capabilities(stop=False, restart=True, tags=True),
         (_offer("gpu_1x_a10", 0.75, ("us-east-1",)), _offer("gpu_8x_h100", 23.9, ())),
         {"instance_type": "gpu_1x_a10", "region": "us-east-1", "ssh_key_names": ["k"]},
         launch=("POST", "/instance-operations/launch"), get=("GET", "/api/v1/instances/"),
         listing=("GET", "/api/v1/instances"),
         terminate=("POST", "/instance-operations/terminate")),
    Pair("novita", Capabilities(stop=True, restart=True, tags=False),
         (_offer("RTX 4090 24GB", 0.35, ("us-ca-01",)), _offer("A100 SXM 80GB", 1.6, ())),
         {"instance_type": "RTX 4090 24GB", "image": "pytorch/pytorch:2.3.0"},
         launch=("POST", "/gpu/instance/create"), get=("GET", "/gpu/instance"),
         listing=("GET", "/gpu/instances"), terminate=("POST", "/gpu/instance/delete"),
         page_size=50),
    Pair("runpod", Capabilities(stop=True, restart=True, tags=False),
         (_offer("NVIDIA A40", 0.44, ("EU-RO-1",)), _offer("NVIDIA B200", 5.99, ())),
         {"instance_type": "NVIDIA A40", "image": "runpod/pytorch:2.4.0"},
         launch=("POST", "/v1/pods"), get=("GET", "/v1/pods/"), listing=("GET", "/v1/pods"),
         terminate=("DELETE", "/v1/pods/")),
    Pair("vastai", Capabilities(stop=True, restart=True, tags=False),
         (_offer("RTX 4090", 0.35, ("US",)), _offer("H200", 3.1, ())),
         {"instance_type": "RTX 4090", "image": "pytorch/pytorch:latest"},
         launch=("PUT", "/api/v0/asks/"), get=("GET", "/api/v0/instances/"),
         listing=("GET", "/api/v1/instances"), terminate=("DELETE", "/api/v0/instances/"),
         page_size=25),
)}
#: The suite's parametrisation: every registered provider that has its pair, in order.
PAIRS = [PAIR_OF[name] for name in PROVIDERS if name in PAIR_OF]
IDS = [p.provider for p in PAIRS]
#: Vast's ids are integers: the simulated cloud numbers its instances the same way.
ID_STYLE = {"vastai": {"id_prefix": "", "id_width": 0}}
FAST_RETRY = RetryPolicy(attempts=5, initial=0.01, max_backoff=0.05)


@dataclass
class Rig:
    pair: Pair
    clock: FakeClock
    cloud: SimulatedCloud
    server: EmulatorServer
    adapter: Any
    sent: list[EmulatorRequest] = field(default_factory=list)  # every answered request

    def spec(self, **overrides: Any) -> InstanceSpec:
        return InstanceSpec(**{"provider": self.pair.provider, "name": "contract",
                               **self.pair.spec, **overrides})

    def launch(self, token: str = "c0ffee01", **overrides: Any) -> str:
        pid: str = self.adapter.launch(
            LaunchRequest(self.spec(**overrides), ownership_tag(token), token))
        return pid

    def fault(self, kind: str, route: Route, **kw: Any) -> None:
        method, path = route
        self.server.inject(HttpFault(kind, method=method, path_contains=path, **kw))

    def requests(self, route: Route) -> list[EmulatorRequest]:
        method, path = route
        return [r for r in self.sent if r.method == method and path in r.path]

    def statuses(self, route: Route | None = None) -> list[int]:
        return [status for method, path, status in self.server.log
                if route is None or (method == route[0] and route[1] in path)]

    def fleet(self, tmp_path: Path) -> tuple[Fleet, SqlInstanceStore]:
        store = SqlInstanceStore(f"sqlite:///{tmp_path / 'contract.db'}")
        return Fleet(store, [self.adapter], clock=self.clock, actor="contract"), store


def _build(pair: Pair, **adapter_kw: Any) -> Rig:
    clock = FakeClock()
    cloud = SimulatedCloud(pair.provider, clock=clock, seed=3, capabilities=pair.capabilities,
                           instance_types=pair.offers, **ID_STYLE.get(pair.provider, {}))
    server = EmulatorServer(make_dialect(pair.provider, cloud), api_key=KEY).start()
    kw: dict[str, Any] = {"base_url": server.url, "clock": clock, "rate_limits": {},
                          "retry": FAST_RETRY, **adapter_kw}
    adapter = adapter_class(pair.provider)(SecretStr(KEY), **kw)
    rig = Rig(pair, clock, cloud, server, adapter)
    server.hooks.append(lambda request, response: rig.sent.append(request))
    return rig


@pytest.fixture(params=PAIRS, ids=IDS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    built = _build(request.param)
    try:
        yield built
    finally:
        built.adapter.close()
        built.server.stop()


# ---- the protocol --------------------------------------------------------------------------


def test_is_a_provider_adapter_with_declared_capabilities(rig: Rig) -> None:
    assert isinstance(rig.adapter, ProviderAdapter)
    assert rig.adapter.name == rig.pair.provider
    assert rig.adapter.capabilities == rig.pair.capabilities


def test_every_adapter_is_exported_where_users_look_first() -> None:
    """Issue 10 item 20: ``from gpufsm.adapters import LambdaCloudAdapter`` failed."""
    exported = {name: getattr(gpufsm.adapters, p.adapter.partition(":")[2], None)
                for name, p in PROVIDERS.items()}
    assert exported == {name: adapter_class(name) for name in PROVIDERS}
    assert LambdaCloudAdapter is exported["lambda"]  # the very import that failed


def test_the_contract_suite_runs_over_every_registered_provider() -> None:
    """Adding a provider to ``gpufsm.providers.PROVIDERS`` enrols it here: this fails
    until it has its pair, its spec-field table and its pre-launch reads."""
    tables = {"PAIR_OF": PAIR_OF, "FIELDS": FIELDS, "PRE_LAUNCH": PRE_LAUNCH}
    assert {name: sorted(table) for name, table in tables.items()} == {
        name: sorted(PROVIDERS) for name in tables}
    assert [p.provider for p in PAIRS] == list(PROVIDERS)
    for pair in PAIRS:
        assert pair.offers[-1].regions == (), f"{pair.provider}: last offer must be sold out"


def test_the_ownership_tag_lives_where_the_capabilities_say(rig: Rig) -> None:
    """``Capabilities.tags``: a provider with native tags keeps our mark through a rename;
    one without carries it in the name only, so the name is what must keep it."""
    tag = ownership_tag("c0ffee01")
    pid = rig.launch()
    seen = rig.adapter.get(pid)
    assert seen is not None and seen.tag == tag
    if not rig.adapter.capabilities.tags:
        assert tag_from_name(seen.name) == tag
        return
    assert isinstance(rig.adapter, Renamable), "native tags, but no rename to prove them"
    rig.adapter.rename(pid, "renamed-by-hand")
    again = rig.adapter.get(pid)
    assert again is not None and again.name == "renamed-by-hand" and again.tag == tag


def test_lifecycle_launch_to_gone(rig: Rig) -> None:
    pid = rig.launch()
    seen = rig.adapter.get(pid)
    assert seen is not None and seen.state in (S.CREATED, S.STARTING)
    assert seen.tag == ownership_tag("c0ffee01")
    rig.cloud.settle(600)
    running = rig.adapter.get(pid)
    assert running is not None and running.state is S.RUNNING and running.ip
    if rig.pair.capabilities.stop:
        rig.adapter.stop(pid)
        rig.cloud.settle(600)
        assert rig.adapter.get(pid).state is S.STOPPED
        rig.adapter.start(pid)
        rig.cloud.settle(600)
        assert rig.adapter.get(pid).state is S.RUNNING
    rig.adapter.restart(pid)
    rig.cloud.settle(600)
    assert rig.adapter.get(pid).state is S.RUNNING
    rig.adapter.terminate(pid)
    after = rig.adapter.get(pid)
    assert after is None or after.state in (S.TERMINATING, S.TERMINATED)
    rig.cloud.settle(3600)
    assert rig.adapter.get(pid) is None
    rig.adapter.terminate(pid)  # idempotent: not-found is done
    assert all(i.provider_instance_id != pid for i in rig.adapter.list_instances())
    assert rig.cloud.live_instances() == []


def test_listing_marks_ours_and_only_ours(rig: Rig) -> None:
    ours = rig.launch("aaaa1111")
    theirs = rig.cloud.spawn_untracked(None, instance_type=rig.pair.offers[0].name)
    named = rig.cloud.spawn_untracked(None, instance_type=rig.pair.offers[0].name,
                                      name="my-console-box")
    listing = {i.provider_instance_id: i for i in rig.adapter.list_instances()}
    assert listing[ours].tag == ownership_tag("aaaa1111")
    assert listing[theirs].tag is None
    assert listing[named].tag is None and listing[named].name == "my-console-box"


def test_capacity_is_a_permanent_refusal(rig: Rig) -> None:
    with pytest.raises(InsufficientCapacity):
        rig.launch(instance_type=rig.pair.offers[-1].name)
    assert rig.cloud.live_instances() == []


#: Each provider's own capacity and quota refusals of a launch, as its emulator answers
#: them: (HTTP status, the code or words in the body). From the contracts in
#: tests/fixtures/provider-api/: Lambda's and Novita's documented codes; Vast's
#: ``no_such_ask`` (the ask was taken) and, with no quota code documented, an
#: ``invalid_args`` naming the account's instance limit; RunPod documents no codes, so
#: the words its API is seen to send (capacity) and its spend limit (quota).
CAPACITY_ANSWER = {"lambda": (400, "instance-operations/launch/insufficient-capacity"),
                   "novita": (400, "INSUFFICIENT_RESOURCE"),
                   "runpod": (500, "no instances currently available"),
                   "vastai": (410, "no_such_ask")}
QUOTA_ANSWER = {"lambda": (400, "global/quota-exceeded"),
                "novita": (400, "CREATE_INSTANCE_LIMIT"),
                "runpod": (400, "spend limit"),
                "vastai": (400, "instance limit")}


def _on_sale(rig: Rig) -> set[tuple[str, str]]:
    """(type, region) pairs the adapter's catalog says have capacity now."""
    return {(o.name, r) for o in rig.adapter.instance_types() for r in o.regions}


def _launch_answers(rig: Rig, before_launch: Callable[[], None]) -> list[tuple[int, str]]:
    """Run ``before_launch`` when the first launch request reaches the emulator (after any
    reads the adapter makes first: the offer is taken while the adapter decides), and
    collect what the launch route answers, as (status, body text)."""
    method, path = rig.pair.launch
    dialect = rig.server.dialect
    inner = dialect.handle
    answers: list[tuple[int, str]] = []

    def handle(request: EmulatorRequest) -> Any:
        launching = request.method == method and path in request.path
        if launching and not answers:
            before_launch()
        response = inner(request)
        if launching:
            answers.append((response.status, str(response.body)))
        return response

    dialect.handle = handle  # type: ignore[method-assign]
    return answers


@pytest.mark.parametrize("scope", ["type-region", "type", "provider"])
def test_a_sold_out_offer_is_refused_with_insufficient_capacity_and_absent_from_the_catalog(
        rig: Rig, scope: str) -> None:
    """Issue 13: a placement walks offers cheapest first; the one that sells out between
    the catalog and the launch must come back as InsufficientCapacity (the provider's own
    capacity error, read by the adapter), so the next offer is tried, and the catalog
    must stop offering it."""
    offer = rig.pair.offers[0]
    name, region = offer.name, offer.regions[0]
    target = {"type-region": (name, region), "type": (name, None), "provider": (None, None)}
    assert (name, region) in _on_sale(rig)
    answers = _launch_answers(rig, lambda: rig.cloud.sell_out(*target[scope]))
    with pytest.raises(InsufficientCapacity):
        rig.launch()
    status, words = CAPACITY_ANSWER[rig.pair.provider]
    assert len(answers) == 1 and answers[0][0] == status and words in answers[0][1]
    answers.append((0, "the sell-out is done"))
    assert rig.cloud.live_instances() == []
    on_sale = _on_sale(rig)
    assert (name, region) not in on_sale
    if scope == "provider":
        assert on_sale == set()
    with pytest.raises(InsufficientCapacity):
        rig.launch()  # known sold out before the launch: refused all the same
    assert rig.cloud.live_instances() == []
    rig.cloud.restock()
    assert (name, region) in _on_sale(rig)
    assert rig.launch() and len(rig.cloud.live_instances()) == 1


def test_a_quota_refusal_is_quota_exceeded_and_the_offer_stays_listed(rig: Rig) -> None:
    offer = rig.pair.offers[0]
    rig.cloud.refuse_quota(offer.name)
    answers = _launch_answers(rig, lambda: None)
    with pytest.raises(QuotaExceeded):
        rig.launch()
    status, words = QUOTA_ANSWER[rig.pair.provider]
    assert len(answers) == 1 and answers[0][0] == status and words in answers[0][1]
    assert rig.cloud.live_instances() == []
    assert (offer.name, offer.regions[0]) in _on_sale(rig)  # a quota is the account's
    rig.cloud.grant_quota()
    assert rig.launch() and len(rig.cloud.live_instances()) == 1


def test_the_first_launches_refused_then_one_lands(rig: Rig) -> None:
    """What a placement test scripts: the first N launches fail (capacity, then quota),
    and the next one creates exactly one machine."""
    rig.cloud.fail_next("launch", "capacity")
    rig.cloud.fail_next("launch", "quota")
    with pytest.raises(InsufficientCapacity):
        rig.launch()
    with pytest.raises(QuotaExceeded):
        rig.launch()
    rig.launch()
    assert len(rig.cloud.live_instances()) == 1


def test_credit_refusal_is_permanent(rig: Rig) -> None:
    rig.cloud.credit_ok = False
    with pytest.raises(PermanentProviderError):
        rig.launch()
    assert rig.cloud.live_instances() == []


def test_a_wrong_key_is_an_auth_error_and_not_retried(rig: Rig) -> None:
    wrong = adapter_class(rig.pair.provider)(
        SecretStr("not-the-key"), base_url=rig.server.url, clock=rig.clock, rate_limits={},
        retry=FAST_RETRY)
    try:
        with pytest.raises(AuthError):
            wrong.list_instances()
        assert rig.statuses() in ([401], [403])
        with pytest.raises(AuthError):  # never None: a refused read confirms nothing
            wrong.get("123")
    finally:
        wrong.close()


# ---- not found: the provider's own word, or nothing --------------------------------------


def test_the_providers_not_found_reads_as_absent_and_terminate_is_done(rig: Rig) -> None:
    pid = rig.launch()
    rig.cloud.vanish(pid)
    assert rig.adapter.get(pid) is None
    rig.adapter.terminate(pid)


def test_a_404_without_the_providers_envelope_proves_nothing(rig: Rig) -> None:
    """Issue 9 item 5: RunPod read a bare 404 as "gone"; Lambda, Vast and Novita each
    refused it differently. One rule: unknown outcome (temporary), naming the URL."""
    pid = rig.launch()
    rig.fault("404", rig.pair.get, times=99)
    with pytest.raises(TemporaryProviderError) as got:
        rig.adapter.get(pid)
    assert not isinstance(got.value, ProviderNotFound)
    assert "wrong base_url or a proxy in the way" in str(got.value)
    assert rig.server.url in str(got.value)
    rig.server.clear_faults()
    rig.fault("404", rig.pair.terminate, times=99)
    with pytest.raises(TemporaryProviderError) as terminated:
        rig.adapter.terminate(pid)
    assert not isinstance(terminated.value, ProviderNotFound)
    rig.server.clear_faults()
    assert [i.id for i in rig.cloud.live_instances()] == [pid]


def test_a_wrong_base_url_is_never_read_as_gone(rig: Rig) -> None:
    pid = rig.launch()
    lost = adapter_class(rig.pair.provider)(
        SecretStr(KEY), base_url=f"{rig.server.url}/not-the-api", clock=rig.clock,
        rate_limits={}, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(TemporaryProviderError) as got:
            lost.get(pid)
        with pytest.raises(TemporaryProviderError):
            lost.terminate(pid)
        with pytest.raises(TemporaryProviderError):
            lost.list_instances()
    finally:
        lost.close()
    assert f"{rig.server.url}/not-the-api/" in str(got.value)
    assert "wrong base_url" in str(got.value)
    assert [i.id for i in rig.cloud.live_instances()] == [pid]


# ---- read lag after a launch ----------------------------------------------------------------


def test_read_lag_after_launch_hides_the_instance_then_shows_it(rig: Rig) -> None:
    """What real providers do after accepting a launch (issue 9 item 1): for a while GET
    answers the provider's own not-found and listings omit the instance."""
    rig.cloud.lag_reads(5.0)
    pid = rig.launch()
    assert rig.adapter.get(pid) is None  # the provider's not-found envelope, not an error
    assert pid not in {i.provider_instance_id for i in rig.adapter.list_instances()}
    rig.clock.advance(5.0)
    seen = rig.adapter.get(pid)
    assert seen is not None and seen.tag == ownership_tag("c0ffee01")
    assert pid in {i.provider_instance_id for i in rig.adapter.list_instances()}


def test_commands_act_during_read_lag(rig: Rig) -> None:
    rig.cloud.lag_reads(5.0)
    pid = rig.launch()
    rig.adapter.terminate(pid)
    rig.cloud.settle(3600)
    assert rig.cloud.live_instances() == []


# ---- rate limits and retries -----------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [None, 7.0], ids=["no-retry-after", "retry-after"])
def test_429_is_retried_honouring_retry_after(rig: Rig, retry_after: float | None) -> None:
    pid = rig.launch()
    rig.sent.clear()
    rig.server.log.clear()
    rig.fault("429", rig.pair.get, times=2, retry_after=retry_after)
    before = rig.clock.monotonic()
    assert rig.adapter.get(pid) is not None
    waited = rig.clock.monotonic() - before
    assert rig.statuses(rig.pair.get) == [429, 429, 200]
    if retry_after is None:
        assert waited <= 2 * FAST_RETRY.max_backoff  # the policy's own backoff
    else:
        assert waited >= 2 * retry_after  # the provider's word


def test_429_that_lasts_is_rate_limited(rig: Rig) -> None:
    rig.fault("429", rig.pair.listing, times=99)
    with pytest.raises(RateLimited):
        rig.adapter.list_instances()
    assert len(rig.requests(rig.pair.listing)) == FAST_RETRY.attempts


def test_429_on_launch_is_retried_because_nothing_was_created(rig: Rig) -> None:
    rig.fault("429", rig.pair.launch, times=1)
    pid = rig.launch()
    assert len(rig.requests(rig.pair.launch)) == 2
    assert [i.id for i in rig.cloud.live_instances()] == [pid]


@pytest.mark.parametrize("kind", ["5xx", "drop"])
def test_a_launch_that_may_have_been_applied_is_sent_once(rig: Rig, kind: str) -> None:
    rig.fault(kind, rig.pair.launch, times=5, after_work=kind == "drop")
    with pytest.raises(TemporaryProviderError) as got:
        rig.launch()
    assert got.value.not_sent is False  # the outcome is unknown, never "nothing"
    launches = rig.server.counts
    assert sum(n for k, n in launches.items()
               if k.startswith(rig.pair.launch[0]) and rig.pair.launch[1] in k) == 1


def test_a_launch_that_timed_out_after_the_work_leaves_a_findable_instance(rig: Rig) -> None:
    rig.cloud.fail_next("launch", "timeout", after_work=True)
    with pytest.raises(TemporaryProviderError):
        rig.launch("d00d0001")
    [listed] = [i for i in rig.adapter.list_instances() if i.tag]
    assert listed.tag == ownership_tag("d00d0001")


def test_reads_are_retried_through_5xx(rig: Rig) -> None:
    pid = rig.launch()
    rig.fault("5xx", rig.pair.get, times=2)
    assert rig.adapter.get(pid) is not None


# ---- terminate refused -------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "error"), [("5xx", ProviderUnavailable), ("401", AuthError)])
def test_a_refused_terminate_raises(rig: Rig, kind: str, error: type[Exception]) -> None:
    """Issue 9 item 11: a terminate that took any provider error (500, 401) as success
    passed the whole suite. It must raise, and the machine is still there."""
    pid = rig.launch()
    rig.fault(kind, rig.pair.terminate, times=99)
    with pytest.raises(error):
        rig.adapter.terminate(pid)
    rig.server.clear_faults()
    rig.cloud.settle(3600)
    assert [i.id for i in rig.cloud.live_instances()] == [pid]


@pytest.mark.parametrize("kind", ["5xx", "401"])
def test_a_refused_terminate_leaves_the_row_terminating_and_billable(
    rig: Rig, kind: str, tmp_path: Path
) -> None:
    fleet, store = rig.fleet(tmp_path)
    try:
        rec = fleet.launch({"provider": rig.pair.provider, "name": "held", **rig.pair.spec})
        rig.fault(kind, rig.pair.terminate, times=99)
        with pytest.raises(TemporaryProviderError if kind == "5xx" else AuthError):
            fleet.terminate(rec.id)
        row = fleet.get(rec.id)
        assert row.state is S.TERMINATING and row.billable is True
        assert check_invariants(store) == []
    finally:
        store.close()


# ---- what the provider says ----------------------------------------------------------------


def test_unknown_raw_status_is_unknown_and_logged(rig: Rig,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    pid = rig.launch()
    rig.cloud.set_raw_status(pid, "zz-brand-new")
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters"):
        seen = rig.adapter.get(pid)
        [listed] = [i for i in rig.adapter.list_instances() if i.provider_instance_id == pid]
    assert seen is not None and seen.state is None and "zz-brand-new" in seen.raw_status
    assert listed.state is None
    assert any("zz-brand-new" in r.getMessage() for r in caplog.records
               if r.name.startswith("gpufsm.adapters"))


def test_a_listing_is_complete_or_an_error(rig: Rig) -> None:
    """A page that fails fails the whole listing: "fewer instances" must never pass for
    an answer, or the missing ones would read as gone."""
    pages = 1
    if rig.pair.page_size:
        for _ in range(rig.pair.page_size + 3):
            rig.cloud.spawn_untracked(None, instance_type=rig.pair.offers[0].name)
        pages = 2
        assert len(rig.adapter.list_instances()) == rig.pair.page_size + 3
        rig.sent.clear()
    rig.fault("5xx", rig.pair.listing, times=99, after=pages - 1)
    with pytest.raises(TemporaryProviderError):
        rig.adapter.list_instances()
    assert len(rig.requests(rig.pair.listing)) == pages - 1 + FAST_RETRY.attempts


def test_a_listing_outage_raises_and_an_empty_answer_passes_through(rig: Rig) -> None:
    rig.launch()
    rig.cloud.outage(99, mode="error")
    with pytest.raises(TemporaryProviderError):
        rig.adapter.list_instances()
    rig.cloud.clear_faults()
    rig.adapter.seam.breaker.record_success()  # the outage's failures opened the breaker
    rig.cloud.outage(1, mode="empty")  # a deprecated endpoint's empty 200: the caller's to doubt
    assert list(rig.adapter.list_instances()) == []
    assert len(rig.adapter.list_instances()) == 1


# ---- every spec field honoured or refused ------------------------------------------------


Body = dict[str, Any]


@dataclass(frozen=True)
class Sent:
    """Honoured: the launch requests (by route kind) carry the field in provider terms."""

    check: Callable[[dict[str, Body]], bool]


@dataclass(frozen=True)
class Refused:
    """Refused by ``validate`` with a ValidationError naming the field (or a sub-field)."""


@dataclass(frozen=True)
class Capped:
    """A price cap checked against the provider's price: a spec above it launches, one
    below is refused (InsufficientCapacity) before the launch request is sent."""

    above: float
    below: float


FIELDS: dict[str, dict[str, tuple[dict[str, Any], Sent | Refused | Capped]]] = {
    "lambda": {
        "instance_type": ({}, Sent(lambda b: b["launch"]["instance_type_name"] == "gpu_1x_a10")),
        "region": ({}, Sent(lambda b: b["launch"]["region_name"] == "us-east-1")),
        "image": ({"image": "ubuntu:22.04"}, Refused()),
        "name": ({}, Sent(lambda b: b["launch"]["name"].endswith("/contract"))),
        "ssh_key_names": ({}, Sent(lambda b: b["launch"]["ssh_key_names"] == ["k"])),
        "disk_gb": ({"disk_gb": 40}, Refused()),
        "gpu_count": ({"gpu_count": 2}, Refused()),  # fixed by the type: 1x means 1
        "command": ({"command": "echo hi"},
                    Sent(lambda b: b["launch"]["user_data"] == "echo hi")),
        "env": ({"env": {"A": "1"}}, Refused()),
        "ports": ({"ports": [8080]}, Refused()),
        "max_price_per_hour": ({}, Capped(above=1.0, below=0.1)),
        "options": ({"options": {"hostname": "box-1"}},
                    Sent(lambda b: b["launch"]["hostname"] == "box-1")),
    },
    "novita": {
        "instance_type": ({}, Sent(lambda b: b["products"]["productName"] == "RTX 4090 24GB"
                                   and b["launch"]["productId"].startswith("prod-"))),
        "region": ({"region": "us-ca-01"},
                   Sent(lambda b: b["launch"]["clusterId"] == "us-ca-01")),
        "image": ({}, Sent(lambda b: b["launch"]["imageUrl"] == "pytorch/pytorch:2.3.0")),
        "name": ({}, Sent(lambda b: b["launch"]["name"].endswith("/contract"))),
        "ssh_key_names": ({"ssh_key_names": ["k"]}, Refused()),
        "disk_gb": ({"disk_gb": 40}, Sent(lambda b: b["launch"]["rootfsSize"] == 40)),
        "gpu_count": ({"gpu_count": 2}, Sent(lambda b: b["launch"]["gpuNum"] == 2)),
        "command": ({"command": "echo hi"}, Sent(lambda b: b["launch"]["command"] == "echo hi")),
        "env": ({"env": {"A": "1"}},
                Sent(lambda b: b["launch"]["envs"] == [{"key": "A", "value": "1"}])),
        "ports": ({"ports": [8080]}, Sent(lambda b: b["launch"]["ports"] == "8080/tcp")),
        "max_price_per_hour": ({}, Capped(above=1.0, below=0.1)),
        "options": ({"options": {"minCudaVersion": "12.1"}},
                    Sent(lambda b: b["launch"]["minCudaVersion"] == "12.1")),
    },
    "runpod": {
        "instance_type": ({}, Sent(lambda b: b["launch"]["gpuTypeIds"] == ["NVIDIA A40"])),
        "region": ({"region": "EU-RO-1"},
                   Sent(lambda b: b["launch"]["dataCenterIds"] == ["EU-RO-1"])),
        "image": ({}, Sent(lambda b: b["launch"]["imageName"] == "runpod/pytorch:2.4.0")),
        "name": ({}, Sent(lambda b: b["launch"]["name"].endswith("/contract"))),
        "ssh_key_names": ({"ssh_key_names": ["k"]}, Refused()),
        "disk_gb": ({"disk_gb": 40}, Sent(lambda b: b["launch"]["containerDiskInGb"] == 40)),
        "gpu_count": ({"gpu_count": 2}, Sent(lambda b: b["launch"]["gpuCount"] == 2)),
        "command": ({"command": "echo hi"},
                    Sent(lambda b: b["launch"]["dockerStartCmd"] == ["sh", "-c", "echo hi"])),
        "env": ({"env": {"A": "1"}}, Sent(lambda b: b["launch"]["env"] == {"A": "1"})),
        "ports": ({"ports": [8080]}, Sent(lambda b: "8080/tcp" in b["launch"]["ports"])),
        "max_price_per_hour": ({"max_price_per_hour": 1.0}, Refused()),
        "options": ({"options": {"cloudType": "SECURE"}},
                    Sent(lambda b: b["launch"]["cloudType"] == "SECURE")),
    },
    "vastai": {
        "instance_type": ({}, Sent(lambda b: b["search"]["gpu_name"] == {"eq": "RTX 4090"})),
        "region": ({"region": "US"}, Sent(lambda b: b["search"]["geolocation"] == {"in": ["US"]})),
        "image": ({}, Sent(lambda b: b["launch"]["image"] == "pytorch/pytorch:latest")),
        "name": ({}, Sent(lambda b: b["launch"]["label"].endswith("/contract"))),
        "ssh_key_names": ({"ssh_key_names": ["k"]}, Refused()),
        "disk_gb": ({"disk_gb": 40}, Sent(lambda b: b["launch"]["disk"] == 40
                                          and b["search"]["disk_space"] == {"gte": 40})),
        "gpu_count": ({"gpu_count": 1}, Sent(lambda b: b["search"]["num_gpus"] == {"eq": 1})),
        "command": ({"command": "echo hi"}, Sent(lambda b: b["launch"]["onstart"] == "echo hi")),
        "env": ({"env": {"A": "1"}}, Sent(lambda b: "-e A=1" in b["launch"]["env"])),
        "ports": ({"ports": [8080]}, Sent(lambda b: "-p 8080:8080" in b["launch"]["env"])),
        "max_price_per_hour": ({}, Capped(above=1.0, below=0.1)),
        "options": ({"options": {"runtype": "jupyter"}},
                    Sent(lambda b: b["launch"]["runtype"] == "jupyter")),
    },
}
#: Where, besides the launch itself, a provider reads the spec before launching.
PRE_LAUNCH: dict[str, dict[str, Route]] = {
    "lambda": {},
    "novita": {"products": ("GET", "/products")},
    "runpod": {},
    "vastai": {"search": ("POST", "/api/v0/bundles/")},
}
#: Enforced by the engine, whatever the adapter (the health gate): nothing to send.
ENGINE_FIELDS = {"provider", "health"}
CASES = [(p, f) for p in PAIRS for f in FIELDS[p.provider]]


def test_every_spec_field_is_in_every_table() -> None:
    expected = set(InstanceSpec.model_fields) - ENGINE_FIELDS
    assert {name: set(table) for name, table in FIELDS.items()} == {
        p.provider: expected for p in PAIRS}


def _bodies(rig: Rig) -> dict[str, Body]:
    routes = {"launch": rig.pair.launch, **PRE_LAUNCH[rig.pair.provider]}
    out: dict[str, Body] = {}
    for kind, route in routes.items():
        [request, *_] = rig.requests(route)
        out[kind] = ({k: v[0] for k, v in request.query.items()} if request.method == "GET"
                     else request.json())
    return out


@pytest.mark.parametrize(("pair", "name"), CASES,
                         ids=[f"{p.provider}-{f}" for p, f in CASES])
def test_every_spec_field_is_honoured_or_refused(pair: Pair, name: str,
                                                 tmp_path: Path) -> None:
    """Issue 9 item 8: Lambda launched a $0.75/h type under ``--max-price 0.1``. A field an
    adapter cannot honour is a ValidationError naming it, before any row is written."""
    rig = _build(pair)
    fleet, store = rig.fleet(tmp_path)
    overrides, rule = FIELDS[pair.provider][name]
    spec = {"provider": pair.provider, "name": "contract", **pair.spec, **overrides}
    try:
        if isinstance(rule, Refused):
            with pytest.raises(ValidationError) as got:
                fleet.launch(spec)
            assert got.value.field.split(".")[0] == name
            assert fleet.list() == [] and rig.sent == []  # no row, no call
        elif isinstance(rule, Capped):
            with pytest.raises(InsufficientCapacity) as refused:
                fleet.launch({**spec, name: rule.below})
            assert "max_price_per_hour" in str(refused.value)
            assert rig.requests(pair.launch) == []  # refused before the launch was sent
            [row] = fleet.list()
            assert row.state is S.FAILED and row.billable is False
            fleet.launch({**spec, name: rule.above})
            assert len(rig.cloud.live_instances()) == 1
        else:
            fleet.launch(spec)
            assert rule.check(_bodies(rig)), _bodies(rig)
    finally:
        store.close()
        rig.adapter.close()
        rig.server.stop()


#: The read each adapter makes before a launch (Lambda: only to check a price cap).
READ_BEFORE_LAUNCH: dict[str, Route] = {
    "lambda": ("GET", "/instance-types"),
    "novita": ("GET", "/products"),
    "vastai": ("POST", "/api/v0/bundles/"),
}
PRE_READERS = [p for p in PAIRS if p.provider in READ_BEFORE_LAUNCH]


@pytest.mark.parametrize("pair", PRE_READERS, ids=[p.provider for p in PRE_READERS])
def test_a_read_failing_before_the_launch_says_nothing_was_sent(pair: Pair,
                                                               tmp_path: Path) -> None:
    """The launch never left, so the engine may record "nothing created" (FAILED, not
    billable) instead of a CREATING row searched for a machine that cannot exist."""
    rig = _build(pair)
    fleet, store = rig.fleet(tmp_path)
    try:
        rig.fault("5xx", READ_BEFORE_LAUNCH[pair.provider], times=99)
        with pytest.raises(ProviderUnavailable) as got:
            fleet.launch({"provider": pair.provider, "name": "pre", **pair.spec,
                          "max_price_per_hour": 50.0})
        assert got.value.not_sent is True
        assert rig.requests(pair.launch) == []
        [row] = fleet.list()
        assert row.billable is False
    finally:
        store.close()
        rig.adapter.close()
        rig.server.stop()


# ---- the key ---------------------------------------------------------------------------------


def test_the_key_is_never_shown(rig: Rig, caplog: pytest.LogCaptureFixture,
                                tmp_path: Path) -> None:
    """Not in logs (at DEBUG, httpx and httpcore included), reprs, error text or stored
    rows, even when the server echoes the key back in its error bodies."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    fleet, store = rig.fleet(tmp_path)
    try:
        rig.fault("429", rig.pair.launch, times=1, echo_key=True)
        rec = fleet.launch({"provider": rig.pair.provider, "name": "k", **rig.pair.spec})
        pid = fleet.get(rec.id).provider_instance_id
        for kind in ("5xx", "401", "404", "429"):
            rig.fault(kind, rig.pair.get, times=99, echo_key=True)
            with pytest.raises(ProviderError) as got:
                rig.adapter.get(pid)
            errors.append(got.value)
            rig.server.clear_faults()
        rig.fault("5xx", rig.pair.terminate, times=99, echo_key=True)
        with pytest.raises(TemporaryProviderError) as got:
            fleet.terminate(rec.id)  # its error is recorded on the row
        errors.append(got.value)
    finally:
        store.close()
    texts = [full_text(e) for e in errors]
    texts += [caplog.text, *(str(r.__dict__) for r in caplog.records)]
    texts += [repr(rig.adapter), repr(rig.adapter.seam), str(vars(rig.adapter))]
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("contract.db*"))
    assert stored, "the database was written"
    for text in texts:
        assert KEY not in text
    assert KEY.encode() not in stored


def test_the_key_echo_fault_does_echo(rig: Rig) -> None:
    """The fault above is real: an unscrubbed reader of the body would see the key."""
    rig.fault("5xx", rig.pair.get, echo_key=True)
    response = httpx.get(f"{rig.server.url}{rig.pair.get[1]}1",
                         headers={"Authorization": f"Bearer {KEY}"})
    assert KEY in response.text


def test_a_missing_key_names_its_variable(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    env = rig.adapter.profile.api_key_env
    monkeypatch.delenv(env, raising=False)
    monkeypatch.delenv(f"GPUFSM_{env}", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env to find it in
    with pytest.raises(ValidationError) as got:
        adapter_class(rig.pair.provider)(base_url=rig.server.url)
    assert got.value.field == env
    assert env in str(got.value)
    with pytest.raises(ValidationError) as blank:  # a blank key could only come back as 401
        adapter_class(rig.pair.provider)("  ", base_url=rig.server.url)
    assert blank.value.field == env


# ---- where the key and the URL come from -----------------------------------------------


def test_the_base_url_comes_from_the_environment_like_the_key(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 9 item 10: ``LambdaCloudAdapter()`` ignored GPUFSM_LAMBDA_BASE_URL (the CLI
    honoured it), so an embedder testing against an emulator sent the key to production."""
    profile = rig.adapter.profile
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(profile.api_key_env, KEY)
    monkeypatch.setenv(profile.base_url_env, rig.server.url)
    adapter = adapter_class(rig.pair.provider)(clock=rig.clock, rate_limits={},
                                                retry=RetryPolicy(attempts=1))
    try:
        # Checked before any call: a wrong URL here would be production.
        assert rig.server.url in repr(adapter.seam)
        assert adapter.list_instances() == []  # answered by the emulator, key accepted
    finally:
        adapter.close()


def test_an_explicit_base_url_wins_and_unset_means_production(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    profile = rig.adapter.profile
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(profile.base_url_env, "http://127.0.0.1:9")
    given = adapter_class(rig.pair.provider)(KEY, base_url=rig.server.url)
    monkeypatch.delenv(profile.base_url_env)
    default = adapter_class(rig.pair.provider)(KEY)
    try:
        assert rig.server.url in repr(given.seam)
        assert profile.base_url in repr(default.seam)
    finally:
        given.close()
        default.close()


def test_the_cli_builds_adapters_with_the_same_resolution(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gpufsm.cli._providers import PROVIDER_SETTINGS, build_adapters

    monkeypatch.chdir(tmp_path)
    key_field, url_field, env = PROVIDER_SETTINGS[rig.pair.provider]
    profile = rig.adapter.profile
    assert (key_field, url_field, env) == (profile.api_key_setting,
                                           profile.base_url_setting, profile.api_key_env)
    settings = Settings(**{key_field: KEY, url_field: rig.server.url})
    [adapter] = build_adapters(settings, [rig.pair.provider])
    try:
        assert rig.server.url in repr(adapter.seam)  # type: ignore[attr-defined]
    finally:
        adapter.close()  # type: ignore[attr-defined]


# ---- connections that cannot be made ------------------------------------------------------


def test_a_refused_connection_fails_in_seconds_naming_the_url(rig: Rig,
                                                             tmp_path: Path) -> None:
    """Issue 10 item 5: 49.8 s of retries against a port nothing listens on. With each
    adapter's own default retry policy and the real clock: seconds, the URL named, and a
    launch known not to have been sent (the engine then knows nothing was created)."""
    url = f"http://127.0.0.1:{free_port()}"
    adapter = adapter_class(rig.pair.provider)(SecretStr(KEY), base_url=url, rate_limits={})
    store = SqlInstanceStore(f"sqlite:///{tmp_path / 'refused.db'}")
    fleet = Fleet(store, [adapter], actor="contract")
    try:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as got:
            adapter.get("123")
        assert time.monotonic() - started < 5.0
        assert url in str(got.value) and got.value.not_sent is True
        with pytest.raises(ProviderUnavailable) as launched:
            fleet.launch({"provider": rig.pair.provider, "name": "nowhere", **rig.pair.spec})
        assert launched.value.not_sent is True
        assert time.monotonic() - started < 10.0
        [row] = fleet.list()
        assert row.billable is False  # surely not sent: nothing can be billing
    finally:
        store.close()
        adapter.close()


# ---- the engine over HTTP ---------------------------------------------------------------


def test_engine_drives_a_whole_life_over_http_through_faults(rig: Rig, tmp_path: Path) -> None:
    fleet, store = rig.fleet(tmp_path)
    try:
        rig.server.inject(HttpFault("429", times=2, retry_after=1))
        rec = fleet.launch({"provider": rig.pair.provider, "name": "e2e", **rig.pair.spec})
        rig.server.inject(HttpFault("429", times=1))  # without Retry-After
        rig.server.inject(HttpFault("5xx", times=2, method="GET", status=503))
        rec = fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        if rig.pair.capabilities.stop:
            fleet.stop(rec.id)
            fleet.wait_for(rec.id, S.STOPPED, timeout=900, poll_interval=5)
            fleet.start(rec.id)
            fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        rig.server.inject(HttpFault("5xx", times=1, status=502, method="GET"))
        fleet.restart(rec.id)
        fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        rig.server.inject(HttpFault("429", times=1, retry_after=2))
        fleet.terminate(rec.id)
        final = fleet.wait_for(rec.id, S.TERMINATED, timeout=900, poll_interval=5)
        assert final.billable is False
        assert check_invariants(store) == []
        rig.cloud.settle(3600)
        assert rig.cloud.live_instances() == []
        statuses = rig.statuses()
        assert statuses.count(429) >= 3 and 503 in statuses  # the faults really happened
    finally:
        store.close()
