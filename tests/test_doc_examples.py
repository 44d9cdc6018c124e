"""Every shell example of README.md and docs/*.md is run here, or plainly marked a sketch.

A fenced block tagged `sh`, `bash` or `console` is either

- a sketch: the line before the fence is `<!-- sketch -->` and the text just above says
  "Sketch" so a reader sees it too (for commands that need root, a vCenter, Redis or the
  network, or that are the test suite itself); or
- run by a runner of `RUNNERS` below, which executes the block's own text.

An unmarked block with no runner fails `test_every_shell_block_is_run_or_a_sketch`, so a
new example cannot slip in untested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHELL_LANGS = ("sh", "bash", "console")
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = "<!-- sketch -->"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    before: tuple[str, ...]  # the lines above the fence, nearest last

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text else ""

    @property
    def is_sketch(self) -> bool:
        return bool(self.before) and self.before[-1].strip() == MARKER

    def commands(self) -> list[str]:
        return [line for line in self.text.splitlines() if line and not line.startswith("#")]


def _blocks() -> list[Block]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if opening is None:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if opening.group(1) in SHELL_LANGS:
                text = "\n".join(lines[i + 1 : end])
                found.append(Block(path, i + 1, opening.group(1), text, tuple(lines[:i])))
            i = end + 1
    return found


def _sandbox(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing of the caller's vspcd configuration in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSPC", "XDG_CONFIG"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _argv_of(command: str, tmp_path: Path) -> list[str]:
    """The argv a POSIX shell hands to `vspcd` for one documented command line."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    dump = tmp_path / "argv"
    (fake / "vspcd").write_text(
        f"#!/bin/sh\n: > '{dump}'\nfor a; do printf '%s\\0' \"$a\" >> '{dump}'; done\n"
    )
    (fake / "vspcd").chmod(0o755)
    env = _sandbox(tmp_path)
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    subprocess.run(["sh", "-c", command], env=env, check=True, timeout=30)
    return dump.read_bytes().decode().split("\0")[:-1]


def _check_config(argv: list[str], tmp_path: Path) -> None:
    """Run the installed vspcd's own validation on a documented command line."""
    done = subprocess.run(
        [str(BIN / "vspcd"), *argv, "--check-config"],
        env=_sandbox(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    assert "configuration OK" in done.stdout


# --- runners ---------------------------------------------------------------------------


def run_vspcd_lines(block: Block, tmp_path: Path) -> None:
    """Every `vspcd ...` line is a valid command line (`--check-config` on it)."""
    lines = [c for c in block.commands() if c.startswith("vspcd")]
    assert lines, block.name
    for command in lines:
        _check_config(_argv_of(command, tmp_path), tmp_path)


def run_hook_examples(block: Block, tmp_path: Path) -> None:
    """Both hook lines are valid, and the logger line logs the event, not a blank.

    vspcd splits the command with shlex and runs it without a shell
    (docs/operations.md, "Hooks"); the hook's own `sh -c` must expand the variables.
    """
    run_vspcd_lines(block, tmp_path)
    (logger_line,) = [c for c in block.commands() if "logger" in c]
    argv = _argv_of(logger_line, tmp_path)
    hook_command = argv[argv.index("--hook-command") + 1]

    fake = tmp_path / "hookbin"
    fake.mkdir()
    logged = tmp_path / "logged"
    (fake / "logger").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{logged}'\n")
    (fake / "logger").chmod(0o755)
    env = {
        "PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "VSPC_EVENT": "vm_connected",
        "VSPC_VM_NAME": "db01",
    }
    subprocess.run(shlex.split(hook_command), env=env, check=True, timeout=30)
    assert logged.read_text().splitlines() == ["-t", "vspc", "vm_connected db01"]

    # The TOML spelling the page gives next to it is the same command.
    text = block.path.read_text(encoding="utf-8")
    toml_line = re.search(r"`(hook_command = .*?)`\.?\n", text)
    assert toml_line is not None
    assert tomllib.loads(toml_line.group(1))["hook_command"] == hook_command


# (file, first line of the block) -> runner.  The runner executes the block's own text.
RUNNERS: dict[tuple[str, str], Callable[[Block, Path], None]] = {
    ("docs/operations.md", "vspcd                                   # or: python -m vspc.vspcd"): (
        run_vspcd_lines
    ),
    (
        "docs/operations.md",
        "vspcd --hook-command '/usr/local/libexec/vspc-hook' --hook-events "
        "vm_connected,vm_disconnected",
    ): run_hook_examples,
}


def _key(block: Block) -> tuple[str, str]:
    return str(block.path.relative_to(ROOT)), block.first


BLOCKS = _blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_every_shell_block_is_run_or_a_sketch(block: Block, tmp_path: Path) -> None:
    runner = RUNNERS.get(_key(block))
    if block.is_sketch:
        assert runner is None, f"{block.name} is marked a sketch but has a runner"
        visible = [line for line in block.before[:-1] if line.strip()][-3:]
        assert any("sketch" in line.lower() for line in visible), (
            f"{block.name}: a sketch must say so in the text above it, not only in a comment"
        )
        return
    assert runner is not None, f"{block.name}: run this example in a test or mark it a sketch"
    runner(block, tmp_path)


def test_every_runner_has_its_block() -> None:
    keys = {_key(block) for block in BLOCKS}
    assert set(RUNNERS) <= keys, sorted(set(RUNNERS) - keys)
