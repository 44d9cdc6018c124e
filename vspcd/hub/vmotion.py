"""The per-console vMotion state machine as data (docs/protocol.md §4.5, F1-F11).

As in h11's `_state.py`, the machine is a table: `(phase, trigger, role) -> Action`,
where `phase` is the console's vMotion phase (`VMotionPhase`, the admin protocol's
own enum), `trigger` what just happened, and `role` the role of the VM connection it
happened on (`console.Role`).  A missing entry is F10: log and ignore.  The hub
(vspcd/hub/migration.py; hub.py and binding.py for data, close and DO-PROXY) looks
the action up and carries it out; the checks that depend on data rather than state
(the cookie, the sequence, the NOTNOW grounds of F1) stay in the hub's action code.

    NORMAL  --BEGIN on ACTIVE--> PENDING (GOAHEAD) or NORMAL (NOTNOW, F1)
    any     --BEGIN elsewhere--> NOTNOW (not active: nothing to migrate)
    PENDING --PEER on UNBOUND--> PEERED (PEER-OK)
    PEERED  --PEER on UNBOUND--> ignored, logged (TV-19: second PEER)
    PEERED  --COMPLETE on DESTINATION--> NORMAL, destination active
    PEERED  --CLOSED on DESTINATION--> PENDING (F6)
    PENDING|PEERED --ABORT on ACTIVE (the source)--> NORMAL (source keeps the port)
    PENDING|PEERED --DATA on ACTIVE--> NORMAL (F2: the source resumed)
    PENDING|PEERED --BEGIN on ACTIVE--> abort, then answer the BEGIN (F9)
    PENDING|PEERED --CLOSED on ACTIVE--> abandon timer armed (F7)
    PENDING|PEERED --ABANDON (timer)--> NORMAL, no VM (F8)
    PENDING|PEERED --PROXY on UNBOUND--> abort; the newcomer binds (F11; the takeover
                                          policy decides first who may, docs/security.md)
    anything else  --> F10
"""

from __future__ import annotations

from enum import Enum

from vspc.vspcd.hub.console import Phase, Role

__all__ = ["TABLE", "Action", "Trigger", "next_action"]


class Trigger(Enum):
    """What happened on a console's VM connections."""

    BEGIN = "begin"  # VMOTION-BEGIN
    PEER = "peer"  # VMOTION-PEER with this console's cookie
    COMPLETE = "complete"  # VMOTION-COMPLETE
    ABORT = "abort"  # VMOTION-ABORT
    DATA = "data"  # console output
    CLOSED = "closed"  # the connection closed
    ABANDON = "abandon"  # the F8 grace timer fired (role: the departed source's)
    PROXY = "proxy"  # a fresh DO-PROXY + UUID for this console's key

    __hash__ = object.__hash__  # as console.Role: singletons, C-fast table lookups


class Action(Enum):
    """What the hub does (docs/protocol.md §4.3 names in the comments)."""

    BEGIN = "begin"  # GOAHEAD, or NOTNOW on an F1 ground
    REBEGIN = "rebegin"  # F9: implicit abort, then BEGIN
    NOTNOW = "notnow"  # BEGIN on a connection that is not active
    BIND_DESTINATION = "bind_destination"  # PEER-OK
    SECOND_PEER = "second_peer"  # TV-19: logged, no answer
    COMPLETE = "complete"  # switch to the destination
    ABORT = "abort"  # the source keeps the port and gets the hold
    RESUMED = "resumed"  # F2: treat as ABORT
    HOLD_DESTINATION_OUTPUT = "hold_destination_output"  # released on COMPLETE
    UNBIND_DESTINATION = "unbind_destination"  # F6
    SOURCE_LEFT = "source_left"  # F7: arm the abandon timer
    ABANDON = "abandon"  # F8
    REPLACE = "replace"  # F11
    IGNORE = "ignore"  # F10: log and ignore


_MIGRATING = (Phase.PENDING, Phase.PEERED)

TABLE: dict[tuple[Phase, Trigger, Role], Action] = {
    (Phase.NORMAL, Trigger.BEGIN, Role.ACTIVE): Action.BEGIN,
    **{(p, Trigger.BEGIN, Role.ACTIVE): Action.REBEGIN for p in _MIGRATING},
    **{(p, Trigger.BEGIN, r): Action.NOTNOW for p in Phase for r in Role if r is not Role.ACTIVE},
    (Phase.PENDING, Trigger.PEER, Role.UNBOUND): Action.BIND_DESTINATION,
    (Phase.PEERED, Trigger.PEER, Role.UNBOUND): Action.SECOND_PEER,
    (Phase.PEERED, Trigger.COMPLETE, Role.DESTINATION): Action.COMPLETE,
    (Phase.PEERED, Trigger.CLOSED, Role.DESTINATION): Action.UNBIND_DESTINATION,
    (Phase.PEERED, Trigger.DATA, Role.DESTINATION): Action.HOLD_DESTINATION_OUTPUT,
    **{(p, Trigger.ABORT, Role.ACTIVE): Action.ABORT for p in _MIGRATING},
    **{(p, Trigger.DATA, Role.ACTIVE): Action.RESUMED for p in _MIGRATING},
    **{(p, Trigger.CLOSED, Role.ACTIVE): Action.SOURCE_LEFT for p in _MIGRATING},
    **{(p, Trigger.ABANDON, Role.RETIRED): Action.ABANDON for p in _MIGRATING},
    **{(p, Trigger.PROXY, Role.UNBOUND): Action.REPLACE for p in _MIGRATING},
}


def next_action(phase: Phase, trigger: Trigger, role: Role) -> Action:
    """The table's action, or `Action.IGNORE` (F10) for a missing entry."""
    return TABLE.get((phase, trigger, role), Action.IGNORE)
