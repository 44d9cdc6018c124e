"""Cluster mode end to end: real redis-server, three vspcd processes on loopback.

Issue #13's scenarios: cross-node vMotion in both FIN/COMPLETE orders with a typing
client (bytes compared exactly); ABORT, NOTNOW and abandon across nodes; list, show
and clear through a node that does not own the console; kill -9 of a node and the
take-over of its console (name and port kept); a Redis restart mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vspcd.cluster.cluster_kit import Cluster, Node, needs_redis, until
from tests.vspcd.harness import UUID_A, FakeEsxi, Operator
from tests.vspctui.dashboard.test_tui_app import HeadlessScreen
from tests.vspctui.dashboard.test_tui_app import until as tui_until
from vspc.common import esxi, vmware
from vspc.common.admin import ConsoleInfo
from vspc.common.peerlink import NONCE, PeerLinkCodec, RemoteProtocolError, Side
from vspc.vspctui.client import AdminAddress
from vspc.vspctui.dashboard.app import App

pytestmark = needs_redis

SEQ = bytes.fromhex("7619ffe9")  # contains 0xff: escaping on both links


def run(
    tmp_path: Path,
    body: Callable[[Cluster], Awaitable[None]],
    *nodes: str,
    prepare: Callable[[Cluster], None] | None = None,
    **kw: Any,
) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path)
        try:
            if prepare is not None:
                prepare(cluster)
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


def test_any_node_answers_list_show_clear_kick(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        vms = [
            await FakeEsxi.connect(a.proxy_port, uuid=UUID_A, name="alpha"),
            await FakeEsxi.connect(b.proxy_port, uuid="11" * 16, name="beta"),
        ]
        await connected(c, UUID_A, "a")
        row = await connected(c, "11" * 16, "b")
        for r in await c.list():  # what vspc and vspc-tui parse rows with
            assert ConsoleInfo.from_json(r).key == r["key"]
        names = {(r["vm_name"], r["node"], r["telnet_host"]) for r in await c.list()}
        assert names == {("alpha", "a", "127.0.0.1"), ("beta", "b", "127.0.0.1")}
        shown = await c.request("show", vm="beta")
        assert shown["ok"] and shown["console"]["vm_name"] == "beta", shown
        op = await Operator.connect(row["port"])
        await attached(c, "11" * 16)
        cleared = await c.request("clear", vm="beta", reason="maintenance")
        assert cleared["ok"] and cleared["cleared"] == 1, cleared
        await op.closed()
        op = await Operator.connect(row["port"])
        await attached(c, "11" * 16)
        listed = await c.row("11" * 16)
        assert listed is not None
        ident = listed["attached"][0]["id"]
        kicked = await c.request("kick", client=ident, reason="bye")
        assert kicked["ok"] and kicked["client"] == ident, kicked
        await op.closed()
        missing = await c.request("show", vm="nosuchvm")
        assert missing["ok"] is False and missing["error"]["code"] == "vm_not_found"
        # One VM name on two nodes: ambiguous, naming both.
        vms.append(await FakeEsxi.connect(a.proxy_port, uuid="88" * 16, name="twin"))
        vms.append(await FakeEsxi.connect(b.proxy_port, uuid="99" * 16, name="twin"))
        await connected(c, "88" * 16, "a")
        await connected(c, "99" * 16, "b")

        async def named() -> bool:
            rows = await c.list()
            return sum(r["vm_name"] == "twin" for r in rows) == 2

        await until(named, "both twins are named")
        twin = await c.request("show", vm="twin")
        assert twin["ok"] is False and twin["error"]["code"] == "ambiguous_vm", twin
        assert "node a" in twin["error"]["message"] and "node b" in twin["error"]["message"]
        for vm in vms:
            await vm.close()

    run(tmp_path, body, "a", "b", "c")


def test_node_kill_takeover_keeps_name_and_port(tmp_path: Path) -> None:
    """kill -9 of a node: the VM reconnects to another node, which takes the console
    over once the dead node's lease expired; a console on a surviving node sees
    nothing."""
    uri = "vSPC.py?port=com1"
    key = f"{UUID_A}_com1"  # a labelled console: name and label kept apart

    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        doomed = await FakeEsxi.connect(a.proxy_port, uuid=UUID_A, name="doomed", uri=uri)
        safe = await FakeEsxi.connect(c.proxy_port, uuid="22" * 16, name="safe")
        row = await connected(b, key, "a")
        port_before = row["port"]
        safe_row = await connected(b, "22" * 16, "c")
        watcher = await Operator.connect(safe_row["port"])
        await attached(c, "22" * 16)
        a.kill()
        await doomed.input.closed.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()

        async def shown_down() -> bool:  # once a's lease expired: listed from the registry
            row = await b.row(key)
            if row is None or row.get("node_down") is not True or row["node"] != "a":
                return False
            info = ConsoleInfo.from_json(row)  # clients parse it like any row
            return not info.connected and info.port == port_before

        await until(shown_down, "b lists a's console as on a dead node")
        back = await FakeEsxi.connect(b.proxy_port, uuid=UUID_A, name="doomed", uri=uri)
        moved = await connected(c, key, "b")
        print(f"take-over after {loop.time() - killed:.2f} s")
        assert moved["port"] == row["port"] and moved["vm_name"] == "doomed"
        assert moved["name"] == "doomed_com1"  # the label is not folded into the name
        op = await Operator.connect(moved["port"])
        await attached(b, key)
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


def test_chaos_node_kill_during_vmotion_loop(tmp_path: Path) -> None:
    """Three VMs migrate round-robin between three nodes, their operators typing one
    token per vMotion while it is in flight; at a random step a random node is
    killed.  Report (JSON): bytes lost and repeated per console, and how long the
    consoles the dead node owned or relayed took to serve again.  Consoles whose
    owner and relaying node survived lose and repeat nothing."""
    # Fixed for CI; VSPC_CHAOS_SEED=N explores other schedules.
    rng = random.Random(int(os.environ.get("VSPC_CHAOS_SEED", "13")))

    async def body(cluster: Cluster) -> None:
        names = ["a", "b", "c"]
        uuids = [f"{i + 4}{i + 4}" * 16 for i in range(3)]
        vms = [
            await FakeEsxi.connect(cluster[n].proxy_port, uuid=u)
            for n, u in zip(names, uuids, strict=True)
        ]
        where = list(names)  # the node holding each VM's socket
        ops = []
        for n, u in zip(names, uuids, strict=True):
            row = await connected(cluster[n], u, n)
            ops.append(await Operator.connect(row["port"]))
            await attached(cluster[n], u)
        typed = [b""] * 3  # every token typed, in order
        received = [b""] * 3  # what the VM side got, over all its connections
        affected: set[str] = set()
        report: dict[str, Any] = {"recovery_s": {}, "vmotions": 0}
        alive = set(names)
        steps = [(r, i) for r in range(4) for i in range(3)]
        kill_at = rng.randrange(3, len(steps) - 3)
        loop = asyncio.get_running_loop()
        for step, (rnd, i) in enumerate(steps):
            if step == kill_at:
                victim = rng.choice(sorted(alive))
                survivor = cluster[sorted(alive - {victim})[0]]
                owners = {u: ((await survivor.row(u)) or {}).get("node") for u in uuids}
                cluster[victim].kill()
                alive.discard(victim)
                killed = loop.time()
                for k, u in enumerate(uuids):
                    if victim not in (owners[u], where[k]):
                        continue
                    affected.add(u)
                    await vms[k].input.closed.wait()
                    received[k] += bytes(vms[k].input.data)
                    where[k] = rng.choice(sorted(alive))
                    vms[k] = await FakeEsxi.connect(cluster[where[k]].proxy_port, uuid=u)
                    # A dead owner's console is taken over by the node the VM reached;
                    # a surviving owner gets it relayed again.
                    owner = where[k] if owners[u] == victim else str(owners[u])
                    back = await connected(cluster[where[k]], u, owner)
                    report["recovery_s"][u[:4]] = round(loop.time() - killed, 3)
                    if owners[u] == victim:  # its operators were on the dead node
                        ops[k] = await Operator.connect(back["port"])
                        await attached(cluster[where[k]], u)
            u = uuids[i]
            dest = rng.choice(sorted(alive))
            seq = bytes([rnd, i, 0xFF, 7])
            cookie = await vms[i].begin(seq)
            token = f"r{rnd}v{i};".encode()
            ops[i].type(token)  # held by the owner until COMPLETE
            typed[i] += token
            dst = await FakeEsxi.connect(cluster[dest].proxy_port, uuid=u, cookie=cookie)
            await dst.wait_for(esxi.PeerOk)
            dst.complete(seq)
            await dst.input.expect(token)
            await vms[i].close()
            received[i] += bytes(vms[i].input.data)
            vms[i], where[i] = dst, dest
            report["vmotions"] += 1
        lost: dict[str, int] = {}
        repeated: dict[str, int] = {}
        for k, u in enumerate(uuids):
            got = received[k] + bytes(vms[k].input.data)
            tokens = typed[k].split(b";")[:-1]
            lost[u[:4]] = sum(len(t) + 1 for t in tokens if t + b";" not in got)
            repeated[u[:4]] = sum(len(t) + 1 for t in tokens if got.count(t + b";") > 1)
            if u not in affected:
                assert got == typed[k], (u, got, typed[k])  # exactly once, in order
        report.update(lost_bytes=lost, repeated_bytes=repeated, affected=len(affected))
        print(json.dumps(report))
        assert all(lost[u[:4]] == 0 and repeated[u[:4]] == 0 for u in uuids if u not in affected)
        for conn in vms:
            await conn.close()
        for op in ops:
            await op.close()

    run(tmp_path, body, "a", "b", "c")


class _Attached:
    """A raw admin connection after its `attach` (or `tail` follow) reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.got = bytearray()

    @classmethod
    async def open(cls, node: Node, **request: Any) -> tuple[_Attached, dict[str, Any]]:
        reader, writer = await asyncio.open_unix_connection(str(node.admin_socket))
        writer.write(json.dumps({"id": 7, **request}).encode() + b"\n")
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return cls(reader, writer), reply

    async def expect(self, wanted: bytes) -> None:
        async with asyncio.timeout(10):
            while wanted not in self.got:
                chunk = await self.reader.read(4096)
                assert chunk, f"closed before {wanted!r}: {bytes(self.got)!r}"
                self.got += chunk

    def close(self) -> None:
        self.writer.close()


def test_attach_and_tail_follow_through_a_non_owner(tmp_path: Path) -> None:
    """`attach` (locks included) and `tail` with follow on c for a console a serves:
    the session is spliced to a, bytes both ways, the lock held on a."""

    async def body(cluster: Cluster) -> None:
        a, c = cluster["a"], cluster["c"]
        vm = await FakeEsxi.connect(a.proxy_port, name="db01")
        await connected(c, UUID_A, "a")
        session, reply = await _Attached.open(c, cmd="attach", vm="db01", lock="exclusive")
        assert reply["ok"] is True, reply
        await attached(a, UUID_A)
        vm.send(b"login: ")
        await session.expect(b"login: ")
        session.writer.write(b"root\r")
        await vm.input.expect(b"root\r")
        # The exclusive lock lives on a: a second attach, from either node, is refused.
        for node in (a, c):
            other, refused = await _Attached.open(node, cmd="attach", vm="db01")
            assert refused["ok"] is False and refused["error"]["code"] == "lock_failed", refused
            other.close()
        follower, tail = await _Attached.open(c, cmd="tail", vm="db01", follow=True)
        assert tail["ok"] is True and tail["name"] == "db01", tail
        vm.send(b"# ")
        await session.expect(b"# ")
        await follower.expect(b'"output"')  # followed output arrives as output events
        session.close()
        await attached(a, UUID_A, 0)  # the splice's end detaches the client on a
        follower.close()
        await vm.close()

    run(tmp_path, body, "a", "c")


def test_subscribe_on_any_node_sees_every_node(tmp_path: Path) -> None:
    """`subscribe` on c: the snapshot lists a's console, then events from a (tagged
    `node`) and from c itself arrive on the same connection."""

    async def body(cluster: Cluster) -> None:
        a, c = cluster["a"], cluster["c"]
        first = await FakeEsxi.connect(a.proxy_port, uuid=UUID_A, name="alpha")
        await connected(c, UUID_A, "a")
        reader, writer = await asyncio.open_unix_connection(str(c.admin_socket))
        writer.write(b'{"cmd":"subscribe","id":1}\n')
        reply = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert reply["ok"] is True, reply
        assert [(r["vm_name"], r["node"]) for r in reply["vms"]] == [("alpha", "a")]
        second = await FakeEsxi.connect(a.proxy_port, uuid="55" * 16, name="beta")
        third = await FakeEsxi.connect(c.proxy_port, uuid="66" * 16, name="gamma")
        seen: set[tuple[str, str | None]] = set()
        async with asyncio.timeout(10):
            while not {("55" * 16, "a"), ("66" * 16, None)} <= seen:
                event = json.loads(await reader.readline())
                if event.get("event") == "vm_connected":
                    seen.add((event["key"], event.get("node")))
        writer.close()
        for vm in (first, second, third):
            await vm.close()

    run(tmp_path, body, "a", "c")


def test_vspc_cli_unchanged_against_a_non_owner(tmp_path: Path) -> None:
    """`vspc list` and `vspc show` on c work for a's console (extra fields ignored)."""

    async def body(cluster: Cluster) -> None:
        a, c = cluster["a"], cluster["c"]
        vm = await FakeEsxi.connect(a.proxy_port, name="cli-vm")
        await connected(c, UUID_A, "a")
        for argv in (["list"], ["show", "cli-vm"]):
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vspc.vspctui.shell.cli",
                "--socket", str(c.admin_socket), *argv,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(done.communicate(), 30)
            assert done.returncode == 0, err
            assert b"cli-vm" in out, out
        await vm.close()

    run(tmp_path, body, "a", "c")


def test_vspc_tui_unchanged_against_a_non_owner(tmp_path: Path) -> None:
    """The dashboard on c lists a's console and its preview is live (tail relayed)."""

    async def body(cluster: Cluster) -> None:
        a, c = cluster["a"], cluster["c"]
        vm = await FakeEsxi.connect(a.proxy_port, name="tui-vm")
        await connected(c, UUID_A, "a")
        screen = HeadlessScreen()
        app = App(AdminAddress(path=str(c.admin_socket)), screen=screen)
        task = asyncio.create_task(app.run())
        await tui_until(app, lambda: "tui-vm" in screen.text, "a's console listed on c")
        await tui_until(app, lambda: bool(app.model.tails), "the preview tailing through c")
        vm.send(b"relayed to the dashboard\r\n")
        await tui_until(app, lambda: "relayed to the dashboard" in screen.text, "live output")
        app.press("q")
        await asyncio.wait_for(task, 30)
        await vm.close()

    run(tmp_path, body, "a", "c")


def test_a_stranger_on_the_inter_node_port_is_refused(tmp_path: Path) -> None:
    """Without the cluster secret the handshake fails and nothing is accepted."""

    async def body(cluster: Cluster) -> None:
        a = cluster["a"]
        codec = PeerLinkCodec(Side.DIALER, "intruder", b"not the secret at all", b"\x05" * NONCE)
        reader, writer = await asyncio.open_connection("127.0.0.1", a.link_port)
        writer.write(codec.data_to_send())
        with pytest.raises(RemoteProtocolError):
            codec.receive_data(await asyncio.wait_for(reader.read(4096), 10))
        # Whatever it sends next is refused too: the node closes the link.
        writer.write(b"\x00\x00\x00\x05\x0a\x00\x00\x00\x01")
        async with asyncio.timeout(10):
            while await reader.read(4096):
                pass
        writer.close()

        async def refused() -> bool:
            return "inter-node link" in a.text() and "refused" in a.text()

        await until(refused, "a logs the refusal")
        # Silent strangers hold a socket each until the handshake timeout: past 64
        # waiting at once, more are dropped on arrival.
        silent = [await asyncio.open_connection("127.0.0.1", a.link_port) for _ in range(64)]
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", a.link_port)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(late_reader.read(100), 10) == b""
        late_writer.close()
        assert "too many handshakes pending" in a.text()
        for _, w in silent:
            w.close()

    run(tmp_path, body, "a")


def test_a_second_node_with_the_same_id_does_not_start(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        twin = Node("a", tmp_path / "twin", cluster.redis, cluster.range_start)
        twin.tmp.mkdir()
        twin.start()
        assert twin.proc is not None
        code = await asyncio.to_thread(twin.proc.wait, 30)
        assert code == 1
        assert "node id 'a' is held by a live node" in twin.text()

    run(tmp_path, body, "a")


def test_reconcile_lets_go_of_a_console_another_node_won(tmp_path: Path) -> None:
    """Split brain, staged: the registry says b owns a's console and a's lease is
    gone (as after a partition longer than the lease).  At its next renewal a
    reconciles, lets the console go (closes the VM), and the VM, reconnecting to a,
    is relayed to b, which serves it on the same port."""
    import redis.asyncio as aioredis

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        vm = await FakeEsxi.connect(a.proxy_port, name="contested")
        row = await connected(b, UUID_A, "a")
        client = aioredis.from_url(cluster.redis.url)
        await client.hset(f"vspc:console:{UUID_A}", "owner", "b")
        await client.delete("vspc:node:a")
        await client.aclose()
        await vm.input.closed.wait()  # a let it go

        async def gone() -> bool:
            return "letting it go" in a.text()

        await until(gone, "a logs that it lets the console go")
        back = await FakeEsxi.connect(a.proxy_port, name="contested")
        moved = await connected(a, UUID_A, "b")
        assert moved["port"] == row["port"]
        back.send(b"on b now")
        op = await Operator.connect(moved["port"])
        await attached(b, UUID_A)
        back.send(b"!")
        await op.output.expect(b"!")
        await op.close()
        await back.close()

    run(tmp_path, body, "a", "b")


def test_a_busy_telnet_port_is_never_advertised(tmp_path: Path) -> None:
    """Another process on the host holds the ports the registry hands out first (a
    benchmark, another daemon): the owner must not list a port it does not listen on
    (it used to bind the next free port and list the registry's, so an operator's
    telnet reached the other process).  It offers a port it bound; every node lists
    that one and an operator there is attached to the console."""
    blockers: list[socket.socket] = []

    def block(cluster: Cluster) -> None:
        for port in range(cluster.range_start, cluster.range_start + 8):
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            blockers.append(sock)

    async def body(cluster: Cluster) -> None:
        a, c = cluster["a"], cluster["c"]
        busy = {s.getsockname()[1] for s in blockers}
        src = await FakeEsxi.connect(a.proxy_port)
        row = await connected(c, UUID_A, "a")
        assert row["port"] not in busy, row
        assert (await connected(a, UUID_A, "a"))["port"] == row["port"]
        # The registry reserves the offered port for this console (no other gets it,
        # and it returns to the pool when the console expires).
        import redis.asyncio as aioredis  # the optional extra: imported only when present

        client = aioredis.Redis.from_url(cluster.redis.url, decode_responses=True)
        try:
            assert await client.get(f"vspc:port:{row['port']}") == UUID_A
            assert await client.hget(f"vspc:console:{UUID_A}", "port") == str(row["port"])
        finally:
            await client.aclose()
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        src.send(b"reached")
        await op.output.expect(b"reached")
        # The next console is not sent through the busy block again.
        other = await FakeEsxi.connect(c.proxy_port, uuid="33" * 16)
        second = await connected(a, "33" * 16, "c")
        assert second["port"] not in busy and second["port"] != row["port"]
        await other.close()
        await op.close()
        await src.close()

    try:
        run(tmp_path, body, "a", "c", prepare=block)
    finally:
        for sock in blockers:
            sock.close()


def test_a_stalled_node_keeps_its_consoles(tmp_path: Path) -> None:
    """A node that stops running for longer than its lease (SIGSTOP: a GC pause, a
    swapped-out process, an overloaded host) while no VM of its reconnects elsewhere
    loses nothing: the others list its console as on a dead node meanwhile, and when
    it runs again it re-takes its lease, reconciles and keeps console, port and
    operator; it logs that the lease had expired."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        vm = await FakeEsxi.connect(a.proxy_port)
        row = await connected(b, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:

            async def down() -> bool:
                found = await b.row(UUID_A)
                return found is not None and found.get("node_down") is True

            await until(down, "b lists a's console on a dead node")
        finally:
            a.proc.send_signal(signal.SIGCONT)
        back = await connected(b, UUID_A, "a")
        assert back["port"] == row["port"]
        await until(
            lambda: asyncio.sleep(0, "the node was stalled or cut off" in a.text()),
            "a logs that its lease ran out while it was stalled",
        )
        vm.send(b"still here")
        await op.output.expect(b"still here")
        op.type(b"typed\r")
        await vm.input.expect(b"typed\r")
        await attached(a, UUID_A)
        assert "letting it go" not in a.text()
        await op.close()
        await vm.close()

    run(tmp_path, body, "a", "b")


def test_relaying_node_dies_mid_vmotion(tmp_path: Path) -> None:
    """The destination's node dies after PEER-OK: the owner unbinds it (F6), keeps
    the cookie and the held input; the source ABORTs (F4) and gets the input, once."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        src = await FakeEsxi.connect(a.proxy_port)
        row = await connected(a, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        cookie = await src.begin(SEQ)
        op.type(b"held once\r")
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        await dst.wait_for(esxi.PeerOk)
        b.kill()
        await dst.input.closed.wait()
        src.abort()
        await src.input.expect(b"held once\r")
        op.type(b"more\r")
        await src.input.expect(b"held once\rmore\r")
        assert bytes(src.input.data) == b"held once\rmore\r"
        await src.close()
        await op.close()

    run(tmp_path, body, "a", "b")


def test_owner_dies_mid_vmotion(tmp_path: Path) -> None:
    """The owner dies after PEER-OK: the relayed destination is closed (the vMotion
    fails, the VM stays on its source host), the VM reconnects to a survivor, which
    takes the console over once the lease expired; the other console, served by the
    survivor, never notices."""

    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        src = await FakeEsxi.connect(a.proxy_port, name="moving")
        other = await FakeEsxi.connect(c.proxy_port, uuid="77" * 16, name="bystander")
        row = await connected(b, UUID_A, "a")
        other_row = await connected(b, "77" * 16, "c")
        watcher = await Operator.connect(other_row["port"])
        await attached(c, "77" * 16)
        cookie = await src.begin(SEQ)
        dst = await FakeEsxi.connect(b.proxy_port, cookie=cookie)
        await dst.wait_for(esxi.PeerOk)
        a.kill()
        await dst.input.closed.wait()
        await src.input.closed.wait()
        back = await FakeEsxi.connect(c.proxy_port, name="moving")
        moved = await connected(b, UUID_A, "c")
        assert moved["port"] == row["port"] and moved["vm_name"] == "moving"
        other.send(b"still fine")
        await watcher.output.expect(b"still fine")
        await back.close()
        await other.close()
        await watcher.close()

    run(tmp_path, body, "a", "b", "c")


def test_a_node_started_while_redis_is_down_serves_once_it_is_up(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        cluster.redis.stop()
        late = Node("late", tmp_path, cluster.redis, cluster.range_start)
        cluster.nodes["late"] = late
        late.start()
        await late.ready()  # it started; `list` answers with this node's rows
        reply = await late.request("list")
        assert reply["ok"] and "cluster_error" in reply, reply
        await cluster.redis.start()
        vm = await FakeEsxi.connect(late.proxy_port, name="patient")
        await connected(late, UUID_A, "late")
        await vm.close()
        assert late.proc is not None and late.proc.poll() is None

    run(tmp_path, body, "a")


def test_clean_stop_hands_consoles_over_at_once(tmp_path: Path) -> None:
    """SIGTERM drops the node's lease: with a 60 s lease, the console is still taken
    over as soon as its VM reconnects (well within the test's 15 s patience)."""

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        vm = await FakeEsxi.connect(a.proxy_port, name="handed")
        row = await connected(b, UUID_A, "a")
        a.stop()
        await vm.input.closed.wait()
        back = await FakeEsxi.connect(b.proxy_port, name="handed")
        moved = await connected(b, UUID_A, "b")
        assert moved["port"] == row["port"]
        await back.close()

    run(tmp_path, body, "a", "b", extra=("--cluster-lease", "60"))


def test_takeover_probe_crosses_nodes(tmp_path: Path) -> None:
    """The console's live VM connection is relayed (it landed on b by vMotion); a
    claim from another host arrives at c, relayed too.  The owner probes the live
    connection through b, it answers, and the claim is refused: a stranger never
    disturbs a live console, whichever nodes the connections reach."""

    async def body(cluster: Cluster) -> None:
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        src = await FakeEsxi.connect(a.proxy_port, name="guarded")
        row = await connected(a, UUID_A, "a")
        op = await Operator.connect(row["port"])
        await attached(a, UUID_A)
        cookie = await src.begin(SEQ)
        live = await FakeEsxi.connect(b.proxy_port, cookie=cookie, name="guarded")
        await live.wait_for(esxi.PeerOk)
        live.complete(SEQ)
        await src.close()

        async def completed() -> bool:  # else the claim meets the vMotion, not the probe
            return "vMotion complete" in a.text()

        await until(completed, "a completes the vMotion")
        stranger = await FakeEsxi.connect(c.proxy_port, name="guarded", local="127.0.0.2")
        await stranger.input.closed.wait()  # refused once the live VM answered
        op.type(b"still mine\r")
        await live.input.expect(b"still mine\r")
        assert b"still mine" not in stranger.input.data

        async def logged() -> bool:
            return "answered the probe" in a.text()

        await until(logged, "a logs the refused claim")
        await live.close()
        await op.close()

    run(tmp_path, body, "a", "b", "c")


def test_foreign_keys_do_not_break_list_and_vspc_list_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """Keys under the prefix that are not the registry's are skipped with a warning;
    when the registry cannot be read, `vspc list` says so and exits 1."""

    async def vspc_list(node: Node) -> tuple[int | None, str, str]:
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vspc.vspctui.shell.cli",
            "--socket", str(node.admin_socket), "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(done.communicate(), 30)
        return done.returncode, out.decode(), err.decode()

    async def body(cluster: Cluster) -> None:
        import redis.asyncio as aioredis

        a, b = cluster["a"], cluster["b"]
        raw = aioredis.Redis.from_url(cluster.redis.url, decode_responses=True)
        await raw.set("vspc:console:junk", "x")
        await raw.sadd("vspc:consoles", "junk")
        await raw.hset("vspc:node:junk", "a", "b")
        await raw.aclose()
        vm = await FakeEsxi.connect(a.proxy_port, name="listed")
        await connected(b, UUID_A, "a")
        reply = await b.request("list")
        assert reply["ok"] and "cluster_error" not in reply, reply
        assert [r["key"] for r in reply["vms"]] == [UUID_A]
        assert "registry key vspc:console:junk is not a console hash" in b.text()
        assert "registry key vspc:node:junk is not a node lease" in b.text()
        code, out, err = await vspc_list(b)
        assert (code, err) == (0, ""), err
        assert "listed" in out
        cluster.redis.stop()
        code, out, err = await vspc_list(b)  # b serves nothing itself
        assert code == 1 and out == "", (out, err)
        assert err.startswith("vspc: list: cluster registry unreadable"), err
        assert "registry unreachable" in err
        await vm.close()

    run(tmp_path, body, "a", "b")


def test_a_busy_cluster_link_port_is_named_in_the_start_error(tmp_path: Path) -> None:
    async def body(cluster: Cluster) -> None:
        other = Node("b", tmp_path / "other", cluster.redis, cluster.range_start)
        other.tmp.mkdir()
        with socket.socket() as holder:  # the port --node-address names, taken
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            other.link_port = holder.getsockname()[1]
            other.start()
            assert other.proc is not None
            code = await asyncio.to_thread(other.proc.wait, 30)
        assert code == 1, other.text()
        expected = f"cannot bind 127.0.0.1:{other.link_port}: address already in use"
        assert f"cannot start: {expected} (the cluster link port)" in other.text()

    run(tmp_path, body, "a")


def test_telnet_false_is_decided_by_the_owner_node(tmp_path: Path) -> None:
    """`telnet = false` with a name glob (vspcd/hub/telnetport.py): the owner node
    never listens on the registry's port for a console the rules deny, every node
    lists it without one, and a rename out of the rule opens exactly that port."""
    rules = tmp_path / "vspcd.toml"
    rules.write_text('[[access]]\nconsoles = ["db*"]\ntelnet = false\n')

    async def body(cluster: Cluster) -> None:
        a, b = cluster["a"], cluster["b"]
        src = await FakeEsxi.connect(a.proxy_port, name="db01")
        row = await connected(b, UUID_A, "a")
        assert row["port"] is None and (await a.row(UUID_A) or {})["port"] is None
        reserved = cluster.range_start  # the registry's first port, kept for the console
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", reserved)
        src.session.name = "web01"
        src.session._send(vmware.VmName("web01"))
        src._flush()

        async def opened() -> bool:
            row = await b.row(UUID_A)
            return row is not None and row["port"] == reserved

        await until(opened, "the renamed console gets the registry's port")
        op = await Operator.connect(reserved)
        await attached(a, UUID_A)
        src.send(b"served")
        await op.output.expect(b"served")
        await op.close()
        await src.close()

    run(tmp_path, body, "a", "b", extra=("--config", str(rules)))
