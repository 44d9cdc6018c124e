"""`vspc proxy VM` against a real vspcd (docs/vspc.md): a binary-clean pipe, and gdb
debugging a guest through it.

The proxy runs as a subprocess with plain pipes, as gdb and socat run it.  On the VM
side the fake ESXi host of tests/vspcd/harness.py either records what it gets or runs
a minimal GDB remote-protocol stub (tests/vspctui/gdbstub.py).  Waits are on bytes
arriving and on hub events, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.vspcd.harness import UUID_A, FakeEsxi, identified
from tests.vspctui.gdbstub import EIP, RspStub
from tests.vspctui.ptyclient import client_env
from tests.vspctui.realdaemon import TIMEOUT, RealDaemon, attached_id
from vspc.vspctui.cmdtable import ExitCode

# Every byte value, and the sequences a telnet or tty layer likes to rewrite: IAC
# (0xff) alone and doubled, CR LF, CR NUL, a lone CR, a lone LF, NUL, ^C, ^] and ^D.
AWKWARD = bytes(range(256)) + b"\xff\xff\r\n\r\x00\r\n\x00\x03\x1d\x04\xff"


def proxy_command(real: RealDaemon, *args: str) -> list[str]:
    return [sys.executable, "-m", "vspc.vspctui.shell.cli", "--socket", real.path, "proxy", *args]


class Piped:
    """`vspc proxy` on pipes; `expect` reads stdout until it holds a pattern."""

    def __init__(self, real: RealDaemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            proxy_command(real, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(),
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        self.output = b""
        self.eof = False

    def expect_length(self, length: int) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while len(self.output) < length and not self.eof:
            ready, _, _ = select.select([self._out], [], [], deadline - time.monotonic())
            if not ready:
                raise AssertionError(f"only {len(self.output)} of {length} bytes came")
            chunk = os.read(self._out, 65536)
            self.eof = not chunk
            self.output += chunk
        return self.output

    def finish(self) -> tuple[int, bytes, bytes]:
        """Close stdin (detach); exit status, all of stdout, stderr."""
        if not self.stdin.closed:
            self.stdin.close()
        self.expect_length(1 << 30)  # up to EOF
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=TIMEOUT), self.output, err


@pytest.fixture
def piped(real: RealDaemon) -> Iterator[list[Piped]]:
    started: list[Piped] = []
    yield started
    for proxy in started:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
        proxy.proc.wait()
        for stream in (proxy.proc.stdin, proxy.proc.stdout, proxy.proc.stderr):
            if stream is not None:
                stream.close()


def test_proxy_is_binary_clean_both_ways(real: RealDaemon, piped: list[Piped]) -> None:
    proxy = Piped(real, "db01")
    piped.append(proxy)
    attached_id(real, "attach")
    # In: every byte reaches the VM exactly (vspcd doubles 0xff on the telnet wire and
    # the VM's telnet layer undoes it; nothing else is touched).
    proxy.stdin.write(AWKWARD)
    proxy.stdin.flush()
    assert real.vm_received(AWKWARD) == AWKWARD
    # Out: what the VM sends arrives exactly, and nothing else (no replay by default,
    # no banner: stdout is the console's bytes only).
    real.vm_prints(AWKWARD)
    assert proxy.expect_length(len(AWKWARD)) == AWKWARD
    status, out, err = proxy.finish()
    assert (status, out) == (ExitCode.OK, AWKWARD)
    assert err == b""
    real.event("client_detached")  # stdin's end was the detach


def test_proxy_takes_the_lock_options(real: RealDaemon, piped: list[Piped]) -> None:
    holder = Piped(real, "--lock", "exclusive", "db01")
    piped.append(holder)
    attached_id(real, "attach")
    second = subprocess.run(
        proxy_command(real, "db01"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=client_env(),
        timeout=TIMEOUT,
    )
    assert second.returncode == ExitCode.REFUSED
    assert second.stdout == b"" and second.stderr.rstrip().endswith(b"[lock_failed]")
    holder.stdin.write(b"mine\r")
    holder.stdin.flush()
    assert real.vm_received(b"mine\r") == b"mine\r"
    assert holder.finish()[0] == ExitCode.OK


def test_proxy_replays_on_request_and_reports_a_clear(real: RealDaemon, piped: list[Piped]) -> None:
    proxy = Piped(real, "--replay", "64", "db01")
    piped.append(proxy)
    assert proxy.expect_length(len(b"login: ")) == b"login: "
    attached_id(real, "attach")
    assert real.cli("clear", "db01") == ExitCode.OK
    proxy.expect_length(1 << 30)  # to EOF, i.e. the proxy has exited, before stdin ends
    status, out, err = proxy.finish()
    assert status == ExitCode.DETACHED
    assert out.startswith(b"login: ") and b"[vspcd: disconnected by" in out
    assert err.endswith(b"db01: connection closed by vspcd\n")


def test_gdb_debugs_a_guest_through_vspc_proxy(real: RealDaemon) -> None:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed (apt-get install gdb; .ci/run does)")
    stub = RspStub()
    vm = real.vm

    async def serve() -> None:
        seen = len(vm.input.data)
        while True:
            try:
                data = await vm.input.length(seen + 1)
            except TimeoutError:  # gdb is slow to start on a busy machine: keep serving
                continue
            reply = stub.receive(data[seen:])
            seen = len(data)
            if reply:
                vm.send(reply)

    holder: list[asyncio.Task[None]] = real.call(lambda: [asyncio.create_task(serve())])
    try:
        proxy = shlex.join(proxy_command(real, "db01"))
        done = subprocess.run(
            [gdb, "-nx", "-batch",
             "-ex", "set architecture i386",
             "-ex", f"target remote | {proxy}",
             "-ex", "info registers eip",
             "-ex", "x/2xb $eip",
             "-ex", "detach"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=client_env(),
            timeout=60,
        )  # fmt: skip
    finally:
        real.call(holder[0].cancel)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, (out, done.stderr)
    assert f"{EIP:#x}" in out.split("eip", 1)[1].split("\n", 1)[0]
    assert f"{EIP:#x}:\t0x00\t0x00" in out  # memory read through the pipe too
    assert stub.detached and stub.bad_checksums == 0
    assert b"g" in stub.packets
    real.event("client_detached")  # gdb's end of the pipe closed: proxy detached


def test_raw_target_remote_to_a_telnet_port_cannot_pass_0xff(real: RealDaemon) -> None:
    """What docs/vspc.md says of `target remote HOST:PORT` on a console's telnet port:
    vspcd speaks telnet there, so its negotiation arrives first and a 0xff the VM sends
    arrives doubled -- fine for RSP's ASCII packets, wrong for binary data."""
    with socket.create_connection(("127.0.0.1", real.port), timeout=TIMEOUT) as sock:
        attached_id(real, "telnet")
        real.vm_prints(b"bin\xffary")
        got = b""
        while b"ary" not in got:
            chunk = sock.recv(4096)
            assert chunk
            got += chunk
    assert got.startswith(b"\xff")  # IAC: telnet negotiation before any console byte
    assert b"bin\xff\xffary" in got


def test_proxy_carries_no_status_lines_while_the_vm_comes_and_goes(
    real: RealDaemon, piped: list[Piped]
) -> None:
    """`vspc proxy` attaches `quiet`: the VM leaving and coming back, which a telnet
    operator is told about in `[vspcd: ...]` lines, puts nothing into gdb's stream."""
    proxy = Piped(real, "db01")
    piped.append(proxy)
    attached_id(real, "attach")
    watcher = real.telnet()  # a normal client of the same console, for contrast

    async def vm_leaves_and_returns() -> None:
        await real.vm.close()
        await real.events.wait("vm_disconnected")
        real.vm = await FakeEsxi.connect(real.daemon.proxy_port, UUID_A, "db01")
        await identified(real.events, UUID_A, count=2)

    real.call(vm_leaves_and_returns)
    real.vm_prints(b"$OK#9a")
    assert proxy.expect_length(len(b"$OK#9a")) == b"$OK#9a"
    real.call(lambda: watcher.output.expect(b"$OK#9a"))
    told = bytes(watcher.output.data)
    assert b"[vspcd: VM db01 disconnected" in told and b"[vspcd: VM db01 connected" in told
    real.call(watcher.close)
    status, out, err = proxy.finish()
    assert (status, out, err) == (ExitCode.OK, b"$OK#9a", b"")
