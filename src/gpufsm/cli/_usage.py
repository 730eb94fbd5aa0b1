"""Typer's usage errors as the one line every other gpufsm error is.

Typer (since 0.26) vendors click, so its errors are ``typer.TyperException`` and never
``click.UsageError``; ``typer>=0.29`` is required for that public base class.
"""

from __future__ import annotations

import typer

__all__ = ["usage_line"]


def usage_line(exc: typer.TyperException) -> str:
    """click's own words on one line, led by the command and field they are about, ended by
    where to read more: "gpufsm run: --recover: Input should be greater than or equal to 0
    (see gpufsm run --help)". Not click's usage block and boxed panel, which a script (or
    a person scanning a log) reads worse than the one line every other error gets."""
    if type(exc) is typer.BadParameter and exc.param is not None:
        # the field without click's quotes, as our own errors name it ("--format: ...")
        hint = exc.param.get_error_hint().replace("'", "")
        text = f"{hint}: {exc.message}"
    else:
        text = exc.format_message()  # subclasses (a missing or unknown option) say it whole
    text = " ".join(text.split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)  # usage errors carry the command they happened in
    if ctx is None:
        return text
    line = f"{ctx.command_path}: {text}"
    if ctx.command.get_help_option(ctx) is not None:
        line += f" (see {ctx.command_path} {ctx.help_option_names[0]})"
    return line
