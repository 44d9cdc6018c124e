"""The real ESXi capture replayed over loopback through the real daemon.

docs/protocol.md §6.2 recipe (one global order, SYN/FIN markers, cookie substitution, waits
on causes) and §6.4 handover assertions: an operator attached before TV-07 receives
exactly TV-18's stream across two vMotions, one NOTNOW and one ABORT; a marker typed
after every GOAHEAD reaches the destination once on success, the source once on
ABORT, never the source after GOAHEAD, in order.  Run with random secrets and with
the `ff 00 ff 10` hook (§6.4 item 4).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.vspcd.harness import TIMEOUT, Operator, console_port, running
from vspc.common import vmware as vm
from vspc.common.telnet import Data, Opt, Subnegotiation, TelnetCodec, escape

CAPTURE = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SEGMENTS = CAPTURE / "esxi-vmotion-capture.segments.json"
EXPECTED = bytes(0x20 + i % 95 for i in range(114))
KEY = "0123456789abcdeffedcba9800000000"
REFUSED = bytes.fromhex("cd526755")  # TV-13: the capture's NOTNOW


class ReplayConn:
    """One capture connection: raw writes of VM records; decoded proxy output."""

    def __init__(self) -> None:
        self.codec = TelnetCodec()  # only decodes; replies are the capture's own
        self.input = bytearray()  # operator bytes the VM got
        self.commands: list[vm.VmwareEvent] = []
        self.input_at_goahead: int | None = None
        self.changed = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, port: int) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            for event in self.codec.receive_data(data):
                match event:
                    case Data(payload):
                        self.input += payload
                    case Subnegotiation(Opt.VMWARE_EXT, payload):
                        command = vm.decode(payload)
                        if command is not None:
                            if isinstance(command, vm.VMotionGoahead):
                                self.input_at_goahead = len(self.input)
                            self.commands.append(command)
            self.changed.set()
        self.changed.set()
        if self.writer is not None:
            self.writer.close()

    async def reply(self, kind: type[vm.VmwareEvent], prefix: bytes) -> vm.VmwareEvent:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for command in self.commands:
                    body = vm.payload_of(command)[1:]
                    if isinstance(command, kind) and body.startswith(prefix):
                        return command
                self.changed.clear()
                await self.changed.wait()


def _records() -> list[dict[str, str]]:
    if not SEGMENTS.exists():
        pytest.skip(f"capture not found at {SEGMENTS} (../shared/data beside the repo)")
    records: list[dict[str, str]] = json.loads(SEGMENTS.read_text())
    return records


def _capture_cookies(records: list[dict[str, str]]) -> dict[bytes, bytes]:
    """sequence -> the capture proxy's cookie, from its GOAHEADs."""
    cookies = {}
    for rec in records:
        if rec["dir"] == "P>V" and rec["hex"].startswith("ff fa e8 29"):
            wire = bytes.fromhex(rec["hex"])
            payload = wire[3:-2].replace(b"\xff\xff", b"\xff")
            cookies[payload[1:5]] = payload[1:]
    return cookies


@pytest.mark.parametrize("secret", [None, bytes.fromhex("ff00ff10")], ids=["random", "ff00ff10"])
def test_capture_replay_through_the_daemon(tmp_path: Path, secret: bytes | None) -> None:
    records = _records()
    capture_cookies = _capture_cookies(records)

    async def main() -> None:
        # The operator must see exactly the VM's bytes: no status notices.
        async with running(tmp_path, "--no-notices", secret=secret) as (daemon, events):
            assert daemon.hub is not None and daemon.proxy_port is not None
            conns: dict[str, ReplayConn] = {}
            live: dict[bytes, bytes] = {}  # sequence -> vspcd's cookie
            operator: Operator | None = None
            markers: dict[bytes, bytes] = {}  # sequence -> marker typed after GOAHEAD
            source_of: dict[bytes, str] = {}
            for rec in records:
                if rec["dir"] != "V>P":
                    continue
                name, hexed = rec["conn"], rec["hex"]
                if hexed == "SYN":
                    conns[name] = ReplayConn()
                    await conns[name].open(daemon.proxy_port)
                    continue
                conn = conns[name]
                assert conn.writer is not None
                if hexed == "FIN":
                    conn.writer.write_eof()
                    continue
                wire = bytes.fromhex(hexed)
                if operator is None and wire == b"\x20":
                    # TV-07: attach before the first console byte.
                    await events.wait("vm_connected")
                    operator = await Operator.connect(console_port(daemon, KEY))
                    await events.wait("client_attached")
                if wire.startswith(b"\xff\xfa\xe8\x28"):  # BEGIN
                    sequence = wire[4:-2].replace(b"\xff\xff", b"\xff")
                    if sequence == REFUSED:
                        daemon.hub.refuse_next_vmotion(daemon.hub.find(KEY))
                    conn.writer.write(wire)
                    answer = await conn.reply(vm.VMotionGoahead | vm.VMotionNotNow, sequence)  # type: ignore[arg-type]
                    if isinstance(answer, vm.VMotionGoahead):
                        assert sequence != REFUSED, "refuse hook ignored"
                        live[sequence] = answer.cookie
                        if secret is not None:
                            assert answer.cookie == sequence + secret
                        markers[sequence] = b"<%d>\r" % len(markers)
                        source_of[sequence] = name
                        assert operator is not None
                        operator.type(markers[sequence])
                    else:
                        assert answer == vm.VMotionNotNow(sequence)  # exact, TV-13
                    continue
                for sequence, cookie in capture_cookies.items():
                    old = escape(cookie)
                    if old in wire and sequence in live:  # PEER on a destination
                        wire = wire.replace(old, escape(live[sequence]))
                if wire.startswith(b"\xff\xfa\xe8\x2e"):  # COMPLETE: wait for PEER-OK
                    sequence = wire[4:-2].replace(b"\xff\xff", b"\xff")
                    ok = await conn.reply(vm.VMotionPeerOk, sequence)
                    assert ok == vm.VMotionPeerOk(sequence)  # exact: sequence only
                conn.writer.write(wire)
            assert operator is not None
            # TV-18: the whole stream, nothing lost, repeated or reordered.
            await operator.output.length(len(EXPECTED))
            async with asyncio.timeout(TIMEOUT):
                while len(conns["D"].input) < len(markers[bytes.fromhex("7619ffe9")]):
                    conns["D"].changed.clear()
                    await conns["D"].changed.wait()
            assert bytes(operator.output.data) == EXPECTED
            # §6.4: markers went where the vMotion's outcome says, once each.
            seq = {s.hex(): s for s in markers}
            a, b, c, d = (conns[x] for x in "ABCD")
            assert bytes(b.input) == markers[seq["44da87f1"]]  # A -> B succeeded
            assert bytes(d.input) == markers[seq["7619ffe9"]]  # C -> D succeeded
            # B -> C succeeded, then C's ABORT returned its marker to C itself.
            assert bytes(c.input) == markers[seq["98d98db4"]] + markers[seq["61ed26a2"]]
            assert bytes(a.input) == b""
            # A source got nothing after its last GOAHEAD (each one's vMotion succeeded).
            for name in set(source_of.values()):
                assert len(conns[name].input) == conns[name].input_at_goahead, name
            console = daemon.hub.find(KEY)
            assert console.counters.vmotions == 3
            assert console.counters.vmotion_aborts == 1
            assert console.counters.vmotion_refusals == 1
            await operator.close()
            for conn in conns.values():
                if conn.writer is not None:
                    conn.writer.close()

    asyncio.run(main())
