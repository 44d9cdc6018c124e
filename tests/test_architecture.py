"""The import rules of docs/architecture.md ("The parts"), checked on the source tree.

Read with `ast`, not by importing, so a violation is reported even in a module no test
imports.  Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"common": "vspc.common", "vspcd": "vspc.vspcd", "vspctui": "vspc.vspctui"}
# The hub's modules: pure state and policy, time and I/O injected.
HUB = ("hub.py", "vmotion.py", "console.py", "events.py")
HUB_FORBIDDEN = ("asyncio", "socket", "ssl", "selectors", "subprocess", "os", "io")
HUB_FORBIDDEN_OWN = ("links", "listeners", "admin", "server", "http", "flow")


def _imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("common"), ids=str)
def test_codecs_import_neither_daemon_nor_tools_nor_io(path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith(("vspc.vspcd", "vspc.vspctui")), (path, name)
        assert name.split(".")[0] not in ("asyncio", "socket", "ssl", "selectors"), (path, name)


@pytest.mark.parametrize("path", _modules("vspctui"), ids=str)
def test_tools_speak_only_the_protocols(path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith("vspc.vspcd"), (path, name)


@pytest.mark.parametrize("path", _modules("vspcd"), ids=str)
def test_daemon_never_imports_the_tools(path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith("vspc.vspctui"), (path, name)


@pytest.mark.parametrize("module", HUB)
def test_hub_is_pure(module: str) -> None:
    path = ROOT / "vspcd" / "hub" / module
    for name in _imports(path):
        assert name.split(".")[0] not in HUB_FORBIDDEN, (module, name)
        own = name.removeprefix("vspc.vspcd.")
        assert own == name or own.split(".")[0] not in HUB_FORBIDDEN_OWN, (module, name)
