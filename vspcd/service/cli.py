"""Command line + configuration file + environment -> one frozen `Config`.

Boundary: `parse_args(argv, environ)` is the only place that reads options or
environment variables; everything downstream receives the `Config`.  Nothing here
runs at import time, so tests can build configurations from plain lists and dicts.

The parser is built from the flag table (vspcd/service/flags.py).  Precedence:
command-line flags, then the configuration file (vspcd/service/configfile.py), then
the vSPC.py-era environment variables (vspcd/service/compat.py), then the defaults.

Errors (docs/operations.md §3): a bad value, file key, environment variable or
combination is one line on stderr, ``vspcd: --log-max-size: not a size: '12Q' ...``,
and exit status 2; argparse's usage text is printed only for ``--help`` and for a
malformed command line (an unknown option, a missing value).  With ``--check-config``
(ExecStartPre under systemd) every error is one line, usage never.  On SIGHUP
(`reload_config`) the same errors raise `ConfigError` instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from vspc.common.paths import SYSTEM_CONFIG
from vspc.vspcd import __version__
from vspc.vspcd.net.listeners import make_ssl_context, resolve_group
from vspc.vspcd.service import eventloop
from vspc.vspcd.service.compat import env_bool, env_count, fold_backend, glue_backend_args
from vspc.vspcd.service.configdata import Config, ConfigError, default_admin_socket
from vspc.vspcd.service.configfile import read_config_file
from vspc.vspcd.service.flags import (
    FLAGS,
    LOG_FLUSH,
    LOG_KEEP,
    LOG_MODE,
    LOG_PREFIX,
    Flag,
    Group,
    Kind,
)

__all__ = ["build_parser", "parse_args", "reload_config"]

_CLUSTER_SCHEMES = ("redis://", "rediss://", "unix://")
MIN_SECRET = 16


class _Parser(argparse.ArgumentParser):
    raise_errors = False  # reload and --check-config: errors raise ConfigError

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


def _typed(flag: Flag) -> Callable[[str], Any]:
    """The flag's converter for argparse: a bad value is a `ConfigError` naming the
    flag, which argparse does not catch (so no usage text is printed for it)."""
    convert = flag.convert
    assert convert is not None

    def typed(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{flag.name}: {exc}") from None

    typed.__name__ = getattr(convert, "__name__", "value")
    return typed


def _add(group: argparse._ArgumentGroup, flag: Flag) -> None:
    common: dict[str, Any] = {"dest": flag.dest, "help": flag.help}
    match flag.kind:
        case Kind.VERSION:
            group.add_argument(
                *flag.options, action="version", version=f"%(prog)s {__version__}", help=flag.help
            )
        case Kind.SWITCH:
            group.add_argument(
                *flag.options,
                action="store_const",
                const=flag.const,
                default=flag.default,
                **common,
            )
        case Kind.TOGGLE:
            group.add_argument(
                *flag.options, action=argparse.BooleanOptionalAction, default=flag.default, **common
            )
        case Kind.OPTIONAL | Kind.VALUE:
            if flag.kind is Kind.OPTIONAL:
                common.update(nargs="?", const=flag.const)
            if flag.convert is not None:
                common["type"] = _typed(flag)
            group.add_argument(*flag.options, default=flag.default, metavar=flag.metavar, **common)


def build_parser() -> argparse.ArgumentParser:
    """The daemon's argument parser, one argument per row of `FLAGS`."""
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
    groups = {group: parser.add_argument_group(group.value) for group in Group}
    for flag in FLAGS:
        _add(groups[flag.group], flag)
    return parser


def _checking(args: Sequence[str]) -> bool:
    # argparse accepts unambiguous prefixes, so --check counts too.
    return any(len(word) > len("--ch") and "--check-config".startswith(word) for word in args)


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
        SystemExit: status 0 after --help/--version; status 2 for any bad flag, value,
            configuration key or environment variable, with one line per problem on
            stderr (and argparse's usage text for a malformed command line).
    """
    args = glue_backend_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    assert isinstance(parser, _Parser)
    parser.raise_errors = _checking(args)
    try:
        return _load(parser, args, environ, euid=euid, default_config=default_config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{parser.prog}: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


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
    args = glue_backend_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    assert isinstance(parser, _Parser)
    parser.raise_errors = True
    return _load(parser, args, environ, euid=euid, default_config=default_config)


def _load(
    parser: argparse.ArgumentParser,
    args: list[str],
    environ: Mapping[str, str],
    *,
    euid: int | None,
    default_config: Path,
) -> Config:
    # First pass: only to learn which file to read (--help and flag errors end here).
    config_file = parser.parse_args(args).config
    if config_file is None and default_config.exists():
        config_file = default_config
    if config_file is not None:
        # The file's values become defaults, so whatever the command line says wins.
        parser.set_defaults(**read_config_file(config_file))
    ns = parser.parse_args(args)
    ns.config = config_file
    _check(ns)

    # An explicit flag wins outright: the variable is not even validated then, so a
    # stale value in a unit's Environment= cannot block an override on the command line.
    multi = ns.multi_console
    if multi is None:
        multi = bool(env_bool(environ, "SUPPORT_MULTI_CONSOLE"))
    limit = ns.client_limit
    if limit is None:
        limit = env_count(environ, "VM_CLIENT_LIMIT") or 0
    admin_socket = ns.admin_socket
    if admin_socket is None:
        admin_socket = default_admin_socket(environ, os.geteuid() if euid is None else euid)

    # Every Config field is the option of the same name unless computed here: no
    # field-by-field copy to forget when a flag is added.
    computed: dict[str, object] = {
        "admin_socket": admin_socket,
        "client_limit": limit,
        "multi_console": multi,
        "context": ns.context or 0,
        "log_prefix": LOG_PREFIX if ns.log_prefix is None else ns.log_prefix,
        "log_mode": LOG_MODE if ns.log_mode is None else ns.log_mode,
        "log_name": ns.log_name or "name",
        "log_timestamps": bool(ns.log_timestamps),
        "log_events": bool(ns.log_events),
        "log_flush": LOG_FLUSH if ns.log_flush is None else ns.log_flush,
        "log_max_size": ns.log_max_size or 0,
        "log_keep": LOG_KEEP if ns.log_keep is None else ns.log_keep,
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


# -- combinations argparse cannot see ------------------------------------------------


def _check(ns: argparse.Namespace) -> None:
    """Every check of values together (and against the system); `ns` is completed in
    place (backend spellings folded, --metrics ADDR:PORT as --http)."""
    if ns.ssl:
        _check_tls(ns)
    if ns.pidfile is not None and ns.pidfile.is_dir():
        raise ConfigError(f"--pidfile {ns.pidfile}: is a directory")
    fold_backend(ns)
    if ns.persist_file is not None and ns.persist_file.is_dir():
        raise ConfigError(f"--persist-file {ns.persist_file}: is a directory")
    if ns.log_dir is None and (ns.log_prefix is not None or ns.log_mode is not None):
        raise ConfigError("--log-prefix and --log-mode need --log-dir (or --backend Logging)")
    if ns.log_dir is not None and ns.log_dir.exists() and not ns.log_dir.is_dir():
        raise ConfigError(f"--log-dir {ns.log_dir}: not a directory")
    _check_logs(ns)
    _check_http(ns)
    context = ns.context or 0
    if context > ns.scrollback:
        raise ConfigError(
            f"--context {context} is more than the {ns.scrollback} bytes --scrollback keeps"
        )
    _check_group("--admin-socket-group", ns.admin_socket_group)
    _check_cluster(ns)
    _check_group("--readonly-group", ns.readonly_group)
    _check_user(ns.user)
    _check_group("--group", ns.group)
    if ns.event_loop == "uvloop" and not eventloop.uvloop_available():
        raise ConfigError(f"--event-loop uvloop: uvloop is not installed ({eventloop.UVLOOP_HINT})")
    if ns.group is not None and ns.user is None:
        raise ConfigError("--group needs --user (the group alone would leave the daemon root)")


def _check_tls(ns: argparse.Namespace) -> None:
    if ns.cert is None:
        raise ConfigError("--ssl requires --cert FILE")
    _check_readable("--cert", ns.cert)
    if ns.key is not None:
        _check_readable("--key", ns.key)
    # Load the pair now so a wrong key or a non-PEM file is an error at startup, not
    # a traceback once the loop runs.
    try:
        make_ssl_context(ns.cert, ns.key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"--cert/--key: cannot load certificate and key: {exc}") from None


_LOG_FLAGS = (
    ("--log-name", "log_name"),
    ("--log-timestamps", "log_timestamps"),
    ("--log-events", "log_events"),
    ("--log-flush", "log_flush"),
    ("--log-max-size", "log_max_size"),
    ("--log-keep", "log_keep"),
    ("--log-compress", "log_compress"),
)


def _check_logs(ns: argparse.Namespace) -> None:
    if ns.log_dir is None:
        given = [flag for flag, dest in _LOG_FLAGS if getattr(ns, dest) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --log-dir (or --backend Logging)")
    if ns.log_compress and not ns.log_max_size:
        raise ConfigError("--log-compress needs --log-max-size (it compresses rotated files)")


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_http(ns: argparse.Namespace) -> None:
    if ns.metrics is not None:
        # One HTTP listener: --metrics ADDR:PORT is --http ADDR:PORT.
        if ns.metrics == "":
            if ns.http is None:
                raise ConfigError(
                    "--metrics needs an HTTP listener: --http [ADDR:]PORT or --metrics [ADDR:]PORT"
                )
        elif ns.http is None:
            ns.http = ns.metrics
        elif ns.http != ns.metrics:
            raise ConfigError(
                f"--metrics {_show(ns.metrics)} and --http {_show(ns.http)} differ: vspcd "
                "has one HTTP listener; give the address once"
            )
    if ns.http_console_log and (ns.http is None or ns.log_dir is None):
        raise ConfigError("--http-console-log needs --http and --log-dir")


def _check_cluster(ns: argparse.Namespace) -> None:
    """--cluster and its companions: all or nothing, and the extra installed."""
    companions = (
        ("--node-id", ns.node_id),
        ("--node-address", ns.node_address),
        ("--cluster-secret-file", ns.cluster_secret_file),
    )
    if ns.cluster is None:
        for flag, value in companions:
            if value is not None:
                raise ConfigError(f"{flag} needs --cluster")
        return
    if not ns.cluster.startswith(_CLUSTER_SCHEMES):
        raise ConfigError(
            f"--cluster {ns.cluster}: expected redis://HOST:PORT/DB (or rediss://, unix://)"
        )
    for flag, value in companions:
        if value is None:
            raise ConfigError(f"--cluster needs {flag}")
    if ns.persist_file is not None:
        raise ConfigError("--persist-file cannot be used with --cluster: the registry replaces it")
    try:
        secret = ns.cluster_secret_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"--cluster-secret-file {ns.cluster_secret_file}: {exc.strerror}"
        ) from None
    if len(secret) < MIN_SECRET:
        raise ConfigError(f"--cluster-secret-file: the secret must be at least {MIN_SECRET} bytes")
    if importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "--cluster needs the redis client, which is not installed: "
            "pip install 'vspc[cluster]' (redis>=5)"
        )


def _check_readable(flag: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None


def _check_group(flag: str, name: str | None) -> None:
    if name is None:
        return
    try:
        resolve_group(name)  # the lookup the daemon makes when it uses the group
    except KeyError:
        kind = "group id" if name.isdigit() else "group"
        raise ConfigError(f"{flag} {name}: no such {kind}") from None


def _check_user(name: str | None) -> None:
    if name is None:
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            raise ConfigError(f"--user {name}: no such user") from None
        try:
            pwd.getpwuid(int(name))
        except KeyError:
            raise ConfigError(f"--user {name}: no such user id") from None
