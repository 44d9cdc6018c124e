"""VMware telnet extension (option 232) commands <-> typed events, for both roles.

Boundary: pure functions over one subnegotiation payload (already unescaped by
`common.telnet`).  `decode()` turns a payload into an event, `encode()` turns an event
into a complete wire frame (`IAC SB 232 ... IAC SE`, every 0xff doubled).  The proxy
side (vspcd) and the VM side (tests, the ESXi simulator) use the same table.

Spec: docs/protocol.md §1 (framing), §2 (command table), §3.3 (DO-PROXY and `?port=`),
§3.4 (UUID wire form and canonical key), §4.1 (sequence, secret, cookie: opaque, no
fixed length).  Codes 80-87 are not in VMware's guide; their layout follows
Wireshark's `dissect_vmware_subopt` and what ESXi sends (docs/protocol.md §0).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import parse_qsl

from vspc.common.telnet import Opt, subnegotiation

__all__ = [
    "PROXY_KNOWN_CODES",
    "Code",
    "Direction",
    "DoProxy",
    "GetVmBiosUuid",
    "GetVmLocationUuid",
    "GetVmName",
    "GetVmVcUuid",
    "KnownSuboptions1",
    "KnownSuboptions2",
    "UnknownSuboptionRcvd1",
    "UnknownSuboptionRcvd2",
    "Unsupported",
    "VMotionAbort",
    "VMotionBegin",
    "VMotionComplete",
    "VMotionGoahead",
    "VMotionNotNow",
    "VMotionPeer",
    "VMotionPeerOk",
    "VmBiosUuid",
    "VmLocationUuid",
    "VmName",
    "VmVcUuid",
    "VmwareEvent",
    "WillProxy",
    "WontProxy",
    "canonical_uuid",
    "decode",
    "display_uuid",
    "encode",
    "parse_service_uri",
    "payload_of",
    "wire_uuid",
]


class Code(IntEnum):
    """Option-232 command codes (docs/protocol.md §2)."""

    KNOWN_SUBOPTIONS_1 = 0
    KNOWN_SUBOPTIONS_2 = 1
    UNKNOWN_SUBOPTION_RCVD_1 = 2
    UNKNOWN_SUBOPTION_RCVD_2 = 3
    VMOTION_BEGIN = 40
    VMOTION_GOAHEAD = 41
    VMOTION_NOTNOW = 43
    VMOTION_PEER = 44
    VMOTION_PEER_OK = 45
    VMOTION_COMPLETE = 46
    VMOTION_ABORT = 48
    DO_PROXY = 70
    WILL_PROXY = 71
    WONT_PROXY = 73
    VM_VC_UUID = 80
    GET_VM_VC_UUID = 81
    VM_NAME = 82
    GET_VM_NAME = 83
    VM_BIOS_UUID = 84
    GET_VM_BIOS_UUID = 85
    VM_LOCATION_UUID = 86
    GET_VM_LOCATION_UUID = 87


# The proxy's KNOWN-SUBOPTIONS-2 list, byte for byte as the capture proxy sent it
# (docs/protocol.md §3.2).  84-87 stay out: vspcd neither asks for nor uses them.
PROXY_KNOWN_CODES: bytes = bytes.fromhex("00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 52 53")


class Direction(StrEnum):
    """DO-PROXY direction byte (docs/protocol.md §3.3)."""

    SERVER = "S"  # the VM listens; operators reach it through the proxy
    CLIENT = "C"  # the VM wants the proxy to connect out to serviceURI


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownSuboptions1:
    """VM -> P: the codes the VM can send or accept (order as sent, unsorted)."""

    codes: bytes


@dataclass(frozen=True, slots=True)
class KnownSuboptions2:
    """P -> VM: the codes the proxy can send or accept."""

    codes: bytes


@dataclass(frozen=True, slots=True)
class UnknownSuboptionRcvd1:
    """VM -> P: the VM did not know our `code`; stop using it."""

    code: int


@dataclass(frozen=True, slots=True)
class UnknownSuboptionRcvd2:
    """P -> VM: we do not know the VM's `code`."""

    code: int


@dataclass(frozen=True, slots=True)
class VMotionBegin:
    """Source -> P: the VM wants to migrate; `sequence` is opaque."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class VMotionGoahead:
    """P -> source: `cookie` = sequence || secret (no separator)."""

    cookie: bytes


@dataclass(frozen=True, slots=True)
class VMotionNotNow:
    """P -> source: refuse the migration; the sequence only."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class VMotionPeer:
    """Destination -> P: `cookie` exactly as GOAHEAD carried it."""

    cookie: bytes


@dataclass(frozen=True, slots=True)
class VMotionPeerOk:
    """P -> destination: the sequence only."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class VMotionComplete:
    """Destination -> P: the destination runs; switch to it."""

    sequence: bytes


@dataclass(frozen=True, slots=True)
class VMotionAbort:
    """Source -> P: the migration failed; empty on the wire (`extra` if a peer adds any)."""

    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class DoProxy:
    """VM -> P: `direction` then serviceURI, unterminated.

    `direction` is the raw first byte as text ("S", "C", or anything a broken peer
    sends); `Direction(event.direction)` raises for anything else.
    """

    direction: str
    service_uri: str


@dataclass(frozen=True, slots=True)
class WillProxy:
    """P -> VM: the proxy will forward this port."""


@dataclass(frozen=True, slots=True)
class WontProxy:
    """P -> VM: the proxy refuses this port."""


@dataclass(frozen=True, slots=True)
class VmVcUuid:
    """VM -> P: the vCenter UUID text (47 bytes on the wire; see `canonical_uuid`)."""

    text: str


@dataclass(frozen=True, slots=True)
class GetVmVcUuid:
    """P -> VM: ask for VM-VC-UUID."""


@dataclass(frozen=True, slots=True)
class VmName:
    """VM -> P: the display name (UTF-8, decoded with errors="replace")."""

    name: str


@dataclass(frozen=True, slots=True)
class GetVmName:
    """P -> VM: ask for VM-NAME."""


@dataclass(frozen=True, slots=True)
class VmBiosUuid:
    """VM -> P: BIOS UUID text (never observed; docs/protocol.md §7)."""

    text: str


@dataclass(frozen=True, slots=True)
class GetVmBiosUuid:
    """P -> VM: ask for VM-BIOS-UUID."""


@dataclass(frozen=True, slots=True)
class VmLocationUuid:
    """VM -> P: location UUID text (never observed; docs/protocol.md §7)."""

    text: str


@dataclass(frozen=True, slots=True)
class GetVmLocationUuid:
    """P -> VM: ask for VM-LOCATION-UUID."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Any code outside the table (including the gaps 42, 47, 72)."""

    code: int
    body: bytes = b""


VmwareEvent = (
    KnownSuboptions1
    | KnownSuboptions2
    | UnknownSuboptionRcvd1
    | UnknownSuboptionRcvd2
    | VMotionBegin
    | VMotionGoahead
    | VMotionNotNow
    | VMotionPeer
    | VMotionPeerOk
    | VMotionComplete
    | VMotionAbort
    | DoProxy
    | WillProxy
    | WontProxy
    | VmVcUuid
    | GetVmVcUuid
    | VmName
    | GetVmName
    | VmBiosUuid
    | GetVmBiosUuid
    | VmLocationUuid
    | GetVmLocationUuid
    | Unsupported
)


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _one_byte(body: bytes) -> int | None:
    return body[0] if len(body) == 1 else None


def _decode_rcvd(code: int, body: bytes) -> VmwareEvent:
    one = _one_byte(body)
    if one is None:
        return Unsupported(code, body)
    if code == Code.UNKNOWN_SUBOPTION_RCVD_1:
        return UnknownSuboptionRcvd1(one)
    return UnknownSuboptionRcvd2(one)


def _decode_do_proxy(code: int, body: bytes) -> VmwareEvent:
    if not body:
        return DoProxy("", "")
    return DoProxy(_text(body[:1]), _text(body[1:]))


# Code -> decoder(code, body).  A dict rather than a `match` on `Code.X` values: each
# case there costs an Enum member lookup (a descriptor call on CPython 3.11), so the
# later codes took ~20 of them, and every connection decodes several commands.
_DECODERS: dict[int, Callable[[int, bytes], VmwareEvent]] = {
    Code.KNOWN_SUBOPTIONS_1: lambda _, body: KnownSuboptions1(body),
    Code.KNOWN_SUBOPTIONS_2: lambda _, body: KnownSuboptions2(body),
    Code.UNKNOWN_SUBOPTION_RCVD_1: _decode_rcvd,
    Code.UNKNOWN_SUBOPTION_RCVD_2: _decode_rcvd,
    Code.VMOTION_BEGIN: lambda _, body: VMotionBegin(body),
    Code.VMOTION_GOAHEAD: lambda _, body: VMotionGoahead(body),
    Code.VMOTION_NOTNOW: lambda _, body: VMotionNotNow(body),
    Code.VMOTION_PEER: lambda _, body: VMotionPeer(body),
    Code.VMOTION_PEER_OK: lambda _, body: VMotionPeerOk(body),
    Code.VMOTION_COMPLETE: lambda _, body: VMotionComplete(body),
    Code.VMOTION_ABORT: lambda _, body: VMotionAbort(body),
    Code.DO_PROXY: _decode_do_proxy,
    Code.WILL_PROXY: lambda _, body: WillProxy(),
    Code.WONT_PROXY: lambda _, body: WontProxy(),
    Code.VM_VC_UUID: lambda _, body: VmVcUuid(_text(body)),
    Code.GET_VM_VC_UUID: lambda _, body: GetVmVcUuid(),
    Code.VM_NAME: lambda _, body: VmName(_text(body)),
    Code.GET_VM_NAME: lambda _, body: GetVmName(),
    Code.VM_BIOS_UUID: lambda _, body: VmBiosUuid(_text(body)),
    Code.GET_VM_BIOS_UUID: lambda _, body: GetVmBiosUuid(),
    Code.VM_LOCATION_UUID: lambda _, body: VmLocationUuid(_text(body)),
    Code.GET_VM_LOCATION_UUID: lambda _, body: GetVmLocationUuid(),
}
assert set(_DECODERS) == set(Code), "every code decodes"


def decode(payload: bytes) -> VmwareEvent | None:
    """Decode one option-232 subnegotiation payload (code byte first, unescaped).

    Returns None for the empty command `IAC SB 232 IAC SE`, which has no code to
    report (docs/protocol.md §1 rule 6).  Never raises: a malformed body of a known code
    (e.g. a two-byte UNKNOWN-SUBOPTION-RCVD) decodes as `Unsupported`.
    """
    if not payload:
        return None
    code = payload[0]
    if code in _REPEATED:
        known = _DECODED.get(payload)
        if known is not None:
            return known
    body = payload[1:]
    decoder = _DECODERS.get(code)
    event = Unsupported(code, body) if decoder is None else decoder(code, body)
    if code in _REPEATED:
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[bytes(payload)] = event
    return event


# Commands a VM repeats byte for byte on every connection it opens (the opening of
# docs/protocol.md §3, so on every vMotion's destination): decoded once, then shared
# (events are frozen).  The vMotion commands carry fresh sequences and are not kept.
# Bounded: at the limit the cache starts over.
_REPEATED = frozenset((Code.KNOWN_SUBOPTIONS_1, Code.DO_PROXY, Code.VM_VC_UUID, Code.VM_NAME))
_DECODED: dict[bytes, VmwareEvent] = {}
_DECODED_MAX = 1024


# Exact event class -> (code, body), for the classes whose body is a plain field:
# one dict lookup instead of a `match` over ~20 class patterns per reply sent.
_BODIES: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    KnownSuboptions1: (Code.KNOWN_SUBOPTIONS_1, lambda e: e.codes),
    KnownSuboptions2: (Code.KNOWN_SUBOPTIONS_2, lambda e: e.codes),
    VMotionBegin: (Code.VMOTION_BEGIN, lambda e: e.sequence),
    VMotionGoahead: (Code.VMOTION_GOAHEAD, lambda e: e.cookie),
    VMotionNotNow: (Code.VMOTION_NOTNOW, lambda e: e.sequence),
    VMotionPeer: (Code.VMOTION_PEER, lambda e: e.cookie),
    VMotionPeerOk: (Code.VMOTION_PEER_OK, lambda e: e.sequence),
    VMotionComplete: (Code.VMOTION_COMPLETE, lambda e: e.sequence),
    WillProxy: (Code.WILL_PROXY, lambda e: b""),
    WontProxy: (Code.WONT_PROXY, lambda e: b""),
    GetVmVcUuid: (Code.GET_VM_VC_UUID, lambda e: b""),
    GetVmName: (Code.GET_VM_NAME, lambda e: b""),
}


def _code_and_body(event: VmwareEvent) -> tuple[int, bytes]:
    fast = _BODIES.get(type(event))
    if fast is not None:
        fast_code, body_of = fast
        return fast_code, body_of(event)
    match event:
        case KnownSuboptions1(codes):
            return Code.KNOWN_SUBOPTIONS_1, codes
        case KnownSuboptions2(codes):
            return Code.KNOWN_SUBOPTIONS_2, codes
        case UnknownSuboptionRcvd1(code):
            return Code.UNKNOWN_SUBOPTION_RCVD_1, bytes((code,))
        case UnknownSuboptionRcvd2(code):
            return Code.UNKNOWN_SUBOPTION_RCVD_2, bytes((code,))
        case VMotionBegin(sequence):
            return Code.VMOTION_BEGIN, sequence
        case VMotionGoahead(cookie):
            return Code.VMOTION_GOAHEAD, cookie
        case VMotionNotNow(sequence):
            return Code.VMOTION_NOTNOW, sequence
        case VMotionPeer(cookie):
            return Code.VMOTION_PEER, cookie
        case VMotionPeerOk(sequence):
            return Code.VMOTION_PEER_OK, sequence
        case VMotionComplete(sequence):
            return Code.VMOTION_COMPLETE, sequence
        case VMotionAbort(extra):
            return Code.VMOTION_ABORT, extra
        case DoProxy(direction, service_uri):
            return Code.DO_PROXY, (direction + service_uri).encode()
        case WillProxy():
            return Code.WILL_PROXY, b""
        case WontProxy():
            return Code.WONT_PROXY, b""
        case VmVcUuid(text):
            return Code.VM_VC_UUID, text.encode()
        case GetVmVcUuid():
            return Code.GET_VM_VC_UUID, b""
        case VmName(name):
            return Code.VM_NAME, name.encode()
        case GetVmName():
            return Code.GET_VM_NAME, b""
        case VmBiosUuid(text):
            return Code.VM_BIOS_UUID, text.encode()
        case GetVmBiosUuid():
            return Code.GET_VM_BIOS_UUID, b""
        case VmLocationUuid(text):
            return Code.VM_LOCATION_UUID, text.encode()
        case GetVmLocationUuid():
            return Code.GET_VM_LOCATION_UUID, b""
        case Unsupported(code, body):
            return code, body
    raise TypeError(f"not an option-232 event: {event!r}")  # pragma: no cover


def payload_of(event: VmwareEvent) -> bytes:
    """The unescaped subnegotiation payload (code byte + body) for `event`."""
    code, body = _code_and_body(event)
    return bytes((code,)) + body


def encode(event: VmwareEvent) -> bytes:
    """Frame `event` as `IAC SB 232 <code> <body> IAC SE`, doubling every 0xff."""
    return subnegotiation(Opt.VMWARE_EXT, payload_of(event))


# --- identification -------------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")


def canonical_uuid(text: str) -> str:
    """Normalise a VM-VC-UUID to the 32 lower-case hex digit key (docs/protocol.md §3.4).

    Accepts any case, with spaces or dashes anywhere (ESXi's wire form
    `01 23 ... ef-fe ... 00`, 8-4-4-4-12, or bare hex).

    Raises:
        ValueError: anything that is not 32 hex digits once spaces and dashes go.
    """
    # str.replace, not a per-character join: this runs for every connection.
    digits = text.replace(" ", "").replace("-", "").lower()
    if len(digits) != 32 or not _HEX.issuperset(digits):
        raise ValueError(f"bad VM-VC-UUID {text!r}")
    return digits


def display_uuid(key: str) -> str:
    """8-4-4-4-12 form of a canonical key, e.g. `01234567-89ab-cdef-fedc-ba9800000000`."""
    if len(key) == 32 and _HEX.issuperset(key):
        # A canonical key (the only kind the hub has): slicing gives what uuid.UUID
        # prints, at a fraction of the cost; list rows and events ask for it often.
        return f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}"
    return str(uuid.UUID(hex=key))


def wire_uuid(key: str) -> str:
    """ESXi's 47-character wire form of a canonical key (used by the VM side)."""
    pairs = [key[i : i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


def parse_service_uri(service_uri: str) -> tuple[str, str | None]:
    """Split a serviceURI into (base, port label).

    `vSPC.py?port=console2` -> ("vSPC.py", "console2").  The query is parsed leniently
    (`parse_qsl(..., keep_blank_values=True)`, non-strict) and the first `port` value
    wins; a malformed query such as `vSPC.py?port` gives a label of "" rather than an
    error (docs/protocol.md §3.3, TV-31).  No query -> label None.
    """
    base, sep, query = service_uri.partition("?")
    if not sep:
        return base, None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "port":
            return base, value
    return base, None
