"""Each part's own settings, made from the `Config` (docs/architecture.md, import direction).

The lower parts never import the service: the hub takes `HubSettings`, console logs
`LogSettings`, hooks `HookSettings`.  These functions are where the service turns its
`Config` into them, at start and again after a SIGHUP reload (vspcd/service/reload.py).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from typing import Any

from vspc.vspcd.ext.hooks import HookSettings
from vspc.vspcd.ext.webhook import WebhookSettings, parse_url
from vspc.vspcd.faces.admin import server as admin
from vspc.vspcd.faces.admin.access import console_ref
from vspc.vspcd.history.alerts import AlertRule, rules_in_force
from vspc.vspcd.history.consolelog import LogSettings
from vspc.vspcd.history.grep import LogPlace
from vspc.vspcd.history.naming import LogNaming
from vspc.vspcd.history.recording import Recordings, RecordSettings
from vspc.vspcd.hub.console import Cancellable, Console
from vspc.vspcd.hub.hub import HubSettings
from vspc.vspcd.service.configdata import Config

__all__ = [
    "admin_settings",
    "alert_rules",
    "console_limit_for",
    "hook_settings",
    "hub_settings",
    "log_place",
    "log_settings",
    "recordings",
    "webhook_settings",
]

# HubSettings fields spelled differently in Config (the flag keeps vSPC.py-era naming).
_HUB_RENAMED = {"abandon_time": "vmotion_abandon"}


def console_limit_for(fd_limit: int) -> int:
    """`--console-limit 0`: a third of the open-file limit (at least 64).

    A console holds a telnet listener, a live one its VM connection too, and clients
    and log files take more; a third leaves room for them (docs/security.md,
    "Resource bounds").
    """
    return max(64, (fd_limit - 256) // 3)


def hub_settings(config: Config, *, fd_limit: int | None = None) -> HubSettings:
    """The hub's share of the configuration: every HubSettings field Config also has.

    Derived from `dataclasses.fields`, so a setting added to both is passed on without
    a line here; hub-only fields keep their defaults.  `fd_limit` sizes an automatic
    `console_limit` (`console_limit_for`); without it an automatic limit is no cap.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(HubSettings):
        source = _HUB_RENAMED.get(field.name, field.name)
        if hasattr(config, source):
            values[field.name] = getattr(config, source)
    # The one setting whose flag is its negation (--no-notices).
    values["notices"] = not config.no_notices
    if not config.console_limit and fd_limit is not None:
        values["console_limit"] = console_limit_for(fd_limit)
    return HubSettings(**values)


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


def log_place(config: Config) -> LogPlace | None:
    """Where `grep` finds console logs (None without --log-dir)."""
    if config.log_dir is None:
        return None
    return LogPlace(
        config.log_dir, config.log_prefix, LogNaming(config.log_name), config.log_timestamps
    )


def alert_rules(config: Config) -> tuple[AlertRule, ...]:
    """The console alert rules in force: the built-ins unless --no-builtin-alerts,
    then the configuration file's [[alert]] tables."""
    return rules_in_force(config.alert_rules, not config.no_builtin_alerts)


def hook_settings(config: Config) -> HookSettings:
    """The hooks' share of the configuration (the command split once, here)."""
    return HookSettings(
        argv=tuple(shlex.split(config.hook_command)) if config.hook_command else (),
        events=None if config.hook_events is None else frozenset(config.hook_events),
        timeout=config.hook_timeout,
        concurrency=config.hook_concurrency,
        queue=config.hook_queue,
    )


def webhook_settings(config: Config) -> WebhookSettings:
    """The alert webhook's share (the URL was checked when the configuration was read)."""
    url = None if not config.alert_webhook else parse_url(config.alert_webhook)
    return WebhookSettings(url=url, ca_file=config.alert_webhook_ca)


def admin_settings(config: Config) -> admin.AdminSettings:
    """The admin server's share of the configuration."""
    return admin.AdminSettings(
        socket=config.admin_socket,
        socket_mode=config.admin_socket_mode,
        socket_group=config.admin_socket_group,
        port=config.admin_port,
        iface=config.admin_iface,
        readonly_group=config.readonly_group,
        client_queue=config.client_queue,
        idle_timeout=config.admin_idle_timeout,
        per_peer=config.admin_per_peer,
        access=config.access_policy,
    )


def recordings(
    current: Callable[[], Config],
    call_later: Callable[[float, Callable[[], None]], Cancellable],
) -> Recordings | None:
    """Input recording (`--record-dir`, vspcd/history/recording.py), or None when off.

    `current` returns the daemon's configuration now, so the consoles recorded follow
    the `record_input` rules of the last reload (`Recordings.reconsider`).

    Raises:
        OSError: the directory cannot be created or written.
    """
    directory = current().record_dir
    if directory is None:
        return None

    def wants(console: Console) -> bool:
        return current().access_policy.records_input(console_ref(console))

    found = Recordings(
        RecordSettings(directory),
        wants=wants,
        call_later=call_later,
    )
    found.check_directory()
    return found
