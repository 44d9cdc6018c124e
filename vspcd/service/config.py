"""Command line + environment -> one frozen `Config` (docs/development.md "Config").

Boundary: `parse_args(argv, environ)` is the only place that reads options or
environment variables; everything downstream receives the `Config`.  Nothing here
runs at import time, so tests can build configurations from plain lists and dicts.

Flag names follow pbhenson/vSPC.py (`vSPCServer`, `lib/settings.py`) so existing
init scripts keep working; the environment variables `SUPPORT_MULTI_CONSOLE` and
`VM_CLIENT_LIMIT` mean what they meant there, and an explicit flag wins over them.
Bad values end the process with a one-line message and exit status 2 through
`argparse.ArgumentParser.error`, as for any other usage error.

Timing defaults cite docs/protocol.md §4.5 (F8 abandon grace) and §4.4 (bounded hold).

vSPC.py's backends are spelled either way: `--persist-file PATH` (or `-f PATH`) is
`--backend File --backend-args '-f PATH'`, and `--log-dir DIR --log-prefix P
--log-mode M --context N` is `--backend Logging --backend-args '-l DIR -p P -m M
--context N'`.  `--backend-args` is split with `shlex` and parsed by a small parser
per backend (`BACKENDS`); its errors are usage errors like any other.  Any other
`--backend` name is a plugin (vspcd/ext/plugins.py, docs/plugins.md), resolved here so a
broken one fails the start with status 2; it gets `--backend-args` as one string.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import NoReturn

from vspc.common.paths import SYSTEM_CONFIG, SYSTEM_SOCKET, daemon_socket
from vspc.vspcd import __version__
from vspc.vspcd.ext import hooks, plugins
from vspc.vspcd.faces.admin.policy import (
    DEFAULT_POLICY,
    AccessConfigError,
    AccessPolicy,
    parse_access,
)
from vspc.vspcd.history import settings as logconfig
from vspc.vspcd.net.admission import AllowList, parse_allow_list
from vspc.vspcd.net.listeners import make_ssl_context, resolve_group
from vspc.vspcd.service import eventloop

PROXY_PORT = 13370
PORT_RANGE_START = 50000
VM_EXPIRE_TIME = 86400.0
ADMIN_SOCKET_MODE = 0o660
VMOTION_ABANDON = 60.0  # docs/protocol.md §4.6: 30-120 s is reasonable
TAKEOVER_TIMEOUT = 5.0  # docs/security.md "Console takeover": HA restarts win within 10 s
CLIENT_QUEUE = 1024 * 1024
HOLD_LIMIT = 1024 * 1024  # docs/protocol.md §4.4 duty 5: "e.g. 1 MiB"
SCROLLBACK = 64 * 1024
LOG_DIR = Path("/var/log/consoles")  # vSPC.py's Logging backend defaults
LOG_PREFIX = "vmlog"
LOG_MODE = 0o600
# Pre-identification bounds and admin fairness (issue #7; docs/security.md says why).
IDENT_TIMEOUT = 20.0
PREIDENT_BYTES = 16 * 1024
UNIDENTIFIED_LIMIT = 1024
UNIDENTIFIED_PER_HOST = 256
TLS_HANDSHAKE_LIMIT = 64
TLS_HANDSHAKES_PER_HOST = 16
ADMIN_IDLE_TIMEOUT = 300.0
ADMIN_PER_PEER = 16
CLUSTER_LEASE = 5.0  # docs/cluster.md: a dead node's consoles move after about this

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class LogTarget(Enum):
    """Where `__main__` sends log records."""

    STDERR = "stderr"
    STDOUT = "stdout"
    SYSLOG = "syslog"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon was told at startup.  Durations are seconds, sizes bytes."""

    # ESXi-facing listener (docs/protocol.md §0 role VM); plain and TLS share the port.
    proxy_iface: str = "0.0.0.0"
    proxy_port: int = PROXY_PORT
    ssl: bool = False
    cert: Path | None = None
    key: Path | None = None
    proxy_allow: AllowList | None = None  # None: any address may connect
    ident_timeout: float = IDENT_TIMEOUT
    preident_bytes: int = PREIDENT_BYTES
    unidentified_limit: int = UNIDENTIFIED_LIMIT  # 0 = no cap
    unidentified_per_host: int = UNIDENTIFIED_PER_HOST
    tls_handshake_limit: int = TLS_HANDSHAKE_LIMIT
    tls_handshakes_per_host: int = TLS_HANDSHAKES_PER_HOST
    # Per-console telnet ports for operators.
    vm_ports: bool = True
    vm_iface: str = "127.0.0.1"
    port_range_start: int = PORT_RANGE_START
    vm_expire_time: float = VM_EXPIRE_TIME
    # Admin channel: always a Unix socket, optionally also TCP.
    admin_socket: Path = SYSTEM_SOCKET
    admin_socket_mode: int = ADMIN_SOCKET_MODE
    admin_socket_group: str | None = None
    admin_port: int | None = None
    admin_iface: str = "127.0.0.1"
    readonly_group: str | None = None
    admin_idle_timeout: float = ADMIN_IDLE_TIMEOUT  # 0 = never
    admin_per_peer: int = ADMIN_PER_PEER
    # Console policy.
    client_limit: int = 0  # 0 = unlimited
    multi_console: bool = False
    vmotion_abandon: float = VMOTION_ABANDON
    takeover_timeout: float = TAKEOVER_TIMEOUT
    no_notices: bool = False
    client_queue: int = CLIENT_QUEUE
    hold_limit: int = HOLD_LIMIT
    scrollback: int = SCROLLBACK
    context: int = 0  # scrollback bytes replayed to a new telnet client
    # Backends (vSPC.py's File and Logging): None means off.
    persist_file: Path | None = None
    log_dir: Path | None = None
    log_prefix: str = LOG_PREFIX
    log_mode: int = LOG_MODE
    # Console log history and the HTTP listener (vspcd/history/settings.py, issue #11).
    log_name: str = "name"
    log_timestamps: bool = False
    log_events: bool = False
    log_flush: float = logconfig.LOG_FLUSH
    log_max_size: int = 0
    log_keep: int = logconfig.LOG_KEEP
    log_compress: bool = False
    http: tuple[str, int] | None = None
    http_console_log: bool = False
    metrics: bool = False  # /metrics and /healthz on the HTTP listener (live)
    # A plugin backend (vspcd/ext/plugins.py, issue #11 item 6): the --backend spelling
    # and its --backend-args; None for the built-ins, which fold into the fields above.
    backend: str | None = None
    backend_args: str | None = None
    # Hooks (vspcd/ext/hooks.py, issue #11 item 5).
    hook_command: str | None = None
    hook_events: tuple[str, ...] | None = None
    hook_timeout: float = hooks.HOOK_TIMEOUT
    hook_concurrency: int = hooks.HOOK_CONCURRENCY
    hook_queue: int = hooks.HOOK_QUEUE
    # Process.
    event_loop: str = "auto"  # vspcd/service/eventloop.py (issue #12 item 3)
    log_stdout: bool = False
    daemon: bool = False
    pidfile: Path | None = None
    debug: bool = False
    # Configuration file and privileges (issue #10 items 3 and 4).
    config: Path | None = None  # the TOML file that was read, if any
    check_config: bool = False
    user: str | None = None
    group: str | None = None
    allow_root: bool = False
    # Cluster mode (docs/cluster.md, issue #13): None means a single node, stdlib only.
    cluster: str | None = None
    node_id: str | None = None
    node_address: str | None = None
    cluster_secret_file: Path | None = None
    cluster_lease: float = CLUSTER_LEASE
    reuse_port: bool = False
    # access_default and [[access]]: file-only keys (vspcd/faces/admin/policy.py).
    access_policy: AccessPolicy = DEFAULT_POLICY

    @property
    def log_target(self) -> LogTarget:
        """A detached daemon has no terminal, so it always logs to syslog."""
        if self.daemon:
            return LogTarget.SYSLOG
        return LogTarget.STDOUT if self.log_stdout else LogTarget.STDERR


def default_admin_socket(environ: Mapping[str, str], euid: int) -> Path:
    """Where the admin socket lives unless `--admin-socket` says otherwise.

    The one rule shared with `vspc`/`vspc-tui` is `vspc.common.paths.daemon_socket`:
    root: /run/vspcd/vspcd.sock; others: $XDG_RUNTIME_DIR/vspcd.sock, or
    /tmp/vspcd-<uid>/vspcd.sock when XDG_RUNTIME_DIR is unset or empty.
    """
    return daemon_socket(environ, euid)


def _ranged_int(low: int, high: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    convert.__name__ = "integer"  # argparse puts this name in "invalid <name> value"
    return convert


def _seconds(*, positive: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
        if value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'> 0' if positive else '>= 0'}")
        return value

    convert.__name__ = "seconds"
    return convert


def _octal_mode(text: str) -> int:
    # vSPC.py-era configs wrote modes like "0660"; int("0660") would be decimal 660
    # (docs/development.md Part 3, #8), so the base is fixed at 8.
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"file mode out of range 0..0777: {text!r}")
    return value


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


_port = _ranged_int(0, 65535)
_port.__name__ = "port"


def _allow_list(text: str) -> AllowList:
    try:
        return parse_allow_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_allow_list.__name__ = "allow list"


class ConfigError(Exception):
    """The configuration is invalid; the message names the file or flag, key and reason.

    Raised instead of exiting when the configuration is re-read on SIGHUP: a bad edit
    must leave the running daemon as it was, not end it.
    """


class _Parser(argparse.ArgumentParser):
    raise_errors = False  # set for a reload: errors raise ConfigError instead of exiting

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise ConfigError(message)
        super().error(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a meaningful X (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The daemon's argument parser; `--help` is generated from it."""
    parser = _Parser(
        prog="vspcd",
        description=(
            "Virtual serial port concentrator for VMware ESXi.  ESXi hosts connect to the "
            "proxy port (telnet:// or telnets://, both on the same port); operators reach "
            "each VM console on its own telnet port or through the admin socket."
        ),
        epilog=(
            "environment: SUPPORT_MULTI_CONSOLE=true|false (as --multi-console), "
            "VM_CLIENT_LIMIT=N (as --client-limit); flags win over the environment.  "
            "config file: every long option is also a TOML key, dashes as underscores "
            "(--client-limit 4 -> client_limit = 4); flags win over the file.  "
            "signals: SIGTERM/SIGINT stop, SIGHUP re-reads the config file and reopens "
            "console logs.  See docs/operations.md."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    esxi = parser.add_argument_group("ESXi proxy listener")
    esxi.add_argument(
        "-p",
        "--proxy-port",
        type=_port,
        default=PROXY_PORT,
        metavar="PORT",
        help="TCP port ESXi hosts connect to (0 = pick a free port)",
    )
    esxi.add_argument(
        "--proxy-iface",
        type=_nonempty,
        default="0.0.0.0",
        metavar="ADDR",
        help="address the proxy port binds to",
    )
    esxi.add_argument(
        "--ssl",
        action="store_true",
        help="also accept telnets:// (TLS) on the proxy port; plain telnet keeps working",
    )
    esxi.add_argument(
        "--cert", type=Path, metavar="FILE", help="PEM certificate chain (required with --ssl)"
    )
    esxi.add_argument(
        "--key", type=Path, metavar="FILE", help="PEM private key, if not inside --cert"
    )
    esxi.add_argument(
        "--proxy-allow",
        type=_allow_list,
        metavar="CIDR,...",
        help=(
            "only these networks (IPv4/IPv6, e.g. 10.1.0.0/24,fd00::/64) may connect to "
            "the proxy port; others are closed at accept (default: any address)"
        ),
    )
    esxi.add_argument(
        "--ident-timeout",
        type=_seconds(positive=True),
        default=IDENT_TIMEOUT,
        metavar="SECONDS",
        help="close a proxy-port connection not identified (VC-UUID) this long after accept",
    )
    esxi.add_argument(
        "--preident-bytes",
        type=_ranged_int(256),
        default=PREIDENT_BYTES,
        metavar="BYTES",
        help="close a proxy-port connection that sends more than this before identifying",
    )
    esxi.add_argument(
        "--unidentified-limit",
        type=_ranged_int(0),
        default=UNIDENTIFIED_LIMIT,
        metavar="N",
        help="unidentified proxy-port connections at once; newer ones are refused (0 = no cap)",
    )
    esxi.add_argument(
        "--unidentified-per-host",
        type=_ranged_int(0),
        default=UNIDENTIFIED_PER_HOST,
        metavar="N",
        help="unidentified proxy-port connections at once from one address (0 = no cap)",
    )
    esxi.add_argument(
        "--tls-handshake-limit",
        type=_ranged_int(0),
        default=TLS_HANDSHAKE_LIMIT,
        metavar="N",
        help="TLS handshakes in progress at once; newer ones are refused (0 = no cap)",
    )
    esxi.add_argument(
        "--tls-handshakes-per-host",
        type=_ranged_int(0),
        default=TLS_HANDSHAKES_PER_HOST,
        metavar="N",
        help="TLS handshakes in progress at once from one address (0 = no cap)",
    )

    ports = parser.add_argument_group("per-VM telnet ports")
    ports.add_argument(
        "-r",
        "--port-range-start",
        type=_ranged_int(1, 65535),
        default=PORT_RANGE_START,
        metavar="PORT",
        help="lowest port handed to a console; ports in use are skipped",
    )
    ports.add_argument(
        "-i",
        "--interface",
        dest="vm_iface",
        type=_nonempty,
        default="127.0.0.1",
        metavar="ADDR",
        help="address the per-VM telnet ports bind to",
    )
    ports.add_argument(
        "--no-vm-ports",
        dest="vm_ports",
        action="store_false",
        help="do not open per-VM telnet ports (consoles stay reachable via the admin socket)",
    )
    ports.add_argument(
        "--vm-expire-time",
        type=_seconds(positive=False),
        default=VM_EXPIRE_TIME,
        metavar="SECONDS",
        help="how long a console with no VM and no clients keeps its port",
    )

    admin = parser.add_argument_group("admin channel")
    admin.add_argument(
        "--admin-socket",
        type=Path,
        metavar="PATH",
        help=(
            "Unix socket for vspc/vspctui (default: /run/vspcd/vspcd.sock as root, else "
            "$XDG_RUNTIME_DIR/vspcd.sock or /tmp/vspcd-UID/vspcd.sock)"
        ),
    )
    admin.add_argument(
        "--admin-socket-mode",
        type=_octal_mode,
        default="0660",
        metavar="OCTAL",
        help="permission bits of the admin socket",
    )
    admin.add_argument(
        "--admin-socket-group",
        metavar="GROUP",
        help="group that owns the admin socket (default: the daemon's group)",
    )
    admin.add_argument(
        "-a",
        "--admin-port",
        type=_port,
        metavar="PORT",
        help="also serve the admin protocol on this TCP port (off by default; unauthenticated)",
    )
    admin.add_argument(
        "--admin-iface",
        type=_nonempty,
        default="127.0.0.1",
        metavar="ADDR",
        help="address the TCP admin port binds to",
    )
    admin.add_argument(
        "--readonly-group",
        metavar="GROUP",
        help="admin-socket peers in this group may watch consoles but not type or change state",
    )
    admin.add_argument(
        "--admin-idle-timeout",
        type=_seconds(positive=False),
        default=ADMIN_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=(
            "close admin connections idle this long that are not subscribed, tailing or "
            "attached (0 = never)"
        ),
    )
    admin.add_argument(
        "--admin-per-peer",
        type=_ranged_int(1),
        default=ADMIN_PER_PEER,
        metavar="N",
        help=(
            "admin connections one uid (Unix socket) or one address (TCP) may hold; root "
            "and the daemon's own uid are exempt and keep reserved slots"
        ),
    )

    policy = parser.add_argument_group("console policy")
    policy.add_argument(
        "--client-limit",
        type=_ranged_int(0),
        metavar="N",
        help="most clients per console, 0 = unlimited (env VM_CLIENT_LIMIT; default 0)",
    )
    policy.add_argument(
        "--multi-console",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "key consoles by UUID + serviceURI so a VM may have several serial ports "
            "(env SUPPORT_MULTI_CONSOLE; default off)"
        ),
    )
    policy.add_argument(
        "--vmotion-abandon",
        type=_seconds(positive=True),
        default=VMOTION_ABANDON,
        metavar="SECONDS",
        help="grace after a migrating source disconnects before the vMotion is abandoned",
    )
    policy.add_argument(
        "--takeover-timeout",
        type=_seconds(positive=True),
        default=TAKEOVER_TIMEOUT,
        metavar="SECONDS",
        help=(
            "when a VM connection from another host claims a console, how long its current "
            "VM connection has to answer a liveness probe before it is replaced "
            f"(default {TAKEOVER_TIMEOUT:g}; docs/security.md)"
        ),
    )
    policy.add_argument(
        "--no-notices",
        action="store_true",
        default=False,
        help=(
            "do not tell console clients what is going on with '[vspcd: ...]' lines "
            "(VM connected/disconnected, vMotion done, input dropped, lock released), "
            "for scripted clients that must see only VM bytes"
        ),
    )
    policy.add_argument(
        "--client-queue",
        type=_ranged_int(1),
        default=CLIENT_QUEUE,
        metavar="BYTES",
        help="output queued per client before that client overflows",
    )
    policy.add_argument(
        "--hold-limit",
        type=_ranged_int(0),
        default=HOLD_LIMIT,
        metavar="BYTES",
        help="client input held per console while a vMotion is in flight",
    )
    policy.add_argument(
        "--scrollback",
        type=_ranged_int(0),
        default=SCROLLBACK,
        metavar="BYTES",
        help="console output kept per console and replayed to new clients",
    )

    backends = parser.add_argument_group(
        "persistence and console logs (vSPC.py's File and Logging backends)"
    )
    backends.add_argument(
        "-f",
        "--persist-file",
        type=Path,
        metavar="PATH",
        help="remember consoles and their telnet ports across restarts in this SQLite file "
        "(created 0600); same as --backend File --backend-args '-f PATH'",
    )
    backends.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="append every console's output to DIR/PREFIX-NAME; SIGHUP reopens the files",
    )
    backends.add_argument(
        "--log-prefix",
        type=_log_prefix,
        metavar="PREFIX",
        help=f"first part of console log file names (default {LOG_PREFIX}; '' for none)",
    )
    backends.add_argument(
        "--log-mode",
        type=_octal_mode,
        metavar="OCTAL",
        help="permission bits of new console log files (default 0600)",
    )
    backends.add_argument(
        "--context",
        type=_ranged_int(0),
        metavar="BYTES",
        help="bytes of scrollback replayed to a new telnet client (default 0: none; "
        "at most --scrollback)",
    )
    backends.add_argument(
        "--backend",
        metavar="NAME",
        help="vSPC.py spelling: Memory (default), File or Logging (any case); or a plugin "
        "(docs/plugins.md): module:Class, a vspc.backends entry point, or vSPC.py's "
        "module vSPCBackendNAME on PYTHONPATH",
    )
    backends.add_argument(
        "--backend-args",
        metavar="ARGS",
        help="vSPC.py spelling, one shell-quoted string: File: '-f PATH'; "
        "Logging: '[-l DIR] [-p PREFIX] [-m MODE] [--context N]'; a plugin gets the "
        "string as it is",
    )

    logconfig.add_arguments(parser)
    hooks.add_arguments(parser)
    cluster = parser.add_argument_group("cluster mode (docs/cluster.md; needs vspc[cluster])")
    cluster.add_argument(
        "--cluster",
        metavar="URL",
        help="join a cluster whose registry is this Redis, e.g. redis://10.0.0.5:6379/0 "
        "(also rediss:// and unix://); without it vspcd is a single node",
    )
    cluster.add_argument(
        "--node-id",
        type=_node_id,
        metavar="NAME",
        help="this node's name in the cluster (letters, digits, . _ -); unique per node",
    )
    cluster.add_argument(
        "--node-address",
        type=_host_port,
        metavar="HOST:PORT",
        help="where the other nodes reach this node's inter-node link (listened on here)",
    )
    cluster.add_argument(
        "--cluster-secret-file",
        type=Path,
        metavar="FILE",
        help="shared secret (at least 16 bytes) that authenticates inter-node links; "
        "the same file on every node, readable only by vspcd",
    )
    cluster.add_argument(
        "--cluster-lease",
        type=_seconds(positive=True),
        default=CLUSTER_LEASE,
        metavar="SECONDS",
        help="liveness lease of a node in the registry, renewed every third of it; a "
        "dead node's consoles can be taken over once it has expired",
    )
    cluster.add_argument(
        "--reuse-port",
        action="store_true",
        help="open the ESXi listener with SO_REUSEPORT, so several nodes on one host "
        "share the proxy port (the kernel spreads connections over them)",
    )

    proc = parser.add_argument_group("process")
    proc.add_argument(
        "--stdout",
        dest="log_stdout",
        action="store_true",
        help="log to stdout instead of stderr (ignored with --daemon)",
    )
    proc.add_argument(
        "--no-fork",
        action="store_true",
        help="accepted for vSPC.py compatibility; running in the foreground is the default",
    )
    proc.add_argument(
        "--daemon",
        action="store_true",
        help="detach from the terminal (double fork) and log to syslog; prefer systemd",
    )
    proc.add_argument(
        "--pidfile",
        type=Path,
        metavar="FILE",
        help="write the daemon's pid here, removed at exit; refuse to start if it names "
        "a live process",
    )
    proc.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    proc.add_argument(
        "--event-loop",
        choices=eventloop.EVENT_LOOPS,
        default="auto",
        help="asyncio: the stdlib loop (epoll); uvloop: the optional extra "
        f"({eventloop.UVLOOP_HINT}), faster on vMotion and connect storms; "
        "auto: uvloop if installed, else asyncio (default: auto; "
        "env VSPCD_EVENT_LOOP chooses for auto)",
    )

    setup = parser.add_argument_group("configuration file and privileges")
    setup.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file of settings, keys named like the long options "
        f"(default: {SYSTEM_CONFIG} if it exists); SIGHUP re-reads it",
    )
    setup.add_argument(
        "--check-config",
        action="store_true",
        help="validate the flags and the configuration file, then exit (0 valid, 2 not)",
    )
    setup.add_argument(
        "--user",
        type=_nonempty,
        metavar="USER",
        help="as root: bind every listener, then switch to this user (and its groups)",
    )
    setup.add_argument(
        "--group",
        type=_nonempty,
        metavar="GROUP",
        help="with --user: the primary group to switch to (default: the user's own)",
    )
    setup.add_argument(
        "--allow-root",
        action="store_true",
        help="run as root without --user (refused otherwise; env VSPCD_ALLOW_ROOT=1)",
    )
    return parser


# Keys a configuration file may not set: they say which file to read, or end the run.
_NOT_IN_FILE = frozenset({"help", "version", "config", "check_config"})


def file_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every configuration-file key and the option it stands for.

    Derived from the parser (issue #10 item 3), so a flag added to `build_parser` is a
    key at once: the first long option name without its dashes, the rest turned into
    underscores (`--client-limit` -> `client_limit`, `--no-vm-ports` -> `no_vm_ports`,
    `-i/--interface` -> `interface`).
    """
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [name for name in action.option_strings if name.startswith("--")]
        if not longs:
            continue
        key = longs[0][2:].replace("-", "_")
        if key not in _NOT_IN_FILE:
            keys[key] = action
    return keys


def _convert_file_value(action: argparse.Action, value: object) -> object:
    """A TOML value as the option's parsed value; ValueError says why it is bad."""
    if action.nargs == 0:  # a switch: store_true/false, --x/--no-x
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_repr(value)}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value
        return action.const if value else action.default
    if action.nargs == "?" and isinstance(value, bool):
        # An option whose value is optional (--metrics): true is the bare flag.
        return action.const if value else action.default
    if isinstance(value, list):
        # Lists such as allow lists may be TOML arrays; the option takes them
        # comma-separated, as on the command line.
        if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value):
            raise ValueError("expected an array of strings")
        value = ",".join(str(item) for item in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string or a number, got {_toml_repr(value)}")
    if action.type is _octal_mode and not isinstance(value, str):
        # TOML's 0o660 and 432 are the same integer; only a string says "octal".
        raise ValueError(f'write file modes as a quoted octal string, e.g. "0660", not {value}')
    text = value if isinstance(value, str) else str(value)
    convert = action.type if callable(action.type) else str
    try:
        result = convert(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    except (TypeError, ValueError):
        name = getattr(convert, "__name__", "value")
        raise ValueError(f"invalid {name} value: {text!r}") from None
    if action.choices is not None and result not in action.choices:
        raise ValueError(f"{result!r} is not one of {sorted(map(str, action.choices))}")
    return result


def _toml_repr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def read_config_file(parser: argparse.ArgumentParser, path: Path) -> dict[str, object]:
    """The option values (by argparse dest) a configuration file sets.

    Every problem is a usage error naming the file, the key and the reason.
    """
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        parser.error(f"{path}: cannot read: {exc.strerror or exc}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        parser.error(f"{path}: not valid TOML: {exc}")
    keys = file_keys(parser)
    values: dict[str, object] = {}
    # Per-console access rules have no flag: a table is no command-line value.
    access: dict[str, object] = {
        key: table.pop(key) for key in ("access_default", "access") if key in table
    }
    if access:
        try:
            values["access_policy"] = parse_access(access)
        except AccessConfigError as exc:
            parser.error(f"{path}: {exc}")
    for key, value in table.items():
        action = keys.get(key)
        if action is None:
            parser.error(
                f"{path}: unknown key {key!r} (keys are the long options with '_' for '-', "
                "see vspcd --help)"
            )
        try:
            values[action.dest] = _convert_file_value(action, value)
        except ValueError as exc:
            parser.error(f"{path}: key {key!r}: {exc}")
    return values


def _node_id(text: str) -> str:
    if not text or len(text) > 64 or not all(c.isalnum() or c in "._-" for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1-64 letters, digits, '.', '_' or '-' (it is part of Redis keys)"
        )
    return text


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT with a port 1-65535")
    return text


_CLUSTER_SCHEMES = ("redis://", "rediss://", "unix://")
MIN_SECRET = 16


def _check_cluster(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """--cluster and its companions: all or nothing, and the extra installed."""
    if ns.cluster is None:
        for flag, value in (
            ("--node-id", ns.node_id),
            ("--node-address", ns.node_address),
            ("--cluster-secret-file", ns.cluster_secret_file),
        ):
            if value is not None:
                parser.error(f"{flag} needs --cluster")
        return
    if not ns.cluster.startswith(_CLUSTER_SCHEMES):
        parser.error(
            f"--cluster {ns.cluster}: expected redis://HOST:PORT/DB (or rediss://, unix://)"
        )
    for flag, value in (
        ("--node-id", ns.node_id),
        ("--node-address", ns.node_address),
        ("--cluster-secret-file", ns.cluster_secret_file),
    ):
        if value is None:
            parser.error(f"--cluster needs {flag}")
    if ns.persist_file is not None:
        parser.error("--persist-file cannot be used with --cluster: the registry replaces it")
    try:
        secret = ns.cluster_secret_file.read_bytes().strip()
    except OSError as exc:
        parser.error(f"--cluster-secret-file {ns.cluster_secret_file}: {exc.strerror}")
    if len(secret) < MIN_SECRET:
        parser.error(f"--cluster-secret-file: the secret must be at least {MIN_SECRET} bytes")
    if importlib.util.find_spec("redis") is None:
        parser.error(
            "--cluster needs the redis client, which is not installed: "
            "pip install 'vspc[cluster]' (redis>=5)"
        )


def _log_prefix(text: str) -> str:
    if "/" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must not contain '/' or NUL: {text!r}")
    return text


class _BackendArgsError(Exception):
    """A --backend-args string did not parse (message for the usage error)."""


class _BackendArgsParser(argparse.ArgumentParser):
    # argparse exits on errors; here they become part of the main parser's message.
    def error(self, message: str) -> NoReturn:
        raise _BackendArgsError(message)


def _file_backend_parser() -> argparse.ArgumentParser:
    parser = _BackendArgsParser(prog="--backend File", add_help=False)
    parser.add_argument("-f", "--file", dest="persist_file", type=Path, required=True)
    return parser


def _logging_backend_parser() -> argparse.ArgumentParser:
    parser = _BackendArgsParser(prog="--backend Logging", add_help=False)
    parser.add_argument("-l", "--logdir", dest="log_dir", type=Path, default=LOG_DIR)
    parser.add_argument("-p", "--prefix", dest="log_prefix", type=_log_prefix)
    parser.add_argument("-m", "--mode", dest="log_mode", type=_octal_mode)
    parser.add_argument("--context", type=_ranged_int(0))
    return parser


# vSPC.py's built-in backends; any other name is a plugin (vspcd/ext/plugins.py).
BACKENDS: dict[str, Callable[[], argparse.ArgumentParser] | None] = {
    "memory": None,  # takes no arguments
    "file": _file_backend_parser,
    "logging": _logging_backend_parser,
}


def _backend_settings(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Fold --backend/--backend-args into the native options of `ns` (in place).

    A name that is not a built-in is a plugin (vspcd/ext/plugins.py): it is resolved now,
    so a broken one is a usage error, and stays in `ns.backend` with its arguments.
    """
    if ns.backend is None:
        if ns.backend_args is not None:
            parser.error("--backend-args needs --backend File or --backend Logging (or a plugin)")
        return
    name = ns.backend.strip().lower()
    if name not in BACKENDS:
        try:
            plugins.resolve(ns.backend.strip())
        except plugins.PluginError as exc:
            parser.error(str(exc))
        ns.backend = ns.backend.strip()
        ns.backend_args = ns.backend_args or ""
        return
    make = BACKENDS[name]
    spelled, ns.backend = ns.backend, None  # a built-in: its meaning goes to native options
    if make is None:
        if ns.backend_args is not None and ns.backend_args.strip():
            parser.error(f"--backend {spelled}: takes no --backend-args")
        ns.backend_args = None
        return
    try:
        words = shlex.split(ns.backend_args or "")
        parsed = make().parse_args(words)
    except (ValueError, _BackendArgsError) as exc:  # shlex: "No closing quotation"
        parser.error(f"--backend-args {ns.backend_args!r} for --backend {spelled}: {exc}")
    args, ns.backend_args = ns.backend_args, None
    flags = {
        "persist_file": "--persist-file",
        "log_dir": "--log-dir",
        "log_prefix": "--log-prefix",
        "log_mode": "--log-mode",
        "context": "--context",
    }
    for field, value in vars(parsed).items():
        if value is None:
            continue
        given = getattr(ns, field)
        if given is not None and given != value:
            parser.error(f"{flags[field]} {given} conflicts with --backend-args {args!r}")
        setattr(ns, field, value)


def _glue_backend_args(argv: Sequence[str]) -> list[str]:
    """`--backend-args '-f PATH'` -> `--backend-args=-f PATH`.

    vSPC.py read its options with getopt, which takes the word after
    `--backend-args` as its value whatever it looks like; argparse would take
    `-f PATH` or `-p vm` for one of our own options (-f, -p) and stop.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--backend-args":
            value = next(words, None)
            out.append(word if value is None else f"{word}={value}")
        else:
            out.append(word)
    return out


def _env_bool(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], name: str
) -> bool | None:
    raw = environ.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    parser.error(f"environment variable {name}={raw!r}: expected true or false")


def _env_count(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], name: str
) -> int | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        parser.error(f"environment variable {name}={raw!r}: expected an integer >= 0")
    if value < 0:
        parser.error(f"environment variable {name}={raw!r}: expected an integer >= 0")
    return value


def _check_readable(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        parser.error(f"{flag} {path}: cannot read: {exc.strerror or exc}")


def _check_group(parser: argparse.ArgumentParser, flag: str, name: str | None) -> None:
    if name is None:
        return
    try:
        resolve_group(name)  # the lookup the daemon makes when it uses the group
    except KeyError:
        kind = "group id" if name.isdigit() else "group"
        parser.error(f"{flag} {name}: no such {kind}")


def _check_user(parser: argparse.ArgumentParser, name: str | None) -> None:
    if name is None:
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            parser.error(f"--user {name}: no such user")
        try:
            pwd.getpwuid(int(name))
        except KeyError:
            parser.error(f"--user {name}: no such user id")


def parse_args(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    euid: int | None = None,
    default_config: Path = SYSTEM_CONFIG,
) -> Config:
    """Parse the command line, configuration file and environment into a `Config`.

    Precedence: command-line flags, then the configuration file (``--config FILE``, or
    `default_config` if that exists), then the vSPC.py-era environment variables, then
    the built-in defaults.

    Args:
        argv: arguments without the program name (None means sys.argv[1:]).
        environ: the environment to consult (normally os.environ).
        euid: effective uid for the admin-socket default (None means os.geteuid()).
        default_config: the file read when ``--config`` is not given, if it exists.

    Raises:
        SystemExit: status 0 after --help/--version, status 2 with a message on
            stderr for any bad flag, value, configuration key or environment variable.
    """
    return _load(build_parser(), argv, environ, euid=euid, default_config=default_config)


def reload_config(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    euid: int | None = None,
    default_config: Path = SYSTEM_CONFIG,
) -> Config:
    """`parse_args` for SIGHUP: the same command line over the file as it is now.

    Raises:
        ConfigError: the file (or something it combines with) is invalid.
    """
    parser = build_parser()
    assert isinstance(parser, _Parser)
    parser.raise_errors = True
    return _load(parser, argv, environ, euid=euid, default_config=default_config)


def _load(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    euid: int | None,
    default_config: Path,
) -> Config:
    args = _glue_backend_args(sys.argv[1:] if argv is None else argv)
    # First pass: only to learn which file to read (--help and flag errors end here).
    config_file = parser.parse_args(args).config
    if config_file is None and default_config.exists():
        config_file = default_config
    if config_file is not None:
        # The file's values become defaults, so whatever the command line says wins.
        parser.set_defaults(**read_config_file(parser, config_file))
    ns = parser.parse_args(args)
    ns.config = config_file
    if ns.ssl:
        if ns.cert is None:
            parser.error("--ssl requires --cert FILE")
        _check_readable(parser, "--cert", ns.cert)
        if ns.key is not None:
            _check_readable(parser, "--key", ns.key)
        # Load the pair now so a wrong key or a non-PEM file is a usage error at
        # startup, not a traceback once the loop runs.
        try:
            make_ssl_context(ns.cert, ns.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            parser.error(f"--cert/--key: cannot load certificate and key: {exc}")
    if ns.pidfile is not None and ns.pidfile.is_dir():
        parser.error(f"--pidfile {ns.pidfile}: is a directory")
    _backend_settings(parser, ns)
    if ns.persist_file is not None and ns.persist_file.is_dir():
        parser.error(f"--persist-file {ns.persist_file}: is a directory")
    if ns.log_dir is None and (ns.log_prefix is not None or ns.log_mode is not None):
        parser.error("--log-prefix and --log-mode need --log-dir (or --backend Logging)")
    if ns.log_dir is not None and ns.log_dir.exists() and not ns.log_dir.is_dir():
        parser.error(f"--log-dir {ns.log_dir}: not a directory")
    logconfig.check(parser, ns)
    context = ns.context or 0
    if context > ns.scrollback:
        parser.error(
            f"--context {context} is more than the {ns.scrollback} bytes --scrollback keeps"
        )
    _check_group(parser, "--admin-socket-group", ns.admin_socket_group)
    _check_cluster(parser, ns)
    _check_group(parser, "--readonly-group", ns.readonly_group)
    _check_user(parser, ns.user)
    _check_group(parser, "--group", ns.group)
    if ns.event_loop == "uvloop" and not eventloop.uvloop_available():
        parser.error(f"--event-loop uvloop: uvloop is not installed ({eventloop.UVLOOP_HINT})")
    if ns.group is not None and ns.user is None:
        parser.error("--group needs --user (the group alone would leave the daemon root)")

    # An explicit flag wins outright: the variable is not even validated then, so a
    # stale value in a unit's Environment= cannot block an override on the command line.
    multi = ns.multi_console
    if multi is None:
        multi = bool(_env_bool(parser, environ, "SUPPORT_MULTI_CONSOLE"))
    limit = ns.client_limit
    if limit is None:
        limit = _env_count(parser, environ, "VM_CLIENT_LIMIT") or 0

    admin_socket = ns.admin_socket
    if admin_socket is None:
        admin_socket = default_admin_socket(environ, os.geteuid() if euid is None else euid)

    # Every Config field is the option of the same name unless computed above (issue
    # #8 item 6: no field-by-field copy to forget when a flag is added).
    computed: dict[str, object] = {
        "admin_socket": admin_socket,
        "client_limit": limit,
        "multi_console": multi,
        "context": context,
        "log_prefix": LOG_PREFIX if ns.log_prefix is None else ns.log_prefix,
        "log_mode": LOG_MODE if ns.log_mode is None else ns.log_mode,
        "log_name": ns.log_name or "name",
        "log_timestamps": bool(ns.log_timestamps),
        "log_events": bool(ns.log_events),
        "log_flush": logconfig.LOG_FLUSH if ns.log_flush is None else ns.log_flush,
        "log_max_size": ns.log_max_size or 0,
        "log_keep": logconfig.LOG_KEEP if ns.log_keep is None else ns.log_keep,
        "log_compress": bool(ns.log_compress),
        "http_console_log": bool(ns.http_console_log),
        "metrics": ns.metrics is not None,
    }
    options = vars(ns)
    values = {
        field.name: computed[field.name] if field.name in computed else options[field.name]
        for field in fields(Config)
        if field.name in computed or field.name in options
    }
    return Config(**values)  # type: ignore[arg-type]
