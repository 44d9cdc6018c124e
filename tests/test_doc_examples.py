"""Every shell example of README.md and docs/*.md is run here, or plainly marked a sketch.

A fenced block tagged `sh`, `bash` or `console` is either

- a sketch: the line before the fence is `<!-- sketch -->` and the text just above says
  "Sketch" so a reader sees it too (for commands that need root, a vCenter, Redis or the
  network, or that are the test suite itself); or
- run by a runner of `RUNNERS` (or, for a whole page, `PAGE_RUNNERS`) below, which
  executes the block's own text.

An unmarked block with no runner fails `test_every_shell_block_is_run_or_a_sketch`, so a
new example cannot slip in untested.  An untagged block whose first command line starts
with a program (`vspcd`, `.venv/bin/python`, `mkdir`, ...: `COMMAND_WORDS`) fails
`test_shell_examples_are_tagged`: it is a shell example hiding from the rule above.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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
        """The block's command lines, a line ending in a backslash joined to the next."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        return [line for line in joined.splitlines() if line and not line.startswith("#")]


def _fences() -> list[Block]:
    """Every fenced block of README.md and docs/*.md, whatever its language tag."""
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
            text = "\n".join(lines[i + 1 : end])
            found.append(Block(path, i + 1, opening.group(1), text, tuple(lines[:i])))
            i = end + 1
    return found


def _blocks() -> list[Block]:
    return [block for block in FENCES if block.lang in SHELL_LANGS]


# What an untagged block that is really a shell example starts with: optional
# `NAME=value` prefixes, then one of these programs (or anything run from a venv).
COMMAND_WORDS = (
    "vspcd", "vspc", "vspc-tui", "vspc-sim", "vspc-web", "python", "python3", "pip",
    "mkdir", "cd", "for", "gdb", "sudo", "systemctl", "journalctl", "ssh", "telnet",
    "socat", "curl", "echo", "printf", "cat", "export", "env", "openssl", "esxcli", "govc",
    "git", "make", "tar", "kill", "jq", "rpmbuild", "dpkg-buildpackage", "apt-get", "dnf",
    "tmux",
)  # fmt: skip
SHELL_LINE = re.compile(
    r"(?:\$ )?(?:[A-Za-z_][A-Za-z0-9_]*=(?:\"[^\"]*\"|'[^']*'|\S)*\s+)*"
    r"(?:(?:\.\./)*\.venv/bin/\S+|(?:" + "|".join(map(re.escape, COMMAND_WORDS)) + r"))(?=\s|$)"
)


def _looks_like_shell(block: Block) -> bool:
    """The block's first line that is not blank or a comment starts with a command."""
    for line in block.text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return SHELL_LINE.match(stripped) is not None
    return False


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


def _run_vspcd_shell(command: str, tmp_path: Path, env: dict[str, str]) -> None:
    """Run one documented line through `sh`, its `vspcd` being `vspcd ... --check-config`.

    Unlike `_argv_of`, this keeps the line's `NAME=value` prefixes (PYTHONPATH).
    """
    wrap = tmp_path / "checkbin"
    wrap.mkdir(exist_ok=True)
    (wrap / "vspcd").write_text(f"#!/bin/sh\nexec '{BIN / 'vspcd'}' \"$@\" --check-config\n")
    (wrap / "vspcd").chmod(0o755)
    env = {**env, "PATH": f"{wrap}{os.pathsep}{env['PATH']}"}
    done = subprocess.run(
        ["sh", "-c", command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "configuration OK" in done.stdout


def _next_block(block: Block, lang: str) -> Block:
    later = [b for b in FENCES if b.path == block.path and b.line > block.line]
    return next(b for b in later if b.lang == lang)


def run_plugin_lines(block: Block, tmp_path: Path) -> None:
    """Both spellings load the page's own sample backend (the Python block below it).

    The module is written where the first line's PYTHONPATH points (a temporary
    directory for /opt/vspc-plugins); the second line expects it on sys.path already.
    """
    plugins = tmp_path / "vspc-plugins"
    plugins.mkdir()
    (plugins / "vSPCBackendSample.py").write_text(_next_block(block, "python").text + "\n")
    env = {**_sandbox(tmp_path), "PYTHONPATH": str(plugins)}
    lines = [c for c in block.commands() if "vspcd" in c]
    assert len(lines) == 2, block.name
    for command in lines:
        _run_vspcd_shell(command.replace("/opt/vspc-plugins", str(plugins)), tmp_path, env)


def run_audit_lines(block: Block, tmp_path: Path) -> None:
    """The vspcd line is valid, and the jq line picks the denied records of a log.

    The log is docs/security.md's sample record ("Audit trail") and the same record
    allowed; jq is run only where it is installed.
    """
    run_vspcd_lines(block, tmp_path)
    (jq_line,) = [c for c in block.commands() if c.startswith("jq ")]
    if shutil.which("jq") is None:
        return
    security = ROOT / "docs" / "security.md"
    (sample,) = [b for b in FENCES if b.path == security and b.lang == "json"]
    denied = json.loads(sample.text)
    assert denied["result"] == "denied"
    allowed = {**denied, "result": "allowed", "reason": ""}
    log = tmp_path / "audit.log"
    log.write_text("".join(json.dumps(r) + "\n" for r in (allowed, denied, allowed)))
    command = jq_line.replace("/var/log/vspcd/audit.log", str(log))
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    assert [json.loads(line) for line in done.stdout.splitlines()] == [denied]


# bench/*.py run up to the point where they would start measuring: every scenario's
# work goes through asyncio.run or a subprocess; the in-process ones (IN_PROCESS)
# measure right after parsing their arguments.
BENCH_DRY_RUN = """
import argparse, asyncio, os, runpy, subprocess, sys

class Measuring(BaseException):  # not Exception: the scripts catch those per scenario
    pass

parsed = []
parse = argparse.ArgumentParser.parse_args

def parse_and_note(self, *args, **kwargs):
    namespace = parse(self, *args, **kwargs)
    parsed.append(namespace)
    if mode == "parse":  # set below, before the script runs
        raise Measuring
    return namespace

def stop_once_parsed(real):
    def call(*args, **kwargs):
        if not parsed:  # an import at start-up, not the benchmark
            return real(*args, **kwargs)
        for arg in args:
            getattr(arg, "close", lambda: None)()  # the coroutine asyncio.run was given
        raise Measuring
    return call

argparse.ArgumentParser.parse_args = parse_and_note
asyncio.run = stop_once_parsed(asyncio.run)
subprocess.Popen = stop_once_parsed(subprocess.Popen)
mode, script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
sys.path.insert(0, os.path.dirname(script))
try:
    runpy.run_path(script, run_name="__main__")
except Measuring:
    sys.exit(0)
sys.exit("the script ended without reaching its measurement")
"""
IN_PROCESS = {"telnet_decode.py", "vmotion_micro.py"}


def _bench_invocations(block: Block, tmp_path: Path) -> list[tuple[Path, list[str]]]:
    """(script, argv) of every benchmark the block's shell text starts, in order.

    The block runs in a scratch copy of the checkout's shape whose `.venv/bin/python`
    only records where it was run from and with what.
    """
    work = tmp_path / "checkout"
    (work / "bench").mkdir(parents=True)
    (work / ".venv" / "bin").mkdir(parents=True)
    record = tmp_path / "invocations"
    fake = work / ".venv" / "bin" / "python"
    fake.write_text(f'#!/bin/sh\nprintf \'%s\\0\' "$PWD" "$#" "$@" >> \'{record}\'\n')
    fake.chmod(0o755)
    subprocess.run(
        ["sh", "-e", "-c", block.text], cwd=work, env=_sandbox(tmp_path), check=True, timeout=30
    )
    fields = record.read_bytes().decode().split("\0")[:-1]
    found = []
    while fields:
        cwd, count, *fields = fields
        script, *argv = fields[: int(count)]
        fields = fields[int(count) :]
        where = (Path(cwd) / script).relative_to(work)
        assert where.parent == Path("bench"), (block.name, script)
        found.append((ROOT / where, argv))
    return found


def run_bench_lines(block: Block, tmp_path: Path) -> None:
    """Every benchmark command of the block names a script that takes its flags.

    Each script gets its documented argv and checks it as it would for a real run
    (argparse, then its own checks: daemon_bench's --only names and --set keys,
    storm_bench's sizes, vmotion_cpu_bench's --vmware-cmd), then stops where it would
    start measuring (BENCH_DRY_RUN).  tests/test_bench_smoke.py runs them for real.
    """
    invocations = _bench_invocations(block, tmp_path)
    assert invocations, block.name
    for script, argv in invocations:
        assert script.is_file(), (block.name, script)
        mode = "parse" if script.name in IN_PROCESS else "run"
        done = subprocess.run(
            [sys.executable, "-c", BENCH_DRY_RUN, mode, str(script), *argv],
            env=_sandbox(tmp_path),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (block.name, script.name, argv, done.stderr[-2000:])


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
    (
        "docs/operations.md",
        "vspcd --audit-log /var/log/vspcd/audit.log --audit-max-size 50M --audit-keep 10",
    ): run_audit_lines,
    (
        "docs/plugins.md",
        "PYTHONPATH=/opt/vspc-plugins vspcd --backend Sample --backend-args "
        "'-o /var/lib/vspc/events.jsonl'",
    ): run_plugin_lines,
    ("docs/vspc-sim.md", "mkdir -p /tmp/vdemo"): run_vspcd_lines,
}
# Every shell block of these pages that is not a sketch goes to one runner.
PAGE_RUNNERS: dict[str, Callable[[Block, Path], None]] = {
    "docs/benchmarks.md": run_bench_lines,
}


def _key(block: Block) -> tuple[str, str]:
    return str(block.path.relative_to(ROOT)), block.first


def _runner(block: Block) -> Callable[[Block, Path], None] | None:
    page, _ = _key(block)
    return RUNNERS.get(_key(block)) or PAGE_RUNNERS.get(page)


FENCES = _fences()
BLOCKS = _blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_every_shell_block_is_run_or_a_sketch(block: Block, tmp_path: Path) -> None:
    runner = _runner(block)
    if block.is_sketch:
        assert _key(block) not in RUNNERS, f"{block.name} is marked a sketch but has a runner"
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


def test_shell_examples_are_tagged() -> None:
    """An untagged block that starts with a command is a shell example: tag it `sh`.

    Untagged blocks escape the test above; output samples, JSON, TOML and config files
    stay untagged or carry their own tag (`text`, `json`, `toml`, `ini`, `nginx`).
    """
    untagged = [block.name for block in FENCES if not block.lang and _looks_like_shell(block)]
    assert not untagged, f"tag these `sh`, then run them or mark them a sketch: {untagged}"
