"""The hardening of docs/security.md, each measure exercised through real sockets.

The allow list, unidentified connections timed out and capped in data, TLS
handshakes capped, the admin listener without log storm or lockout, no per-read
overflow log line, and port binding in a crowded range.  A second host on loopback
is 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, identified, running
from tests.vspcd.net.test_listeners import recorder_factory, server_tls
from tests.vspcd.net.test_tls_fairness import client_hello_bytes
from vspc.vspcd.faces.admin import limits as admin_limits
from vspc.vspcd.hub.ratelog import throttled
from vspc.vspcd.net import ports
from vspc.vspcd.net.admission import Slots, parse_allow_list
from vspc.vspcd.net.listeners import PortBinder, ephemeral_overlap, start_proxy_listener
from vspc.vspcd.service import reload
from vspc.vspcd.service.config import parse_args

__all__ = ["server_tls"]  # a fixture shared with test_listeners

WAIT = 5.0
OTHER_HOST = "127.0.0.2"
Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(
    port: int, local: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes; fails if it never does."""
    data = b""
    async with asyncio.timeout(WAIT):
        with suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


# -- allow list ------------------------------------------------------------------------


def test_allow_list_parses_ipv4_ipv6_and_mapped_addresses() -> None:
    allow = parse_allow_list(" 10.1.0.0/24, fd00::/64 ,192.0.2.7")
    assert allow.allows("10.1.0.200") and not allow.allows("10.1.1.1")
    assert allow.allows("fd00::1") and not allow.allows("fd01::1")
    assert allow.allows("::ffff:10.1.0.5")  # an IPv4 peer on a dual-stack socket
    assert allow.allows("192.0.2.7") and not allow.allows("192.0.2.8")
    assert not allow.allows("unix") and not allow.allows("")


@pytest.mark.parametrize("text", ["", " , ", "10.0.0.1/8", "10.0.0.0/33", "host.example", "::/129"])
def test_a_bad_allow_list_is_a_usage_error(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--proxy-allow", text, "--admin-socket", str(tmp_path / "s")], {})
    assert exit_info.value.code == 2
    assert "--proxy-allow" in capsys.readouterr().err


@given(st.text(max_size=60))
def test_allow_list_parser_fails_only_with_valueerror(text: str) -> None:
    try:
        allow = parse_allow_list(text)
    except ValueError:
        return
    for net in allow.networks:
        assert allow.allows(str(net.network_address))


def test_a_peer_outside_the_allow_list_is_closed_and_a_reload_can_let_it_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        async with running(tmp_path, "--proxy-allow", "127.0.0.1/32") as (daemon, events):
            assert daemon.proxy_port is not None and daemon.proxy_listener is not None
            reader, writer = await connect(daemon.proxy_port, OTHER_HOST)
            assert await closed_by_peer(reader) == b""  # not even a telnet offer
            writer.close()
            good = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_A)
            await identified(events, UUID_A)
            # What SIGHUP does with an edited proxy_allow (vspcd/service/reload.py's LIVE table).
            new = dataclasses.replace(
                daemon.config, proxy_allow=parse_allow_list(f"{OTHER_HOST}/32")
            )
            outcome = reload.apply(daemon, new)
            assert [key for key, _, _ in outcome.applied] == ["proxy_allow"]
            other = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_B, local=OTHER_HOST)
            await identified(events, UUID_B)
            await other.close()
            await good.close()

    asyncio.run(main())
    assert messages(caplog, "not in the allow list")


def test_refusals_are_aggregated_into_one_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    logger = logging.getLogger("test.throttled")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()  # the 500 refusals fall in one period however slow the machine
        refusals = throttled(
            logger, "refused", clock=lambda: start, call_later=loop.call_later, period=0.05
        )
        for n in range(500):
            refusals.log("refused %s (%d)", "evil\x1b]0;x\x07", n)
        flushed = loop.create_future()
        loop.call_later(0.1, flushed.set_result, None)  # past the period's summary timer
        await flushed

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "test.throttled"]
    assert lines == [
        "refused evil\\x1b]0;x\\x07 (0)",
        "refused ... and 499 more in the last 0.05 s",
    ]


# -- bounded pre-identification state ----------------------------------------------------


def test_an_unidentified_connection_times_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        async with running(tmp_path, "--ident-timeout", "0.2") as (daemon, _events):
            assert daemon.proxy_port is not None
            reader, writer = await connect(daemon.proxy_port)
            offers = await closed_by_peer(reader)  # closed by the daemon: it never read EOF
            assert offers.startswith(b"\xff")  # it got the telnet offers first
            writer.close()

    asyncio.run(main())
    assert messages(caplog, "not identified within 0.2 s")


def test_data_and_an_open_subnegotiation_before_identification_are_capped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vspc")

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.proxy_port is not None and daemon.hub is not None
            reader, writer = await connect(daemon.proxy_port)
            # 64 KiB of data, then a subnegotiation left open at 60 KiB
            writer.write(b"x" * 65536 + b"\xff\xfa\xe8" + b"A" * 61440)
            await closed_by_peer(reader)
            writer.close()
            # A real VM is not bothered, and the hostile one is not in the hub any more.
            good = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_A)
            await identified(events, UUID_A)
            assert daemon.hub.connection_count() >= 1
            await good.close()

    asyncio.run(main())
    assert messages(caplog, "bytes without identifying; closing")


def test_unidentified_connections_per_address_are_capped_newest_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        async with running(tmp_path, "--unidentified-per-host", "3") as (daemon, events):
            assert daemon.proxy_port is not None
            held = [await connect(daemon.proxy_port) for _ in range(3)]
            for reader, _writer in held:  # admitted: they get the telnet offers
                assert (await reader.read(1)) == b"\xff"
            reader, writer = await connect(daemon.proxy_port)
            assert await closed_by_peer(reader) == b""  # the newest is refused
            writer.close()
            # Another address is not locked out ...
            other = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_B, local=OTHER_HOST)
            await identified(events, UUID_B)
            # ... and the slots come back when the held connections go.
            for _reader, held_writer in held:
                held_writer.close()
            async with asyncio.timeout(WAIT):
                while True:
                    reader, writer = await connect(daemon.proxy_port)
                    first = await reader.read(1)
                    writer.close()
                    if first:
                        break
            await other.close()

    asyncio.run(main())
    assert messages(caplog, "too many unidentified connections (3 from this address, limit 3)")


def test_tls_handshakes_over_the_cap_wait_for_a_slot_within_the_deadline(
    server_tls: ssl.SSLContext, cert_pair: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    hello = client_hello_bytes()

    async def stall(port: int) -> Pair:
        reader, writer = await connect(port)
        writer.write(hello)  # a whole ClientHello (so it gets a slot), then nothing
        return reader, writer

    async def listen() -> tuple[Any, Any, Slots, Slots]:
        loop = asyncio.get_running_loop()
        seen, factory = recorder_factory()
        handshakes = Slots(0, 2, lifetime=WAIT, clock=loop.time)
        unidentified = Slots(0, 0, lifetime=WAIT, clock=loop.time)
        listener = await start_proxy_listener(
            "127.0.0.1",
            0,
            server_tls,
            factory,
            handshake_timeout=WAIT,
            # the identification deadline also bounds the wait for a handshake slot
            unidentified=unidentified,
            handshakes=handshakes,
        )
        return listener, seen, handshakes, unidentified

    async def until_held(handshakes: Slots, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(handshakes) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # no event to wait on inside the listener

    async def until_released(handshakes: Slots) -> None:
        # Let the server see the stalled clients go before its listener closes.
        async with asyncio.timeout(WAIT):
            while len(handshakes):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def main() -> None:
        # A handshake over the cap waits without TLS state, then goes at its deadline.
        listener, _seen, handshakes, unidentified = await listen()
        try:
            stalled = [await stall(listener.port) for _ in range(2)]
            await until_held(handshakes, 2)
            unidentified.lifetime = 0.3  # the next connection's deadline: 0.3 s
            reader, writer = await stall(listener.port)
            assert await closed_by_peer(reader) == b""
            writer.close()
            for _reader, stalled_writer in stalled:
                stalled_writer.close()
            await until_released(handshakes)
        finally:
            listener.close()
            await listener.wait_closed()
        # A real client queued behind two stalled ones gets the first freed slot.
        listener, seen, handshakes, _unidentified = await listen()
        try:
            stalled = [await stall(listener.port) for _ in range(2)]
            await until_held(handshakes, 2)
            client_tls = ssl.create_default_context(cafile=str(cert_pair[0]))
            opening = asyncio.ensure_future(
                asyncio.open_connection(
                    "127.0.0.1", listener.port, ssl=client_tls, server_hostname="localhost"
                )
            )
            await asyncio.sleep(0.1)  # let it queue (its outcome is checked either way)
            assert not opening.done()
            stalled[0][1].close()
            async with asyncio.timeout(WAIT):
                _good_reader, good_writer = await opening
                await seen.get()  # handed to the protocol after its handshake
            good_writer.close()
            stalled[1][1].close()
            await until_released(handshakes)
        finally:
            listener.close()
            await listener.wait_closed()

    asyncio.run(main())
    assert messages(caplog, "no TLS handshake slot in time (2 from this address, limit 2)")


# -- log noise -----------------------------------------------------------------------------


def test_overflow_before_identification_is_logged_once_per_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        # A byte cap above 1 MB so the hub's 64 KiB buffer is what overflows.
        async with running(tmp_path, "--preident-bytes", str(4 << 20)) as (daemon, events):
            assert daemon.proxy_port is not None
            reader, writer = await connect(daemon.proxy_port)
            for _ in range(64):
                writer.write(b"y" * 16384)
                await writer.drain()
            good = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_A)
            await identified(events, UUID_A)  # the hostile bytes were all read by now?
            writer.write_eof()
            await closed_by_peer(reader)
            writer.close()
            await good.close()

    asyncio.run(main())
    assert len(messages(caplog, "output before identification overflowed")) == 1


# -- admin listener ------------------------------------------------------------------------


@asynccontextmanager
async def admin_tcp(
    port: int, local: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await connect(port, local)
    try:
        yield reader, writer
    finally:
        writer.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    async with asyncio.timeout(WAIT):
        return await reader.readline()


def test_one_admin_peer_cannot_lock_out_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vspc")

    async def main() -> None:
        args = ("--admin-port", "0", "--admin-per-peer", "4")
        async with running(tmp_path, *args) as (daemon, _events):
            port = daemon._admin.tcp_port  # noqa: SLF001
            assert port is not None
            hogs = [await connect(port, OTHER_HOST) for _ in range(4)]
            for reader, writer in hogs:
                assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
            reader, writer = await connect(port, OTHER_HOST)
            refused = await closed_by_peer(reader)
            assert b'"busy"' in refused and b"from this peer" in refused
            writer.close()
            # Another address and the daemon's own uid on the Unix socket still get in.
            async with admin_tcp(port) as (reader, writer):
                assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
            reader, writer = await asyncio.open_unix_connection(str(daemon.admin_path))
            assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
            writer.close()
            for _reader, hog in hogs:
                hog.close()

    asyncio.run(main())
    assert messages(caplog, "too many admin connections from this peer")


def test_the_daemon_uid_keeps_reserved_admin_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        admin_limits, "DEFAULT_LIMITS", admin_limits.Limits(connections=6, reserved=2)
    )

    async def main() -> None:
        args = ("--admin-port", "0", "--admin-per-peer", "10")
        async with running(tmp_path, *args) as (daemon, _events):
            port = daemon._admin.tcp_port  # noqa: SLF001
            assert port is not None
            others = [await connect(port, f"127.0.0.{n}") for n in (2, 3, 4, 5)]
            for reader, writer in others:
                assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
            reader, writer = await connect(port, "127.0.0.6")
            assert b"reserved" in await closed_by_peer(reader)
            writer.close()
            mine = [await asyncio.open_unix_connection(str(daemon.admin_path)) for _ in range(2)]
            for reader, writer in mine:
                assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
            for _reader, writer in others + mine:
                writer.close()

    asyncio.run(main())


def test_idle_admin_connections_time_out_but_subscribers_stay(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--admin-idle-timeout", "0.2") as (daemon, _events):
            path = str(daemon.admin_path)
            sub_reader, sub_writer = await asyncio.open_unix_connection(path)
            assert b'"ok":true' in await ask(sub_reader, sub_writer, b'{"cmd":"subscribe"}\n')
            idle_reader, idle_writer = await asyncio.open_unix_connection(path)
            goodbye = await closed_by_peer(idle_reader)
            assert b'"timeout"' in goodbye and b"idle for 0.2 s" in goodbye
            idle_writer.close()
            # The subscriber outlived the idle one and still answers.
            assert b'"ok":true' in await ask(sub_reader, sub_writer, b'{"cmd":"list"}\n')
            sub_writer.close()

    asyncio.run(main())


_EMFILE_DAEMON = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
from vspc.vspcd.service.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_admin_socket_backs_off_at_the_fd_ceiling_with_one_log_line(tmp_path: Path) -> None:
    # Finding 4: under a low RLIMIT_NOFILE asyncio's own accept loop logged one line
    # per attempt (228,906 lines in 25 s).  The daemon runs in a child with the limit.
    sock_path = tmp_path / "admin.sock"
    child = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_DAEMON, "--proxy-iface", "127.0.0.1", "--proxy-port",
         "0", "--no-vm-ports", "--admin-socket", str(sock_path), "--stdout"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    clients: list[socket.socket] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "ready" in line:
                break
        # Hold more connections than the child has descriptors, for a while.
        for _ in range(80):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(sock_path))
            clients.append(client)
        with suppress(subprocess.TimeoutExpired):
            child.wait(1.5)  # the attack lasts 1.5 s (at least 3 back-off periods)
        for client in clients:
            client.close()
        clients.clear()
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(WAIT)
        probe.connect(str(sock_path))  # the daemon accepts again
        probe.sendall(b'{"cmd":"hello"}\n')
        assert b'"ok":true' in probe.recv(65536)
        probe.close()
    finally:
        for client in clients:
            client.close()
        child.terminate()
        out, _ = child.communicate(timeout=WAIT)
    assert child.returncode == 0, out
    failed = [line for line in out.splitlines() if "accept failed" in line]
    # One line per exhaustion episode (it ends when an accept succeeds), so at most one
    # per back-off period: 1.5 s of attack is 3 periods.  Before: thousands of lines.
    assert 1 <= len(failed) <= 3, out[-3000:]
    assert "out of system resource" not in out


# -- port binding in a crowded range -----------------------------------------------------


def test_ports_held_by_others_are_not_retried_on_every_bind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []
    real = ports.bind_tcp

    def counting(host: str, port: int, **kwargs: int) -> socket.socket:
        attempts.append(port)
        return real(host, port, **kwargs)

    monkeypatch.setattr(ports, "bind_tcp", counting)

    async def body() -> None:
        # Up to 40 ports at the start of the range held by "another process".
        first = socket.socket()
        first.bind(("127.0.0.1", 0))  # the kernel's pick: no race with other processes
        first.listen()
        start = first.getsockname()[1]
        blockers: list[socket.socket] = [first]
        for port in range(start + 1, start + 40):
            blocker = socket.socket()
            try:
                blocker.bind(("127.0.0.1", port))
                blocker.listen()
            except OSError:
                blocker.close()
                continue
            blockers.append(blocker)
        assert blockers and blockers[0].getsockname()[1] == start
        now = [0.0]
        binder = PortBinder(
            "127.0.0.1", start, asyncio.get_running_loop(), retry=30.0, clock=lambda: now[0]
        )
        factory = recorder_factory()[1]
        try:
            for _ in range(20):
                assert binder.bind(factory) is not None
            # Each foreign-held port was tried once, not once per bind.
            assert len(attempts) == len(set(attempts))
            assert attempts[0] == start
            blockers[0].close()  # freed: found again once the retry period is over
            assert binder.bind(factory)[0] != start  # type: ignore[index]
            now[0] = 31.0
            again = binder.bind(factory)
            assert again is not None and again[0] == start
        finally:
            binder.close_all()
            for blocker in blockers:
                blocker.close()

    asyncio.run(body())


def test_ephemeral_overlap_reads_the_kernel_range(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768\t60999\n")
    assert ephemeral_overlap(50000, path) == (32768, 60999)
    assert ephemeral_overlap(20000, path) == (32768, 60999)
    assert ephemeral_overlap(61000, path) is None
    assert ephemeral_overlap(50000, tmp_path / "missing") is None
    # Only the ports vspcd can hold count: start .. start + count - 1 (at most 65535).
    assert ephemeral_overlap(27000, path, count=1024) is None
    assert ephemeral_overlap(32000, path, count=1024) == (32768, 60999)
    assert ephemeral_overlap(27000, path, count=1 << 20) == (32768, 60999)
    assert ephemeral_overlap(61000, path, count=1 << 20) is None


def test_start_warns_when_the_telnet_range_overlaps_the_ephemeral_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if ephemeral_overlap(1024) is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here")
    caplog.set_level(logging.WARNING, logger="vspc")
    low, _high = ephemeral_overlap(1024) or (0, 0)

    async def main() -> None:
        async with running(tmp_path, "-r", str(low)):
            pass

    asyncio.run(main())
    assert messages(caplog, "ip_local_reserved_ports")


def _hold_as_nobody(path: str, count: int, report: int, release: int) -> None:
    """Forked child: become uid 65534, open `count` admin connections, report, wait."""
    try:
        os.setgid(65534)
        os.setuid(65534)
        held = []
        lines = []
        for _ in range(count):
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(WAIT)
            conn.connect(path)
            conn.sendall(b'{"cmd":"hello"}\n')
            lines.append(conn.recv(65536).split(b"\n")[0])
            held.append(conn)
        os.write(report, b"\n".join(lines) + b"\n\n")
        os.read(release, 1)
    except BaseException as exc:  # tell the parent instead of leaving it waiting
        os.write(report, f"child failed: {exc!r}".encode() + b"\n\n")
    finally:
        os._exit(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another uid")
def test_one_unix_uid_cannot_lock_out_root(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="vspc-peruid-"))
    base.chmod(0o755)  # uid 65534 must reach the socket

    async def main() -> None:
        loop = asyncio.get_running_loop()
        args = ("--admin-socket", str(base / "a.sock"), "--admin-socket-mode", "0666")
        async with running(tmp_path, *args, "--admin-per-peer", "3") as (daemon, _events):
            report_r, report_w = os.pipe()
            release_r, release_w = os.pipe()
            path = str(daemon.admin_path)

            def spawn() -> int:
                pid = os.fork()
                if pid == 0:  # the child never returns from here
                    _hold_as_nobody(path, 4, report_w, release_r)
                return pid

            pid = await loop.run_in_executor(None, spawn)
            try:
                data = b""
                while not data.endswith(b"\n\n"):
                    data += await loop.run_in_executor(None, os.read, report_r, 65536)
                replies = data.strip().split(b"\n")
                assert all(b'"ok":true' in line for line in replies[:3]), replies
                assert b'"busy"' in replies[3] and b"from this peer" in replies[3]
                # root (this process) still gets in while uid 65534 holds its share
                reader, writer = await asyncio.open_unix_connection(str(daemon.admin_path))
                assert b'"ok":true' in await ask(reader, writer, b'{"cmd":"hello"}\n')
                writer.close()
            finally:
                os.write(release_w, b"x")
                await loop.run_in_executor(None, os.waitpid, pid, 0)
                for fd in (report_r, report_w, release_r, release_w):
                    os.close(fd)

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- safe text in the daemon log (docs/security.md) ------------------------------------------


def test_peer_controlled_text_in_the_daemon_log_is_inert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vspc.vspcd.faces.admin")
    evil = "evil\x1b]0;pwned\x07\nFAKE-ROW"

    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.proxy_port is not None
            vm_end = await FakeEsxi.connect(daemon.proxy_port, uuid=UUID_A, name=evil)
            await events.wait("vm_connected")
            reader, writer = await asyncio.open_unix_connection(str(daemon.admin_path))
            hello = b'{"cmd":"hello","client":"x\\u001b[2Jy"}\n'
            assert b'"ok":true' in await ask(reader, writer, hello)
            clear = b'{"cmd":"clear","vm":"%s","reason":"a\\nb"}\n' % UUID_A.encode()
            assert b'"ok":true' in await ask(reader, writer, clear)
            writer.close()
            await vm_end.close()

    asyncio.run(main())
    admin_lines = [r.getMessage() for r in caplog.records if r.name == "vspc.vspcd.faces.admin"]
    assert any("x\\x1b[2Jy" in line for line in admin_lines), admin_lines
    cleared = [line for line in admin_lines if "cleared" in line]
    assert cleared and "evil\\x1b]0;pwned\\x07\\nFAKE-ROW" in cleared[0] and "a\\nb" in cleared[0]
    for line in admin_lines:
        assert "\x1b" not in line and "\n" not in line and "\x07" not in line
