"""The vMotion entry points: BEGIN, PEER, COMPLETE, ABORT and the F8 abandonment.

Each entry point looks up `(console.phase, trigger, conn.role)` in the table of
vspcd/hub/vmotion.py (docs/protocol.md §4.5) and carries out the action; a missing
entry is F10 (log and ignore).  What depends on data rather than state stays here:
the cookie, the sequence, and the F1 NOTNOW grounds (an operator's refusal, or more
VM-bound bytes queued than GOAHEAD may wait behind: §4.4 duty 2, TV-32).

A cookie (sequence || secret) is looked up by its exact bytes and is single-use: it
dies on COMPLETE, ABORT, a replacing BEGIN, abandonment, or a new DO-PROXY (§4.1).
The source keeps the port and the held client input until COMPLETE (§4.2-§4.4).

Functions of the hub's state (vspcd/hub/state.py); the `Hub` dispatches to them.
"""

from __future__ import annotations

from vspc.common.display import safe
from vspc.vspcd.hub.console import Console, Migration, Phase, Role, VmConn
from vspc.vspcd.hub.events import (
    AbortReason,
    RefusalReason,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VMotionPeered,
    VMotionRefused,
)
from vspc.vspcd.hub.state import HubState, log, tag
from vspc.vspcd.hub.vmotion import Action, Trigger, next_action

__all__ = [
    "abandon",
    "abort",
    "abort_received",
    "begin",
    "complete",
    "end_migration",
    "forget",
    "peer",
    "source_left",
]


def begin(st: HubState, conn: VmConn, sequence: bytes) -> None:
    """VMOTION-BEGIN: GOAHEAD with a fresh cookie, or NOTNOW (F1)."""
    console = conn.console
    phase = Phase.NORMAL if console is None else console.phase
    action = next_action(phase, Trigger.BEGIN, conn.role)
    if action is Action.NOTNOW or console is None:
        log.info("VM %s: BEGIN on a connection that is not active; NOTNOW", conn.channel.peer)
        conn.channel.notnow(sequence)
        return
    if action is Action.REBEGIN:
        # F9: a second BEGIN implicitly aborts the first; then answer this one.
        abort(st, console, AbortReason.NEW_BEGIN)
    refusal = None
    backlog = conn.channel.write_backlog() + console.held
    if console.refuse_next_vmotion:
        console.refuse_next_vmotion = False
        refusal = VMotionRefused(console.key, console.display_name, RefusalReason.OPERATOR)
    elif backlog > st.settings.vmotion_backlog_limit:
        refusal = VMotionRefused(console.key, console.display_name, RefusalReason.BACKLOG, backlog)
    if refusal is not None:
        console.counters.vmotion_refusals += 1
        log.info("%s: vMotion refused (NOTNOW): %s", tag(console), refusal.text)
        conn.channel.notnow(sequence)
        st.emit(refusal)
        return
    # Duty 1: every byte queued for the source precedes GOAHEAD on the wire.
    st.send_hold(console, conn)
    secret = st.secret()
    mig = Migration(source=conn, sequence=sequence, cookie=sequence + secret, since=st.clock())
    console.migration = mig
    st.cookies[mig.cookie] = console
    conn.channel.goahead(sequence, secret)
    # DEBUG: the outcome (complete, abort, abandoned) gets the INFO line, so a
    # datacenter-wide evacuation logs one line per vMotion, not two.
    peer = conn.channel.peer  # formatted per call (vspcd/net/links.py): once here
    log.debug("%s: vMotion begins from %s", tag(console), peer)
    st.emit(VMotionBegun(console.key, console.display_name, peer))


def peer(st: HubState, conn: VmConn, cookie: bytes) -> None:
    """VMOTION-PEER: bind the destination to the console its cookie names; PEER-OK."""
    console = st.cookies.get(cookie)
    mig = console.migration if console is not None else None
    if console is None or mig is None:
        st.warnings.log(
            "stray PEERs",
            "VM %s: PEER with an unknown or stale cookie; no PEER-OK (F5)",
            conn.channel.peer,
        )
        return
    action = next_action(console.phase, Trigger.PEER, conn.role)
    if action is Action.IGNORE:
        st.warnings.log(
            "stray PEERs", "VM %s: PEER on a connection already in use; ignored", conn.channel.peer
        )
        return
    if action is Action.SECOND_PEER and mig.dest is not None:
        st.warnings.log(
            "stray PEERs",
            "%s: second PEER from %s while %s is bound; ignored (TV-19)",
            tag(console),
            conn.channel.peer,
            mig.dest.channel.peer,
        )
        return
    mig.dest = conn
    conn.role, conn.console = Role.DESTINATION, console
    mig.dest_output += conn.take_early()
    if conn.uuid is not None and conn.uuid != console.key.uuid:
        log.warning(
            "%s: destination %s reports UUID %s", tag(console), conn.channel.peer, conn.uuid
        )
    conn.channel.peer_ok(mig.sequence)
    st.emit(VMotionPeered(console.key, console.display_name, conn.channel.peer))


def _in_flight(conn: VmConn, trigger: Trigger, action: Action) -> tuple[Console, Migration] | None:
    """`conn`'s console and its vMotion, if the table gives `trigger` on it `action`."""
    console = conn.console
    mig = console.migration if console is not None else None
    if (
        console is None
        or mig is None
        or next_action(console.phase, trigger, conn.role) is not action
    ):
        return None
    return console, mig


def complete(st: HubState, conn: VmConn, sequence: bytes) -> None:
    """VMOTION-COMPLETE on the destination: it becomes the console's VM connection."""
    found = _in_flight(conn, Trigger.COMPLETE, Action.COMPLETE)
    if found is None or found[1].dest is not conn or found[1].sequence != sequence:
        st.warnings.log("stray COMPLETEs", "VM %s: stray COMPLETE ignored (F10)", conn.channel.peer)
        return
    console, mig = found
    forget(st, console, mig)
    source = mig.source
    if source.role is Role.ACTIVE:
        source.role = Role.RETIRED
        if not mig.source_closed:
            source.channel.close()  # ESXi closes it anyway; anything more is stale
    conn.role = Role.ACTIVE
    conn.service_uri, conn.label = source.service_uri, source.label
    old, console.vm = console.vm, conn
    st.follow_flow_control(console, old)
    if conn.name:
        console.name = conn.name
    console.counters.vmotions += 1
    # The peers are formatted per call (vspcd/net/links.py): once each here.
    source_peer, dest_peer = source.channel.peer, conn.channel.peer
    st.vmotion_log.log(  # INFO, aggregated in a storm (vspcd/hub/ratelog.py)
        "%s: vMotion complete, %s -> %s", tag(console), source_peer, dest_peer
    )
    st.emit(VMotionCompleted(console.key, console.display_name, dest_peer, source_peer))
    if console.clients:  # the notice's text is built only for someone to read it
        st.tell(console, f"vMotion done: VM now connected from {dest_peer}")
    # §4.2 steps 3-4: held client input to the destination, once, at once; then
    # the destination's own early output.
    st.flush_hold(console)
    st.output(console, bytes(mig.dest_output))


def abort_received(st: HubState, conn: VmConn) -> None:
    """VMOTION-ABORT: counts only on the BEGIN connection (TV-24, TV-30)."""
    found = _in_flight(conn, Trigger.ABORT, Action.ABORT)
    if found is None or found[1].source is not conn:
        st.warnings.log("stray ABORTs", "VM %s: stray ABORT ignored (F10)", conn.channel.peer)
        return
    abort(st, found[0], AbortReason.SOURCE_ABORTED)


def abort(st: HubState, console: Console, reason: AbortReason) -> None:
    """F2/F3/F9: end the migration; the source keeps the port and gets the hold."""
    end_migration(st, console, reason)
    console.counters.vmotion_aborts += 1
    st.flush_hold(console)


def abandon(st: HubState, console: Console, mig: Migration) -> None:
    """F8: the source left and no COMPLETE came within the grace period."""
    if console.migration is not mig:
        return
    if next_action(console.phase, Trigger.ABANDON, mig.source.role) is not Action.ABANDON:
        return  # cannot happen: the timer is armed only once the source has left
    mig.abandon = None
    log.warning(
        "%s: vMotion abandoned after %.0f s; port kept, input held",
        tag(console),
        st.settings.abandon_time,
    )
    end_migration(st, console, AbortReason.ABANDONED)
    st.emit(VmDisconnected(console.key, console.display_name, mig.source.channel.peer))
    st.tell(console, f"VM {safe(console.display_name)} disconnected (vMotion abandoned)")
    st.maybe_expire(console)


def source_left(st: HubState, console: Console, mig: Migration) -> None:
    """F7: the source closed mid-vMotion (its FIN may precede COMPLETE): arm the F8
    grace timer."""
    mig.source_closed = True
    if mig.abandon is None:
        mig.abandon = st.call_later(st.settings.abandon_time, lambda: abandon(st, console, mig))


def end_migration(st: HubState, console: Console, reason: AbortReason) -> None:
    """End `console`'s vMotion, if any, without COMPLETE; the destination is closed."""
    mig = console.migration
    if mig is None:
        return
    forget(st, console, mig)
    if mig.dest is not None:
        mig.dest.role = Role.RETIRED
        mig.dest.channel.close()
    log.info("%s: vMotion ended: %s", tag(console), reason.value)
    st.emit(VMotionAborted(console.key, console.display_name, reason))


def forget(st: HubState, console: Console, mig: Migration) -> None:
    """Drop the vMotion record, its cookie and its F8 timer."""
    console.migration = None
    st.cookies.pop(mig.cookie, None)
    if mig.abandon is not None:
        mig.abandon.cancel()
        mig.abandon = None
