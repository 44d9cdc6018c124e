"""Cluster mode end to end: real redis-server, three vspcd processes on loopback.

Issue #13's scenarios: cross-node vMotion in both FIN/COMPLETE orders with a typing
client (bytes compared exactly); ABORT, NOTNOW and abandon across nodes; list, show
and clear through a node that does not own the console; kill -9 of a node and the
take-over of its console (name and port kept); a Redis restart mid-run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.cluster_kit import Cluster, Node, needs_redis, until
from tests.vspcd.harness import UUID_A, FakeEsxi, Operator
from vspc.common import esxi

pytestmark = needs_redis

SEQ = bytes.fromhex("7619ffe9")  # contains 0xff: escaping on both links


def run(tmp_path: Path, body: Callable[[Cluster], Awaitable[None]], *nodes: str, **kw: Any) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        try:
            await cluster.start(*nodes, **kw)
            await body(cluster)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.close()

    asyncio.run(main())


async def connected(node: Node, key: str, owner: str) -> dict[str, Any]:
    """Wait until `node` lists `key` as connected and served by `owner`."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        row = await node.row(key)
        if row is not None and row["connected"] and row.get("node") == owner:
            found.update(row)
            return True
        return False

    await until(check, f"{node.name} lists {key} connected on {owner}")
    return found


async def attached(node: Node, key: str, clients: int = 1) -> None:
    async def check() -> bool:
        row = await node.row(key)
        return row is not None and row["clients"] == clients

    await until(check, f"{key} has {clients} client(s)")


@pytest.mark.parametrize("fin_first", [True, False], ids=["fin-first", "complete-first"])
def test_cross_node_vmotion_with_typing(tmp_path: Path, fin_first: bool) -> None:
    """The destination lands on another node; typed bytes arrive once, in order."""

    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        src = await FakeEsxi.connect(a.proxy_port, name="web01")
        row = await connected(c, UUID_A, "a")  # c sees a's console
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        src.send(b"before ")
        await op.output.expect(b"before ")
        cookie = await src.begin(SEQ)
        op.type(b"<1>\r")
        op.type(b"<2>\r")
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie, name="web01")
        await dst.wait_for(esxi.PeerOk)
        if fin_first:
            await src.close()
            dst.complete(SEQ)
        else:
            dst.complete(SEQ)
            await dst.input.expect(b"<1>\r<2>\r")
            await src.close()
        await dst.input.expect(b"<1>\r<2>\r")
        dst.send(b"after")
        await op.output.expect(b"after")
        assert bytes(op.output.data).endswith(b"before after")
        assert b"<1>" not in src.input.data
        op.type(b"live\r")
        await dst.input.expect(b"live\r")
        assert bytes(dst.input.data) == b"<1>\r<2>\rlive\r"
        # Ownership stays with a (it relays); the port never changed.
        after = await connected(b, UUID_A, "a")
        assert after["port"] == row["port"] and after["vm_name"] == "web01"
        assert after["vmotion"] == "normal"
        await op.close()
        await dst.close()

    run(tmp_path, body, "a", "b", "c")


def test_cross_node_abort_and_notnow(tmp_path: Path) -> None:
    """ABORT after a destination PEERed on another node: the hold goes back to the
    source, the destination is closed; then NOTNOW; then a vMotion that works."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        src = await FakeEsxi.connect(a.proxy_port)
        row = await connected(a, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        cookie = await src.begin(SEQ)
        op.type(b"held\r")
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        await dst.wait_for(esxi.PeerOk)
        src.abort()
        await src.input.expect(b"held\r")
        await dst.input.closed.wait()  # the relayed destination is closed
        assert bytes(dst.input.data) == b""
        # A stale cookie on another node gets no PEER-OK (F5) and changes nothing.
        stale = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        op.type(b"x")
        await src.input.expect(b"held\rx")
        assert not any(isinstance(e, esxi.PeerOk) for e in stale.events)
        await stale.close()
        # F9 across nodes: a second BEGIN replaces the first; its cookie dies.
        cookie2 = await src.begin(SEQ)
        cookie3 = await src.begin(SEQ)  # F9: the first is implicitly aborted
        assert cookie2 != cookie3
        old = await FakeEsxi.connect(b.proxy_port, cookie=cookie2)
        dst2 = await FakeEsxi.connect(b.proxy_port, cookie=cookie3)
        await dst2.wait_for(esxi.PeerOk)
        assert not any(isinstance(e, esxi.PeerOk) for e in old.events)
        # NOTNOW through the relay: a BEGIN on the PEERed (not active) destination.
        dst2.session.begin(b"\x01\x02\x03\x04")
        dst2._flush()
        await dst2.wait_for(esxi.NotNow)
        dst2.complete(SEQ)
        op.type(b"moved\r")
        await dst2.input.expect(b"moved\r")
        await src.close()
        await old.close()
        await dst2.close()
        await op.close()

    run(tmp_path, body, "a", "b")


def test_cross_node_abandon(tmp_path: Path) -> None:
    """F8 across nodes: the source leaves, the relayed destination never completes;
    the owner abandons, closes it, keeps the port and the held input."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        src = await FakeEsxi.connect(a.proxy_port)
        row = await connected(a, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        cookie = await src.begin(SEQ)
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        await dst.wait_for(esxi.PeerOk)
        op.type(b"kept\r")
        await src.close()
        await dst.input.closed.wait()  # abandoned after --vmotion-abandon
        again = await FakeEsxi.connect(b.proxy_port)  # the VM comes back, via b
        await again.input.expect(b"kept\r")
        back = await connected(b, UUID_A, "a")
        assert back["port"] == row["port"]
        await again.close()
        await op.close()

    run(tmp_path, body, "a", "b", extra=("--vmotion-abandon", "0.5"))


def test_any_node_answers_list_show_clear(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        vms = [
            await FakeEsxi.connect(a.proxy_port, uuid=UUID_A, name="alpha"),
            await FakeEsxi.connect(b.proxy_port, uuid="11" * 16, name="beta"),
        ]
        await connected(c, UUID_A, "a")
        row = await connected(c, "11" * 16, "b")
        names = {(r["vm_name"], r["node"]) for r in await c.list()}
        assert names == {("alpha", "a"), ("beta", "b")}
        shown = await c.request("show", vm="beta")
        assert shown["ok"] and shown["console"]["vm_name"] == "beta", shown
        op = await Operator.connect(row["port"])
        await attached(c, "11" * 16)
        cleared = await c.request("clear", vm="beta", reason="maintenance")
        assert cleared["ok"] and cleared["cleared"] == 1, cleared
        await op.closed()
        missing = await c.request("show", vm="nosuchvm")
        assert missing["ok"] is False and missing["error"]["code"] == "vm_not_found"
        for vm in vms:
            await vm.close()

    run(tmp_path, body, "a", "b", "c")


def test_node_kill_takeover_keeps_name_and_port(tmp_path: Path) -> None:
    """kill -9 of a node: the VM reconnects to another node, which takes the console
    over once the dead node's lease expired; a console on a surviving node sees
    nothing."""

    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        doomed = await FakeEsxi.connect(a.proxy_port, uuid=UUID_A, name="doomed")
        safe = await FakeEsxi.connect(c.proxy_port, uuid="22" * 16, name="safe")
        row = await connected(b, UUID_A, "a")
        safe_row = await connected(b, "22" * 16, "c")
        watcher = await Operator.connect(safe_row["port"])
        await attached(c, "22" * 16)
        a.kill()
        await doomed.input.closed.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        back = await FakeEsxi.connect(b.proxy_port, uuid=UUID_A, name="doomed")
        moved = await connected(c, UUID_A, "b")
        print(f"take-over after {loop.time() - killed:.2f} s")
        assert moved["port"] == row["port"] and moved["vm_name"] == "doomed"
        op = await Operator.connect(moved["port"])
        await attached(b, UUID_A)
        back.send(b"alive")
        await op.output.expect(b"alive")
        safe.send(b"undisturbed")
        await watcher.output.expect(b"undisturbed")
        assert not watcher.output.closed.is_set()
        for conn in (back, safe):
            await conn.close()
        await op.close()
        await watcher.close()

    run(tmp_path, body, "a", "b", "c")


def test_redis_restart_mid_run(tmp_path: Path) -> None:
    """Redis goes away: consoles keep working, a new console is refused (the VM is
    closed and retries), nothing crashes; Redis comes back empty: the nodes
    republish what they serve and a cross-node vMotion works again."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        src = await FakeEsxi.connect(a.proxy_port)
        row = await connected(b, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        cluster.redis.stop()
        src.send(b"still here")
        await op.output.expect(b"still here")
        op.type(b"typed\r")
        await src.input.expect(b"typed\r")
        newcomer = await FakeEsxi.connect(a.proxy_port, uuid="33" * 16)
        await newcomer.input.closed.wait()  # refused: the registry is needed
        reply = await a.request("list")
        assert reply["ok"] and "cluster_error" in reply, reply
        await cluster.redis.start()
        await until(lambda: _published(b, UUID_A), "a republished its console")
        cookie = await src.begin(SEQ)
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        await dst.wait_for(esxi.PeerOk)
        dst.complete(SEQ)
        op.type(b"after\r")
        await dst.input.expect(b"after\r")
        for vm in (src, dst):
            await vm.close()
        await op.close()
        assert a.proc is not None and a.proc.poll() is None
        assert b.proc is not None and b.proc.poll() is None

    run(tmp_path, body, "a", "b")


async def _published(node: Node, key: str) -> bool:
    reply = await node.request("list")
    if not reply["ok"] or "cluster_error" in reply:
        return False
    return any(r["key"] == key and r.get("node") == "a" for r in reply["vms"])
