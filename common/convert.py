"""Converters from option text to values, shared by vspcd and the vspc tools.

Sans-IO and stdlib only: each converter is a function ``str -> value`` that raises
`ConversionError` with a message naming what is wrong (``not a size: '12Q'``), never
the flag: the caller knows which flag or configuration key it is converting and
prefixes that (vspcd/service/flags.py does, for the command line and the TOML file).

`ConversionError` is both a `ValueError` and an `argparse.ArgumentTypeError`, so a
converter can be passed as an argparse ``type=`` as it is and argparse shows its
message rather than a generic "invalid value".

Every converter has a ``__name__`` argparse can use in messages, and none of them
touches the file system or the network: whether a path exists or a group resolves
is checked where it is used.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import shlex
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = [
    "ConversionError",
    "address_port",
    "choice",
    "cidr_list",
    "host_port",
    "integer",
    "name_list",
    "nonempty",
    "octal_mode",
    "port",
    "seconds",
    "shell_command",
    "size",
    "word",
]

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConversionError(ValueError, argparse.ArgumentTypeError):
    """The text is not a value of the wanted kind; the message says why."""


def _named(name: str, convert: Callable[[str], T]) -> Callable[[str], T]:
    convert.__name__ = name  # argparse puts this name in "invalid <name> value"
    return convert


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """Decimal integers in ``low..high`` (no upper bound when `high` is None)."""

    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ConversionError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConversionError(f"must be {bound}, got {value}")
        return value

    return _named("integer", convert)


port = _named("port", integer(0, 65535))


def seconds(*, positive: bool, maximum: float | None = None) -> Callable[[str], float]:
    """A finite number of seconds: > 0 if `positive`, else >= 0; at most `maximum`."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConversionError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value):
            raise ConversionError(f"not a finite number of seconds: {text!r}")
        too_low = value <= 0 if positive else value < 0
        if maximum is not None and (too_low or value > maximum):
            bound = "more than 0 and at most" if positive else "between 0 and"
            raise ConversionError(f"must be {bound} {maximum:g}, got {text!r}")
        if too_low:
            raise ConversionError(f"must be {'> 0' if positive else '>= 0'}, got {text!r}")
        return value

    return _named("seconds", convert)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """`4096`, `64K`, `10M`, `1G` (binary units, any case, optional `B`/`iB`) -> bytes."""
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in ("K", "M", "G") else ""
    number = body[: len(body) - len(unit)]
    try:
        value = int(number, 10)
    except ValueError:
        raise ConversionError(f"not a size: {text!r} (e.g. 4096, 64K, 10M)") from None
    if value < 0:
        raise ConversionError(f"must be >= 0, got {text!r}")
    return value * _UNITS[unit]


size = _named("size", _size)


def _octal_mode(text: str) -> int:
    # vSPC.py-era configs wrote modes like "0660"; int("0660") would be decimal 660,
    # so the base is fixed at 8.
    try:
        value = int(text, 8)
    except ValueError:
        raise ConversionError(f"not an octal file mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise ConversionError(f"file mode out of range 0..0777: {text!r}")
    return value


octal_mode = _named("octal mode", _octal_mode)


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ConversionError("must not be empty")
    return text


nonempty = _named("text", _nonempty)


def _word(text: str) -> str:
    if "/" in text or "\0" in text:
        raise ConversionError(f"must not contain '/' or NUL: {text!r}")
    return text


word = _named("file name part", _word)


def _address_port(text: str) -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[IPV6]:PORT` -> (address, port); a bare port means
    127.0.0.1 (a listener is loopback unless an address is given)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port_text, 10)
    except ValueError:
        raise ConversionError(f"not [ADDR:]PORT: {text!r}") from None
    if not 0 <= number <= 65535:
        raise ConversionError(f"port out of range: {number}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise ConversionError(f"not an address: {host!r}") from None
    return host, number


address_port = _named("address", _address_port)


def _host_port(text: str) -> str:
    """`HOST:PORT` with a port 1-65535, kept as written."""
    host, sep, number = text.rpartition(":")
    if not sep or not host or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise ConversionError(f"{text!r}: expected HOST:PORT with a port 1-65535")
    return text


host_port = _named("HOST:PORT", _host_port)


def _cidr_list(text: str) -> tuple[Network, ...]:
    """ "CIDR,CIDR,..." (a bare address is that one host); host bits set are an error
    ("10.0.0.1/8" is more likely a typo than a wish to allow the whole network)."""
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ConversionError(f"{entry!r} is not a network in CIDR notation ({exc})") from None
    if not networks:
        raise ConversionError("empty allow list (give at least one CIDR, e.g. 10.0.0.0/24)")
    return tuple(networks)


cidr_list = _named("allow list", _cidr_list)


def choice(options: Iterable[str]) -> Callable[[str], str]:
    """One of `options`, spelled exactly."""
    allowed = tuple(options)

    def convert(text: str) -> str:
        if text not in allowed:
            raise ConversionError(f"invalid choice: {text!r} (choose from {', '.join(allowed)})")
        return text

    return _named("choice", convert)


def name_list(options: Iterable[str], *, what: str = "name") -> Callable[[str], tuple[str, ...]]:
    """A comma-separated, non-empty list of `options` (duplicates dropped, order kept)."""
    allowed = tuple(options)

    def convert(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise ConversionError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)} "
                f"(choose from {', '.join(allowed)})"
            )
        return names

    return _named(f"{what} list", convert)


def _shell_command(text: str) -> str:
    """A command line `shlex` can split into at least one word, kept as written."""
    if "\0" in text:
        raise ConversionError("must not contain NUL")
    try:
        words = shlex.split(text)
    except ValueError as exc:  # "No closing quotation"
        raise ConversionError(f"{exc}: {text!r}") from None
    if not words:
        raise ConversionError("empty command")
    return text


shell_command = _named("command", _shell_command)
