"""Which connection is a console's VM: identification, binding, replacement, takeover.

An ESXi connection starts UNBOUND; once it has both an accepted DO-PROXY and a
VM-VC-UUID it becomes the ACTIVE connection of the console keyed by
`ConsoleKey(uuid, label)` (docs/protocol.md §3.5), replacing an older one from the
same host (TV-27, F11).  VM output before that is held in the connection's bounded
`early` buffer and released on binding.  A binding that would make a new console
first passes the console caps (vspcd/hub/quota.py; docs/security.md, "Resource
bounds"): a forgotten console makes room, or the connection is refused.
Binding is immediate, so output flows at once; announcing the connection, and
binding a new console's telnet port (which `telnet = false` rules may deny by name),
waits briefly for VM-NAME instead (vspcd/hub/announce.py, vspcd/hub/telnetport.py).

Takeover (docs/security.md, "Console takeover"): a VM connection from another
address than the console's current one is refused mid-vMotion and otherwise waits
as the CHALLENGER while the current one is probed (`VmChannel.probe`); an answer
(`vm_heard`) refuses it, silence for `takeover_timeout` lets it replace the current
one, and so does the current one closing.

Functions of the hub's state (vspcd/hub/state.py); the `Hub` dispatches to them.
"""

from __future__ import annotations

from vspc.common.session import ProxyRequested
from vspc.vspcd.hub import announce
from vspc.vspcd.hub.console import Challenge, Console, ConsoleKey, Role, VmConn
from vspc.vspcd.hub.events import AbortReason, TakeoverRefused, VmReplaced
from vspc.vspcd.hub.migration import end_migration
from vspc.vspcd.hub.state import HubState, log, tag
from vspc.vspcd.hub.state import host_of as _host
from vspc.vspcd.hub.vmotion import Action, Trigger, next_action

__all__ = [
    "cancel_challenge",
    "end_challenge",
    "identified",
    "label",
    "proxy_requested",
    "vm_heard",
]


def label(st: HubState, request: ProxyRequested) -> str:
    """The console label a DO-PROXY asks for (its serviceURI in multi-console mode)."""
    if request.label:
        return request.label
    return request.service_uri if st.settings.multi_console else ""


def proxy_requested(st: HubState, conn: VmConn, request: ProxyRequested) -> None:
    """DO-PROXY: remember what it asks for; bind once identified, or close if refused."""
    conn.service_uri = request.service_uri
    conn.label = label(st, request)
    conn.proxy_accepted = request.accepted
    if not request.accepted:
        log.warning(
            "VM %s asked for direction %r, serviceURI %r: refused with WONT-PROXY. "
            "vspcd serves only direction Server: in the VM's serial port settings "
            "choose 'Server' and 'Use Virtual Serial Port Concentrator'.",
            conn.channel.peer,
            request.direction,
            request.service_uri,
        )
        conn.channel.close()
        return
    _bind_source(st, conn)


def identified(st: HubState, conn: VmConn, uuid: str) -> None:
    """VM-VC-UUID: bind the connection, unless it is a vMotion destination already."""
    conn.uuid = uuid
    if conn.role is Role.DESTINATION and conn.console is not None:
        if conn.console.key.uuid != uuid:
            # The cookie stays authoritative (docs/protocol.md §3.5).
            log.warning(
                "%s: destination %s reports UUID %s",
                tag(conn.console),
                conn.channel.peer,
                uuid,
            )
        return
    _bind_source(st, conn)


def _bind_source(st: HubState, conn: VmConn, *, probed: bool = False) -> None:
    """Make an identified, accepted connection its console's active one, unless the
    takeover policy refuses it or must first probe the current one (`probed`: it
    did not answer)."""
    if conn.role is not Role.UNBOUND or conn.uuid is None or not conn.proxy_accepted:
        return
    key = ConsoleKey(conn.uuid, conn.label or "")
    existing = st.consoles.get(key)
    if existing is not None:
        announce.settle_console(st, existing)  # its news first, then this claim's
    if existing is not None and not probed and not _may_take_over(st, existing, conn):
        return
    if existing is None and not _admit(st, key, conn):
        return
    console = existing or st.create(key, conn)
    if next_action(console.phase, Trigger.PROXY, conn.role) is Action.REPLACE:
        # F11: a fresh DO-PROXY for this key from the source's own host is a new VM
        # instance (restart); `_may_take_over` refused one from anywhere else.
        log.info(
            "%s: new connection %s during a vMotion; aborting it",
            tag(console),
            conn.channel.peer,
        )
        end_migration(st, console, AbortReason.REPLACED)
    old = console.vm
    if old is not None and old is not conn:
        # TV-27: the newest connection wins (same host, or the old one is dead).
        log.warning(
            "%s: VM connection %s replaced by %s (%s)",
            tag(console),
            old.channel.peer,
            conn.channel.peer,
            "no answer to the liveness probe" if probed else "same host",
        )
        old.role = Role.RETIRED
        old.channel.close()
        st.tell(console, f"VM connection {old.channel.peer} replaced by {conn.channel.peer}")
        st.emit(VmReplaced(key, console.display_name, old.channel.peer, conn.channel.peer, probed))
    console.vm = conn
    st.follow_flow_control(console, old)
    console.service_uri = conn.service_uri
    conn.role, conn.console = Role.ACTIVE, console
    console.counters.vm_connects += 1
    st.cancel_expiry(console)
    # VmConnected, its log line and notice wait briefly for VM-NAME; output does not.
    announce.bound(st, console, conn, first=existing is None, notify=old is None)
    early = conn.take_early()
    if early:
        st.output(console, early)
    st.flush_hold(console)


def _admit(st: HubState, key: ConsoleKey, conn: VmConn) -> bool:
    """The console caps (vspcd/hub/quota.py): make room by forgetting the oldest
    idle console, or refuse (close) `conn`."""
    host = _host(conn.channel.peer)
    settings = st.settings
    verdict = st.quota.admit(
        host, per_host=settings.consoles_per_host, total=settings.console_limit
    )
    if verdict.evict is not None:
        st.make_room(verdict.evict, f"a new console from {host}")
    elif verdict.refused is not None:
        st.quota.refusals.log(
            "new console %s from %s refused: %s", key, conn.channel.peer, verdict.refused
        )
        conn.role = Role.RETIRED
        conn.channel.close()
        return False
    return True


# -- takeover (docs/security.md, "Console takeover") --------------------------------


def _may_take_over(st: HubState, console: Console, conn: VmConn) -> bool:
    """May `conn` become `console`'s VM connection now?  If not, it is refused
    (closed) or becomes the challenger while the current connection is probed."""
    mig = console.migration
    if mig is not None:
        if _host(mig.source.channel.peer) == _host(conn.channel.peer):
            return True  # F11: the VM restarted on the source's host
        _refuse(st, console, conn, mig.source.channel.peer, "a vMotion is in progress")
        return False
    old = console.vm
    if old is None or old is conn or _host(old.channel.peer) == _host(conn.channel.peer):
        return True
    if console.challenge is not None:
        _refuse(st, console, conn, old.channel.peer, "another claim is being checked")
        return False
    conn.role, conn.console = Role.CHALLENGER, console
    timeout = st.settings.takeover_timeout
    console.challenge = challenge = Challenge(
        conn, old, st.call_later(timeout, lambda: _probe_expired(st, console, challenge))
    )
    st.warnings.log(
        "takeover claims probed",
        "%s: %s claims it from another host than %s; probing %s for %.0f s",
        tag(console),
        conn.channel.peer,
        old.channel.peer,
        old.channel.peer,
        timeout,
    )
    old.channel.probe()
    return False


def _refuse(st: HubState, console: Console, conn: VmConn, holder: str, why: str) -> None:
    st.warnings.log(
        "takeover claims refused",
        "%s: refused VM connection %s claiming it from %s (%s)",
        tag(console),
        conn.channel.peer,
        holder,
        why,
    )
    conn.role, conn.console = Role.RETIRED, None
    conn.channel.close()
    st.tell_once(
        console, "takeover refused", f"refused a VM connection from {conn.channel.peer} ({why})"
    )
    st.emit(TakeoverRefused(console.key, console.display_name, conn.channel.peer, holder))


def vm_heard(st: HubState, conn: VmConn) -> None:
    """`conn` answered the probe: a pending claim on its console is refused."""
    console = conn.console
    challenge = None if console is None else console.challenge
    if console is None or challenge is None or challenge.target is not conn:
        return
    challenge.timer.cancel()
    console.challenge = None
    _refuse(
        st, console, challenge.newcomer, conn.channel.peer, "the VM connection answered the probe"
    )


def _probe_expired(st: HubState, console: Console, challenge: Challenge) -> None:
    if console.challenge is not challenge:
        return
    end_challenge(st, console, challenge, probed=True)


def end_challenge(st: HubState, console: Console, challenge: Challenge, *, probed: bool) -> None:
    """The probed connection is dead or gone: the challenger takes the console."""
    challenge.timer.cancel()
    console.challenge = None
    newcomer = challenge.newcomer
    if newcomer.role is Role.CHALLENGER:
        newcomer.role, newcomer.console = Role.UNBOUND, None
        _bind_source(st, newcomer, probed=probed)


def cancel_challenge(console: Console) -> None:
    """Drop a pending claim's timer (the console is dropped or the daemon stops)."""
    if console.challenge is not None:
        console.challenge.timer.cancel()
        console.challenge = None
