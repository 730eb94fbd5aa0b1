"""The ```python blocks of README.md and docs/, and the one rule for checking them.

A block runs as written, in a fresh namespace. A block that needs a real provider
account is preceded by ``<!-- imports checked, not run: why -->``: it is compiled and
its imports are run, so a renamed class or module still fails the test, but nothing
calls the internet. A ``print(...)`` line with a trailing comment promises what it
prints: the comment must appear in what the block printed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Snippet", "check", "execute", "snippets"]

_BLOCK = re.compile(r"(<!-- imports checked, not run: [^>]*-->\n)?```python\n(.*?)```", re.S)
_PROMISE = re.compile(r"^\s*print\(.*\)\s+# (.+?)\s*$")


@dataclass(frozen=True)
class Snippet:
    name: str  # e.g. "README.md[block 1]", for tracebacks
    code: str
    run: bool  # False: compiled and its imports run, nothing else

    @property
    def promises(self) -> list[str]:
        """What the block's ``print(...)  # comment`` lines say it prints."""
        return [m.group(1) for m in map(_PROMISE.match, self.code.splitlines()) if m]


def snippets(page: Path) -> list[Snippet]:
    """Every ```python block of ``page``, in order."""
    return [Snippet(f"{page.name}[block {n}]", code, run=not marker)
            for n, (marker, code) in enumerate(_BLOCK.findall(page.read_text()))]


def check(snippet: Snippet, printed: str) -> None:
    """Assert the block kept its promises (``printed`` is what running it wrote)."""
    for promise in snippet.promises:
        assert promise in printed, f"{snippet.name} promises {promise!r}; it printed:\n{printed}"


def execute(snippet: Snippet) -> None:
    """Run the block (or only its imports) in a fresh namespace."""
    code = compile(snippet.code, snippet.name, "exec")  # a syntax error fails either way
    if not snippet.run:
        tree = ast.parse(snippet.code)
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert imports, f"{snippet.name} is not run, so it must at least import something"
        code = compile(ast.Module(body=imports, type_ignores=[]), snippet.name, "exec")
    exec(code, {"__name__": "docs"})
