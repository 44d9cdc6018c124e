"""A minimal GDB remote serial protocol stub: the VM side of the `vspc proxy` gdb test.

Just enough of the protocol (GDB manual, "Remote Protocol", "Packets" and "Standard
Replies") for gdb to connect, read the registers of a stopped i386 target, read memory
and detach: packets are ``$payload#xx`` with a modulo-256 checksum, each acknowledged
with ``+``; an empty reply means "not supported", which gdb takes in its stride.  It is
sans-IO: `receive` takes the bytes the VM's serial port got and returns what it sends.
"""

from __future__ import annotations

import struct

__all__ = ["EIP", "RspStub", "packet"]

EIP = 0x0010BEEF  # what `info registers eip` must show, read through the pipe
_REGISTERS = 16  # i386 general registers, eflags and segments, 4 bytes each


def packet(payload: bytes) -> bytes:
    """`payload` framed as ``$payload#xx``."""
    return b"$%s#%02x" % (payload, sum(payload) & 0xFF)


class RspStub:
    """Answers gdb's packets for a target stopped by SIGTRAP."""

    def __init__(self) -> None:
        self._buffer = b""
        self.packets: list[bytes] = []  # every well-formed packet received, in order
        self.bad_checksums = 0
        self.detached = False

    def receive(self, data: bytes) -> bytes:
        """Bytes from gdb -> bytes for gdb (acks and replies)."""
        self._buffer += data
        out = b""
        while True:
            start = self._buffer.find(b"$")
            if start < 0:
                self._buffer = b""  # acks (+/-) and ^C between packets
                return out
            end = self._buffer.find(b"#", start)
            if end < 0 or len(self._buffer) < end + 3:
                self._buffer = self._buffer[start:]
                return out
            payload = self._buffer[start + 1 : end]
            checksum = self._buffer[end + 1 : end + 3]
            self._buffer = self._buffer[end + 3 :]
            if b"%02x" % (sum(payload) & 0xFF) != checksum.lower():
                self.bad_checksums += 1
                out += b"-"
                continue
            self.packets.append(payload)
            out += b"+" + packet(self._answer(payload))

    def _answer(self, payload: bytes) -> bytes:
        if payload.startswith(b"qSupported"):
            return b"PacketSize=4000"
        if payload == b"?":
            return b"S05"
        if payload == b"g":
            values = [0] * _REGISTERS
            values[8] = EIP
            return struct.pack(f"<{_REGISTERS}I", *values).hex().encode()
        if payload.startswith(b"m"):
            _, length = payload[1:].split(b",")
            return b"00" * int(length, 16)
        if payload.startswith(b"H") or payload == b"qSymbol::":
            return b"OK"
        if payload == b"qAttached":
            return b"1"
        if payload.startswith(b"D"):
            self.detached = True
            return b"OK"
        return b""
