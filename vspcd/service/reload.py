"""Applying a re-read configuration to a running daemon (SIGHUP, `systemctl reload`).

vspcd/service/cli.py's `reload_config` produces the new `Config`; this module compares
it with the running one field by field (`dataclasses.fields`, so a field added to
`Config` is compared without anyone listing it) and applies what can change live
through `LIVE`, a table of ``key -> apply function``.  Everything else that changed is
reported as needing a restart and keeps its running value, so the next reload reports
it again until the daemon is restarted (docs/operations.md §3a).

Which keys are live is data of the flag table (`Flag.live` in vspcd/service/flags.py,
which also says how the change takes effect); this module only says how each is
applied: `_through_config` if its consumer reads ``daemon.config`` when it needs the
value, or a function that pushes the new value into the component that holds it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vspc.vspcd.service.configdata import FILE_ONLY, Config
from vspc.vspcd.service.flags import FLAGS
from vspc.vspcd.service.settings import hook_settings, webhook_settings

if TYPE_CHECKING:
    from vspc.vspcd.service.server import Daemon

log = logging.getLogger(__name__)

__all__ = ["LIVE", "Outcome", "apply", "describe"]

Apply = Callable[["Daemon", Config], None]

# Fields that describe this run rather than the service; never "changed".
_IGNORED = frozenset({"check_config"})


def _through_config(daemon: Daemon, new: Config) -> None:
    """The consumer reads `daemon.config` each time (new clients, admin peers)."""


def _hub_setting(hub_field: str, config_field: str | None = None) -> Apply:
    def apply(daemon: Daemon, new: Config) -> None:
        if daemon.hub is not None:
            value = getattr(new, config_field or hub_field)
            daemon.hub.settings = dataclasses.replace(daemon.hub.settings, **{hub_field: value})

    return apply


def _log_level(daemon: Daemon, new: Config) -> None:
    logging.getLogger().setLevel(logging.DEBUG if new.debug else logging.INFO)


def _hooks(daemon: Daemon, new: Config) -> None:
    """Every hook option (vspcd/ext/hooks.py); new events use them, queued ones keep theirs."""
    if daemon.hooks is not None:
        daemon.hooks.reconfigure(hook_settings(new))


def _webhook(daemon: Daemon, new: Config) -> None:
    """The alert webhook (vspcd/ext/webhook.py): the next attempt uses it."""
    if daemon.webhook is not None:
        daemon.webhook.reconfigure(webhook_settings(new))


def _proxy_allow(daemon: Daemon, new: Config) -> None:
    """New ESXi connections are checked against the new list at accept; connections
    already accepted stay (docs/security.md)."""
    listener = daemon.proxy_listener
    if listener is not None:
        listener.set_allow_list(new.proxy_allow)


def _alerts(daemon: Daemon, new: Config) -> None:
    """The alert rules (vspcd/history/watch.py): chosen again at each console's next
    output; hold-offs and unfinished lines are kept."""
    daemon.reconfigure_alerts(new)


def _console_logs(daemon: Daemon, new: Config) -> None:
    """Every console-log option but --log-dir itself (idempotent: several changed
    keys re-apply the same settings)."""
    daemon.reconfigure_logs(new)


def _access_policy(daemon: Daemon, new: Config) -> None:
    """The admin server reads `daemon.config`; recordings re-ask which consoles; the
    hub opens and closes telnet ports as `telnet = false` now says."""
    if daemon.recordings is not None:
        daemon.recordings.reconsider()
    if daemon.hub is not None:
        daemon.hub.set_telnet_rule(new.access_policy.telnet_allowed)


_APPLY: dict[str, Apply] = {
    # The access rules (access_default, [[access]]): the admin server re-judges every
    # open connection when the daemon's config is set (vspcd/faces/admin/link.py).
    "access_policy": _access_policy,
    # Checked at each attach; consoles already over the new limit keep their clients.
    "client_limit": _hub_setting("client_limit"),
    # Timers started after the reload use the new values.
    "vm_expire_time": _hub_setting("vm_expire_time"),
    "vmotion_abandon": _hub_setting("abandon_time", "vmotion_abandon"),
    # Allow lists: the admin server asks for the group at each new connection.
    "readonly_group": _through_config,
    # The ESXi allow list: swapped on the running listener.
    "proxy_allow": _proxy_allow,
    # Per new telnet client.
    "client_queue": _through_config,
    "context": _through_config,
    # /metrics and /healthz: the routes read daemon.config.metrics per request (a
    # listener that is not running needs a restart: `http` is not live).
    "metrics": _through_config,
    # The daemon's own log.
    "debug": _log_level,
    # Console logs (vspcd/history/consolelog.py): files are reopened with the new settings.
    **dict.fromkeys(
        (
            "log_prefix",
            "log_mode",
            "log_name",
            "log_timestamps",
            "log_events",
            "log_flush",
            "log_max_size",
            "log_keep",
            "log_compress",
        ),
        _console_logs,
    ),
    # Console alerts: the built-ins switch and the [[alert]] tables.
    "no_builtin_alerts": _alerts,
    "alert_rules": _alerts,
    "alert_webhook": _webhook,
    "alert_webhook_ca": _webhook,
    # Hooks (vspcd/ext/hooks.py): the command, its events and bounds.
    **dict.fromkeys(
        ("hook_command", "hook_events", "hook_timeout", "hook_concurrency", "hook_queue"),
        _hooks,
    ),
}


# The live keys, in table order; a flag marked live without a way to apply it here
# fails at import (and in tests/vspcd/service/test_flags.py).
LIVE: dict[str, Apply] = {flag.dest: _APPLY[flag.dest] for flag in FLAGS if flag.live}
# Keys of the file that no flag sets (the access rules) are live too.
LIVE.update((key, _APPLY[key]) for key in sorted(FILE_ONLY))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reload did: the config now running, and which keys changed how."""

    config: Config
    applied: tuple[tuple[str, object, object], ...]  # (key, old, new)
    restart: tuple[tuple[str, object, object], ...]
    failed: tuple[tuple[str, str], ...]  # (key, reason)


def apply(daemon: Daemon, new: Config) -> Outcome:
    """Apply `new` to `daemon` where `LIVE` allows; returns the outcome.

    `daemon.config` becomes the old configuration with only the applied keys changed.
    """
    old = daemon.config
    applied: list[tuple[str, object, object]] = []
    restart: list[tuple[str, object, object]] = []
    failed: list[tuple[str, str]] = []
    live_values: dict[str, object] = {}
    for field in dataclasses.fields(Config):
        key = field.name
        before, after = getattr(old, key), getattr(new, key)
        if key in _IGNORED or before == after:
            continue
        action = LIVE.get(key)
        if action is None:
            restart.append((key, before, after))
            continue
        try:
            action(daemon, new)
        except Exception as exc:  # one bad setter must not stop the others
            log.exception("reload: applying %s failed", key)
            failed.append((key, str(exc)))
            continue
        applied.append((key, before, after))
        live_values[key] = after
    daemon.config = dataclasses.replace(old, **live_values)  # type: ignore[arg-type]
    return Outcome(daemon.config, tuple(applied), tuple(restart), tuple(failed))


def describe(outcome: Outcome, source: str) -> str:
    """The one log line a reload writes."""

    def show(changes: tuple[tuple[str, object, object], ...]) -> str:
        return ", ".join(f"{key} {_value(old)} -> {_value(new)}" for key, old, new in changes)

    parts = []
    if outcome.applied:
        parts.append(f"applied {show(outcome.applied)}")
    if outcome.restart:
        parts.append(f"needs a restart (still running the old value): {show(outcome.restart)}")
    if outcome.failed:
        parts.append("failed: " + ", ".join(f"{key} ({why})" for key, why in outcome.failed))
    return f"reloaded {source}: " + ("; ".join(parts) if parts else "nothing changed")


def _value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "unset"
    if isinstance(value, str):
        return repr(value)
    return str(value)
