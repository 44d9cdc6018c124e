"""`--event-loop auto|asyncio|uvloop` (vspcd/service/eventloop.py).

The choice itself in process; then the real daemon (`python -m vspc.vspcd`) on each
loop through its real entry point: a VM identifies, an operator attaches, a vMotion
moves the console, and typed bytes reach the new connection.  The uvloop run skips,
saying why, where uvloop is not installed (CI installs `.[test]`, which leaves it out:
the stdlib loop is the one every other test runs on, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import selectors
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import free_port, start_vspcd
from tests.vspcd.harness import UUID_A, FakeEsxi, Operator
from vspc.common import esxi
from vspc.vspcd.service import eventloop
from vspc.vspcd.service.config import parse_args

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
NO_UVLOOP = "uvloop is not installed (optional extra: pip install 'vspc[uvloop]')"
TIMEOUT = 10.0


def test_asyncio_is_the_stdlib_epoll_loop() -> None:
    choice = eventloop.choose("asyncio")
    loop = choice.factory()
    try:
        assert choice.name == "asyncio"
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, selectors.EpollSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_auto_without_uvloop_is_the_stdlib_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.choose("auto", {}).name == "asyncio"


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    with pytest.raises(
        ValueError, match=r"uvloop is not installed \(pip install 'vspc\[uvloop\]'\)"
    ):
        eventloop.choose("uvloop")
    assert eventloop.choose("auto", {}).name == "asyncio"  # auto falls back instead
    with pytest.raises(ValueError, match="unknown event loop"):
        eventloop.choose("trio")


def test_flag_and_its_default(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    base = ["--no-vm-ports", "--admin-socket", "/tmp/x.sock"]
    assert parse_args(base, {}).event_loop == "auto"
    assert parse_args([*base, "--event-loop", "asyncio"], {}).event_loop == "asyncio"
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    with pytest.raises(SystemExit) as exited:
        parse_args([*base, "--event-loop", "uvloop"], {})
    assert exited.value.code == 2
    assert "pip install 'vspc[uvloop]'" in capsys.readouterr().err


def test_the_environment_pins_what_auto_means(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: True)
    assert eventloop.choose("auto", {"VSPCD_EVENT_LOOP": "asyncio"}).name == "asyncio"
    # An explicit choice wins over the variable.
    assert eventloop.choose("asyncio", {"VSPCD_EVENT_LOOP": "uvloop"}).name == "asyncio"
    with pytest.raises(ValueError, match="VSPCD_EVENT_LOOP='fast'"):
        eventloop.choose("auto", {"VSPCD_EVENT_LOOP": "fast"})


# -- the real daemon on each loop --------------------------------------------------------


def admin(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "admin connection closed"
            buf += chunk
    reply: dict[str, Any] = json.loads(buf[: buf.index(b"\n")])
    assert reply.get("ok"), reply
    return reply


@pytest.mark.parametrize(
    "loop_name",
    [
        "asyncio",
        pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)),
    ],
)
def test_real_daemon_serves_a_vmotion_on(loop_name: str, tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    daemon = start_vspcd(
        ["--event-loop", loop_name]
        + ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "-i", "127.0.0.1"]
        + ["-r", str(free_port()), "--admin-socket", str(path)],
        tmp_path / "vspcd.log",
    )
    try:
        assert daemon.proxy_port is not None
        asyncio.run(vmotion_with_an_operator(daemon.proxy_port, path))
    finally:
        daemon.stop()
        daemon.close()
    err = daemon.log()
    assert f"event loop: {loop_name}" in err
    assert "vMotion complete" in err
    assert daemon.proc.returncode == 0, err


async def vmotion_with_an_operator(port: int, path: Path) -> None:
    source = await FakeEsxi.connect(port, UUID_A, "loop-vm")
    row: dict[str, Any] = {}
    async with asyncio.timeout(TIMEOUT):
        while not row.get("connected"):
            rows = (await asyncio.to_thread(admin, path, {"cmd": "list"}))["vms"]
            row = next((r for r in rows if r["key"] == UUID_A), {})
    operator = await Operator.connect(row["port"])
    # Its option offers are written in the same callback that attaches it: from then
    # on console output reaches it live.
    await operator.wire.expect(b"\xff")
    source.send(b"before\r\n")
    await operator.output.expect(b"before\r\n")
    sequence = b"\x00\x00\x00\x01"
    cookie = await source.begin(sequence)
    dest = await FakeEsxi.connect(port, UUID_A, "loop-vm", cookie=cookie)
    await dest.wait_for(esxi.PeerOk)
    dest.complete(sequence)
    await source.close()
    operator.type(b"typed after")
    await dest.input.expect(b"typed after")
    dest.send(b"after\r\n")
    await operator.output.expect(b"after\r\n")
    shown = (await asyncio.to_thread(admin, path, {"cmd": "show", "vm": UUID_A}))["console"]
    assert shown["counters"]["vmotions"] == 1
    await dest.close()
