"""The public surface: explicit, sorted, complete; and the layers stay layered."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import gpufsm

PUBLIC_PACKAGES = ["gpufsm", "gpufsm.machines", "gpufsm.adapters", "gpufsm.store",
                   "gpufsm.testing", "gpufsm.testing.emulators", "gpufsm.cli",
                   "gpufsm.reconcile", "gpufsm.notify", "gpufsm.health"]


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_all_is_sorted_unique_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    dunder = [n for n in exported if n.startswith("__")]
    plain = [n for n in exported if not n.startswith("__")]
    assert plain == sorted(plain, key=lambda n: (not n.isupper(), n)) or plain == sorted(plain)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} in __all__ but missing"
    assert dunder in ([], ["__version__"])


def test_root_exports_every_error() -> None:
    from gpufsm import errors

    for name in errors.__all__:
        assert getattr(gpufsm, name) is getattr(errors, name)


def test_every_module_has_a_docstring_and_all() -> None:
    root = Path(gpufsm.__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="gpufsm."):
        module = importlib.import_module(info.name)
        assert module.__doc__ and module.__doc__.strip(), f"{info.name} has no docstring"
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"


def test_nine_states_are_exported() -> None:
    assert list(gpufsm.InstanceState.__members__) == [
        "CREATING", "CREATED", "STARTING", "RUNNING", "STOPPING", "STOPPED",
        "TERMINATING", "FAILED", "TERMINATED"]


def test_layers_are_enforced_by_import_linter() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 7  # machines, siblings, façade, health, placement, registry, layers
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout


def test_py_typed_is_shipped() -> None:
    assert (Path(gpufsm.__file__).parent / "py.typed").is_file()
