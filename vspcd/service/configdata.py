"""The configuration record: `Config`, what vspcd was told at startup (docs/operations.md §3).

Boundary: plain data.  vspcd/service/cli.py fills it from the command line, the TOML file
(vspcd/service/configfile.py) and the environment (vspcd/service/compat.py), one field per
flag of vspcd/service/flags.py (tests/vspcd/service/test_flags.py checks the two agree);
everything downstream receives the frozen `Config`, or a part's own settings made from it
(vspcd/service/settings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from vspc.common.paths import SYSTEM_SOCKET, daemon_socket
from vspc.vspcd.ext import hooks
from vspc.vspcd.faces.admin.policy import DEFAULT_POLICY, AccessPolicy
from vspc.vspcd.history.alerts import AlertRule
from vspc.vspcd.net.admission import AllowList
from vspc.vspcd.net.links import IDENT_TIMEOUT, PREIDENT_BYTES
from vspc.vspcd.service.flags import (
    ADMIN_IDLE_TIMEOUT,
    ADMIN_PER_PEER,
    ADMIN_SOCKET_MODE,
    CLIENT_QUEUE,
    CLUSTER_LEASE,
    CONSOLE_LIMIT,
    CONSOLES_PER_HOST,
    HOLD_LIMIT,
    LOG_FLUSH,
    LOG_KEEP,
    LOG_MODE,
    LOG_PREFIX,
    OUTPUT_BUDGET,
    PORT_RANGE_START,
    PROXY_PORT,
    SCROLLBACK,
    TAKEOVER_TIMEOUT,
    TLS_HANDSHAKE_LIMIT,
    TLS_HANDSHAKES_PER_HOST,
    UNIDENTIFIED_LIMIT,
    UNIDENTIFIED_PER_HOST,
    VM_EXPIRE_TIME,
    VMOTION_ABANDON,
)

__all__ = ["Config", "ConfigError", "LogTarget", "default_admin_socket"]


# Config fields no flag sets: tables of the configuration file (vspcd/faces/admin/policy.py).
FILE_ONLY = frozenset({"access_policy", "alert_rules"})


class ConfigError(Exception):
    """The configuration is invalid: one line per problem, each naming the flag, the
    file and key, or the environment variable, and the reason.

    `parse_args` prints each problem as ``vspcd: PROBLEM`` and exits 2; a SIGHUP reload
    (`reload_config`) lets it propagate, so a bad edit leaves the running daemon as it was.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class LogTarget(Enum):
    """Where `__main__` sends log records."""

    STDERR = "stderr"  # the default
    STDOUT = "stdout"  # --stdout
    SYSLOG = "syslog"  # --daemon


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
    consoles_per_host: int = CONSOLES_PER_HOST  # 0 = no cap
    console_limit: int = CONSOLE_LIMIT  # 0 = sized from the fd limit
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
    # The audit trail (docs/security.md "Audit trail").
    audit_log: Path | None = None
    audit_max_size: int = 0
    audit_keep: int = LOG_KEEP
    # Console policy.
    client_limit: int = 0  # 0 = unlimited
    multi_console: bool = False
    vmotion_abandon: float = VMOTION_ABANDON
    takeover_timeout: float = TAKEOVER_TIMEOUT
    no_notices: bool = False
    client_queue: int = CLIENT_QUEUE
    output_budget: int = OUTPUT_BUDGET
    hold_limit: int = HOLD_LIMIT
    scrollback: int = SCROLLBACK
    context: int = 0  # scrollback bytes replayed to a new telnet client
    # Backends (vSPC.py's File and Logging): None means off.
    persist_file: Path | None = None
    log_dir: Path | None = None
    log_prefix: str = LOG_PREFIX
    log_mode: int = LOG_MODE
    # Console log history and the HTTP listener (vspcd/history/consolelog.py, vspcd/faces/http/).
    log_name: str = "name"
    log_timestamps: bool = False
    log_events: bool = False
    log_flush: float = LOG_FLUSH
    log_max_size: int = 0
    log_keep: int = LOG_KEEP
    record_dir: Path | None = None  # asciicast recordings (vspcd/history/recording.py)
    log_compress: bool = False
    http: tuple[str, int] | None = None
    http_console_log: bool = False
    metrics: bool = False  # /metrics and /healthz on the HTTP listener (live)
    # A plugin backend (vspcd/ext/plugins.py): the --backend spelling
    # and its --backend-args; None for the built-ins, which fold into the fields above.
    backend: str | None = None
    backend_args: str | None = None
    # Hooks (vspcd/ext/hooks.py).
    hook_command: str | None = None
    hook_events: tuple[str, ...] | None = None
    hook_timeout: float = hooks.HOOK_TIMEOUT
    hook_concurrency: int = hooks.HOOK_CONCURRENCY
    hook_queue: int = hooks.HOOK_QUEUE
    # Console alerts (vspcd/history/alerts.py): the built-ins, and [[alert]] tables.
    no_builtin_alerts: bool = False
    alert_webhook: str | None = None  # vspcd/ext/webhook.py
    alert_webhook_ca: Path | None = None
    # Process.
    event_loop: str = "auto"  # vspcd/service/eventloop.py
    log_stdout: bool = False
    daemon: bool = False
    pidfile: Path | None = None
    debug: bool = False
    # Configuration file and privileges (docs/operations.md §2a, §3a).
    config: Path | None = None  # the TOML file that was read, if any
    check_config: bool = False
    user: str | None = None
    group: str | None = None
    allow_root: bool = False
    # Cluster mode (docs/cluster.md): None means a single node, stdlib only.
    cluster: str | None = None
    node_id: str | None = None
    node_address: str | None = None
    cluster_secret_file: Path | None = None
    cluster_lease: float = CLUSTER_LEASE
    reuse_port: bool = False
    # access_default and [[access]]: file-only keys (vspcd/faces/admin/policy.py).
    access_policy: AccessPolicy = DEFAULT_POLICY
    # [[alert]]: a file-only key (vspcd/history/alerts.py).
    alert_rules: tuple[AlertRule, ...] = ()

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
