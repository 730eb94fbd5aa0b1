"""Issue 10, "the first hour": every error one sentence, every command honest about what it
did. Each test is one item of the issue, run as a user runs it (typer's runner, or the
real binary), asserting the exit status and the text a person reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_env import GPUFSM, LAUNCH, OTHER_KEYS, Env, free_port, lambda_env
from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.cli import _app, app
from gpufsm.cli import _lifecycle as lifecycle_module
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.providers import PROVIDERS
from gpufsm.store import InstanceRecord

S = InstanceState
#: The matrix tests check the command line, not the database: one backend is enough (the
#: same commands run on both in tests/test_cli_commands.py).
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
RUN = ["run", "--provider", "lambda", "--type", "gpu_1x_a10", "--region", "us-east-1",
       "--ssh-key", "laptop"]


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- 1. configuration: one line naming the variable and the fix ----------------------------

HOME = str(Path.home())
BAD_URLS = [
    ("notaurl", "not a database URL: use sqlite:////abs/path/gpufsm.db or "
                "postgresql+psycopg://user@host/dbname"),
    ("/tmp/x.db", "'/tmp/x.db' is a file path, not a URL: use sqlite:////tmp/x.db"),
    ("~/x.db", f"'~/x.db' is a file path, not a URL: use sqlite:///{HOME}/x.db"),
    ("mysql://me:hunter2@db.example/gpufsm",
     "mysql:// is not supported: gpufsm supports sqlite and postgresql+psycopg"),
    ("sqlite:///~/x.db", f"SQLite does not expand ~ in a URL: use sqlite:///{HOME}/x.db"),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("url", "rule"), BAD_URLS)
@pytest.mark.parametrize("command", [["instances"], ["history", "abc"], [*LAUNCH],
                                     ["terminate", "abc"], ["db", "upgrade"],
                                     ["reconcile", "--once"]])
def test_a_bad_database_url_is_one_line_naming_the_variable(
        env: Env, url: str, rule: str, command: list[str]) -> None:
    result = env.cli(*command, env={"GPUFSM_DATABASE_URL": url})
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == f"error: GPUFSM_DATABASE_URL: {rule}"
    assert "hunter2" not in result.output  # a URL's password is never echoed
    assert env.requests() == 0


def test_a_bad_database_url_flag_is_named_as_the_flag(env: Env, tmp_path: Path) -> None:
    result = env.cli("instances", "--database-url", "gpufsm.db",
                     env={"GPUFSM_DATABASE_URL": None})
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == (
        f"error: --database-url: 'gpufsm.db' is a file path, not a URL: use "
        f"sqlite:///{tmp_path / 'gpufsm.db'}")


@SQLITE_ONLY
@pytest.mark.parametrize(("variable", "value", "rule"), [
    ("GPUFSM_SQLITE_SYNCHRONOUS", "bogus", "must be one of OFF, NORMAL, FULL, EXTRA, got 'bogus'"),
    ("GPUFSM_HTTP_TIMEOUT", "abc", "must be a number of seconds > 0 and <= 600, got 'abc'"),
    ("GPUFSM_HTTP_TIMEOUT", "0", "must be a number of seconds > 0 and <= 600, got '0'"),
    ("GPUFSM_RECONCILE_INTERVAL", "soon", "must be a number of seconds > 0, got 'soon'"),
    ("GPUFSM_WEBHOOK_URLS", "not json",
     'must be a JSON list of URLs, e.g. ["https://example.com/hook"]'),
    ("GPUFSM_WEBHOOK_URLS", '"https://hooks.example/T0KEN"',
     'must be a JSON list of URLs, e.g. ["https://example.com/hook"]'),
])
@pytest.mark.parametrize("command", [["instances"], [*LAUNCH], ["types"],
                                     ["reconcile", "--once"], ["destroy-all", "--yes"]])
def test_a_bad_setting_is_one_line_naming_the_variable(
        env: Env, variable: str, value: str, rule: str, command: list[str]) -> None:
    result = env.cli(*command, env={variable: value})
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == f"error: {variable}: {rule}"
    assert "T0KEN" not in result.output  # webhook URLs carry tokens: never echoed
    assert env.requests() == 0


def test_settings_itself_names_the_variable_and_never_a_secret(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings() is built by every command and every adapter: fixing it there fixes all."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAMBDA_API_KEY", "secret-key-991")
    monkeypatch.setenv("GPUFSM_WEBHOOK_SECRET", "secret-hmac-992")
    monkeypatch.setenv("GPUFSM_HTTP_TIMEOUT", "abc")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert raised.value.field == "GPUFSM_HTTP_TIMEOUT"
    assert "secret-" not in str(raised.value)
    monkeypatch.setenv("GPUFSM_HTTP_TIMEOUT", "12.5")
    monkeypatch.setenv("GPUFSM_SQLITE_SYNCHRONOUS", "normal")  # SQLite's pragma: any case
    settings = Settings()
    assert (settings.http_timeout, settings.sqlite_synchronous) == (12.5, "NORMAL")


def test_the_real_binary_exits_2_with_one_line_for_a_bad_variable(tmp_path: Path) -> None:
    done = subprocess.run([str(GPUFSM), "instances"], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                               "GPUFSM_HTTP_TIMEOUT": "abc"})
    assert done.returncode == 2
    assert done.stderr == ("error: GPUFSM_HTTP_TIMEOUT: must be a number of seconds > 0 "
                           "and <= 600, got 'abc'\n")
    assert done.stdout == ""


def test_main_turns_a_usage_error_into_exit_2(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def refused(**_: object) -> None:  # main() passes typer its options
        raise ValidationError("GPUFSM_X", "must be better")

    monkeypatch.setattr(_app, "app", refused)
    with pytest.raises(SystemExit) as exited:
        _app.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: GPUFSM_X: must be better\n"


# ---- 2. a read-only command never creates a database ---------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("command", [["instances"], ["instances", "--json"],
                                     ["instances", "--remote"], ["history", "abcd1234"],
                                     # commands on ids: an id names a row that exists
                                     ["terminate", "abcd1234"], ["start", "abcd1234"],
                                     ["rename", "abcd1234", "new-name"]])
def test_a_read_only_command_on_a_missing_database_says_so_and_creates_nothing(
        env: Env, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere" / "deeper" / "gpufsm.db"
    result = env.cli(*command, env={"GPUFSM_DATABASE_URL": f"sqlite:///{missing}"})
    assert result.exit_code == 1
    assert _one_error_line(result.stderr) == (
        f"error: no database at {missing} (check --database-url or GPUFSM_DATABASE_URL; "
        "any `gpufsm launch` creates it, as does `gpufsm db upgrade`)")
    assert result.stdout == ""
    assert not (tmp_path / "nowhere").exists()
    assert env.requests() == 0


def test_db_upgrade_creates_the_database_a_read_then_finds(env: Env, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'gpufsm.db'}"
    assert env.cli("db", "upgrade", env={"GPUFSM_DATABASE_URL": url}).exit_code == 0
    result = env.cli("instances", "--json", env={"GPUFSM_DATABASE_URL": url})
    assert result.exit_code == 0 and json.loads(result.stdout) == []


@SQLITE_ONLY
@pytest.mark.postgres
def test_postgres_without_the_schema_is_one_line(env: Env, pg_url: str) -> None:
    result = env.cli("instances", env={"GPUFSM_DATABASE_URL": pg_url})
    assert result.exit_code == 1
    line = _one_error_line(result.stderr)
    assert line.startswith("error: database schema is at nothing")
    assert line.endswith("run `gpufsm db upgrade`")


# ---- 3. a database that cannot be written --------------------------------------------------


def test_a_read_only_database_is_one_line_and_no_provider_call(env: Env,
                                                                tmp_path: Path) -> None:
    """Opened read-only (SQLite's own ``mode=ro``: a file mode would not stop root)."""
    path = tmp_path / "ro.db"
    SqlInstanceStore(f"sqlite:///{path}").close()  # the schema is there; writes are not
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    result = env.cli(*LAUNCH, env={"GPUFSM_DATABASE_URL": url})
    assert result.exit_code == 1
    line = _one_error_line(result.stderr)
    assert line.startswith("error: could not record the new instance, so nothing was sent "
                           "to lambda: ")
    assert "readonly database" in line
    assert "INSERT" not in line and "gpufsm-" not in line  # no statement, no parameters
    assert result.stdout == ""
    assert env.requests() == 0


# ---- 5. a refused connection -----------------------------------------------------------------


def test_launch_against_a_closed_port_fails_in_seconds_and_says_what_the_row_is(
        tmp_path: Path) -> None:
    """The real binary with its real retry policy: nothing listens on the port."""
    url = f"http://127.0.0.1:{free_port()}"
    db = f"sqlite:///{tmp_path / 'gpufsm.db'}"
    environ = {k: v for k, v in os.environ.items()
               if k not in OTHER_KEYS and not k.startswith("GPUFSM_")}
    started = time.monotonic()
    done = subprocess.run([str(GPUFSM), *LAUNCH], capture_output=True, text=True, timeout=120,
                          check=False, cwd=tmp_path,
                          env={**environ, "LAMBDA_API_KEY": "k-closed-port",
                               "GPUFSM_LAMBDA_BASE_URL": url, "GPUFSM_DATABASE_URL": db})
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert elapsed < 6, f"{elapsed:.1f}s against a refused connection"
    store = SqlInstanceStore(db)
    try:
        (row,) = store.list()
    finally:
        store.close()
    error, what = done.stderr.splitlines()
    assert error.startswith("error: lambda: ") and url in error
    assert row.state is S.FAILED and not row.billable
    assert what == f"nothing was sent; row {row.id} is FAILED (not billable), nothing bills"
    assert done.stdout == ""


# ---- 6. run with nothing to run --------------------------------------------------------------


def test_run_with_nothing_to_run_is_usage_before_any_launch(env: Env) -> None:
    result = env.cli(*RUN)
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == (
        "error: --command: nothing to run: give -c/--command, --upload or --download "
        "(run launches a paid machine to do them)")
    assert env.store.list() == []
    assert env.requests() == 0


# ---- 7. the same id rules everywhere ----------------------------------------------------------


def test_history_takes_a_prefix_and_the_provider_id(env: Env) -> None:
    row_id = env.launch()
    pid = env.row(row_id).provider_instance_id or ""
    for given in (row_id, row_id[:8], pid):
        result = env.cli("history", given, "--json")
        assert result.exit_code == 0, result.output
        assert [h["event"] for h in json.loads(result.stdout)] == ["launch",
                                                                   "observed_created"]
    table = env.cli("history", pid)
    assert f"history of {row_id}" in table.stdout


def _plant(env: Env, *suffixes: str) -> list[str]:
    now = datetime.now(UTC)
    ids = []
    for n in suffixes:
        ids.append(f"beef{n}000-2222-3333-4444-555555555555")
        env.store.insert(InstanceRecord(
            id=ids[-1], provider="lambda", state=S.RUNNING, version=1,
            client_token=n * 16, tag="gpufsm-" + n * 16, name=f"job-{n}", billable=True,
            spec={}, created_at=now, updated_at=now, state_entered_at=now,
            provider_instance_id=f"lambda-{n}"), actor="test")
    return ids


@pytest.mark.parametrize(("command", "code"), [
    (["history"], 2), (["rename"], 2), (["terminate"], 1), (["stop"], 1), (["start"], 1),
    (["restart"], 1)])
def test_an_ambiguous_prefix_lists_the_matches_in_every_command(
        env: Env, command: list[str], code: int) -> None:
    ids = _plant(env, "1", "2")
    args = [*command, "beef", *(["new-name"] if command == ["rename"] else [])]
    result = env.cli(*args)
    assert result.exit_code == code
    out = result.stdout + result.stderr
    assert "'beef' matches 2 instances; give more of the id:" in out
    assert f"  {ids[0]}  job-1  lambda  RUNNING" in out.splitlines()
    assert f"  {ids[1]}  job-2  lambda  RUNNING" in out.splitlines()
    assert env.requests() == 0
    assert [r.version for r in env.store.list()] == [1, 1]


# ---- 8. an unknown provider -------------------------------------------------------------------

KNOWN = ", ".join(sorted(PROVIDERS))
UNKNOWN = f"error: --provider: unknown provider 'aws'; known: {KNOWN} (configured: lambda)"
UPPER = (f"error: --provider: unknown provider 'LAMBDA'; did you mean 'lambda'? known: {KNOWN} "
         "(configured: lambda)")


@SQLITE_ONLY
@pytest.mark.parametrize("command", [
    ["launch", "--type", "gpu_1x_a10"], ["run", "--type", "gpu_1x_a10", "-c", "true"],
    ["instances"], ["instances", "--remote"], ["types"], ["reconcile", "--once"],
    ["destroy-all", "--yes"]])
@pytest.mark.parametrize(("name", "line"), [("aws", UNKNOWN), ("LAMBDA", UPPER)])
def test_an_unknown_provider_names_the_known_and_configured_ones(
        env: Env, command: list[str], name: str, line: str) -> None:
    env.launch()
    before = env.requests()
    result = env.cli(*command, "--provider", name)
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == line
    assert result.stdout == ""
    assert env.requests() == before


def test_an_unknown_provider_in_a_spec_file_is_named_too(env: Env, tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"provider": "aws", "instance_type": "gpu_1x_a10"}))
    result = env.cli("launch", "--spec", str(spec))
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == UNKNOWN.replace("--provider: ", "provider: ")
    assert env.store.list() == []


# ---- 10. a second terminate prints the transition it made ---------------------------------


def test_a_second_terminate_prints_the_re_issue_it_really_made(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two terminates race: both read the row CREATED, the other commits first. The
    loser re-issues from TERMINATING and must say so, not "CREATED → TERMINATING"."""
    row_id = env.launch()
    read_before_the_other = env.row(row_id)
    first = env.cli("terminate", row_id)
    assert first.stdout.strip() == f"{row_id[:8]}  CREATED → TERMINATING"
    monkeypatch.setattr(lifecycle_module, "resolve_instance",
                        lambda store, given: read_before_the_other)
    second = env.cli("terminate", row_id)
    assert second.exit_code == 0, second.output
    line = second.stdout.strip()
    assert line.startswith(f"{row_id[:8]}  TERMINATING → ") and line.endswith("(re-issued)")
    events = [(h.from_state, h.event.value) for h in env.store.history(row_id)]
    assert events.count((S.TERMINATING, "terminate")) == 1


# ---- 11. destroy-all shows what it will destroy before it asks ------------------------------


def test_destroy_all_lists_what_it_will_destroy_before_asking(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    a = env.launch("--name", "train-a")
    b = env.launch("--name", "train-b")
    monkeypatch.setattr(lifecycle_module, "_stdin_is_tty", lambda: True)
    result = env.cli("destroy-all", input="n\n")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    question = next(n for n, ln in enumerate(lines)
                    if "Terminate these 2 instances on lambda?" in ln)
    planned = lines[question - 2:question]
    assert lines[question - 3] == ("about to terminate (our id, name, provider, provider id, "
                                   "$/h):")
    assert sorted(planned) == sorted(
        f"  {i[:8]}  {n}  lambda  {env.row(i).provider_instance_id}  0.75"
        for i, n in ((a, "train-a"), (b, "train-b")))
    assert "nothing done" in result.stderr
    assert env.cloud.calls["terminate"] == 0


def test_destroy_all_names_our_rows_per_line_then_the_summary(env: Env) -> None:
    ours = [env.launch("--name", f"w{n}") for n in range(2)]
    env.cloud.fail_next("terminate", "invalid")
    result = env.cli("destroy-all", "--yes")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1] == "Destroyed 1/2"
    names = {env.row(i).id[:8]: env.row(i).name for i in ours}
    for line in lines[:-1]:
        row8, name, provider = line.split()[:3]
        assert names[row8] == name and provider == "lambda"


# ---- 12. reconcile --help keeps its brackets -------------------------------------------------


def test_reconcile_help_shows_the_metrics_extra() -> None:
    result = CliRunner().invoke(app, ["reconcile", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "(needs gpufsm[metrics])" in result.output
