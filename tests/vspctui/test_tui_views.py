"""vspc-tui's views, headless: `keypress(size, key)` in, `render(size).text` out."""

from __future__ import annotations

from pathlib import Path

import pytest
import urwid

from vspc.common.admin import ClientInfo, ClientKind, ConsoleInfo, LockMode, VMotionPhase
from vspc.vspctui.keys import KEYS, Binding, Command, KeyContext, help_text, hints, lookup
from vspc.vspctui.model import LogEntry
from vspc.vspctui.views import (
    ConsoleList,
    EventLog,
    HelpView,
    LockPicker,
    PromptDialog,
    StatusBar,
    TailPane,
    console_row,
    safe,
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
    assert safe("web\x1b[2J\x9b") == "web^[[2J<9b>"
    assert safe("plain") == "plain"


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
    doc = Path(__file__).resolve().parents[2] / "docs" / "vspc-tui.md"
    assert help_text() in doc.read_text(), "regenerate the key table in docs/vspc-tui.md"
