"""The shared dialect: what every provider says the same way, written once, as data.

A provider's dialect is mostly tables: which raw status means which state, which error
code (or phrase) means which gpufsm error, which path an operation calls, how a listing
pages. They are interpreted once, here, so an adapter declares data and keeps only its
provider's true quirks (Vast's search-then-accept, RunPod's composite status, Novita's
product resolution, Lambda's tags).

* :class:`StatusTable`: raw status → state, and the one warning for a word it lacks
  (UNKNOWN, never a crash and never silently "starting").
* :class:`ErrorRules` and :class:`ErrorReport`: a provider's error body, read by its
  adapter into a report (candidate codes, the provider's words), becomes a gpufsm error
  by the rules (codes, code prefixes, text fragments, a priority, the statuses whose
  meaning is the status itself). The key is masked before any text is cut.
* :class:`Endpoint`: one operation's method, path and whether a retry may repeat it.
* :func:`collect_pages` with :class:`TokenPaging` or :class:`NumberPaging`: one listing
  algorithm, complete or an error, never partial.
* :func:`parse_model` and :func:`parse_options`: untrusted JSON and user options through
  pydantic, failing with an error that names the field; :func:`refuse` for the spec
  fields a provider cannot honour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import httpx
import pydantic
from pydantic import BaseModel, SecretStr

from gpufsm.adapters._http import parse_retry_after, status_class
from gpufsm.errors import ProviderError, ProviderUnavailable, RateLimited, ValidationError
from gpufsm.machines import InstanceState

__all__ = [
    "MASK",
    "SERVER_ERRORS",
    "Endpoint",
    "ErrorReport",
    "ErrorRules",
    "NumberPaging",
    "Page",
    "Paging",
    "StatusTable",
    "TokenPaging",
    "collect_pages",
    "json_or_none",
    "parse_model",
    "parse_options",
    "refuse",
    "scrub",
]

#: What our key becomes in any provider text we keep (the same mask ``SecretStr`` shows).
MASK = "**********"

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)

#: Every 5xx: a status that means "the server failed" whatever the body says.
SERVER_ERRORS = frozenset(range(500, 600))


def scrub(text: str, secret: SecretStr | str | None) -> str:
    """Provider text with our key masked, should a server ever echo it back."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return text.replace(value, MASK) if value else text


# ---- statuses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusTable:
    """A provider's raw status → state table, and the one way an unknown word is told."""

    provider: str
    states: Mapping[str, InstanceState]
    log: logging.Logger  # the adapter's own logger, so its users can filter on it
    #: What the provider calls the word, for the warning ("status", "actual_status" …).
    word: str = "status"

    def state(self, instance_id: str, raw: str) -> InstanceState | None:
        """The state ``raw`` means, or None (UNKNOWN, logged) for a word not in the table."""
        state = self.states.get(raw)
        if state is None:
            self.unknown(instance_id, raw)
        return state

    def unknown(self, instance_id: str, raw: str) -> None:
        """Say once, the same way for every provider, that ``raw`` reads as UNKNOWN."""
        self.log.warning("%s: instance %s reports unknown %s %r; state UNKNOWN",
                         self.provider, instance_id, self.word, raw)


# ---- errors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """What an adapter read from one error body, before any rule is applied.

    ``codes`` are the candidate codes, most telling first (an ``error`` field, a code
    embedded in a message, a v2 title …); ``text`` is the provider's own words (not yet
    masked); ``code`` is what the error records as its code (None: the code that matched).
    """

    codes: Sequence[str]
    text: str = ""
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorRules:
    """A provider's error dialect as data, interpreted the same way for all of them.

    A code is looked up in ``codes``, then by the first matching key of ``prefixes``;
    ``phrases`` turn text fragments (lower case) into codes, except at the statuses in
    ``text_blind``, which mean what they say whatever the text. When several codes match,
    the first class in ``priority`` wins (else the first code). At the statuses in
    ``status_decides`` the mapper answers None and the seam maps by status; at those in
    ``forced`` the class is fixed whatever the body says. The error records the code
    that matched, or (``records="report"``) the report's own ``code`` even when None.

    A code the table lacks is logged; ``unknown`` says what then happens: ``"seam"``
    leaves the error to the seam (None), ``"status"`` keeps the provider's code on an
    error classed by the HTTP status alone (:func:`gpufsm.adapters._http.status_class`,
    which never says "not found").
    """

    provider: str
    codes: Mapping[str, type[ProviderError]]
    log: logging.Logger
    prefixes: Mapping[str, type[ProviderError]] = field(default_factory=dict)
    phrases: Mapping[str, str] = field(default_factory=dict)
    priority: tuple[type[ProviderError], ...] = ()
    status_decides: frozenset[int] = frozenset()
    text_blind: frozenset[int] = frozenset()
    forced: Mapping[int, type[ProviderError]] = field(default_factory=dict)
    records: Literal["match", "report"] = "match"
    unknown: Literal["seam", "status"] = "seam"
    text_limit: int = 300

    def class_of(self, code: str) -> type[ProviderError] | None:
        """The class for ``code``: an exact entry first, then a prefix."""
        cls = self.codes.get(code)
        if cls is not None:
            return cls
        return next((c for p, c in self.prefixes.items() if code.startswith(p)), None)

    def codes_in(self, text: str) -> list[str]:
        """Codes named by fragments of ``text``, in the table's order."""
        lowered = text.lower()
        return [code for phrase, code in self.phrases.items() if phrase in lowered]

    def error(self, report: ErrorReport, response: httpx.Response, *,
              secret: SecretStr | str | None = None) -> ProviderError | None:
        """The gpufsm error ``report`` means at ``response``'s status, or None (the seam's)."""
        status = response.status_code
        if status in self.status_decides:
            return None
        found = self._match(report, status)
        cls = self.forced.get(status) or (found[1] if found else None)
        if cls is None:
            return self._unknown(report, response, secret)
        code = report.code if report.code is not None or self.records == "report" else (
            found[0] if found else None)
        return self.build(cls, report.text or code or f"HTTP {status}", response,
                          secret=secret, code=code)

    def _match(self, report: ErrorReport, status: int
               ) -> tuple[str, type[ProviderError]] | None:
        candidates = [] if status in self.text_blind else self.codes_in(report.text)
        known = [(c, cls) for c in [*candidates, *report.codes]
                 if (cls := self.class_of(c)) is not None]
        if not known:
            return None
        rank = {cls: i for i, cls in enumerate(self.priority)}  # unranked: last, in order
        return min(known, key=lambda item: rank.get(item[1], len(rank)))

    def _unknown(self, report: ErrorReport, response: httpx.Response,
                 secret: SecretStr | str | None) -> ProviderError | None:
        code = report.code or next(iter(report.codes), None)
        if not code:
            return None
        status = response.status_code
        self.log.warning("%s: unknown error code %r (HTTP %d); mapping by status",
                         self.provider, code, status)
        if self.unknown == "seam":
            return None
        return self.build(status_class(status),
                          report.text or response.reason_phrase or f"HTTP {status}",
                          response, secret=secret, code=code)

    def build(self, cls: type[ProviderError], text: str, response: httpx.Response, *,
              secret: SecretStr | str | None, code: str | None) -> ProviderError:
        """``cls`` with the provider's text, masked first (a cut must not leave part of a
        key), then cut; a RateLimited carries the Retry-After it was sent."""
        message = scrub(text, secret)[:self.text_limit]
        kw: dict[str, Any] = {"provider": self.provider, "code": code,
                              "status_code": response.status_code}
        if cls is RateLimited:
            kw["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
        return cls(message, **kw)


def json_or_none(response: httpx.Response) -> Any:
    """The JSON body of an answer; None when it is empty or not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


# ---- endpoints and paging -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One operation: method, path (``{id}``: the quoted instance id), and whether the seam
    may retry it after an unclear failure (never for what a retry could do twice)."""

    method: str
    path: str
    idempotent: bool


@dataclass(frozen=True, slots=True)
class Page(Generic[_T]):
    """One page of a listing: its items, the next token (cursor paging; None at the
    end) and the provider's count of the whole listing (number paging), if it gives one."""

    items: Sequence[_T]
    token: str | None = None
    total: int | None = None


class Paging(Protocol):
    """Where a listing starts and which page follows; ``checks_total`` makes a count
    that disagrees with ``total`` an error (a partial listing)."""

    @property
    def first(self) -> Hashable: ...

    @property
    def checks_total(self) -> bool: ...

    def after(self, page: Page[Any], cursor: Hashable, *, new: int, seen: int,
              total: int | None) -> Hashable | None: ...


@dataclass(frozen=True, slots=True)
class TokenPaging:
    """Keyset paging: each page names the next one's token; no token is the end."""

    first: Hashable = None
    checks_total: bool = False

    def after(self, page: Page[Any], cursor: Hashable, *, new: int, seen: int,
              total: int | None) -> Hashable | None:
        return page.token


@dataclass(frozen=True, slots=True)
class NumberPaging:
    """Page numbers from 1, ``size`` items a page, checked against the provider's total.

    An empty (or wholly repeated) page is the end whatever ``total`` says; a full page
    may have a successor even when ``total`` says we are done (a total that lags would
    hide the newest instance), and a short page is not the end while ``total`` says
    more exist (the server may cap the page size).
    """

    size: int
    first: Hashable = 1
    checks_total: bool = True

    def after(self, page: Page[Any], cursor: Hashable, *, new: int, seen: int,
              total: int | None) -> Hashable | None:
        if not page.items or new == 0:
            return None
        if len(page.items) < self.size and (total is None or seen >= total):
            return None
        assert isinstance(cursor, int)
        return cursor + 1


def collect_pages(fetch: Callable[[Any], Page[_T]], paging: Paging, *,
                  key: Callable[[_T], Hashable], provider: str,
                  max_pages: int = 10_000) -> list[_T]:
    """Every item of a listing, each once (by ``key``), or ProviderUnavailable.

    Any page that fails fails the whole listing, and so do a cursor seen twice, a
    listing that does not end, and (``paging.checks_total``) a count that disagrees with
    the provider's total: a partial listing would make the missing instances read as
    gone, so the reconciler must read UNKNOWN and try again next pass.
    """
    seen: dict[Hashable, _T] = {}
    visited: set[Hashable] = set()
    cursor, total, pages = paging.first, None, 0
    while True:
        pages += 1
        if pages > max_pages:
            raise ProviderUnavailable(f"listing did not end after {max_pages} pages",
                                      provider=provider)
        page = fetch(cursor)
        total = page.total if page.total is not None else total
        new = _add_new(seen, page.items, key)
        nxt = paging.after(page, cursor, new=new, seen=len(seen), total=total)
        if nxt is None:
            break
        if nxt in visited:
            raise ProviderUnavailable("listing repeats a page cursor", provider=provider)
        visited.add(nxt)
        cursor = nxt
    if paging.checks_total and total is not None and len(seen) != total:
        raise ProviderUnavailable(f"partial listing: {len(seen)} instances over {pages} "
                                  f"page(s) but total says {total}", provider=provider)
    return list(seen.values())


def _add_new(seen: dict[Hashable, _T], items: Iterable[_T],
             key: Callable[[_T], Hashable]) -> int:
    new = 0
    for item in items:
        k = key(item)
        if k not in seen:
            seen[k] = item
            new += 1
    return new


# ---- parsing -------------------------------------------------------------------------


def _where(error: Mapping[str, Any], data: Any = None) -> str:
    """A pydantic error's location as a dotted field name. Walking ``data`` (the input),
    a list is named as a whole (an item's index says little to a user), and a mapping's
    entry by its key."""
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(data, list | tuple):
            break
        if part != "[key]":
            parts.append(str(part))
            data = data.get(part) if isinstance(data, Mapping) else None
    return ".".join(parts)


def parse_model(model: type[_M], data: Any, *, op: str, provider: str,
                status: int | None = None) -> _M:
    """Untrusted JSON (bytes or already decoded) as ``model``, or ProviderUnavailable
    naming the field that failed.

    Temporary on purpose: the call may have done its work (a launch may have created a
    machine), so the outcome is unknown, and a listing we cannot read must never pass
    for "no instances".
    """
    try:
        if isinstance(data, bytes | str):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0] if exc.error_count() else {"loc": (), "msg": "?"}
        answer = f"{status} response" if status is not None else "answer"
        raise ProviderUnavailable(
            f"{op}: unreadable {answer} ({_where(first) or 'body'}: {first['msg']})",
            provider=provider, status_code=status,
        ) from exc


def refuse(spec: Any, refused: Mapping[str, str]) -> None:
    """ValidationError for the first spec field of ``refused`` that is set: the fields a
    provider cannot honour, refused by name rather than silently dropped."""
    for name, rule in refused.items():
        value = getattr(spec, name)
        if value is None or (not isinstance(value, str) and not value):
            continue
        raise ValidationError(name, rule, value=value if isinstance(value, str | int | float)
                              else list(value))


def parse_options(model: type[_M], options: Mapping[str, Any], *, provider: str) -> _M:
    """``InstanceSpec.options`` as ``model`` (extra keys forbidden), or ValidationError
    naming ``options.<field>``: a typo costs money when it silently falls back."""
    try:
        return model.model_validate(dict(options))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        rule = first["msg"]
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(model.model_fields))
            rule = f"not a {provider} option; known: {known}"
        raise ValidationError(f"options.{_where(first, options)}".rstrip("."), rule,
                              value=first.get("input")) from exc

