"""A real `telnet` client under tmux against vspcd started by its real entry point.

`python -m vspc.vspcd` runs as a subprocess; a fake ESXi host (common/esxi.py) feeds
it over loopback; netkit telnet, inside tmux, is the operator.  Keys go in with
`tmux send-keys`, the screen comes back with `capture-pane`.  Skipped where telnet or
tmux is missing (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemonproc import free_port, start_vspcd
from tests.vspcd.harness import FakeEsxi

pytestmark = pytest.mark.skipif(
    shutil.which("telnet") is None or shutil.which("tmux") is None,
    reason="needs the telnet and tmux programs (apt-get install telnet tmux)",
)


def _wait_for(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling an external program's screen; there is no event
    raise AssertionError(f"timed out waiting for {what}")


def _admin(path: Path, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
    reply: dict[str, object] = json.loads(buf)
    return reply


@contextlib.contextmanager
def _vspcd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    sock = tmp_path / "admin.sock"
    daemon = start_vspcd(
        ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "-i", "127.0.0.1",
         "-r", str(free_port()), "--admin-socket", str(sock)],
        tmp_path / "vspcd.log",
    )  # fmt: skip
    assert daemon.proxy_port is not None
    try:
        yield daemon.proxy_port, sock
    finally:
        status = daemon.stop()
        daemon.close()
        assert status == 0, daemon.log()


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def test_telnet_operator_in_tmux(tmp_path: Path) -> None:
    session = f"vspc-test-{os.getpid()}"
    with _vspcd(tmp_path) as (proxy_port, admin):

        async def scenario() -> None:
            vm = await FakeEsxi.connect(proxy_port, name="db01")
            loop = asyncio.get_running_loop()

            def listed() -> bool:
                reply = _admin(admin, {"cmd": "list"})
                return bool(reply.get("vms"))

            await loop.run_in_executor(None, _wait_for, listed, "the console in list")
            reply = _admin(admin, {"cmd": "list"})
            rows = reply.get("vms")
            assert isinstance(rows, list)
            port = rows[0]["port"]
            _tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "20",
                  f"telnet 127.0.0.1 {port}")  # fmt: skip
            try:

                def attached() -> bool:
                    reply = _admin(admin, {"cmd": "list"})
                    rows = reply.get("vms")
                    return isinstance(rows, list) and rows[0]["clients"] == 1

                await loop.run_in_executor(None, _wait_for, attached, "telnet to attach")
                vm.send(b"db01 login: ")

                def shown() -> bool:
                    return "db01 login:" in _tmux("capture-pane", "-p", "-t", session)

                await loop.run_in_executor(None, _wait_for, shown, "the prompt on screen")
                _tmux("send-keys", "-t", session, "root", "Enter")
                await vm.input.expect(b"root\r")
                # Enter arrives as CR (CR LF or CR NUL from telnet's NVT), never LF alone.
                assert not vm.input.data.startswith(b"\n")
                vm.send(b"\r\nPassword: ")
                await loop.run_in_executor(
                    None,
                    _wait_for,
                    lambda: "Password:" in _tmux("capture-pane", "-p", "-t", session),
                    "the password prompt",
                )
            finally:
                # A quick local command; nothing else on this loop needs to run meanwhile.
                subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)  # noqa: ASYNC221
            await vm.close()

        asyncio.run(scenario())
