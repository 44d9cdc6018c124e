"""`telnet = false` in `[[access]]` rules against a real in-process daemon
(vspcd/hub/telnetport.py; docs/security.md "Per-VM telnet ports"): a name-glob rule
leaves its consoles without a listener from the start (`vm_connected`, `show` and
`list` say port null, nothing listens), a rename into the rule closes the port and
disconnects its telnet clients with a notice, a rename out of it reopens the same
port, and a SIGHUP that changes the rules does the same to every console."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.daemonproc import free_port
from tests.vspcd.faces.test_admin import U1, FakeVm, Harness, run
from tests.vspcd.harness import Operator
from vspc.common import vmware
from vspc.vspcd.hub.telnetport import CLOSED_NOTICE
from vspc.vspcd.service.cli import reload_config
from vspc.vspcd.service.config import parse_args
from vspc.vspcd.service.notify import Notifier
from vspc.vspcd.service.run import _reload
from vspc.vspcd.service.server import Daemon

U2 = "89abcdef0123456776543210fedcba98"

NO_DB_TELNET = """
[[access]]
consoles = ["db*"]
telnet = false
"""

NOTICE = f"[vspcd: {CLOSED_NOTICE}]".encode()


@asynccontextmanager
async def daemon(tmp_path: Path, rules: str) -> AsyncIterator[tuple[Harness, list[str]]]:
    """A daemon reading `rules` from its configuration file; the argv a SIGHUP re-reads."""
    config = tmp_path / "vspcd.toml"
    config.write_text(rules)
    argv = ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "--config", str(config)]
    argv += ["--admin-socket", str(tmp_path / "s.sock"), "-r", str(free_port())]
    started = Daemon(parse_args(argv, {}))
    await started.start()
    harness = Harness(started)
    try:
        yield harness, argv
    finally:
        await harness.close()
        await started.stop()


def sighup(h: Harness, argv: list[str], rules: str) -> None:
    """Edit the file and do what SIGHUP does (vspcd/service/run.py)."""
    assert h.daemon.config.config is not None
    h.daemon.config.config.write_text(rules)
    _reload(h.daemon, lambda: reload_config(argv, {}), Notifier(None))


def rename(vm: FakeVm, name: str) -> None:
    """ESXi sends VM-NAME again: the VM was renamed in vCenter."""
    vm.session.name = name
    vm.session._send(vmware.VmName(name))
    vm._flush()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def listening(h: Harness) -> frozenset[int]:
    binder = h.daemon._binder
    assert binder is not None
    return binder.ports


async def told_and_closed(op: Operator) -> None:
    await op.closed()
    assert NOTICE in bytes(op.output.data), bytes(op.output.data)


def test_a_name_glob_rule_gives_its_consoles_no_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon(tmp_path, NO_DB_TELNET) as (h, _):
            watcher = await h.admin()
            await watcher.ok("subscribe")
            await h.vm(U1, "db01")
            connected = await watcher.event("vm_connected", key=U1)
            assert connected["console"]["port"] is None  # announced without one
            await h.vm(U2, "web01")
            web = await h.shown("web01")
            assert (await h.shown("db01"))["port"] is None
            rows = {row["name"]: row for row in (await watcher.ok("list"))["vms"]}
            assert rows["db01"]["port"] is None and rows["web01"]["port"] == web["port"]
            assert listening(h) == {web["port"]}  # nothing listens for db01
            op = await Operator.connect(web["port"])
            await h.until(lambda c: c["clients"] == 1, vm="web01")
            await op.close()

    run(main)


def test_renames_into_and_out_of_the_rule_close_and_reopen_the_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon(tmp_path, NO_DB_TELNET) as (h, _):
            vm = await h.vm(U1, "web01")
            port = (await h.shown("web01"))["port"]
            assert isinstance(port, int)
            op = await Operator.connect(port)
            await h.until(lambda c: c["clients"] == 1, vm="web01")
            rename(vm, "db01")
            await told_and_closed(op)
            shown = await h.until(lambda c: c["vm_name"] == "db01", vm=U1)
            assert shown["port"] is None and shown["clients"] == 0
            assert await refused(port) and listening(h) == frozenset()
            rename(vm, "web02")  # out of the rule: the same port again (still free)
            shown = await h.until(lambda c: c["vm_name"] == "web02", vm=U1)
            assert shown["port"] == port
            again = await Operator.connect(port)
            vm.say(b"hello again")
            await again.output.expect(b"hello again")
            await again.close()

    run(main)


def test_sighup_changing_the_rule_closes_and_reopens_ports(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon(tmp_path, "") as (h, argv):
            vm = await h.vm(U1, "web01")
            await h.vm(U2, "db01")
            web, db = (await h.shown("web01"))["port"], (await h.shown("db01"))["port"]
            assert isinstance(web, int) and isinstance(db, int)
            on_db, on_web = await Operator.connect(db), await Operator.connect(web)
            await h.until(lambda c: c["clients"] == 1, vm="db01")
            await h.until(lambda c: c["clients"] == 1, vm="web01")
            admin, reply = await h.attach("db01")  # not a telnet client: it stays
            assert reply["ok"]
            sighup(h, argv, NO_DB_TELNET)
            await told_and_closed(on_db)
            shown = await h.shown("db01")
            assert shown["port"] is None and shown["clients"] == 1  # the admin attach
            assert await refused(db) and listening(h) == {web}
            vm.say(b"web still served")
            await on_web.output.expect(b"web still served")
            sighup(h, argv, "")  # the rule is gone: db01 listens again, on its port
            assert (await h.shown("db01"))["port"] == db and listening(h) == {web, db}
            back = await Operator.connect(db)
            await h.until(lambda c: c["clients"] == 2, vm="db01")
            await back.close()
            await on_web.close()
            await admin.close()

    run(main)


def test_check_config_accepts_name_globs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vspc.vspcd.service.main import main

    config = tmp_path / "vspcd.toml"
    config.write_text(NO_DB_TELNET)
    assert main(["--check-config", "--config", str(config)]) == 0
