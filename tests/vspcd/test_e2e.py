"""End to end over loopback: fake ESXi hosts -> real vspcd -> telnet operators.

Issue #3's test list: lifecycle, binary transparency, every vMotion path with typing
during the switch (docs/protocol.md §4, §6.4), TV-26..TV-28, sticky ports and expiry,
bind-failure skipping, client limit, raw clients, TLS, a stalled client.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.vspcd.harness import (
    UUID_A,
    UUID_B,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from vspc.common import esxi

SEQ1 = bytes.fromhex("44da87f1")
SEQ2 = bytes.fromhex("7619ffe9")  # contains 0xff: escaping on both sides (TV-15)


def test_lifecycle_sticky_port_and_reconnect(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port, name="db01")
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            op = await Operator.connect(port)
            await events.wait("client_attached")
            vm.send(b"login: ")
            await op.output.expect(b"login: ")
            op.type(b"root\r")
            await vm.input.expect(b"root\r")
            # The VM goes away: the console and its port stay while a client is there.
            await vm.close()
            await events.wait("vm_disconnected")
            assert console_port(daemon, UUID_A) == port
            vm2 = await FakeEsxi.connect(daemon.proxy_port, name="db01")
            await identified(events, UUID_A, count=2)
            assert console_port(daemon, UUID_A) == port
            vm2.send(b"back\r\n")
            await op.output.expect(b"back\r\n")
            await op.close()
            await vm2.close()

    asyncio.run(main())


def test_binary_transparency_both_ways(tmp_path: Path) -> None:
    payload = bytes(range(256)) + b"\x00\x11\xff\xff\r\n\r\x00A"

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            vm.send(payload)
            await op.output.length(len(payload))
            assert bytes(op.output.data) == payload
            op.type(payload)
            await vm.input.length(len(payload))
            assert bytes(vm.input.data) == payload
            await op.close()
            await vm.close()

    asyncio.run(main())


@pytest.mark.parametrize("fin_first", [True, False], ids=["source-fin-first", "complete-first"])
def test_vmotion_with_typing_during_the_switch(tmp_path: Path, fin_first: bool) -> None:
    """docs/protocol.md §6.4: typed after GOAHEAD, delivered once to the destination."""

    async def main() -> None:
        # The operator must see exactly the VM's bytes: no status notices.
        async with running(tmp_path, "--no-notices") as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            src.send(b"before ")
            await op.output.expect(b"before ")
            op.type(b"early\r")
            await src.input.expect(b"early\r")
            cookie = await src.begin(SEQ2)
            op.type(b"<1>\r")
            op.type(b"<2>\r")
            dst = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            await dst.wait_for(esxi.PeerOk)
            loop = asyncio.get_running_loop()
            if fin_first:
                await src.close()
                dst.complete(SEQ2)
                completed = loop.time()
            else:
                dst.complete(SEQ2)
                completed = loop.time()
                await events.wait("vmotion_complete")
                await src.close()
            # Delivered at once, with no further typing, exactly once, in order.
            await dst.input.expect(b"<1>\r<2>\r")
            assert loop.time() - completed < 0.5  # docs/protocol.md §6.4 item 2
            dst.send(b"after")
            await op.output.expect(b"after")
            assert bytes(op.output.data).endswith(b"before after")
            assert b"<1>" not in src.input.data
            assert bytes(dst.input.data) == b"<1>\r<2>\r"
            op.type(b"live\r")
            await dst.input.expect(b"live\r")
            assert bytes(dst.input.data) == b"<1>\r<2>\rlive\r"
            await op.close()
            await dst.close()

    asyncio.run(main())


def test_vmotion_abort_returns_held_input_to_the_source(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            await src.begin(SEQ1)
            op.type(b"<held>")
            await events.wait("vmotion_begin")
            src.abort()
            await src.input.expect(b"<held>")
            src.send(b"resumed")
            await op.output.expect(b"resumed")
            op.type(b"<next>")
            await src.input.expect(b"<next>")
            assert bytes(src.input.data) == b"<held><next>"
            # The cookie died with the ABORT: a PEER with it gets nothing (TV-14).
            await src.close()
            await op.close()

    asyncio.run(main())


def test_notnow_when_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            assert daemon.hub is not None
            daemon.hub.refuse_next_vmotion(daemon.hub.find(UUID_A))
            vm.session.begin(SEQ1)
            vm._flush()
            notnow = await vm.wait_for(esxi.NotNow)
            assert notnow.sequence == SEQ1
            cookie = await vm.begin(SEQ2)  # the refusal was one-shot
            assert cookie.startswith(SEQ2)
            await vm.close()

    asyncio.run(main())


def test_two_ports_of_one_vm_migrate_at_once(tmp_path: Path) -> None:
    """TV-26: same UUID, ?port=a and ?port=b, BEGIN on both; nothing mixes."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            a = await FakeEsxi.connect(daemon.proxy_port, uri="vSPC.py?port=a")
            b = await FakeEsxi.connect(daemon.proxy_port, uri="vSPC.py?port=b")
            await identified(events, UUID_A + "_a")
            await identified(events, UUID_A + "_b")
            op_a = await Operator.connect(console_port(daemon, UUID_A + "_a"))
            op_b = await Operator.connect(console_port(daemon, UUID_A + "_b"))
            await events.wait("client_attached", count=2)
            cookie_a, cookie_b = await asyncio.gather(a.begin(SEQ1), b.begin(SEQ1))
            assert cookie_a != cookie_b
            op_a.type(b"to-a")
            op_b.type(b"to-b")
            da = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie_a)
            db = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie_b)
            await da.wait_for(esxi.PeerOk)
            await db.wait_for(esxi.PeerOk)
            await a.close()
            await b.close()
            da.complete(SEQ1)
            db.complete(SEQ1)
            await da.input.expect(b"to-a")
            await db.input.expect(b"to-b")
            da.send(b"from-a")
            db.send(b"from-b")
            await op_a.output.expect(b"from-a")
            await op_b.output.expect(b"from-b")
            assert b"to-b" not in da.input.data and b"to-a" not in db.input.data
            assert b"from-b" not in op_a.output.data and b"from-a" not in op_b.output.data
            for closing in (op_a, op_b, da, db):
                await closing.close()

    asyncio.run(main())


def test_reconnect_while_old_connection_open(tmp_path: Path) -> None:
    """TV-27: the new connection is active; the old one is closed; the port stays."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            old = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            op = await Operator.connect(port)
            await events.wait("client_attached")
            new = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A, count=2)
            async with asyncio.timeout(5):
                await old.input.closed.wait()
            op.type(b"hello")
            await new.input.expect(b"hello")
            assert console_port(daemon, UUID_A) == port
            await op.close()
            await new.close()

    asyncio.run(main())


def test_abandoned_vmotion_does_not_wedge(tmp_path: Path) -> None:
    """TV-28: BEGIN, source closes, no PEER in the grace period: the port works again."""

    async def main() -> None:
        async with running(tmp_path, "--vmotion-abandon", "0.2") as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            cookie = await src.begin(SEQ1)
            op.type(b"<kept>")
            await src.close()
            await events.wait("vmotion_abort", lambda f: f.get("reason") == "abandoned")
            late = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A, count=2)
            await vm.input.expect(b"<kept>")  # the hold waited for the next connection
            vm.send(b"works")
            await op.output.expect(b"works")
            assert await vm.begin(SEQ2)
            assert not any(isinstance(e, esxi.PeerOk) for e in late.events)
            for closing in (late, vm, op):
                await closing.close()

    asyncio.run(main())


def test_destination_drops_then_abort(tmp_path: Path) -> None:
    """TV-29 / F6: the destination leaves after PEER-OK, the source aborts."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            cookie = await src.begin(SEQ1)
            op.type(b"<x>")
            dst = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            await dst.wait_for(esxi.PeerOk)
            await dst.close()
            src.abort()
            await src.input.expect(b"<x>")
            assert b"<x>" not in dst.input.data
            await src.close()
            await op.close()

    asyncio.run(main())


def test_expiry_releases_the_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--vm-expire-time", "0.2") as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            op = await Operator.connect(port)
            await events.wait("client_attached")
            await vm.close()
            await events.wait("vm_disconnected")
            await op.close()  # the last one leaves: the expiry timer starts now
            expired = await events.wait("vm_expired")
            assert expired["port"] == port
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


def test_bind_failure_is_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", 0))  # the kernel's pick: no race with others
            squatter.listen()
            start = squatter.getsockname()[1]
            async with running(tmp_path, "-r", str(start)) as (daemon, events):
                vm = await FakeEsxi.connect(daemon.proxy_port)
                await identified(events, UUID_A)
                assert console_port(daemon, UUID_A) > start
                await vm.close()

    asyncio.run(main())


def test_client_limit_refuses_with_a_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--client-limit", "1") as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            first = await Operator.connect(port)
            await events.wait("client_attached")
            second = await Operator.connect(port)
            await second.output.expect(b"already has 1 client")
            await second.closed()
            vm.send(b"still")
            await first.output.expect(b"still")
            await first.close()
            await vm.close()

    asyncio.run(main())


def test_raw_client_gets_data_without_negotiating(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            raw = await Operator.connect(console_port(daemon, UUID_A), raw=True)
            await events.wait("client_attached")
            vm.send(b"no waiting")
            await raw.wire.expect(b"no waiting")
            raw.type(b"typed\r")
            await vm.input.expect(b"typed\r")
            await raw.close()
            await vm.close()

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls_and_plain_on_the_proxy_port(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    async def main() -> None:
        args = ("--ssl", "--cert", str(cert), "--key", str(key))
        async with running(tmp_path, *args) as (daemon, events):
            secure = await FakeEsxi.connect(daemon.proxy_port, tls=True)
            plain = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_B)
            await identified(events, UUID_A)
            await identified(events, UUID_B)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            secure.send(b"over tls")
            await op.output.expect(b"over tls")
            op.type(b"back")
            await secure.input.expect(b"back")
            for closing in (op, secure, plain):
                await closing.close()

    asyncio.run(main())


def test_stalled_client_does_not_stop_the_others(tmp_path: Path) -> None:
    """A client that stops reading loses output (and is told so); others lose nothing."""
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = 64 * len(chunk)  # 4 MiB

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with running(tmp_path, "--client-queue", "65536") as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            port = console_port(daemon, UUID_A)
            with socket.socket() as stalled:
                stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stalled.setblocking(False)
                await loop.sock_connect(stalled, ("127.0.0.1", port))
                await events.wait("client_attached")
                fast = await Operator.connect(port)
                await events.wait("client_attached", count=2)
                for _ in range(64):
                    vm.send(chunk)
                await fast.output.length(total)
                assert fast.output.data == chunk * 64
                # Now the stalled client reads again: it sees the marker, not 4 MiB.
                seen = bytearray()
                async with asyncio.timeout(5):
                    while b"dropped: client too slow" not in seen:
                        data = await loop.sock_recv(stalled, 65536)
                        assert data, "closed before the drop marker"
                        seen += data
                assert len(seen) < total
            await fast.close()
            await vm.close()

    asyncio.run(main())


def test_source_data_during_vmotion_acts_as_abort(tmp_path: Path) -> None:
    """F2: a source that talks again has resumed; its held input comes back to it."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            cookie = await src.begin(SEQ1)
            op.type(b"<held>")
            await events.wait("vmotion_begin")
            src.send(b"still here")
            await op.output.expect(b"still here")
            await src.input.expect(b"<held>")
            # A PEER with the dead cookie gets no PEER-OK (TV-19 b).
            late = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            src.send(b"!")
            await op.output.expect(b"!")
            assert not any(isinstance(e, esxi.PeerOk) for e in late.events)
            for closing in (late, src, op):
                await closing.close()

    asyncio.run(main())


def test_bad_peer_and_stray_messages_change_nothing(tmp_path: Path) -> None:
    """F5 / TV-23: unknown cookie; F10 / TV-24: stray COMPLETE and ABORT; then BEGIN works."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            bogus = await FakeEsxi.connect(daemon.proxy_port, cookie=bytes(range(1, 9)))
            vm.complete(bytes.fromhex("09090909"))
            vm.abort()
            op.type(b"typed")
            await vm.input.expect(b"typed")
            cookie = await vm.begin(SEQ1)
            dst = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            await dst.wait_for(esxi.PeerOk)
            assert not any(isinstance(e, esxi.PeerOk) for e in bogus.events)
            for closing in (bogus, dst, vm, op):
                await closing.close()

    asyncio.run(main())


def test_second_begin_replaces_the_first(tmp_path: Path) -> None:
    """F9 / TV-19 c: the first cookie dies, the second BEGIN is answered."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            first = await src.begin(SEQ1)
            second = await src.begin(SEQ2)
            stale = await FakeEsxi.connect(daemon.proxy_port, cookie=first)
            dst = await FakeEsxi.connect(daemon.proxy_port, cookie=second)
            await dst.wait_for(esxi.PeerOk)
            dst.complete(SEQ2)
            await events.wait("vmotion_complete")
            assert not any(isinstance(e, esxi.PeerOk) for e in stale.events)
            for closing in (stale, dst, src):
                await closing.close()

    asyncio.run(main())


def test_fresh_do_proxy_during_vmotion_takes_over(tmp_path: Path) -> None:
    """F11: a new VM instance for the key aborts the vMotion and becomes active."""

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            cookie = await src.begin(SEQ1)
            op.type(b"<for-the-new-one>")
            restarted = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A, count=2)
            await restarted.input.expect(b"<for-the-new-one>")
            late = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            restarted.send(b"rebooted")
            await op.output.expect(b"rebooted")
            assert not any(isinstance(e, esxi.PeerOk) for e in late.events)
            for closing in (late, restarted, src, op):
                await closing.close()

    asyncio.run(main())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_loopback_end_to_end(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--proxy-iface", "::1", "-i", "::1") as (daemon, events):
            vm = await FakeEsxi.connect(daemon.proxy_port, host="::1")
            connected = await identified(events, UUID_A)
            assert connected["peer"].startswith("[::1]:")  # bracketed in logs and events
            op = await Operator.connect(console_port(daemon, UUID_A), host="::1")
            await events.wait("client_attached")
            vm.send(b"over v6")
            await op.output.expect(b"over v6")
            op.type(b"back")
            await vm.input.expect(b"back")
            await op.close()
            await vm.close()

    asyncio.run(main())
