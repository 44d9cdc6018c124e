"""Sequence-numbered markers and the checker that counts what was lost or repeated.

vspc-sim reports lost or repeated bytes (docs/vspc-sim.md).  Senders write markers
`<ID:N>` (ID a short stream name, N = 0, 1, 2, ... per stream); a receiver feeds every
byte it gets to a `MarkerChecker`, which parses markers out of arbitrary chunks and
other text (telnet negotiation, prompts, notices) and tallies, per stream:

- `received`: markers seen exactly in order;
- `repeated`: a marker at or below one already seen (sent twice, or replayed);
- `lost`: markers skipped over, plus, after `finish()`, those sent but never seen.

Two start rules: a stream that must arrive whole (client input: a VM must get every
keystroke) is checked from N = 0; a stream joined part-way (VM output, which a
client only sees from when it attached) is checked from the first marker seen.

Sans-IO and clock-free: the caller passes timestamps, if it wants latencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["MARKER_RE", "MarkerChecker", "StreamTally", "marker", "span_bytes"]

# IDs are [A-Za-z0-9_.-], so markers never contain 0xff (telnet IAC) or CR/LF.
MARKER_RE = re.compile(rb"<([A-Za-z0-9_.-]{1,40}):([0-9]{1,12})>")
_LONGEST = 1 + 40 + 1 + 12 + 1  # a marker is never longer than this


def marker(stream: str, number: int) -> bytes:
    """The marker `<stream:number>` as bytes.

    Raises:
        ValueError: `stream` has characters a marker cannot carry, or `number` < 0.
    """
    data = f"<{stream}:{number}>".encode("ascii", "strict") if number >= 0 else b""
    if not MARKER_RE.fullmatch(data):
        raise ValueError(f"not a marker stream/number: {stream!r}, {number!r}")
    return data


@dataclass(slots=True)
class StreamTally:
    """What one receiver saw of one stream."""

    next: int  # the number expected next
    received: int = 0
    repeated: int = 0
    lost: int = 0
    lost_bytes: int = 0
    repeated_bytes: int = 0


def span_bytes(stream: str, first: int, stop: int) -> int:
    """Total length of the markers `stream` first..stop-1 (how many bytes they are)."""
    total, digits, low = 0, 1, 0
    while low < stop:
        high = 10**digits  # numbers in [low, high) have `digits` digits
        count = max(0, min(stop, high) - max(first, low))
        total += count * (len(stream) + 3 + digits)
        low, digits = high, digits + 1
    return total


class MarkerChecker:
    """Finds markers in a byte stream and checks each stream's numbering.

    Args:
        from_first: check each stream from its first marker seen (True), or from 0.
    """

    def __init__(self, *, from_first: bool = False) -> None:
        self.from_first = from_first
        self.streams: dict[str, StreamTally] = {}
        self._tail = b""  # a possibly incomplete marker at the end of the last chunk
        self.finished = False

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        """Scan `data` (any chunking); return the in-order markers it completed."""
        buf = self._tail + data
        fresh: list[tuple[str, int]] = []
        end = 0
        for match in MARKER_RE.finditer(buf):
            end = match.end()
            stream, number = match.group(1).decode(), int(match.group(2))
            if self._count(stream, number):
                fresh.append((stream, number))
        # Keep from the last '<' after the last marker, if it could still complete one.
        cut = buf.rfind(b"<", end)
        self._tail = buf[cut:] if cut >= 0 and len(buf) - cut < _LONGEST else b""
        return fresh

    def _count(self, stream: str, number: int) -> bool:
        tally = self.streams.get(stream)
        if tally is None:
            tally = self.streams[stream] = StreamTally(number if self.from_first else 0)
        if number < tally.next:
            tally.repeated += 1
            tally.repeated_bytes += span_bytes(stream, number, number + 1)
            return False
        tally.lost += number - tally.next
        tally.lost_bytes += span_bytes(stream, tally.next, number)
        tally.received += 1
        tally.next = number + 1
        return True

    def finish(self, sent: dict[str, int]) -> None:
        """Count as lost what was sent (`sent[stream]` markers, 0..n-1) but never seen.

        Streams in `sent` but never seen count whole when checked from 0, and not
        at all when checked from the first marker (nothing shows they were due).
        """
        self.finished = True
        for stream, count in sent.items():
            tally = self.streams.get(stream)
            if tally is None:
                if not self.from_first and count:
                    lost = span_bytes(stream, 0, count)
                    self.streams[stream] = StreamTally(count, lost=count, lost_bytes=lost)
                continue
            tally.lost += max(0, count - tally.next)
            tally.lost_bytes += span_bytes(stream, tally.next, count)

    def totals(self) -> dict[str, int]:
        """Sums over every stream: markers received, repeated, lost, and their bytes."""
        tallies = self.streams.values()
        return {
            "received": sum(t.received for t in tallies),
            "repeated": sum(t.repeated for t in tallies),
            "lost": sum(t.lost for t in tallies),
            "repeated_bytes": sum(t.repeated_bytes for t in tallies),
            "lost_bytes": sum(t.lost_bytes for t in tallies),
        }

    def __iter__(self) -> Iterator[tuple[str, StreamTally]]:
        return iter(self.streams.items())
