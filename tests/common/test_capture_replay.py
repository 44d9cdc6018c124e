"""Replay the VM side of the real ESXi capture through ProxySession (docs/protocol.md §6).

The capture (§6.1) lives in `shared/data/` beside the repository and is never copied in.
Its V>P records are replayed in one global order (§6.2 step 1), one record per
`receive_data()` unless a test re-chunks them (§6.2 step 3, TV-25).  The test plays the
hub: it answers BEGIN with GOAHEAD (or NOTNOW for TV-13's `cd 52 67 55`), checks every
PEER against the cookie it issued, answers it with PEER-OK, and switches the active
connection on COMPLETE.  The destination's PEER carries the capture proxy's cookie, so
it is replaced by the live one (§6.2 step 4).  Replies are checked by rule: exact bytes
where a vector says so, structure for GOAHEAD (§6.3, TV-01 ... TV-18).

The hub reacts once per capture record, after all of that record's chunks are fed, so
that a re-chunked replay must reproduce the VM-bound bytes exactly, record by record.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vspc.common import vmware as vm
from vspc.common.session import (
    ProxyRequested,
    ProxySession,
    SessionEvent,
    SessionState,
    VmData,
    VmIdentified,
    VmNamed,
)
from vspc.common.telnet import Subnegotiation, TelnetCodec, escape

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CAPTURE = DATA_DIR / "esxi-vmotion-capture.segments.json"

EXPECTED = bytes(0x20 + i % 95 for i in range(114))  # TV-18: A, B, C data in order
KEY = "0123456789abcdeffedcba9800000000"
REFUSED = bytes.fromhex("cd 52 67 55")  # TV-13: the hub's "refuse next BEGIN" hook
HOOK_SECRET = bytes.fromhex("ff 00 ff 10")  # §6.4 item 4
FIXED_SECRET = bytes.fromhex("ff 00 ff 10 5a a5 ff 01")  # deterministic, for re-chunking
# The capture proxy's secrets, by sequence (§6.2 step 4).
CAPTURE_SECRETS = {
    bytes.fromhex("44 da 87 f1"): bytes.fromhex("3c e6 4d ab"),
    bytes.fromhex("98 d9 8d b4"): bytes.fromhex("64 b4 07 da"),
    bytes.fromhex("61 ed 26 a2"): bytes.fromhex("ae ec 48 3f"),
    bytes.fromhex("76 19 ff e9"): bytes.fromhex("55 21 99 8c"),
}


def h(text: str) -> bytes:
    return bytes.fromhex(text)


KS2 = h("ff fa e8 01 00 01 02 03 28 29 2b 2c 2d 2e 30 46 47 49 50 51 52 53 ff f0")
GET_UUID = h("ff fa e8 51 ff f0")
GET_NAME = h("ff fa e8 53 ff f0")
OFFERS = h("ff fb 00 ff fb 03 ff fd 00 ff fd 03 ff fd e8")


# --- the capture ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One V>P record: `kind` is "open" (SYN), "close" (FIN) or "data"."""

    index: int  # position in the capture's record list
    conn: str
    kind: str
    payload: bytes


@pytest.fixture(scope="module")
def records() -> list[dict[str, object]]:
    if not CAPTURE.is_file():
        pytest.skip(f"capture data not found at {CAPTURE} (shared/ beside the repository)")
    loaded: list[dict[str, object]] = json.loads(CAPTURE.read_text())
    return loaded


@pytest.fixture(scope="module")
def steps(records: list[dict[str, object]]) -> list[Step]:
    """The VM side in capture order (§6.2 steps 1 and 2); SYN/ACK and P>V are dropped."""
    out = []
    for index, rec in enumerate(records):
        if rec["dir"] != "V>P":
            continue
        text = str(rec["hex"])
        kind = {"SYN": "open", "FIN": "close"}.get(text, "data")
        payload = bytes.fromhex(text) if kind == "data" else b""
        out.append(Step(index, str(rec["conn"]), kind, payload))
    return out


@pytest.fixture(scope="module")
def capture_cookies(records: list[dict[str, object]]) -> dict[bytes, bytes]:
    """Sequence -> cookie of each capture GOAHEAD, unescaped from the P>V records."""
    cookies: dict[bytes, bytes] = {}
    for rec in records:
        text = str(rec["hex"])
        if rec["dir"] != "P>V" or not text.startswith("ff fa e8 29"):
            continue
        for event in TelnetCodec().receive_data(bytes.fromhex(text)):
            assert isinstance(event, Subnegotiation)
            goahead = vm.decode(event.payload)
            assert isinstance(goahead, vm.VMotionGoahead)
            cookies[goahead.cookie[:4]] = goahead.cookie
    return cookies


def test_capture_matches_its_description(
    records: list[dict[str, object]], steps: list[Step], capture_cookies: dict[bytes, bytes]
) -> None:
    # §6.1 counts; if these fail, the file is not the capture the vectors describe.
    assert len(records) == 219
    assert sum(1 for r in records if r["dir"] == "V>P") == 164
    assert [s.conn for s in steps if s.kind == "open"] == ["A", "B", "C", "D"]
    assert sum(1 for s in steps if s.kind == "close") == 4
    assert {seq: cookie[4:] for seq, cookie in capture_cookies.items()} == CAPTURE_SECRETS


# --- the replay -------------------------------------------------------------------------

Chunker = Callable[[bytes], list[bytes]]


def whole(payload: bytes) -> list[bytes]:
    return [payload]


def one_byte_at_a_time(payload: bytes) -> list[bytes]:
    return [payload[i : i + 1] for i in range(len(payload))]


def split_at(cut: int) -> Chunker:
    def chunker(payload: bytes) -> list[bytes]:
        return [payload[:cut], payload[cut:]] if 0 < cut < len(payload) else [payload]

    return chunker


def random_cuts(seed: int) -> Chunker:
    rng = random.Random(seed)

    def chunker(payload: bytes) -> list[bytes]:
        if len(payload) < 2:
            return [payload]
        cuts = sorted(rng.sample(range(1, len(payload)), rng.randint(0, len(payload) - 1)))
        return [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]

    return chunker


@dataclass
class Transcript:
    """What a replay produced: every hub-level event, and every VM-bound byte."""

    events: list[tuple[str, SessionEvent]] = field(default_factory=list)
    replies: dict[int, bytes] = field(default_factory=dict)  # record index -> bytes
    client: bytearray = field(default_factory=bytearray)  # VM -> client stream
    vm_data: dict[str, bytearray] = field(default_factory=dict)
    goaheads: dict[bytes, bytes] = field(default_factory=dict)  # sequence -> live cookie
    trace: list[str] = field(default_factory=list)  # hub decisions, in order
    states: list[tuple[str, SessionState]] = field(default_factory=list)  # each change

    def add(self, conn: str, event: SessionEvent) -> None:
        last = self.events[-1] if self.events else None
        if isinstance(event, VmData) and last and last[0] == conn and isinstance(last[1], VmData):
            self.events[-1] = (conn, VmData(last[1].payload + event.payload))  # merge runs
        else:
            self.events.append((conn, event))


class ReplayHub:
    """Just enough of vspcd's hub (docs/protocol.md §4.5) to drive the capture."""

    def __init__(self, secret_for: Callable[[bytes], bytes]) -> None:
        self.secret_for = secret_for
        self.sessions: dict[str, ProxySession] = {}
        self.closed: set[str] = set()
        self.active: str | None = None
        self.cookie: bytes | None = None  # the one live cookie (single-use, §4.1)
        self.sequence = b""  # the live cookie's sequence
        self.source: str | None = None
        self.dest: str | None = None
        self.out = Transcript()

    def open(self, step: Step) -> None:
        session = ProxySession()
        session.initiate()
        self.sessions[step.conn] = session
        self.out.states.append((step.conn, session.state))
        self.out.vm_data[step.conn] = bytearray()
        self.out.replies[step.index] = session.data_to_send()

    def close(self, step: Step) -> None:
        self.closed.add(step.conn)
        self.out.trace.append(f"{step.conn} FIN")
        assert self.sessions[step.conn].data_to_send() == b""

    def data(self, step: Step, chunker: Chunker) -> None:
        session = self.sessions[step.conn]
        assert step.conn not in self.closed
        payload = step.payload
        events: list[SessionEvent] = []
        before = session.state
        for chunk in chunker(payload):
            events += session.receive_data(chunk)
        if session.state is not before:  # once per record, however it was chunked
            self.out.states.append((step.conn, session.state))
        for event in events:
            self.out.add(step.conn, event)
            self.react(step.conn, session, event)
        self.out.replies[step.index] = session.data_to_send()

    def react(self, conn: str, session: ProxySession, event: SessionEvent) -> None:
        match event:
            case VmData(payload):
                self.out.vm_data[conn] += payload
                assert conn == self.active, f"data from {conn}, active is {self.active}"
                self.out.client += payload
            case ProxyRequested(accepted=True):
                self.active = conn  # a fresh port (no vMotion in flight here)
            case vm.VMotionBegin(sequence):
                assert conn == self.active and self.cookie is None
                if sequence == REFUSED:
                    session.notnow(sequence)
                    self.out.trace.append(f"{conn} NOTNOW {sequence.hex()}")
                    return
                secret = self.secret_for(sequence)
                session.goahead(sequence, secret)
                self.cookie, self.sequence, self.source = sequence + secret, sequence, conn
                self.out.goaheads[sequence] = self.cookie
                self.out.trace.append(f"{conn} GOAHEAD {sequence.hex()}")
            case vm.VMotionPeer(cookie):
                assert cookie == self.cookie, "PEER does not carry the cookie we issued"
                self.dest = conn
                session.peer_ok(self.sequence)
                self.out.trace.append(f"{conn} PEER-OK")
            case vm.VMotionComplete(sequence):
                assert self.cookie is not None and self.cookie.startswith(sequence)
                assert conn == self.dest
                self.active, self.cookie, self.dest = conn, None, None
                self.out.trace.append(f"{conn} switch")
            case vm.VMotionAbort():
                assert conn == self.source and self.cookie is not None
                self.cookie = None  # the cookie is dead (TV-14)
                self.out.trace.append(f"{conn} ABORT")
            case _:
                pass


def replay(
    steps: Iterable[Step],
    capture_cookies: dict[bytes, bytes],
    secret_for: Callable[[bytes], bytes],
    chunker: Chunker = whole,
) -> Transcript:
    hub = ReplayHub(secret_for)
    for step in steps:
        if step.kind == "open":
            hub.open(step)
        elif step.kind == "close":
            hub.close(step)
        else:
            hub.data(_with_live_cookie(step, hub, capture_cookies), chunker)
    return hub.out


def _with_live_cookie(step: Step, hub: ReplayHub, capture_cookies: dict[bytes, bytes]) -> Step:
    """Replace escape(capture cookie) in a PEER segment by escape(live cookie) (§6.2.4)."""
    if h("ff fa e8 2c") not in step.payload:
        return step
    for sequence, cookie in capture_cookies.items():
        if escape(cookie) in step.payload:
            live = hub.out.goaheads[sequence]  # GOAHEAD went out before the SYN (§6.2.5)
            assert step.payload.count(escape(cookie)) == 1
            payload = step.payload.replace(escape(cookie), escape(live))
            return Step(step.index, step.conn, step.kind, payload)
    raise AssertionError(f"PEER with no capture cookie in record {step.index}")


# --- helpers for the assertions -------------------------------------------------------


def frames(out: bytes) -> Iterator[bytes]:
    """Split VM-bound bytes (commands only here) into whole telnet commands."""
    pos = 0
    while pos < len(out):
        assert out[pos] == 0xFF, out[pos:].hex(" ")
        if out[pos + 1] == 0xFA:
            end = pos + 2
            while out[end : end + 2] != h("ff f0"):
                end += 2 if out[end : end + 2] == h("ff ff") else 1
            yield out[pos : end + 2]
            pos = end + 2
        else:
            yield out[pos : pos + 3]
            pos += 3


class Replies:
    """Look up P's reply to one V>P record by connection and record text."""

    def __init__(self, steps: list[Step], transcript: Transcript) -> None:
        self.steps, self.t = steps, transcript

    def to(self, conn: str, text: str, nth: int = 0) -> bytes:
        found = [
            s
            for s in self.steps
            if s.conn == conn and s.kind == "data" and s.payload.startswith(h(text))
        ]
        return self.t.replies[found[nth].index]

    def opening(self, conn: str) -> bytes:
        (step,) = [s for s in self.steps if s.conn == conn and s.kind == "open"]
        return self.t.replies[step.index]

    def all(self, conn: str) -> bytes:
        return b"".join(
            self.t.replies[s.index] for s in self.steps if s.conn == conn and s.kind != "close"
        )


def assert_goahead(reply: bytes, sequence: bytes, cookie: bytes) -> None:
    """GOAHEAD by structure (§6.2): `ff fa e8 29` + seq + secret (>= 4 bytes) + `ff f0`."""
    assert reply.startswith(h("ff fa e8 29") + escape(sequence)) and reply.endswith(h("ff f0"))
    (event,) = TelnetCodec().receive_data(reply)
    assert isinstance(event, Subnegotiation)
    goahead = vm.decode(event.payload)
    assert isinstance(goahead, vm.VMotionGoahead)
    assert goahead.cookie.startswith(sequence) and len(goahead.cookie) - len(sequence) >= 4
    assert goahead.cookie == cookie
    assert reply == h("ff fa e8 29") + escape(cookie) + h("ff f0")


# --- TV-01 ... TV-18 ------------------------------------------------------------------


def _secret_source(kind: str) -> Callable[[bytes], bytes]:
    if kind == "hook":
        return lambda sequence: HOOK_SECRET
    issued: dict[bytes, bytes] = {}  # one fresh secret per sequence, stable when re-asked
    return lambda sequence: issued.setdefault(sequence, secrets.token_bytes(8))


@pytest.mark.parametrize("secret_kind", ["random", "hook"])
def test_capture_replay_tv01_to_tv18(
    steps: list[Step], capture_cookies: dict[bytes, bytes], secret_kind: str
) -> None:
    t = replay(steps, capture_cookies, _secret_source(secret_kind))
    r = Replies(steps, t)
    seq1, seq2, seq4, seq5 = (
        h("44 da 87 f1"),
        h("98 d9 8d b4"),
        h("61 ed 26 a2"),
        h("76 19 ff e9"),
    )

    for conn in "ABCD":
        every = list(frames(r.all(conn)))
        # TV-01/02/06 and no loops: exactly these negotiation frames, each once, in order.
        assert [f for f in every if f[1] != 0xFA] == [
            *frames(OFFERS),
            h("ff fe 25"),
            h("ff fc 01"),
            h("ff fe 2c"),
        ]
        assert h("ff fd 25") not in every
        # TV-03/04: one KS-1 per connection, so exactly one KS-2; TV-04: no RCVD-2.
        assert every.count(KS2) == 1
        assert not any(f.startswith(h("ff fa e8 03")) for f in every)
        # TV-05: GETs exact and once on every connection, source or destination.
        assert every.count(GET_UUID) == 1 and every.count(GET_NAME) == 1
        # TV-05/09: identification on every connection, replies to it silent.
        assert (conn, VmIdentified(KEY)) in t.events and (conn, VmNamed("vm-00000")) in t.events
        assert r.to(conn, "ff fa e8 50") == b"" and r.to(conn, "ff fa e8 52") == b""
        # TV-09: WILL/WONT-PROXY only on the source, which alone sent DO-PROXY.
        proxy_answers = [f for f in every if f[:4] in (h("ff fa e8 47"), h("ff fa e8 49"))]
        assert proxy_answers == ([h("ff fa e8 47 ff f0")] if conn == "A" else [])

    # TV-01
    assert r.opening("A") == OFFERS
    assert r.to("A", "ff fb 25") == h("ff fe 25")
    # TV-02
    assert r.to("A", "ff fd 00") == b""
    assert r.to("A", "ff fd 03 ff fd 01 ff fb 00") == h("ff fc 01")
    assert r.to("A", "ff fb 03") == b""
    # TV-03
    assert r.to("A", "ff fb e8") == KS2
    for code in h("03 28 29 2b 2c 2d 2e 30"):
        assert code in KS2[4:-2]
    # TV-04 + TV-05: the KS-1 + DO-PROXY segment
    assert r.to("A", "ff fa e8 00") == GET_UUID + GET_NAME + h("ff fa e8 47 ff f0")
    assert ("A", ProxyRequested("S", "vSPC.py", None, accepted=True)) in t.events
    # TV-06
    assert r.to("A", "ff fb 2c") == h("ff fe 2c")
    # TV-08
    assert_goahead(r.to("A", "ff fa e8 28"), seq1, t.goaheads[seq1])
    # TV-09: B's opening, KS-2 and the PEER segment
    assert r.opening("B") == OFFERS
    assert r.to("B", "ff fb 25") == h("ff fe 25")
    assert r.to("B", "ff fb e8") == KS2
    assert sorted(frames(r.to("B", "ff fa e8 00"))) == sorted(
        [GET_UUID, GET_NAME, h("ff fe 2c"), h("ff fa e8 2d 44 da 87 f1 ff f0")]
    )
    # TV-10: A's FIN, then B's COMPLETE: switch, no reply bytes
    assert r.to("B", "ff fa e8 2e") == b""
    assert t.trace.index("A FIN") < t.trace.index("B switch")
    # TV-12: B -> C, as TV-08 ... TV-10
    assert_goahead(r.to("B", "ff fa e8 28"), seq2, t.goaheads[seq2])
    assert h("ff fa e8 2d 98 d9 8d b4 ff f0") in frames(r.to("C", "ff fa e8 00"))
    assert r.to("C", "ff fa e8 2e") == b""
    assert t.trace.index("B FIN") < t.trace.index("C switch")
    # TV-13: NOTNOW exact
    assert r.to("C", "ff fa e8 28 cd 52 67 55") == h("ff fa e8 2b cd 52 67 55 ff f0")
    # TV-14: GOAHEAD, then ABORT: no reply, the cookie dies, C stays active
    assert_goahead(r.to("C", "ff fa e8 28 61 ed 26 a2"), seq4, t.goaheads[seq4])
    assert r.to("C", "ff fa e8 30") == b""
    assert ("C", vm.VMotionAbort()) in t.events
    # TV-15: the sequence's ff doubled, then the escaped secret
    reply = r.to("C", "ff fa e8 28 76 19")
    assert reply.startswith(h("ff fa e8 29 76 19 ff ff e9"))
    assert_goahead(reply, seq5, t.goaheads[seq5])
    if secret_kind == "hook":
        assert reply == h("ff fa e8 29 76 19 ff ff e9 ff ff 00 ff ff 10 ff f0")
    # TV-16: PEER-OK exact, the sequence's ff doubled
    assert h("ff fa e8 2d 76 19 ff ff e9 ff f0") in frames(r.to("D", "ff fa e8 00"))
    # TV-17: D's COMPLETE before C's FIN; the switch happens, the FIN is harmless
    assert r.to("D", "ff fa e8 2e") == b""
    assert t.trace.index("D switch") < t.trace.index("C FIN")
    assert t.trace == [
        "A GOAHEAD 44da87f1",
        "B PEER-OK",
        "A FIN",
        "B switch",
        "B GOAHEAD 98d98db4",
        "C PEER-OK",
        "B FIN",
        "C switch",
        "C NOTNOW cd526755",
        "C GOAHEAD 61ed26a2",
        "C ABORT",
        "C GOAHEAD 7619ffe9",
        "D PEER-OK",
        "D switch",
        "C FIN",
        "D FIN",
    ]
    # The opening machine (common/session.py `_OPENING`): every connection agrees to
    # option 232 before its KS-1, so the KS-2 sent on WILL 232 answers that KS-1.
    # Each opening completes before the next connection's SYN.  The re-chunked replays
    # below compare whole transcripts, so they check this path at every chunk boundary.
    assert t.states == [
        (conn, state)
        for conn in "ABCD"
        for state in (SessionState.OPENED, SessionState.KS2_SENT, SessionState.READY)
    ]
    # TV-07, TV-11, TV-13, TV-14, TV-18: the whole client stream, nothing lost or repeated
    assert bytes(t.client) == EXPECTED
    assert bytes(t.vm_data["A"]) == EXPECTED[:25]  # 20 ... 38
    assert bytes(t.vm_data["B"]) == EXPECTED[25:46]  # 39 ... 4d
    assert bytes(t.vm_data["C"]) == EXPECTED[46:]
    assert bytes(t.vm_data["D"]) == b""


# --- the same replay, re-chunked -----------------------------------------------------


def _fixed(sequence: bytes) -> bytes:
    return FIXED_SECRET


@pytest.fixture(scope="module")
def baseline(steps: list[Step], capture_cookies: dict[bytes, bytes]) -> Transcript:
    t = replay(steps, capture_cookies, _fixed)
    assert bytes(t.client) == EXPECTED
    return t


def test_replay_one_byte_at_a_time_is_identical(
    steps: list[Step], capture_cookies: dict[bytes, bytes], baseline: Transcript
) -> None:
    assert replay(steps, capture_cookies, _fixed, one_byte_at_a_time) == baseline


def test_replay_split_at_every_position_is_identical(
    steps: list[Step], capture_cookies: dict[bytes, bytes], baseline: Transcript
) -> None:
    # Cutting every record at `cut` covers every 2-way split of every record.
    longest = max(len(s.payload) for s in steps)
    for cut in range(1, longest):
        assert replay(steps, capture_cookies, _fixed, split_at(cut)) == baseline, cut


@pytest.mark.parametrize("seed", range(8))
def test_replay_at_random_boundaries_is_identical(
    steps: list[Step], capture_cookies: dict[bytes, bytes], baseline: Transcript, seed: int
) -> None:
    assert replay(steps, capture_cookies, _fixed, random_cuts(seed)) == baseline
