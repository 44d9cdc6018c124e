"""Hooks (docs/operations.md §6): `--hook-command` through a real in-process vspcd.

VMs and operators connect over loopback; hooks are real subprocesses (this Python
running small scripts written into tmp_path).  Tests wait on `HookRunner.drained()`
and on files the hooks write, never on the clock; the one timeout under test is the
hook's own `--hook-timeout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vspcd.harness import (
    TIMEOUT,
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo, ClientKind, LockMode
from vspc.vspcd.ext.hookenv import HOOK_EVENTS, VARIABLES, env_value, environment
from vspc.vspcd.ext.hooks import HookRunner, HookSettings
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import ClientAttached, ConsoleCleared, VmRenamed
from vspc.vspcd.service.config import parse_args
from vspc.vspcd.service.reload import apply as apply_reload
from vspc.vspcd.service.settings import hook_settings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "operations.md"

# Writes its VSPC_* environment (and whether PATH came through) to OUT/<event>-<pid>.json.
ENV_HOOK = """
import json, os, sys
out = sys.argv[1]
env = {k: v for k, v in os.environ.items() if k.startswith("VSPC_")}
env["has PATH"] = "PATH" in os.environ
path = os.path.join(out, f"{env['VSPC_EVENT']}-{os.getpid()}.json")
with open(path + ".tmp", "w") as f:
    json.dump(env, f)
os.rename(path + ".tmp", path)
"""

# Marks itself running, records how many were running then, blocks on a FIFO.
BLOCKING_HOOK = """
import os, sys
run, counts, fifo = sys.argv[1:4]
mine = os.path.join(run, str(os.getpid()))
open(mine, "w").close()
with open(counts, "a") as f:
    f.write(f"{len(os.listdir(run))}\\n")
with open(fifo, "rb") as f:
    f.read()
os.unlink(mine)
"""


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"{sys.executable} {path}"


def hooks_of(daemon: Any) -> HookRunner:
    assert daemon.hooks is not None
    runner: HookRunner = daemon.hooks
    return runner


async def drained(daemon: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        await hooks_of(daemon).drained()


def read_envs(out: Path) -> dict[str, list[dict[str, Any]]]:
    envs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*.json")):
        env = json.loads(path.read_text())
        envs.setdefault(env["VSPC_EVENT"], []).append(env)
    return envs


# ----------------------------------------------------------------- the environment


def test_hook_environment_for_a_console_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("VSPC_STALE", "from the daemon's own environment")
    command = f"{script(tmp_path, 'env_hook.py', ENV_HOOK)} {out}"

    async def main() -> None:
        async with running(tmp_path, "--hook-command", command) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            op = await Operator.connect(port)
            await events.wait("client_attached")
            await op.close()
            await events.wait("client_detached")
            await esx.close()
            await events.wait("vm_disconnected")
            await drained(daemon)
            envs = read_envs(out)
            assert sorted(envs) == [
                "client_attached",
                "client_detached",
                "vm_connected",
                "vm_disconnected",
            ]
            (connected,) = envs["vm_connected"]
            assert connected["VSPC_CONSOLE_KEY"] == UUID_A
            assert connected["VSPC_VM_UUID"] == vm.display_uuid(UUID_A)
            assert connected["VSPC_VM_LABEL"] == ""
            assert connected["VSPC_PORT"] == str(port)
            assert connected["VSPC_PEER"].startswith("127.0.0.1:")
            assert connected["VSPC_FIRST"] == "1"
            assert connected["VSPC_VM_NAME"] == "db01"  # the name, not the UUID
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", connected["VSPC_TIME"])
            (attached,) = envs["client_attached"]
            assert attached["VSPC_VM_NAME"] == "db01"
            assert attached["VSPC_CLIENT_KIND"] == "telnet"
            assert attached["VSPC_CLIENT_PEER"].startswith("127.0.0.1:")
            assert attached["VSPC_CLIENT_READONLY"] == "0"
            assert attached["VSPC_CLIENT_USER"] == "" and attached["VSPC_CLIENT_UID"] == ""
            (detached,) = envs["client_detached"]
            assert detached["VSPC_CLIENT_ID"] == attached["VSPC_CLIENT_ID"]
            assert detached["VSPC_REASON"] == ""
            (gone,) = envs["vm_disconnected"]
            assert gone["VSPC_PEER"] == connected["VSPC_PEER"]
            for env in (connected, attached, detached, gone):
                assert env.pop("has PATH") is True  # the daemon's environment is passed on
                assert "VSPC_STALE" not in env  # but no inherited VSPC_*
                assert set(env) <= set(VARIABLES)

    asyncio.run(main())


def test_hook_events_filter_and_expiry(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    command = f"{script(tmp_path, 'env_hook.py', ENV_HOOK)} {out}"
    flags = ("--hook-command", command, "--hook-events", "vm_expired", "--vm-expire-time", "0.1")

    async def main() -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            await esx.close()
            await events.wait("vm_expired")
            await drained(daemon)
            envs = read_envs(out)
            assert list(envs) == ["vm_expired"]  # the others were filtered out
            assert envs["vm_expired"][0]["VSPC_PORT"] == str(port)  # the port just freed

    asyncio.run(main())


def test_every_variable_is_documented() -> None:
    # The hooks section only: other sections name the tools' own VSPC_* variables.
    text = DOCS.read_text()
    start = text.index("### Hooks: `--hook-command`")
    section = text[start : text.index("\n### ", start + 1)]
    documented = set(re.findall(r"`(VSPC_[A-Z_]+)`", section))
    assert documented == set(VARIABLES)
    for name in HOOK_EVENTS:
        assert f"`{name}`" in section


def test_environment_values_are_safe_for_execve() -> None:
    key = ConsoleKey(UUID_A, "com2")
    client = ClientInfo(1, ClientKind.ATTACH, "/run/x\0y", LockMode.WRITE, False, 0.0, 0, "r\udcff")
    env = environment(ClientAttached(key, "evil\0name\ud800", client), 0.0, 7000)
    assert env is not None
    assert env["VSPC_VM_NAME"] == "evil?name?"
    assert env["VSPC_CLIENT_PEER"] == "/run/x?y"
    assert env["VSPC_CLIENT_USER"] == "r\udcff"  # an undecodable byte passes as that byte
    assert env["VSPC_VM_LABEL"] == "com2" and env["VSPC_CLIENT_UID"] == "0"
    cleared = environment(ConsoleCleared(key, "db01", 3, "maintenance"), 0.0, None)
    assert cleared is not None
    assert (cleared["VSPC_CLIENTS"], cleared["VSPC_REASON"]) == ("3", "maintenance")
    assert cleared["VSPC_PORT"] == ""
    assert environment(VmRenamed(key, "db01", "db01"), 0.0, None) is None  # no hook event


@given(st.text())
def test_env_value_is_always_an_exec_safe_string(text: str) -> None:
    value = env_value(text)
    assert "\0" not in value
    os.fsencode(value)  # what subprocess does with it; must not raise
    if "\0" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert value == text


# ----------------------------------------------------------------- failures and bounds


def test_failures_are_logged_with_the_stderr_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failing = script(
        tmp_path, "fail.py", "import sys\nsys.stderr.write('boom \\x1b[31m')\nsys.exit(3)"
    )

    async def main(command: str) -> None:
        async with running(
            tmp_path, "--hook-command", command, "--hook-events", "vm_connected"
        ) as (
            daemon,
            events,
        ):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            await drained(daemon)
            await esx.close()

    caplog.set_level(logging.WARNING, logger="vspc.vspcd.ext.hooks")
    asyncio.run(main(failing))
    assert re.search(
        r"hook \S+python\S* \(vm_connected " + UUID_A + r"\): exit status 3; stderr: boom "
        r"\\x1b\[31m",
        caplog.text,
    ), caplog.text
    caplog.clear()
    asyncio.run(main(str(tmp_path / "no-such-hook")))
    assert "no-such-hook (vm_connected" in caplog.text
    assert "cannot run: No such file or directory" in caplog.text


def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # A shell whose child outlives it unless the group is killed.
    command = f"sh -c 'sleep 300 & echo $! > {pidfile}; echo waiting >&2; wait'"

    async def main() -> None:
        # Long enough for `sh` to start its child even on a loaded machine.
        flags = ("--hook-command", command, "--hook-timeout", "1.5")
        flags += ("--hook-events", "vm_connected")
        async with running(tmp_path, *flags) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            await drained(daemon)
            await esx.close()

    caplog.set_level(logging.WARNING, logger="vspc.vspcd.ext.hooks")
    asyncio.run(main())
    assert "timed out after 1.5 s; killed its process group; stderr: waiting" in caplog.text
    grandchild = int(pidfile.read_text())
    assert not alive(grandchild)


def alive(pid: int) -> bool:
    """False once `pid` is gone or a zombie waiting for init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def release(fifo: Path, runner: HookRunner) -> None:
    """Open and close the FIFO's write end until every hook has read EOF."""
    waiter = asyncio.ensure_future(runner.drained())
    async with asyncio.timeout(TIMEOUT):
        while not waiter.done():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader has it open yet
                    raise
            else:
                os.close(fd)
            await asyncio.wait({waiter}, timeout=0.02)


def test_concurrency_limit_and_bounded_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, counts, fifo = tmp_path / "running", tmp_path / "counts", tmp_path / "fifo"
    run.mkdir()
    os.mkfifo(fifo)
    command = f"{script(tmp_path, 'block.py', BLOCKING_HOOK)} {run} {counts} {fifo}"
    flags = ("--hook-command", command, "--hook-events", "vm_connected")
    flags += ("--hook-concurrency", "2", "--hook-queue", "3")
    uuids = [f"{n:032x}" for n in range(1, 8)]

    async def main() -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            runner = hooks_of(daemon)
            vms = []
            for uuid in uuids:  # 7 events: 2 run, 3 wait, 2 are dropped
                vms.append(await FakeEsxi.connect(daemon.proxy_port, uuid, f"vm{uuid[-1]}"))
                await identified(events, uuid)
            assert (runner.running, runner.queued) == (2, 3)
            assert "dropping events until the queue drains" in caplog.text
            await release(fifo, runner)
            assert runner.started == 5
            for esx in vms:
                await esx.close()

    caplog.set_level(logging.WARNING, logger="vspc.vspcd.ext.hooks")
    asyncio.run(main())
    seen = [int(line) for line in counts.read_text().split()]
    assert len(seen) == 5 and max(seen) <= 2  # never more than --hook-concurrency at once
    assert "hooks: 2 event(s) dropped while the queue was full" in caplog.text


def test_shutdown_kills_hooks_still_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = "sleep 300"

    async def main() -> None:
        flags = ("--hook-command", command, "--hook-events", "vm_connected")
        async with running(tmp_path, *flags) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            runner = hooks_of(daemon)
            assert runner.running == 1
            await runner.close(grace=0.1)
            assert runner.running == 0
            await esx.close()

    caplog.set_level(logging.WARNING, logger="vspc.vspcd.ext.hooks")
    asyncio.run(main())
    assert "hooks: 1 still running after 0.1 s; killing them" in caplog.text


def test_reload_turns_hooks_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    command = f"{script(tmp_path, 'env_hook.py', ENV_HOOK)} {out}"

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "db01")
            await identified(events, UUID_A)
            assert hooks_of(daemon).started == 0
            new = dataclasses.replace(
                daemon.config, hook_command=command, hook_events=("vm_disconnected",)
            )
            outcome = apply_reload(daemon, new)
            assert {key for key, _, _ in outcome.applied} == {"hook_command", "hook_events"}
            await esx.close()
            await events.wait("vm_disconnected")
            await drained(daemon)
            assert list(read_envs(out)) == ["vm_disconnected"]

    asyncio.run(main())


# ----------------------------------------------------------------- configuration


def test_hook_settings_from_a_configuration_file(tmp_path: Path) -> None:
    toml = tmp_path / "vspcd.toml"
    toml.write_text(
        'hook_command = "/usr/local/bin/on-event --quiet"\n'
        'hook_events = ["vm_connected", "client_attached"]\n'
        "hook_timeout = 2.5\nhook_concurrency = 8\nhook_queue = 16\n"
    )
    config = parse_args(["--config", str(toml)], {}, default_config=Path("/nonexistent"))
    assert hook_settings(config) == HookSettings(
        argv=("/usr/local/bin/on-event", "--quiet"),
        events=frozenset({"vm_connected", "client_attached"}),
        timeout=2.5,
        concurrency=8,
        queue=16,
    )
    default = parse_args([], {}, default_config=toml.with_name("none"))
    assert hook_settings(default).argv == ()  # off by default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hook-command", "'unterminated"], "No closing quotation"),
        (["--hook-command", "  "], "empty command"),
        (["--hook-events", "vm_connected,reboot"], "unknown hook event 'reboot'"),
        (["--hook-timeout", "0"], "--hook-timeout: must be > 0"),
        (["--hook-concurrency", "0"], "must be >= 1"),
    ],
)
def test_bad_hook_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, {}, default_config=Path("/nonexistent"))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
