"""What one admin connection may do on which console: the access half of `AdminLink`
(vspcd/faces/admin/link.py), as a mixin it inherits.

The peer's identity (vspcd/faces/admin/access.py), its level per console judged by the
server's gate (vspcd/faces/admin/policy.py) and cached until the rules change (a
reload bumps the gate's generation), and the lookup of the console a request names
among the consoles the peer may see: a console it may not watch does not exist for
it, with no hint (docs/admin-protocol.md "Access control").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vspc.common.admin import AdminError, ErrorCode, Level, Request, required_level
from vspc.common.display import safe
from vspc.vspcd.faces.admin.access import Identity, console_ref, row_ref
from vspc.vspcd.faces.admin.handlers import actor_of
from vspc.vspcd.faces.admin.policy import ConsoleRef
from vspc.vspcd.faces.admin.resolve import find_among
from vspc.vspcd.hub.audit import Actor
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.hub import Hub, HubError

if TYPE_CHECKING:
    from vspc.vspcd.faces.admin.server import AdminServer

__all__ = ["LinkAccess"]


class LinkAccess:
    """The peer's identity and its level on each console, for `AdminLink`."""

    # Set by AdminLink.__init__.
    server: AdminServer
    _hub: Hub
    _identity: Identity
    actor: Actor  # the identity as audit records name it
    _denied_on: Console | None  # the console `check` last refused
    _levels: dict[tuple[str, str, str], Level]  # per (key, name, vm name)
    _levels_generation: int  # the gate they were judged by

    @property
    def identity(self) -> Identity:
        """Who the peer is (set at connect; cluster mode sets a relayed operator's)."""
        return self._identity

    @identity.setter
    def identity(self, identity: Identity) -> None:
        self._identity = identity
        self.actor = actor_of(identity)
        self._levels.clear()

    def _level_of(self, ref: ConsoleRef) -> Level:
        gate = self.server.gate
        if self._levels_generation != gate.generation:
            self._levels.clear()
            self._levels_generation = gate.generation
        cache_key = (ref.uuid + "_" + ref.label, ref.name, ref.vm_name)
        level = self._levels.get(cache_key)
        if level is None:
            if len(self._levels) > 4096:  # renamed consoles leave stale entries
                self._levels.clear()
            level = self._levels[cache_key] = gate.level(self._identity, ref)
        return level

    def level(self, console: Console) -> Level:
        """The peer's level on `console`."""
        return self._level_of(console_ref(console))

    def may_see(self, console: Console) -> bool:
        """The console exists for this peer (level watch or more)."""
        return self.level(console) is not Level.NONE

    def ref_visible(self, ref: ConsoleRef) -> bool:
        """A console described by `ref` (a log file's, an alert's) exists for this peer."""
        return self._level_of(ref) is not Level.NONE

    def row_visible(self, row: dict[str, Any]) -> bool:
        """Cluster mode: a `list` row from another node, judged here."""
        return self._level_of(row_ref(row)) is not Level.NONE

    def find(self, request: Request, spec: str | None = None) -> Console:
        """The console `request` names (its `vm`, or `spec`), checked against the
        level the request needs on it.

        Raises:
            HubError: `vm_not_found` (also for a console the peer may not watch:
                no hint that it exists) or `ambiguous_vm` among the visible ones.
            AdminError: `permission_denied`.
        """
        text = request.fields["vm"] if spec is None else spec
        hub = self._hub
        gate = self.server.gate
        if gate.hides_nothing_from(self._identity):
            console = hub.find(text)  # the common case: the hub's own lookup
        else:
            console = find_among([c for c in hub.consoles() if self.may_see(c)], text)
        self.check(request, console)
        return console

    def check(self, request: Request, console: Console) -> None:
        """Raise unless the peer's level on `console` covers `request`."""
        level = self.level(console)
        if not level.allows(required_level(request)):
            self._denied_on = None if level is Level.NONE else console
        if level is Level.NONE:
            spec = request.fields.get("vm") or request.fields.get("port")
            raise HubError(ErrorCode.VM_NOT_FOUND, f"no console matches {str(spec)!r}")
        needed = required_level(request)
        if level.allows(needed):
            return
        name = safe(console.display_name)
        if request.cmd == "attach" and level is Level.WATCH:
            text = f"watch access on {name}: attach with readonly or free_for_all_or_readonly"
        elif request.cmd == "attach":
            lock = request.fields["lock"].value
            text = f"{level.value} access on {name}: the {lock} lock needs {needed.value}"
        else:
            text = f"{level.value} access on {name}: {request.cmd} needs {needed.value}"
        raise AdminError(ErrorCode.PERMISSION_DENIED, text, request.id)
