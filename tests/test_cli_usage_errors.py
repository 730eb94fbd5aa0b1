"""Bad usage is one ``error:`` line on stderr and exit 2, for every command at once.

``main()`` (the ``gpufsm`` console script) is run for real: in this process with
``sys.argv`` patched, and once as a subprocess. typer's own rendering (a usage block, a
hint and a boxed panel) is what these tests keep out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from gpufsm.cli import _app

__all__: list[str] = []


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *argv: str) -> tuple[int | str | None, str, str]:
    """Run the entry point on ``gpufsm argv``: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gpufsm", *argv])
    with pytest.raises(SystemExit) as exited:
        _app.main()
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.mark.parametrize(("argv", "names"), [
    # out of range
    (["run", "--recover", "-1"], "--recover"),
    (["demo", "--instances", "0"], "--instances"),
    (["reconcile", "--metrics-port", "70000"], "--metrics-port"),
    # not of the type
    (["demo", "--seed", "abc"], "--seed"),
    (["launch", "--disk", "big"], "--disk"),
    # unknown option, unknown command (also under a group)
    (["instances", "--bogus"], "--bogus"),
    (["nosuch"], "nosuch"),
    (["db", "nope"], "nope"),
    # missing: an argument, a required option, an option's value
    (["history"], "ID"),
    (["emulator"], "--dialect"),
    (["run", "--download"], "--download"),
])
def test_bad_usage_is_one_line_naming_the_field_and_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], names: str) -> None:
    code, out, err = _main(monkeypatch, capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0]
    assert "Usage:" not in err and "╭" not in err and "Try '" not in err


def test_the_line_says_where_why_and_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Command path, field, click's reason, and the help to read: nothing else."""
    _code, _out, err = _main(monkeypatch, capsys, "run", "--recover", "-1")
    assert err == ("error: gpufsm run: --recover: Input should be greater than or equal to 0 "
                   "(see gpufsm run --help)\n")
    _code, _out, err = _main(monkeypatch, capsys, "nosuch")
    assert err == "error: gpufsm: No such command 'nosuch' (see gpufsm --help)\n"


def test_a_bad_parameter_raised_by_a_command_is_one_line_too(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No command raises typer.BadParameter today; one that did would read like the rest."""
    fake = typer.Typer()

    @fake.command()
    def size() -> None:
        raise typer.BadParameter("must be\na power of two")

    @fake.command()
    def other() -> None: ...

    monkeypatch.setattr(_app, "app", fake)
    code, out, err = _main(monkeypatch, capsys, "size")
    assert (code, out) == (2, "")
    assert err == ("error: gpufsm size: Invalid value: must be a power of two "
                   "(see gpufsm size --help)\n")


def test_an_abort_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A prompt answered with Ctrl-C (typer.confirm raises Abort), as destroy-all asks."""
    fake = typer.Typer()

    @fake.command()
    def ask() -> None:
        raise typer.Abort

    @fake.command()
    def other() -> None: ...

    monkeypatch.setattr(_app, "app", fake)
    assert _main(monkeypatch, capsys, "ask") == (130, "", "aborted\n")


def test_help_exits_0_with_the_usage(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(monkeypatch, capsys, "run", "--help")
    assert code == 0 and err == ""
    assert "Usage: gpufsm run [OPTIONS]" in out and "--recover" in out


@pytest.mark.parametrize("argv", [[], ["db"]])
def test_no_arguments_still_prints_the_help_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    """As typer did before: the help on stdout, nothing on stderr, status 2."""
    code, out, err = _main(monkeypatch, capsys, *argv)
    assert code == 2 and err == ""
    assert f"Usage: {' '.join(['gpufsm', *argv])} [OPTIONS] COMMAND [ARGS]" in out


def test_a_command_keeps_its_own_exit_status(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    """typer.Exit(1) (no database), typer.Exit(2) (diagram's own check), a return (0)."""
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    code, _out, err = _main(monkeypatch, capsys, "instances", "--database-url", missing)
    assert code == 1 and err.startswith("error: no database at ")
    assert not (tmp_path / "none.db").exists()
    code, _out, err = _main(monkeypatch, capsys, "diagram", "--format", "png")
    assert code == 2 and err == "error: --format: expected mermaid or dot, got 'png'\n"
    code, out, _err = _main(monkeypatch, capsys, "transitions", "--json")
    assert code == 0 and out.startswith("[")


def test_the_console_script_entry_point_as_a_process() -> None:
    """The whole way: interpreter, entry point, exit status; stdout stays empty."""
    done = subprocess.run([sys.executable, "-c", "from gpufsm.cli import main; main()",
                           "demo", "--instances", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == ("error: gpufsm demo: --instances: Input should be greater than "
                           "or equal to 1 (see gpufsm demo --help)\n")
