"""The audit trail, `who` and `break` through the real admin socket and a fake ESXi
(docs/security.md "Audit trail", docs/admin-protocol.md "who", "break", "audit")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.faces.test_access_rules import as_op, policy, set_policy
from tests.vspcd.faces.test_admin import U2, daemon_with, run
from vspc.common.esxi import SerialBreak


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def logged(path: Path, **match: Any) -> dict[str, Any]:
    """The first record of `path` with every field of `match`, once written."""
    for _ in range(200):
        for record in records(path):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"no record {match} in {records(path)}")


def test_audit_log_records_allowed_and_denied_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = as_op(monkeypatch)
    path = tmp_path / "audit.log"

    async def main() -> None:
        async with daemon_with(tmp_path, "--audit-log", str(path)) as h:
            await h.vm()
            me, reply = await h.attach(lock="write")
            assert reply["ok"]
            await me.send(b"typed")
            attach = await logged(path, action="attach", result="ok", mode="write")
            assert attach["user"] == "root" and attach["uid"] == 0 and attach["peer"] == "unix"
            assert attach["console"] == "vm01" and attach["key"]
            assert attach["time"].endswith("Z") and "T" in attach["time"]
            await logged(path, action="lock", result="ok", mode="write")
            send = await logged(path, action="send", result="ok")
            assert "typed" not in json.dumps(send)  # that input was sent, never what

            set_policy(h, policy("watch"))
            flag["op"] = True
            watcher = await h.admin()
            flag["op"] = False
            assert await watcher.error("clear", vm="vm01") == "permission_denied"
            denied = await logged(path, action="clear", result="denied")
            assert denied["user"] == "op" and denied["uid"] == 5000
            assert denied["console"] == "vm01"
            assert denied["reason"].startswith("permission_denied: watch access")
            assert await watcher.error("clear", vm="other01") == "vm_not_found"
            hidden = await logged(path, action="clear", result="denied", console="other01")
            assert hidden["key"] == ""  # a console the peer may not see stays unnamed

            await me.close()
            await logged(path, action="unlock", result="ok")
            await logged(path, action="detach", result="ok", mode="write")

            # A telnet port carries no identity: the peer is the client's address.
            port = (await h.shown())["port"]
            telnet = await h.telnet(port)
            await telnet.send(b"x")
            tattach = await logged(path, action="attach", user="")
            assert tattach["uid"] is None and tattach["peer"].startswith("127.0.0.1:")
            await logged(path, action="send", user="", result="ok")

    run(main)


def test_audit_events_go_to_control_subscribers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = as_op(monkeypatch)

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            root = await h.admin()
            await root.ok("subscribe")
            set_policy(h, policy("write"))
            flag["op"] = True
            writer = await h.admin()
            flag["op"] = False
            await writer.ok("subscribe")
            assert await writer.error("break", vm="vm01") == "permission_denied"
            event = await root.event("audit")
            assert event["key"] and event["name"] == "vm01"
            assert event["audit"]["action"] == "break"
            assert event["audit"]["result"] == "denied"
            assert event["audit"]["user"] == "op"
            await writer.ok("list")  # any audit event would have come before this reply
            assert not any(e.get("event") == "audit" for e in writer.events)

    run(main)


def test_break_reaches_the_vm_as_iac_brk_and_is_announced(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def main() -> None:
        async with daemon_with(tmp_path, "--audit-log", str(path)) as h:
            vm = await h.vm()
            viewer, reply = await h.attach()
            assert reply["ok"]
            peer = await h.admin()
            done = await peer.ok("break", vm="vm01")
            assert done["name"] == "vm01"
            await vm.event(SerialBreak)
            await viewer.read_until(b"[vspcd: break sent by root]")
            await logged(path, action="break", result="ok", user="root")

    run(main)


def test_break_is_refused_without_a_vm(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def main() -> None:
        async with daemon_with(tmp_path, "--audit-log", str(path)) as h:
            vm = await h.vm()
            await vm.close()
            await h.until(lambda c: not c["connected"])
            peer = await h.admin()
            assert await peer.error("break", vm="vm01") == "vm_not_connected"
            await logged(path, action="break", result="denied")

    run(main)


def test_who_lists_only_consoles_the_caller_may_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = as_op(monkeypatch)

    async def main() -> None:
        async with daemon_with(tmp_path) as h:
            await h.vm()
            await h.vm(U2, "other01")
            one, _ = await h.attach("vm01", lock="write")
            two, _ = await h.attach("other01")
            root = await h.admin()
            everyone = (await root.ok("who"))["clients"]
            assert sorted(r["console"] for r in everyone) == ["other01", "vm01"]
            mine = next(r for r in everyone if r["console"] == "vm01")
            assert mine["user"] == "root" and mine["mode"] == "write" and mine["lock"] is True
            assert mine["kind"] == "attach" and mine["since"] > 1e9
            only = (await root.ok("who", vm="other01"))["clients"]
            assert [r["console"] for r in only] == ["other01"]

            set_policy(h, policy("watch"))
            flag["op"] = True
            watcher = await h.admin()
            flag["op"] = False
            seen = (await watcher.ok("who"))["clients"]
            assert [r["console"] for r in seen] == ["vm01"]
            assert await watcher.error("who", vm="other01") == "vm_not_found"

    run(main)


def test_sighup_reopens_the_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    async def main() -> None:
        async with daemon_with(tmp_path, "--audit-log", str(path)) as h:
            await h.vm()
            first, _ = await h.attach()
            await logged(path, action="attach")
            path.rename(tmp_path / "audit.log.1")  # logrotate's move
            h.daemon.reopen_logs()  # what SIGHUP runs first
            await first.close()
            await logged(path, action="detach")
            assert records(tmp_path / "audit.log.1")[0]["action"] == "attach"

    run(main)
