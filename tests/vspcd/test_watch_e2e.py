"""Console watch through the real daemon: a VM panics, and the alert reaches the admin
subscribers, the hook, the metric, `vspc alerts` (across a restart); `vspc grep`
finds lines in rotated and gzipped logs; both honour per-console access."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.ext.test_hooks import ENV_HOOK, drained, read_envs, script
from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, Operator, console_port, running
from vspc.vspcd.faces.admin import link as link_module
from vspc.vspcd.faces.admin.policy import Identity, Source, parse_access
from vspc.vspcd.faces.metrics import exposition
from vspc.vspctui.client import AdminAddress, AdminClient
from vspc.vspctui.cmdtable import Context, run_command
from vspc.vspctui.shell.commands import commands, parse_when

PANIC = (
    b"[    2.861240] No filesystem could mount root, tried:\r\n"
    b"[    2.861301] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"
)
OP = Identity("unix", 5000, 5000, "op", frozenset({6000}), Source.UNIX)


async def vspc(socket: Path, *words: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(AdminAddress(path=str(socket)), out_stream=out, err_stream=err)
    command = commands.get(words[0])
    assert command is not None
    try:
        status = await run_command(ctx, command, command.parser().parse_args(list(words[1:])))
    finally:
        await ctx.close()
    return status, out.getvalue(), err.getvalue()


def test_a_panic_reaches_every_observer_and_grep_reads_rotated_gzipped_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    logs = tmp_path / "logs"
    socket = tmp_path / "admin.sock"
    flags = (
        "--hook-command", f"{script(tmp_path, 'env_hook.py', ENV_HOOK)} {out}",
        "--hook-events", "console_alert",
        "--log-dir", str(logs), "--log-timestamps", "--log-flush", "0",
        "--log-max-size", "8K", "--log-keep", "5", "--log-compress",
        "--persist-file", str(tmp_path / "state.db"),
    )  # fmt: skip
    boot = b"".join(b"boot line %05d ok\r\n" % i for i in range(600))  # ~26 KiB stamped
    identity = {"op": False}
    real = link_module.identify
    monkeypatch.setattr(
        link_module,
        "identify",
        lambda transport, *, unix: OP if identity["op"] else real(transport, unix=unix),
    )

    async def first_run() -> None:
        async with running(tmp_path, *flags) as (daemon, events):
            db = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "vm01")
            web = await FakeEsxi.connect(daemon.proxy_port, UUID_B, "other01")
            await events.wait("vm_connected", count=2)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            for i in range(0, len(boot), 1000):
                db.send(boot[i : i + 1000])
            await op.output.length(len(boot))
            db.send(PANIC)
            web.send(b"login: \r\n" + PANIC)
            first = await events.wait("console_alert")
            await events.wait("console_alert", count=2)
            assert first["alert"] == "kernel_panic" and first["severity"] == "critical"
            assert first["line"].endswith(
                "Kernel panic - not syncing: VFS: Unable to mount root fs"
            )
            assert first["context"][-1].endswith("No filesystem could mount root, tried:")
            db.send(PANIC)  # within the hold-off: no second alert
            await op.output.expect(PANIC, start=len(boot) + len(PANIC))
            await drained(daemon)
            (env, other) = read_envs(out)["console_alert"]
            assert {env["VSPC_VM_NAME"], other["VSPC_VM_NAME"]} == {"vm01", "other01"}
            assert env["VSPC_ALERT"] == "kernel_panic" and env["VSPC_ALERT_SEVERITY"] == "critical"
            assert "Kernel panic - not syncing" in env["VSPC_ALERT_LINE"]
            assert daemon.metrics is not None
            assert daemon.metrics.snapshot().console_alerts == {"kernel_panic": 2}
            text = exposition(daemon.metrics.snapshot())
            assert 'vspcd_console_alerts_total{alert="kernel_panic"} 2' in text
            assert daemon.gzip is not None
            await daemon.gzip.drain()
            assert list(logs.glob("vmlog-vm01.*.gz"))
            # grep: the first boot lines are in gzipped generations only.
            status, printed, err = await vspc(socket, "grep", r"boot line 0000[37] ok", "vm0*")
            assert status == 0, err
            assert [line.split("  ")[0] for line in printed.splitlines()] == ["vm01", "vm01"]
            client = await AdminClient.connect(AdminAddress(path=str(socket)))
            reply = await client.request("grep", pattern="Kernel panic", limit=2)
            assert {m["name"] for m in reply["matches"]} == {"vm01", "other01"}
            assert all(m["time"] is not None and m["source"] == "log" for m in reply["matches"])
            assert reply["truncated"] is True  # vm01 printed it twice
            since = await client.request("grep", pattern="Kernel panic", since=2**31)
            assert since["matches"] == []
            await client.close()
            # Access: OP may watch vm* only.
            policy = parse_access(
                {
                    "access_default": "none",
                    "access": [{"consoles": ["vm*"], "users": ["op"], "level": "watch"}],
                },
                user_uid={"op": 5000}.__getitem__,
                group_gid={}.__getitem__,
            )
            daemon.config = dataclasses.replace(daemon.config, access_policy=policy)
            identity["op"] = True
            client = await AdminClient.connect(AdminAddress(path=str(socket)))
            reply = await client.request("grep", pattern="Kernel panic")
            assert {m["name"] for m in reply["matches"]} == {"vm01"}
            alerts = await client.request("alerts")
            assert [a["name"] for a in alerts["alerts"]] == ["vm01"]
            await client.close()
            identity["op"] = False
            await op.close()
            await db.close()
            await web.close()

    async def second_run() -> str:
        async with running(tmp_path, *flags):
            status, printed, _ = await vspc(socket, "alerts")
            assert status == 0
            status_json, raw, _ = await vspc(socket, "alerts", "--json", "other01")
            rows: list[dict[str, Any]] = json.loads(raw)["alerts"]
            assert [r["name"] for r in rows] == ["other01"] and status_json == 0
            return printed

    asyncio.run(first_run())
    printed = asyncio.run(second_run())  # remembered in the persist file
    assert printed.count("kernel_panic (critical)") == 2
    assert "> [    2.861301] Kernel panic - not syncing" in printed


def test_when_words() -> None:
    assert parse_when("1700000000") == 1700000000
    assert parse_when("2h", now=10_000.0) == 10_000 - 7200
    assert parse_when("2026-01-01T00:00:00+00:00") == 1767225600


def test_alert_rules_reload_and_config_errors(tmp_path: Path) -> None:
    from vspc.vspcd.service.configdata import ConfigError
    from vspc.vspcd.service.configfile import read_config_file
    from vspc.vspcd.service.reload import apply as apply_reload

    bad = tmp_path / "bad.toml"
    bad.write_text('[[alert]]\nname = "x"\nregex = "("\nseverity = "loud"\n')
    with pytest.raises(ConfigError) as caught:
        read_config_file(bad)
    assert any("alert[1].regex" in p for p in caught.value.problems)
    assert any("alert[1].severity" in p for p in caught.value.problems)
    good = tmp_path / "good.toml"
    good.write_text("[[alert]]\nname = 'ro'\nregex = 'Remounting filesystem read-only'\n")
    (rule,) = read_config_file(good)["alert_rules"]  # type: ignore[misc]

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            esx = await FakeEsxi.connect(daemon.proxy_port, UUID_A, "vm01")
            await events.wait("vm_connected")
            new = dataclasses.replace(daemon.config, alert_rules=(rule,), no_builtin_alerts=True)
            outcome = apply_reload(daemon, new)
            assert {key for key, _, _ in outcome.applied} == {"alert_rules", "no_builtin_alerts"}
            esx.send(PANIC + b"EXT4-fs (sda1): Remounting filesystem read-only\r\n")
            hit = await events.wait("console_alert")
            assert hit["alert"] == "ro" and hit["severity"] == "warning"
            assert [n for n, f in events.seen if n == "console_alert"] == ["console_alert"]
            await esx.close()

    asyncio.run(main())
