"""Hub events -> hook environments (issue #11 item 5): which events run `--hook-command`
and the `VSPC_*` variables each one gets.

Boundary: pure functions of a typed hub event (vspcd/hub/events.py), the wall-clock time
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

from vspc.common import vmware as vm
from vspc.common.admin import ClientInfo
from vspc.vspcd.history.lineformat import format_stamp
from vspc.vspcd.hub.events import (
    ClientAttached,
    ClientDetached,
    ConsoleCleared,
    ConsoleExpired,
    HubEvent,
    TakeoverRefused,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionCompleted,
    VmReplaced,
)

__all__ = ["HOOK_EVENTS", "PREFIX", "VARIABLES", "environment", "env_value", "hook_event"]

PREFIX = "VSPC_"

# Hook event name (VSPC_EVENT, --hook-events) -> the hub event type it stands for.  The
# names are the admin protocol's event names where one exists.
HOOK_EVENTS: dict[str, type] = {
    "vm_connected": VmConnected,
    "vm_disconnected": VmDisconnected,
    "vm_expired": ConsoleExpired,
    "vm_replaced": VmReplaced,
    "takeover_refused": TakeoverRefused,
    "vmotion_complete": VMotionCompleted,
    "vmotion_abort": VMotionAborted,
    "client_attached": ClientAttached,
    "client_detached": ClientDetached,
    "console_cleared": ConsoleCleared,
}
_NAMES = {kind: name for name, kind in HOOK_EVENTS.items()}

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
)


def hook_event(event: HubEvent) -> str | None:
    """The hook event name of `event`, or None if no hook runs for it."""
    return _NAMES.get(type(event))


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


def _client(client: ClientInfo) -> dict[str, str]:
    return {
        "VSPC_CLIENT_ID": str(client.id),
        "VSPC_CLIENT_KIND": client.kind.value,
        "VSPC_CLIENT_PEER": client.peer,
        "VSPC_CLIENT_USER": client.user or "",
        "VSPC_CLIENT_UID": "" if client.uid is None else str(client.uid),
        "VSPC_CLIENT_MODE": client.mode.value,
        "VSPC_CLIENT_READONLY": _flag(client.readonly),
    }


def environment(event: HubEvent, now: float, port: int | None) -> dict[str, str] | None:
    """The `VSPC_*` variables for `event` at Unix time `now` (None: no hook event).

    `port` is the console's telnet port (for `vm_expired` the event's own, the port
    just freed).  Only the variables that apply to the event are present.
    """
    name = hook_event(event)
    if name is None:
        return None
    key = event.key
    if isinstance(event, ConsoleExpired):
        port = event.port
    env = {
        "VSPC_EVENT": name,
        "VSPC_TIME": format_stamp(now)[:-1].decode("ascii"),
        "VSPC_CONSOLE_KEY": str(key),
        "VSPC_VM_NAME": event.name,
        "VSPC_VM_UUID": vm.display_uuid(key.uuid),
        "VSPC_VM_LABEL": key.label,
        "VSPC_PORT": "" if port is None else str(port),
    }
    match event:
        case VmConnected(peer=peer, first=first):
            env.update(VSPC_PEER=peer, VSPC_FIRST=_flag(first))
        case VmDisconnected(peer=peer):
            env["VSPC_PEER"] = peer
        case VmReplaced(old_peer=old, new_peer=new, probed=probed):
            env.update(VSPC_PEER=new, VSPC_OLD_PEER=old, VSPC_PROBED=_flag(probed))
        case TakeoverRefused(peer=peer, active_peer=active):
            env.update(VSPC_PEER=peer, VSPC_ACTIVE_PEER=active)
        case VMotionCompleted(peer=peer, source=source):
            env.update(VSPC_PEER=peer, VSPC_SOURCE_PEER=source)
        case VMotionAborted(reason=reason):
            env["VSPC_REASON"] = reason.value
        case ClientAttached(client=client):
            env.update(_client(client))
        case ClientDetached(client=client, reason=reason):
            env.update(_client(client))
            env["VSPC_REASON"] = reason or ""
        case ConsoleCleared(clients=clients, reason=reason):
            env.update(VSPC_CLIENTS=str(clients), VSPC_REASON=reason)
    return {name: env_value(value) for name, value in env.items()}
