"""``gpufsm offers`` run for real (typer's runner) against all four provider emulators on
loopback, each served with the catalog ``gpufsm emulator`` serves.

The emulators' catalogs change as the dialects grow, so nothing here names an offer:
what the command must print is derived from the adapters' own ``instance_types()``
answer, read beside it, and from properties (sorted, filtered, every row matches).
"""

from __future__ import annotations

import collections
import functools
import io
import json
import re
import statistics
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner, Result

from cli_env import GPUFSM, free_port
from gpufsm.adapters import RetryPolicy, adapter_class
from gpufsm.cli import _offers, _providers, app
from gpufsm.cli._emulator import PROFILES
from gpufsm.placement import GpuModel, Offer, Requirements, explain, offers_from, rank
from gpufsm.providers import PROVIDERS
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

KEY = "cli-offers-key-41d9"
OFFER_KEYS = {f.name for f in fields(Offer)}


def _url_variable(name: str) -> str:
    return f"GPUFSM_{PROVIDERS[name].url_setting.upper()}"


@dataclass
class Emulated:
    """The four emulators, and a runner whose environment points every adapter at them."""

    servers: dict[str, EmulatorServer]

    @property
    def variables(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, server in self.servers.items():
            out[PROVIDERS[name].key_env] = KEY
            out[_url_variable(name)] = server.url
        return out

    def cli(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        """``gpufsm offers *args``; ``env`` overrides the variables (None unsets one)."""
        result = CliRunner().invoke(app, ["offers", *args],
                                    env={**self.variables, **(env or {})})
        assert KEY not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            result.exception
        return result

    def requests(self) -> int:
        return sum(sum(s.counts.values()) for s in self.servers.values())

    def offers(self, *, without: tuple[str, ...] = ()) -> list[Offer]:
        """What the adapters themselves read from the emulators, as placement's offers."""
        out: list[Offer] = []
        for name, server in self.servers.items():
            if name in without:
                continue
            adapter = adapter_class(name)(SecretStr(KEY), base_url=server.url, rate_limits={},
                                          retry=RetryPolicy(attempts=1))
            try:
                out += [o for t in adapter.instance_types() for o in offers_from(t, provider=name)]
            finally:
                adapter.close()
        return out


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulated]:
    for provider in PROVIDERS.values():  # no real key or URL leaks in from the environment
        for var in (provider.key_env, f"GPUFSM_{provider.key_setting.upper()}",
                    _url_variable(provider.name)):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    real = _providers.adapter_class
    monkeypatch.setattr(_providers, "adapter_class", lambda name: functools.partial(
        real(name), rate_limits={}, retry=RetryPolicy(attempts=1)))
    clock = FakeClock()
    servers: dict[str, EmulatorServer] = {}
    try:
        for name, profile in PROFILES.items():
            cloud = SimulatedCloud(name, clock=clock, seed=5, capabilities=profile.capabilities,
                                   instance_types=profile.offers, id_prefix=profile.id_prefix)
            servers[name] = EmulatorServer(make_dialect(name, cloud), api_key=KEY).start()
        yield Emulated(servers)
    finally:
        for server in servers.values():
            server.stop()


def _key(offer: Offer) -> tuple[object, ...]:
    return (offer.provider, offer.instance_type, offer.region, offer.count,
            round(offer.price_per_hour, 6), offer.interruptible)


def _json_key(row: Mapping[str, object]) -> tuple[object, ...]:
    return (row["provider"], row["instance_type"], row["region"], row["count"],
            row["price_per_hour"], row["interruptible"])


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _table_rows(out: str) -> list[list[str]]:
    """The body rows of a rich table, a folded cell's pieces joined. Spaces are dropped:
    a cell wrapped at a space and one split inside a word read back the same way."""
    rows: list[list[str]] = []
    for line in out.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            rows.append([_squeeze(c) for c in cells])
        else:
            rows[-1] = [a + _squeeze(b) for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def _narrow(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    """Render the table as on a terminal ``width`` columns wide."""
    monkeypatch.setattr(_offers, "stdout", Console(width=width))


# ---- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [60, 100, 250])
def test_the_table_lists_the_matching_offers_cheapest_first_never_cut_short(
        emulated: Emulated, monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    expected = rank(emulated.offers(), Requirements(gpus=["H100"]))
    assert len({o.provider for o in expected}) > 1, "the emulators sell H100 in one place"
    _narrow(monkeypatch, width)
    result = emulated.cli("--gpu", "H100")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    rows = _table_rows(result.stdout)
    assert [r[:4] for r in rows] == [
        [o.provider, _squeeze(o.instance_type), _squeeze(o.region or "-"),
         _squeeze(f"{o.count}x {o.gpu}")] for o in expected]
    prices = [float(r[5]) for r in rows]
    assert prices == sorted(prices)
    assert prices == pytest.approx([o.price_per_hour for o in expected], abs=5e-5)
    assert "cheapest first" in result.stdout


def test_all_puts_every_reason_in_the_table_whole(emulated: Emulated,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    offers = emulated.offers()
    req = Requirements(gpus=["A100"], max_price_per_hour=2)
    ranked = rank(offers, req)
    rest = sorted((o for o in offers if o not in set(ranked)), key=lambda o: o.sort_key)
    _narrow(monkeypatch, 80)
    result = emulated.cli("--gpu", "A100", "--max-price", "2", "--all")
    assert result.exit_code == 0, result.output
    assert "why not" in result.stdout and "…" not in result.stdout
    rows = _table_rows(result.stdout)
    assert [(r[0], r[1], r[8]) for r in rows] == [
        (o.provider, _squeeze(o.instance_type), _squeeze(explain(o, req) or ""))
        for o in [*ranked, *rest]]


_WORD = st.text("abcXYZ019-_.,()/$", min_size=1, max_size=30)
_CELL = st.lists(_WORD, min_size=1, max_size=4).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.from_regex(r"[a-z]{1,10}", fullmatch=True),
                               *[_CELL] * 8), min_size=1, max_size=4),
       width=st.integers(min_value=20, max_value=220))
def test_no_terminal_width_cuts_a_cell_short(rows: list[tuple[str, ...]], width: int) -> None:
    """Whatever the names and however narrow the terminal, every character of every cell
    is printed (folded onto more lines at worst, never dropped for an ellipsis)."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(_offers._table([list(r) for r in rows], "t", True, fit=width), crop=False)
    printed = _table_rows(console.export_text())
    assert printed == [[_squeeze(c) for c in r] for r in rows]


def test_max_price_keeps_only_the_offers_under_the_cap(emulated: Emulated) -> None:
    everything = rank(emulated.offers(), Requirements())
    cap = statistics.median(o.price_per_hour for o in everything)
    expected = rank(emulated.offers(), Requirements(max_price_per_hour=cap))
    assert 0 < len(expected) < len(everything), "a cap that filters nothing tests nothing"
    result = emulated.cli("--max-price", str(cap), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert all(r["price_per_hour"] <= cap for r in rows)
    assert [_json_key(r) for r in rows] == [_key(o) for o in expected]


# ---- --json ---------------------------------------------------------------------------------


def test_json_is_every_matching_offer_with_every_field(emulated: Emulated) -> None:
    offers = emulated.offers()
    # a family some emulator sells two of in one machine, whatever the catalogs hold now
    family = collections.Counter(o.gpu.family for o in offers if isinstance(o.gpu, GpuModel)
                                 and o.count == 2 and o.available).most_common(1)[0][0]
    expected = rank(offers, Requirements(gpus=[family], count=2, interruptible=True))
    assert expected
    result = emulated.cli("--gpu", f"{family}:2", "--interruptible", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [_json_key(r) for r in rows] == [_key(o) for o in expected]
    for row, offer in zip(rows, expected, strict=True):
        assert set(row) == OFFER_KEYS
        assert isinstance(offer.gpu, GpuModel) and row["gpu"] == offer.gpu.name
        assert offer.gpu.family == family and row["count"] == 2 and row["available"] is True
        assert isinstance(row["price_per_hour"], float | int)
        assert (row["gpu_raw"], row["vram_gb"], row["offer_id"]) == \
            (offer.gpu_raw, offer.vram_gb, offer.offer_id)


def test_json_all_adds_every_other_offer_with_its_reason(emulated: Emulated) -> None:
    offers = emulated.offers()
    req = Requirements(gpus=["A100"])
    result = emulated.cli("--gpu", "A100", "--all", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(offers)
    assert all(set(r) == OFFER_KEYS | {"reason"} for r in rows)
    matching = [r for r in rows if r["reason"] is None]
    assert rows[:len(matching)] == matching, "the matching offers come first"
    assert [_json_key(r) for r in matching] == [_key(o) for o in rank(offers, req)]
    reasons = {_key(o): explain(o, req) for o in offers}
    rest = rows[len(matching):]
    assert rest and all(r["reason"] == reasons[_json_key(r)] for r in rest)
    assert any(r["reason"].startswith("sold out:") for r in rest)  # each emulator has one
    prices = [r["price_per_hour"] for r in rest]
    assert prices == sorted(prices)


def test_no_match_is_an_empty_answer_not_a_failure(emulated: Emulated) -> None:
    result = emulated.cli("--gpu", "H100", "--max-price", "0.01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert "no offer matches; --all shows every offer and why" in result.stderr


# ---- usage errors: one line naming the flag, exit 2, nothing asked ---------------------------


@pytest.mark.parametrize(("args", "start"), [
    (["--gpu", "Z999"], "error: --gpu: unknown GPU 'Z999'; use a model or family"),
    (["--gpu", "A100:x"], "error: --gpu: 'x' after ':' is not a whole number; write e.g."),
    (["--gpu", "A100:0"], "error: --gpu: must be 1..64 GPUs"),
    (["--gpu", ","], "error: --gpu: name at least one GPU"),
    (["--gpu", "A100:2", "--count", "4"], "error: --count: 4 disagrees with --gpu A100:2"),
    (["--max-price", "0"], "error: --max-price: "),
    (["--provider", "Lambda"], "error: --provider: unknown provider 'Lambda'"),
    (["--exclude-provider", "nope"], "error: --exclude-provider: unknown provider 'nope'"),
])
def test_bad_input_is_one_line_naming_the_flag(emulated: Emulated, args: list[str],
                                               start: str) -> None:
    result = emulated.cli(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(start), line
    assert emulated.requests() == 0


def test_a_provider_without_its_key_names_the_variable(emulated: Emulated) -> None:
    result = emulated.cli("--provider", "lambda", "--gpu", "H100",
                          env={PROVIDERS["lambda"].key_env: None})
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {PROVIDERS['lambda'].key_env}: not set")
    assert emulated.requests() == 0


def test_excluding_every_configured_provider_is_usage(emulated: Emulated) -> None:
    only_lambda = {PROVIDERS[n].key_env: None for n in emulated.servers if n != "lambda"}
    result = emulated.cli("--exclude-provider", "lambda", env=only_lambda)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --exclude-provider: excludes every configured")


# ---- providers that do not answer -------------------------------------------------------------


def test_an_unreachable_provider_is_warned_about_and_the_rest_shown(
        emulated: Emulated) -> None:
    dead = "vastai"
    expected = rank(emulated.offers(without=(dead,)), Requirements(gpus=["H100"]))
    assert expected
    result = emulated.cli("--gpu", "H100", "--json",
                          env={_url_variable(dead): f"http://127.0.0.1:{free_port()}"})
    assert result.exit_code == 0, result.output
    (warning,) = result.stderr.splitlines()
    assert re.match(rf"warning: {dead}: catalog not read \(.*connect", warning), warning
    rows = json.loads(result.stdout)
    assert [_json_key(r) for r in rows] == [_key(o) for o in expected]


def test_when_no_provider_answers_the_exit_status_is_1(emulated: Emulated) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = emulated.cli("--gpu", "H100",
                          env={_url_variable(n): closed for n in emulated.servers})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert sorted(line.split(":")[1].strip() for line in lines[:-1]) == sorted(emulated.servers)
    assert lines[-1].startswith("error: no provider answered")
    assert result.stdout == ""


def test_the_real_binary_says_it_once_per_provider(tmp_path: Path) -> None:
    """Where no logging is configured, Python prints the catalog's own log records to
    stderr: the command's warning line must be the only line about the failure."""
    closed = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([str(GPUFSM), "offers", "--gpu", "A100"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               PROVIDERS["vastai"].key_env: KEY,
                               _url_variable("vastai"): closed})
    assert done.returncode == 1
    warning, error = done.stderr.splitlines()
    assert warning.startswith("warning: vastai: catalog not read (")
    assert error == "error: no provider answered (vastai); nothing to rank"
    assert done.stdout == ""


def test_exclude_provider_does_not_ask_it(emulated: Emulated) -> None:
    result = emulated.cli("--exclude-provider", "runpod", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and "runpod" not in {r["provider"] for r in rows}
    assert sum(emulated.servers["runpod"].counts.values()) == 0


def test_help_states_the_exit_statuses() -> None:
    result = CliRunner().invoke(app, ["offers", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "0 when at least one provider answered" in text and "1 when none did" in text
