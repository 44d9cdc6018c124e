"""Telnet framing (RFC 854/855) and option negotiation (RFC 1143 Q-method), sans-IO.

Boundary: bytes in, frozen events out; requests in, bytes out.  No sockets, no clock,
no logging.  Both vspcd's VM links and its operator links use this codec, as do the
tests' fake ESXi hosts.

Theory of operation
-------------------
The tokenizer is a small state machine (`_State`) whose state survives any chunk
boundary, including one that falls right after an IAC (docs/protocol.md §1 rule 4).  Plain
data is never walked byte by byte: in the DATA state the codec `find()`s the next IAC
and emits everything before it as one `Data` event, so a chunk without IAC costs one
`find` and one slice.  `IAC IAC` is a data byte 0xff and is merged into the surrounding
run.  Subnegotiation payloads are collected unescaped and capped (`sb_limit`); a
longer one is the peer's fault and raises `TelnetProtocolError`.

A protocol error is final, as in h11's ERROR state: the tokenizer moves to `ERROR`,
keeps the fault in `error`, and every later `receive_data()` / `iter_events()` raises
a `TelnetProtocolError` that names it.  Resynchronising after a framing error would
mean guessing where the peer's next command starts, and a guess turns its bytes into
console data or commands nobody sent; the caller closes the connection instead
(docs/development.md: "a failed connection refuses further use").  Output stays usable, so
replies queued before the fault can still be drained.

    DATA --IAC--> IAC --WILL..DONT--> VERB --option--> DATA
                  IAC --IAC (a data 0xff) or any other command--> DATA
                  IAC --SB--> SB_OPTION --option--> SB_DATA --IAC--> SB_IAC
                              SB_OPTION --IAC (no option byte)--> SB_IAC
                  SB_IAC --SE--> DATA;  SB_IAC --IAC or other command--> SB_DATA
    SB_DATA past sb_limit, or SB_IAC --SB-->  ERROR (absorbing: all input refused)

Option negotiation follows RFC 1143 without the queue bits: for each option the codec
keeps `us` (may *we* perform it: WILL/WONT) and `him` (may the peer: DO/DONT), each
NO / YES / WANTNO / WANTYES.  It never acknowledges a mode already in effect, and it
refuses an unwanted request exactly once, so negotiation cannot loop (docs/development.md,
anti-pattern 17).  Replies are queued and drained with `data_to_send()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar

__all__ = [
    "IAC",
    "SB",
    "SE",
    "Cmd",
    "Command",
    "Data",
    "Event",
    "Negotiation",
    "Opt",
    "OptionChanged",
    "Subnegotiation",
    "TelnetCodec",
    "TelnetProtocolError",
    "Verb",
    "command",
    "escape",
    "subnegotiation",
]

IAC = 0xFF
SB = 0xFA
SE = 0xF0

_IAC_BYTE = b"\xff"
_IAC_IAC = b"\xff\xff"


class Cmd(IntEnum):
    """RFC 854 command codes that may follow IAC."""

    SE = 240
    NOP = 241
    DM = 242
    BRK = 243
    IP = 244
    AO = 245
    AYT = 246
    EC = 247
    EL = 248
    GA = 249
    SB = 250
    WILL = 251
    WONT = 252
    DO = 253
    DONT = 254
    IAC = 255


class Verb(IntEnum):
    """The four negotiation verbs (RFC 854)."""

    WILL = 251
    WONT = 252
    DO = 253
    DONT = 254


class Opt(IntEnum):
    """Telnet options this project names (RFC 856, 857, 858, 2941, 2217, docs/protocol.md)."""

    BINARY = 0
    ECHO = 1
    SGA = 3
    STATUS = 5
    TIMING_MARK = 6
    TTYPE = 24
    NAWS = 31
    TSPEED = 32
    LFLOW = 33
    LINEMODE = 34
    XDISPLOC = 35
    AUTHENTICATION = 37
    NEW_ENVIRON = 39
    COM_PORT = 44
    VMWARE_EXT = 232


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    """A run of in-band data, already unescaped (IAC IAC -> 0xff)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The peer sent `IAC <verb> <option>` (reported whatever the codec answered)."""

    verb: Verb
    option: int


@dataclass(frozen=True, slots=True)
class OptionChanged:
    """An option's state changed.  `local` means we perform it (WILL side)."""

    option: int
    local: bool
    enabled: bool


@dataclass(frozen=True, slots=True)
class Subnegotiation:
    """`IAC SB <option> <payload> IAC SE`; payload unescaped."""

    option: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Command:
    """Any other `IAC <code>` (NOP, BRK, AYT, ...)."""

    code: int


Event = Data | Negotiation | OptionChanged | Subnegotiation | Command


class TelnetProtocolError(Exception):
    """The peer broke telnet framing (RemoteProtocolError in h11 terms).

    The codec that raised it refuses all further input: close the connection.
    """


# --- helpers --------------------------------------------------------------------------


def escape(payload: bytes) -> bytes:
    """Double every 0xff so `payload` travels as in-band data (RFC 854)."""
    return payload.replace(_IAC_BYTE, _IAC_IAC)


def subnegotiation(option: int, payload: bytes) -> bytes:
    """Frame `IAC SB option payload IAC SE`, doubling 0xff inside the payload."""
    return bytes((IAC, SB, option)) + escape(payload) + bytes((IAC, SE))


def negotiation(verb: Verb, option: int) -> bytes:
    """Frame `IAC verb option`."""
    return bytes((IAC, verb, option))


def command(code: Cmd) -> bytes:
    """Frame a two-byte command, `IAC code` (RFC 854: BRK, AYT, NOP, ...)."""
    return bytes((IAC, code))


# --- RFC 1143 state ---------------------------------------------------------------------


class _Q(Enum):
    NO = "no"
    YES = "yes"
    WANTNO = "wantno"
    WANTYES = "wantyes"

    # Enum's own __hash__ hashes the name in Python; the shared tables below hash
    # these on every negotiation.  Members are singletons compared by identity.
    __hash__ = object.__hash__


class _State(Enum):
    DATA = "data"
    IAC = "iac"
    VERB = "verb"  # after IAC WILL/WONT/DO/DONT, waiting for the option byte
    SB_OPTION = "sb_option"
    SB_DATA = "sb_data"
    SB_IAC = "sb_iac"
    ERROR = "error"  # the peer broke framing; absorbing (see the module docstring)


# Module-level aliases of the members used on the hot paths.  On CPython each
# `Enum.MEMBER` lookup is a descriptor call, several times dearer than reading a
# global, and the tokenizer and negotiation below do several per event
# (docs/benchmarks.md has the connect benchmarks).  Same objects, so `is` tests are unchanged.
_NO, _YES, _WANTNO, _WANTYES = _Q.NO, _Q.YES, _Q.WANTNO, _Q.WANTYES
_DATA, _IAC_STATE, _VERB = _State.DATA, _State.IAC, _State.VERB
_SB_OPTION, _SB_DATA, _SB_IAC = _State.SB_OPTION, _State.SB_DATA, _State.SB_IAC
_ERROR = _State.ERROR
_WILL, _WONT, _DO, _DONT = Verb.WILL, Verb.WONT, Verb.DO, Verb.DONT
_VERBS = {verb.value: verb for verb in Verb}  # Verb(code) without EnumType.__call__


# The peer's options sit at `option + 256` in `TelnetCodec._q`.  The keys are built
# once and shared: `option + 256` computed per connection is a new int object (above
# CPython's small-int cache) held by every codec's table.
_HIM_KEYS = tuple(range(256, 512))

# The tables themselves are shared too: a codec never changes its
# table in place but swaps in a copy, and equal tables are one object, so the many
# connections that negotiated the same options (every VM on a vspcd) hold one dict
# between them instead of one each.  Bounded, so a peer cycling through
# options cannot grow it: at the limit the index starts over (tables in use stay
# with their codecs; the common ones are shared again from their next use).
_SHARED_TABLES: dict[frozenset[tuple[int, _Q]], dict[int, _Q]] = {}
_SHARED_TABLES_MAX = 256
_EMPTY_TABLE: dict[int, _Q] = {}  # never written: every change makes a new table


# (id(table), key, state) -> (table, the result): every connection walks the same few
# transitions, so after the first one each is a dict lookup.  The entry holds `table`
# itself, so its id cannot be reused while the entry lives, and the `is` check below
# makes a stale id harmless.  Bounded like the index.
_TRANSITIONS: dict[tuple[int, int, _Q], tuple[dict[int, _Q], dict[int, _Q]]] = {}


# (id(table), verb, option, accepted) -> (table, new table, reply, events): one
# received negotiation's whole outcome (`TelnetCodec._negotiate`).  Bounded like the
# index.
# The codec's class is in the key: what it reports is a class's choice
# (`TelnetCodec.reports`).
_OUTCOMES: dict[
    tuple[int, Verb, int, bool, type],
    tuple[dict[int, _Q], dict[int, _Q], bytes, tuple[Event, ...]],
] = {}


# (local offers, remote requests) -> (table, bytes) of a fresh codec that made them.
_OPENINGS: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[dict[int, _Q], bytes]] = {}


def _with_state(table: dict[int, _Q], key: int, state: _Q) -> dict[int, _Q]:
    """`table` with `key` set to `state`, as a shared table where possible."""
    known = _TRANSITIONS.get((id(table), key, state))
    if known is not None and known[0] is table:
        return known[1]
    new = _new_table(table, key, state)
    if len(_TRANSITIONS) >= 4 * _SHARED_TABLES_MAX:
        _TRANSITIONS.clear()
    _TRANSITIONS[(id(table), key, state)] = (table, new)
    return new


def _new_table(table: dict[int, _Q], key: int, state: _Q) -> dict[int, _Q]:
    new = dict(table)
    if state is _NO:
        new.pop(key, None)  # NO is the default: equal tables, one representation
    else:
        new[key] = state
    items = frozenset(new.items())
    shared = _SHARED_TABLES.get(items)
    if shared is not None:
        return shared
    if len(_SHARED_TABLES) >= _SHARED_TABLES_MAX:
        _SHARED_TABLES.clear()  # codecs keep their tables; only the index starts over
    _SHARED_TABLES[items] = new
    return new


class TelnetCodec:
    """Telnet framing plus RFC 1143 negotiation for one connection.

    Args:
        local_ok: options we agree to perform when the peer asks (`DO x` -> `WILL x`).
        remote_ok: options we agree to let the peer perform (`WILL x` -> `DO x`).
        sb_limit: largest subnegotiation payload accepted, in bytes.

    Attributes:
        error: the `TelnetProtocolError` that ended input, or None (see `failed`).
        reports: a class attribute; a subclass may set it to the option changes
            its caller acts on, as `(option, local, enabled)` triples: a received
            negotiation then yields only an `OptionChanged` among those, and no
            `Negotiation` (the codec answers negotiation itself).

    Memory: one codec per connection, so no `__dict__`, and the
    reply queue and the subnegotiation buffer exist only while they hold bytes.
    """

    __slots__ = (
        "_local_ok",
        "_remote_ok",
        "_sb_limit",
        "_q",
        "_out",
        "_state",
        "_verb",
        "_sb_option",
        "_sb",
        "error",
    )

    reports: ClassVar[frozenset[tuple[int, bool, bool]] | None] = None

    def __init__(
        self,
        *,
        local_ok: Iterable[int] = (),
        remote_ok: Iterable[int] = (),
        sb_limit: int = 64 * 1024,
    ) -> None:
        self._local_ok = frozenset(local_ok)
        self._remote_ok = frozenset(remote_ok)
        self._sb_limit = sb_limit
        # RFC 1143 states of both sides in one table (ours at `option`, the peer's at
        # `_HIM_KEYS[option]`), copied on write and shared (`_with_state`).
        self._q: dict[int, _Q] = _EMPTY_TABLE
        self._out: bytearray | None = None  # queued replies, allocated on demand
        self._state = _DATA
        self._verb = _WILL
        self._sb_option: int | None = None
        self._sb: bytearray | None = None  # an open subnegotiation's payload
        self.error: TelnetProtocolError | None = None  # the fault that ended input

    @property
    def failed(self) -> bool:
        """True once the peer broke framing; every later input call raises."""
        return self._state is _ERROR

    def _fail(self, message: str) -> TelnetProtocolError:
        """Enter ERROR for good and return the error to raise."""
        self._state = _ERROR
        self._sb = None
        self.error = TelnetProtocolError(message)
        return self.error

    # -- options ---------------------------------------------------------------------

    def local_enabled(self, option: int) -> bool:
        """True once we perform `option` (both sides agreed on WILL)."""
        return self._q.get(option, _NO) is _YES

    def remote_enabled(self, option: int) -> bool:
        """True once the peer performs `option` (both sides agreed on DO)."""
        return self._q.get(_HIM_KEYS[option], _NO) is _YES

    def offer_local(self, option: int) -> None:
        """Ask to perform `option` (send WILL) unless it is on or already asked for."""
        if self._q.get(option, _NO) is _NO:
            self._q = _with_state(self._q, option, _WANTYES)
            self._queue(negotiation(_WILL, option))

    def request_remote(self, option: int) -> None:
        """Ask the peer to perform `option` (send DO) unless on or already asked for."""
        if self._q.get(_HIM_KEYS[option], _NO) is _NO:
            self._q = _with_state(self._q, _HIM_KEYS[option], _WANTYES)
            self._queue(negotiation(_DO, option))

    def offer(self, local: tuple[int, ...], remote: tuple[int, ...]) -> None:
        """`offer_local` each of `local`, then `request_remote` each of `remote`.

        A fresh codec (nothing negotiated or queued yet) takes the resulting table and
        bytes from a cache: every connection of a server opens with the same offers.
        """
        if self._q is not _EMPTY_TABLE or self._out is not None:
            self._offer(local, remote)
            return
        known = _OPENINGS.get((local, remote))
        if known is None:
            self._offer(local, remote)
            if len(_OPENINGS) >= _SHARED_TABLES_MAX:
                _OPENINGS.clear()
            _OPENINGS[(local, remote)] = (self._q, bytes(self._out or b""))
            return
        self._q = known[0]
        if known[1]:
            self._queue(known[1])

    def _offer(self, local: tuple[int, ...], remote: tuple[int, ...]) -> None:
        for option in local:
            self.offer_local(option)
        for option in remote:
            self.request_remote(option)

    def _negotiate(self, verb: Verb, option: int) -> tuple[Event, ...]:
        """Apply RFC 1143 §7 to one received verb; queue replies; report changes.

        The outcome depends only on (table, verb, option, whether we accept the
        option), and every connection walks the same few, so after the first time
        each is a dict lookup: the new (shared) table, the reply and the events
        (frozen, so one instance serves every connection).  The `is` check makes a
        stale `id` harmless, as in `_with_state`.
        """
        table = self._q
        wanted = self._local_ok if verb is _DO or verb is _DONT else self._remote_ok
        key = (id(table), verb, option, option in wanted, type(self))
        known = _OUTCOMES.get(key)
        if known is None or known[0] is not table:
            queued = self._out
            self._out = None
            events = self._negotiate_slow(verb, option)
            reply = b"" if self._out is None else bytes(self._out)
            reports = self.reports
            if reports is not None:
                events = tuple(
                    event
                    for event in events
                    if type(event) is OptionChanged
                    and (event.option, event.local, event.enabled) in reports
                )
            if len(_OUTCOMES) >= 4 * _SHARED_TABLES_MAX:
                _OUTCOMES.clear()
            known = _OUTCOMES[key] = (table, self._q, reply, events)
            self._out, self._q = queued, table
        self._q = known[1]
        if known[2]:
            self._queue(known[2])
        return known[3]

    def _negotiate_slow(self, verb: Verb, option: int) -> tuple[Event, ...]:
        local = verb in (_DO, _DONT)
        key = option if local else _HIM_KEYS[option]
        wanted = self._local_ok if local else self._remote_ok
        positive = verb in (_DO, _WILL)
        agree, refuse = (_WILL, _WONT) if local else (_DO, _DONT)
        state = self._q.get(key, _NO)
        events: list[Event] = [Negotiation(verb, option)]
        if positive:
            if state is _NO:
                if option in wanted:
                    self._q = _with_state(self._q, key, _YES)
                    self._queue(negotiation(agree, option))
                    events.append(OptionChanged(option, local, True))
                else:
                    self._queue(negotiation(refuse, option))
            elif state is _WANTYES:
                self._q = _with_state(self._q, key, _YES)
                events.append(OptionChanged(option, local, True))
            elif state is _WANTNO:
                # RFC 1143: "DONT answered by WILL" - an error by the peer; settle on NO.
                self._q = _with_state(self._q, key, _NO)
            # YES: already in effect, never acknowledge again.
        else:
            if state is _YES:
                self._q = _with_state(self._q, key, _NO)
                self._queue(negotiation(refuse, option))
                events.append(OptionChanged(option, local, False))
            elif state in (_WANTNO, _WANTYES):
                self._q = _with_state(self._q, key, _NO)
            # NO: already off, no reply.
        return tuple(events)

    # -- output ----------------------------------------------------------------------

    def send_data(self, payload: bytes) -> bytes:
        """Return `payload` escaped for the wire (does not touch the reply queue)."""
        return escape(payload)

    def data_to_send(self) -> bytes:
        """Drain and return the queued negotiation bytes."""
        out, self._out = self._out, None
        return b"" if out is None else bytes(out)

    def _queue(self, reply: bytes) -> None:
        if self._out is None:
            self._out = bytearray(reply)
        else:
            self._out += reply

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse one chunk; return its events in order.

        Negotiation replies for the whole chunk are queued by the time this returns.
        A caller that queues replies of its own and needs them interleaved in request
        order uses `iter_events()` instead.

        Raises:
            TelnetProtocolError: a subnegotiation exceeded `sb_limit`, or an `IAC SB`
                started inside another subnegotiation; or an earlier call raised one
                (the codec is failed and refuses all input, this chunk included).
        """
        if self._state is _DATA and IAC not in data:
            # The common case (typed input, console output): one run of data, no
            # generator to step through.  The same event `iter_events` yields.
            return [Data(bytes(data))] if data else []
        return list(self.iter_events(data))

    def iter_events(self, data: bytes) -> Iterator[Event]:
        """Parse one chunk lazily: each event is yielded as soon as it is complete.

        A negotiation reply is queued just before its `Negotiation` event is yielded
        and nothing later is parsed until the caller asks for the next event, so a
        caller that drains `data_to_send()` before queuing its own reply to an event
        keeps every reply in request order however TCP cut the input (docs/protocol.md §1
        rule 4).  The iterator must be exhausted: state advances as it runs.

        Raises:
            TelnetProtocolError: as `receive_data`, from the event where it happens.
        """
        if self._state is _ERROR:
            # A fresh instance per call, so each traceback is its own; the cause is
            # the original fault, whose message this one repeats.
            raise TelnetProtocolError(
                f"input refused: the connection already failed ({self.error})"
            ) from self.error
        run = bytearray()  # pending Data bytes, emitted before the next non-data event
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state is _DATA:
                nxt = data.find(IAC, pos)
                if nxt < 0:
                    if not run and pos == 0:
                        yield Data(bytes(data))  # fast path: no IAC at all
                        return
                    run += data[pos:]
                    break
                run += data[pos:nxt]
                pos = nxt + 1
                self._state = _IAC_STATE
            elif state is _IAC_STATE:
                code = data[pos]
                pos += 1
                if code == IAC:
                    run.append(IAC)
                    self._state = _DATA
                    continue
                if run:
                    yield Data(bytes(run))
                    run.clear()
                if _WILL <= code <= _DONT:
                    self._verb = _VERBS[code]
                    self._state = _VERB
                elif code == SB:
                    self._state = _SB_OPTION
                else:
                    if code != SE:  # a stray SE outside SB carries nothing
                        yield Command(code)
                    self._state = _DATA
            elif state is _VERB:
                events = self._negotiate(self._verb, data[pos])
                if events:
                    yield from events
                pos += 1
                self._state = _DATA
            elif state is _SB_OPTION:
                code = data[pos]
                pos += 1
                self._sb = None
                if code == IAC:
                    # `IAC SB IAC ...`: no option byte; treat as empty and resync at SE.
                    self._sb_option = None
                    self._state = _SB_IAC
                else:
                    self._sb_option = code
                    self._state = _SB_DATA
                    # Fast path: the whole `... IAC SE` is in this chunk with no IAC in
                    # the payload (every option-232 command we see in practice).  One
                    # step instead of SB_DATA + SB_IAC; the same event, the same limit.
                    stop = data.find(IAC, pos)
                    if (
                        0 <= stop < end - 1
                        and data[stop + 1] == SE
                        and stop - pos <= self._sb_limit
                    ):
                        payload = bytes(data[pos:stop])
                        pos = stop + 2
                        self._state = _DATA
                        yield Subnegotiation(code, payload)
            elif state is _SB_DATA:
                nxt = data.find(IAC, pos)
                stop = end if nxt < 0 else nxt
                if self._sb is None:
                    self._sb = bytearray(data[pos:stop])
                else:
                    self._sb += data[pos:stop]
                if len(self._sb) > self._sb_limit:
                    raise self._fail(f"subnegotiation longer than {self._sb_limit} bytes")
                pos = stop
                if nxt >= 0:
                    pos += 1
                    self._state = _SB_IAC
            else:  # SB_IAC
                code = data[pos]
                pos += 1
                if code == IAC:
                    if self._sb is None:
                        self._sb = bytearray()
                    self._sb.append(IAC)
                    self._state = _SB_DATA
                elif code == SE:
                    if self._sb_option is not None:
                        yield Subnegotiation(self._sb_option, bytes(self._sb or b""))
                    self._sb = None
                    self._state = _DATA
                elif code == SB:
                    raise self._fail("IAC SB inside a subnegotiation")
                else:
                    # RFC 855 leaves `IAC <cmd>` inside SB undefined; keep the byte pair
                    # out of the payload and stay in the subnegotiation.
                    self._state = _SB_DATA
        if run:
            yield Data(bytes(run))
