"""Hub events -> hook environments: which events run `--hook-command` and the `VSPC_*`
variables each one gets (docs/operations.md "Hooks").

Boundary: pure functions of a typed hub event's fields (vspcd/hub/fields.py, the same
fields the admin event lines and `--log-events` carry), the wall-clock time
and the console's telnet port; no I/O, no process handling (that is vspcd/ext/hooks.py).
docs/operations.md "Hooks" documents every variable; `VARIABLES` is that list, and a
test checks the two agree.

Values are strings a process environment can carry: a NUL (which would end the value
early in `execve`) becomes `?`, and text that is not valid UTF-8 any more (a VM name
decoded with `surrogateescape` keeps its raw bytes; anything else becomes `?`).  The
values are exact otherwise: a VM chooses its own name, so a hook must quote
`"$VSPC_VM_NAME"` like any untrusted input, and should render it with care before it
reaches a terminal.
"""

from __future__ import annotations

from typing import Any

from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo, EventName
from vspc.vspcd.history.lineformat import format_stamp
from vspc.vspcd.hub.events import HubEvent
from vspc.vspcd.hub.fields import EventFields, HookOnly, event_fields

__all__ = ["HOOK_EVENTS", "PREFIX", "VARIABLES", "environment", "env_value", "hook_event"]

PREFIX = "VSPC_"

# The events that run hooks (VSPC_EVENT, --hook-events): admin protocol events, and
# the ones only hooks hear of.  vmotion_begin/peer/notnow, vm_renamed and lock_changed
# do not run hooks.
HOOK_EVENTS: tuple[str, ...] = (
    EventName.VM_CONNECTED,
    EventName.VM_DISCONNECTED,
    EventName.VM_EXPIRED,
    HookOnly.VM_REPLACED,
    HookOnly.TAKEOVER_REFUSED,
    EventName.VMOTION_COMPLETE,
    EventName.VMOTION_ABORT,
    EventName.CLIENT_ATTACHED,
    EventName.CLIENT_DETACHED,
    HookOnly.CONSOLE_CLEARED,
    EventName.CONSOLE_ALERT,
)

# Every variable a hook may see (docs/operations.md "Hooks" lists the same).
VARIABLES = (
    "VSPC_EVENT",
    "VSPC_TIME",
    "VSPC_CONSOLE_KEY",
    "VSPC_VM_NAME",
    "VSPC_VM_UUID",
    "VSPC_VM_LABEL",
    "VSPC_PORT",
    "VSPC_PEER",
    "VSPC_OLD_PEER",
    "VSPC_ACTIVE_PEER",
    "VSPC_SOURCE_PEER",
    "VSPC_FIRST",
    "VSPC_PROBED",
    "VSPC_REASON",
    "VSPC_CLIENTS",
    "VSPC_CLIENT_ID",
    "VSPC_CLIENT_KIND",
    "VSPC_CLIENT_PEER",
    "VSPC_CLIENT_USER",
    "VSPC_CLIENT_UID",
    "VSPC_CLIENT_MODE",
    "VSPC_CLIENT_READONLY",
    "VSPC_ALERT",
    "VSPC_ALERT_SEVERITY",
    "VSPC_ALERT_LINE",
)


def _hook_fields(event: HubEvent) -> EventFields | None:
    found = event_fields(event)
    return found if found is not None and found.name in HOOK_EVENTS else None


def hook_event(event: HubEvent) -> str | None:
    """The hook event name of `event`, or None if no hook runs for it."""
    found = _hook_fields(event)
    return None if found is None else found.name.value


def env_value(text: str) -> str:
    """`text` as an environment value: no NUL, encodable by `os.fsencode`."""
    text = text.replace("\0", "?")
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate surrogateescape cannot carry
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _variables(name: str, value: Any) -> dict[str, str]:
    """The variables of one event field: `VSPC_` and its name in capitals (the client
    object: one `VSPC_CLIENT_*` each); none for a field hooks do not show."""
    if isinstance(value, ClientInfo):
        return {
            "VSPC_CLIENT_ID": str(value.id),
            "VSPC_CLIENT_KIND": value.kind.value,
            "VSPC_CLIENT_PEER": value.peer,
            "VSPC_CLIENT_USER": value.user or "",
            "VSPC_CLIENT_UID": "" if value.uid is None else str(value.uid),
            "VSPC_CLIENT_MODE": value.mode.value,
            "VSPC_CLIENT_READONLY": _flag(value.readonly),
        }
    variable = PREFIX + name.upper()
    if variable not in VARIABLES:
        return {}  # the admin event's `console` list row, for one
    if isinstance(value, bool):
        return {variable: _flag(value)}
    return {variable: "" if value is None else str(value)}


def environment(event: HubEvent, now: float, port: int | None) -> dict[str, str] | None:
    """The `VSPC_*` variables for `event` at Unix time `now` (None: no hook event).

    `port` is the console's telnet port (for `vm_expired` the event's own, the port
    just freed).  Only the variables that apply to the event are present; they come
    from the event's fields (vspcd/hub/fields.py).
    """
    found = _hook_fields(event)
    if found is None:
        return None
    key = event.key
    env = {
        "VSPC_EVENT": found.name.value,
        "VSPC_TIME": format_stamp(now)[:-1].decode("ascii"),
        "VSPC_CONSOLE_KEY": str(key),
        "VSPC_VM_NAME": event.name,
        "VSPC_VM_UUID": vm.display_uuid(key.uuid),
        "VSPC_VM_LABEL": key.label,
        "VSPC_PORT": "" if port is None else str(port),
    }
    for name, value in {**found.fields, **found.details}.items():
        if value is None and name == "time":
            continue  # console_alert: VSPC_TIME is the hook's time, set above
        env.update(_variables(name, value))
    return {name: env_value(value) for name, value in env.items()}
