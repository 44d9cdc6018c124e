"""vspc-tui's views, headless: `keypress(size, key)` in, `render(size).text` out."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import urwid

from vspc.common.admin import ClientInfo, ClientKind, ConsoleInfo, LockMode, VMotionPhase
from vspc.common.display import safe
from vspc.vspctui.dashboard.keys import KEYS, Binding, Command, KeyContext, help_text, hints, lookup
from vspc.vspctui.dashboard.model import LogEntry
from vspc.vspctui.dashboard.overlays import ClientPicker, HelpView, LockPicker, PromptDialog
from vspc.vspctui.dashboard.views import (
    ConsoleList,
    EventLog,
    GridView,
    StatusBar,
    TailPane,
    console_row,
    detail_lines,
    screen_lines,
)

DB01 = ConsoleInfo(key="k1", name="db01", uuid="u1", port=50000, connected=True, clients=2)
WEB02 = ConsoleInfo(key="k2", name="web02", uuid="u2", port=50001, vmotion=VMotionPhase.PENDING)
OLD = ConsoleInfo(key="k3", name="old", uuid="u3", expires_in=7300.0)


def text(widget: urwid.Widget, size: tuple[int] | tuple[int, int]) -> list[str]:
    return [row.decode().rstrip() for row in widget.render(size, focus=True).text]


def test_console_list_renders_rows_and_emits_attach_on_enter() -> None:
    view, attached, focused = ConsoleList(), [], []
    urwid.connect_signal(view, "attach", attached.append)
    urwid.connect_signal(view, "focus", focused.append)
    view.show([DB01, WEB02, OLD], following={"k2"})
    rows = text(view, (60, 5))
    assert rows[0].split() == ["NAME", "PORT", "VM", "CL", "LOCK"]
    assert rows[1].split() == ["db01", "50000", "up", "2", "-"]
    assert rows[2].split() == ["*", "web02", "50001", "vmotion", "0", "-"]
    assert rows[3].split() == ["old", "-", "down", "2h", "0", "-"]
    assert focused == [DB01]  # the first row takes the focus
    view.keypress((60, 5), "down")
    assert focused == [DB01, WEB02]
    view.keypress((60, 5), "enter")
    assert attached == [WEB02]


def test_console_list_keeps_focus_on_the_same_console_across_updates() -> None:
    view, focused = ConsoleList(), []
    urwid.connect_signal(view, "focus", focused.append)
    view.show([DB01, WEB02])
    view.move(1)
    view.show([OLD, DB01, WEB02])  # a new console sorts first
    assert view.focused == WEB02
    view.show([DB01])  # the focused console went away
    assert view.focused == DB01
    view.move(-5)
    assert focused == [DB01, WEB02, DB01]
    view.show([], empty="no console matches 'x'")
    assert view.focused is None
    assert text(view, (40, 3))[1] == "no console matches 'x'"
    view.keypress((40, 3), "enter")  # nothing to attach to: no signal, no error


def test_console_row_shows_the_lock_holder() -> None:
    alice = ClientInfo(3, ClientKind.ATTACH, "unix", LockMode.WRITE, False, 1.0, 1000, "alice")
    row = console_row(
        ConsoleInfo(key="k", name="db01", uuid="u", lock=LockMode.WRITE, lock_holder=alice)
    )
    assert row.split()[-2:] == ["write", "(alice)"]


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"login: \r\n", ["login: ", ""]),
        (b"\x1b[1;31mred\x1b[0m plain", ["red plain"]),
        (b"\x1b]0;title\x07after", ["after"]),
        (b"10%\r99%", ["99%"]),
        (b"ab\bc", ["ac"]),
        (b"a\tb", ["a       b"]),
        (b"bell\x07nul\x00del\x7f", ["bellnuldel"]),
        (b"\x01\x1b", ["^A"]),  # a lone ESC at the end is the start of a sequence
        (b"\x1b[12", [""]),
        (b"caf\xc3\xa9 \xff", ["caf\u00e9 \ufffd"]),
        (b"\xc2\x9b31m", ["31m"]),  # C1 CSI as UTF-8: dropped, never reaches the terminal
    ],
)
def test_screen_lines_never_pass_control_characters(data: bytes, lines: list[str]) -> None:
    assert screen_lines(data) == lines


def test_screen_lines_limit_and_safe() -> None:
    assert screen_lines(b"1\n2\n3\n4", limit=2) == ["3", "4"]
    # Names are rendered by the shared `vspc.common.display.safe`: a hostile console
    # name reaches the screen as inert, visible text (no ESC, no CSI, one line).
    assert safe("web\x1b[2J\x9b") == "web\\x1b[2J\\x9b"
    assert safe("plain") == "plain"
    view = ConsoleList()
    view.show([ConsoleInfo(key="k", name="web\x1b[2J\x9b", uuid="u")])
    row = text(view, (60, 3))[1]
    assert row.split()[0] == "web\\x1b[2J\\x9b"
    assert "\x1b" not in row and "\x9b" not in row
    plain = ConsoleList()
    plain.show([ConsoleInfo(key="k", name="plain", uuid="u")])
    assert text(plain, (60, 3))[1].split()[0] == "plain"


def test_tail_pane_shows_the_last_lines_of_a_followed_console() -> None:
    pane = TailPane()
    pane.show("db01", b"".join(b"line %d\r\n" % i for i in range(10)), following=True)
    rows = text(pane, (30, 5))
    assert "tail: db01 (following)" in rows[0]
    assert [r.strip("│ ") for r in rows[1:4]] == ["line 8", "line 9", ""]
    pane.show("db01", b"", following=False)
    assert "press t" in "".join(text(pane, (80, 4)))
    pane.show(None, b"", following=False)
    assert text(pane, (20, 3))[0].startswith("┌")


def test_event_log_and_status_bar() -> None:
    log = EventLog()
    log.show([LogEntry(0.0, f"event {i}") for i in range(6)])
    rows = text(log, (30, 4))
    assert ["event 4" in rows[1], "event 5" in rows[2]] == [True, True]  # newest at the bottom
    bar = StatusBar()
    bar.show("cleared 2 client(s)", hints(KeyContext.DASHBOARD))
    assert text(bar, (80,)) == ["cleared 2 client(s)", hints(KeyContext.DASHBOARD)]


def test_help_view_is_generated_from_the_key_table() -> None:
    rows = text(HelpView(), (70, 40))
    body = "\n".join(rows)
    for line in help_text().splitlines():
        if line:
            assert line in body
    mini = (Binding("x", Command.QUIT, KeyContext.DASHBOARD, "leave now"),)
    assert any("x  leave now" in r for r in text(HelpView(mini), (40, 5)))


def test_key_table_lookup_and_hints() -> None:
    assert lookup(KeyContext.DASHBOARD, "j") is Command.DOWN
    assert lookup(KeyContext.DASHBOARD, "c") is Command.CLEAR
    assert lookup(KeyContext.DIALOG, "c") is None  # typed into the prompt instead
    assert lookup(KeyContext.HELP, "q") is Command.CANCEL
    assert hints(KeyContext.DIALOG) == "enter ok  esc cancel"
    # One command per (context, key): the table is unambiguous.
    pairs = [(b.context, b.key) for b in KEYS]
    assert len(pairs) == len(set(pairs))


def test_prompt_dialog_edits_and_reports_changes() -> None:
    dialog, changes = PromptDialog("clear", "Disconnect?", "reason: "), []
    urwid.connect_signal(dialog, "change", changes.append)
    for key in "ok":
        assert dialog.keypress((40,), key) is None
    assert dialog.keypress((40,), "enter") == "enter"  # left to the key table
    assert dialog.keypress((40,), "esc") == "esc"
    assert dialog.text == "ok" and changes == ["o", "ok"]
    assert any("reason: ok" in r for r in text(dialog, (40,)))


def test_lock_picker_moves_between_modes() -> None:
    picker = LockPicker("db01")
    assert picker.selected is LockMode.EXCLUSIVE
    picker.keypress((60,), "down")
    assert picker.selected is LockMode.WRITE
    picker.show(LockMode.FREE_FOR_ALL_OR_READONLY)
    assert picker.selected is LockMode.FREE_FOR_ALL_OR_READONLY
    assert picker.keypress((60,), "enter") == "enter"
    assert any("attach to db01" in r for r in text(picker, (60,)))


def test_docs_show_the_generated_key_table() -> None:
    doc = Path(__file__).resolve().parents[3] / "docs" / "vspc-tui.md"
    assert help_text() in doc.read_text(), "regenerate the key table in docs/vspc-tui.md"


# ===================================================================== activity, grid, detail, kick

ALICE = ClientInfo(3, ClientKind.ATTACH, "unix", LockMode.WRITE, False, 1000.0, 1000, "alice")
EVIL = ClientInfo(
    7, ClientKind.TELNET, "10.0.0.9:5", LockMode.FREE_FOR_ALL, True, 1000.0, None, "ev\x1b]0;x\x07"
)


def test_wide_list_shows_activity_and_stale_rows_never_say_up() -> None:
    view = ConsoleList()
    idle = {"k1": 75.0}
    view.show([DB01, WEB02], following={"k1"}, idle=idle.get)
    rows = text(view, (80, 4))
    assert rows[0].split() == ["NAME", "PORT", "VM", "CL", "ACT", "LOCK"]
    assert rows[1].split() == ["*", "db01", "50000", "up", "2", "1m", "-"]
    assert rows[2].split() == ["web02", "50001", "vmotion", "0", "-", "-"]
    view.show([DB01, WEB02], idle=idle.get, stale=True)
    assert [r.split()[2] for r in text(view, (80, 4))[1:3]] == ["?", "?"]


def test_console_list_builds_only_the_rows_on_screen() -> None:
    consoles = [ConsoleInfo(key=f"k{i:05d}", name=f"vm{i:05d}", uuid="u") for i in range(10_000)]
    keys = [c.key for c in consoles]
    lookup = {c.key: c for c in consoles}
    view = ConsoleList()
    view.show_keys(keys, lookup)
    assert text(view, (60, 4))[1].split()[0] == "vm00000"
    view.keypress((60, 4), "end")
    assert view.focused == consoles[-1]
    assert len(view._cache) < 20  # rows are made for what was drawn, not for all 10,000
    # A changed row with the same order: the same key list, a new lookup.
    lookup["k09999"] = ConsoleInfo(key="k09999", name="vm09999", uuid="u", clients=3)
    view.show_keys(keys, lookup)
    assert text(view, (60, 4))[-1].split()[:4] == ["vm09999", "-", "down", "3"]
    # A new order keeps the focus on the same console.
    view.show_keys(list(reversed(keys)), lookup)
    assert view.focused is not None and view.focused.key == "k09999"


def test_console_names_and_users_are_shown_inert() -> None:
    evil = ConsoleInfo(
        key="k", name="evil\nFAKE\x1b[2J", uuid="u", lock=LockMode.WRITE, lock_holder=EVIL
    )
    row = console_row(evil)
    assert "\n" not in row and "\x1b" not in row and "\x07" not in row
    assert "evil\\nFAKE\\x1b[2J" in row and "ev\\x1b]0;x\\x07" in row


def test_tail_pane_live_following_and_message() -> None:
    pane = TailPane()
    pane.show("db01", b"out\r\n", following=False, live=True)
    assert "tail: db01 (live)" in text(pane, (40, 4))[0]
    pane.show("db01", b"out\r\n", following=False, message="not connected to vspcd")
    rows = text(pane, (40, 4))
    assert "not connected to vspcd" in rows[1] and "out" not in "".join(rows)


def test_grid_fits_the_terminal_and_shows_tails() -> None:
    grid, resized = GridView(), []
    urwid.connect_signal(grid, "resized", lambda: resized.append(grid.capacity))
    assert GridView.layout((80, 15)) == (2, 2) and GridView.layout((200, 40)) == (3, 3)
    grid.show("grid: test", [("db01", b"one\r\ntwo\r\n"), ("w\x1b", b"three")])
    rows = text(grid, (80, 15))
    assert resized == []  # 2x2 from the start
    assert rows[0] == "grid: test"
    assert "db01" in rows[1] and "w\\x1b" in rows[1]
    assert "two" in "".join(rows) and "three" in "".join(rows)
    rows = text(grid, (200, 40))
    assert resized == [9] and "db01" in rows[1]


def test_detail_lines_from_show_and_optional_fields() -> None:
    console = ConsoleInfo(
        key="k1", name="db01", uuid="u1", port=50000, connected=True, clients=2,
        lock=LockMode.WRITE, lock_holder=ALICE, attached=(ALICE, EVIL), vm_peer="10.0.0.21:4",
        service_uri="vSPC.py", counters={"bytes_from_vm": 48211, "bytes_to_vm": 312, "vmotions": 2},
    )  # fmt: skip
    # Per-client bytes are typed `ClientInfo` fields, absent from older daemons.
    console = replace(console, attached=(replace(ALICE, bytes_in=9), EVIL))
    lines = detail_lines(console, now=1060.0, idle=5.0)
    body = "\n".join(lines)
    assert "up from 10.0.0.21:4" in body and "uri vSPC.py" in body
    assert "from VM 48211 B   to VM 312 B   vMotions 2" in body
    assert "active   5s ago" in body
    assert "lock     write held by client 3 (alice)" in body
    assert "clients  2" in body
    alice, evil = lines[-2], lines[-1]
    assert alice.startswith("  #3 attach alice write since ") and alice.endswith(
        "(1m)  in 9 B out - B"
    )
    assert "ev\\x1b]0;x\\x07" in evil and "read-only" in evil and "\x1b" not in evil
    assert f" since {time.strftime('%H:%M:%S', time.localtime(1000.0))} (1m)" in alice
    bare = detail_lines(ConsoleInfo(key="k", name="n", uuid="u"), now=0.0, idle=None)
    assert "traffic  (no counters from vspcd)" in bare and "active   -" in bare


def test_client_picker_and_status_connection() -> None:
    # Who a client is, as `vspc` says it: user name, else uid, else address.
    rows = text(ClientPicker("db01", [replace(ALICE, user=None), replace(EVIL, user=None)]), (60,))
    assert "uid 1000" in rows[3] and "10.0.0.9:5" in rows[4]
    picker = ClientPicker("db01", [ALICE, EVIL])
    assert picker.selected == ALICE
    picker.keypress((60,), "down")
    assert picker.selected == EVIL
    assert picker.keypress((60,), "enter") == "enter"  # left to the key table: confirm
    assert any("kick which client of db01?" in r for r in text(picker, (60,)))
    bar = StatusBar()
    bar.show("detached from db01", "hints", connection="not connected to vspcd")
    assert text(bar, (80,))[0] == "not connected to vspcd | detached from db01"
