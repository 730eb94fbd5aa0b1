"""The instance commands run for real (typer's runner) against a Lambda emulator on loopback.

launch / start / stop / restart / terminate / rename / destroy-all / instances / types:
their output, their exit statuses (0 ok, 1 failure, 2 usage), and what the emulated
provider and the database hold afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli_env import LAUNCH, Env, lambda_env
from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.cli import _lifecycle as lifecycle_module
from gpufsm.cli import app
from gpufsm.cli._fleetview import format_age
from gpufsm.store import InstanceRecord

S = InstanceState


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


# ---- launch ---------------------------------------------------------------------------------


def test_launch_prints_only_the_id_and_writes_the_row(env: Env) -> None:
    result = env.cli(*LAUNCH, "--name", "train-1")
    assert result.exit_code == 0, result.output
    row_id = result.stdout.strip()
    assert len(row_id) == 36 and "\n" not in row_id
    assert f"launched {row_id} on lambda" in result.stderr
    row = env.row(row_id)
    assert (row.provider, row.name, row.instance_type, row.region) == \
        ("lambda", "train-1", "gpu_1x_a10", "us-east-1")
    assert row.state is S.CREATED and row.provider_instance_id is not None
    inst = env.cloud.instance(row.provider_instance_id)
    assert inst.name == f"{row.tag}/train-1" and inst.tag == row.tag
    assert inst.meta["ssh_key_names"] == ["laptop"]


def test_launch_from_a_spec_file_with_flags_laid_over_it(env: Env, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    # the simulated cloud offers gpu_1x_h100 in us-east-1 only: the flag must win
    spec.write_text("provider: lambda\ninstance_type: gpu_1x_h100\nregion: us-west-1\n"
                    "name: from-file\nssh_key_names: [filekey]\n"
                    "options:\n  hostname: node-a\n")
    result = env.cli("launch", "--spec", str(spec), "--region", "us-east-1",
                     "--option", 'tags={"team": "ml"}', "--option", "hostname=node-b")
    assert result.exit_code == 0, result.output
    row = env.row(result.stdout.strip())
    assert (row.instance_type, row.region, row.name) == ("gpu_1x_h100", "us-east-1",
                                                         "from-file")
    assert row.spec["options"] == {"hostname": "node-b", "tags": {"team": "ml"}}
    meta = env.cloud.instance(row.provider_instance_id or "").meta
    assert {"key": "team", "value": "ml"} in meta["tags"]
    assert meta["ssh_key_names"] == ["filekey"]


def test_launch_wait_shows_progress_until_running(env: Env) -> None:
    result = env.cli(*LAUNCH, "--wait", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    row = env.row(result.stdout.strip())
    assert row.state is S.RUNNING and row.ip is not None
    assert f"{row.id[:8]} RUNNING (active)" in result.stderr
    assert f"{row.id[:8]} RUNNING at {row.ip}" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--env", "NOEQUALS"], "--env: expected KEY=VALUE"),
    (["--option", "=x"], "--option: expected KEY=VALUE"),
    (["--ssh-key", "second"], "ssh_key_names: Lambda needs exactly one SSH key name"),
    (["--spec", "missing.json"], "--spec: cannot read missing.json"),
])
def test_bad_launch_input_is_usage_and_touches_nothing(env: Env, args: list[str],
                                                       message: str) -> None:
    result = env.cli(*LAUNCH, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert env.store.list() == []
    assert env.cloud.calls["launch"] == 0


def test_launch_without_a_type_names_the_flag(env: Env) -> None:
    result = env.cli("launch", "--provider", "lambda")
    assert result.exit_code == 2
    assert "--type: required (as a flag or in the --spec file)" in result.stderr


def test_a_refused_launch_is_one_line_and_a_failed_row(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity")
    result = env.cli(*LAUNCH)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: lambda: Not enough capacity")
    assert "[instance-operations/launch/insufficient-capacity]" in result.stderr
    (row,) = env.store.list()
    assert row.state is S.FAILED and not row.billable
    assert f"row {row.id} is FAILED (not billable)" in result.stderr


def test_a_wrong_api_key_is_one_clear_line_without_the_key(env: Env) -> None:
    result = CliRunner().invoke(app, ["instances", "--remote"], env={
        "LAMBDA_API_KEY": "wrong-key-123", "GPUFSM_LAMBDA_BASE_URL": env.server.url,
        "GPUFSM_DATABASE_URL": env.url})
    assert result.exit_code == 1
    assert "error: lambda: could not list (401 API key was invalid" in result.stderr
    assert "[global/invalid-api-key]" in result.stderr
    assert "wrong-key-123" not in result.output and "Traceback" not in result.output


# ---- start / stop / restart / terminate --------------------------------------------------


def test_terminate_several_ids_keeps_going_past_an_unknown_one(env: Env) -> None:
    a, b, c = env.launch(), env.launch(), env.launch()
    pid_c = env.row(c).provider_instance_id or ""
    result = env.cli("terminate", a[:8], "nope-nope", b, pid_c)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{a[:8]}  CREATED → TERMINATING"
    assert lines[1] == "nope-nope  error: no instance 'nope-nope' in the store"
    assert lines[2] == f"{b[:8]}  CREATED → TERMINATING"
    assert lines[3] == f"{c[:8]}  CREATED → TERMINATING"
    assert "1 of 4 failed" in result.stderr
    for row_id in (a, b, c):
        assert env.row(row_id).state is S.TERMINATING
        assert env.cloud.instance(env.row(row_id).provider_instance_id or "").phase in (
            "terminating", "terminated")
    assert env.cloud.calls["terminate"] == 3


def test_terminate_wait_until_confirmed_and_again_is_a_no_op(env: Env) -> None:
    row_id = env.launch()
    result = env.cli("terminate", row_id, "--wait", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"{row_id[:8]}  TERMINATED"
    again = env.cli("terminate", row_id)
    assert again.exit_code == 0
    assert again.stdout.strip() == f"{row_id[:8]}  already TERMINATED"
    assert env.cloud.calls["terminate"] == 1


def _plant_two_abcd_rows(env: Env) -> list[str]:
    now = datetime.now(UTC)
    ids = []
    for n in (1, 2):
        ids.append(f"abcd{n}111-2222-3333-4444-555555555555")
        env.store.insert(InstanceRecord(
            id=ids[-1], provider="lambda",
            state=S.CREATED, version=1, client_token=f"{n}" * 16, tag="gpufsm-" + f"{n}" * 16,
            name=f"job-{n}", billable=True, spec={}, created_at=now, updated_at=now,
            state_entered_at=now, provider_instance_id=f"lambda-x{n}"), actor="test")
    return ids


def test_an_ambiguous_prefix_is_refused_listing_the_matches(env: Env) -> None:
    ids = _plant_two_abcd_rows(env)
    result = env.cli("terminate", "abcd")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "abcd  error: ID: 'abcd' matches 2 instances; give more of the id:",
        f"  {ids[0]}  job-1  lambda  CREATED",
        f"  {ids[1]}  job-2  lambda  CREATED"]
    assert env.cloud.calls["terminate"] == 0
    assert {r.state for r in env.store.list()} == {S.CREATED}


def test_stop_on_lambda_is_refused_without_a_call(env: Env) -> None:
    row_id = env.launch("--wait", "--poll-interval", "0.05")
    result = env.cli("stop", row_id)
    assert result.exit_code == 1
    assert f"cannot stop instance {row_id} in state RUNNING" in result.stdout
    assert env.cloud.calls["stop"] == 0
    assert env.row(row_id).state is S.RUNNING


def test_restart_sends_one_restart_and_records_it(env: Env) -> None:
    row_id = env.launch("--wait", "--poll-interval", "0.05")
    result = env.cli("restart", row_id[:8])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{row_id[:8]}  RUNNING → STARTING"
    assert env.cloud.calls["restart"] == 1
    assert env.row(row_id).state is S.STARTING
    assert [h.event.value for h in env.store.history(row_id)][-1] == "restart"


# ---- rename ----------------------------------------------------------------------------------


def test_rename_on_lambda_renames_the_instance_and_the_row(env: Env) -> None:
    row_id = env.launch("--name", "old")
    result = env.cli("rename", row_id[:8], "new-name")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{row_id[:8]}  renamed to new-name"
    row = env.row(row_id)
    assert row.name == "new-name"
    inst = env.cloud.instance(row.provider_instance_id or "")
    assert inst.name == f"{row.tag}/new-name"
    listed = json.loads(env.cli("instances", "--json").stdout)
    assert [r["name"] for r in listed] == ["new-name"]


def test_rename_where_the_provider_cannot_renames_the_row_and_says_so(env: Env) -> None:
    """RunPod has no rename call: the row is renamed (as the help says) and the line says
    the provider keeps its name; nothing is called, so no RunPod key is needed."""
    now = datetime.now(UTC)
    env.store.insert(InstanceRecord(
        id="11111111-2222-3333-4444-555555555555", provider="runpod", state=S.RUNNING,
        version=1, client_token="t" * 16, tag="gpufsm-" + "t" * 16, name="pod", billable=True,
        spec={"provider": "runpod"}, created_at=now, updated_at=now, state_entered_at=now,
        provider_instance_id="pod-abc"), actor="test")
    result = env.cli("rename", "pod-abc", "other")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "11111111  renamed to other in the database only: runpod cannot rename instances, "
        "so it keeps the name it was launched with")
    assert env.row("11111111-2222-3333-4444-555555555555").name == "other"
    listed = json.loads(env.cli("instances", "--json").stdout)
    assert [r["name"] for r in listed] == ["other"]


def test_rename_help_says_what_happens_on_each_provider() -> None:
    result = CliRunner().invoke(app, ["rename", "--help"], env={"COLUMNS": "200"})
    assert "Rename an instance in the database, and on the provider where it can" in \
        result.output
    assert "the provider keeps the name it launched with" in " ".join(result.output.split())


# ---- destroy-all -----------------------------------------------------------------------------


def test_destroy_all_refuses_without_yes_when_it_cannot_ask(env: Env) -> None:
    env.launch()
    result = env.cli("destroy-all")
    assert result.exit_code == 2
    assert "pass --yes to confirm" in result.stderr
    assert env.cloud.calls["terminate"] == 0


def test_destroy_all_asks_and_a_no_does_nothing(env: Env,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    env.launch()
    monkeypatch.setattr(lifecycle_module, "_stdin_is_tty", lambda: True)
    result = env.cli("destroy-all", input="n\n")
    assert result.exit_code == 1
    assert "Terminate these 1 instance on lambda?" in result.stderr
    assert env.cloud.calls["terminate"] == 0
    yes = env.cli("destroy-all", input="y\n")
    assert yes.exit_code == 0 and "Destroyed 1/1" in yes.stdout


def test_destroy_all_works_from_the_provider_when_the_database_is_lost(
        env: Env, tmp_path: Path) -> None:
    ours = [env.launch() for _ in range(2)]
    pids = sorted(env.row(i).provider_instance_id or "" for i in ours)
    orphan = env.cloud.spawn_untracked("gpufsm-0rphan0000000000")
    stranger = env.cloud.spawn_untracked(None)  # not ours: never touched
    env.url = f"sqlite:///{tmp_path / 'fresh.db'}"  # the database is gone
    result = env.cli("destroy-all", "--yes")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    fresh = SqlInstanceStore(env.url)
    try:
        adopted = {r.provider_instance_id: r for r in fresh.list()}
        assert set(adopted) == {*pids, orphan}
    finally:
        fresh.close()
    # our (new) id and the name the provider knows, per line
    assert sorted(lines[:-1]) == sorted(
        f"{adopted[p].id[:8]}  {adopted[p].name or '-'}  lambda  {p}  terminating"
        for p in [*pids, orphan])
    assert lines[-1] == "Destroyed 3/3"
    for pid in [*pids, orphan]:
        assert env.cloud.instance(pid).phase in ("terminating", "terminated")
    assert env.cloud.instance(stranger).phase in ("provisioning", "booting", "running")


def test_destroy_all_keeps_going_past_a_failure_and_exits_1(env: Env) -> None:
    ours = [env.launch() for _ in range(2)]
    env.cloud.fail_next("terminate", "invalid")
    result = env.cli("destroy-all", "--yes")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    (failed,) = [line for line in lines if "failed: InvalidRequest" in line]
    assert sum(line.endswith("terminating") for line in lines) == 1
    assert lines[-1] == "Destroyed 1/2"
    # the refused one stays on record as TERMINATING, for the reconciler to re-issue
    row8, _name, provider, pid = failed.split()[:4]
    assert provider == "lambda" and row8 in {i[:8] for i in ours}
    (row,) = [env.row(i) for i in ours if env.row(i).provider_instance_id == pid]
    assert row.state is S.TERMINATING and "InvalidRequest" in (row.last_error or "")
    assert env.cloud.instance(pid).phase == "running"
    assert env.cloud.calls["terminate"] == 2


def test_destroy_all_with_a_failed_listing_does_nothing_and_says_so(env: Env) -> None:
    env.launch()
    env.cloud.outage(1)
    result = env.cli("destroy-all", "--yes")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: lambda: could not list (") and "503" in line
    assert line.endswith("): 1 billable row there not destroyed")
    assert result.stdout.strip() == "Destroyed 0/0"
    assert env.cloud.calls["terminate"] == 0


# ---- instances -------------------------------------------------------------------------------


def test_instances_table_has_the_columns_and_an_uptime(env: Env) -> None:
    row_id = env.launch("--name", "tbl")
    result = env.cli("instances", "--wide")
    assert result.exit_code == 0
    header = result.stdout.splitlines()[1]
    for col in ("id", "name", "provider", "state", "type", "region", "$/h", "IP", "SSH",
                "uptime", "cost"):
        assert col in header
    assert row_id in result.stdout and "CREATED" in result.stdout
    (row,) = json.loads(env.cli("instances", "--json").stdout)
    assert row["id"] == row_id and row["state"] == "CREATED"
    assert 0 <= row["age_seconds"] < 60


def test_instances_remote_marks_untracked_and_missing(env: Env) -> None:
    kept = env.launch("--wait", "--poll-interval", "0.05")
    lost = env.launch()
    env.cloud.vanish(env.row(lost).provider_instance_id or "")
    orphan = env.cloud.spawn_untracked("gpufsm-0rphan0000000000")
    stranger = env.cloud.spawn_untracked(None)
    result = env.cli("instances", "--remote", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["id"] or r["provider_instance_id"]: r for r in json.loads(result.stdout)}
    assert rows[kept]["remote_status"] == "active" and rows[kept]["tracked"]
    assert rows[lost]["remote_status"] == "missing"
    assert rows[orphan]["state"] == "untracked"
    assert rows[orphan]["tag"] == "gpufsm-0rphan0000000000" and rows[orphan]["ours"]
    assert rows[stranger]["state"] == "untracked" and not rows[stranger]["ours"]
    assert len(rows) == 4

    table = env.cli("instances", "--remote")
    assert "untracked" in table.stdout and "missing" in table.stdout
    assert "2 untracked on the providers, 1 rows missing there" in table.stdout


def test_instances_remote_with_a_failed_listing_shows_unknown(env: Env) -> None:
    row_id = env.launch()
    env.cloud.outage(1)
    result = env.cli("instances", "--remote", "--json")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: lambda: could not list (") and "503" in line
    assert line.endswith("): 1 billable row there not checked (shown as '?')")
    (row,) = json.loads(result.stdout)
    assert row["id"] == row_id and row["remote_status"] == "?"


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (125, "2m"), (3 * 3600 + 300, "3h05m"),
                                               (2 * 86400 + 4 * 3600, "2d04h"), (-3, "0s")])
def test_age_is_short(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


# ---- types -----------------------------------------------------------------------------------


def test_types_sorted_by_price_with_capacity(env: Env) -> None:
    result = env.cli("types", "--json")
    assert result.exit_code == 0, result.output
    offers = json.loads(result.stdout)
    assert [(o["name"], o["price_per_hour"]) for o in offers] == [
        ("gpu_1x_a10", 0.75), ("gpu_1x_h100", 2.49), ("gpu_8x_h100", 23.92)]
    assert offers[0]["regions"] == ["us-east-1", "us-west-1"]
    assert offers[2]["available"] is False
    available = json.loads(env.cli("types", "--available", "--json").stdout)
    assert [o["name"] for o in available] == ["gpu_1x_a10", "gpu_1x_h100"]
    table = env.cli("types", "--provider", "lambda")
    assert "cheapest first" in table.stdout and "none now" in table.stdout


def test_types_for_an_unconfigured_provider_names_the_variable(env: Env) -> None:
    result = env.cli("types", "--provider", "vastai")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: VAST_API_KEY: not set: export it or put it in .env"


# ---- the real entry point --------------------------------------------------------------------


def test_a_failing_command_is_one_line_on_stderr_from_the_real_binary(tmp_path: Path) -> None:
    gpufsm = Path(sys.executable).with_name("gpufsm")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    SqlInstanceStore(url).close()  # a database without that id (none at all: "no database")
    done = subprocess.run([str(gpufsm), "terminate", "nope", "--database-url", url],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 1
    assert done.stdout == "nope  error: no instance 'nope' in the store\n"
    assert done.stderr == "1 of 1 failed\n"


def test_every_command_in_the_readme_table_exists() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    named = set()
    for cell in re.findall(r"^\| `gpufsm ([^` ]+)", table, flags=re.M):
        named |= set(cell.split("\\|"))
    registered = set(typer.main.get_command(app).commands)
    assert {"launch", "terminate", "destroy-all", "types", "run", "rename"} <= named
    assert named <= registered, named - registered


def test_help_lists_the_new_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for command in ("launch", "start", "stop", "restart", "terminate", "rename",
                    "destroy-all", "types", "run"):
        assert command in result.output


def test_main_keeps_provider_codes_in_its_error_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``[global/...]`` looks like rich markup: unescaped, the code vanished from the line."""
    from gpufsm.cli import _app
    from gpufsm.errors import AuthError

    def refused(**_: object) -> None:  # main() passes typer its options
        raise AuthError("API key was invalid", provider="lambda", code="global/invalid-api-key")

    monkeypatch.setattr(_app, "app", refused)
    with pytest.raises(SystemExit) as exited:
        _app.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == \
        "error: lambda: API key was invalid [global/invalid-api-key]"
