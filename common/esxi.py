"""The VM side (ESXi's role) of one serial-port connection, sans-IO.

Boundary: the mirror image of `common.session.ProxySession`.  Bytes from the proxy go
in, `EsxiEvent`s come out, and the caller drives the VM's decisions (`begin()`,
`complete()`, `abort()`, `send_data()`).  No sockets, no clock, no logging.  It exists
for the tests and the ESXi simulator; vspcd never imports it.

Spec: docs/protocol.md §3.1 (option negotiation as ESXi performs it), §3.2 (ESXi's
KNOWN-SUBOPTIONS list), §3.3 (DO-PROXY), §3.4 (identification and the UUID wire form),
§3.5 (destination connections), §4 (vMotion from the source host's side).

Theory of operation
-------------------
`connect_source()` or `connect_destination(cookie)` queues `IAC WILL AUTHENTICATION`,
ESXi's first bytes (§3.1 step 1).  The telnet codec accepts the proxy's WILL BINARY,
SGA and ECHO and its DO BINARY and SGA (step 2), and answers DO 232 with WILL 232.  The
capture suggests that ESXi holds WILL 232 back until AUTH is settled (step 3, [infer]).
The codec answers at once instead, because no proxy may depend on that order, and
offers WILL 232 itself once AUTH is refused, for a proxy that never sends DO 232.

When option 232 becomes enabled on our side, the connection announces itself in one
write, as in the capture:
- a source sends KS-1 + DO-PROXY (§3.3), and offers WILL COM-PORT after its first
  VM-NAME (step 4);
- a destination sends KS-1 + PEER(cookie) + WILL COM-PORT, with no DO-PROXY (§3.5).

GET-VM-VC-UUID and GET-VM-NAME are answered automatically, any number of times.  A
code ESXi does not list gets UNKNOWN-SUBOPTION-RCVD-1 (§2, D-UNK).  GOAHEAD is split
into the pending BEGIN's sequence and the proxy's secret, and `cookie` keeps the whole
for the destination host.  Anything out of turn becomes a `Notice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vspc.common import vmware as vm
from vspc.common.endpoint import LocalProtocolError, Notice, TelnetEndpoint
from vspc.common.telnet import (
    Cmd,
    Command,
    Data,
    Negotiation,
    Opt,
    OptionChanged,
    Subnegotiation,
    TelnetCodec,
    TelnetProtocolError,
    Verb,
)

__all__ = [
    "ESXI_KNOWN_CODES",
    "ConsoleInput",
    "EsxiEvent",
    "EsxiSession",
    "Goahead",
    "LocalProtocolError",
    "NotNow",
    "Notice",
    "PeerOk",
    "ProxyAnswer",
    "SerialBreak",
    "Role",
    "TelnetProtocolError",
]

# ESXi's KNOWN-SUBOPTIONS-1 list, unsorted, byte for byte from the capture (§2, §3.2).
ESXI_KNOWN_CODES: bytes = bytes.fromhex(
    "00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 54 55 56 57 52 53"
)


@dataclass(frozen=True, slots=True)
class ConsoleInput:
    """Bytes for the VM's serial port (operator input), unescaped, as one run."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Goahead:
    """GOAHEAD for the pending BEGIN; `secret` is the cookie minus the sequence."""

    secret: bytes


@dataclass(frozen=True, slots=True)
class NotNow:
    """NOTNOW for the pending BEGIN: the VM stays, and sends no ABORT (§4.3 F1)."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class PeerOk:
    """PEER-OK for this destination's PEER; COMPLETE may follow (§3.5 step 6)."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class ProxyAnswer:
    """WILL-PROXY (`accepted`) or WONT-PROXY in answer to DO-PROXY."""

    accepted: bool


@dataclass(frozen=True, slots=True)
class SerialBreak:
    """The proxy sent `IAC BRK` (RFC 854): a break on the VM's serial port."""


EsxiEvent = (
    ConsoleInput
    | SerialBreak
    | Goahead
    | NotNow
    | PeerOk
    | ProxyAnswer
    | vm.KnownSuboptions2
    | vm.UnknownSuboptionRcvd2
    | Notice
)


class Role(Enum):
    """Which connection of a vMotion this is (§0): fresh or source, or destination."""

    SOURCE = "source"
    DESTINATION = "destination"


_LOCAL_OK = (Opt.BINARY, Opt.SGA, Opt.VMWARE_EXT)
_REMOTE_OK = (Opt.BINARY, Opt.SGA, Opt.ECHO)


class EsxiSession(TelnetEndpoint):
    """ESXi's half of one serial-port connection to a proxy.

    Args:
        uuid: the VM's vCenter UUID in any form `canonical_uuid` accepts.  It is sent
            in ESXi's 47-character wire form.
        name: the VM's display name, sent as UTF-8 in VM-NAME.
        service_uri: the port's serviceURI, e.g. `vSPC.py?port=console2` (§3.3).
        direction: DO-PROXY's direction byte, `S` or `C`.

    Raises:
        ValueError: `uuid` is not a UUID, or `direction` is not one character.
    """

    def __init__(
        self, uuid: str, name: str, service_uri: str = "vSPC.py", direction: str = "S"
    ) -> None:
        if len(direction) != 1:
            raise ValueError(f"direction must be one character, not {direction!r}")
        self.uuid = vm.canonical_uuid(uuid)
        self.name = name
        self.service_uri = service_uri
        self.direction = direction
        super().__init__(TelnetCodec(local_ok=_LOCAL_OK, remote_ok=_REMOTE_OK))
        self.role: Role | None = None
        self._peer_cookie = b""  # the cookie a destination presents in PEER
        self._announced = False  # KS-1 and DO-PROXY or PEER sent
        self._comport_offered = False
        self._pending: bytes | None = None  # sequence of a BEGIN not yet answered
        self.cookie: bytes | None = None  # sequence || secret from the last GOAHEAD

    # -- caller's actions ------------------------------------------------------------

    def connect_source(self) -> None:
        """Open a fresh (or vMotion source) connection: queue WILL AUTHENTICATION.

        Raises:
            LocalProtocolError: this session was already connected.
        """
        self._connect(Role.SOURCE)

    def connect_destination(self, cookie: bytes) -> None:
        """Open a vMotion destination connection that will present `cookie` in PEER.

        Raises:
            LocalProtocolError: this session was already connected.
        """
        self._connect(Role.DESTINATION)
        self._peer_cookie = cookie

    def _connect(self, role: Role) -> None:
        if self.role is not None:
            raise LocalProtocolError("already connected")
        self.role = role
        self._telnet.offer_local(Opt.AUTHENTICATION)  # ESXi's first bytes (§3.1)
        self._sync()

    def begin(self, sequence: bytes) -> None:
        """Queue VMOTION-BEGIN; the answer comes out as `Goahead` or `NotNow`.

        A second BEGIN replaces a pending one, as a host retrying would (§4.3 F9).

        Raises:
            LocalProtocolError: not connected yet.
        """
        self._require_connected()
        self._pending = sequence
        self._send(vm.VMotionBegin(sequence))

    def complete(self, sequence: bytes) -> None:
        """Queue VMOTION-COMPLETE: this destination now runs the VM.

        Raises:
            LocalProtocolError: not connected yet.
        """
        self._require_connected()
        self._send(vm.VMotionComplete(sequence))

    def abort(self) -> None:
        """Queue VMOTION-ABORT, empty as ESXi sends it; the cookie is dead.

        Raises:
            LocalProtocolError: not connected yet.
        """
        self._require_connected()
        self._pending = self.cookie = None
        self._send(vm.VMotionAbort())

    @property
    def announced(self) -> bool:
        """Option 232 is on and KS-1 (+ DO-PROXY or PEER) went out: commands may follow."""
        return self._announced

    def _require_connected(self) -> None:
        if self.role is None:
            raise LocalProtocolError("connect_source() or connect_destination() first")

    def _send(self, event: vm.VmwareEvent) -> None:
        self._queue(vm.encode(event))

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[EsxiEvent]:
        """Parse bytes from the proxy; queue the replies; return the events.

        Raises:
            TelnetProtocolError: the proxy broke telnet framing.
        """
        events: list[EsxiEvent] = []
        for event in self._telnet.iter_events(data):
            # Every frame of ours goes through `_queue`, which puts the negotiation
            # replies queued so far (answers to earlier requests) first.
            match event:
                case Data(payload):
                    events.append(ConsoleInput(payload))
                case Subnegotiation(Opt.VMWARE_EXT, payload):
                    self._on_command(vm.decode(payload), events)
                case OptionChanged(Opt.VMWARE_EXT, True, True):
                    self._announce()
                case Negotiation(Verb.DONT, Opt.AUTHENTICATION):
                    # AUTH settled: ESXi offers 232 itself now (§3.1 step 3), so a
                    # proxy that never sends DO 232 (vmware/vspc) is reached too.
                    self._telnet.offer_local(Opt.VMWARE_EXT)
                case Command(Cmd.BRK):
                    events.append(SerialBreak())
                case _:
                    pass  # other negotiation was answered by the codec
        self._sync()
        return events

    def _announce(self) -> None:
        if self._announced or self.role is None:
            return
        self._announced = True
        self._send(vm.KnownSuboptions1(ESXI_KNOWN_CODES))
        if self.role is Role.SOURCE:
            self._send(vm.DoProxy(self.direction, self.service_uri))
        else:
            self._send(vm.VMotionPeer(self._peer_cookie))
            self._offer_comport()

    def _offer_comport(self) -> None:
        if not self._comport_offered:
            self._comport_offered = True
            self._telnet.offer_local(Opt.COM_PORT)
            self._sync()

    def _on_command(self, event: vm.VmwareEvent | None, events: list[EsxiEvent]) -> None:
        match event:
            case None:
                pass  # `IAC SB 232 IAC SE`: no code (docs/protocol.md §1 rule 6)
            case vm.KnownSuboptions2() | vm.UnknownSuboptionRcvd2():
                events.append(event)
            case vm.GetVmVcUuid():
                self._send(vm.VmVcUuid(vm.wire_uuid(self.uuid)))
            case vm.GetVmName():
                self._send(vm.VmName(self.name))
                if self.role is Role.SOURCE:
                    self._offer_comport()  # §3.1 step 4: after VM-NAME on a source
            case vm.GetVmBiosUuid():
                # Never observed; presumably shaped like VM-VC-UUID (docs/protocol.md §7).
                self._send(vm.VmBiosUuid(vm.wire_uuid(self.uuid)))
            case vm.GetVmLocationUuid():
                self._send(vm.VmLocationUuid(vm.wire_uuid(self.uuid)))
            case vm.WillProxy():
                events.append(ProxyAnswer(True))
            case vm.WontProxy():
                events.append(ProxyAnswer(False))
            case vm.VMotionGoahead(cookie):
                self._on_goahead(cookie, events)
            case vm.VMotionNotNow(sequence):
                if sequence == self._pending:
                    self._pending = None
                    events.append(NotNow(sequence))
                else:
                    events.append(Notice(f"NOTNOW for {sequence.hex()}, no such BEGIN"))
            case vm.VMotionPeerOk(sequence):
                if self.role is Role.DESTINATION and self._peer_cookie.startswith(sequence):
                    events.append(PeerOk(sequence))
                else:
                    events.append(Notice(f"PEER-OK for {sequence.hex()}, no such PEER"))
            case vm.Unsupported(code, _) if code in ESXI_KNOWN_CODES:
                events.append(Notice(f"malformed option-232 command {code:#04x}"))
            case vm.Unsupported(code, _):
                self._send(vm.UnknownSuboptionRcvd1(code))
            case _:  # KS-1, RCVD-1, BEGIN, PEER, COMPLETE, ABORT, DO-PROXY, VM-*: ours
                code = vm.payload_of(event)[0]
                events.append(Notice(f"VM-only command {code:#04x} from the proxy"))

    def _on_goahead(self, cookie: bytes, events: list[EsxiEvent]) -> None:
        sequence = self._pending
        if sequence is None or not cookie.startswith(sequence):
            events.append(Notice(f"GOAHEAD {cookie.hex()} matches no pending BEGIN"))
            return
        self._pending = None
        self.cookie = cookie
        events.append(Goahead(cookie[len(sequence) :]))
