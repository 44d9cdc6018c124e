"""The reference docs name everything the code offers: every vspcd flag in
docs/operations.md, every admin command in
docs/admin-protocol.md, every `vspc` command in docs/vspc.md, every console script in
the README.  A flag or command added without a word in its doc fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vspc.common.admin import COMMANDS
from vspc.vspcd.service.config import build_parser
from vspc.vspctui.shell.commands import commands

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _words(path: Path) -> set[str]:
    """Every flag-like or identifier-like token of a document."""
    return set(re.findall(r"--?[A-Za-z][\w-]*|[A-Za-z_][\w-]*", path.read_text()))


def _vspcd_flags() -> list[str]:
    return sorted(
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--version")
    )


@pytest.mark.parametrize("flag", _vspcd_flags())
def test_every_vspcd_flag_is_in_operations_md(flag: str) -> None:
    assert flag in _words(DOCS / "operations.md"), f"{flag} is not in docs/operations.md"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_admin_command_is_in_admin_protocol_md(command: str) -> None:
    text = (DOCS / "admin-protocol.md").read_text()
    assert f"`{command}`" in text or f"### {command}" in text, command


@pytest.mark.parametrize("command", sorted(c.name for c in commands))
def test_every_vspc_command_is_in_vspc_md(command: str) -> None:
    assert f"`{command}" in (DOCS / "vspc.md").read_text(), command


def test_every_console_script_is_in_the_readme() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    readme = (ROOT / "README.md").read_text()
    for script in scripts:
        assert f"`{script}" in readme or f"{script} " in readme, script
