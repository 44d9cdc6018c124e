"""The hub without sockets or a loop: docs/protocol.md §3.5, §4.3-§4.5, §6.4-§6.5.

One test per transition of the §4.5 state machine and per failure path F1-F11, then
identification, labels, fan-out, expiry, locks, congestion, lookup and observers.
Time and timers are faked (tests/vspcd/fakes.py); the hub is driven with the same
`SessionEvent`s the ProxySession emits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

import pytest

from tests.vspcd.fakes import FakeClient, FakeClock, FakePorts, FakeScheduler, FakeVm
from vspc.common import vmware as vm
from vspc.common.session import Notice, ProxyRequested, VmData, VmIdentified, VmNamed
from vspc.vspcd.faces.render import client_row, fields_observer, summary_row
from vspc.vspcd.hub.console import Client, Console, ConsoleKey, LockMode, Phase, Role, VmConn
from vspc.vspcd.hub.hub import Hub, HubError, HubSettings

U1 = "0123456789abcdeffedcba9800000000"  # the capture's VM (docs/protocol.md §3.4)
U2 = "00112233445566778899aabbccddeeff"
SEQ = bytes.fromhex("44da87f1")  # vMotion 1 of the capture
SEQ2 = bytes.fromhex("61ed26a2")
SEQ_FF = bytes.fromhex("7619ffe9")  # vMotion 5: a sequence containing ff
SECRET = b"\xff\x00\xff\x10"  # the §6.4 secret hook value


# ---------------------------------------------------------------------------- rig


# What the hub's former `describe()` / `client_rows()` returned: the protocol-v1 row
# fields.  The optional fields added later (created, last_output, bytes_in/out; issue
# #8) are tested in test_events.py.
_LATER = {"created", "last_output", "bytes_in", "bytes_out"}


def _v1(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _v1(v) if isinstance(v, dict) else v for k, v in row.items() if k not in _LATER}


def describe(hub: Hub, console: Console) -> dict[str, Any]:
    """A console's list row without `attached`, on the hub's clock."""
    return _v1(summary_row(hub.console_info(console)))


def client_rows(hub: Hub, console: Console) -> list[dict[str, Any]]:
    return [_v1(client_row(hub.client_info(c))) for c in console.clients]


@dataclass
class Rig:
    hub: Hub
    clock: FakeClock
    sched: FakeScheduler
    ports: FakePorts
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def only(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


def make_rig(secrets: Sequence[bytes] = (SECRET,), **settings: Any) -> Rig:
    clock = FakeClock()
    sched = FakeScheduler(clock)
    ports = FakePorts()
    supply: Iterator[bytes] = cycle(secrets)
    hub = Hub(
        HubSettings(**settings),
        clock=clock,
        call_later=sched.call_later,
        ports=ports,
        secret_factory=lambda: next(supply),
    )
    rig = Rig(hub, clock, sched, ports)
    hub.subscribe(fields_observer(lambda name, fields: rig.events.append((name, fields))))
    return rig


def proxy(uri: str = "vSPC.py", *, accepted: bool = True, direction: str = "S") -> ProxyRequested:
    """The event ProxySession emits for DO-PROXY (label parsed as it does)."""
    _, label = vm.parse_service_uri(uri)
    return ProxyRequested(direction, uri, label, accepted)


def vm_link(rig: Rig, peer: str = "esx-a:40001") -> tuple[VmConn, FakeVm]:
    fake = FakeVm(peer)
    return rig.hub.vm_connected(fake), fake


def connect(
    rig: Rig,
    uuid: str = U1,
    uri: str = "vSPC.py",
    name: str = "vm01",
    peer: str = "esx-a:40001",
) -> tuple[VmConn, FakeVm]:
    """A source connection as ESXi opens it: DO-PROXY, VM-VC-UUID, VM-NAME."""
    conn, fake = vm_link(rig, peer)
    rig.hub.vm_event(conn, proxy(uri))
    rig.hub.vm_event(conn, VmIdentified(uuid))
    rig.hub.vm_event(conn, VmNamed(name))
    assert conn.role is Role.ACTIVE
    return conn, fake


def console_of(conn: VmConn) -> Console:
    assert conn.console is not None
    return conn.console


def attach(
    rig: Rig,
    console: Console,
    *,
    lock: LockMode = LockMode.FREE_FOR_ALL_OR_READONLY,
    readonly: bool = False,
    peer: str = "127.0.0.1:50001",
) -> tuple[Client, FakeClient]:
    fake = FakeClient(peer)
    return rig.hub.attach(console, fake, kind="telnet", lock=lock, readonly=readonly), fake


def begin(rig: Rig, conn: VmConn, fake: FakeVm, sequence: bytes = SEQ) -> bytes:
    """BEGIN on `conn`; assert it was answered with GOAHEAD; return the cookie."""
    before = len(fake.goaheads)
    rig.hub.vm_event(conn, vm.VMotionBegin(sequence))
    assert len(fake.goaheads) == before + 1, fake.calls
    seq, secret = fake.goaheads[-1]
    assert seq == sequence
    return seq + secret


def peer(
    rig: Rig, cookie: bytes, uuid: str = U1, peer: str = "esx-b:40002"
) -> tuple[VmConn, FakeVm]:
    """A destination as ESXi opens it: PEER first (no DO-PROXY), then VM-VC-UUID."""
    conn, fake = vm_link(rig, peer)
    rig.hub.vm_event(conn, vm.VMotionPeer(cookie))
    rig.hub.vm_event(conn, VmIdentified(uuid))
    return conn, fake


@dataclass
class Scene:
    """One console with a source VM and one attached client."""

    rig: Rig
    src: VmConn
    src_vm: FakeVm
    console: Console
    client: Client
    viewer: FakeClient

    def type(self, data: bytes) -> None:
        self.rig.hub.client_input(self.client, data)

    def vm_says(self, conn: VmConn, data: bytes) -> None:
        self.rig.hub.vm_event(conn, VmData(data))


def scene(**settings: Any) -> Scene:
    rig = make_rig(**settings)
    src, src_vm = connect(rig)
    console = console_of(src)
    client, viewer = attach(rig, console)
    return Scene(rig, src, src_vm, console, client, viewer)


def pending(s: Scene, sequence: bytes = SEQ) -> bytes:
    cookie = begin(s.rig, s.src, s.src_vm, sequence)
    assert s.console.phase is Phase.PENDING
    return cookie


def peered(s: Scene, sequence: bytes = SEQ) -> tuple[bytes, VmConn, FakeVm]:
    cookie = pending(s, sequence)
    dst, dst_vm = peer(s.rig, cookie)
    assert s.console.phase is Phase.PEERED
    assert dst_vm.peer_oks == [sequence]
    return cookie, dst, dst_vm


# ---------------------------------------------------------------- §4.5 transitions


def test_begin_on_active_sends_goahead_and_enters_pending() -> None:
    s = scene()
    s.type(b"ls\r")
    cookie = pending(s)
    assert s.src_vm.calls == [("send", b"ls\r"), ("goahead", SEQ, SECRET)]
    assert cookie == SEQ + SECRET
    assert s.rig.only("vmotion_begin")[0]["key"] == str(ConsoleKey(U1))
    assert describe(s.rig.hub, s.console)["vmotion"] == "pending"


def test_begin_writes_held_queue_before_goahead() -> None:
    # §4.4 duty 1: bytes queued for the source precede GOAHEAD on the same stream.
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    s.type(b"one ")
    s.type(b"two")
    assert s.src_vm.sent == b""
    pending(s)
    assert s.src_vm.calls == [("send", b"one two"), ("goahead", SEQ, SECRET)]


def test_begin_refused_by_hook_sends_notnow_once_and_changes_nothing() -> None:
    # F1 / TV-32 hook: NOTNOW with the sequence only; nothing else changes.
    s = scene()
    s.rig.hub.refuse_next_vmotion(s.console)
    s.rig.hub.vm_event(s.src, vm.VMotionBegin(SEQ))
    assert s.src_vm.calls == [("notnow", SEQ)]
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is s.src
    assert s.rig.only("vmotion_notnow")[0]["reason"] == "refused by operator"
    s.type(b"x")  # input still flows straight through
    assert s.src_vm.sent == b"x"
    begin(s.rig, s.src, s.src_vm, SEQ2)  # the hook refuses once only
    assert s.console.counters.vmotion_refusals == 1


def test_begin_with_large_backlog_gets_notnow() -> None:
    # TV-32: a large VM-bound queue means an immediate NOTNOW, never silence.
    s = scene(vmotion_backlog_limit=100)
    s.src_vm.backlog = 101
    s.rig.hub.vm_event(s.src, vm.VMotionBegin(SEQ))
    assert s.src_vm.notnows == [SEQ]
    assert s.src_vm.goaheads == []
    assert s.console.phase is Phase.NORMAL
    s.src_vm.backlog = 100  # at the limit is still fine
    begin(s.rig, s.src, s.src_vm, SEQ2)


def test_begin_backlog_counts_held_input() -> None:
    s = scene(vmotion_backlog_limit=10)
    s.rig.hub.vm_congested(s.src, True)
    s.type(b"0123456789A")  # 11 bytes held in the hub's own queue
    s.rig.hub.vm_event(s.src, vm.VMotionBegin(SEQ))
    assert s.src_vm.notnows == [SEQ]
    assert s.src_vm.sent == b""  # NOTNOW overtakes the queue; the queue stays held
    s.rig.hub.vm_congested(s.src, False)
    assert s.src_vm.sent == b"0123456789A"


def test_begin_on_unidentified_connection_gets_notnow() -> None:
    rig = make_rig()
    conn, fake = vm_link(rig)
    rig.hub.vm_event(conn, vm.VMotionBegin(SEQ))
    assert fake.calls == [("notnow", SEQ)]


def test_peer_binds_destination_and_sends_peer_ok() -> None:
    s = scene()
    cookie = pending(s)
    dst, dst_vm = peer(s.rig, cookie)
    assert dst_vm.calls == [("peer_ok", SEQ)]
    assert dst.role is Role.DESTINATION
    assert s.console.phase is Phase.PEERED
    assert s.console.vm is s.src  # the source stays active until COMPLETE
    assert s.src_vm.calls == [("goahead", SEQ, SECRET)]
    assert s.rig.only("vmotion_peer")[0]["peer"] == "esx-b:40002"


@pytest.mark.parametrize("fin_first", [True, False], ids=["fin-then-complete", "complete-first"])
def test_complete_switches_to_destination_and_flushes_hold_once(fin_first: bool) -> None:
    # §4.2 and §6.4 item 2: input typed after GOAHEAD reaches the destination exactly
    # once, in order, on COMPLETE, with no further typing; both FIN/COMPLETE orders.
    s = scene()
    s.type(b"<0>\r")
    _, dst, dst_vm = peered(s)
    s.type(b"<1>\r")
    s.type(b"<2>\r")
    if fin_first:
        s.rig.hub.vm_closed(s.src)  # F7: normal; the port stays
        assert s.rig.hub.console(ConsoleKey(U1)) is s.console
        assert s.console.phase is Phase.PEERED
    assert dst_vm.sent == b""
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is dst
    assert dst.role is Role.ACTIVE
    assert dst_vm.of("send") == [("send", b"<1>\r<2>\r")]  # once, immediately
    assert s.src_vm.sent == b"<0>\r"  # nothing after GOAHEAD reached the source
    if not fin_first:
        assert s.src_vm.closed  # optional per §4.2 step 5; the hub does close it
        s.rig.hub.vm_closed(s.src)
    assert s.console.vm is dst
    s.type(b"<3>\r")
    assert dst_vm.sent == b"<1>\r<2>\r<3>\r"
    s.vm_says(dst, b"9")
    assert s.viewer.received == b"9"
    assert s.console.counters.vmotions == 1
    assert "vmotion_complete" in s.rig.names()
    assert s.rig.sched.pending() == []  # abandon timer (if armed) cancelled
    assert s.console.expiry is None


def test_complete_releases_destination_output_and_drops_old_source() -> None:
    # §4.4 VM->client 2: destination data held until COMPLETE; source data after it dropped.
    s = scene()
    s.vm_says(s.src, b"8")
    _, dst, _ = peered(s)
    s.vm_says(dst, b"early")
    assert s.viewer.received == b"8"
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.viewer.received == b"8early"
    s.vm_says(s.src, b"stale")  # the old source, not yet closed
    s.vm_says(dst, b"9")
    assert s.viewer.received == b"8early9"


def test_destination_output_before_peer_is_kept() -> None:
    s = scene()
    cookie = pending(s)
    dst, _ = vm_link(s.rig, "esx-b:40002")
    s.vm_says(dst, b"pre")
    s.rig.hub.vm_event(dst, vm.VMotionPeer(cookie))
    assert s.viewer.received == b""
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.viewer.received == b"pre"


def test_destination_close_returns_to_pending_keeping_cookie_and_hold() -> None:
    # F6: unbind the destination, keep cookie and hold; a fresh PEER may follow.
    s = scene()
    cookie, dst, _ = peered(s)
    s.type(b"held")
    s.rig.hub.vm_closed(dst)
    assert s.console.phase is Phase.PENDING
    assert s.src_vm.sent == b""
    dst2, dst2_vm = peer(s.rig, cookie, peer="esx-c:40003")
    assert dst2_vm.peer_oks == [SEQ]
    s.rig.hub.vm_event(dst2, vm.VMotionComplete(SEQ))
    assert dst2_vm.sent == b"held"
    assert s.console.vm is dst2


def test_destination_close_then_abort_gives_source_the_hold() -> None:
    # F6 then F3 (TV-29): the source keeps the port and gets the held data.
    s = scene()
    _, dst, _ = peered(s)
    s.type(b"<k>\r")
    s.rig.hub.vm_closed(dst)
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is s.src
    assert s.src_vm.of("send") == [("send", b"<k>\r")]
    assert not s.src_vm.closed


@pytest.mark.parametrize("with_dest", [False, True], ids=["pending", "peered"])
def test_abort_on_source_flushes_hold_to_source_once(with_dest: bool) -> None:
    # F3: forget the cookie, flush the hold to the source, close any PEERed destination.
    s = scene()
    cookie = pending(s)
    dst_vm = peer(s.rig, cookie)[1] if with_dest else None
    s.type(b"a")
    s.type(b"b")
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is s.src
    assert s.src_vm.of("send") == [("send", b"ab")]
    if dst_vm is not None:
        assert dst_vm.closed
        assert dst_vm.sent == b""
    assert s.rig.only("vmotion_abort")[0]["reason"] == "aborted by the source"
    assert s.console.counters.vmotion_aborts == 1
    s.type(b"c")  # straight through again
    assert s.src_vm.sent == b"abc"
    late, late_vm = peer(s.rig, cookie, peer="esx-c:40003")  # the cookie is dead
    assert late_vm.calls == []
    assert late.role is Role.UNBOUND


@pytest.mark.parametrize("with_dest", [False, True], ids=["pending", "peered"])
def test_source_data_while_vmotion_acts_as_abort(with_dest: bool) -> None:
    # F2: a source that talks again resumed (no ABORT is sent on a timeout).
    s = scene()
    cookie = pending(s)
    dst_vm = peer(s.rig, cookie)[1] if with_dest else None
    s.type(b"held")
    s.vm_says(s.src, b"39")
    assert s.console.phase is Phase.NORMAL
    assert s.src_vm.sent == b"held"
    assert s.viewer.received == b"39"
    if dst_vm is not None:
        assert dst_vm.closed
    assert s.rig.only("vmotion_abort")[0]["reason"] == "source resumed"


def test_destination_never_peer_ok_keeps_holding_until_abort() -> None:
    # F4: nothing times out in the hub while the source is alive; the ABORT decides.
    s = scene()
    pending(s)
    s.type(b"1")
    s.rig.sched.advance(3600.0)
    s.type(b"2")
    assert s.console.phase is Phase.PENDING
    assert s.src_vm.sent == b""
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    assert s.src_vm.sent == b"12"


def test_peer_with_unknown_cookie_gets_nothing() -> None:
    # F5 / TV-23: no PEER-OK, no side effects on the source.
    s = scene()
    stranger, stranger_vm = peer(s.rig, bytes(range(1, 9)))
    assert stranger_vm.calls == []
    assert stranger.role is Role.UNBOUND
    assert s.console.phase is Phase.NORMAL
    cookie = pending(s)
    truncated, truncated_vm = peer(s.rig, cookie[:-1])  # a cut-short cookie (§1 rule 2)
    assert truncated_vm.calls == []
    assert s.console.phase is Phase.PENDING
    assert s.src_vm.calls == [("goahead", SEQ, SECRET)]


def test_second_peer_while_bound_gets_nothing() -> None:
    # TV-19 (a): the bound destination and the source are undisturbed.
    s = scene()
    cookie, dst, dst_vm = peered(s)
    intruder, intruder_vm = peer(s.rig, cookie, peer="esx-x:40009")
    assert intruder_vm.calls == []
    assert intruder.role is Role.UNBOUND
    assert dst_vm.calls == [("peer_ok", SEQ)]
    s.rig.hub.vm_event(intruder, vm.VMotionComplete(SEQ))  # F10 on the intruder
    assert s.console.phase is Phase.PEERED
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.vm is dst


@pytest.mark.parametrize("ending", ["complete", "abort"])
def test_peer_after_complete_or_abort_gets_nothing(ending: str) -> None:
    # TV-19 (b) and §4.1: a cookie is single-use.
    s = scene()
    cookie, dst, _ = peered(s)
    if ending == "complete":
        s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    else:
        s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    late, late_vm = peer(s.rig, cookie, peer="esx-c:40003")
    assert late_vm.calls == []
    assert late.role is Role.UNBOUND
    assert s.console.phase is Phase.NORMAL


def test_second_begin_while_pending_kills_first_cookie_and_is_answered() -> None:
    # F9 / TV-19 (c).
    s = scene(secrets=(b"first", b"second"))
    first = pending(s, SEQ)
    s.type(b"held")
    second = begin(s.rig, s.src, s.src_vm, SEQ2)
    assert second == SEQ2 + b"second"
    # The implicit abort flushed the hold to the source before the new GOAHEAD.
    assert s.src_vm.calls[-2:] == [("send", b"held"), ("goahead", SEQ2, b"second")]
    assert s.console.phase is Phase.PENDING
    _, stale_vm = peer(s.rig, first, peer="esx-b:40002")
    assert stale_vm.calls == []
    _, dst_vm = peer(s.rig, second, peer="esx-c:40003")
    assert dst_vm.peer_oks == [SEQ2]


def test_second_begin_while_peered_closes_the_destination() -> None:
    s = scene()
    _, _, dst_vm = peered(s)
    begin(s.rig, s.src, s.src_vm, SEQ2)
    assert dst_vm.closed
    assert s.console.phase is Phase.PENDING


def test_source_close_during_vmotion_arms_abandon_timer_and_keeps_port() -> None:
    # F7: a source FIN during PENDING/PEERED is normal; never unregister the port.
    s = scene(abandon_time=45.0)
    pending(s)
    s.rig.hub.vm_closed(s.src)
    timers = s.rig.sched.pending()
    assert [t.delay for t in timers] == [45.0]
    assert s.console.phase is Phase.PENDING
    assert describe(s.rig.hub, s.console)["connected"] is True
    assert "vm_disconnected" not in s.rig.names()
    assert s.console.expiry is None


def test_abandon_timer_forgets_cookie_and_next_connection_works() -> None:
    # F8 / TV-28: cookie dead, destination closed, clients and hold kept; a new
    # connection with the same key works both ways and its BEGIN gets GOAHEAD.
    s = scene(abandon_time=60.0)
    cookie, dst, dst_vm = peered(s)
    s.rig.hub.vm_closed(s.src)
    s.type(b"<k>\r")
    assert s.rig.sched.advance(59.0) == 0
    assert s.rig.sched.advance(1.0) == 1
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is None
    assert dst_vm.closed
    assert dst.role is Role.RETIRED
    assert s.rig.only("vmotion_abort")[0]["reason"] == "abandoned"
    assert "vm_disconnected" in s.rig.names()
    assert s.console.clients == [s.client]
    assert s.rig.hub.console(ConsoleKey(U1)) is s.console
    _, late_vm = peer(s.rig, cookie, peer="esx-c:40003")
    assert late_vm.calls == []
    # A fresh connection for the same key.
    new, new_vm = connect(s.rig, peer="esx-d:40004")
    assert console_of(new) is s.console
    assert new_vm.sent == b"<k>\r"  # the hold, kept for the next connection
    s.type(b"more")
    assert new_vm.sent == b"<k>\rmore"
    s.vm_says(new, b"out")
    assert s.viewer.received == b"out"
    begin(s.rig, new, new_vm, SEQ2)


def test_abandon_without_clients_arms_expiry() -> None:
    rig = make_rig(abandon_time=60.0, vm_expire_time=300.0)
    src, src_vm = connect(rig)
    console = console_of(src)
    begin(rig, src, src_vm)
    rig.hub.vm_closed(src)
    rig.sched.advance(60.0)
    assert console.expiry is not None
    assert describe(rig.hub, console)["expires_in"] == 300.0


def test_complete_after_source_close_cancels_abandon_timer() -> None:
    s = scene()
    _, dst, _ = peered(s)
    s.rig.hub.vm_closed(s.src)
    (timer,) = s.rig.sched.pending()
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert timer.cancelled
    assert s.console.vm is dst


@pytest.mark.parametrize("state", ["pending", "peered", "source-closed"])
def test_fresh_do_proxy_during_vmotion_aborts_it(state: str) -> None:
    # F11: a new VM instance (restart, HA) for the key: cookie dies, new conn active.
    s = scene()
    if state == "pending":
        cookie, dst_vm = pending(s), None
    else:
        cookie, _, dst_vm = peered(s)
    if state == "source-closed":
        s.rig.hub.vm_closed(s.src)
    s.type(b"held")
    # From the source's own host: a stranger may not disturb a vMotion.
    new, new_vm = connect(s.rig, peer="esx-a:40010")
    assert s.console.phase is Phase.NORMAL
    assert s.console.vm is new
    assert new_vm.sent == b"held"
    assert s.src_vm.sent == b""
    if state != "source-closed":
        assert s.src_vm.closed  # the old connection is closed
    if dst_vm is not None:
        assert dst_vm.closed
    assert s.rig.sched.pending() == []
    assert s.rig.only("vmotion_abort")[0]["reason"] == "replaced"
    _, late_vm = peer(s.rig, cookie, peer="esx-c:40003")
    assert late_vm.calls == []


def test_stray_complete_and_abort_are_ignored_then_begin_answered() -> None:
    # F10 / TV-24.
    s = scene()
    s.rig.hub.vm_event(s.src, vm.VMotionComplete(bytes.fromhex("09090909")))
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    assert s.src_vm.calls == []
    assert s.console.vm is s.src
    assert "vmotion_abort" not in s.rig.names()
    begin(s.rig, s.src, s.src_vm)


def test_stray_vmotion_messages_during_vmotion_are_ignored() -> None:
    # F10 / TV-30: ABORT on the destination, COMPLETE on the source or with the wrong
    # sequence, ABORT/COMPLETE from an unbound connection.
    s = scene()
    _, dst, dst_vm = peered(s)
    stranger, stranger_vm = vm_link(s.rig, "esx-x:40009")
    for conn, event in [
        (dst, vm.VMotionAbort()),
        (dst, vm.VMotionComplete(SEQ2)),
        (s.src, vm.VMotionComplete(SEQ)),
        (stranger, vm.VMotionAbort()),
        (stranger, vm.VMotionComplete(SEQ)),
    ]:
        s.rig.hub.vm_event(conn, event)
        assert s.console.phase is Phase.PEERED
        assert s.console.vm is s.src
    assert not dst_vm.closed
    assert stranger_vm.calls == []
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.vm is dst


def test_complete_before_peer_is_ignored() -> None:
    s = scene()
    pending(s)
    stranger, _ = vm_link(s.rig, "esx-x:40009")
    s.rig.hub.vm_event(stranger, vm.VMotionComplete(SEQ))
    assert s.console.phase is Phase.PENDING


def test_secret_hook_is_sent_verbatim_and_peer_matches() -> None:
    # §4.1 + §6.4 item 4: opaque secret with ff and 00; sequence with ff.
    s = scene()
    cookie = pending(s, SEQ_FF)
    assert s.src_vm.goaheads == [(SEQ_FF, b"\xff\x00\xff\x10")]
    assert cookie == bytes.fromhex("7619ffe9 ff00ff10")
    dst, dst_vm = peer(s.rig, cookie)
    assert dst_vm.peer_oks == [SEQ_FF]
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ_FF))
    assert s.console.vm is dst


def test_default_secret_is_random_eight_bytes() -> None:
    clock = FakeClock()
    hub = Hub(HubSettings(), clock=clock, call_later=FakeScheduler(clock).call_later)
    conn = hub.vm_connected(fake := FakeVm())
    hub.vm_event(conn, proxy())
    hub.vm_event(conn, VmIdentified(U1))
    hub.vm_event(conn, vm.VMotionBegin(SEQ))
    hub.vm_event(conn, vm.VMotionAbort())
    hub.vm_event(conn, vm.VMotionBegin(SEQ))
    (_, first), (_, second) = fake.goaheads
    assert len(first) == len(second) == 8
    assert first != second


def test_two_vmotions_in_a_row_keep_the_client_stream_contiguous() -> None:
    # §6.4 item 3: A -> B -> C with the source's FIN first each time.
    s = scene(secrets=(b"s1", b"s2"))
    s.vm_says(s.src, b"a")
    cookie = pending(s)
    b, b_vm = peer(s.rig, cookie)
    s.rig.hub.vm_closed(s.src)
    s.rig.hub.vm_event(b, vm.VMotionComplete(SEQ))
    s.vm_says(b, b"b")
    cookie = begin(s.rig, b, b_vm, SEQ2)
    c, c_vm = peer(s.rig, cookie, peer="esx-c:40003")
    s.type(b"<2>")
    s.rig.hub.vm_closed(b)
    s.rig.hub.vm_event(c, vm.VMotionComplete(SEQ2))
    s.vm_says(c, b"c")
    assert s.viewer.received == b"abc"
    assert c_vm.sent == b"<2>"
    assert b_vm.sent == b""
    assert [c.key for c in s.rig.hub.consoles()] == [ConsoleKey(U1)]
    assert s.console.counters.vmotions == 2


# ---------------------------------------------------------------- identification


@pytest.mark.parametrize("uuid_first", [False, True], ids=["proxy-first", "uuid-first"])
def test_do_proxy_and_uuid_bind_in_either_order(uuid_first: bool) -> None:
    rig = make_rig()
    conn, _ = vm_link(rig)
    first: list[Any] = [proxy(), VmIdentified(U1)]
    if uuid_first:
        first.reverse()
    rig.hub.vm_event(conn, first[0])
    assert conn.role is Role.UNBOUND
    assert rig.hub.console(ConsoleKey(U1)) is None
    rig.hub.vm_event(conn, first[1])
    assert conn.role is Role.ACTIVE
    console = rig.hub.console(ConsoleKey(U1))
    assert console is not None and console.vm is conn
    rig.hub.vm_event(conn, VmNamed("vm01"))
    assert rig.only("vm_connected")[0]["peer"] == "esx-a:40001"


def test_vm_output_before_identification_is_held_and_released() -> None:
    rig = make_rig()
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmData(b"boot "))
    rig.hub.vm_event(conn, VmData(b"log"))
    rig.hub.vm_event(conn, VmIdentified(U1))
    console = console_of(conn)
    assert console.scrollback.last(100) == b"boot log"
    client, viewer = attach(rig, console)
    rig.hub.vm_event(conn, VmData(b"!"))
    assert viewer.received == b"!"


def test_early_output_reaches_clients_attached_before_the_vm() -> None:
    # A console survives its VM (sticky); a reconnect's early output reaches its clients.
    s = scene()
    s.rig.hub.vm_closed(s.src)
    conn, _ = vm_link(s.rig, "esx-a:40005")
    s.rig.hub.vm_event(conn, VmData(b"early"))
    assert s.viewer.received == b""
    s.rig.hub.vm_event(conn, proxy())
    s.rig.hub.vm_event(conn, VmIdentified(U1))
    assert s.viewer.received == b"early"


@pytest.mark.parametrize("uuid_first", [False, True], ids=["proxy-first", "uuid-first"])
def test_wont_proxy_closes_and_never_registers(uuid_first: bool) -> None:
    rig = make_rig()
    conn, fake = vm_link(rig)
    events: list[Any] = [proxy("vSPC.py", accepted=False, direction="C"), VmIdentified(U1)]
    if uuid_first:
        events.reverse()
    for event in events:
        rig.hub.vm_event(conn, event)
    rig.hub.vm_event(conn, VmData(b"ignored"))
    assert fake.closed
    assert conn.role is Role.UNBOUND
    assert list(rig.hub.consoles()) == []
    assert rig.ports.bound == {}
    assert "vm_connected" not in rig.names()
    rig.hub.vm_closed(conn)


def test_name_before_binding_names_the_new_console() -> None:
    rig = make_rig()
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, VmNamed("early-name"))
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    assert console_of(conn).name == "early-name"


def test_notice_changes_nothing() -> None:
    s = scene()
    s.rig.hub.vm_event(s.src, Notice("VM does not know our code 0x51"))
    assert s.src_vm.calls == []
    assert s.console.vm is s.src


def test_uuid_without_do_proxy_does_not_register() -> None:
    rig = make_rig()
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, VmIdentified(U1))
    assert list(rig.hub.consoles()) == []


def test_vm_name_names_the_console() -> None:
    rig = make_rig()
    conn, _ = vm_link(rig)
    rig.hub.vm_event(conn, proxy())
    rig.hub.vm_event(conn, VmIdentified(U1))
    console = console_of(conn)
    assert console.name == "01234567-89ab-cdef-fedc-ba9800000000"  # until VM-NAME
    rig.hub.vm_event(conn, VmNamed("vm-00000"))
    assert console.name == console.display_name == "vm-00000"


def test_destination_name_takes_over_on_complete() -> None:
    s = scene()
    cookie = pending(s)
    dst, _ = peer(s.rig, cookie)
    s.rig.hub.vm_event(dst, VmNamed("renamed"))
    assert s.console.name == "vm01"
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.name == "renamed"


def test_destination_uuid_mismatch_keeps_the_cookie_authoritative() -> None:
    s = scene()
    cookie = pending(s)
    dst, dst_vm = peer(s.rig, cookie, uuid=U2)
    assert dst_vm.peer_oks == [SEQ]
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.console.vm is dst
    assert s.rig.hub.console(ConsoleKey(U2)) is None


# ------------------------------------------------------------------------- labels


def test_port_label_is_part_of_the_key() -> None:
    rig = make_rig()
    a, _ = connect(rig, uri="vSPC.py?port=a", peer="esx-a:1")
    b, _ = connect(rig, uri="vSPC.py?port=b", peer="esx-a:2")
    plain, _ = connect(rig, uri="vSPC.py", peer="esx-a:3")
    assert console_of(a).key == ConsoleKey(U1, "a")
    assert console_of(b).key == ConsoleKey(U1, "b")
    assert console_of(plain).key == ConsoleKey(U1, "")
    assert console_of(a).display_name == "vm01_a"
    assert len(list(rig.hub.consoles())) == 3
    assert a.role is b.role is plain.role is Role.ACTIVE


def test_multi_console_keys_on_the_whole_uri() -> None:
    rig = make_rig(multi_console=True)
    one, _ = connect(rig, uri="vSPC.py", peer="esx-a:1")
    two, _ = connect(rig, uri="other.py", peer="esx-a:2")
    labelled, _ = connect(rig, uri="vSPC.py?port=c2", peer="esx-a:3")
    assert console_of(one).key == ConsoleKey(U1, "vSPC.py")
    assert console_of(two).key == ConsoleKey(U1, "other.py")
    assert console_of(labelled).key == ConsoleKey(U1, "c2")
    assert one.role is two.role is Role.ACTIVE


def test_without_multi_console_unlabelled_uris_share_one_console() -> None:
    rig = make_rig()
    one, one_vm = connect(rig, uri="vSPC.py", peer="esx-a:1")
    two, _ = connect(rig, uri="other.py", peer="esx-a:2")
    assert console_of(one) is console_of(two)
    assert one_vm.closed


def test_two_ports_of_one_vm_migrating_at_once_never_mix() -> None:
    # TV-26: both get GOAHEAD; each PEER maps to its own console; data never mixes.
    rig = make_rig(secrets=(b"sa", b"sb"))
    a, a_vm = connect(rig, uri="vSPC.py?port=a", peer="esx-a:1")
    b, b_vm = connect(rig, uri="vSPC.py?port=b", peer="esx-a:2")
    ca, cb = console_of(a), console_of(b)
    client_a, viewer_a = attach(rig, ca, peer="c:a")
    client_b, viewer_b = attach(rig, cb, peer="c:b")
    cookie_a = begin(rig, a, a_vm, SEQ)
    cookie_b = begin(rig, b, b_vm, SEQ2)
    rig.hub.client_input(client_a, b"to-a")
    rig.hub.client_input(client_b, b"to-b")
    # PEERs arrive crossed over in time.
    db, db_vm = peer(rig, cookie_b, peer="esx-b:2")
    da, da_vm = peer(rig, cookie_a, peer="esx-b:1")
    assert da_vm.peer_oks == [SEQ] and db_vm.peer_oks == [SEQ2]
    assert da.console is ca and db.console is cb
    rig.hub.vm_event(da, VmData(b"A"))
    rig.hub.vm_event(db, VmData(b"B"))
    rig.hub.vm_event(db, vm.VMotionComplete(SEQ2))
    rig.hub.vm_event(da, vm.VMotionComplete(SEQ))
    assert (da_vm.sent, db_vm.sent) == (b"to-a", b"to-b")
    assert (viewer_a.received, viewer_b.received) == (b"A", b"B")
    assert (ca.vm, cb.vm) == (da, db)


def test_complete_with_other_ports_sequence_is_ignored() -> None:
    rig = make_rig(secrets=(b"sa", b"sb"))
    a, a_vm = connect(rig, uri="vSPC.py?port=a", peer="esx-a:1")
    b, b_vm = connect(rig, uri="vSPC.py?port=b", peer="esx-a:2")
    da, _ = peer(rig, begin(rig, a, a_vm, SEQ), peer="esx-b:1")
    peer(rig, begin(rig, b, b_vm, SEQ2), peer="esx-b:2")
    rig.hub.vm_event(da, vm.VMotionComplete(SEQ2))
    assert console_of(a).phase is Phase.PEERED
    assert console_of(b).phase is Phase.PEERED


def test_reconnect_with_same_key_replaces_active_connection() -> None:
    # TV-27: the new one is active and gets client data; the old one is closed; the
    # port stays listed and keeps its number.
    s = scene()
    port = s.console.port
    new, new_vm = connect(s.rig, peer="esx-a:40099")
    assert s.src_vm.closed
    assert s.src.role is Role.RETIRED
    assert s.console.vm is new and console_of(new) is s.console
    s.type(b"x")
    assert new_vm.sent == b"x" and s.src_vm.sent == b""
    s.vm_says(s.src, b"old")
    s.vm_says(new, b"new")
    assert s.viewer.received == b"new"
    s.rig.hub.vm_closed(s.src)  # the old one's close changes nothing
    assert s.console.vm is new
    assert s.console.port == port
    assert s.rig.ports.released == []
    assert s.console.counters.vm_connects == 2


# ------------------------------------------------------------------------- output


def test_console_output_fans_out_the_same_objects_to_every_client() -> None:
    s = scene()
    _, second = attach(s.rig, s.console, peer="c:2")
    _, third = attach(s.rig, s.console, peer="c:3")
    payload = b"a\xffb\xff"
    s.vm_says(s.src, payload)
    (raw, escaped), *_ = s.viewer.outputs
    assert raw == payload
    assert escaped == b"a\xff\xffb\xff\xff"
    for viewer in (second, third):
        ((raw2, escaped2),) = viewer.outputs
        assert raw2 is raw
        assert escaped2 is escaped


def test_output_reaches_taps_and_scrollback() -> None:
    s = scene()
    seen: list[bytes] = []
    untap = s.rig.hub.tap(s.console.key, seen.append)
    s.vm_says(s.src, b"one")
    untap()
    s.vm_says(s.src, b"two")
    assert seen == [b"one"]
    assert s.console.scrollback.last(6) == b"onetwo"
    assert s.console.counters.bytes_from_vm == 6


def test_client_input_goes_straight_to_the_vm() -> None:
    s = scene()
    s.type(b"\x00\x11\xff\r\n")
    s.type(b"")
    assert s.src_vm.calls == [("send", b"\x00\x11\xff\r\n")]
    assert s.console.counters.bytes_to_vm == 5


def test_input_without_a_vm_is_held_for_the_next_connection() -> None:
    s = scene()
    s.rig.hub.vm_closed(s.src)
    s.type(b"queued")
    new, new_vm = connect(s.rig, peer="esx-a:2")
    assert new_vm.sent == b"queued"


# ----------------------------------------------------------------- ports, expiry


def test_port_is_bound_on_create_and_kept_while_vm_or_clients() -> None:
    rig = make_rig(vm_expire_time=100.0)
    conn, _ = connect(rig)
    console = console_of(conn)
    assert console.port == 7000
    assert rig.ports.bound == {7000: ConsoleKey(U1)}
    assert rig.hub.console_by_port(7000) is console
    client, _ = attach(rig, console)
    rig.hub.vm_closed(conn)
    assert rig.only("vm_disconnected")[0]["peer"] == "esx-a:40001"
    assert console.expiry is None  # a client is still attached
    rig.hub.detach(client)
    assert console.expiry is not None
    assert describe(rig.hub, console)["expires_in"] == 100.0
    rig.clock.now += 40.0
    assert describe(rig.hub, console)["expires_in"] == 60.0
    assert describe(rig.hub, console)["port"] == 7000  # still listed (sticky)


def test_expiry_cancelled_on_reconnect() -> None:
    rig = make_rig(vm_expire_time=100.0)
    conn, _ = connect(rig)
    console = console_of(conn)
    rig.hub.vm_closed(conn)
    (timer,) = rig.sched.pending()
    rig.sched.advance(99.0)
    new, _ = connect(rig, peer="esx-a:2")
    assert timer.cancelled
    assert console_of(new) is console
    assert console.expires_at is None
    rig.sched.advance(1000.0)
    assert rig.hub.console(ConsoleKey(U1)) is console


def test_expiry_cancelled_on_attach_and_rearmed_on_detach() -> None:
    rig = make_rig(vm_expire_time=100.0)
    conn, _ = connect(rig)
    console = console_of(conn)
    rig.hub.vm_closed(conn)
    (timer,) = rig.sched.pending()
    client, _ = attach(rig, console)
    assert timer.cancelled
    rig.sched.advance(500.0)
    assert rig.hub.console(ConsoleKey(U1)) is console
    rig.hub.detach(client)
    (timer2,) = rig.sched.pending()
    assert timer2.delay == 100.0


def test_expired_console_releases_its_port() -> None:
    rig = make_rig(vm_expire_time=100.0)
    conn, _ = connect(rig)
    console = console_of(conn)
    rig.hub.vm_closed(conn)
    assert rig.sched.advance(100.0) == 1
    assert rig.hub.console(ConsoleKey(U1)) is None
    assert rig.hub.console_by_port(7000) is None
    assert rig.ports.released == [7000]
    assert rig.only("vm_expired")[0] == {"name": "vm01", "key": U1, "port": 7000}
    with pytest.raises(HubError) as err:
        rig.hub.find("vm01")
    assert err.value.code == "vm_not_found"
    again, _ = connect(rig, peer="esx-a:2")  # a fresh console, fresh port
    assert console_of(again) is not console


def test_stale_expiry_callback_does_nothing() -> None:
    # A timer that fires after a reconnect (e.g. cancelled too late) leaves the console.
    rig = make_rig(vm_expire_time=100.0)
    conn, _ = connect(rig)
    rig.hub.vm_closed(conn)
    (timer,) = rig.sched.pending()
    connect(rig, peer="esx-a:2")
    timer.cancelled = False
    timer.fire()
    assert rig.hub.console(ConsoleKey(U1)) is not None
    assert rig.ports.released == []


def test_reclaim_expires_idle_consoles_soonest_first() -> None:
    rig = make_rig(vm_expire_time=100.0)
    busy, _ = connect(rig, uuid=U1, peer="esx-a:1")
    first, _ = connect(rig, uri="vSPC.py?port=x", peer="esx-a:2")
    second, _ = connect(rig, uri="vSPC.py?port=y", peer="esx-a:3")
    rig.hub.vm_closed(first)
    rig.clock.now += 10.0
    rig.hub.vm_closed(second)
    assert rig.hub.reclaim(1) == 1
    assert rig.hub.console(ConsoleKey(U1, "x")) is None
    assert rig.hub.console(ConsoleKey(U1, "y")) is not None
    assert rig.hub.reclaim(5) == 1
    assert rig.hub.console(ConsoleKey(U1, "y")) is None
    assert rig.hub.console(ConsoleKey(U1)) is console_of(busy)
    assert sorted(rig.ports.released) == [7001, 7002]
    assert all(not t.pending for t in rig.sched.handles)


def test_no_free_port_still_registers_the_console() -> None:
    rig = make_rig()
    rig.ports.pool.clear()
    conn, _ = connect(rig)
    assert console_of(conn).port is None
    assert rig.hub.find(U1) is console_of(conn)


# ------------------------------------------------------------------ clients, locks


def test_client_limit() -> None:
    s = scene(client_limit=2)
    attach(s.rig, s.console, peer="c:2")
    with pytest.raises(HubError) as err:
        attach(s.rig, s.console, peer="c:3")
    assert err.value.code == "client_limit"
    assert len(s.console.clients) == 2


def test_exclusive_refused_when_others_attached() -> None:
    s = scene()
    with pytest.raises(HubError) as err:
        attach(s.rig, s.console, lock=LockMode.EXCLUSIVE, peer="c:2")
    assert err.value.code == "lock_failed"


@pytest.mark.parametrize("mode", list(LockMode))
def test_exclusive_holder_refuses_everyone(mode: LockMode) -> None:
    rig = make_rig()
    conn, _ = connect(rig)
    console = console_of(conn)
    holder, _ = attach(rig, console, lock=LockMode.EXCLUSIVE)
    assert rig.only("lock_changed")[-1] == {
        "name": "vm01",
        "key": U1,
        "lock": "exclusive",
        "holder": holder.ident,
    }
    with pytest.raises(HubError) as err:
        attach(rig, console, lock=mode, peer="c:2")
    assert err.value.code == "lock_failed"
    rig.hub.detach(holder)
    attach(rig, console, lock=mode, peer="c:3")  # released


def test_write_lock_drops_others_input() -> None:
    s = scene()  # s.client joined free_for_all_or_readonly before the lock
    writer, _ = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    s.type(b"dropped")
    s.rig.hub.client_input(writer, b"kept")
    assert s.src_vm.sent == b"kept"
    assert s.console.counters.input_dropped == len(b"dropped")
    assert s.rig.hub.may_write(writer)
    assert not s.rig.hub.may_write(s.client)


@pytest.mark.parametrize("mode", [LockMode.WRITE, LockMode.FREE_FOR_ALL])
def test_write_lock_refuses_writers(mode: LockMode) -> None:
    s = scene()
    attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    with pytest.raises(HubError) as err:
        attach(s.rig, s.console, lock=mode, peer="c:2")
    assert err.value.code == "lock_failed"


def test_free_for_all_or_readonly_joins_read_only_under_a_write_lock() -> None:
    s = scene()
    writer, _ = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    reader, reader_fake = attach(s.rig, s.console, peer="c:r")
    rows = {row["id"]: row for row in client_rows(s.rig.hub, s.console)}
    assert rows[reader.ident]["readonly"] is True
    assert rows[writer.ident]["readonly"] is False
    s.rig.hub.client_input(reader, b"no")
    assert s.src_vm.sent == b""
    s.vm_says(s.src, b"seen")
    assert reader_fake.received == b"seen"


def test_lock_holder_leaving_releases_the_lock() -> None:
    s = scene()
    writer, _ = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    s.rig.hub.detach(writer)
    assert s.rig.only("lock_changed")[-1]["lock"] is None
    assert s.console.lock_holder() is None
    s.type(b"free")
    assert s.src_vm.sent == b"free"
    attach(s.rig, s.console, lock=LockMode.FREE_FOR_ALL, peer="c:f")


def test_readonly_client_input_is_dropped() -> None:
    s = scene()
    reader, _ = attach(s.rig, s.console, readonly=True, peer="c:r")
    s.rig.hub.client_input(reader, b"no")
    assert s.src_vm.sent == b""
    assert s.console.counters.input_dropped == 2


def test_input_from_a_detached_client_is_ignored() -> None:
    s = scene()
    s.rig.hub.detach(s.client)
    s.type(b"late")
    s.rig.hub.detach(s.client)  # twice is harmless
    assert s.src_vm.sent == b""


def test_clear_notifies_and_closes_every_client() -> None:
    s = scene()
    _, other = attach(s.rig, s.console, peer="c:2")
    assert s.rig.hub.clear(s.console, "cleared by admin") == 2
    for viewer in (s.viewer, other):
        assert viewer.calls[-2:] == [("notify", "cleared by admin"), ("close",)]
    assert s.console.clients == []
    assert len(s.rig.only("client_detached")) == 2


def test_kick_disconnects_one_client_by_id() -> None:
    s = scene()
    other, other_fake = attach(s.rig, s.console, peer="c:2")
    assert s.rig.hub.kick(other.ident, "bye") is other
    assert other_fake.calls[-2:] == [("notify", "bye"), ("close",)]
    assert s.console.clients == [s.client]
    with pytest.raises(HubError) as err:
        s.rig.hub.kick(other.ident, "again")
    assert err.value.code == "not_attached"


# -------------------------------------------------------------------- congestion


def test_congestion_holds_input_pauses_clients_then_flushes_and_resumes() -> None:
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    assert s.viewer.paused
    _, late = attach(s.rig, s.console, peer="c:late")
    assert late.paused  # a client attached while congested starts paused
    s.type(b"1")
    s.type(b"2")
    assert s.src_vm.sent == b""
    s.rig.hub.vm_congested(s.src, False)
    assert s.src_vm.of("send") == [("send", b"12")]
    assert not s.viewer.paused and not late.paused
    s.type(b"3")
    assert s.src_vm.sent == b"123"


def test_congestion_of_a_non_active_connection_is_ignored() -> None:
    s = scene()
    cookie = pending(s)
    dst, _ = peer(s.rig, cookie)
    s.rig.hub.vm_congested(dst, True)
    assert not s.viewer.paused


def test_congestion_does_not_flush_during_a_vmotion() -> None:
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    pending(s)
    s.type(b"after goahead")
    s.rig.hub.vm_congested(s.src, False)
    assert s.src_vm.sent == b""


def test_hold_overflow_drops_oldest_and_counts() -> None:
    s = scene(hold_limit=8)
    pending(s)
    s.type(b"0123")
    s.type(b"456789")
    assert s.console.counters.input_dropped == 2
    assert s.console.hold.dropped == 2
    s.rig.hub.vm_event(s.src, vm.VMotionAbort())
    assert s.src_vm.sent == b"23456789"


def test_replacing_a_congested_connection_resumes_clients() -> None:
    # A half-open old connection stuck above its high-water mark is replaced (TV-27,
    # F11): clients paused for it must be read again, or the console wedges.
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    assert s.viewer.paused
    _, new_vm = connect(s.rig, peer="esx-a:2")
    assert not s.viewer.paused
    s.type(b"x")
    assert new_vm.sent == b"x"


def test_closing_a_congested_connection_resumes_clients() -> None:
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    s.rig.hub.vm_closed(s.src)
    assert not s.viewer.paused


def test_complete_from_a_congested_source_resumes_clients() -> None:
    s = scene()
    s.rig.hub.vm_congested(s.src, True)
    _, dst, dst_vm = peered(s)
    s.type(b"k")
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert not s.viewer.paused
    assert dst_vm.sent == b"k"


def test_complete_onto_a_congested_destination_pauses_clients() -> None:
    s = scene()
    _, dst, dst_vm = peered(s)
    s.rig.hub.vm_congested(dst, True)  # not active yet: ignored for now
    assert not s.viewer.paused
    s.type(b"k")
    s.rig.hub.vm_event(dst, vm.VMotionComplete(SEQ))
    assert s.viewer.paused
    assert dst_vm.sent == b""
    s.rig.hub.vm_congested(dst, False)
    assert not s.viewer.paused
    assert dst_vm.sent == b"k"


# ------------------------------------------------------------------- find, describe


def test_find_by_names_uuid_forms_and_port() -> None:
    rig = make_rig()
    plain = console_of(connect(rig, name="db01")[0])
    labelled = console_of(connect(rig, uri="vSPC.py?port=c2", name="db01", peer="esx-a:2")[0])
    other = console_of(connect(rig, uuid=U2, name="web02", peer="esx-b:3")[0])
    assert rig.hub.find("db01") is plain  # display name beats VM name
    assert rig.hub.find("db01_c2") is labelled
    assert rig.hub.find(f"{U1}_c2") is labelled  # key string
    assert rig.hub.find("web02") is other
    for form in (vm.wire_uuid(U1), vm.display_uuid(U1), U1, U1.upper()):
        assert rig.hub.find(form) is plain  # the unlabelled console wins
    assert rig.hub.find(vm.display_uuid(U2)) is other
    assert rig.hub.find(str(other.port)) is other
    for spec in ("nope", "9999", "0123"):
        with pytest.raises(HubError) as err:
            rig.hub.find(spec)
        assert err.value.code == "vm_not_found"


def test_find_ambiguous() -> None:
    rig = make_rig()
    connect(rig, uri="vSPC.py?port=a", name="app", peer="esx-a:1")
    connect(rig, uri="vSPC.py?port=b", name="app", peer="esx-a:2")
    for spec in ("app", U1, vm.display_uuid(U1)):
        with pytest.raises(HubError) as err:
            rig.hub.find(spec)
        assert err.value.code == "ambiguous_vm"
        assert "app_a, app_b" in str(err.value)
    assert rig.hub.find("app_b").key == ConsoleKey(U1, "b")


def test_describe_fields() -> None:
    s = scene()
    writer, _ = attach(s.rig, s.console, lock=LockMode.WRITE, peer="c:w")
    row = describe(s.rig.hub, s.console)
    assert row == {
        "name": "vm01",
        "vm_name": "vm01",
        "uuid": "01234567-89ab-cdef-fedc-ba9800000000",
        "key": U1,
        "label": "",
        "port": 7000,
        "connected": True,
        "clients": 2,
        "vmotion": "normal",
        "expires_in": None,
        "lock": "write",
        "lock_holder": {
            "id": writer.ident,
            "kind": "telnet",
            "peer": "c:w",
            "uid": None,
            "user": None,
            "mode": "write",
            "readonly": False,
            "since": s.rig.clock.now,
        },
    }
    peered(s)
    assert describe(s.rig.hub, s.console)["vmotion"] == "peered"


def test_consoles_are_listed_in_key_order() -> None:
    rig = make_rig()
    connect(rig, uuid=U2, peer="esx-a:1")
    connect(rig, uuid=U1, uri="vSPC.py?port=b", peer="esx-a:2")
    connect(rig, uuid=U1, peer="esx-a:3")
    assert [c.key for c in rig.hub.consoles()] == [
        ConsoleKey(U2),  # "0011..." < "0123..."
        ConsoleKey(U1),
        ConsoleKey(U1, "b"),
    ]


# ---------------------------------------------------------------------- observers


def test_observers_see_the_lifecycle() -> None:
    rig = make_rig(vm_expire_time=10.0, secrets=(b"s1", b"s2"))
    src, src_vm = connect(rig)
    console = console_of(src)
    client, _ = attach(rig, console, lock=LockMode.WRITE)
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
    assert rig.names() == [
        "vm_connected",
        "client_attached",
        "lock_changed",
        "vmotion_notnow",
        "vmotion_begin",
        "vmotion_peer",
        "vmotion_complete",
        "vmotion_begin",
        "vmotion_abort",
        "client_detached",
        "lock_changed",
        "vm_disconnected",
        "vm_expired",
    ]
    assert all(fields["key"] == U1 for _, fields in rig.events)


def test_raising_observer_is_removed_and_the_hub_carries_on() -> None:
    rig = make_rig()
    calls: list[str] = []

    def broken(name: str, fields: dict[str, Any]) -> None:
        calls.append(name)
        raise RuntimeError("client went away")

    rig.hub.subscribe(fields_observer(broken))
    conn, _ = connect(rig)
    attach(rig, console_of(conn))
    assert calls == ["vm_connected"]
    assert rig.names() == ["vm_connected", "client_attached"]


def test_unsubscribe() -> None:
    rig = make_rig()
    seen: list[str] = []
    unsubscribe = rig.hub.subscribe(fields_observer(lambda name, fields: seen.append(name)))
    unsubscribe()
    unsubscribe()  # twice is harmless
    connect(rig)
    assert seen == []


def test_close_all_closes_everything_and_cancels_timers() -> None:
    s = scene()
    pending(s)
    s.rig.hub.vm_closed(s.src)
    other, other_vm = connect(s.rig, uuid=U2, peer="esx-b:1")
    s.rig.hub.close_all()
    assert s.viewer.calls[-2:] == [("notify", "vspcd is shutting down"), ("close",)]
    assert other_vm.closed
    assert s.rig.sched.pending() == []


def test_vm_name_after_the_announcement_is_a_rename_once() -> None:
    rig = make_rig()
    conn, _ = connect(rig, name="db01")
    assert rig.names() == ["vm_connected"]  # the first name is no rename
    rig.hub.vm_event(conn, VmNamed("db01"))  # unchanged: no event
    rig.hub.vm_event(conn, VmNamed("db02"))
    rig.hub.vm_event(conn, VmNamed("db02"))
    assert rig.events[1:] == [("vm_renamed", {"name": "db02", "key": U1, "vm_name": "db02"})]


# ------------------------------------------------------------- drop (cluster mode)


def test_drop_forgets_a_console_mid_vmotion_and_frees_its_port() -> None:
    """Cluster reconciliation: another node won this console; it goes at once."""
    rig = make_rig()
    conn, fake = connect(rig)
    console = console_of(conn)
    port = console.port
    _, client = attach(rig, console)
    rig.hub.vm_event(conn, vm.VMotionBegin(SEQ))
    cookie = SEQ + SECRET
    assert rig.hub.has_cookie(cookie) and rig.hub.cookie_of(console.key) == cookie
    rig.hub.drop(console, "console moved to node b")
    assert rig.hub.console(console.key) is None
    assert not rig.hub.has_cookie(cookie)
    assert fake.closed and client.closed
    assert "console moved to node b" in client.notes
    assert port is not None and port in rig.ports.released
    assert rig.names()[-1] == "vm_expired"  # ConsoleExpired, as admin names it
    rig.hub.vm_closed(conn)  # its link reports the close later: nothing happens
    assert rig.hub.console(console.key) is None


def test_key_for_uses_the_label_rules() -> None:
    rig = make_rig(multi_console=True)
    assert str(rig.hub.key_for(proxy("vSPC.py?port=a"), U1)) == f"{U1}_a"
    assert str(rig.hub.key_for(proxy("telnet://x"), U1)) == f"{U1}_telnet://x"
