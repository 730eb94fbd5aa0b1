"""The shared dialect (``gpufsm.adapters._dialect``): the rules every adapter's data is read by.

The provider suites test each dialect through its adapter; these pin the shared pieces
themselves: one paging algorithm (complete or an error), error rules as data, the one
unknown-status warning, and errors that name the field.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from gpufsm.adapters._dialect import (
    MASK,
    ErrorReport,
    ErrorRules,
    NumberPaging,
    Page,
    StatusTable,
    TokenPaging,
    collect_pages,
    parse_model,
    parse_options,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InvalidRequest,
    ProviderNotFound,
    ProviderUnavailable,
    RateLimited,
    ValidationError,
)
from gpufsm.machines import InstanceState

LOG = logging.getLogger("gpufsm.adapters.test")


# ---- paging --------------------------------------------------------------------------


def test_token_paging_follows_every_page_and_drops_repeats() -> None:
    pages = {None: Page([1, 2], token="a"), "a": Page([2, 3], token="b"), "b": Page([4])}
    assert collect_pages(pages.__getitem__, TokenPaging(), key=lambda i: i,
                         provider="p") == [1, 2, 3, 4]


def test_a_cursor_seen_twice_fails_the_listing() -> None:
    pages = {None: Page([1], token="a"), "a": Page([2], token="a")}
    with pytest.raises(ProviderUnavailable, match="repeats a page cursor"):
        collect_pages(pages.__getitem__, TokenPaging(), key=lambda i: i, provider="p")


def test_a_listing_that_does_not_end_fails() -> None:
    with pytest.raises(ProviderUnavailable, match="did not end after 3 pages"):
        collect_pages(lambda n: Page([n], token=str(n + 1) if n else "1"),
                      NumberPaging(1), key=lambda i: i, provider="p", max_pages=3)


def test_number_paging_stops_on_a_short_page_once_total_is_reached() -> None:
    pages = {1: Page([1, 2], total=3), 2: Page([3], total=3)}
    assert collect_pages(pages.__getitem__, NumberPaging(2), key=lambda i: i,
                         provider="p") == [1, 2, 3]


def test_number_paging_disagreeing_with_total_is_a_partial_listing() -> None:
    pages = {1: Page([1, 2], total=5), 2: Page([])}
    with pytest.raises(ProviderUnavailable, match="partial listing: 2 instances"):
        collect_pages(pages.__getitem__, NumberPaging(2), key=lambda i: i, provider="p")


# ---- errors ----------------------------------------------------------------------------


RULES = ErrorRules("p", {"gone": ProviderNotFound, "full": InsufficientCapacity,
                         "bad": InvalidRequest}, LOG,
                   prefixes={"auth/": AuthError}, phrases={"no capacity": "full"},
                   priority=(InsufficientCapacity, ProviderNotFound, InvalidRequest),
                   status_decides=frozenset({503}), forced={429: RateLimited})


def _resp(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


def test_codes_prefixes_phrases_and_priority() -> None:
    assert type(RULES.error(ErrorReport(["gone"]), _resp(404))) is ProviderNotFound
    assert type(RULES.error(ErrorReport(["auth/expired"]), _resp(401))) is AuthError
    found = RULES.error(ErrorReport(["bad"], "there is no capacity"), _resp(400))
    assert type(found) is InsufficientCapacity and found.code == "full"


def test_status_decides_and_forced_statuses() -> None:
    assert RULES.error(ErrorReport(["bad"]), _resp(503)) is None
    limited = RULES.error(ErrorReport(["bad"], "slow down"), _resp(429, **{"retry-after": "3"}))
    assert type(limited) is RateLimited and limited.retry_after == 3


def test_an_unknown_code_is_logged_then_left_to_the_seam_or_classed_by_status(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.test"):
        assert RULES.error(ErrorReport(["brand-new"]), _resp(404)) is None
    assert "brand-new" in caplog.text
    by_status = ErrorRules("p", {}, LOG, unknown="status")
    kept = by_status.error(ErrorReport(["NEW"], "why"), _resp(404))
    # A bare 404 never says "gone": an unknown outcome, with the provider's code kept.
    assert type(kept) is ProviderUnavailable and kept.code == "NEW"


def test_the_key_is_masked_before_the_text_is_cut() -> None:
    rules = ErrorRules("p", {"bad": InvalidRequest}, LOG, text_limit=12)
    error = rules.error(ErrorReport(["bad"], "key sk-1234567890"), _resp(400),
                        secret="sk-1234567890")
    assert error is not None and "sk-1" not in str(error) and "key ********" in str(error)
    assert MASK.startswith("*")


# ---- statuses and parsing --------------------------------------------------------------


def test_an_unknown_status_is_unknown_and_logged_once(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    table = StatusTable("p", {"up": InstanceState.RUNNING}, LOG)
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.test"):
        assert table.state("i-1", "up") is InstanceState.RUNNING
        assert table.state("i-1", "zz") is None
    assert [r.getMessage() for r in caplog.records] == [
        "p: instance i-1 reports unknown status 'zz'; state UNKNOWN"]


class _Body(BaseModel):
    items: list[int]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str] | None = None
    limits: dict[str, int] | None = None


def test_unreadable_json_names_the_field() -> None:
    with pytest.raises(ProviderUnavailable, match=r"list: unreadable 200 response \(items"):
        parse_model(_Body, b'{"items": "x"}', op="list", provider="p", status=200)


@pytest.mark.parametrize(("options", "field"), [
    ({"names": ["a", 5]}, "options.names"),  # a list is named as a whole
    ({"limits": {"gpu": "many"}}, "options.limits.gpu"),  # a mapping's entry by its key
    ({"colour": "red"}, "options.colour"),
])
def test_options_errors_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_options(_Options, options, provider="P")
    assert caught.value.field == field
    if field == "options.colour":
        assert "not a P option; known: limits, names" in caught.value.rule
