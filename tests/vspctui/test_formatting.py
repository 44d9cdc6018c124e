"""vspctui/formatting.py: one rendering of durations, people and tables, safe whatever
a VM names itself (docs/vspc.md, "Output is safe to print")."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vspc.common.admin import ClientInfo, ClientKind, ConsoleInfo, LockMode
from vspc.vspctui.formatting import (
    LIST_HEADERS,
    duration,
    format_console,
    format_table,
    list_rows,
    who,
)


def test_duration_full_and_coarse() -> None:
    assert [duration(s) for s in (None, 0, 59, 61, 3725, 90061)] == [
        "-", "0s", "59s", "1m01s", "1h02m", "1d01h"
    ]  # fmt: skip
    assert [duration(s, coarse=True) for s in (59, 61, 3725, 90061)] == ["59s", "1m", "1h", "1d"]
    assert duration(-5) == "0s"  # a clock step backwards is not a negative age


def client(**fields: object) -> ClientInfo:
    base: dict[str, object] = {
        "id": 3, "kind": ClientKind.TELNET, "peer": "127.0.0.1:5000", "mode": LockMode.WRITE,
        "readonly": False, "since": 0.0, "uid": None, "user": None,
    }  # fmt: skip
    base.update(fields)
    return ClientInfo(**base)  # type: ignore[arg-type]


def test_who_prefers_the_user_then_the_uid_then_the_address() -> None:
    assert who(None) == "-"
    assert who(client(user="alice", uid=1000)) == "alice"
    assert who(client(uid=1000)) == "uid 1000"
    assert who(client(peer="10.0.0.1:\x1b[2J")) == "10.0.0.1:\\x1b[2J"


hostile = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(st.lists(hostile, min_size=1, max_size=5), hostile)
def test_list_has_one_line_per_console_and_no_control_character(
    names: list[str], label: str
) -> None:
    consoles = [
        ConsoleInfo(key=f"{i:032x}", name=name, uuid=label, port=50000 + i)
        for i, name in enumerate(names)
    ]
    text = format_table(LIST_HEADERS, list_rows(consoles))
    lines = text.split("\n")
    assert len(lines) == 1 + len(names)
    assert all(char.isprintable() for char in text.replace("\n", ""))
    shown = format_console(consoles[0])
    assert all(char.isprintable() for char in shown.replace("\n", ""))
    plain = format_console(ConsoleInfo(key="0" * 32, name="x", uuid="u", port=50000))
    assert shown.count("\n") == plain.count("\n")  # no field added a line
