"""A bound VM connection's `vm_connected` waits briefly for VM-NAME (vspcd/hub/announce.py).

ESXi sends VM-NAME right after VM-VC-UUID (docs/protocol.md §3.4).  The hub binds at
the UUID, so output flows at once, but announces the connection (event, log line,
notice) under the VM's name when VM-NAME follows within `NAME_WAIT`, and under
what the console is called otherwise.  Time is faked (tests/vspcd/fakes.py).
"""

from __future__ import annotations

import logging

import pytest

from tests.vspcd.hub.test_hub import (
    SEQ,
    U1,
    Rig,
    attach,
    begin,
    connect,
    console_of,
    make_rig,
    peer,
    proxy,
    vm_link,
)
from vspc.common import vmware as vm
from vspc.common.session import VmData, VmIdentified, VmNamed
from vspc.vspcd.hub.announce import NAME_WAIT
from vspc.vspcd.hub.console import ConsoleKey, Role, VmConn
from vspc.vspcd.hub.events import HubEvent, VmConnected, VmRenamed

UUID_NAME = vm.display_uuid(U1)


def identify(rig: Rig, peer: str = "esx-a:40001") -> VmConn:
    """DO-PROXY and VM-VC-UUID, no VM-NAME yet: bound, not announced."""
    conn, _ = vm_link(rig, peer)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    assert conn.role is Role.ACTIVE
    return conn


def typed(rig: Rig) -> list[HubEvent]:
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    return seen


def test_the_wait_is_a_short_bound() -> None:
    assert 0 < NAME_WAIT <= 1.0


def test_name_within_the_wait_is_the_name_of_the_first_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig()
    seen = typed(rig)
    caplog.set_level(logging.INFO, logger="vspc.vspcd.hub.hub")
    conn = identify(rig)
    assert seen == [] and rig.names() == []
    rig.sched.advance(NAME_WAIT * 0.8)
    rig.hub.vm_event(conn, VmNamed("db01"))
    (connected,) = seen  # and no VmRenamed for the first name
    assert isinstance(connected, VmConnected) and connected.first
    assert connected.name == connected.info.name == connected.info.vm_name == "db01"
    assert rig.only("vm_connected")[0]["name"] == "db01"
    assert rig.sched.pending() == []  # the wait's timer is gone
    lines = [r.getMessage() for r in caplog.records if "VM connected from" in r.getMessage()]
    assert lines == ["db01 (01234567): VM connected from esx-a:40001, telnet port 7000"]
    rig.sched.advance(NAME_WAIT)
    assert len(seen) == 1


def test_name_in_the_same_read_needs_no_timer() -> None:
    rig = make_rig()
    connect(rig, name="db01")  # UUID and NAME handled back to back
    assert rig.names() == ["vm_connected"]
    assert rig.only("vm_connected")[0]["name"] == "db01"
    assert rig.sched.pending() == []


def test_without_a_name_in_time_the_uuid_is_announced_and_the_name_is_a_rename() -> None:
    rig = make_rig()
    seen = typed(rig)
    conn = identify(rig)
    rig.sched.advance(NAME_WAIT)
    (connected,) = seen
    assert isinstance(connected, VmConnected) and connected.name == UUID_NAME
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert seen[1:] == [VmRenamed(ConsoleKey(U1), "db01", "db01")]


def test_output_during_the_wait_is_not_delayed() -> None:
    rig = make_rig()
    tapped: list[bytes] = []
    rig.hub.tap(ConsoleKey(U1), tapped.append)
    logged: list[bytes] = []
    rig.hub.add_output_listener(lambda console, data: logged.append(data))
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmData(b"early "))  # before identification: held, then released
    rig.hub.vm_event(conn, VmIdentified(U1))
    assert tapped == logged == [b"early "]
    rig.hub.vm_event(conn, VmData(b"boot"))
    assert tapped == logged == [b"early ", b"boot"]
    assert console_of(conn).scrollback.last(100) == b"early boot"
    assert rig.names() == []  # only the announcement waits
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert rig.names() == ["vm_connected"]


def test_input_during_the_wait_reaches_the_vm() -> None:
    rig = make_rig()
    first = identify(rig)
    rig.hub.vm_event(first, VmNamed("db01"))
    console = console_of(first)
    client, viewer = attach(rig, console)
    rig.hub.vm_closed(first)
    conn, fake = vm_link(rig, "esx-a:40002")
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    rig.hub.client_input(client, b"root\r")
    assert fake.sent == b"root\r"
    rig.hub.vm_event(conn, VmData(b"Password: "))
    assert viewer.received == b"Password: "


def test_a_known_console_waits_too_and_its_clients_hear_the_name() -> None:
    rig = make_rig()
    first, _ = connect(rig, name="db01")
    client, viewer = attach(rig, console_of(first))
    rig.hub.vm_closed(first)
    rig.events.clear()
    conn = identify(rig, "esx-a:40002")
    assert rig.names() == []
    assert ("notify", "VM db01 connected") not in viewer.calls
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert rig.names() == ["vm_connected"]  # same name: no rename
    (connected,) = rig.only("vm_connected")
    assert connected["name"] == "db01" and connected["peer"] == "esx-a:40002"
    assert viewer.calls[-1] == ("notify", "VM db01 connected")


def test_a_known_console_renamed_meanwhile_is_announced_then_renamed() -> None:
    rig = make_rig()
    first, _ = connect(rig, name="db01")
    rig.hub.vm_closed(first)
    seen = typed(rig)
    conn = identify(rig, "esx-a:40002")
    rig.hub.vm_event(conn, VmNamed("db02"))
    assert [type(e) for e in seen] == [VmConnected, VmRenamed]
    connected, renamed = seen
    assert isinstance(connected, VmConnected) and not connected.first
    assert connected.name == "db02"
    assert renamed == VmRenamed(ConsoleKey(U1), "db02", "db02")


def test_a_restored_console_is_announced_under_the_vms_name() -> None:
    rig = make_rig()
    rig.hub.restore(ConsoleKey(U1), "db01", None, "vSPC.py")
    seen = typed(rig)
    conn = identify(rig)
    rig.sched.advance(NAME_WAIT / 2)
    rig.hub.vm_event(conn, VmNamed("db01"))
    (connected,) = seen
    assert isinstance(connected, VmConnected) and connected.name == "db01"
    assert not connected.first


def test_a_restored_console_never_named_gets_its_first_name_without_a_rename() -> None:
    rig = make_rig()
    rig.hub.restore(ConsoleKey(U1), UUID_NAME, None, "vSPC.py")
    seen = typed(rig)
    conn = identify(rig)
    rig.hub.vm_event(conn, VmNamed("db01"))
    assert [type(e) for e in seen] == [VmConnected]


def test_a_restored_console_without_a_name_in_time_keeps_its_remembered_name() -> None:
    rig = make_rig()
    rig.hub.restore(ConsoleKey(U1), "db01", None, "vSPC.py")
    rig.events.clear()
    identify(rig)
    rig.sched.advance(NAME_WAIT)
    assert rig.only("vm_connected")[0]["name"] == "db01"


def test_a_close_during_the_wait_announces_first() -> None:
    rig = make_rig()
    conn = identify(rig)
    rig.hub.vm_closed(conn)
    assert rig.names() == ["vm_connected", "vm_disconnected"]
    assert rig.sched.pending() != []  # the console's expiry; the wait's timer is gone
    assert all(h.delay != NAME_WAIT for h in rig.sched.pending())


def test_an_attach_during_the_wait_announces_first() -> None:
    rig = make_rig()
    conn = identify(rig)
    attach(rig, console_of(conn))
    assert rig.names() == ["vm_connected", "client_attached"]
    assert rig.only("vm_connected")[0]["name"] == UUID_NAME


def test_a_vmotion_during_the_wait_announces_first_and_peer_is_no_new_console() -> None:
    rig = make_rig()
    conn, fake = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    cookie = begin(rig, conn, fake, SEQ)
    assert rig.names() == ["vm_connected", "vmotion_begin"]
    dst, _ = peer(rig, cookie)
    rig.hub.vm_event(dst, VmNamed("db01"))  # a destination's name waits for COMPLETE
    rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    rig.sched.advance(NAME_WAIT * 4)
    assert rig.names() == ["vm_connected", "vmotion_begin", "vmotion_peer", "vmotion_complete"]
    assert rig.names().count("vm_connected") == 1


def test_a_replacement_during_the_wait_announces_the_old_connection_first() -> None:
    rig = make_rig()
    old = identify(rig, "esx-a:40001")
    new = identify(rig, "esx-a:40002")
    assert old.role is Role.RETIRED
    assert rig.names() == ["vm_connected"]  # the old one's, under the UUID
    rig.hub.vm_event(new, VmNamed("db01"))
    connected = rig.only("vm_connected")
    assert [c["peer"] for c in connected] == ["esx-a:40001", "esx-a:40002"]
    assert connected[1]["name"] == "db01"


def test_close_all_cancels_the_wait() -> None:
    rig = make_rig()
    identify(rig)
    rig.hub.close_all()
    assert rig.names() == ["vm_connected"]
    assert rig.sched.pending() == []
