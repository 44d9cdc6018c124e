"""The `--socket PATH | --tcp HOST:PORT` options of every vspc client, defined once
(docs/vspc.md, "Which daemon").

`add_address_options` puts them on a parser; `address_from` turns the parsed options
into an `AdminAddress`, falling back to `vspc.common.paths.client_socket` (the one
discovery rule: $VSPC_SOCKET, `admin_socket` in $VSPC_CONFIG or
/etc/vspcd/vspcd.toml, then the per-user and system defaults).

`vspc` adds them to its top-level parser *and* to every subcommand (with
``suppress=True``, so a subcommand that was not given them leaves the top-level values
alone): ``vspc --socket X list`` and ``vspc list --socket X`` mean the same.  argparse's
mutually exclusive group cannot see across the two parsers, so `address_from` checks
that only one of them was given.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from vspc.common.paths import client_socket
from vspc.vspctui.client import AdminAddress

__all__ = ["ADDRESS_OPTIONS", "add_address_options", "address_from"]

# Options that take a value, for argv pre-scanning (vspc's `VM` shorthand).
ADDRESS_OPTIONS = ("--socket", "--tcp")

_SOCKET_HELP = (
    "vspcd's admin socket (default: $VSPC_SOCKET, else admin_socket in $VSPC_CONFIG or "
    "/etc/vspcd/vspcd.toml, else /run/vspcd/vspcd.sock or your own daemon's "
    "$XDG_RUNTIME_DIR/vspcd.sock)"
)


def add_address_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Add ``--socket`` and ``--tcp`` to `parser`.

    `suppress`: leave the namespace untouched when absent (for subcommand parsers).
    """
    default = argparse.SUPPRESS if suppress else None
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=default, help=_SOCKET_HELP)
    where.add_argument(
        "--tcp", metavar="HOST:PORT", default=default, help="use vspcd's TCP admin port instead"
    )


def address_from(
    namespace: argparse.Namespace, environ: Mapping[str, str], euid: int
) -> AdminAddress:
    """The admin address the parsed options name.

    Raises:
        ValueError: both options given, or --tcp is not HOST:PORT (the message says
            which).
    """
    socket = getattr(namespace, "socket", None)
    tcp = getattr(namespace, "tcp", None)
    if socket and tcp:
        raise ValueError("--socket and --tcp: give one of them, not both")
    if tcp:
        try:
            return AdminAddress.tcp(tcp)
        except ValueError as exc:
            raise ValueError(f"--tcp: {exc}") from None
    return AdminAddress(path=str(socket or client_socket(environ, euid)))
