"""Console clients: attaching, the lock modes, typed input and its hold, detaching.

The lock semantics are vSPC.py's (docs/admin-protocol.md, "Lock modes"): an
exclusive lock admits no other client, a write lock makes every other client
read-only, free-for-all lets everyone type.  Input that may not reach the VM is
dropped and counted (the client is told once per lock holder); input that may but
cannot yet (mid-vMotion, no VM, or the VM's transport congested) waits in the
console's bounded hold, oldest dropped past `hold_limit` (docs/protocol.md §4.4).

Functions of the hub's state (vspcd/hub/state.py); the `Hub` calls them.
"""

from __future__ import annotations

from vspc.common.admin import ClientInfo, ClientKind, ErrorCode
from vspc.common.display import safe
from vspc.vspcd.hub.audit import Actor, AuditAction
from vspc.vspcd.hub.console import Client, ClientChannel, Console, LockMode
from vspc.vspcd.hub.events import (
    ClientAttached,
    ClientDetached,
    ConsoleCleared,
    DropReason,
    InputDropped,
    LockChanged,
)
from vspc.vspcd.hub.state import HubError, HubState, log, tag

__all__ = [
    "actor",
    "attach",
    "send_break",
    "clear",
    "client_info",
    "client_input",
    "detach",
    "disconnect",
    "kick",
    "may_write",
]


def may_write(client: Client) -> bool:
    """Input from `client` reaches the VM (vSPC.py lock semantics)."""
    if client.readonly:
        return False
    holder = client.console.lock_holder()
    return holder is None or holder is client


def client_info(client: Client) -> ClientInfo:
    """One client as the admin protocol describes it (`since` on the hub's clock)."""
    return ClientInfo(
        id=client.ident,
        kind=client.kind,
        peer=client.channel.peer,
        mode=client.mode,
        readonly=not may_write(client),
        since=client.since,
        uid=client.uid,
        user=client.user,
        bytes_in=client.bytes_in,
        bytes_out=client.bytes_out,
    )


def actor(client: Client) -> Actor:
    """Who is behind `client`, for audit records (a telnet client has no user)."""
    return Actor(client.user or "", client.uid, client.channel.peer)


def _who(client: Client) -> str:
    return f"client {client.ident} ({safe(client.user or client.channel.peer)})"


def attach(
    st: HubState,
    console: Console,
    channel: ClientChannel,
    *,
    kind: ClientKind | str,
    lock: LockMode,
    readonly: bool,
    uid: int | None,
    user: str | None,
    notices: bool,
) -> Client:
    """Attach an operator to a console; see `Hub.attach`."""
    refusal = _attach_refusal(st, console, lock, readonly)
    if refusal is not None:
        st.audit(
            AuditAction.ATTACH,
            Actor(user or "", uid, channel.peer),
            console,
            denied=f"{refusal.code.value}: {refusal}",
            mode=_mode(lock, readonly),
        )
        raise refusal
    st.next_client += 1
    client = Client(
        channel=channel,
        console=console,
        kind=ClientKind(kind),
        mode=lock,
        readonly=readonly,
        since=st.clock(),
        uid=uid,
        user=user,
        ident=st.next_client,
        notices=notices,
    )
    console.clients.append(client)
    st.client_count += 1
    st.cancel_expiry(console)
    log.info(
        "%s: %s client %s attached (%s%s, uid %s)",
        tag(console),
        kind,
        channel.peer,
        lock.value,
        ", read-only" if readonly else "",
        uid,
    )
    if st.auditors:
        who = actor(client)
        st.audit(AuditAction.ATTACH, who, console, mode=_mode(lock, readonly), client=client.ident)
        if lock in (LockMode.EXCLUSIVE, LockMode.WRITE):
            st.audit(AuditAction.LOCK, who, console, mode=lock.value, client=client.ident)
    if st.observers:
        name = console.display_name
        st.emit(ClientAttached(console.key, name, client_info(client)))
        if lock in (LockMode.EXCLUSIVE, LockMode.WRITE):
            st.emit(LockChanged(console.key, name, lock, client.ident))
    vm_conn = console.vm
    if vm_conn is not None and vm_conn.congested:
        channel.pause_reading()
    if not console.connected:
        st.tell(console, "VM not connected; input is held until it is", only=client)
    return client


def _attach_refusal(
    st: HubState, console: Console, lock: LockMode, readonly: bool
) -> HubError | None:
    """Why an attach in `lock` mode is refused now, or None."""
    limit = st.settings.client_limit
    if limit and len(console.clients) >= limit:
        return HubError(
            ErrorCode.CLIENT_LIMIT, f"{console.display_name} already has {limit} client(s)"
        )
    holder = console.lock_holder()
    if holder is not None and holder.mode is LockMode.EXCLUSIVE:
        return HubError(ErrorCode.LOCK_FAILED, f"{console.display_name} is locked exclusively")
    if lock is LockMode.EXCLUSIVE and console.clients:
        return HubError(
            ErrorCode.LOCK_FAILED,
            f"{console.display_name} has other clients; exclusive refused",
        )
    # A read-only free_for_all joins read-only under a write lock, as the
    # default mode does (docs/admin-protocol.md, "Lock modes" table).
    if lock in (LockMode.WRITE, LockMode.FREE_FOR_ALL) and holder is not None and not readonly:
        return HubError(
            ErrorCode.LOCK_FAILED, f"{console.display_name} is write-locked by another client"
        )
    return None


def _mode(lock: LockMode, readonly: bool) -> str:
    """An attach's mode as audit records say it."""
    return "readonly" if readonly else lock.value


def _audit_send(st: HubState, client: Client, denied: str | None) -> None:
    """That `client` typed (never what): once per client, result and second."""
    if st.auditors and client.audit.take(st.wall_clock(), denied is None):
        st.audit(
            AuditAction.SEND, actor(client), client.console, denied=denied, client=client.ident
        )


def client_input(st: HubState, client: Client, data: bytes) -> None:
    """Bytes an operator typed, for the VM."""
    console = client.console
    if not data or client not in console.clients:
        return
    if not may_write(client):
        _refuse_input(st, client, len(data))
        return
    _audit_send(st, client, None)
    client.bytes_in += len(data)
    for listener in st.input_listeners:  # input recording (vspcd/history/recording.py)
        listener(console, client, data)
    vm_conn = console.vm
    if (
        vm_conn is not None
        and console.migration is None
        and not vm_conn.congested
        and not console.held
    ):
        console.counters.bytes_to_vm += len(data)
        vm_conn.channel.send_console(data)  # the common case: straight through
        return
    dropped = console.hold.append(data)
    if dropped:
        console.counters.input_dropped += dropped
        log.warning(
            "%s: held input over %d bytes; %d oldest bytes dropped",
            tag(console),
            console.hold.limit,
            dropped,
        )
        st.emit(
            InputDropped(console.key, console.display_name, None, dropped, DropReason.HOLD_FULL)
        )


def _refuse_input(st: HubState, client: Client, size: int) -> None:
    """Drop input a read-only or locked-out client typed; tell it once per lock holder."""
    console = client.console
    console.counters.input_dropped += size
    holder = None if client.readonly else console.lock_holder()
    _audit_send(
        st,
        client,
        "read-only" if holder is None else f"{holder.mode.value} lock held by {_who(holder)}",
    )
    lock_id = 0 if holder is None else holder.ident
    if client.told_dropped != lock_id:
        client.told_dropped = lock_id
        if holder is None:
            st.tell(console, "input dropped: you attached read-only", only=client)
        else:
            st.tell(
                console,
                f"input dropped: {holder.mode.value} lock held by {_who(holder)}",
                only=client,
            )
    if st.observers:
        reason = DropReason.READONLY if holder is None else DropReason.LOCKED
        st.emit(InputDropped(console.key, console.display_name, client.ident, size, reason))


def detach(st: HubState, client: Client, reason: str | None = None) -> None:
    """The operator's connection closed (or was closed by clear/kick, saying `reason`)."""
    console = client.console
    if client not in console.clients:
        return
    had_lock = client is console.lock_holder()
    info = client_info(client) if st.observers else None
    console.clients.remove(client)
    st.client_count -= 1
    log.info("%s: %s client %s detached", tag(console), client.kind, client.channel.peer)
    if st.auditors:
        who = actor(client)
        if had_lock:
            st.audit(AuditAction.UNLOCK, who, console, mode=client.mode.value, client=client.ident)
        st.audit(
            AuditAction.DETACH,
            who,
            console,
            mode=_mode(client.mode, client.readonly),
            client=client.ident,
            note=reason or "",
        )
    if info is not None:
        st.emit(ClientDetached(console.key, console.display_name, info, reason))
        if had_lock:
            st.emit(LockChanged(console.key, console.display_name, None, None))
    if had_lock:
        st.tell(console, f"{client.mode.value} lock released by {_who(client)}")
    st.maybe_expire(console)
    st.check_idle()


def disconnect(st: HubState, client: Client, reason: str) -> None:
    """Tell `client` why, close its connection and detach it."""
    client.channel.notify(reason)
    client.channel.close()
    detach(st, client, reason)


def clear(st: HubState, console: Console, reason: str) -> int:
    """Disconnect every client of `console`, telling each why; returns how many."""
    clients = list(console.clients)
    for client in clients:
        disconnect(st, client, reason)
    st.emit(ConsoleCleared(console.key, console.display_name, len(clients), reason))
    return len(clients)


def send_break(st: HubState, console: Console, who: str) -> None:
    """Send a serial break (telnet IAC BRK) to the console's VM and tell its clients.

    Refused, not held, while the VM is away or a vMotion is in flight: a break is a
    moment, and one that lands seconds later on the destination host is a surprise.

    Raises:
        HubError: `vm_not_connected`, or `busy` mid-vMotion or on a relayed console.
    """
    vm_conn = console.vm
    if vm_conn is None or not console.connected:
        raise HubError(ErrorCode.VM_NOT_CONNECTED, f"{console.display_name}: VM not connected")
    if console.migration is not None:
        raise HubError(
            ErrorCode.BUSY,
            f"{console.display_name}: vMotion in progress; send the break once it completes",
        )
    if not vm_conn.channel.send_break():
        raise HubError(
            ErrorCode.BUSY,
            f"{console.display_name}: break is not relayed between cluster nodes; "
            "ask the node the VM is connected to",
        )
    log.info("%s: serial break sent by %s", tag(console), safe(who))
    st.tell(console, f"break sent by {who}")


def kick(st: HubState, ident: int, reason: str) -> Client:
    """Disconnect one client by its id.

    Raises:
        HubError: `not_attached` if no client has that id.
    """
    for console in st.consoles.values():
        for client in console.clients:
            if client.ident == ident:
                disconnect(st, client, reason)
                return client
    raise HubError(ErrorCode.NOT_ATTACHED, f"no client with id {ident}")
