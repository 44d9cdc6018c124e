"""The real daemon announces a VM under its name, from the real capture's bytes.

ESXi sends VM-NAME right after VM-VC-UUID (docs/protocol.md §3.4); in the capture
they are separate segments.  Replayed here one segment per write with a pause
between, so the name arrives in a later read than the UUID, the connect hook
(`--hook-command` writing its environment), an admin subscriber on the real socket,
the daemon log and `--log-events` all name the VM "vm-00000" in `vm_connected`, with
no `vm_renamed`.  Without VM-NAME the announcement comes after the wait, under the
UUID, and console bytes sent meanwhile are not held back (vspcd/hub/announce.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.ext.test_hooks import ENV_HOOK, drained, read_envs, script
from tests.vspcd.harness import TIMEOUT, running
from tests.vspcd.test_capture_e2e import KEY, _records
from vspc.common import vmware as vm
from vspc.vspcd.hub.announce import NAME_WAIT

NAME = "vm-00000"  # the capture's VM-NAME
VM_NAME_SEGMENT = "ff fa e8 52"  # IAC SB 232 VM-NAME
UUID_SEGMENT = bytes.fromhex("ff fa e8 50")  # IAC SB 232 VM-VC-UUID
PAUSE = NAME_WAIT / 5  # long enough for a read of its own, well inside the wait


def opening(*, with_name: bool = True) -> list[bytes]:
    """Connection A's segments from the VM, from its first one to its first console byte."""
    segments = []
    for rec in _records():
        if rec["conn"] != "A" or rec["dir"] != "V>P" or rec["hex"] == "SYN":
            continue
        if rec["hex"].startswith(VM_NAME_SEGMENT) and not with_name:
            continue
        segments.append(bytes.fromhex(rec["hex"]))
        if segments[-1] == b"\x20":
            return segments
    raise AssertionError("the capture's connection A has no console output")


class Subscriber:
    """An admin client on the real socket, subscribed to every event."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, path: Path) -> Subscriber:
        reader, writer = await asyncio.open_unix_connection(str(path))
        sub = cls(reader, writer)
        writer.write(b'{"cmd":"hello","id":1}\n{"cmd":"subscribe","id":2}\n')
        while True:
            line = json.loads(await reader.readline())
            if line.get("id") == 2:
                assert line["ok"], line
                return sub

    async def until(self, name: str) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = json.loads(await self.reader.readline())
                if "event" in line:
                    self.events.append(line)
                    if line["event"] == name:
                        return line

    def close(self) -> None:
        self.writer.close()


def test_vm_connected_names_the_vm_when_the_name_comes_in_a_later_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vspc.vspcd.hub.hub")
    out = tmp_path / "hooks"
    out.mkdir()
    logs = tmp_path / "logs"
    hook = f"{script(tmp_path, 'env_hook.py', ENV_HOOK)} {out}"
    flags = ("--hook-command", hook, "--log-dir", str(logs), "--log-events")
    segments = opening()

    async def main() -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            assert daemon.proxy_port is not None
            sub = await Subscriber.open(daemon.admin_path)
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.proxy_port)
            for segment in segments:  # one read each
                writer.write(segment)
                await asyncio.sleep(PAUSE)
            connected = await sub.until("vm_connected")
            assert connected["key"] == KEY and connected["name"] == NAME
            assert connected["console"]["vm_name"] == NAME
            writer.close()
            await sub.until("vm_disconnected")
            assert "vm_renamed" not in [e["event"] for e in sub.events]
            sub.close()
            await drained(daemon)

    asyncio.run(main())
    (hooked,) = read_envs(out)["vm_connected"]
    assert hooked["VSPC_VM_NAME"] == NAME and hooked["VSPC_CONSOLE_KEY"] == KEY
    lines = [r.getMessage() for r in caplog.records if "VM connected from" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"{NAME} ({KEY[:8]}): VM connected from")
    (events_file,) = logs.glob("*.events")
    logged = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["event"] for e in logged] == ["vm_connected", "vm_disconnected"]
    assert logged[0]["name"] == NAME


def test_without_vm_name_the_uuid_is_announced_after_the_wait_and_output_flows(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    segments = opening(with_name=False)

    async def main() -> None:
        async with running(tmp_path, "--log-dir", str(logs), "--log-flush", "0") as (
            daemon,
            events,
        ):
            assert daemon.proxy_port is not None and daemon.hub is not None
            sub = await Subscriber.open(daemon.admin_path)
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.proxy_port)
            for segment in segments:
                writer.write(segment)
                if not segment.startswith(UUID_SEGMENT):
                    await asyncio.sleep(PAUSE)  # after the UUID: at once, no name
            async with asyncio.timeout(TIMEOUT):
                while not any(p.read_bytes() == b"\x20" for p in logs.glob("vmlog-*")):  # noqa: ASYNC110 (a file, no event to wait on)
                    await asyncio.sleep(0.01)
            # The console byte is in its log; the announcement still waits for a name.
            assert "vm_connected" not in [n for n, _ in events.seen]
            connected = await sub.until("vm_connected")
            assert connected["name"] == connected["console"]["vm_name"] == vm.display_uuid(KEY)
            writer.close()
            sub.close()

    asyncio.run(main())
