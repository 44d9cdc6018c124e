"""Every listener of the real daemon on each event loop (vspcd/net/accept.py).

`python -m vspc.vspcd --event-loop asyncio|uvloop` with every listener open: the
proxy port (a plain VM and a TLS one), a console's telnet port (an operator), the
admin Unix socket and admin TCP port (`hello`), and the HTTP listener (`/metrics`,
`/healthz`).  The daemon uses public asyncio API only, so both loops must serve all
of them; the uvloop run skips, saying why, where uvloop is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemonproc import free_port, start_vspcd
from tests.vspcd.harness import UUID_A, UUID_B, FakeEsxi, Operator

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
TIMEOUT = 10.0
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
    ),
]


def _request(sock: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
    sock.settimeout(TIMEOUT)
    sock.sendall(json.dumps(request).encode() + b"\n")
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "admin connection closed"
        buf += chunk
    reply: dict[str, Any] = json.loads(buf[: buf.index(b"\n")])
    assert reply.get("ok"), reply
    return reply


def admin_unix(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        return _request(sock, request)


def admin_tcp(port: int, request: dict[str, Any]) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        return _request(sock, request)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def console_row(path: Path, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    async with asyncio.timeout(TIMEOUT):
        while not row.get("connected"):
            rows = (await asyncio.to_thread(admin_unix, path, {"cmd": "list"}))["vms"]
            row = next((r for r in rows if r["key"] == key), {})
    return row


async def exercise(proxy: int, admin_port: int, http: int, path: Path) -> None:
    plain = await FakeEsxi.connect(proxy, UUID_A, "plain-vm")
    secure = await FakeEsxi.connect(proxy, UUID_B, "tls-vm", tls=True)
    row = await console_row(path, UUID_A)
    await console_row(path, UUID_B)
    operator = await Operator.connect(row["port"])
    await operator.wire.expect(b"\xff")  # the console port's telnet offers
    plain.send(b"hello operator\r\n")
    await operator.output.expect(b"hello operator\r\n")
    operator.type(b"typed")
    await plain.input.expect(b"typed")
    assert (await asyncio.to_thread(admin_tcp, admin_port, {"cmd": "hello", "client": "t"}))["ok"]
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/metrics")
    assert status == 200 and "vspcd_" in body
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{http}/healthz")
    assert status == 200, body
    await operator.close()
    await secure.close()
    await plain.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_every_listener_serves_on(
    loop_name: str, tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    path = tmp_path / "admin.sock"
    cert, key = cert_pair
    daemon = start_vspcd(
        ["--event-loop", loop_name]
        + ["--proxy-iface", "127.0.0.1", "--proxy-port", "0", "-i", "127.0.0.1"]
        + ["-r", str(free_port()), "--admin-socket", str(path)]
        + ["--ssl", "--cert", str(cert), "--key", str(key)]
        + ["--admin-port", "0", "--http", "0", "--metrics"],
        tmp_path / "vspcd.log",
    )
    try:
        proxy, admin_port, http = daemon.proxy_port, daemon.admin_port, daemon.http_port
        assert proxy is not None and admin_port is not None and http is not None, daemon.log()
        asyncio.run(exercise(proxy, admin_port, http, path))
    finally:
        daemon.stop()
        daemon.close()
    err = daemon.log()
    assert f"event loop: {loop_name}" in err
    assert "Traceback" not in err and "AssertionError" not in err, err
    assert daemon.proc.returncode == 0, err
