"""A console's per-VM telnet port, kept in line with the `telnet = false` rules.

Spec: docs/security.md "Per-VM telnet ports" and "Who may do what".  Telnet carries no
identity, so an `[[access]]` rule may say its consoles get no telnet port.  The rule
names consoles by UUID, label or name glob; the name comes from ESXi (VM-NAME) a
moment after the UUID, and may change later.  So the hub decides from what it knows
at these points, never before:

* a new console's port is bound when the console is announced (`VmConnected`,
  vspcd/hub/announce.py: at VM-NAME, or after waiting up to `NAME_WAIT` for it), so
  the `vm_connected` event, the "connected" log line, `list`/`show`, the persist file
  and hooks all see the port the rules allow, and a denied console never listens;
* a known console is re-judged when it is announced again, restored, or renamed
  (VM-NAME changes), and on every console when the rules change (SIGHUP,
  `Hub.set_telnet_rule`).

Closing a port disconnects the console's telnet clients with
`[vspcd: telnet closed for this console by access rules]` and releases the listener;
the number is remembered (`Console.closed_port`), so a rule that stops denying it
reopens the same port if it is still free (in cluster mode the registry keeps it
reserved for the console, and it is the only port the owner node may bind for it:
docs/cluster.md).  A console that got no port because none was free is not retried
here; only one whose port the rules closed, or a new one, gets one.

The rule itself is an injected predicate over `ConsoleRef` (the service wires
`AccessPolicy.telnet_allowed`, vspcd/faces/admin/policy.py); None allows every console.
Pure: the listeners are the `PortAllocator`'s (vspcd/hub/state.py).
"""

from __future__ import annotations

from vspc.common.admin import ClientKind
from vspc.vspcd.hub.clients import disconnect
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.selectors import ConsoleRef
from vspc.vspcd.hub.state import HubState, log, tag

__all__ = ["CLOSED_NOTICE", "allowed", "sync"]

CLOSED_NOTICE = "telnet closed for this console by access rules"


def allowed(st: HubState, console: Console) -> bool:
    """Whether the rules allow `console` a telnet port, judged on what is known now."""
    rule = st.telnet_allowed
    if rule is None:
        return True
    ref = ConsoleRef(console.display_name, console.name, console.key.uuid, console.key.label)
    return rule(ref)


def sync(st: HubState, console: Console, *, new: bool = False) -> None:
    """Open or close `console`'s telnet port as the rules say (`new`: its first
    announcement, when a new console gets its port)."""
    if st.ports is None:
        return
    if not allowed(st, console):
        if console.port is not None:
            _close(st, console)
        elif not console.telnet_off:
            log.info("%s: no telnet port (telnet = false in an [[access]] rule)", tag(console))
        console.telnet_off = True
        return
    if console.port is None and (new or console.telnet_off):
        reopen = console.telnet_off
        console.telnet_off = False
        _open(st, console, new=new)
        if reopen and console.port is not None:
            log.info(
                "%s: telnet port %d opened (no [[access]] rule says telnet = false now)",
                tag(console),
                console.port,
            )


def _open(st: HubState, console: Console, *, new: bool) -> None:
    assert st.ports is not None
    port = st.ports.bind(console.key, console.closed_port)
    if new:
        # Out of telnet ports (or fds): forgotten consoles give theirs back, oldest
        # first, before a live VM goes without (docs/security.md).
        while port is None and (oldest := st.quota.oldest_idle()) is not None:
            if oldest == console.key or not st.make_room(
                oldest, f"{tag(console)} (no free telnet port)"
            ):
                break
            port = st.ports.bind(console.key, console.closed_port)
    if port is None:
        log.warning("%s: no telnet port (none free)", tag(console))
        return
    console.port = port
    console.closed_port = None
    st.by_port[port] = console


def _close(st: HubState, console: Console) -> None:
    assert st.ports is not None and console.port is not None
    port = console.port
    for client in [c for c in console.clients if c.kind is ClientKind.TELNET]:
        disconnect(st, client, CLOSED_NOTICE)
    if st.by_port.get(port) is console:
        del st.by_port[port]
    st.ports.release(port)
    console.port = None
    console.closed_port = port
    log.info("%s: telnet port %d closed (telnet = false in an [[access]] rule)", tag(console), port)
