"""Typed hub events (vspcd/hub/events.py) and their admin rendering (vspcd/faces/render.py).

The admin wire format of each event is covered by test_hub.py (through
`fields_observer`) and test_admin.py (through a real socket); here: the types, the
typed values they carry, and the internal events no admin line exists for.
"""

from __future__ import annotations

import pytest

from tests.vspcd.hub.test_hub import (
    SEQ,
    SEQ2,
    U1,
    attach,
    begin,
    connect,
    console_of,
    make_rig,
    peer,
)
from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo, ClientKind, ErrorCode, LockMode, VMotionPhase
from vspc.common.session import VmData
from vspc.vspcd.faces.render import event_message, show_row
from vspc.vspcd.hub.console import ConsoleKey
from vspc.vspcd.hub.events import (
    AbortReason,
    ClientAttached,
    ClientDetached,
    ConsoleCleared,
    ConsoleExpired,
    ConsoleRestored,
    DropReason,
    HubEvent,
    InputDropped,
    LockChanged,
    RefusalReason,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VMotionPeered,
    VMotionRefused,
)
from vspc.vspcd.hub.hub import HubError


def test_one_type_per_thing_that_happens_with_typed_values() -> None:
    rig = make_rig(vm_expire_time=10.0, secrets=(b"s1", b"s2"))
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    src, src_vm = connect(rig)
    console = console_of(src)
    client, _ = attach(rig, console, lock=LockMode.WRITE, peer="c:w")
    rig.hub.refuse_next_vmotion(console)
    rig.hub.vm_event(src, vm.VMotionBegin(SEQ))
    cookie = begin(rig, src, src_vm, SEQ2)
    dst, dst_vm = peer(rig, cookie)
    rig.hub.vm_event(dst, vm.VMotionComplete(SEQ2))
    begin(rig, dst, dst_vm, SEQ)
    rig.hub.vm_event(dst, vm.VMotionAbort())
    rig.hub.detach(client)
    rig.hub.vm_closed(dst)
    rig.sched.advance(10.0)
    key = ConsoleKey(U1)
    assert [type(e) for e in seen] == [
        VmConnected,  # under the VM's name: no VmRenamed for the first name
        ClientAttached,
        LockChanged,
        VMotionRefused,
        VMotionBegun,
        VMotionPeered,
        VMotionCompleted,
        VMotionBegun,
        VMotionAborted,
        ClientDetached,
        LockChanged,
        VmDisconnected,
        ConsoleExpired,
    ]
    assert all(e.key == key for e in seen)  # the typed key, never a display string
    connected = seen[0]
    assert isinstance(connected, VmConnected) and connected.first
    assert connected.info.vmotion is VMotionPhase.NORMAL
    assert connected.name == connected.info.vm_name == "vm01"
    attached = seen[1]
    assert isinstance(attached, ClientAttached)
    assert attached.client.kind is ClientKind.TELNET and attached.client.peer == "c:w"
    assert seen[2] == LockChanged(key, "vm01", LockMode.WRITE, client.ident)
    assert seen[3] == VMotionRefused(key, "vm01", RefusalReason.OPERATOR)
    completed = seen[6]
    assert completed == VMotionCompleted(key, "vm01", "esx-b:40002", "esx-a:40001")
    assert seen[8] == VMotionAborted(key, "vm01", AbortReason.SOURCE_ABORTED)
    detached = seen[9]
    assert isinstance(detached, ClientDetached) and detached.reason is None
    assert detached.client.id == client.ident and detached.client.mode is LockMode.WRITE
    assert seen[-1] == ConsoleExpired(key, "vm01", 7000)


def test_a_reconnect_is_not_a_first_connection() -> None:
    rig = make_rig()
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    conn, _ = connect(rig)
    rig.hub.vm_closed(conn)
    connect(rig, peer="esx-a:40009")
    firsts = [e.first for e in seen if isinstance(e, VmConnected)]
    assert firsts == [True, False]


def test_backlog_refusal_carries_the_figure() -> None:
    rig = make_rig(vmotion_backlog_limit=10)
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    conn, fake = connect(rig)
    fake.backlog = 11
    rig.hub.vm_event(conn, vm.VMotionBegin(SEQ))
    refused = next(e for e in seen if isinstance(e, VMotionRefused))
    assert (refused.reason, refused.backlog) == (RefusalReason.BACKLOG, 11)
    assert event_message(refused) == {
        "event": "vmotion_notnow",
        "name": "vm01",
        "key": U1,
        "reason": "11 VM-bound bytes still queued",
    }


def test_internal_events_input_dropped_cleared_restored() -> None:
    rig = make_rig()
    seen: list[HubEvent] = []
    rig.hub.subscribe(seen.append)
    conn, _ = connect(rig)
    console = console_of(conn)
    writer, _ = attach(rig, console, lock=LockMode.WRITE)
    reader, _ = attach(rig, console)
    watcher, _ = attach(rig, console, readonly=True)
    rig.hub.client_input(reader, b"abc")
    rig.hub.client_input(watcher, b"de")
    dropped = [e for e in seen if isinstance(e, InputDropped)]
    assert [(e.client, e.count, e.reason) for e in dropped] == [
        (reader.ident, 3, DropReason.LOCKED),
        (watcher.ident, 2, DropReason.READONLY),
    ]
    assert rig.hub.clear(console, "bye") == 3
    assert seen[-1] == ConsoleCleared(console.key, "vm01", 3, "bye")
    restored = rig.hub.restore(ConsoleKey("00" * 16), "old", 7100, None)
    assert seen[-1] == ConsoleRestored(restored.key, "old", 7100)
    # None of these has an admin event line.
    assert all(event_message(e) is None for e in (*dropped, seen[-1]))
    del writer


def test_hub_errors_carry_an_error_code() -> None:
    rig = make_rig()
    with pytest.raises(HubError) as err:
        rig.hub.find("nosuch")
    assert err.value.code is ErrorCode.VM_NOT_FOUND
    with pytest.raises(HubError) as err:
        rig.hub.kick(99, "x")
    assert err.value.code is ErrorCode.NOT_ATTACHED


def test_show_keeps_null_service_fields_and_client_info_round_trips() -> None:
    rig = make_rig()
    conn, _ = connect(rig)
    console = console_of(conn)
    client, _ = attach(rig, console)
    rig.hub.vm_closed(conn)
    row = show_row(rig.hub.console_info(console, detail=True), epoch=1000.0)
    assert row["vm_peer"] is None and row["service_uri"] == "vSPC.py"
    assert row["counters"]["vm_connects"] == 1
    info = rig.hub.client_info(client)
    assert ClientInfo.from_json(info.to_json()) == info
    assert row["attached"][0]["since"] == round(info.since + 1000.0, 3)


def test_activity_and_byte_counts_are_reported() -> None:
    # Created, last output, bytes each way per client, hold drops.
    rig = make_rig(hold_limit=4)
    conn, _ = connect(rig)
    console = console_of(conn)
    client, _ = attach(rig, console)
    created = rig.clock.now
    info = rig.hub.console_info(console)
    assert info.created == created and info.last_output is None
    rig.clock.now += 2.5
    rig.hub.vm_event(conn, VmData(b"hello"))
    rig.hub.client_input(client, b"ab")
    rig.hub.vm_closed(conn)
    rig.hub.client_input(client, b"cdefg")  # held with no VM: the oldest byte dropped
    info = rig.hub.console_info(console, detail=True)
    assert info.last_output == created + 2.5
    (seen,) = info.attached
    assert (seen.bytes_in, seen.bytes_out) == (7, 5)
    assert info.counters is not None and info.counters["hold_dropped"] == 1
    row = show_row(info, epoch=100.0)
    assert row["created"] == round(created + 100.0, 3)
    assert row["last_output"] == round(created + 102.5, 3)
    assert row["attached"][0]["bytes_out"] == 5
    never = rig.hub.console_info(rig.hub.restore(ConsoleKey("00" * 16), "old", None, None))
    assert "last_output" not in never.to_json()
