"""Churn leaves nothing behind: a long-running daemon must not slowly leak or wedge.

Many rounds of vMotions (success, ABORT, NOTNOW, abandoned), reconnects, stray
messages and clients coming and going, through the real daemon over loopback.  Then:
no cookie, VM connection record or client left over; every console expires once
idle; its port is released; the daemon still serves.  (docs/protocol.md §4.1: cookies are
single-use; §4.3 F8: never wedge.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.vspcd.harness import FakeEsxi, Operator, console_port, identified, running
from vspc.common import esxi

ROUNDS = 30


def test_churn_leaves_no_state_behind(tmp_path: Path) -> None:
    async def main() -> None:
        args = ("--vm-expire-time", "0.3", "--vmotion-abandon", "0.05")
        async with running(tmp_path, *args) as (daemon, events):
            hub = daemon.hub
            assert hub is not None and daemon.proxy_port is not None
            uuids = [f"{n:032x}" for n in range(1, 4)]
            sources = {}
            for uuid in uuids:
                sources[uuid] = await FakeEsxi.connect(daemon.proxy_port, uuid=uuid)
                await identified(events, uuid)
            for i in range(ROUNDS):
                uuid = uuids[i % len(uuids)]
                src = sources[uuid]
                op = await Operator.connect(console_port(daemon, uuid))
                sequence = i.to_bytes(4, "big")
                outcome = i % 4
                if outcome == 2:  # NOTNOW
                    hub.refuse_next_vmotion(hub.find(uuid))
                    src.session.begin(sequence)
                    src._flush()
                    await src.wait_for(esxi.NotNow)
                    await op.close()
                    continue
                cookie = await src.begin(sequence)
                op.type(b"x")
                if outcome == 0:  # success, source FIN first
                    dst = await FakeEsxi.connect(daemon.proxy_port, uuid=uuid, cookie=cookie)
                    await dst.wait_for(esxi.PeerOk)
                    await src.close()
                    dst.complete(sequence)
                    await dst.input.expect(b"x")
                    sources[uuid] = dst
                elif outcome == 1:  # ABORT after a destination came and went
                    dst = await FakeEsxi.connect(daemon.proxy_port, uuid=uuid, cookie=cookie)
                    await dst.wait_for(esxi.PeerOk)
                    await dst.close()
                    src.abort()
                    await src.input.expect(b"x")
                else:  # abandoned: the source leaves, nobody PEERs
                    await src.close()
                    await events.wait("vmotion_abort", lambda f: f.get("reason") == "abandoned")
                    sources[uuid] = await FakeEsxi.connect(daemon.proxy_port, uuid=uuid)
                    await sources[uuid].input.expect(b"x")  # the hold waited for it
                src.complete(b"\x09\x09\x09\x09")  # stray, ignored (F10)
                await op.close()
            # Everything in flight is settled: no cookie, no stale connection record.
            await events.wait("client_detached", count=ROUNDS)
            assert not hub._cookies
            assert hub.connection_count() == len(uuids)
            assert all(c.migration is None for c in hub.consoles())
            for vm_conn in list(sources.values()):
                await vm_conn.close()
            for uuid in uuids:
                await events.wait("vm_expired", lambda f, u=uuid: f["key"] == u)  # type: ignore[misc]
            assert list(hub.consoles()) == []
            assert hub.connection_count() == 0
            assert not hub.busy()
            # ... and it still works.
            seen = sum(1 for n, f in events.seen if n == "vm_connected" and f["key"] == uuids[0])
            again = await FakeEsxi.connect(daemon.proxy_port, uuid=uuids[0])
            await identified(events, uuids[0], count=seen + 1)
            await again.close()

    asyncio.run(main())
