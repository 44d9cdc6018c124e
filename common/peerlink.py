"""The inter-node link of cluster mode, sans-IO: frames <-> typed messages, and the
HMAC challenge-response that lets only nodes holding the cluster secret in.

Spec: docs/cluster.md ("Inter-node link").  No sockets, no clock, no
logging: `PeerLinkCodec.receive_data(bytes) -> list[Message]`, `send(Message) -> bytes`.

Theory of operation
-------------------
Frame: `length:u32 | type:u8 | channel:u32 | body`, big-endian, `length` counting
everything after itself and capped at `MAX_FRAME` (`HANDSHAKE_FRAME` until the peer
is authenticated).  `channel` multiplexes many relayed
VM connections and admin streams over one TCP connection; the side that opens a
channel picks its number.

Handshake (mutual, before anything else is accepted):

    dialer   -> Hello(node_d, nonce_d)
    listener -> Hello(node_l, nonce_l), Proof(HMAC(secret, "L" nonce_d nonce_l ids))
    dialer   -> Proof(HMAC(secret, "D" nonce_d nonce_l ids))

Each side proves it holds the secret over both fresh nonces, so a recorded exchange
cannot be replayed and a stranger learns nothing it can use.  Until the peer's proof
has checked out, any other frame is a `RemoteProtocolError`; so is a bad proof.

Messages after it (docs/cluster.md has the flows):

- relaying node -> owner: `VmOpen`, `VmEvent` (one `SessionEvent` of common/session.py),
  `VmHeard`, `VmCongested`, `VmClosed`;
- owner -> relaying node: `VmSend`, `VmGoahead`, `VmNotNow`, `VmPeerOk`, `VmProbe`,
  `VmClose` (the hub's `VmChannel` calls, one for one);
- either way: `StreamOpen` / `StreamData` / `StreamClose` (an admin connection spliced
  to the console's owner), `Call` / `Result` (one JSON request, one JSON answer).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from vspc.common import session
from vspc.common import vmware as vm

__all__ = [
    "HANDSHAKE_FRAME",
    "MAX_FRAME",
    "Call",
    "Hello",
    "LocalProtocolError",
    "Message",
    "PeerLinkCodec",
    "Proof",
    "RemoteProtocolError",
    "Result",
    "Side",
    "StreamClose",
    "StreamData",
    "StreamOpen",
    "VmClose",
    "VmClosed",
    "VmCongested",
    "VmEvent",
    "VmGoahead",
    "VmHeard",
    "VmNotNow",
    "VmOpen",
    "VmPeerOk",
    "VmProbe",
    "VmSend",
]

# A hold (1 MiB default) fits, and so does a node's `list` answer for ~100,000
# consoles (about 500 bytes a row); only authenticated peers can send one this big.
MAX_FRAME = 64 << 20
# Before the peer's proof has checked out only Hello (a node id of at most 64
# characters and a nonce) and Proof (a SHA-256 MAC) may come: a few dozen bytes.  A
# stranger announcing a bigger frame is refused at its header, so an unauthenticated
# connection never makes the codec buffer more than this (docs/security.md,
# "Resource bounds").
HANDSHAKE_FRAME = 4 << 10
_HEAD = struct.Struct(">IBI")
NONCE = 32
_DOMAIN = b"vspc-peerlink-v1"


class RemoteProtocolError(Exception):
    """The peer sent something this protocol does not allow; close the link."""


class LocalProtocolError(Exception):
    """The caller misused the codec (sent before authenticating, for example)."""


class Side(Enum):
    DIALER = "D"
    LISTENER = "L"


class _T(IntEnum):
    HELLO = 1
    PROOF = 2
    VM_OPEN = 10
    VM_EVENT = 11
    VM_HEARD = 12
    VM_CONGESTED = 13
    VM_CLOSED = 14
    VM_SEND = 20
    VM_GOAHEAD = 21
    VM_NOTNOW = 22
    VM_PEER_OK = 23
    VM_PROBE = 24
    VM_CLOSE = 25
    STREAM_OPEN = 30
    STREAM_DATA = 31
    STREAM_CLOSE = 32
    CALL = 40
    RESULT = 41


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    mac: bytes


@dataclass(frozen=True, slots=True)
class VmOpen:
    """A VM connection accepted by the sender now belongs to the receiver's hub."""

    channel: int
    peer: str  # the ESXi host's address, as the hub's takeover rules compare it


@dataclass(frozen=True, slots=True)
class VmEvent:
    channel: int
    event: session.SessionEvent


@dataclass(frozen=True, slots=True)
class VmHeard:
    channel: int


@dataclass(frozen=True, slots=True)
class VmCongested:
    channel: int
    congested: bool


@dataclass(frozen=True, slots=True)
class VmClosed:
    channel: int


@dataclass(frozen=True, slots=True)
class VmSend:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class VmGoahead:
    channel: int
    sequence: bytes
    secret: bytes


@dataclass(frozen=True, slots=True)
class VmNotNow:
    channel: int
    sequence: bytes


@dataclass(frozen=True, slots=True)
class VmPeerOk:
    channel: int
    sequence: bytes


@dataclass(frozen=True, slots=True)
class VmProbe:
    channel: int


@dataclass(frozen=True, slots=True)
class VmClose:
    channel: int


@dataclass(frozen=True, slots=True)
class StreamOpen:
    """An admin connection spliced to the receiver; `head` says who and what first."""

    channel: int
    head: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamClose:
    channel: int


@dataclass(frozen=True, slots=True)
class Call:
    channel: int
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    channel: int
    result: dict[str, Any]


Message = (
    Hello
    | Proof
    | VmOpen
    | VmEvent
    | VmHeard
    | VmCongested
    | VmClosed
    | VmSend
    | VmGoahead
    | VmNotNow
    | VmPeerOk
    | VmProbe
    | VmClose
    | StreamOpen
    | StreamData
    | StreamClose
    | Call
    | Result
)


# -- session events ------------------------------------------------------------------


class _E(IntEnum):
    DATA = 1
    PROXY = 2
    IDENTIFIED = 3
    NAMED = 4
    BEGIN = 5
    PEER = 6
    COMPLETE = 7
    ABORT = 8
    NOTICE = 9


def _encode_event(event: session.SessionEvent) -> bytes:
    match event:
        case session.VmData(payload):
            return bytes([_E.DATA]) + payload
        case session.ProxyRequested(direction, uri, label, accepted):
            body = {"direction": direction, "uri": uri, "label": label, "accepted": accepted}
            return bytes([_E.PROXY]) + json.dumps(body).encode()
        case session.VmIdentified(uuid):
            return bytes([_E.IDENTIFIED]) + uuid.encode()
        case session.VmNamed(name):
            return bytes([_E.NAMED]) + name.encode("utf-8", "surrogatepass")
        case vm.VMotionBegin(sequence):
            return bytes([_E.BEGIN]) + sequence
        case vm.VMotionPeer(cookie):
            return bytes([_E.PEER]) + cookie
        case vm.VMotionComplete(sequence):
            return bytes([_E.COMPLETE]) + sequence
        case vm.VMotionAbort(extra):
            return bytes([_E.ABORT]) + extra
        case session.Notice(message):
            return bytes([_E.NOTICE]) + message.encode("utf-8", "surrogatepass")
    raise LocalProtocolError(f"not a session event: {event!r}")


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"bad text: {exc}") from None


def _decode_event(body: bytes) -> session.SessionEvent:
    if not body:
        raise RemoteProtocolError("empty VM event")
    kind, rest = body[0], body[1:]
    match kind:
        case _E.DATA:
            return session.VmData(rest)
        case _E.PROXY:
            obj = _json(rest)
            direction, uri = obj.get("direction"), obj.get("uri")
            label, accepted = obj.get("label"), obj.get("accepted")
            if (
                not isinstance(direction, str)
                or not isinstance(uri, str)
                or not (label is None or isinstance(label, str))
                or not isinstance(accepted, bool)
            ):
                raise RemoteProtocolError("bad proxy request")
            return session.ProxyRequested(direction, uri, label, accepted)
        case _E.IDENTIFIED:
            return session.VmIdentified(_text(rest))
        case _E.NAMED:
            return session.VmNamed(_text(rest))
        case _E.BEGIN:
            return vm.VMotionBegin(rest)
        case _E.PEER:
            return vm.VMotionPeer(rest)
        case _E.COMPLETE:
            return vm.VMotionComplete(rest)
        case _E.ABORT:
            return vm.VMotionAbort(rest)
        case _E.NOTICE:
            return session.Notice(_text(rest))
    raise RemoteProtocolError(f"unknown VM event kind {kind}")


def _json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"bad JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("JSON body is not an object")
    return obj


def _flag(body: bytes) -> bool:
    if body not in (b"\x00", b"\x01"):
        raise RemoteProtocolError("bad flag")
    return body == b"\x01"


def _seq_and_secret(body: bytes) -> tuple[bytes, bytes]:
    if not body or body[0] + 1 > len(body):
        raise RemoteProtocolError("bad GOAHEAD body")
    n = body[0]
    return body[1 : 1 + n], body[1 + n :]


# -- frames --------------------------------------------------------------------------


def _frame(kind: _T, channel: int, body: bytes) -> bytes:
    if len(body) + 5 > MAX_FRAME:
        raise LocalProtocolError(f"frame of {len(body)} bytes is over the limit")
    return _HEAD.pack(len(body) + 5, kind, channel) + body


def _encode(message: Message) -> bytes:
    match message:
        case Hello(node, nonce):
            return _frame(_T.HELLO, 0, nonce + node.encode())
        case Proof(mac):
            return _frame(_T.PROOF, 0, mac)
        case VmOpen(ch, peer):
            return _frame(_T.VM_OPEN, ch, peer.encode())
        case VmEvent(ch, event):
            return _frame(_T.VM_EVENT, ch, _encode_event(event))
        case VmHeard(ch):
            return _frame(_T.VM_HEARD, ch, b"")
        case VmCongested(ch, congested):
            return _frame(_T.VM_CONGESTED, ch, b"\x01" if congested else b"\x00")
        case VmClosed(ch):
            return _frame(_T.VM_CLOSED, ch, b"")
        case VmSend(ch, data):
            return _frame(_T.VM_SEND, ch, data)
        case VmGoahead(ch, sequence, secret):
            if len(sequence) > 255:
                raise LocalProtocolError("sequence longer than 255 bytes")
            return _frame(_T.VM_GOAHEAD, ch, bytes([len(sequence)]) + sequence + secret)
        case VmNotNow(ch, sequence):
            return _frame(_T.VM_NOTNOW, ch, sequence)
        case VmPeerOk(ch, sequence):
            return _frame(_T.VM_PEER_OK, ch, sequence)
        case VmProbe(ch):
            return _frame(_T.VM_PROBE, ch, b"")
        case VmClose(ch):
            return _frame(_T.VM_CLOSE, ch, b"")
        case StreamOpen(ch, head):
            return _frame(_T.STREAM_OPEN, ch, json.dumps(head).encode())
        case StreamData(ch, data):
            return _frame(_T.STREAM_DATA, ch, data)
        case StreamClose(ch):
            return _frame(_T.STREAM_CLOSE, ch, b"")
        case Call(ch, request):
            return _frame(_T.CALL, ch, json.dumps(request).encode())
        case Result(ch, result):
            return _frame(_T.RESULT, ch, json.dumps(result).encode())
    raise LocalProtocolError(f"not a message: {message!r}")


def _decode(kind: int, ch: int, body: bytes) -> Message:
    match kind:
        case _T.HELLO:
            if len(body) < NONCE + 1:
                raise RemoteProtocolError("short HELLO")
            return Hello(_text(body[NONCE:]), body[:NONCE])
        case _T.PROOF:
            return Proof(body)
        case _T.VM_OPEN:
            return VmOpen(ch, _text(body))
        case _T.VM_EVENT:
            return VmEvent(ch, _decode_event(body))
        case _T.VM_HEARD:
            return VmHeard(ch)
        case _T.VM_CONGESTED:
            return VmCongested(ch, _flag(body))
        case _T.VM_CLOSED:
            return VmClosed(ch)
        case _T.VM_SEND:
            return VmSend(ch, body)
        case _T.VM_GOAHEAD:
            sequence, secret = _seq_and_secret(body)
            return VmGoahead(ch, sequence, secret)
        case _T.VM_NOTNOW:
            return VmNotNow(ch, body)
        case _T.VM_PEER_OK:
            return VmPeerOk(ch, body)
        case _T.VM_PROBE:
            return VmProbe(ch)
        case _T.VM_CLOSE:
            return VmClose(ch)
        case _T.STREAM_OPEN:
            return StreamOpen(ch, _json(body))
        case _T.STREAM_DATA:
            return StreamData(ch, body)
        case _T.STREAM_CLOSE:
            return StreamClose(ch)
        case _T.CALL:
            return Call(ch, _json(body))
        case _T.RESULT:
            return Result(ch, _json(body))
    raise RemoteProtocolError(f"unknown frame type {kind}")


# -- the connection ------------------------------------------------------------------


class _State(Enum):
    START = "start"  # dialer: Hello sent; listener: waiting for Hello
    PROVING = "proving"  # waiting for the peer's Proof
    OPEN = "open"
    FAILED = "failed"


class PeerLinkCodec:
    """One end of an inter-node link.

    Args:
        side: DIALER (opened the TCP connection) or LISTENER.
        node: this node's id.
        secret: the cluster secret (docs/cluster.md, --cluster-secret-file).
        nonce: NONCE fresh random bytes (secrets.token_bytes; fixed in tests).

    `receive_data` returns the messages after the handshake (never Hello/Proof);
    `authenticated` turns True, and `peer_node` is set, once the peer's proof checks
    out.  Replies the handshake needs are queued for `data_to_send()`.
    """

    def __init__(self, side: Side, node: str, secret: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE:
            raise LocalProtocolError(f"nonce must be {NONCE} bytes")
        self.side = side
        self.node = node
        self._secret = secret
        self._nonce = nonce
        self._peer_nonce = b""
        self.peer_node: str | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._state = _State.START
        if side is Side.DIALER:
            self._out += _encode(Hello(node, nonce))

    @property
    def authenticated(self) -> bool:
        return self._state is _State.OPEN

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send(self, message: Message) -> bytes:
        """Frame one message (only once the link is authenticated)."""
        if self._state is not _State.OPEN:
            raise LocalProtocolError("the link is not authenticated yet")
        return _encode(message)

    def receive_data(self, data: bytes) -> list[Message]:
        """Feed bytes from the peer; returns the complete messages among them.

        Raises:
            RemoteProtocolError: a malformed or oversized frame (over `HANDSHAKE_FRAME`
                until the handshake is done, `MAX_FRAME` after), a message before the
                handshake finished, or a wrong proof.  The codec is unusable after.
        """
        if self._state is _State.FAILED:
            raise RemoteProtocolError("the link already failed")
        self._buf += data
        out: list[Message] = []
        try:
            while len(self._buf) >= 4:
                (length,) = struct.unpack_from(">I", self._buf)
                limit = MAX_FRAME if self._state is _State.OPEN else HANDSHAKE_FRAME
                if length < 5 or length > limit:
                    raise RemoteProtocolError(
                        f"bad frame length {length}"
                        + ("" if self._state is _State.OPEN else " before the handshake finished")
                    )
                if len(self._buf) < 4 + length:
                    break
                _, kind, channel = _HEAD.unpack_from(self._buf)
                body = bytes(self._buf[9 : 4 + length])
                del self._buf[: 4 + length]
                message = _decode(kind, channel, body)
                if self._state is _State.OPEN:
                    if isinstance(message, Hello | Proof):
                        raise RemoteProtocolError("handshake message on an open link")
                    out.append(message)
                else:
                    self._handshake(message)
        except RemoteProtocolError:
            self._state = _State.FAILED
            raise
        return out

    def _mac(self, side: Side, dialer_nonce: bytes, listener_nonce: bytes, ids: bytes) -> bytes:
        text = _DOMAIN + side.value.encode() + dialer_nonce + listener_nonce + ids
        return hmac.new(self._secret, text, hashlib.sha256).digest()

    def _ids(self) -> bytes:
        assert self.peer_node is not None
        dialer, listener = (
            (self.node, self.peer_node) if self.side is Side.DIALER else (self.peer_node, self.node)
        )
        return json.dumps([dialer, listener]).encode()

    def _nonces(self) -> tuple[bytes, bytes]:
        if self.side is Side.DIALER:
            return self._nonce, self._peer_nonce
        return self._peer_nonce, self._nonce

    def _handshake(self, message: Message) -> None:
        match self._state, message:
            case _State.START, Hello(node, nonce):
                self.peer_node, self._peer_nonce = node, nonce
                self._state = _State.PROVING
                if self.side is Side.LISTENER:
                    self._out += _encode(Hello(self.node, self._nonce))
                    self._out += _encode(
                        Proof(self._mac(Side.LISTENER, *self._nonces(), self._ids()))
                    )
            case _State.PROVING, Proof(mac):
                other = Side.LISTENER if self.side is Side.DIALER else Side.DIALER
                if not hmac.compare_digest(mac, self._mac(other, *self._nonces(), self._ids())):
                    raise RemoteProtocolError("the peer does not hold the cluster secret")
                if self.side is Side.DIALER:
                    self._out += _encode(
                        Proof(self._mac(Side.DIALER, *self._nonces(), self._ids()))
                    )
                self._state = _State.OPEN
            case _:
                raise RemoteProtocolError(f"{type(message).__name__} before the handshake finished")
