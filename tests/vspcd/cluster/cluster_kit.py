"""Cluster test kit: a real redis-server and real vspcd processes on loopback.

Each test starts its own `redis-server` (a free loopback port, a temporary directory,
no persistence) and up to three `python -m vspc.vspcd --cluster ...` nodes, so a
node can be killed with SIGKILL like a crashed machine.  Waits are on conditions read
through the admin socket (`until`), with timeouts; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.harness import free_port

REDIS_SERVER = shutil.which("redis-server")
LEASE = 2.0  # seconds: a dead node's consoles move after about this
TIMEOUT = 15.0

try:
    import redis  # noqa: F401

    HAVE_CLIENT = True
except ImportError:
    HAVE_CLIENT = False

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or not HAVE_CLIENT,
    reason="cluster tests need redis-server (apt-get install redis-server) and the redis "
    "client (pip install 'vspc[cluster]'); .ci/run installs both",
)


class RedisServer:
    """One throw-away redis-server on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.spawn()
        await until(self._answers, "redis-server answers")

    def spawn(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.write(b"PING\r\n")
        line = await reader.readline()
        writer.close()
        return line.startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Node:
    """One vspcd process of the cluster."""

    def __init__(self, name: str, tmp: Path, redis: RedisServer, range_start: int) -> None:
        self.name = name
        self.tmp = tmp
        self.redis = redis
        self.proxy_port = free_port()
        self.link_port = free_port()
        self.range_start = range_start
        self.admin_socket = tmp / f"{name}.sock"
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: tuple[str, ...] = ()

    def start(self, *extra: str) -> None:
        self.extra = extra
        secret = self.tmp / "secret"
        if not secret.exists():
            secret.write_bytes(b"correct horse battery staple\n")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vspc.vspcd",
                 "--cluster", self.redis.url, "--node-id", self.name,
                 "--node-address", f"127.0.0.1:{self.link_port}",
                 "--cluster-secret-file", str(secret), "--cluster-lease", str(LEASE),
                 "--proxy-iface", "127.0.0.1", "--proxy-port", str(self.proxy_port),
                 "-i", "127.0.0.1", "-r", str(self.range_start),
                 "--admin-socket", str(self.admin_socket), "--no-notices", "-d", *extra],
                stderr=log,
            )  # fmt: skip

    async def ready(self) -> None:
        retries = 3

        async def up() -> bool:
            nonlocal retries
            if self.proc is not None and self.proc.poll() is not None and retries:
                # A port picked as free was taken meanwhile (a busy machine): new ones.
                # EADDRINUSE, however it is spelt (os.strerror's "Address already in
                # use", asyncio's and vspcd's "address already in use").
                assert os.strerror(errno.EADDRINUSE).lower() in self.text().lower(), self.text()
                retries -= 1
                self.proxy_port, self.link_port = free_port(), free_port()
                self.start(*self.extra)
                return False
            if not self.admin_socket.exists():
                return False
            try:
                rows = await self.list()
            except OSError:
                return False
            return isinstance(rows, list) and f"cluster node {self.name}: registry" in self.text()

        await until(up, f"node {self.name} is up")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: the machine is gone, no goodbye to anyone."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            with _suppress():
                os.unlink(self.admin_socket)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    async def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
        try:
            writer.write(json.dumps({"cmd": cmd, "id": 1, **fields}).encode() + b"\n")
            async with asyncio.timeout(TIMEOUT):
                while True:
                    line = await reader.readline()
                    if not line:
                        raise OSError("admin connection closed")
                    message: dict[str, Any] = json.loads(line)
                    if "ok" in message:
                        return message
        finally:
            writer.close()

    async def list(self) -> list[dict[str, Any]]:
        reply = await self.request("list")
        assert reply["ok"], reply
        rows: list[dict[str, Any]] = reply["vms"]
        return rows

    async def row(self, key: str) -> dict[str, Any] | None:
        for row in await self.list():
            if row["key"] == key:
                return row
        return None


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Re-check `condition` until it holds; fail naming `what` after TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


RANGE_SPAN = 32  # ports one test may use
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def telnet_range(seed: int) -> int:
    """The first of RANGE_SPAN free telnet ports for one cluster.

    Preferably above the kernel's ephemeral range (read from /proc, 32768-60999 by
    default), where no outgoing connection holds a port, and away from where
    benchmarks put their thousands of consoles (bench/daemon_bench.py: just below the
    ephemeral range): such a benchmark running beside the tests once held the ports a
    cluster test was handed out.  Each candidate block is checked free by binding it;
    the product copes with a busy port (it offers another), but the tests assert that
    a console keeps its port across a take-over, which needs a port nobody else takes
    meanwhile.  When nothing is free up there (many suites at once, or a range that
    reaches 65535) the blocks start at ports the kernel hands out, so a busy machine
    slows the search down but never fails it.
    """
    try:
        high = int(EPHEMERAL_RANGE.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        high = 60999
    low = high + 1
    slots = max(0, (65536 - low) // RANGE_SPAN)
    for step in range(slots):
        start = low + ((seed + step) % slots) * RANGE_SPAN
        if all(_bindable(port) for port in range(start, start + RANGE_SPAN)):
            return start
    for _ in range(1000):
        start = free_port()
        if start + RANGE_SPAN <= 65536 and all(
            _bindable(port) for port in range(start, start + RANGE_SPAN)
        ):
            return start
    raise AssertionError(f"no {RANGE_SPAN} consecutive free ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    """redis-server + named nodes, torn down in `close`."""

    made = 0

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp)
        # A fresh telnet range per cluster: a stopped node's ports may linger a moment.
        Cluster.made += 1
        self.range_start = telnet_range(os.getpid() * 37 + Cluster.made * 64)
        self.nodes: dict[str, Node] = {}

    async def start(self, *names: str, extra: tuple[str, ...] = ()) -> None:
        await self.redis.start()
        for name in names:
            node = Node(name, self.tmp, self.redis, self.range_start)
            self.nodes[name] = node
            node.start(*extra)
        await asyncio.gather(*(node.ready() for node in self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.redis.stop()

    def logs(self) -> str:
        """Every node's whole log (printed when a test fails: pytest shows it, and CI
        keeps it).  Set VSPC_CLUSTER_LOGS=DIR to also copy the logs there."""
        keep = os.environ.get("VSPC_CLUSTER_LOGS")
        if keep:
            target = Path(keep) / self.tmp.name
            target.mkdir(parents=True, exist_ok=True)
            for n in self.nodes.values():
                with _suppress():
                    shutil.copy(n.log, target / n.log.name)
        return "\n".join(f"== {n.name}\n{n.text()}" for n in self.nodes.values())
