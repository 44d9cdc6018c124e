"""Console takeover policy (docs/security.md "Console takeover").

A VM connection from another address may not displace a live, responsive VM
connection of the same console: the current one is probed (IAC DO TIMING-MARK) and
the newcomer wins only if no answer comes within `takeover_timeout`.  The same host
replaces at once (TV-27).  A stranger never disturbs a vMotion.

Hub-level tests use the fakes; the end-to-end ones reproduce the attack through real
sockets, the stranger bound to 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.vspcd.fakes import FakeVm
from tests.vspcd.harness import (
    UUID_A,
    FakeEsxi,
    Operator,
    console_port,
    identified,
    running,
)
from tests.vspcd.hub.test_hub import (
    SEQ,
    U1,
    Rig,
    Scene,
    attach,
    connect,
    make_rig,
    peer,
    pending,
    proxy,
    scene,
    vm_link,
)
from vspc.common import esxi
from vspc.common import vmware as vm
from vspc.common.session import VmData, VmIdentified, VmNamed
from vspc.vspcd.hub import binding as hub_module
from vspc.vspcd.hub.console import Phase, Role, VmConn
from vspc.vspcd.hub.events import HubEvent, TakeoverRefused, VMotionAborted, VmReplaced

STRANGER = "10.6.6.6:50000"


def recorded(rig: Rig) -> list[HubEvent]:
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    return seen


def claim(s: Scene, peer_name: str = STRANGER, name: str = "evil") -> tuple[VmConn, FakeVm]:
    """A connection from `peer_name` claiming the scene's console (same UUID)."""
    return connect_unchecked(s.rig, peer_name, name)


def connect_unchecked(rig: Rig, peer_name: str, name: str) -> tuple[VmConn, FakeVm]:
    conn, fake = vm_link(rig, peer_name)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    rig.hub.vm_event(conn, VmNamed(name))
    return conn, fake


# ---------------------------------------------------------------------- hub level


def test_live_vm_keeps_its_console_and_the_stranger_gets_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = scene(takeover_timeout=5.0)
    seen = recorded(s.rig)
    caplog.set_level(logging.WARNING, logger="vspc.vspcd.hub.hub")
    stranger, stranger_vm = claim(s)
    assert stranger.role is Role.CHALLENGER and s.console.vm is s.src
    assert s.src_vm.of("probe") == [("probe",)]
    s.type(b"password")  # while the probe is out: still the real VM's
    s.rig.hub.vm_event(stranger, VmData(b"login: "))  # a fake prompt, never shown
    s.rig.hub.vm_heard(s.src)  # the old connection answered
    assert stranger_vm.closed and stranger.role is Role.RETIRED
    assert s.console.vm is s.src and s.console.name == "vm01"
    assert s.src_vm.sent == b"password" and stranger_vm.sent == b""
    assert b"login" not in s.viewer.received
    assert s.rig.sched.pending() == []
    refused = [e for e in seen if isinstance(e, TakeoverRefused)]
    assert [(e.peer, e.active_peer) for e in refused] == [(STRANGER, "esx-a:40001")]
    assert [c for c in s.viewer.calls if c[0] == "notify"] == [
        (
            "notify",
            f"refused a VM connection from {STRANGER} (the VM connection answered the probe)",
        )
    ]
    warning = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warning) == 1
    assert "vm01" in warning[0] and STRANGER in warning[0] and "esx-a:40001" in warning[0]


def test_dead_vm_is_replaced_when_the_probe_times_out() -> None:
    # vSphere HA: the host died, TCP has not noticed; the VM restarts elsewhere.
    s = scene(takeover_timeout=5.0)
    seen = recorded(s.rig)
    newcomer, new_vm = claim(s, name="vm01")
    s.rig.sched.advance(4.9)
    assert s.console.vm is s.src
    s.rig.sched.advance(0.1)
    assert s.console.vm is newcomer and newcomer.role is Role.ACTIVE
    assert s.src_vm.closed and s.src.role is Role.RETIRED
    s.type(b"x")
    assert new_vm.sent == b"x"
    assert [e for e in seen if isinstance(e, VmReplaced)] == [
        VmReplaced(s.console.key, "vm01", "esx-a:40001", STRANGER, True)
    ]
    assert ("notify", f"VM connection esx-a:40001 replaced by {STRANGER}") in s.viewer.calls


def test_old_connection_closing_during_the_probe_hands_over_at_once() -> None:
    s = scene()
    newcomer, _ = claim(s, name="vm01")
    s.rig.hub.vm_closed(s.src)
    assert s.console.vm is newcomer
    assert s.rig.sched.pending() == []


def test_a_second_claim_while_one_is_checked_is_refused() -> None:
    s = scene()
    first, first_vm = claim(s)
    second, second_vm = claim(s, peer_name="10.7.7.7:1")
    assert second_vm.closed and not first_vm.closed
    assert s.console.challenge is not None and s.console.challenge.newcomer is first
    assert s.src_vm.of("probe") == [("probe",)]  # probed once


def test_challenger_leaving_cancels_the_probe_deadline() -> None:
    s = scene()
    stranger, _ = claim(s)
    s.rig.hub.vm_closed(stranger)
    assert s.console.challenge is None and s.rig.sched.pending() == []
    assert s.console.vm is s.src


def test_same_host_still_replaces_at_once(caplog: pytest.LogCaptureFixture) -> None:
    s = scene()
    seen = recorded(s.rig)
    caplog.set_level(logging.WARNING, logger="vspc.vspcd.hub.hub")
    new, _ = connect(s.rig, peer="esx-a:40077")
    assert s.console.vm is new and s.src_vm.of("probe") == []
    assert [e for e in seen if isinstance(e, VmReplaced)] == [
        VmReplaced(s.console.key, "vm01", "esx-a:40001", "esx-a:40077", False)
    ]
    assert any("esx-a:40077" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("peered", [False, True])
def test_a_stranger_never_disturbs_a_vmotion(peered: bool) -> None:
    s = scene()
    seen = recorded(s.rig)
    cookie = pending(s)
    dst = dst_vm = None
    if peered:
        dst, dst_vm = peer(s.rig, cookie)
    stranger, stranger_vm = claim(s)
    assert stranger_vm.closed and s.src_vm.of("probe") == []
    assert s.console.phase is (Phase.PEERED if peered else Phase.PENDING)
    if dst is None:
        dst, dst_vm = peer(s.rig, cookie)
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.vm is dst
    assert not any(isinstance(e, VMotionAborted) for e in seen)
    assert dst_vm is not None and not dst_vm.closed


def test_no_notices_setting_keeps_clients_quiet() -> None:
    rig = make_rig(notices=False)
    conn, _ = connect(rig)
    assert conn.console is not None
    _, viewer = attach(rig, conn.console)
    connect(rig, peer="esx-a:2")
    assert [c for c in viewer.calls if c[0] == "notify"] == []


# ---------------------------------------------------------------------- real sockets


def test_takeover_attack_is_refused_over_loopback(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--takeover-timeout", "30") as (daemon, events):
            assert daemon.proxy_port is not None
            vm_a = await FakeEsxi.connect(daemon.proxy_port, name="web01")
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            # A stranger on another address claims the console with A's UUID.
            evil = await FakeEsxi.connect(daemon.proxy_port, name="evil", local="127.0.0.2")
            await op.output.expect(b"[vspcd: refused a VM connection from 127.0.0.2:")
            async with asyncio.timeout(10):
                await evil.input.closed.wait()  # refused well before the 30 s deadline
            op.type(b"hunter2\r")
            await vm_a.input.expect(b"hunter2")
            assert evil.input.data == b""
            assert daemon.hub is not None
            (console,) = daemon.hub.consoles()
            assert console.name == "web01"
            await op.close()
            await vm_a.close()

    asyncio.run(main())


def test_stranger_does_not_abort_a_pending_vmotion_over_loopback(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (daemon, events):
            assert daemon.proxy_port is not None
            src = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            cookie = await src.begin(SEQ)
            evil = await FakeEsxi.connect(daemon.proxy_port, name="evil", local="127.0.0.2")
            async with asyncio.timeout(10):
                await evil.input.closed.wait()
            dst = await FakeEsxi.connect(daemon.proxy_port, cookie=cookie)
            await dst.wait_for(esxi.PeerOk)
            dst.complete(SEQ)
            await events.wait("vmotion_complete")
            assert not [n for n, _ in events.seen if n == "vmotion_abort"]
            await dst.close()
            await src.close()

    asyncio.run(main())


def test_ha_restart_gets_the_console_back_over_loopback(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, "--takeover-timeout", "0.5") as (daemon, events):
            assert daemon.proxy_port is not None
            old = await FakeEsxi.connect(daemon.proxy_port)
            await identified(events, UUID_A)
            op = await Operator.connect(console_port(daemon, UUID_A))
            await events.wait("client_attached")
            old.frozen = True  # the host died: no answer, no FIN
            new = await FakeEsxi.connect(daemon.proxy_port, local="127.0.0.2")
            await identified(events, UUID_A, count=2)
            await op.output.expect(b"[vspcd: VM connection 127.0.0.1:")
            op.type(b"after\r")
            await new.input.expect(b"after")
            assert b"after" not in old.input.data
            await op.close()
            await new.close()

    asyncio.run(main())


def test_anything_from_the_probed_connection_counts_as_an_answer() -> None:
    s = scene()
    stranger, stranger_vm = claim(s)
    s.vm_says(s.src, b"still here")
    assert stranger_vm.closed and s.console.vm is s.src
    assert s.viewer.received == b"still here"


@pytest.mark.parametrize(
    ("peer_name", "host"),
    [("10.0.0.1:4000", "10.0.0.1"), ("[2001:db8::1]:4000", "2001:db8::1"), ("?", "?")],
)
def test_the_host_part_of_a_peer_name(peer_name: str, host: str) -> None:
    assert hub_module._host(peer_name) == host
