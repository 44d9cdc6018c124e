"""Human-facing text of vspc and vspc-tui: durations, who a client is, tables, console
details and event lines -- one definition of each, shared by both tools.

Every string a VM or a peer controls (console and VM names, labels, UUIDs, addresses,
user names, reasons, error messages) goes through `vspc.common.display.safe` on its way
out of here (docs/vspc.md, "Output is safe to print"): a VM named ``"evil\\nFAKE-ROW"`` shows
as one cell ``evil\\nFAKE-ROW``, never as a forged row, and ESC/OSC sequences show as
``\\x1b`` instead of acting on the terminal.  Tables apply it to every cell, so a row
builder cannot forget it.  JSON output (`--json`) never comes here; it stays exact.

Pure functions of their arguments (and, for `since`, the local time zone): views.py and
model.py can use them as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vspc.common.admin import ClientInfo, ConsoleInfo, Event, Stats
from vspc.common.display import safe

__all__ = [
    "format_stats",
    "CLIENT_HEADERS",
    "LIST_HEADERS",
    "client_rows",
    "cluster_problems",
    "duration",
    "event_line",
    "format_console",
    "format_table",
    "list_rows",
    "lock_text",
    "safe",
    "since",
    "who",
]


def duration(seconds: float | None, *, coarse: bool = False) -> str:
    """`seconds` as ``45s``, ``3m07s``, ``2h05m``, ``1d03h``; None as ``-``.

    `coarse` keeps the largest unit only (``3m``, ``2h``, ``1d``), for narrow columns.
    """
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):  # fmt: skip
        if whole >= size:
            if coarse:
                return f"{whole // size}{unit}"
            return f"{whole // size}{unit}{whole % size // sub_size:02d}{sub}"
    return f"{whole}s"


def since(timestamp: float, *, time_only: bool = False) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``.

    `time_only` leaves the date out (``HH:MM:SS``), for lines that are about today:
    the dashboard's event log and client lines.
    """
    fmt = "%H:%M:%S" if time_only else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, time.localtime(timestamp))


def who(client: ClientInfo | None) -> str:
    """Who a client is, for people: its user name, else ``uid N``, else its address;
    ``-`` for nobody.  Safe to print."""
    if client is None:
        return "-"
    if client.user:
        return safe(client.user)
    return f"uid {client.uid}" if client.uid is not None else safe(client.peer)


def lock_text(console: ConsoleInfo) -> str:
    """``-``, or the lock mode and its holder: ``write(alice)``.  Safe to print."""
    if console.lock is None:
        return "-"
    return f"{console.lock.value}({who(console.lock_holder)})"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks.

    Every cell is rendered with `safe` here, so no cell can add a line or act on the
    terminal, whatever its row builder put in it.
    """
    table = [list(headers), *[[safe(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]  # fmt: skip
    return "\n".join(lines)


LIST_HEADERS = ("NAME", "PORT", "VM", "CLIENTS", "LOCK", "VMOTION", "EXPIRES", "UUID")


def list_rows(consoles: Iterable[ConsoleInfo]) -> list[tuple[str, ...]]:
    """Rows of `vspc list` under `LIST_HEADERS` (raw; `format_table` makes them safe)."""
    return [
        (
            c.name,
            "-" if c.port is None else str(c.port),
            "up" if c.connected else "down",
            str(c.clients),
            lock_text(c),
            c.vmotion.value,
            duration(c.expires_in),
            c.uuid,
        )
        for c in consoles
    ]


def cluster_problems(reply: Mapping[str, Any]) -> list[str]:
    """What a cluster-mode `list` reply says it could not list, one line each (safe).

    `cluster_error`: the registry could not be read, so only the answering node's
    consoles are there; `cluster_missing`: nodes that did not answer, whose consoles
    are not there (docs/cluster.md, "Any node answers").  Empty for a complete list.
    """
    lines = []
    error = reply.get("cluster_error")
    if error:
        lines.append(
            f"cluster registry unreadable, only this node's consoles listed: {safe(error)}"
        )
    missing = reply.get("cluster_missing")
    for node in missing if isinstance(missing, list) else []:
        lines.append(f"consoles of a node that did not answer are not listed: {safe(node)}")
    return lines


CLIENT_HEADERS = ("ID", "KIND", "USER", "PEER", "MODE", "WRITE", "SINCE")


def client_rows(clients: Iterable[ClientInfo]) -> list[tuple[str, ...]]:
    """Rows of a console's clients under `CLIENT_HEADERS` (raw, for `format_table`)."""
    return [
        (
            str(c.id),
            c.kind.value,
            c.user or ("-" if c.uid is None else str(c.uid)),
            c.peer,
            c.mode.value,
            "no" if c.readonly else "yes",
            since(c.since),
        )
        for c in clients
    ]


def _vm_state(console: ConsoleInfo) -> str:
    if console.connected and console.vm_peer:
        return f"connected from {console.vm_peer}"
    return "connected" if console.connected else "disconnected"


def format_console(console: ConsoleInfo) -> str:
    """`show` output: key/value lines, counters, then the clients table."""
    pairs = [
        ("name", console.name),
        ("vm name", console.vm_name or "-"),
        ("key", console.key),
        ("uuid", console.uuid),
        ("label", console.label or "-"),
        ("port", "-" if console.port is None else str(console.port)),
        ("vm", _vm_state(console)),
        ("service uri", console.service_uri or "-"),
        ("vmotion", console.vmotion.value),
        ("expires in", duration(console.expires_in)),
        ("lock", lock_text(console)),
    ]
    for name, value in sorted((console.counters or {}).items()):
        pairs.append((name.replace("_", " "), str(value)))
    safe_pairs = [(safe(name), safe(value)) for name, value in pairs]
    width = max(len(name) for name, _ in safe_pairs)
    text = "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in safe_pairs)
    if console.attached:
        text += "\n\n" + format_table(CLIENT_HEADERS, client_rows(console.attached))
    else:
        text += "\n\nno clients attached"
    return text


def _field_value(value: Any) -> str:
    # JSON with ensure_ascii: strings quoted, every control and non-ASCII character
    # escaped, so the value is printable ASCII whatever the daemon relayed.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def event_line(event: Event, stamp: str) -> str:
    """`vspc events` output: ``HH:MM:SS EVENT CONSOLE field=json ...``, safe to print."""
    extra = {k: v for k, v in event.fields.items() if k != "console"}
    detail = " ".join(f"{safe(k)}={_field_value(v)}" for k, v in extra.items())
    console = safe(event.name or event.key or "-")
    return f"{stamp} {safe(event.event)} {console} {detail}".rstrip()


def _counts(counts: Mapping[str, int]) -> str:
    """`telnet 3, attach 1` (zero entries left out; "0" when all are)."""
    shown = [f"{safe(key)} {n}" for key, n in counts.items() if n]
    return ", ".join(shown) if shown else "0"


def format_stats(stats: Stats) -> str:
    """`vspc stats`: the daemon's counters, one labelled line each (docs/vspc.md)."""
    latency = stats.goahead_latency
    mean = f", mean {latency.sum / latency.count * 1000:.2f} ms" if latency.count else ""
    rows = [
        ("uptime", duration(stats.uptime)),
        ("consoles", _counts(stats.consoles)),
        ("clients", _counts(stats.clients)),
        ("bytes VM -> clients", str(stats.bytes_vm_to_clients)),
        ("bytes clients -> VM", str(stats.bytes_clients_to_vm)),
        ("vMotions completed", str(stats.vmotions_completed)),
        ("vMotions aborted", _counts(stats.vmotions_aborted)),
        ("vMotions refused (NOTNOW)", _counts(stats.vmotions_notnow)),
        ("vMotions abandoned", str(stats.vmotions_abandoned)),
        ("BEGIN -> GOAHEAD", f"{latency.count} measured{mean}"),
        ("output dropped (slow readers)", f"{stats.client_bytes_dropped} bytes"),
        ("input dropped", _counts(stats.input_bytes_dropped)),
        ("input held", f"{stats.held_input_bytes} bytes"),
        ("file descriptors", f"{stats.fds_in_use} of {stats.fd_limit}"),
        ("admin refusals", str(stats.admin_refused)),
        ("TLS handshakes", _counts(stats.tls_handshakes)),
        ("listener back-offs", str(stats.listener_backoffs)),
        ("connections refused", _counts(stats.connections_refused)),
        ("unidentified dropped", str(stats.unidentified_dropped)),
        ("takeovers refused", str(stats.takeovers_refused)),
        ("VM connections", f"{stats.vm_connections} up, {stats.vm_disconnections} down"),
        ("event loop lag", f"{stats.loop_lag * 1000:.1f} ms"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in rows)
