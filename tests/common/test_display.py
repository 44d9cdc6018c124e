"""common/display.py: peer-controlled text is inert and visible (docs/vspc.md,
"Output is safe to print")."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vspc.common.display import safe, safe_bytes


def test_plain_names_unchanged() -> None:
    assert safe("web01") == "web01"
    assert safe("db 01 (prod)") == "db 01 (prod)"
    assert safe("Überserver-ß") == "Überserver-ß"


def test_newline_and_escape_sequences_are_made_visible() -> None:
    assert safe("evil\nFAKE-ROW") == "evil\\nFAKE-ROW"
    assert safe("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert safe("a\rb\tc\x7f\x9b") == "a\\rb\\tc\\x7f\\x9b"


def test_bidi_and_separators_are_escaped() -> None:
    assert safe("abc\u202edef") == "abc\\u202edef"
    assert safe("a\u2028b\u2029c") == "a\\u2028b\\u2029c"
    assert safe("\U000e0001") == "\\U000e0001"


def test_backslash_is_doubled_so_rendering_is_injective() -> None:
    assert safe("a\\nb") == "a\\\\nb"
    assert safe("a\\nb") != safe("a\nb")


def test_non_strings_are_converted() -> None:
    assert safe(42) == "42"
    assert safe(("1.2.3.4", 5)) == "('1.2.3.4', 5)"


def test_safe_bytes() -> None:
    assert safe_bytes(b"web\xff01\n") == "web\\xff01\\n"
    assert safe_bytes("é".encode()) == "é"
    assert safe_bytes(b"") == ""


@given(st.text())
def test_output_is_one_printable_line(text: str) -> None:
    out = safe(text)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    assert all(c.isprintable() for c in out)


@given(st.text(), st.text())
def test_injective(a: str, b: str) -> None:
    if a != b:
        assert safe(a) != safe(b)


@given(st.binary())
def test_safe_bytes_printable(data: bytes) -> None:
    assert all(c.isprintable() for c in safe_bytes(data))
