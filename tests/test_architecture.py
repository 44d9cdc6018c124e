"""The parts of docs/architecture.md and the import directions between them, checked on
the source tree.

The tree is read with `ast`, never imported, so a violation is reported even in a
module no test imports.  Every spelling of an import counts: `import vspc.vspcd.x`,
`from vspc.vspcd import x`, `from vspc.vspcd.x import y`, relative imports
(`from ..hub import x`), imports inside functions, imports under `if TYPE_CHECKING:`
and `importlib.import_module("vspc.vspcd.x")` with a literal name.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"common": "vspc.common", "vspcd": "vspc.vspcd", "vspctui": "vspc.vspctui"}

# The daemon's parts are its folders.  `vspcd/__init__.py` and `vspcd/__main__.py`
# belong to the service: `python -m vspc.vspcd` only calls service.main.
DAEMON_PARTS = ("hub", "net", "faces", "history", "ext", "service", "cluster")
CODECS, TOOLS = "codecs", "tools"
PARTS = (CODECS, *DAEMON_PARTS, TOOLS)

# Which part may import which (docs/architecture.md, "The parts").  A part may always
# import itself.
ALLOWED: dict[str, frozenset[str]] = {
    CODECS: frozenset(),
    "hub": frozenset({CODECS}),
    "net": frozenset({"hub", CODECS}),
    "history": frozenset({"hub", CODECS}),
    "ext": frozenset({"hub", "history", CODECS}),
    "faces": frozenset({"hub", "net", "history", CODECS}),
    "cluster": frozenset({"hub", "net", "faces", CODECS}),
    "service": frozenset(DAEMON_PARTS) | {CODECS},
    TOOLS: frozenset({CODECS}),
}

# The hub is pure state and policy: time, timers, secrets and ports are injected.
HUB_FORBIDDEN = ("asyncio", "socket", "ssl", "selectors", "subprocess", "os", "io")
CODECS_FORBIDDEN = ("asyncio", "socket", "ssl", "selectors")


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name a file is installed as, and whether it is a package's __init__."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def part_of_file(path: Path) -> str:
    """The part a source file belongs to: its folder (docs/architecture.md)."""
    top, *rest = path.relative_to(ROOT).parts
    if top == "common":
        return CODECS
    if top == "vspctui":
        return TOOLS
    if len(rest) == 1:  # vspcd/__init__.py, vspcd/__main__.py
        return "service"
    return rest[0]


def part_of_module(name: str) -> str | None:
    """The part a dotted module name lies in; None outside the project or at its roots."""
    bits = name.split(".")
    if bits[:2] == ["vspc", "common"]:
        return CODECS
    if bits[:2] == ["vspc", "vspctui"]:
        return TOOLS
    if bits[:2] == ["vspc", "vspcd"] and len(bits) >= 3:
        if bits[2] in DAEMON_PARTS:
            return bits[2]
        if bits[2] == "__main__":
            return "service"
    return None  # outside the project, or a package root (`vspc.vspcd.__version__`)


def imports(path: Path, root: Path = ROOT) -> Iterator[str]:
    """Every module name a file imports, fully qualified, however it is spelt."""
    own, is_package = _module_name(path, root)
    package = own if is_package else own.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_bits = package.split(".")
                base_bits = base_bits[: len(base_bits) - (node.level - 1)]
                base = ".".join(base_bits + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            if part_of_module(base) is None:  # `from vspc.vspcd import hub`: vspc.vspcd.hub
                yield from (f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value


def _all_files() -> list[Path]:
    return [path for folder in FOLDERS for path in _files(folder)]


@functools.cache
def _crossings() -> tuple[tuple[str, str, str, str], ...]:
    """(file, imported module, importing part, imported part) for every cross-part import."""
    found = []
    for path in _all_files():
        source = part_of_file(path)
        for name in imports(path):
            target = part_of_module(name)
            if target is not None and target != source:
                found.append((_rel(path), name, source, target))
    return tuple(found)


def _violations() -> set[tuple[str, str]]:
    return {
        (file, name) for file, name, source, target in _crossings() if target not in ALLOWED[source]
    }


# --- the directions --------------------------------------------------------------------


PAIRS = [(s, t) for s in PARTS for t in PARTS if s != t]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_direction_between_every_pair_of_parts(source: str, target: str) -> None:
    found = {(file, name) for file, name, s, t in _crossings() if (s, t) == (source, target)}
    if target in ALLOWED[source]:
        return
    assert not found, f"{source} must not import {target}: {sorted(found)}"


def test_nothing_imports_the_service_but_itself() -> None:
    importers = {file for file, _name, source, target in _crossings() if target == "service"}
    assert not importers, sorted(importers)


# --- the spellings the reader understands -----------------------------------------------


@pytest.mark.parametrize(
    ("file", "source", "expected"),
    [
        ("vspcd/net/links.py", "import vspc.vspcd.hub.hub", "hub"),
        ("vspcd/net/links.py", "from vspc.vspcd import hub", "hub"),
        ("vspcd/net/links.py", "from vspc.vspcd.hub.events import VmConnected", "hub"),
        ("vspcd/net/links.py", "from ..hub import events", "hub"),
        ("vspcd/net/links.py", "from .. import service", "service"),
        ("vspcd/faces/http/routes.py", "from ...history.store import Store", "history"),
        ("vspcd/hub/__init__.py", "from ..service import config", "service"),
        ("vspcd/net/links.py", "def f():\n    from vspc.vspcd.service import config", "service"),
        (
            "vspcd/net/links.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from vspc.vspcd.faces import admin",
            "faces",
        ),
        (
            "vspcd/net/links.py",
            "import importlib\nimportlib.import_module('vspc.vspcd.cluster.node')",
            "cluster",
        ),
    ],
)
def test_every_import_spelling_is_seen(
    file: str, source: str, expected: str, tmp_path: Path
) -> None:
    # Same place in a scratch tree, so relative imports resolve as they would there.
    path = tmp_path / file
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert expected in {part_of_module(name) for name in imports(path, tmp_path)}


# --- every file has a part, every part is documented ------------------------------------


@pytest.mark.parametrize("path", _files("vspcd"), ids=_rel)
def test_every_daemon_module_is_in_exactly_one_part(path: Path) -> None:
    rest = path.relative_to(ROOT / "vspcd").parts
    if len(rest) == 1:
        assert rest[0] in ("__init__.py", "__main__.py"), path
    else:
        assert rest[0] in DAEMON_PARTS, f"{path}: folder {rest[0]!r} is not a part"
    assert [p for p in PARTS if p == part_of_file(path)] == [part_of_file(path)]


def test_every_part_folder_exists_and_is_named_in_architecture_md() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    folders = {p.name for p in (ROOT / "vspcd").iterdir() if p.is_dir() and p.name[0] != "_"}
    assert folders == set(DAEMON_PARTS)
    for folder in (*(f"vspcd/{p}/" for p in DAEMON_PARTS), "common/", "vspctui/"):
        assert folder in text, f"docs/architecture.md does not name {folder}"
    for tool in ("shell", "dashboard", "sim"):
        assert f"vspctui/{tool}/" in text, tool


def test_architecture_md_names_no_missing_module() -> None:
    # Every module path the page names exists (paths only; it may describe a package
    # without naming its modules).
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"(?<![\w/])((?:vspcd|common|vspctui)/[\w/]+\.py)\b", text))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


# --- what the parts may not touch at all ------------------------------------------------


@pytest.mark.parametrize("path", _files("vspcd/hub"), ids=_rel)
def test_hub_is_pure(path: Path) -> None:
    for name in imports(path):
        assert name.split(".")[0] not in HUB_FORBIDDEN, (path, name)


@pytest.mark.parametrize("path", _files("common"), ids=_rel)
def test_codecs_import_neither_daemon_nor_tools_nor_io(path: Path) -> None:
    for name in imports(path):
        assert part_of_module(name) in (None, CODECS), (path, name)
        assert name.split(".")[0] not in CODECS_FORBIDDEN, (path, name)


@pytest.mark.parametrize("path", _files("vspctui"), ids=_rel)
def test_tools_never_import_the_daemon(path: Path) -> None:
    for name in imports(path):
        assert not name.startswith("vspc.vspcd"), (path, name)
