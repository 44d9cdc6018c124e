"""Flags for console history and the HTTP listener (issues #11 and #7 item 7).

Boundary: argparse definitions and checks only; `vspcd/service/config.py` calls
`add_arguments` from `build_parser` (so every flag also gets its config-file key) and
`check` from `parse_args`, and copies the values into `Config`.  `log_settings` turns a
`Config` into the `LogSettings` that `ConsoleLogs` takes (and `reconfigure` re-applies
after a reload).
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import TYPE_CHECKING

from vspc.vspcd.history.consolelog import LogSettings
from vspc.vspcd.history.naming import LogNaming

if TYPE_CHECKING:
    from vspc.vspcd.service.config import Config

__all__ = [
    "add_arguments",
    "check",
    "log_settings",
    "parse_http",
    "parse_metrics",
    "parse_size",
]

LOG_FLUSH = 1.0
LOG_KEEP = 5
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """`4096`, `64K`, `10M`, `1G` (binary units, any case) -> bytes."""
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in ("K", "M", "G") else ""
    number = body[: len(body) - len(unit)]
    try:
        value = int(number, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64K, 10M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value * _UNITS[unit]


parse_size.__name__ = "size"


def parse_metrics(text: str) -> tuple[str, int] | str:
    """`--metrics` with an address (as `--http`), or "" (bare `--metrics`, or
    `metrics = true` in the config file: the routes on the `--http` listener)."""
    if text == "" or text.lower() == "true":
        return ""
    return parse_http(text)


parse_metrics.__name__ = "address"


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_http(text: str) -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[IPV6]:PORT` -> (address, port); a bare port binds
    127.0.0.1 (the listener is loopback unless an address is given)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not [ADDR:]PORT: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise argparse.ArgumentTypeError(f"not an address: {host!r}") from None
    return host, port


parse_http.__name__ = "address"


def _flush_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600, got {text!r}")
    return value


_flush_seconds.__name__ = "seconds"


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1000, got {value}")
    return value


_count.__name__ = "integer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The console-history and HTTP flags, as two argument groups."""
    logs = parser.add_argument_group("console log history (with --log-dir)")
    logs.add_argument(
        "--log-name",
        choices=[n.value for n in LogNaming],
        metavar="name|uuid|name-uuid",
        help="console log file names: PREFIX-NAME (default), the 32-hex console key "
        "(OpenStack Nova's serial_log_dir layout), or PREFIX-NAME-KEY",
    )
    logs.add_argument(
        "--log-timestamps",
        action="store_true",
        default=None,
        help="start every console log line with a 25-byte UTC timestamp",
    )
    logs.add_argument(
        "--log-events",
        action="store_true",
        default=None,
        help="write console events (connects, vMotions, clients) as JSON lines to "
        "FILE.events beside each console log",
    )
    logs.add_argument(
        "--log-flush",
        type=_flush_seconds,
        metavar="SECONDS",
        help=f"write buffered console output at least this often; 0 = every write "
        f"(default {LOG_FLUSH:g})",
    )
    logs.add_argument(
        "--log-max-size",
        type=parse_size,
        metavar="SIZE",
        help="rotate a console log when it would pass SIZE (e.g. 10M) to FILE.N, "
        "highest N newest; 0 = never (default)",
    )
    logs.add_argument(
        "--log-keep",
        type=_count,
        metavar="N",
        help=f"rotated files kept per console (default {LOG_KEEP})",
    )
    logs.add_argument(
        "--log-compress",
        action="store_true",
        default=None,
        help="gzip rotated console logs (in a child process) to FILE.N.gz",
    )
    http = parser.add_argument_group("HTTP listener (off unless --http is given)")
    http.add_argument(
        "--http",
        type=parse_http,
        metavar="[ADDR:]PORT",
        help="serve HTTP GET here; a bare PORT binds 127.0.0.1",
    )
    http.add_argument(
        "--metrics",
        nargs="?",
        const="",
        type=parse_metrics,
        metavar="[ADDR:]PORT",
        help="serve GET /metrics (Prometheus) and GET /healthz on the HTTP listener; "
        "with [ADDR:]PORT the HTTP listener is started there (same as --http; a bare "
        "PORT binds 127.0.0.1); a config file may say metrics = true",
    )
    http.add_argument(
        "--http-console-log",
        action="store_true",
        default=None,
        help="serve GET /console_log/UUID (the last 100 KiB of that console's log, "
        "Nova's serial_log_uri); needs --http and --log-dir",
    )


def check(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Usage errors for combinations argparse cannot see (exits 2)."""
    if ns.log_dir is None:
        given = [
            flag
            for flag, value in (
                ("--log-name", ns.log_name),
                ("--log-timestamps", ns.log_timestamps),
                ("--log-events", ns.log_events),
                ("--log-flush", ns.log_flush),
                ("--log-max-size", ns.log_max_size),
                ("--log-keep", ns.log_keep),
                ("--log-compress", ns.log_compress),
            )
            if value is not None
        ]
        if given:
            parser.error(f"{', '.join(given)}: only with --log-dir (or --backend Logging)")
    if ns.log_compress and not ns.log_max_size:
        parser.error("--log-compress needs --log-max-size (it compresses rotated files)")
    if ns.metrics is not None:
        # One HTTP listener: --metrics ADDR:PORT is --http ADDR:PORT.
        if ns.metrics == "":
            if ns.http is None:
                parser.error(
                    "--metrics needs an HTTP listener: --http [ADDR:]PORT or --metrics [ADDR:]PORT"
                )
        elif ns.http is None:
            ns.http = ns.metrics
        elif ns.http != ns.metrics:
            parser.error(
                f"--metrics {_show(ns.metrics)} and --http {_show(ns.http)} differ: vspcd "
                "has one HTTP listener; give the address once"
            )
    if ns.http_console_log and (ns.http is None or ns.log_dir is None):
        parser.error("--http-console-log needs --http and --log-dir")


def log_settings(config: Config) -> LogSettings:
    """The `ConsoleLogs` settings of a configuration (requires `config.log_dir`)."""
    assert config.log_dir is not None
    return LogSettings(
        directory=config.log_dir,
        prefix=config.log_prefix,
        mode=config.log_mode,
        flush_interval=config.log_flush,
        naming=LogNaming(config.log_name),
        timestamps=config.log_timestamps,
        events=config.log_events,
        max_size=config.log_max_size,
        keep=config.log_keep,
        compress=config.log_compress,
    )
