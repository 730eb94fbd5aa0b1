"""``decide``'s answer for a row the provider reports unchanged is reached without
building its facts (``unchanged``); it must be the answer the full rules give, for any
row and any reading. Hypothesis holds the two equal, on full records and slim rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufsm.adapters import Observation, ProviderInstance
from gpufsm.engine import _decide, decide
from gpufsm.machines import Event, InstanceState
from gpufsm.store import InstanceRecord, TrackedInstance

S = InstanceState
T0 = datetime(2025, 1, 1, tzinfo=UTC)
RAW = st.sampled_from(["running", "active", "booting", "stopped", "unhealthy", None])
IPS = st.sampled_from([None, "10.0.0.9", "10.0.0.10"])
PRICES = st.sampled_from([None, 0.75, 1.5])
REGIONS = st.sampled_from([None, "us-east-1", "us-west-1"])
STATES = st.sampled_from(list(S))


@st.composite
def rows(draw: st.DrawFn) -> InstanceRecord:
    state = draw(STATES)
    return InstanceRecord(
        id="row-1", provider="sim", state=state, version=4, client_token="t",
        tag="gpufsm-t", name="job", billable=True, spec={"provider": "sim"},
        created_at=T0 - timedelta(hours=1), updated_at=T0,
        state_entered_at=T0 - timedelta(seconds=draw(st.sampled_from([5, 500]))),
        provider_instance_id=draw(st.sampled_from([None, "sim-1"])),
        price_per_hour=draw(PRICES), ip=draw(IPS), region=draw(REGIONS),
        last_raw_status=draw(RAW), previous_state=draw(st.sampled_from([None, *S])),
        entered_by=draw(st.sampled_from([Event.OBSERVED_RUNNING, Event.STOP, Event.START])),
        accepted_at=draw(st.sampled_from([None, T0 - timedelta(hours=1)])),
        missing_count=draw(st.sampled_from([0, 2])))


@st.composite
def readings(draw: st.DrawFn) -> Observation:
    return Observation.present(ProviderInstance(
        provider_instance_id="sim-1", raw_status=draw(RAW) or "running",
        # a provider never reports CREATING (gpufsm's own state: the adapters map to others)
        state=draw(st.sampled_from([None, *(s for s in S if s is not S.CREATING)])),
        tag="gpufsm-t", ip=draw(IPS),
        price_per_hour=draw(PRICES), region=draw(REGIONS),
        detail=draw(st.sampled_from([None, "GPU fell off the bus"]))))


def _decide_both(row: Any, observation: Observation, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[Any, Any]:
    now = T0 + timedelta(seconds=10)
    kw: dict[str, Any] = dict(now=now, window=120.0, command_grace=30.0)
    fast = decide(row, observation, **kw)
    with monkeypatch.context() as patched:
        patched.setattr(_decide, "unchanged", lambda *_: False)
        full = decide(row, observation, **kw)
    return fast, full


def _near(draw: st.DrawFn, same: Any, others: st.SearchStrategy[Any]) -> Any:
    """What the row holds, most of the time: the cases where one fact differs are the
    ones the shortcut must not swallow."""
    return same if draw(st.integers(0, 3)) else draw(others)


@st.composite
def close_readings(draw: st.DrawFn, row: InstanceRecord) -> Observation:
    """A reading of ``row`` that agrees with it in all but a few (random) facts."""
    reported = [s for s in S if s is not S.CREATING]
    state = _near(draw, row.state if row.state is not S.CREATING else S.RUNNING,
                  st.sampled_from([None, *reported]))
    return Observation.present(ProviderInstance(
        provider_instance_id="sim-1", state=state,
        raw_status=_near(draw, row.last_raw_status or "running", RAW.map(lambda r: r or "x")),
        tag="gpufsm-t", ip=_near(draw, row.ip, IPS),
        price_per_hour=_near(draw, row.price_per_hour, PRICES),
        region=_near(draw, row.region, REGIONS),
        detail=draw(st.sampled_from([None, "GPU fell off the bus"]))))


@settings(max_examples=400, deadline=None)
@given(record=rows(), observation=readings(), slim=st.booleans())
def test_the_shortcut_decides_as_the_full_rules(record: InstanceRecord,
                                                observation: Observation,
                                                slim: bool) -> None:
    row: Any = TrackedInstance.of(record) if slim else record
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, full = _decide_both(row, observation, monkeypatch)
    assert fast == full


@settings(max_examples=600, deadline=None)
@given(record=rows(), data=st.data(), slim=st.booleans())
def test_the_shortcut_decides_as_the_full_rules_near_agreement(
        record: InstanceRecord, data: st.DataObject, slim: bool) -> None:
    observation = data.draw(close_readings(record))
    row: Any = TrackedInstance.of(record) if slim else record
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, full = _decide_both(row, observation, monkeypatch)
    assert fast == full


def test_the_shortcut_is_taken_for_a_quiet_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: the common case of a pass does take it."""
    record = InstanceRecord(
        id="row-1", provider="sim", state=S.RUNNING, version=4, client_token="t",
        tag="gpufsm-t", name="job", billable=True, spec={}, created_at=T0, updated_at=T0,
        state_entered_at=T0, provider_instance_id="sim-1", ip="10.0.0.9",
        last_raw_status="running", price_per_hour=0.75)
    observation = Observation.present(ProviderInstance(
        "sim-1", "running", S.RUNNING, ip="10.0.0.9", price_per_hour=0.75))
    assert _decide.unchanged(record, observation.instance)  # type: ignore[arg-type]
    fast, full = _decide_both(record, observation, monkeypatch)
    assert fast == full and fast.kind == "nothing"
