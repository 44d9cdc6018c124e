"""The hub's answers to operators: which console a name means, and how it is described.

`find` resolves the names docs/admin-protocol.md accepts for a console; `console_info`
builds the `list` row and `show` object vspcd/faces/render.py turns into JSON
(docs/admin-protocol.md, "Console objects").  Functions of the hub's state
(vspcd/hub/state.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from vspc.common import vmware as vm
from vspc.common.admin import ConsoleInfo, ErrorCode
from vspc.vspcd.hub.clients import client_info
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.state import HubError, HubState

__all__ = ["console_info", "find"]


def find(st: HubState, spec: str) -> Console:
    """Resolve an operator's name for a console; see `Hub.find`."""
    consoles = st.consoles.values()
    found = [c for c in consoles if spec in (c.display_name, str(c.key))]
    if not found:
        try:
            uuid = vm.canonical_uuid(spec)
        except ValueError:
            uuid = None
        if uuid is not None:
            found = [c for c in consoles if c.key.uuid == uuid]
            plain = [c for c in found if not c.key.label]
            found = plain or found
    if not found:
        found = [c for c in consoles if c.name == spec]
    if not found and spec.isdigit() and (by_port := st.by_port.get(int(spec))):
        found = [by_port]
    return only(found, spec)


def console_info(st: HubState, console: Console, *, detail: bool = False) -> ConsoleInfo:
    """One console as a `list` row, or with `detail` the `show` object."""
    holder = console.lock_holder()
    expires_at = console.expires_at
    counters = console.counters
    return ConsoleInfo(
        key=str(console.key),
        name=console.display_name,
        uuid=vm.display_uuid(console.key.uuid),
        vm_name=console.name,
        label=console.key.label,
        port=console.port,
        connected=console.connected,
        clients=len(console.clients),
        vmotion=console.phase,
        expires_in=None if expires_at is None else max(0.0, expires_at - st.clock()),
        lock=None if holder is None else holder.mode,
        lock_holder=None if holder is None else client_info(holder),
        attached=tuple(client_info(c) for c in console.clients),
        created=console.created,
        last_output=console.last_output,
        service_uri=console.service_uri if detail else None,
        vm_peer=(None if console.vm is None else console.vm.channel.peer) if detail else None,
        counters={**asdict(counters), "hold_dropped": console.hold_dropped} if detail else None,
    )


def only(found: Sequence[Console], spec: str) -> Console:
    """The one console `spec` found, else `vm_not_found` or `ambiguous_vm`."""
    if not found:
        raise HubError(ErrorCode.VM_NOT_FOUND, f"no console matches {spec!r}")
    if len(found) > 1:
        names = ", ".join(sorted(c.display_name for c in found))
        raise HubError(ErrorCode.AMBIGUOUS_VM, f"{spec!r} matches several consoles: {names}")
    return found[0]
