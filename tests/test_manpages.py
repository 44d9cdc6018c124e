"""The man pages packaging/manpages.py generates (vspcd(8), vspc(1), vspc-tui(1),
vspc-sim(1), vspcd.toml(5)): every flag of every parser, every `vspc` command and every
configuration key is in its page, and `man -l` renders each without a groff warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))

import manpages  # noqa: E402

PAGES = {
    "vspcd": "vspcd.8",
    "vspc": "vspc.1",
    "vspc-tui": "vspc-tui.1",
    "vspc-sim": "vspc-sim.1",
    "vspc-web": "vspc-web.1",
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("man")
    written = manpages.write_pages(out)
    assert sorted(p.name for p in written) == sorted([*PAGES.values(), "vspcd.toml.5"])
    return {path.name: path.read_text() for path in written}


def _roff(flag: str) -> str:
    return flag.replace("-", "\\-")


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_every_flag_is_in_its_page(prog: str, pages: dict[str, str]) -> None:
    page = pages[PAGES[prog]]
    parser = manpages.parser_for(prog)
    for action in parser._actions:
        for flag in action.option_strings:
            assert f"\\fB{_roff(flag)}\\fR" in page, f"{prog}: {flag} missing from its man page"


def test_every_vspc_command_and_its_options_are_in_vspc_1(pages: dict[str, str]) -> None:
    from vspc.vspctui.shell.commands import commands

    page = pages["vspc.1"]
    for command in commands:
        if not command.cli:
            continue
        heading = " | ".join([command.name, *command.aliases])
        assert f'.SS "vspc {_roff(heading)}"' in page, command.name
        section = page.split(f'.SS "vspc {_roff(heading)}"')[1].split(".SS")[0]
        for flag in command.option_names():
            assert f"\\fB{_roff(flag)}\\fR" in section, f"vspc {command.name} {flag}"


def test_every_config_key_is_in_vspcd_toml_5(pages: dict[str, str]) -> None:
    from vspc.vspcd.service.config import file_keys

    page = pages["vspcd.toml.5"]
    keys = file_keys()
    assert "client_limit" in keys and "config" not in keys
    for key in keys:
        assert f"\\fB{_roff(key)}\\fR = " in page, key


def test_vspc_tui_page_lists_the_keys(pages: dict[str, str]) -> None:
    from vspc.vspctui.dashboard.keys import help_sections

    page = pages["vspc-tui.1"]
    for title, _ in help_sections():
        assert f'.SS "{_roff(title)}"' in page


def test_the_command_line_writes_a_man_tree(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "manpages.py"), "--tree", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("man1/vspc.1", "man1/vspc-tui.1", "man1/vspc-sim.1", "man1/vspc-web.1",
                 "man5/vspcd.toml.5",
                 "man8/vspcd.8"):  # fmt: skip
        assert (tmp_path / name).is_file(), name


@pytest.mark.skipif(
    shutil.which("man") is None or shutil.which("groff") is None,
    reason="man or groff not installed (Debian packages man-db, groff)",
)
@pytest.mark.parametrize("name", sorted([*PAGES.values(), "vspcd.toml.5"]))
def test_man_renders_without_warnings(name: str, pages: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(pages[name])
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MAN_KEEP_STDERR": "1"}
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    # --warnings=w passes groff -ww: every warning.
    done = subprocess.run(
        ["man", "--warnings=w", "-l", str(path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert done.stdout.count("\n") > 10
