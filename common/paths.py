"""Where vspcd and its clients find each other: the one definition of the default
admin socket and configuration file paths (docs/vspc.md, "Which daemon";
docs/operations.md, "Configuration file").

The daemon's configuration file (TOML, `/etc/vspcd/vspcd.toml` by default) names the
admin socket with the key ``admin_socket`` (the long flag ``--admin-socket`` with
dashes as underscores, the rule for every key of that file).  A client run without
``--socket`` looks, in order, at:

1. ``$VSPC_SOCKET``;
2. ``admin_socket`` in ``$VSPC_CONFIG``, else in `SYSTEM_CONFIG` (so a root daemon
   started with a custom socket is found by every user who can read that file);
3. the per-user daemon's socket (`user_socket`) when it exists and the system one
   does not, else `SYSTEM_SOCKET`.

Only the file reading is I/O here, and it never raises: a client with an unreadable or
broken configuration file falls back to the defaults (the daemon, not the client, is
the one that reports configuration errors).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SYSTEM_CONFIG",
    "SYSTEM_SOCKET",
    "client_socket",
    "configured_socket",
    "daemon_socket",
    "user_socket",
]

SYSTEM_CONFIG = Path("/etc/vspcd/vspcd.toml")
SYSTEM_SOCKET = Path("/run/vspcd/vspcd.sock")
SOCKET_KEY = "admin_socket"


def user_socket(environ: Mapping[str, str], euid: int) -> Path:
    """A non-root daemon's socket: $XDG_RUNTIME_DIR/vspcd.sock, or
    /tmp/vspcd-<uid>/vspcd.sock when XDG_RUNTIME_DIR is unset or empty."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime:
        return Path(runtime) / "vspcd.sock"
    return Path(f"/tmp/vspcd-{euid}/vspcd.sock")


def daemon_socket(environ: Mapping[str, str], euid: int) -> Path:
    """Where vspcd puts its admin socket unless told otherwise: `SYSTEM_SOCKET` as
    root, else `user_socket`."""
    return SYSTEM_SOCKET if euid == 0 else user_socket(environ, euid)


def configured_socket(config: Path) -> Path | None:
    """The ``admin_socket`` a configuration file names, or None (no such file, not
    readable, not TOML, key absent or not a string)."""
    try:
        with config.open("rb") as handle:
            table = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    value = table.get(SOCKET_KEY)
    return Path(value) if isinstance(value, str) and value else None


def client_socket(environ: Mapping[str, str], euid: int) -> Path:
    """The admin socket a client uses without ``--socket`` (rule in the module
    docstring)."""
    if environ.get("VSPC_SOCKET"):
        return Path(environ["VSPC_SOCKET"])
    config = Path(environ["VSPC_CONFIG"]) if environ.get("VSPC_CONFIG") else SYSTEM_CONFIG
    configured = configured_socket(config)
    if configured is not None:
        return configured
    if euid == 0:
        return SYSTEM_SOCKET
    user = user_socket(environ, euid)
    return user if user.exists() and not SYSTEM_SOCKET.exists() else SYSTEM_SOCKET
