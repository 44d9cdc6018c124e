"""A fake VM across its connections, and its vMotions (docs/protocol.md §4, docs/vspc-sim.md).

`SimVm` owns one `Identity`, a guest (`guest.Shell`, a `MarkerSource`, or nothing),
the active `Link`, and a `MarkerChecker` fed with every byte typed at it on any of its
connections (input stops at GOAHEAD on the source and resumes after COMPLETE on the
destination, so their concatenation must be exactly what clients typed).

vMotion kinds, as the source host drives them (`vmotion(kind)`):

- `success` (§4.2): BEGIN -> GOAHEAD; a new connection presents the cookie in PEER ->
  PEER-OK; COMPLETE on it; the source closes.  The destination becomes active.
- `abort` (§4.3 F3): BEGIN -> GOAHEAD -> ABORT on the source, which stays active.
- `abandon` (F8, F11): BEGIN -> GOAHEAD, the source closes and no destination ever
  comes; after `abandon_wait` the VM restarts elsewhere (HA): a fresh connection
  with DO-PROXY and the same UUID.
- `notnow` (F1, "not yet identified"): a second connection that carries no console
  (a destination whose cookie the proxy never issued, which gets no PEER-OK, F5)
  sends BEGIN; the proxy must answer NOTNOW and change nothing.  A protocol-only
  way to see a NOTNOW from any proxy without its operator's help.

Reconnecting (docs/vspc-sim.md): when the active connection drops outside a vMotion
(vspcd restarted, a network cut) or a reconnect is refused, the VM connects again
as a fresh VM, like an ESXi host whose vSPC went away, after a capped, jittered
exponential back-off (`reconnect_min` doubling up to `reconnect_max`, each delay
drawn from its upper half, so a fleet does not come back in lock-step).  Counted as
`disconnects`, `reconnects` and `reconnect_failures`; `reconnect_max=0` turns it off.

Any other vMotion the proxy answers NOTNOW is counted as `refused`.  While a
vMotion runs the guest is stunned: its output waits and goes to whichever connection
is active afterwards, as ESXi's does.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
import time
from dataclasses import dataclass
from enum import Enum

from vspc.common.esxi import Goahead, NotNow, PeerOk
from vspc.vspctui.sim.guest import MarkerSource, Shell
from vspc.vspctui.sim.identity import Identity
from vspc.vspctui.sim.link import Link, open_link
from vspc.vspctui.sim.markers import MarkerChecker
from vspc.vspctui.sim.report import Stats

__all__ = ["Kind", "SimVm", "Target"]

_sequences = itertools.count(1)


class Kind(Enum):
    """A vMotion the source host drives (the module docstring has each one's steps)."""

    SUCCESS = "success"  # §4.2
    NOTNOW = "notnow"  # §4.3 F1
    ABORT = "abort"  # §4.3 F3
    ABANDON = "abandon"  # §4.3 F8, F11


@dataclass(frozen=True, slots=True)
class Target:
    """Where the proxy listens, and how to reach it."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    timeout: float = 10.0  # per protocol step; ESXi's own limit is 5 s (§4.6)


class SimVm:
    """One fake VM serial port.

    Args:
        identity: name, UUID, label.
        target: the proxy.
        stats: where counters and latencies go.
        typed_at: marker -> the time it was typed (shared with the clients), popped on
            arrival to time client -> VM latency.
        shell: run a login shell on the console (interactive mode).
        stream: name of this VM's output marker stream, if it streams.
    """

    def __init__(
        self,
        identity: Identity,
        target: Target,
        stats: Stats,
        typed_at: dict[tuple[str, int], float],
        *,
        shell: bool = False,
        stream: str | None = None,
        abandon_wait: float = 0.2,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
    ) -> None:
        self.identity = identity
        self.target = target
        self.stats = stats
        self.typed_at = typed_at
        self.shell = Shell(identity.name) if shell else None
        self.source = MarkerSource(stream) if stream else None
        self.abandon_wait = abandon_wait
        self.link: Link | None = None
        self.inputs = MarkerChecker()
        self.migrating = False
        self._stunned = bytearray()  # guest output while a vMotion runs, or while down
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._closing = False
        self._redial: asyncio.Task[None] | None = None

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect as a fresh VM and wait for WILL-PROXY (or WONT-PROXY: a failure).

        Raises:
            ConnectionError, OSError, TimeoutError: the proxy cannot be reached or
                does not answer DO-PROXY within the step timeout.
        """
        began = time.perf_counter()
        link = await open_link(
            self.target.host, self.target.port, self.identity, self._on_input, tls=self.target.tls
        )
        link.on_notice = self._on_notice
        async with asyncio.timeout(self.target.timeout):
            accepted = await link.proxy_answer
        if not accepted:
            link.close()
            raise ConnectionError(f"{self.identity.name}: proxy answered WONT-PROXY")
        self._adopt(link)
        self.stats.count("connected")
        self.stats.sample("identify", time.perf_counter() - began)
        if self.shell is not None:
            self.write(self.shell.banner())

    def close(self) -> None:
        self._closing = True
        if self._redial is not None:
            self._redial.cancel()
        if self.link is not None:
            self.link.close()

    @property
    def reconnecting(self) -> bool:
        return self._redial is not None and not self._redial.done()

    def _adopt(self, link: Link) -> None:
        """Make `link` the active connection and watch it for an unexpected end."""
        self.link = link
        link.lost.add_done_callback(lambda _lost: self._check_link())

    def _check_link(self) -> None:
        """The active connection is gone outside a vMotion: dial again, backing off."""
        link = self.link  # None: an abandon's restart failed
        if (link is not None and not link.closed) or self.migrating or self._closing:
            return  # a vMotion's source, or ours to close, or one under way
        if self.reconnect_max <= 0 or self.reconnecting:
            return
        self.stats.count("disconnects")
        self._redial = asyncio.create_task(self._redial_loop())

    async def _redial_loop(self) -> None:
        began = time.perf_counter()
        delay = self.reconnect_min
        while not self._closing:
            # Jittered: each delay is drawn from the upper half of the current step.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                await self.connect()
            except (OSError, TimeoutError, ConnectionError):
                self.stats.count("reconnect_failures")
                delay = min(self.reconnect_max, delay * 2)
                continue
            self.stats.count("reconnects")
            self.stats.sample("reconnect", time.perf_counter() - began)
            self._unstun()  # output held while down goes out now
            return

    def _on_notice(self, message: str) -> None:
        self.stats.fail(f"{self.identity.name}: {message}")

    def _on_input(self, data: bytes) -> None:
        self.stats.count("bytes_in", len(data))
        now = time.perf_counter()
        for key in self.inputs.feed(data):
            typed = self.typed_at.pop(key, None)
            if typed is not None:
                self.stats.sample("typed", now - typed)
        if self.shell is not None:
            self.write(self.shell.feed(data))

    # -- guest output ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Guest output: to the active connection, or held while stunned."""
        if not data:
            return
        if self.migrating or self.link is None or self.link.closed:
            self._stunned += data
            return
        self.stats.count("bytes_out", len(data))
        self.link.send(data)

    def stream_line(self) -> None:
        """One numbered line of output (stream mode)."""
        if self.source is not None:
            self.write(self.source.line())

    async def drained(self) -> None:
        if self.link is not None:
            await self.link.drained()

    def _unstun(self) -> None:
        self.migrating = False
        held, self._stunned = bytes(self._stunned), bytearray()
        self.write(held)

    # -- vMotion -----------------------------------------------------------------------

    async def vmotion(self, kind: Kind) -> str:
        """Run one vMotion of `kind`; return its outcome, counted in `stats`.

        Outcomes: "ok" (what the kind should do happened), "refused" (the proxy
        answered NOTNOW to a vMotion that was meant to go ahead) or "failed" (timeout, lost
        connection, a wrong answer: the message goes to `stats.failures`).
        """
        if self.link is None or self.migrating:
            raise RuntimeError(f"{self.identity.name}: not connected, or already migrating")
        self.stats.count("vmotions_started")
        self.stats.count(f"started_{kind.value}")
        began = time.perf_counter()
        self.migrating = True
        try:
            async with asyncio.timeout(self.target.timeout * 3):
                outcome = await self._vmotion(kind)
        except (OSError, TimeoutError, ConnectionError) as exc:
            outcome = "failed"
            self.stats.fail(f"{self.identity.name}: {kind.value}: {type(exc).__name__} {exc}")
        finally:
            self._unstun()
            self._check_link()  # the proxy went away mid-vMotion: dial again
        self.stats.count("vmotions_done")
        self.stats.count(f"vmotions_{outcome}")
        if outcome == "ok":
            self.stats.sample("vmotion", time.perf_counter() - began)
        return outcome

    async def _begin(self, link: Link) -> tuple[bytes, Goahead | NotNow]:
        sequence = next(_sequences).to_bytes(4, "big")
        answer = link.expect()
        began = time.perf_counter()
        link.session.begin(sequence)
        link.flush()
        got = await answer
        if not isinstance(got, Goahead | NotNow):
            raise ConnectionError(f"unexpected answer to BEGIN: {got}")
        self.stats.sample("begin_answer", time.perf_counter() - began)
        return sequence, got

    async def _vmotion(self, kind: Kind) -> str:
        source = self.link
        assert source is not None
        if kind is Kind.NOTNOW:
            return await self._notnow_probe()
        sequence, answer = await self._begin(source)
        if isinstance(answer, NotNow):
            return "refused"
        cookie = source.session.cookie
        assert cookie is not None
        match kind:
            case Kind.SUCCESS:
                await self._complete(source, sequence, cookie)
            case Kind.ABORT:
                source.session.abort()
                source.flush()
            case Kind.ABANDON:
                source.close()
                await source.lost
                await asyncio.sleep(self.abandon_wait)  # ESXi's host is gone a while
                began = time.perf_counter()
                self.link = None
                await self._reconnect()
                self.stats.sample("reconnect", time.perf_counter() - began)
        return "ok"

    async def _complete(self, source: Link, sequence: bytes, cookie: bytes) -> None:
        dest = await open_link(
            self.target.host,
            self.target.port,
            self.identity,
            self._on_input,
            cookie=cookie,
            tls=self.target.tls,
        )
        dest.on_notice = self._on_notice
        peer_ok = dest.expect()
        try:
            got = await peer_ok
        except BaseException:
            dest.close()
            raise
        if not isinstance(got, PeerOk):
            dest.close()
            raise ConnectionError(f"unexpected answer to PEER: {got}")
        dest.session.complete(sequence)
        dest.flush()
        source.close()  # ESXi's source FIN; either order with COMPLETE occurs (§4.2)
        self._adopt(dest)

    async def _reconnect(self) -> None:
        link = await open_link(
            self.target.host, self.target.port, self.identity, self._on_input, tls=self.target.tls
        )
        link.on_notice = self._on_notice
        if not await link.proxy_answer:
            link.close()
            raise ConnectionError("proxy answered WONT-PROXY on reconnect")
        self._adopt(link)

    async def _notnow_probe(self) -> str:
        bogus = b"\x00\x00\x00\x00sim-no-such-cookie"
        probe = await open_link(
            self.target.host,
            self.target.port,
            self.identity,
            lambda _data: None,
            cookie=bogus,
            tls=self.target.tls,
        )
        try:
            # BEGIN must follow our announcement (KS-1 + PEER) on the wire: it goes
            # out once the proxy has enabled option 232.
            await probe.announced
            _, answer = await self._begin(probe)
        finally:
            probe.close()
        if isinstance(answer, NotNow):
            return "ok"
        raise ConnectionError("proxy answered GOAHEAD to a BEGIN from a connection with no console")
