"""The ``gpufsm`` command line (typer + rich). Exit codes: 0 ok, 1 failure, 2 usage."""

from gpufsm.cli._app import app, main

__all__ = ["app", "main"]
