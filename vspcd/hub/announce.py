"""Announcing a bound VM connection under the VM's name: `vm_connected` waits briefly for VM-NAME.

ESXi sends VM-NAME right after VM-VC-UUID (docs/protocol.md §3.4), but the hub binds
a connection as soon as it has the UUID (vspcd/hub/binding.py), so that its output
flows at once.  What announces the connection waits up to `NAME_WAIT` for VM-NAME
instead: the `VmConnected` event (the admin `vm_connected` event, the connect hook's
`VSPC_VM_NAME`, `--log-events`, plugins), the daemon's INFO line and the clients'
`[vspcd: VM NAME connected]` notice.  So they carry the VM's name; without a name in
time they carry what the console is called then (its UUID for a new console, its
remembered name for a known one).  The console's telnet port is settled just before
(vspcd/hub/telnetport.py: a new console's is bound only now, once `telnet = false`
rules can judge its name), so all of them carry the port.  Nothing else waits: the
VM's output reaches clients, taps and console logs meanwhile, and typed input reaches
the VM.

A known console (restored from the persist file, or reconnecting) waits too: the VM
may have been renamed.  VM-NAME during the wait names the console without a
`VmRenamed`, unless a known console had another name, which is a real rename:
`VmRenamed` then follows the `VmConnected`.  After the announcement, every VM-NAME
that changes the name is a `VmRenamed`, as before.  vMotion destinations are not
announced here: their COMPLETE is (vspcd/hub/migration.py).

Anything else reported about the connection or its console (it closes, is replaced
or challenged, starts a vMotion, a client attaches, the console is dropped) first
makes a pending announcement go out (`settle`), so observers always hear of the
connection before they hear of what happened to it.
"""

from __future__ import annotations

from vspc.common import vmware as vm
from vspc.common.display import safe
from vspc.vspcd.hub import telnetport
from vspc.vspcd.hub.console import Announcement, Console, Role, VmConn
from vspc.vspcd.hub.events import VmConnected, VmRenamed
from vspc.vspcd.hub.info import console_info
from vspc.vspcd.hub.state import HubState, log, tag

__all__ = ["NAME_WAIT", "bound", "named", "settle", "settle_console"]

# Seconds a bound connection's announcement waits for VM-NAME.  ESXi sends it in the
# same burst as VM-VC-UUID, so it normally arrives in the same read; the bound only
# matters for a VM that never names itself, and stays well under a second.
NAME_WAIT = 0.5


def bound(st: HubState, console: Console, conn: VmConn, *, first: bool, notify: bool) -> None:
    """`conn` just became `console`'s active connection: announce it now if it has
    named itself already, else once VM-NAME comes or `NAME_WAIT` passes.

    `first`: the console is new with this connection.  `notify`: clients get the
    "connected" notice (a replacement has told them already).
    """
    remembered = None
    if not first and console.name != vm.display_uuid(console.key.uuid):
        remembered = console.name  # a name operators have seen: a change is a rename
    pending = Announcement(first, notify, remembered)
    conn.announcing = pending
    if conn.name is not None:  # VM-NAME came before the binding
        named(st, conn, conn.name)
        return
    pending.timer = st.call_later(NAME_WAIT, lambda: _waited(st, conn, pending))


def named(st: HubState, conn: VmConn, name: str) -> None:
    """VM-NAME arrived on `conn`: name its console, and announce it if that waited."""
    conn.name = name
    console = conn.console
    if conn.role is not Role.ACTIVE or console is None:
        return  # not bound yet (the binding uses the name), or a vMotion destination
    pending = conn.announcing
    if pending is None:
        if console.name != name:
            console.name = name
            telnetport.sync(st, console)  # a name an [[access]] rule may name
            st.emit(VmRenamed(console.key, console.display_name, name))
        return
    console.name = name
    _announce(st, console, conn, pending)
    if pending.remembered is not None and pending.remembered != name:
        st.emit(VmRenamed(console.key, console.display_name, name))


def settle(st: HubState, conn: VmConn | None) -> None:
    """Announce `conn` now if its announcement is still waiting for VM-NAME."""
    if conn is None:
        return
    pending = conn.announcing
    if pending is not None and conn.console is not None:
        _announce(st, conn.console, conn, pending)


def settle_console(st: HubState, console: Console) -> None:
    """`settle` the console's active connection (before news about the console)."""
    settle(st, console.vm)


def _waited(st: HubState, conn: VmConn, pending: Announcement) -> None:
    pending.timer = None
    if conn.announcing is pending and conn.console is not None:
        _announce(st, conn.console, conn, pending)


def _announce(st: HubState, console: Console, conn: VmConn, pending: Announcement) -> None:
    conn.announcing = None
    if pending.timer is not None:
        pending.timer.cancel()
        pending.timer = None
    # The name is known (or was waited for): bind or close the telnet port as the
    # access rules say, before anyone hears of the connection.
    telnetport.sync(st, console, new=pending.first)
    if pending.notify:
        st.tell(console, f"VM {safe(console.display_name)} connected")
    log.info(
        "%s: VM connected from %s, telnet port %s", tag(console), conn.channel.peer, console.port
    )
    if st.observers:
        info = console_info(st, console)
        st.emit(
            VmConnected(console.key, console.display_name, conn.channel.peer, info, pending.first)
        )
