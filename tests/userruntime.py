"""A copy of the vspc tools that any user can run, for tests that run them as other users.

Some end-to-end tests run the real programs as throwaway users (setpriv), as uid 65534,
or behind sshd's ForceCommand (docs/security.md "Who may do what", docs/operations.md
"Remote operators over SSH").  The venv's interpreter may not be theirs to run: a
pyenv build under a private /root, a venv in a `chmod 700` clone.  So the session
fixture `user_runtime` (registered in tests/conftest.py) builds, in a world-readable
temporary directory,

    lib/vspc/{common,vspcd,vspctui}     the packages, copied from this checkout
    lib/<third-party>                   what the operator tools import (prompt_toolkit,
                                        wcwidth, urwid; uvloop when it loads), copied
                                        from the venv's site-packages
    bin/vspc, bin/vspcd                 `#!/usr/bin/python3 -IS` wrappers

with directories 0755 and files 0644 (0755 for the wrappers).  The interpreter is the
system's /usr/bin/python3, world-executable; isolated (`-I`: no PYTHON* variables, no
user site) and without site-packages (`-S`), so only the copy is imported.  The test
skips, saying why, when /usr/bin/python3 is missing or older than 3.11 (pyproject.toml
requires-python).
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SYSTEM_PYTHON", "UserRuntime", "build", "user_runtime"]

SYSTEM_PYTHON = "/usr/bin/python3"
# Imported by vspc, vspc-tui and their dependencies (pyproject.toml `dependencies`).
REQUIRED = ("prompt_toolkit", "wcwidth", "urwid", "typing_extensions")
# vspcd's `--event-loop auto` (and VSPCD_EVENT_LOOP=uvloop runs) use it when it loads.
OPTIONAL = ("uvloop",)
ENTRY_POINTS = {
    "vspc": "vspc.vspctui.shell.cli",
    "vspcd": "vspc.vspcd.service.main",
}


@dataclass(frozen=True)
class UserRuntime:
    """Where the copy is; `vspc` and `vspcd` are the wrappers' paths."""

    root: Path
    python: str

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def vspc(self) -> str:
        return str(self.root / "bin" / "vspc")

    @property
    def vspcd(self) -> str:
        return str(self.root / "bin" / "vspcd")


def _system_python_problem() -> str | None:
    """Why /usr/bin/python3 cannot serve, or None."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON} (a world-executable interpreter for other users)"
    done = subprocess.run(
        [SYSTEM_PYTHON, "-IS", "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode != 0:
        return f"{SYSTEM_PYTHON} does not run: {done.stderr.strip()}"
    major, minor = map(int, done.stdout.split())
    if (major, minor) < (3, 11):
        return f"{SYSTEM_PYTHON} is {major}.{minor}; vspc needs 3.11 or later"
    return None


def _reachable(directory: Path) -> bool:
    """Whether every user may search `directory` and each of its parents."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [directory, *directory.parents])


def _distribution(name: str, site: Path) -> list[Path]:
    """`name`'s module or package and its dist-info in `site` (importlib.metadata
    answers from the copy as from the venv)."""
    module = importlib.import_module(name)
    origin = Path(module.__file__ or "")
    found = [origin.parent if origin.name == "__init__.py" else origin]
    normalised = name.replace("-", "_").lower()
    found += [p for p in site.glob("*.dist-info") if p.name.split("-")[0].lower() == normalised]
    return found


def _copy(source: Path, target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if source.is_dir():
        shutil.copytree(source, target, ignore=ignore)
    else:
        shutil.copy2(source, target)


def _import(python: str, lib: Path, module: str) -> subprocess.CompletedProcess[str]:
    """`import module` under `python -IS` with only `lib` added to its path."""
    code = f"import sys; sys.path[:0] = [{str(lib)!r}]; import {module}"
    return subprocess.run([python, "-IS", "-c", code], capture_output=True, text=True, timeout=60)


def build(root: Path, python: str = SYSTEM_PYTHON) -> UserRuntime:
    """Fill the empty directory `root` (see the module docstring) and check, as the
    caller, that every copied package imports under `python`."""
    import vspc.common
    import vspc.vspcd
    import vspc.vspctui

    lib = root / "lib"
    (lib / "vspc").mkdir(parents=True)
    for name, package in (
        ("common", vspc.common), ("vspcd", vspc.vspcd), ("vspctui", vspc.vspctui)
    ):  # fmt: skip
        _copy(Path(next(iter(package.__path__))), lib / "vspc" / name)
    site = Path(importlib.import_module("prompt_toolkit").__file__ or "").parent.parent
    for name in (*REQUIRED, *OPTIONAL):
        try:
            paths = _distribution(name, site)
        except ImportError:
            if name in OPTIONAL:
                continue
            raise
        for path in paths:
            _copy(path, lib / path.name)
    for info in site.glob("vspc-*.dist-info"):  # `vspc --version` reads it
        _copy(info, lib / info.name)
    for name in OPTIONAL:  # built for another CPython than `python`: left out
        if (lib / name).exists() and _import(python, lib, name).returncode != 0:
            shutil.rmtree(lib / name)
    (root / "bin").mkdir()
    for script, module in ENTRY_POINTS.items():
        (root / "bin" / script).write_text(
            f"#!{python} -IS\n"
            f'"""{script} from the copy in {lib} (tests/userruntime.py)."""\n'
            f"import sys\n\nsys.path[:0] = [{str(lib)!r}]\n"
            f"from {module} import main  # noqa: E402\n\nsys.exit(main())\n"
        )
    # Compiled once here: the users may not write __pycache__ beside the sources.
    subprocess.run(
        [python, "-IS", "-m", "compileall", "-q", "-j0", str(lib)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.parent == root / "bin" or path.suffix == ".so"
        path.chmod(0o755 if executable else 0o644)
    for module in (*ENTRY_POINTS.values(), *REQUIRED):
        done = _import(python, lib, module)
        if done.returncode != 0:
            raise RuntimeError(f"{module} does not import under {python}: {done.stderr}")
    return UserRuntime(root, python)


@pytest.fixture(scope="session")
def user_runtime() -> Iterator[UserRuntime]:
    """The world-readable copy, built once per session; removed afterwards."""
    problem = _system_python_problem()
    if problem is not None:
        pytest.skip(problem)
    base = Path(tempfile.gettempdir())
    if not _reachable(base):  # a private TMPDIR: other users could not reach the copy
        base = Path("/tmp")
    root = Path(tempfile.mkdtemp(prefix="vspc-userrt-", dir=base))
    try:
        yield build(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
