"""vspc-tui's model as plain data: snapshot, events, tail buffers, log, filter.

No urwid, no sockets: events are built with `Event.from_json` exactly as the client
decodes them from the wire (docs/admin-protocol.md, "Events").
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from vspc.common.admin import (
    ClientInfo,
    ClientKind,
    ConsoleInfo,
    Event,
    LockMode,
    VMotionPhase,
    encode_bytes,
)
from vspc.vspctui.dashboard.model import Model, SortOrder, describe

KEY = "0123456789abcdeffedcba9800000000"
UUID = "01234567-89ab-cdef-fedc-ba9800000000"
DB01 = ConsoleInfo(key=KEY, name="db01", uuid=UUID, vm_name="db01", port=50000, connected=True)
WEB02 = ConsoleInfo(key="89ab" * 8, name="web02", uuid="u2", port=50001, expires_in=60.0)
ALICE = ClientInfo(3, ClientKind.ATTACH, "unix", LockMode.WRITE, False, 1.0, 1000, "alice")
TELNET = ClientInfo(
    5, ClientKind.TELNET, "10.0.0.9:5", LockMode.FREE_FOR_ALL_OR_READONLY, False, 2.0
)


def event(name: str, key: str = KEY, display: str = "db01", **fields: Any) -> Event:
    return Event.from_json({"event": name, "key": key, "name": display, **fields})


def model(*consoles: ConsoleInfo, tail_limit: int = 64) -> Model:
    m = Model(clock=lambda: 1000.0, tail_limit=tail_limit)
    m.load(consoles or (DB01, WEB02))
    return m


def test_snapshot_then_visible_sorted_and_filtered() -> None:
    m = model()
    assert [c.name for c in m.visible()] == ["db01", "web02"]
    m.filter = "WEB"
    assert [c.name for c in m.visible()] == ["web02"]
    m.filter = "nothing"
    assert m.visible() == []


def test_vm_connected_adds_a_console_from_its_row_and_renamed_names_it() -> None:
    m = model(WEB02)
    row = ConsoleInfo(key=KEY, name=KEY, uuid=UUID, vm_name=KEY, port=50000, connected=True)
    m.apply(event("vm_connected", display=KEY, peer="10.0.0.21:4", console=row.to_json()))
    assert m.consoles[KEY].name == KEY and m.consoles[KEY].connected
    m.apply(event("vm_renamed", vm_name="db01"))
    assert (m.consoles[KEY].name, m.consoles[KEY].vm_name) == ("db01", "db01")
    assert [e.text for e in m.log] == [
        f"{KEY}: VM connected from 10.0.0.21:4",
        f"{KEY}: now called db01",
    ]
    assert m.log[0].when == 1000.0


def test_disconnect_vmotion_and_expiry() -> None:
    m = model()
    m.apply(event("vmotion_begin", peer="a:1"))
    assert m.consoles[KEY].vmotion is VMotionPhase.PENDING
    m.apply(event("vmotion_peer", peer="b:2"))
    assert m.consoles[KEY].vmotion is VMotionPhase.PEERED
    m.apply(event("vmotion_complete", peer="b:2"))
    assert m.consoles[KEY].vmotion is VMotionPhase.NORMAL
    m.apply(event("vmotion_begin", peer="b:2"))
    m.apply(event("vmotion_abort", reason="timeout"))
    assert m.consoles[KEY].vmotion is VMotionPhase.NORMAL
    m.apply(event("vm_disconnected", peer="b:2"))
    assert not m.consoles[KEY].connected
    m.start_following(KEY)
    m.apply(event("vm_expired", port=50000))
    assert KEY not in m.consoles and not m.following(KEY)
    assert m.log[-1].text == "db01: expired, forgotten"


def test_clients_and_locks() -> None:
    m = model()
    m.apply(event("client_attached", client=TELNET.to_json()))
    m.apply(event("client_attached", client=ALICE.to_json()))
    assert m.consoles[KEY].clients == 2
    m.apply(event("lock_changed", lock="write", holder=3))
    console = m.consoles[KEY]
    assert console.lock is LockMode.WRITE and console.lock_holder == ALICE
    # The holder leaves: the row stops naming it at once, before lock_changed.
    m.apply(event("client_detached", client=3))
    console = m.consoles[KEY]
    assert (console.clients, console.lock, console.lock_holder) == (1, None, None)
    m.apply(event("lock_changed", lock=None, holder=None))
    m.apply(event("client_detached", client=5, reason="disconnected by bob: maintenance"))
    assert m.consoles[KEY].attached == ()
    assert m.log[-1].text == "db01: client 5 detached: disconnected by bob: maintenance"


def test_attaching_client_clears_expiry() -> None:
    m = model()
    m.apply(event("client_attached", key=WEB02.key, display="web02", client=TELNET.to_json()))
    assert m.consoles[WEB02.key].expires_in is None


def test_events_about_unknown_consoles_and_unknown_events_change_nothing() -> None:
    m = model()
    before = dict(m.consoles)
    m.apply(event("client_attached", key="f" * 32, display="ghost", client=TELNET.to_json()))
    m.apply(event("from_the_future", answer=42))
    m.apply(event("lock_changed", lock="some_new_mode", holder=3))
    assert m.consoles == before  # (an unknown lock mode shows as no lock)
    assert [e.text for e in m.log][-2:] == [
        "db01: from_the_future",
        "db01: some_new_mode lock taken by client 3",
    ]


def test_tail_reply_goes_before_output_that_overtook_it() -> None:
    m = model()
    m.apply(event("output", data_b64=encode_bytes(b"not followed")))
    assert m.tail(KEY) == b""
    m.start_following(KEY)
    m.apply(event("output", data_b64=encode_bytes(b" world")))
    m.tail_started(KEY, b"hello")
    assert m.tail(KEY) == b"hello world"
    assert not any("output" in e.text for e in m.log)  # output is not an event-log line


def test_tail_buffer_is_bounded_and_tail_end_stops_it() -> None:
    m = model(tail_limit=8)
    m.start_following(KEY)
    m.tail_started(KEY, b"0123456789")
    assert m.tail(KEY) == b"23456789"
    m.apply(event("output", data_b64=encode_bytes(b"ab")))
    assert m.tail(KEY) == b"456789ab"
    m.apply(event("tail_end", reason="console expired"))
    assert not m.following(KEY)
    m.tail_started(KEY, b"late reply")  # the request raced the end: ignored
    assert not m.following(KEY)


def test_log_is_bounded() -> None:
    m = Model(log_limit=3)
    for i in range(5):
        m.note(str(i))
    assert [e.text for e in m.log] == ["2", "3", "4"]


@pytest.mark.parametrize(
    ("name", "fields", "text"),
    [
        ("vmotion_notnow", {"reason": "busy"}, "db01: vMotion refused: busy"),
        (
            "lock_changed",
            {"lock": "exclusive", "holder": 7},
            "db01: exclusive lock taken by client 7",
        ),
        ("client_attached", {"client": ALICE.to_json()}, "db01: client 3 (attach, alice) attached"),
        ("tail_end", {"reason": "console expired"}, "db01: tail ended: console expired"),
    ],
)
def test_describe(name: str, fields: dict[str, Any], text: str) -> None:
    assert describe(event(name, **fields)) == text


# ===================================================================== activity, grid, detail


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def test_activity_from_output_events_and_daemon_rows() -> None:
    clock = Clock()
    m = Model(clock=clock)
    # A daemon that says when a console last printed (`last_output`; older daemons do not).
    m.load([replace(DB01, last_output=clock.now - 30), WEB02])
    assert m.idle(KEY) == 30.0 and m.idle(WEB02.key) is None
    clock.now += 5
    m.start_following(WEB02.key)
    m.apply(event("output", WEB02.key, "web02", data_b64=encode_bytes(b"x")))
    assert m.idle(WEB02.key) == 0.0 and m.idle(KEY) == 35.0
    assert m.most_active(1) == [WEB02.key] and m.most_active(5) == [WEB02.key, KEY]
    # Events about a console count as activity; lock changes (operators') do not.
    clock.now += 10
    m.apply(event("lock_changed", lock="write", holder=3))
    assert m.idle(KEY) == 45.0
    m.apply(event("vm_disconnected", peer="10.0.0.1:1"))
    assert m.idle(KEY) == 0.0
    m.touch(WEB02.key)
    assert m.idle(WEB02.key) == 0.0


def test_activity_from_list_and_show_replies_never_goes_back() -> None:
    clock = Clock()
    m = Model(clock=clock)
    m.load([DB01, WEB02])  # an older daemon: no `last_output`, nothing known yet
    assert m.idle(KEY) is None
    m.learn([replace(DB01, last_output=clock.now - 10)])
    assert m.idle(KEY) == 10.0
    # An older figure (a `list` answered before the output event we saw) never
    # moves the activity back; consoles we do not know are ignored.
    m.touch(KEY)
    m.learn([replace(DB01, last_output=clock.now - 60), replace(DB01, key="x", last_output=1.0)])
    assert m.idle(KEY) == 0.0 and "x" not in m.activity


def test_log_lines_are_inert() -> None:
    # A VM names itself and the daemon relays reasons: the log holds them escaped.
    m = Model(clock=Clock())
    m.apply(event("vmotion_abort", display="evil\x1b]0;x\x07", reason="a\nFAKE"))
    m.note("lost vspcd: \x1b[2J")
    assert [e.text for e in m.log] == [
        "evil\\x1b]0;x\\x07: vMotion aborted: a\\nFAKE",
        "lost vspcd: \\x1b[2J",
    ]


def test_sort_orders_and_the_cached_order() -> None:
    clock = Clock()
    m = Model(clock=clock)
    a = ConsoleInfo(key="a", name="alpha", uuid="u", port=50002)
    b = ConsoleInfo(key="b", name="beta", uuid="u", port=50001)
    c = ConsoleInfo(key="c", name="gamma", uuid="u", port=None)
    m.load([c, b, a])
    keys = m.visible_keys()
    assert keys == ["a", "b", "c"] and m.visible_keys() is keys  # unchanged: same object
    m.start_following("c")
    m.apply(event("output", "c", "gamma", data_b64=encode_bytes(b"x")))
    assert m.visible_keys() is keys  # output changes no order by name
    assert m.sort is SortOrder.NAME and m.sort.next() is SortOrder.ACTIVITY
    m.sort = SortOrder.ACTIVITY
    assert m.visible_keys() == ["c", "a", "b"]  # active first, then by name
    clock.now += 1
    m.start_following("b")
    m.apply(event("output", "b", "beta", data_b64=encode_bytes(b"x")))
    assert m.visible_keys() == ["c", "a", "b"]  # re-sorted once a tick, not per event
    m.reorder()
    assert m.visible_keys() == ["b", "c", "a"]
    m.sort = SortOrder.PORT
    assert m.visible_keys() == ["b", "a", "c"]  # no port last
    assert SortOrder.PORT.next() is SortOrder.NAME
    m.filter = "a"
    assert m.visible_keys() == ["b", "a", "c"]
    m.filter = "gam"
    assert m.visible_keys() == ["c"]
    m.apply(event("vm_expired", "c", "gamma", port=None))
    assert m.visible_keys() == []


def test_disconnected_drops_tails_and_load_reconnects() -> None:
    m = model()
    m.start_following(KEY)
    m.pinned.add(KEY)
    m.pinned.add(WEB02.key)
    m.disconnected()
    assert not m.connected and m.tails == {}
    m.load([DB01])  # the fresh snapshot of a restarted daemon: web02 is gone
    assert m.connected and list(m.consoles) == [KEY] and m.pinned == {KEY}


def test_a_console_alert_marks_the_console_and_is_logged() -> None:
    from vspc.vspctui.dashboard.views import console_row

    m = model()
    alert = event(
        "console_alert",
        alert="kernel_panic",
        severity="critical",
        line="Kernel panic - not syncing: \x1b[31mboom",
        context=[],
        time=1.0,
    )
    m.apply(alert)
    assert m.alerts == {KEY: "kernel_panic"}
    assert describe(alert) == (
        "db01: ALERT kernel_panic (critical): Kernel panic - not syncing: \\x1b[31mboom"
    )
    assert console_row(DB01, alerted=True).startswith(" !db01 ")
    assert console_row(DB01).startswith("  db01 ")
    m.apply(event("vm_expired", port=50000))
    assert m.alerts == {}


def test_alerts_are_kept_for_the_detail_and_acknowledged() -> None:
    from vspc.vspctui.dashboard.model import ALERTS_PER_CONSOLE
    from vspc.vspctui.dashboard.views import detail_lines

    m = model()
    for n in range(ALERTS_PER_CONSOLE + 2):
        m.apply(event("console_alert", alert=f"r{n}", severity="warning", line=f"L{n}", time=n))
    seen = m.alert_log[KEY]
    assert [a.alert for a in seen] == [f"r{n}" for n in range(2, ALERTS_PER_CONSOLE + 2)]
    m.acknowledge_alerts()
    assert m.alerts == {} and len(m.alert_log[KEY]) == ALERTS_PER_CONSOLE  # the marks go
    lines = detail_lines(DB01, 100.0, None, [(40.0, "oom_kill", "warning", "Out of \x1b[1m")])
    assert lines[-2].startswith("alerts   1 seen")
    assert lines[-1] == "  1m ago  oom_kill (warning): Out of \\x1b[1m"
    m.apply(event("vm_expired", port=50000))
    assert KEY not in m.alert_log
