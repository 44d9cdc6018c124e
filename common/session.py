"""Proxy side of one VM connection: telnet + option 232 -> hub-level events, sans-IO.

Boundary: bytes from one ESXi connection in, `SessionEvent`s out; the daemon's hub
decides policy (which BEGIN gets GOAHEAD, which PEER is valid) and calls back
`goahead()`, `notnow()` or `peer_ok()`.  Everything the VM must hear goes into one
ordered output buffer drained by `data_to_send()`, so a GOAHEAD always follows every
client byte queued before it (docs/protocol.md §4.4, duty 1).  No sockets, no clock, no
logging: loggable oddities come out as `Notice` events.

Spec: docs/protocol.md §3 (session progression as ESXi performs it).

Theory of operation
-------------------
`initiate()` queues the offers of §3.1: WILL BINARY, WILL SGA, DO BINARY, DO SGA,
DO 232.  The telnet codec refuses AUTHENTICATION (37), COM-PORT (44) and an
unsolicited DO ECHO exactly once each, and never acknowledges an option twice.

The opening is one small state machine, `SessionState`, driven by two inputs: the VM
agreeing to option 232 (WILL 232) and a KNOWN-SUBOPTIONS-1.  KNOWN-SUBOPTIONS-2 goes
out when the VM agrees to option 232 (as the capture proxy did) and then at most once
per KS-1, always byte-identical (§3.2, TV-04).  The first KS-1 also triggers
GET-VM-VC-UUID + GET-VM-NAME in one write, on every connection, source or destination
(§3.4, §3.5).  `_OPENING` tables what each (state, input) pair sends and where it
leads; a pair not in the table sends nothing and changes nothing.

    state     input     sends        next       why
    OPENED    WILL 232  KS-2         KS2_SENT   the capture proxy's order
    OPENED    KS-1      KS-2, GETs   READY      KS-1 without negotiation (TV-04)
    KS2_SENT  KS-1      GETs         READY      that KS-2 already answers this KS-1
    READY     KS-1      KS-2         READY      one KS-2 per KS-1, never the GETs again
    any       framing error          ERROR      the codec refuses all later input

ERROR is the telnet codec's (h11's ERROR state): once the VM breaks framing, every
later `receive_data()` raises `TelnetProtocolError` naming the first fault, and the
caller closes the connection.  Output stays usable, so replies queued before the
fault still leave.

DO-PROXY is answered once, at once, with WILL- or WONT-PROXY as the `accept_proxy`
policy says (§3.3); `proxy` records the answer, so a repeat is a `Notice`.  A
destination sends PEER instead of DO-PROXY and nothing requires DO-PROXY first.  Each
BEGIN and each PEER puts one reply the hub owes the VM into `_owed` (the hub may
answer only those, once each).  The hub answers every BEGIN as its event is handled,
but one read may carry several BEGINs before the hub sees the first; that is why the
replies owed are a set, not one slot of the state.

Codes the proxy does not list in its KS-2 get UNKNOWN-SUBOPTION-RCVD-2 (§2, TV-21);
listed codes that only the proxy may send are reported as `Notice` and ignored.  An
UNKNOWN-SUBOPTION-RCVD-1 from the VM disables that code on this connection (TV-22).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vspc.common import vmware as vm
from vspc.common.endpoint import LocalProtocolError, Notice, TelnetEndpoint
from vspc.common.telnet import (
    IAC,
    SB,
    SE,
    Data,
    Opt,
    OptionChanged,
    Subnegotiation,
    TelnetCodec,
    TelnetProtocolError,
    escape,
)

__all__ = [
    "LocalProtocolError",
    "Notice",
    "ProxyRequested",
    "ProxySession",
    "SessionEvent",
    "SessionState",
    "TelnetProtocolError",
    "VmData",
    "VmIdentified",
    "VmNamed",
    "accept_server_direction",
]


@dataclass(frozen=True, slots=True)
class VmData:
    """Console output from the VM, unescaped, as one run."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ProxyRequested:
    """DO-PROXY arrived and was answered (`accepted` -> WILL-PROXY, else WONT-PROXY)."""

    direction: str
    service_uri: str
    label: str | None
    accepted: bool


@dataclass(frozen=True, slots=True)
class VmIdentified:
    """VM-VC-UUID arrived; `uuid` is the canonical 32-hex-digit key."""

    uuid: str


@dataclass(frozen=True, slots=True)
class VmNamed:
    """VM-NAME arrived."""

    name: str


SessionEvent = (
    VmData
    | ProxyRequested
    | VmIdentified
    | VmNamed
    | vm.VMotionBegin
    | vm.VMotionPeer
    | vm.VMotionComplete
    | vm.VMotionAbort
    | Notice
)


class SessionState(Enum):
    """How far one VM connection's opening has come (see the theory of operation).

    OPENED: offers sent; the VM has neither agreed to option 232 nor sent KS-1.
    KS2_SENT: the VM agreed to 232 and our KS-2 went out before its first KS-1.
    READY: the first KS-1 was answered and the GETs went out.
    ERROR: the VM broke telnet framing; all input is refused (close the connection).
    """

    OPENED = "opened"
    KS2_SENT = "ks2_sent"
    READY = "ready"
    ERROR = "error"

    # Members are singletons compared by identity, so the identity hash is correct.
    # Enum's own __hash__ hashes the name in Python, and the opening table and the
    # set of replies owed hash these on every KS-1, BEGIN and PEER.
    __hash__ = object.__hash__


class _Input(Enum):
    """What moves the opening along."""

    WILL_EXT = "will 232"  # the VM agreed to perform option 232
    KS1 = "ks-1"

    __hash__ = object.__hash__  # as SessionState's


class _Owed(Enum):
    """A reply the hub owes the VM, and may send once."""

    BEGIN_ANSWER = "GOAHEAD or NOTNOW"  # keyed by the BEGIN's sequence
    PEER_OK = "PEER-OK"  # keyed by the PEER's whole cookie

    __hash__ = object.__hash__  # as SessionState's


# Module-level aliases, as in telnet.py: an `Enum.MEMBER` lookup is a descriptor call.
_OPENED, _KS2_SENT, _READY = SessionState.OPENED, SessionState.KS2_SENT, SessionState.READY
_ERROR = SessionState.ERROR
_WILL_EXT, _KS1 = _Input.WILL_EXT, _Input.KS1
_BEGIN_ANSWER, _PEER_OK = _Owed.BEGIN_ANSWER, _Owed.PEER_OK

# (state, input) -> (send KS-2, send the GETs, next state).  Missing: nothing happens.
_OPENING: dict[tuple[SessionState, _Input], tuple[bool, bool, SessionState]] = {
    (_OPENED, _WILL_EXT): (True, False, _KS2_SENT),
    (_OPENED, _KS1): (True, True, _READY),
    (_KS2_SENT, _KS1): (False, True, _READY),
    (_READY, _KS1): (True, False, _READY),
}


def accept_server_direction(request: vm.DoProxy) -> bool:
    """Default DO-PROXY policy: forward direction `S`, refuse `C` and anything else."""
    return request.direction == vm.Direction.SERVER


# Codes the proxy only ever sends; receiving one is odd but listed, so no RCVD-2.
_PROXY_ONLY = frozenset(
    (
        vm.Code.KNOWN_SUBOPTIONS_2,
        vm.Code.UNKNOWN_SUBOPTION_RCVD_2,
        vm.Code.VMOTION_GOAHEAD,
        vm.Code.VMOTION_NOTNOW,
        vm.Code.VMOTION_PEER_OK,
        vm.Code.WILL_PROXY,
        vm.Code.WONT_PROXY,
        vm.Code.GET_VM_VC_UUID,
        vm.Code.GET_VM_NAME,
    )
)
_KS2 = vm.encode(vm.KnownSuboptions2(vm.PROXY_KNOWN_CODES))
_OFFERS_LOCAL = (Opt.BINARY, Opt.SGA)
_OFFERS_REMOTE = (Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT)
# Built once: TelnetCodec keeps a frozenset as given, so connections share these two
# instead of allocating their own (every VM connection builds a session).
_LOCAL_OK = frozenset(_OFFERS_LOCAL)
_REMOTE_OK = frozenset(_OFFERS_REMOTE)
_EXT = int(Opt.VMWARE_EXT)
# Built once, not per command sent (the framing `subnegotiation()` does, in parts).
_SB_EXT, _SE = bytes((IAC, SB, _EXT)), bytes((IAC, SE))
_GET_UUID, _GET_NAME = vm.payload_of(vm.GetVmVcUuid()), vm.payload_of(vm.GetVmName())
_GOAHEAD = bytes((vm.Code.VMOTION_GOAHEAD,))
_NOTNOW = bytes((vm.Code.VMOTION_NOTNOW,))
_PEER_OK_CODE = bytes((vm.Code.VMOTION_PEER_OK,))


class _ProxyCodec(TelnetCodec):
    """The session's codec: it answers negotiation itself and yields only the event
    `receive_data` acts on, the VM's agreement to perform option 232 (WILL 232,
    docs/protocol.md §3.1), so none is made for the others (one generator step fewer
    per option the VM negotiates)."""

    __slots__ = ()
    reports = frozenset({(_EXT, False, True)})


class ProxySession(TelnetEndpoint):
    """The proxy's half of one ESXi serial-port connection.

    Args:
        accept_proxy: decides WILL- vs WONT-PROXY for a DO-PROXY request.
        sb_limit: largest subnegotiation accepted before `TelnetProtocolError`.
    """

    # One session per VM connection: slots, and the two rarely used sets are
    # built on first use (even an empty set costs memory).
    __slots__ = ("_accept_proxy", "_opening", "_disabled", "_owed", "uuid", "name", "proxy")

    def __init__(
        self,
        *,
        accept_proxy: Callable[[vm.DoProxy], bool] = accept_server_direction,
        sb_limit: int = 64 * 1024,
    ) -> None:
        super().__init__(_ProxyCodec(local_ok=_LOCAL_OK, remote_ok=_REMOTE_OK, sb_limit=sb_limit))
        self._accept_proxy = accept_proxy
        self._opening = _OPENED
        self._disabled: set[int] | None = None  # our codes the VM said it does not know
        self._owed: set[tuple[_Owed, bytes]] | None = None  # replies the hub may still send
        self.uuid: str | None = None
        self.name: str | None = None
        self.proxy: ProxyRequested | None = None  # DO-PROXY's answer, once given

    @property
    def state(self) -> SessionState:
        """Where the opening stands; ERROR once the VM broke telnet framing."""
        return _ERROR if self._telnet.failed else self._opening

    # -- output ----------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the connection's opening offers (call once, on connect)."""
        self._telnet.offer(_OFFERS_LOCAL, _OFFERS_REMOTE)
        self._sync()

    def _send(self, event: vm.VmwareEvent) -> None:
        self._send_payload(vm.payload_of(event))  # once: encode() would build it again

    def _send_payload(self, payload: bytes) -> None:
        """Queue `IAC SB 232 payload IAC SE` unless the VM said it lacks the code."""
        if self._disabled is None or payload[0] not in self._disabled:
            self._queue(_SB_EXT + escape(payload) + _SE)

    def goahead(self, sequence: bytes, secret: bytes) -> None:
        """Answer a pending BEGIN with GOAHEAD(sequence || secret).

        Raises:
            LocalProtocolError: no BEGIN with that sequence is pending here.
        """
        self._take_begin(sequence)
        self._send_payload(_GOAHEAD + sequence + secret)  # vm.VMotionGoahead's payload

    def notnow(self, sequence: bytes) -> None:
        """Refuse a pending BEGIN with NOTNOW(sequence).

        Raises:
            LocalProtocolError: no BEGIN with that sequence is pending here.
        """
        self._take_begin(sequence)
        self._send_payload(_NOTNOW + sequence)  # vm.VMotionNotNow's payload

    def peer_ok(self, sequence: bytes) -> None:
        """Accept this connection's PEER with PEER-OK(sequence).

        Raises:
            LocalProtocolError: this connection sent no PEER for `sequence`.
        """
        pending = self._owed or ()
        owed = next((o for o in pending if o[0] is _PEER_OK and o[1].startswith(sequence)), None)
        if owed is None:
            raise LocalProtocolError("PEER-OK without a PEER for that sequence")
        self._settle(owed)
        self._send_payload(_PEER_OK_CODE + sequence)  # vm.VMotionPeerOk's payload

    def _take_begin(self, sequence: bytes) -> None:
        owed = (_BEGIN_ANSWER, sequence)
        if self._owed is None or owed not in self._owed:
            raise LocalProtocolError("reply to a BEGIN that is not pending")
        self._settle(owed)

    def _settle(self, owed: tuple[_Owed, bytes]) -> None:
        assert self._owed is not None
        self._owed.discard(owed)
        if not self._owed:
            self._owed = None  # back to no set: most connections never owe anything

    def _owe(self, owed: tuple[_Owed, bytes]) -> None:
        if self._owed is None:
            self._owed = set()
        self._owed.add(owed)

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[SessionEvent]:
        """Parse bytes from the VM; queue the replies; return the hub-level events.

        Raises:
            TelnetProtocolError: the VM broke telnet framing, now or in an earlier call
                (`state` is ERROR); close the connection.  The events of this read
                before the fault are dropped with it.
        """
        events: list[SessionEvent] = []
        event: Any  # dispatched on its exact type below (no cast: that is a call)
        for event in self._telnet.iter_events(data):
            # Exact-type tests rather than a `match` on class patterns (an isinstance
            # and attribute reads per case and event), and guards on _EXT rather than
            # `Opt.VMWARE_EXT` (an Enum member lookup is a descriptor call on CPython
            # 3.11).  None of these event classes has subclasses.
            kind = type(event)
            if kind is Data:
                events.append(VmData(event.payload))
            elif kind is Subnegotiation:
                if event.option == _EXT:
                    self._on_command(vm.decode(event.payload), events)
            elif (
                kind is OptionChanged and event.option == _EXT and not event.local and event.enabled
            ):
                self._advance(_WILL_EXT, b"")
            # Anything else: negotiation the codec answered, or a command.
        self._sync()
        return events

    def _on_command(self, event: vm.VmwareEvent | None, events: list[SessionEvent]) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:  # the commands of every connection and vMotion
            handler(self, event, events)
        else:
            self._on_rare_command(event, events)

    def _on_ks1(self, event: vm.KnownSuboptions1, events: list[SessionEvent]) -> None:
        self._advance(_KS1, event.codes)

    def _on_uuid(self, event: vm.VmVcUuid, events: list[SessionEvent]) -> None:
        try:
            self.uuid = vm.canonical_uuid(event.text)
        except ValueError as exc:
            events.append(Notice(str(exc)))
        else:
            events.append(VmIdentified(self.uuid))

    def _on_name(self, event: vm.VmName, events: list[SessionEvent]) -> None:
        self.name = event.name
        events.append(VmNamed(event.name))

    def _on_begin(self, event: vm.VMotionBegin, events: list[SessionEvent]) -> None:
        self._owe((_BEGIN_ANSWER, event.sequence))
        events.append(event)

    def _on_peer(self, event: vm.VMotionPeer, events: list[SessionEvent]) -> None:
        # The sequence is a prefix of the cookie; only the hub knows how long.
        self._owe((_PEER_OK, event.cookie))
        events.append(event)

    def _on_end(
        self, event: vm.VMotionComplete | vm.VMotionAbort, events: list[SessionEvent]
    ) -> None:
        events.append(event)

    def _on_rare_command(self, event: vm.VmwareEvent | None, events: list[SessionEvent]) -> None:
        match event:
            case None:
                pass  # `IAC SB 232 IAC SE`: no code to report (docs/protocol.md §1 rule 6)
            case vm.UnknownSuboptionRcvd1(code):
                if self._disabled is None:
                    self._disabled = set()
                self._disabled.add(code)
                events.append(Notice(f"VM does not know our code {code:#04x}"))
            case vm.DoProxy() as request:
                self._on_do_proxy(request, events)
            case vm.Unsupported(code, _) if code in vm.PROXY_KNOWN_CODES:
                # A listed code with a malformed body (e.g. a 2-byte RCVD-1).
                events.append(Notice(f"malformed option-232 command {code:#04x}"))
            case vm.Unsupported(code, _):
                self._send(vm.UnknownSuboptionRcvd2(code))
            case _:
                code = vm.payload_of(event)[0]
                if code in _PROXY_ONLY:
                    events.append(Notice(f"proxy-only command {code:#04x} from the VM"))
                else:  # 84-87: decodable, but not in our KS-2 list
                    self._send(vm.UnknownSuboptionRcvd2(code))

    def _advance(self, trigger: _Input, codes: bytes) -> None:
        """Apply `_OPENING` to one input; `codes` is the KS-1 list (empty for WILL)."""
        step = _OPENING.get((self._opening, trigger))
        if step is None:
            return
        send_ks2, send_gets, self._opening = step
        if send_ks2:
            self._queue(_KS2)
        if send_gets:
            if _GET_UUID[0] in codes:
                self._send_payload(_GET_UUID)
            if _GET_NAME[0] in codes:
                self._send_payload(_GET_NAME)

    def _on_do_proxy(self, request: vm.DoProxy, events: list[SessionEvent]) -> None:
        if self.proxy is not None:
            events.append(Notice("repeated DO-PROXY on one connection ignored"))
            return
        accepted = self._accept_proxy(request)
        self._send(vm.WillProxy() if accepted else vm.WontProxy())
        _, label = vm.parse_service_uri(request.service_uri)
        self.proxy = ProxyRequested(request.direction, request.service_uri, label, accepted)
        events.append(self.proxy)


# Exact command class -> handler, for the commands every connection and vMotion
# brings (docs/protocol.md §3, §4); the rest go through `_on_rare_command`.
_HANDLERS: dict[type, Callable[[ProxySession, Any, list[SessionEvent]], None]] = {
    vm.KnownSuboptions1: ProxySession._on_ks1,
    vm.VmVcUuid: ProxySession._on_uuid,
    vm.VmName: ProxySession._on_name,
    vm.VMotionBegin: ProxySession._on_begin,
    vm.VMotionPeer: ProxySession._on_peer,
    vm.VMotionComplete: ProxySession._on_end,
    vm.VMotionAbort: ProxySession._on_end,
}
