"""vspc/common/convert.py: the option converters shared by vspcd and the vspc tools."""

from __future__ import annotations

import argparse
import ipaddress
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vspc.common import convert
from vspc.common.convert import ConversionError


def _rejects_cleanly(parse: object, text: str) -> None:
    """Any text is a value or a ConversionError: never another exception."""
    assert callable(parse)
    try:
        parse(text)
    except ConversionError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_conversion_error_is_what_argparse_and_callers_catch() -> None:
    assert issubclass(ConversionError, ValueError)
    assert issubclass(ConversionError, argparse.ArgumentTypeError)
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--n", type=convert.integer(1))
    with pytest.raises(argparse.ArgumentError, match="must be >= 1, got 0"):
        parser.parse_args(["--n", "0"])


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_integers_round_trip_within_bounds(value: int) -> None:
    parse = convert.integer(0, 1000)
    if 0 <= value <= 1000:
        assert parse(str(value)) == value
    else:
        with pytest.raises(ConversionError, match="between 0 and 1000"):
            parse(str(value))


@given(st.text(max_size=20))
def test_any_text_is_an_integer_or_a_clean_error(text: str) -> None:
    _rejects_cleanly(convert.integer(0), text)
    _rejects_cleanly(convert.port, text)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_seconds(value: float) -> None:
    positive = convert.seconds(positive=True)
    if math.isfinite(value) and value > 0:
        assert positive(repr(value)) == value
    else:
        with pytest.raises(ConversionError):
            positive(repr(value))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "not a number of seconds: 'x'"),
        ("nan", "not a finite number of seconds"),
        ("-1", "must be >= 0"),
    ],
)
def test_bad_seconds(text: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert.seconds(positive=False)(text)


def test_seconds_with_a_maximum() -> None:
    assert convert.seconds(positive=False, maximum=3600)("0") == 0
    with pytest.raises(ConversionError, match="between 0 and 3600"):
        convert.seconds(positive=False, maximum=3600)("3601")
    with pytest.raises(ConversionError, match="more than 0 and at most 3600"):
        convert.seconds(positive=True, maximum=3600)("0")


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "K", "M", "G"]))
def test_sizes_round_trip(number: int, unit: str) -> None:
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    assert convert.size(f"{number}{unit}") == number * factor
    assert convert.size(f"{number}{unit.lower()}ib" if unit else str(number)) == number * factor


@given(st.text(max_size=12))
def test_any_text_is_a_size_or_a_clean_error(text: str) -> None:
    _rejects_cleanly(convert.size, text)


def test_bad_size_message() -> None:
    with pytest.raises(ConversionError, match=r"not a size: '12Q' \(e.g. 4096, 64K, 10M\)"):
        convert.size("12Q")


@given(st.integers(min_value=0, max_value=0o777))
def test_octal_modes_round_trip(mode: int) -> None:
    assert convert.octal_mode(f"{mode:o}") == mode
    assert convert.octal_mode(f"0{mode:o}") == mode


@pytest.mark.parametrize(("text", "message"), [("0668", "not an octal"), ("7777", "out of range")])
def test_bad_octal_modes(text: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert.octal_mode(text)


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_address_port_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert convert.address_port(text) == (str(address), port)


@given(st.text(max_size=30))
def test_any_text_is_an_address_or_a_clean_error(text: str) -> None:
    _rejects_cleanly(convert.address_port, text)
    _rejects_cleanly(convert.host_port, text)
    _rejects_cleanly(convert.cidr_list, text)
    _rejects_cleanly(convert.shell_command, text)


def test_host_port() -> None:
    assert convert.host_port("node1.example:7000") == "node1.example:7000"
    for bad in ("node1", ":7000", "h:0", "h:70000", "h:x"):
        with pytest.raises(ConversionError, match="expected HOST:PORT"):
            convert.host_port(bad)


@given(st.lists(st.tuples(st.ip_addresses(), st.integers(0, 128)), min_size=1, max_size=4))
def test_cidr_lists_round_trip(
    pairs: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    networks = [
        ipaddress.ip_network(f"{address}/{min(bits, address.max_prefixlen)}", strict=False)
        for address, bits in pairs
    ]
    assert convert.cidr_list(",".join(map(str, networks))) == tuple(networks)


def test_bad_cidr_lists() -> None:
    with pytest.raises(ConversionError, match="'10.0.0.1/8' is not a network"):
        convert.cidr_list("10.0.0.0/8,10.0.0.1/8")
    with pytest.raises(ConversionError, match="empty allow list"):
        convert.cidr_list(" , ")


def test_choices_and_name_lists() -> None:
    loop = convert.choice(["auto", "asyncio"])
    assert loop("auto") == "auto"
    with pytest.raises(ConversionError, match=r"invalid choice: 'x' \(choose from auto, asyncio\)"):
        loop("x")
    events = convert.name_list(["a", "b"], what="event")
    assert events(" b, a,b ") == ("b", "a")
    with pytest.raises(ConversionError, match="unknown event 'c'"):
        events("a,c")
    with pytest.raises(ConversionError, match="unknown event ','"):
        events(",")


@pytest.mark.parametrize(
    ("text", "message"),
    [("'open", "No closing quotation"), ("  ", "empty command"), ("a\0b", "NUL")],
)
def test_bad_shell_commands(text: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert.shell_command(text)


def test_nonempty_and_word() -> None:
    assert convert.nonempty("x") == "x" and convert.word("") == ""
    with pytest.raises(ConversionError, match="must not be empty"):
        convert.nonempty(" ")
    with pytest.raises(ConversionError, match="must not contain '/'"):
        convert.word("a/b")
