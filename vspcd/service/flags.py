"""Every vspcd flag as one table of data (docs/operations.md §3, §3a).

`FLAGS` is the single source: vspcd/service/cli.py builds the argparse parser (and so
``--help``) from it, vspcd/service/configfile.py takes the TOML keys from it,
vspcd/service/reload.py takes the keys that apply live on SIGHUP from it, and
`markdown_table` renders the option table of docs/operations.md §3
(``python -m vspc.vspcd.service.flags --markdown``; tests/test_docs.py-style check in
tests/vspcd/service/test_flags.py fails when the document and the table differ).

Spellings follow pbhenson/vSPC.py (`vSPCServer`, `lib/settings.py`) so existing init
scripts keep working; `Flag.compat` says where a spelling comes from.  Converters are
vspc/common/convert.py's; a flag-specific one lives here only when it needs a type of
vspcd (the ESXi allow list).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vspc.common import convert
from vspc.common.paths import SYSTEM_CONFIG
from vspc.vspcd.ext.hookenv import HOOK_EVENTS
from vspc.vspcd.ext.hooks import HOOK_CONCURRENCY, HOOK_QUEUE, HOOK_TIMEOUT
from vspc.vspcd.ext.webhook import WEBHOOK_ATTEMPTS, WEBHOOK_QUEUE, WEBHOOK_TIMEOUT, parse_url
from vspc.vspcd.history.naming import LogNaming
from vspc.vspcd.net.admission import AllowList
from vspc.vspcd.net.links import IDENT_TIMEOUT, PREIDENT_BYTES
from vspc.vspcd.service.eventloop import EVENT_LOOPS, UVLOOP_HINT

__all__ = [
    "FLAGS",
    "Flag",
    "Group",
    "Kind",
    "by_dest",
    "markdown_table",
]

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
LOG_FLUSH = 1.0
LOG_KEEP = 5
# Pre-identification bounds and admin fairness (docs/security.md says why).
UNIDENTIFIED_LIMIT = 1024
UNIDENTIFIED_PER_HOST = 0  # admission by harm: idle holders are evicted instead
TLS_HANDSHAKE_LIMIT = 64
TLS_HANDSHAKES_PER_HOST = 16
ADMIN_IDLE_TIMEOUT = 300.0
# Console caps (docs/security.md, "Resource bounds"): an ESXi host runs at most 1,024
# VMs, rarely with more than two serial ports each.  0 for the total: sized from the
# fd limit at start (`console_limit_for`).
CONSOLES_PER_HOST = 2048
CONSOLE_LIMIT = 0
# Console output queued for all telnet and attach clients together (vspcd/net/flow.py).
OUTPUT_BUDGET = 256 << 20
ADMIN_PER_PEER = 16
CLUSTER_LEASE = 5.0  # docs/cluster.md: a dead node's consoles move after about this


class Kind(enum.Enum):
    """How a flag reads the command line (and what its TOML value must be)."""

    VALUE = "value"  # --flag VALUE; TOML: string or number (or array for lists)
    SWITCH = "switch"  # --flag sets `const` (True, or False for --no-x); TOML: boolean
    TOGGLE = "toggle"  # --flag / --no-flag; TOML: boolean
    OPTIONAL = "optional"  # --flag [VALUE]; bare means `const`; TOML: boolean or value
    VERSION = "version"  # prints the version and exits; not in a file


class Group(enum.Enum):
    """Sections of ``--help``, in this order."""

    ESXI = "ESXi proxy listener"
    PORTS = "per-VM telnet ports"
    ADMIN = "admin channel"
    POLICY = "console policy"
    BACKENDS = "persistence and console logs (vSPC.py's File and Logging backends)"
    LOGS = "console log history (with --log-dir)"
    HTTP = "HTTP listener (off unless --http is given)"
    HOOKS = "hooks (docs/operations.md, 'Hooks')"
    CLUSTER = "cluster mode (docs/cluster.md; needs vspc[cluster])"
    PROCESS = "process"
    SETUP = "configuration file and privileges"


def _allow_list(text: str) -> AllowList:
    return AllowList(convert.cidr_list(text))


_allow_list.__name__ = "allow list"


def _node_id(text: str) -> str:
    if not text or len(text) > 64 or not all(c.isalnum() or c in "._-" for c in text):
        raise convert.ConversionError(
            f"{text!r}: 1-64 letters, digits, '.', '_' or '-' (it is part of Redis keys)"
        )
    return text


_node_id.__name__ = "node id"


def _webhook_url(text: str) -> str:
    """`--alert-webhook`: checked here, parsed again by the service's settings."""
    try:
        parse_url(text)
    except ValueError as exc:
        raise convert.ConversionError(str(exc)) from None
    return text


_webhook_url.__name__ = "URL"


def _metrics(text: str) -> tuple[str, int] | str:
    """`--metrics` with an address (as `--http`), or "" (bare `--metrics`, or
    `metrics = true` in the file: the routes on the `--http` listener)."""
    if text == "" or text.lower() == "true":
        return ""
    return convert.address_port(text)


_metrics.__name__ = "address"


@dataclass(frozen=True, slots=True)
class Flag:
    """One option: its spellings, value, help, file key, reload behaviour and docs.

    Attributes:
        dest: the `Config` field (and argparse dest) it sets.
        options: its spellings, short ones first (argparse order).
        group: its ``--help`` section.
        help: the ``--help`` text.
        doc: the "Meaning" cell of docs/operations.md §3 (markdown).
        doc_default: the "Default" cell there ("" for an empty cell).
        kind: how it is read (`Kind`).
        convert: text -> value (VALUE and OPTIONAL kinds); raises ValueError.
        default: the value when neither flag, file nor environment sets it.
        const: the value of a bare SWITCH / OPTIONAL flag.
        metavar: the value's name in ``--help``.
        toml: its configuration-file key; "" derives it from the first long option
            (``--client-limit`` -> ``client_limit``), None means not in a file.
        live: how a SIGHUP reload applies a change (vspcd/service/reload.py), or ""
            when the change needs a restart.
        compat: where a vSPC.py spelling comes from ("" if vspcd's own).
        doc_spelling: the "Option" cell when it is not derived (markdown).
    """

    dest: str
    options: tuple[str, ...]
    group: Group
    help: str
    doc: str
    doc_default: str = ""
    kind: Kind = Kind.VALUE
    convert: Callable[[str], Any] | None = None
    default: Any = None
    const: Any = None
    metavar: str | None = None
    toml: str | None = ""
    live: str = ""
    compat: str = ""
    doc_spelling: str = ""

    @property
    def name(self) -> str:
        """The spelling errors use: the first long option."""
        return next(o for o in self.options if o.startswith("--"))

    @property
    def key(self) -> str | None:
        """The configuration-file key, or None if a file may not set it."""
        if self.toml is None or self.toml:
            return self.toml
        return self.name[2:].replace("-", "_")

    def spelling(self) -> str:
        """The "Option" cell of docs/operations.md §3."""
        if self.doc_spelling:
            return self.doc_spelling
        shorts = [f"`{o}`" for o in self.options if not o.startswith("--")]
        value = f" {self.metavar}" if self.kind is Kind.VALUE and self.metavar else ""
        longs = [f"`{o}{value}`" for o in self.options if o.startswith("--")]
        if self.kind is Kind.TOGGLE:
            longs.append(f"`--no-{self.name[2:]}`")
            return " / ".join(longs)
        return ", ".join(shorts + longs)


_SECONDS = "SECONDS"
_COUNT = convert.integer(0)
_AT_LEAST_ONE = convert.integer(1)
_HOOK_EVENTS = tuple(HOOK_EVENTS)
_LOG_NAMES = tuple(n.value for n in LogNaming)

# fmt: off
FLAGS: tuple[Flag, ...] = (
    # -- ESXi proxy listener (docs/protocol.md §0 role VM); plain and TLS share the port.
    Flag("proxy_port", ("-p", "--proxy-port"), Group.ESXI, convert=convert.port,
         default=PROXY_PORT, metavar="PORT", compat="vSPCServer -p/--proxy-port",
         help="TCP port ESXi hosts connect to (0 = pick a free port)",
         doc="ESXi listener port (0 = any free port, for tests)", doc_default="13370"),
    Flag("proxy_iface", ("--proxy-iface",), Group.ESXI, convert=convert.nonempty,
         default="0.0.0.0", metavar="ADDR", compat="vSPCServer --proxy-iface",
         help="address the proxy port binds to",
         doc="ESXi listener address", doc_default="0.0.0.0"),
    Flag("ssl", ("--ssl",), Group.ESXI, kind=Kind.SWITCH, const=True, default=False,
         compat="vSPCServer --ssl",
         help="also accept telnets:// (TLS) on the proxy port; plain telnet keeps working",
         doc="also accept TLS on the proxy port (see §5)", doc_default="off"),
    Flag("cert", ("--cert",), Group.ESXI, convert=Path, metavar="FILE",
         compat="vSPCServer --cert",
         help="PEM certificate chain (required with --ssl)",
         doc="PEM certificate chain; required with `--ssl`", doc_default="—"),
    Flag("key", ("--key",), Group.ESXI, convert=Path, metavar="FILE",
         compat="vSPCServer --key",
         help="PEM private key, if not inside --cert",
         doc="PEM private key, if not inside `--cert`", doc_default="—"),
    Flag("proxy_allow", ("--proxy-allow",), Group.ESXI, convert=_allow_list,
         metavar="CIDR,...",
         live="new ESXi connections are checked against the new list at accept; "
         "connections already accepted stay",
         help="only these networks (IPv4/IPv6, e.g. 10.1.0.0/24,fd00::/64) may connect to "
         "the proxy port; others are closed at accept (default: any address)",
         doc="only these IPv4/IPv6 networks (`10.1.0.0/24,fd00::/64`; a bare address is one "
         "host) may connect to the proxy port; others are closed at accept, logged at most "
         "once per 10 s plus a count (§10)", doc_default="any address"),
    Flag("ident_timeout", ("--ident-timeout",), Group.ESXI,
         convert=convert.seconds(positive=True), default=IDENT_TIMEOUT, metavar=_SECONDS,
         help="close a proxy-port connection not identified (VC-UUID) this long after accept",
         doc="a proxy-port connection not identified (DO-PROXY + VC-UUID) this long after "
         "accept is closed; also bounds a TLS handshake", doc_default="20"),
    Flag("preident_bytes", ("--preident-bytes",), Group.ESXI,
         convert=convert.integer(256), default=PREIDENT_BYTES, metavar="BYTES",
         help="close a proxy-port connection that sends more than this before identifying",
         doc="a proxy-port connection that sends more than this before identifying is "
         "closed (ESXi needs a few hundred)", doc_default="16384"),
    Flag("unidentified_limit", ("--unidentified-limit",), Group.ESXI, convert=_COUNT,
         default=UNIDENTIFIED_LIMIT, metavar="N",
         help="unidentified proxy-port connections at once (0 = no cap); at the cap a "
         "newcomer takes an idle one's place or waits in the accept queue",
         doc="unidentified proxy-port connections at once (0 = no cap); at the cap a "
         "newcomer takes the place of the longest-silent one of the busiest address, "
         "or waits in the kernel's accept queue; nobody is refused", doc_default="1024"),
    Flag("unidentified_per_host", ("--unidentified-per-host",), Group.ESXI, convert=_COUNT,
         default=UNIDENTIFIED_PER_HOST, metavar="N",
         help="unidentified proxy-port connections at once from one address; newer ones "
         "are refused (0 = no cap)",
         doc="a hard cap per source address, newest refused (0 = none: one ESXi host "
         "reconnects up to 1,024 VMs at once)", doc_default="0"),
    Flag("tls_handshake_limit", ("--tls-handshake-limit",), Group.ESXI, convert=_COUNT,
         default=TLS_HANDSHAKE_LIMIT, metavar="N",
         help="TLS handshakes in progress at once; newer ones are refused (0 = no cap)",
         doc="TLS handshakes in progress at once (0 = no cap); more wait, socket only, for "
         "a free slot until `--ident-timeout`", doc_default="64"),
    Flag("tls_handshakes_per_host", ("--tls-handshakes-per-host",), Group.ESXI,
         convert=_COUNT, default=TLS_HANDSHAKES_PER_HOST, metavar="N",
         help="TLS handshakes in progress at once from one address (0 = no cap)",
         doc="the same, per source address", doc_default="16"),
    Flag("consoles_per_host", ("--consoles-per-host",), Group.ESXI, convert=_COUNT,
         default=CONSOLES_PER_HOST, metavar="N",
         help="consoles VM connections from one address may create (0 = no cap); at the "
         "cap the address's longest-idle console makes room, else the new one is refused",
         doc="consoles VM connections from one address may create (0 = no cap); at the cap "
         "that address's longest-forgotten console (no VM, no client) makes room, else the "
         "new console is refused (docs/security.md)", doc_default="2048"),
    Flag("console_limit", ("--console-limit",), Group.ESXI, convert=_COUNT,
         default=CONSOLE_LIMIT, metavar="N",
         help="consoles in all (default 0: a third of the open-file limit); at the cap the "
         "longest-idle console makes room, else the new one is refused",
         doc="consoles in all; at the cap the longest-forgotten console makes room, else the "
         "new console is refused", doc_default="fd limit / 3"),
    # -- Per-console telnet ports for operators.
    Flag("port_range_start", ("-r", "--port-range-start"), Group.PORTS,
         convert=convert.integer(1, 65535), default=PORT_RANGE_START, metavar="PORT",
         compat="vSPCServer -r/--port-range-start",
         help="lowest port handed to a console; ports in use are skipped",
         doc="lowest per-VM telnet port", doc_default="50000"),
    Flag("vm_iface", ("-i", "--interface"), Group.PORTS, convert=convert.nonempty,
         default="127.0.0.1", metavar="ADDR", compat="vSPCServer -i/--interface",
         help="address the per-VM telnet ports bind to",
         doc="address per-VM telnet ports bind to", doc_default="127.0.0.1"),
    Flag("vm_ports", ("--no-vm-ports",), Group.PORTS, kind=Kind.SWITCH, const=False,
         default=True,
         help="do not open per-VM telnet ports (consoles stay reachable via the admin "
         "socket)",
         doc="no per-VM telnet ports (consoles only via the admin channel)",
         doc_default="off"),
    Flag("vm_expire_time", ("--vm-expire-time",), Group.PORTS,
         convert=convert.seconds(positive=False), default=VM_EXPIRE_TIME, metavar=_SECONDS,
         compat="vSPCServer --vm-expire-time", live="for timers started after the reload",
         help="how long a console with no VM and no clients keeps its port",
         doc="how long an idle console (no VM, no clients) keeps its port",
         doc_default="86400"),
    # -- Admin channel: always a Unix socket, optionally also TCP.
    Flag("admin_socket", ("--admin-socket",), Group.ADMIN, convert=Path, metavar="PATH",
         help="Unix socket for vspc/vspctui (default: /run/vspcd/vspcd.sock as root, else "
         "$XDG_RUNTIME_DIR/vspcd.sock or /tmp/vspcd-UID/vspcd.sock)",
         doc="admin Unix socket", doc_default="see §1"),
    Flag("admin_socket_mode", ("--admin-socket-mode",), Group.ADMIN,
         convert=convert.octal_mode, default="0660", metavar="OCTAL",
         help="permission bits of the admin socket",
         doc="its permission bits, read as octal (`660` = `0660`)", doc_default="0660"),
    Flag("admin_socket_group", ("--admin-socket-group",), Group.ADMIN, metavar="GROUP",
         help="group that owns the admin socket (default: the daemon's group)",
         doc="its group", doc_default="daemon's group"),
    Flag("admin_port", ("-a", "--admin-port"), Group.ADMIN, convert=convert.port,
         metavar="PORT", compat="vSPCServer -a/--admin-port",
         help="also serve the admin protocol on this TCP port (off by default; "
         "unauthenticated)",
         doc="also serve the admin protocol on TCP", doc_default="off"),
    Flag("admin_iface", ("--admin-iface",), Group.ADMIN, convert=convert.nonempty,
         default="127.0.0.1", metavar="ADDR", compat="vSPCServer --admin-iface",
         help="address the TCP admin port binds to",
         doc="address of the admin TCP port", doc_default="127.0.0.1"),
    Flag("readonly_group", ("--readonly-group",), Group.ADMIN, metavar="GROUP",
         live="for admin connections made after the reload",
         help="admin-socket peers in this group may watch consoles but not type or change "
         "state",
         doc="Unix-socket peers in this group may watch but not type or change state",
         doc_default="—"),
    Flag("admin_idle_timeout", ("--admin-idle-timeout",), Group.ADMIN,
         convert=convert.seconds(positive=False), default=ADMIN_IDLE_TIMEOUT,
         metavar=_SECONDS,
         help="close admin connections idle this long that are not subscribed, tailing or "
         "attached (0 = never)",
         doc="close admin connections that sent nothing this long and are not subscribed, "
         "tailing or attached (0 = never)", doc_default="300"),
    Flag("admin_per_peer", ("--admin-per-peer",), Group.ADMIN, convert=_AT_LEAST_ONE,
         default=ADMIN_PER_PEER, metavar="N",
         help="admin connections one uid (Unix socket) or one address (TCP) may hold; root "
         "and the daemon's own uid are exempt and keep reserved slots",
         doc="admin connections one uid (Unix socket) or one address (TCP) may hold; root "
         "and the daemon's own uid are exempt", doc_default="16"),
    # -- The audit trail (vspcd/history/audit.py, docs/security.md "Audit trail").
    Flag("audit_log", ("--audit-log",), Group.ADMIN, convert=Path, metavar="FILE",
         help="append one JSON line per operator action (attach, detach, lock, clear, "
         "kick, break, typing, reload; allowed or denied) to FILE; reopened on SIGHUP",
         doc="one JSON line per operator action, allowed or denied (§6, audit log); "
         "reopened on SIGHUP", doc_default="off"),
    Flag("audit_max_size", ("--audit-max-size",), Group.ADMIN, convert=convert.size,
         default=0, metavar="SIZE",
         help="rotate the audit log when it would pass SIZE (e.g. 10M) to FILE.N, highest "
         "N newest; 0 = never (default)",
         doc="rotate the audit log before it passes SIZE, as `--log-max-size`",
         doc_default="0 (off)"),
    Flag("audit_keep", ("--audit-keep",), Group.ADMIN, convert=convert.integer(0, 1000),
         default=LOG_KEEP, metavar="N",
         help=f"rotated audit logs kept (default {LOG_KEEP})",
         doc="rotated audit logs kept (`0`: a full log starts over)",
         doc_default=f"{LOG_KEEP}"),
    # -- Console policy.
    Flag("client_limit", ("--client-limit",), Group.POLICY, convert=_COUNT, metavar="N",
         compat="vSPC.py's VM_CLIENT_LIMIT environment variable (docs/operations.md §4)",
         live="at the next attach; clients already attached stay, even above the new limit",
         help="most clients per console, 0 = unlimited (env VM_CLIENT_LIMIT; default 0)",
         doc="clients per console, 0 = unlimited", doc_default="0"),
    Flag("multi_console", ("--multi-console",), Group.POLICY, kind=Kind.TOGGLE,
         compat="vSPC.py's SUPPORT_MULTI_CONSOLE environment variable "
         "(docs/operations.md §4)",
         help="key consoles by UUID + serviceURI so a VM may have several serial ports "
         "(env SUPPORT_MULTI_CONSOLE; default off)",
         doc="several serial ports per VM, keyed by serviceURI", doc_default="off"),
    Flag("vmotion_abandon", ("--vmotion-abandon",), Group.POLICY,
         convert=convert.seconds(positive=True), default=VMOTION_ABANDON, metavar=_SECONDS,
         live="for timers started after the reload",
         help="grace after a migrating source disconnects before the vMotion is abandoned",
         doc="grace after a migrating source disconnects (docs/protocol.md §4.3 F8)",
         doc_default="60"),
    Flag("takeover_timeout", ("--takeover-timeout",), Group.POLICY,
         convert=convert.seconds(positive=True), default=TAKEOVER_TIMEOUT, metavar=_SECONDS,
         help="when a VM connection from another host claims a console, how long its "
         "current VM connection has to answer a liveness probe before it is replaced "
         f"(default {TAKEOVER_TIMEOUT:g}; docs/security.md)",
         doc="a VM connection from another host than the console's current one waits this "
         "long for the current one to answer a liveness probe; silence lets it take over "
         '(docs/security.md, "Console takeover")', doc_default="5"),
    Flag("no_notices", ("--no-notices",), Group.POLICY, kind=Kind.SWITCH, const=True,
         default=False,
         help="do not tell console clients what is going on with '[vspcd: ...]' lines "
         "(VM connected/disconnected, vMotion done, input dropped, lock released), "
         "for scripted clients that must see only VM bytes",
         doc='no `[vspcd: ...]` status lines on consoles (§8, "Console notices"), for '
         "scripted clients that must see only VM bytes", doc_default="off"),
    Flag("client_queue", ("--client-queue",), Group.POLICY, convert=_AT_LEAST_ONE,
         default=CLIENT_QUEUE, metavar="BYTES",
         live="for telnet clients connecting after the reload",
         help="output queued per client before that client overflows",
         doc="output queued per client before it counts as overflowing",
         doc_default="1048576"),
    Flag("output_budget", ("--output-budget",), Group.POLICY, convert=_AT_LEAST_ONE,
         default=OUTPUT_BUDGET, metavar="BYTES",
         help="console output queued for all clients together; past it the clients with "
         "the most unread output are disconnected with a notice",
         doc="console output queued for all telnet and attach clients together; past it "
         "the clients with the most unread output are disconnected with a notice "
         "(docs/security.md)", doc_default="268435456"),
    Flag("hold_limit", ("--hold-limit",), Group.POLICY, convert=_COUNT,
         default=HOLD_LIMIT, metavar="BYTES",
         help="client input held per console while a vMotion is in flight",
         doc="client input held per console during a vMotion (docs/protocol.md §4.4)",
         doc_default="1048576"),
    Flag("scrollback", ("--scrollback",), Group.POLICY, convert=_COUNT,
         default=SCROLLBACK, metavar="BYTES",
         help="console output kept per console and replayed to new clients",
         doc="console output kept per console (for `--context`, `attach --replay`, `tail`)",
         doc_default="65536"),
    # -- Backends (vSPC.py's File and Logging): None means off.
    Flag("persist_file", ("-f", "--persist-file"), Group.BACKENDS, convert=Path,
         metavar="PATH", compat="vSPC.py --backend File --backend-args '-f PATH'",
         help="remember consoles and their telnet ports across restarts in this SQLite "
         "file (created 0600); same as --backend File --backend-args '-f PATH'",
         doc="remember consoles and their telnet ports across restarts (§6, persistence)",
         doc_default="off"),
    Flag("log_dir", ("--log-dir",), Group.BACKENDS, convert=Path, metavar="DIR",
         compat="vSPC.py --backend Logging --backend-args '-l DIR'",
         help="append every console's output to DIR/PREFIX-NAME; SIGHUP reopens the files",
         doc="append every console's output to `DIR/PREFIX-NAME` (§6, console logs)",
         doc_default="off"),
    Flag("log_prefix", ("--log-prefix",), Group.BACKENDS, convert=convert.word,
         metavar="PREFIX", compat="vSPC.py --backend Logging --backend-args '-p PREFIX'",
         live="console log files are reopened with the new settings",
         help=f"first part of console log file names (default {LOG_PREFIX}; '' for none)",
         doc="first part of console log names (`''`: none); needs `--log-dir`",
         doc_default=LOG_PREFIX),
    Flag("log_mode", ("--log-mode",), Group.BACKENDS, convert=convert.octal_mode,
         metavar="OCTAL", compat="vSPC.py --backend Logging --backend-args '-m MODE'",
         live="console log files are reopened with the new settings",
         help="permission bits of new console log files (default 0600)",
         doc="mode of new console logs; needs `--log-dir`", doc_default="0600"),
    Flag("context", ("--context",), Group.BACKENDS, convert=_COUNT, metavar="BYTES",
         compat="vSPC.py --backend Logging --backend-args '--context N'",
         live="for telnet clients connecting after the reload",
         help="bytes of scrollback replayed to a new telnet client (default 0: none; "
         "at most --scrollback)",
         doc="scrollback replayed to each new telnet client before live output (at most "
         "`--scrollback`)", doc_default="0"),
    Flag("backend", ("--backend",), Group.BACKENDS, metavar="NAME",
         compat="vSPCServer --backend",
         help="vSPC.py spelling: Memory (default), File or Logging (any case); or a plugin "
         "(docs/plugins.md): module:Class, a vspc.backends entry point, or vSPC.py's "
         "module vSPCBackendNAME on PYTHONPATH",
         doc="vSPC.py spelling: `Memory`, `File` or `Logging`, any case (§9); anything "
         "else is a plugin: `module:Class`, a `vspc.backends` entry point, or vSPC.py's "
         "module `vSPCBackendNAME` (§6, plugin backends)", doc_default="Memory"),
    Flag("backend_args", ("--backend-args",), Group.BACKENDS, metavar="ARGS",
         compat="vSPCServer --backend-args (getopt: the next word whatever it looks like)",
         help="vSPC.py spelling, one shell-quoted string: File: '-f PATH'; "
         "Logging: '[-l DIR] [-p PREFIX] [-m MODE] [--context N]'; a plugin gets the "
         "string as it is",
         doc="vSPC.py spelling: that backend's options as one shell-quoted word (§9); a "
         "plugin gets the string as it is", doc_default="—"),
    # -- Console log history (vspcd/history/consolelog.py).  Defaults are None so that
    # a flag given without --log-dir can be named in the error.
    Flag("log_name", ("--log-name",), Group.LOGS, convert=convert.choice(_LOG_NAMES),
         metavar="|".join(_LOG_NAMES),
         live="console log files are reopened with the new settings",
         help="console log file names: PREFIX-NAME (default), the 32-hex console key "
         "(OpenStack Nova's serial_log_dir layout), or PREFIX-NAME-KEY",
         doc="console log file names: `PREFIX-NAME`, the 32-hex console key (OpenStack "
         "Nova's layout), or `PREFIX-NAME-KEY` (§6, console logs)", doc_default="name"),
    Flag("log_timestamps", ("--log-timestamps",), Group.LOGS, kind=Kind.SWITCH, const=True,
         live="console log files are reopened with the new settings",
         help="start every console log line with a 25-byte UTC timestamp",
         doc="start every console log line with a 25-byte UTC timestamp",
         doc_default="off"),
    Flag("log_events", ("--log-events",), Group.LOGS, kind=Kind.SWITCH, const=True,
         live="console log files are reopened with the new settings",
         help="write console events (connects, vMotions, clients) as JSON lines to "
         "FILE.events beside each console log",
         doc="console events as JSON lines in `FILE.events` beside each log",
         doc_default="off"),
    Flag("log_flush", ("--log-flush",), Group.LOGS,
         convert=convert.seconds(positive=False, maximum=3600), metavar=_SECONDS,
         live="console log files are reopened with the new settings",
         help="write buffered console output at least this often; 0 = every write "
         f"(default {LOG_FLUSH:g})",
         doc="write buffered console output at least this often; `0` = every chunk as it "
         "arrives", doc_default=f"{LOG_FLUSH:g}"),
    Flag("log_max_size", ("--log-max-size",), Group.LOGS, convert=convert.size,
         metavar="SIZE", live="console log files are reopened with the new settings",
         help="rotate a console log when it would pass SIZE (e.g. 10M) to FILE.N, "
         "highest N newest; 0 = never (default)",
         doc="rotate a console log before it passes SIZE (`4096`, `64K`, `10M`, `1G`)",
         doc_default="0 (off)"),
    Flag("log_keep", ("--log-keep",), Group.LOGS, convert=convert.integer(0, 1000),
         metavar="N", live="console log files are reopened with the new settings",
         help=f"rotated files kept per console (default {LOG_KEEP})",
         doc="rotated files kept per console (`0`: a full log starts over)",
         doc_default=f"{LOG_KEEP}"),
    Flag("log_compress", ("--log-compress",), Group.LOGS, kind=Kind.SWITCH, const=True,
         live="console log files are reopened with the new settings",
         help="gzip rotated console logs (in a child process) to FILE.N.gz",
         doc="gzip rotated console logs (child process); needs `--log-max-size`",
         doc_default="off"),
    Flag("record_dir", ("--record-dir",), Group.LOGS, convert=Path, metavar="DIR",
         help="record output and typed input of consoles an [[access]] rule marks "
              "record_input = true, as asciicast v2 files in DIR (typed input holds passwords)",
         doc="asciicast v2 recordings (output and typed input) of the consoles an "
             "`[[access]]` rule marks `record_input = true` (docs/security.md, "
             "\"Input recording\"); without it nothing is recorded",
         doc_default="off"),
    # -- The HTTP listener (vspcd/faces/http/).
    Flag("http", ("--http",), Group.HTTP, convert=convert.address_port,
         metavar="[ADDR:]PORT",
         help="serve HTTP GET here; a bare PORT binds 127.0.0.1",
         doc="HTTP GET listener; a bare PORT binds 127.0.0.1 (§6, HTTP)", doc_default="off"),
    Flag("metrics", ("--metrics",), Group.HTTP, kind=Kind.OPTIONAL, convert=_metrics,
         const="", metavar="[ADDR:]PORT",
         live="at the next request: /metrics and /healthz are served or 404 (a listener "
         "that is not running needs a restart: http is not live)",
         help="serve GET /metrics (Prometheus) and GET /healthz on the HTTP listener; "
         "with [ADDR:]PORT the HTTP listener is started there (same as --http; a bare "
         "PORT binds 127.0.0.1); a config file may say metrics = true",
         doc="serve `GET /metrics` (Prometheus) and `GET /healthz` on the HTTP listener; "
         'with an address it starts that listener there (§6, "Metrics"); live on reload',
         doc_default="off", doc_spelling="`--metrics [[ADDR:]PORT]`"),
    Flag("http_console_log", ("--http-console-log",), Group.HTTP, kind=Kind.SWITCH,
         const=True,
         help="serve GET /console_log/UUID (the last 100 KiB of that console's log, "
         "Nova's serial_log_uri); needs --http and --log-dir",
         doc="serve `GET /console_log/UUID` (Nova's `serial_log_uri`); needs `--http` and "
         "`--log-dir`", doc_default="off"),
    # -- Hooks (vspcd/ext/hooks.py).
    Flag("no_builtin_alerts", ("--no-builtin-alerts",), Group.HOOKS, kind=Kind.SWITCH,
         const=True, default=False,
         live="at each console's next output; hold-offs and unfinished lines are kept",
         help="turn off the built-in console alert rules (kernel panic, Oops, BUG, soft "
         "lockup, hung task, OOM kill, emergency mode, Windows bug check); [[alert]] "
         "tables of the configuration file still apply",
         doc="turn off the built-in console alert rules (§6, console alerts); "
         "`[[alert]]` tables still apply", doc_default="on"),
    Flag("alert_webhook", ("--alert-webhook",), Group.HOOKS, convert=_webhook_url,
         metavar="URL", live="the next delivery attempt uses it; queued alerts are kept",
         help="POST each console alert as JSON (the console_alert admin event) to this "
         f"http:// or https:// URL; {WEBHOOK_ATTEMPTS} tries with back-off, "
         f"{WEBHOOK_TIMEOUT:g} s each, at most {WEBHOOK_QUEUE} alerts queued",
         doc="POST each console alert as JSON to this `http://` or `https://` URL (§6, "
         "console alerts)", doc_default="off"),
    Flag("alert_webhook_ca", ("--alert-webhook-ca",), Group.HOOKS, convert=Path,
         metavar="FILE", live="the next delivery attempt uses it",
         help="PEM CA certificates that verify an https:// --alert-webhook (default: "
         "the system's)",
         doc="PEM CA certificates verifying an `https://` `--alert-webhook`",
         doc_default="system CAs"),
    Flag("hook_command", ("--hook-command",), Group.HOOKS, convert=convert.shell_command,
         metavar="CMD", live="events after the reload use it; queued ones keep theirs",
         help="run CMD (split like a shell would, but no shell: write sh -c '...' for one) "
         "on console events, with the details in VSPC_* environment variables",
         doc="run CMD on console events with the details in `VSPC_*` variables (§6, "
         "hooks); split like a shell would, run without one", doc_default="off"),
    Flag("hook_events", ("--hook-events",), Group.HOOKS,
         convert=convert.name_list(_HOOK_EVENTS, what="hook event"), metavar="LIST",
         live="events after the reload use it; queued ones keep theirs",
         help="comma-separated events that run the hook (default all: "
         f"{', '.join(_HOOK_EVENTS)})",
         doc="comma-separated hook events that run it (§6, hooks)", doc_default="all"),
    Flag("hook_timeout", ("--hook-timeout",), Group.HOOKS,
         convert=convert.seconds(positive=True), default=HOOK_TIMEOUT, metavar=_SECONDS,
         live="events after the reload use it; queued ones keep theirs",
         help="kill a hook's process group after this long",
         doc="kill a hook's process group after this long", doc_default=f"{HOOK_TIMEOUT:g}"),
    Flag("hook_concurrency", ("--hook-concurrency",), Group.HOOKS, convert=_AT_LEAST_ONE,
         default=HOOK_CONCURRENCY, metavar="N",
         live="at once: a larger value starts queued hooks",
         help="hooks running at once; more events wait in the queue",
         doc="hooks running at once", doc_default=f"{HOOK_CONCURRENCY}"),
    Flag("hook_queue", ("--hook-queue",), Group.HOOKS, convert=_AT_LEAST_ONE,
         default=HOOK_QUEUE, metavar="N",
         live="events after the reload use it",
         help="events waiting for a free slot; beyond this they are dropped (with a "
         "warning)",
         doc="events waiting for a free hook slot; more are dropped, with a warning",
         doc_default=f"{HOOK_QUEUE}"),
    # -- Cluster mode (docs/cluster.md): None means a single node, stdlib only.
    Flag("cluster", ("--cluster",), Group.CLUSTER, metavar="URL",
         help="join a cluster whose registry is this Redis, e.g. redis://10.0.0.5:6379/0 "
         "(also rediss:// and unix://); without it vspcd is a single node",
         doc="join the cluster whose registry is this Redis (`redis://`, `rediss://`, "
         "`unix://`); needs `pip install 'vspc[cluster]'` (docs/cluster.md)",
         doc_default="off"),
    Flag("node_id", ("--node-id",), Group.CLUSTER, convert=_node_id, metavar="NAME",
         help="this node's name in the cluster (letters, digits, . _ -); unique per node",
         doc="this node's name in the cluster, unique per node; needs `--cluster`",
         doc_default="—"),
    Flag("node_address", ("--node-address",), Group.CLUSTER, convert=convert.host_port,
         metavar="HOST:PORT",
         help="where the other nodes reach this node's inter-node link (listened on here)",
         doc="where the other nodes reach this node's inter-node link; needs `--cluster`",
         doc_default="—"),
    Flag("cluster_secret_file", ("--cluster-secret-file",), Group.CLUSTER, convert=Path,
         metavar="FILE",
         help="shared secret (at least 16 bytes) that authenticates inter-node links; "
         "the same file on every node, readable only by vspcd",
         doc="shared secret (at least 16 bytes) authenticating inter-node links; the same "
         "file on every node; needs `--cluster`", doc_default="—"),
    Flag("cluster_lease", ("--cluster-lease",), Group.CLUSTER,
         convert=convert.seconds(positive=True), default=CLUSTER_LEASE, metavar=_SECONDS,
         help="liveness lease of a node in the registry, renewed every third of it; a "
         "dead node's consoles can be taken over once it has expired",
         doc="a node's liveness lease in the registry; a dead node's consoles move once "
         "it has expired", doc_default=f"{CLUSTER_LEASE:g}"),
    Flag("reuse_port", ("--reuse-port",), Group.CLUSTER, kind=Kind.SWITCH, const=True,
         default=False,
         help="open the ESXi listener with SO_REUSEPORT, so several nodes on one host "
         "share the proxy port (the kernel spreads connections over them)",
         doc="open the ESXi listener with `SO_REUSEPORT`, so several nodes on one host "
         "share the proxy port", doc_default="off"),
    # -- Process.
    Flag("log_stdout", ("--stdout",), Group.PROCESS, kind=Kind.SWITCH, const=True,
         default=False, compat="vSPCServer --stdout",
         help="log to stdout instead of stderr (ignored with --daemon)",
         doc="log to stdout instead of stderr (not with `--daemon`)", doc_default="off"),
    Flag("no_fork", ("--no-fork",), Group.PROCESS, kind=Kind.SWITCH, const=True,
         default=False, compat="vSPCServer --no-fork (foreground is the default)",
         help="accepted for vSPC.py compatibility; running in the foreground is the "
         "default",
         doc="accepted, no effect", doc_default="—"),
    Flag("daemon", ("--daemon",), Group.PROCESS, kind=Kind.SWITCH, const=True,
         default=False,
         help="detach from the terminal (double fork) and log to syslog; prefer systemd",
         doc="detach and log to syslog (§2)", doc_default="off"),
    Flag("pidfile", ("--pidfile",), Group.PROCESS, convert=Path, metavar="FILE",
         help="write the daemon's pid here, removed at exit; refuse to start if it names "
         "a live process",
         doc="write the pid; refuse to start if it names a live process", doc_default="—"),
    Flag("debug", ("-d", "--debug"), Group.PROCESS, kind=Kind.SWITCH, const=True,
         default=False, compat="vSPCServer -d/--debug", live="at once (log level)",
         help="log at DEBUG level",
         doc="log at DEBUG level", doc_default="off"),
    Flag("event_loop", ("--event-loop",), Group.PROCESS,
         convert=convert.choice(EVENT_LOOPS), default="auto", metavar="|".join(EVENT_LOOPS),
         help="asyncio: the stdlib loop (epoll); uvloop: the optional extra "
         f"({UVLOOP_HINT}), faster on vMotion and connect storms; "
         "auto: uvloop if installed, else asyncio (default: auto; "
         "env VSPCD_EVENT_LOOP chooses for auto)",
         doc="the event loop (§8): `asyncio` is the stdlib loop on epoll; `uvloop` the "
         f"optional extra, `{UVLOOP_HINT}` (error, exit 2, if it is not installed); "
         "`auto` uvloop when installed, else asyncio", doc_default="`auto`"),
    # -- Configuration file and privileges.
    Flag("config", ("--config",), Group.SETUP, convert=Path, metavar="FILE", toml=None,
         help="TOML file of settings, keys named like the long options "
         f"(default: {SYSTEM_CONFIG} if it exists); SIGHUP re-reads it",
         doc="configuration file (§3a)", doc_default=f"`{SYSTEM_CONFIG}` if it exists"),
    Flag("check_config", ("--check-config",), Group.SETUP, kind=Kind.SWITCH, const=True,
         default=False, toml=None,
         help="validate the flags and the configuration file, then exit (0 valid, 2 not; "
         "one line per problem on stderr)",
         doc="validate flags and configuration file, print `… configuration OK`, exit 0 "
         "(2 if invalid, one line per problem on stderr)"),
    Flag("user", ("--user",), Group.SETUP, convert=convert.nonempty, metavar="USER",
         help="as root: bind every listener, then switch to this user (and its groups)",
         doc="as root: bind, then run as USER (§2a)", doc_default="—"),
    Flag("group", ("--group",), Group.SETUP, convert=convert.nonempty, metavar="GROUP",
         help="with --user: the primary group to switch to (default: the user's own)",
         doc="with `--user`: the group to run as", doc_default="USER's group"),
    Flag("allow_root", ("--allow-root",), Group.SETUP, kind=Kind.SWITCH, const=True,
         default=False,
         help="run as root without --user (refused otherwise; env VSPCD_ALLOW_ROOT=1)",
         doc="run as root without `--user` (§2a)", doc_default="off"),
    Flag("version", ("--version",), Group.SETUP, kind=Kind.VERSION, toml=None,
         help="print the version and exit", doc="print the version"),
)
# fmt: on


def by_dest() -> dict[str, Flag]:
    """The table keyed by `Flag.dest`."""
    return {flag.dest: flag for flag in FLAGS}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The option table of docs/operations.md §3, one row per flag, table order."""
    lines = ["| Option | Default | Meaning |", "|---|---|---|"]
    for flag in FLAGS:
        row = f"| {_cell(flag.spelling())} | {_cell(flag.doc_default)} | {flag.doc} |"
        lines.append(row.replace("|  |", "| |"))  # an empty cell
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """`python -m vspc.vspcd.service.flags --markdown`: print the docs table."""
    if argv != ["--markdown"]:
        print("usage: python -m vspc.vspcd.service.flags --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
