"""Many fake VMs and typing clients driven together, and the final tally (docs/vspc-sim.md).

Used by the `vspc-sim` CLI and, one per worker process, by bench/storm_bench.py.
Everything runs on the caller's event loop; timers are `loop.call_at` tickers, not
sleeping tasks per VM, so 10,000 idle VMs cost nothing between ticks.

The tally (`report()`): every VM's input checker is finished against what each
client typed (a client's markers must reach exactly one VM, once each, in order);
every client's output checker against what the VM whose markers it saw wrote.
`settle()` first stops typing and streaming and waits (bounded) until what was sent
has arrived, so bytes in flight are not counted as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vspc.vspctui.sim.client import TypingClient, open_client
from vspc.vspctui.sim.identity import Identity
from vspc.vspctui.sim.markers import span_bytes
from vspc.vspctui.sim.report import Stats, summary
from vspc.vspctui.sim.vm import Kind, SimVm, Target

__all__ = ["Fleet", "Ticker"]

TICK = 0.01  # seconds between stream/typing ticks


class Ticker:
    """Calls `fn(n)` every `period` seconds on the loop's clock until `stop()`."""

    def __init__(self, period: float, fn: Callable[[int], None]) -> None:
        self.period, self.fn = period, fn
        self.loop = asyncio.get_running_loop()
        self.began = self.loop.time()
        self.handle: asyncio.Handle | None = self.loop.call_soon(self._tick, 0)

    def _tick(self, n: int) -> None:
        self.fn(n)
        # Scheduled from the start time, so a slow tick does not push later ones back.
        self.handle = self.loop.call_at(self.began + (n + 1) * self.period, self._tick, n + 1)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Fleet:
    """VMs (one per identity) and the typing clients attached to their ports."""

    def __init__(
        self,
        identities: Sequence[Identity],
        target: Target,
        *,
        stats: Stats | None = None,
        shell: bool = False,
        stream: bool = False,
        abandon_wait: float = 0.2,
        reconnect_max: float = 5.0,
    ) -> None:
        self.target = target
        self.stats = stats if stats is not None else Stats()
        self.typed_at: dict[tuple[str, int], float] = {}
        self.vms = [
            SimVm(
                ident,
                target,
                self.stats,
                self.typed_at,
                shell=shell,
                stream=f"v{i}" if stream else None,
                abandon_wait=abandon_wait,
                reconnect_max=reconnect_max,
            )
            for i, ident in enumerate(identities)
        ]
        self.clients: list[TypingClient] = []
        self._tickers: list[Ticker] = []
        self._replays: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[str]] = set()  # vMotions under way

    # -- set-up ------------------------------------------------------------------------

    async def connect(self, concurrency: int = 64) -> None:
        """Connect every VM, `concurrency` at a time; failures are counted, not raised."""
        todo = iter(self.vms)

        async def worker() -> None:
            for vm in todo:
                try:
                    await vm.connect()
                except (OSError, TimeoutError) as exc:
                    self.stats.fail(f"{vm.identity.name}: connect: {type(exc).__name__} {exc}")

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(self.vms))))))

    async def attach(self, host: str, ports: Iterable[int], *, first: int = 0) -> None:
        """One typing client per console port, named c<first>, c<first+1>, ..."""
        for number, port in enumerate(ports, first):
            try:
                client = await open_client(host, port, f"c{number}", self.stats, self.typed_at)
            except OSError as exc:
                self.stats.fail(f"client on port {port}: {type(exc).__name__} {exc}")
                continue
            self.clients.append(client)
            self.stats.count("clients")

    @property
    def connected(self) -> list[SimVm]:
        return [vm for vm in self.vms if vm.link is not None and not vm.link.closed]

    # -- traffic -----------------------------------------------------------------------

    def start_typing(self, per_second: float) -> None:
        """Every client types one marker per 1/`per_second` s (at least every tick)."""
        self._tickers.append(Ticker(max(TICK, 1 / per_second), self._type_all))

    def _type_all(self, _n: int) -> None:
        for client in self.clients:
            client.type_marker()

    def start_streaming(self, lines_per_second: float) -> None:
        """Every streaming VM writes `lines_per_second` numbered lines a second."""
        credit = [0.0]

        def tick(_n: int) -> None:
            credit[0] += lines_per_second * TICK
            lines, credit[0] = int(credit[0]), credit[0] % 1
            for vm in self.vms:
                for _ in range(lines):
                    vm.stream_line()

        self._tickers.append(Ticker(TICK, tick))

    def start_replay(self, data: bytes, bytes_per_second: float | None) -> None:
        """Every VM writes `data` once, paced, or as fast as flow control allows."""
        for vm in self.vms:
            self._replays.append(asyncio.create_task(self._replay(vm, data, bytes_per_second)))

    async def replayed(self) -> None:
        """Return once every VM has written its whole replay."""
        await asyncio.gather(*self._replays, return_exceptions=True)

    async def _replay(self, vm: SimVm, data: bytes, rate: float | None) -> None:
        chunk = 4096 if rate is None else max(1, int(rate * TICK))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for offset in range(0, len(data), chunk):
            vm.write(data[offset : offset + chunk])
            await vm.drained()
            if rate is not None:
                await asyncio.sleep(max(0.0, began + (offset + chunk) / rate - loop.time()))
        self.stats.count("replays_done")

    # -- vMotions ----------------------------------------------------------------------

    async def vmotion(self, kind: Kind, vms: Sequence[SimVm] | None = None) -> list[str]:
        """Start a vMotion of `kind` on each connected, idle VM of `vms` (default:
        all) at once; their outcomes (a VM that is down or already moving is skipped)."""
        candidates = vms if vms is not None else self.vms
        up = set(self.connected)
        chosen = [vm for vm in candidates if vm in up and not vm.migrating]
        tasks = [asyncio.create_task(vm.vmotion(kind)) for vm in chosen]
        self._inflight.update(tasks)
        for task in tasks:
            task.add_done_callback(self._inflight.discard)
        # Shielded: a caller cancelled at the end of a run must not leave a VM half
        # moved (its source gone, no destination), which would lose held bytes.
        # `settle()` waits for these.
        return list(await asyncio.shield(asyncio.gather(*tasks)))

    async def vmotion_rounds(
        self, kinds: Sequence[Kind], rounds: int | None, pause: float = 0.0
    ) -> None:
        """Rounds of vMotions of every VM, cycling through `kinds`; forever if None."""
        for number, kind in zip(itertools.count(), itertools.cycle(kinds), strict=False):
            if rounds is not None and number >= rounds:
                return
            await self.vmotion(kind)
            if pause:
                await asyncio.sleep(pause)

    # -- the end -----------------------------------------------------------------------

    async def settle(self, wait: float = 5.0) -> None:
        """Finish the vMotions under way; stop typing and streaming; wait up to
        `wait` s for what is in flight."""
        if self._inflight:
            await asyncio.wait(self._inflight)  # each is bounded by its own timeout
        for ticker in self._tickers:
            ticker.stop()
        for task in self._replays:
            task.cancel()
        await asyncio.gather(*self._replays, return_exceptions=True)
        sent = self._output_sent()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                # No event says "a marker arrived somewhere": poll the tallies briefly.
                while self.typed_at or not self._outputs_caught_up(sent):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

    def _output_sent(self) -> dict[str, int]:
        return {vm.source.stream: vm.source.sent for vm in self.vms if vm.source is not None}

    def _outputs_caught_up(self, sent: dict[str, int]) -> bool:
        return all(
            tally.next >= sent.get(stream, 0)
            for client in self.clients
            for stream, tally in client.output
        )

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for vm in self.vms:
            vm.close()

    def tally(self) -> None:
        """Finish every checker and add lost/repeated markers and bytes to the counts."""
        typed = {client.name: client.typed for client in self.clients}
        owner: dict[str, SimVm] = {}
        for vm in self.vms:
            for stream, _ in vm.inputs:
                if stream in owner:
                    first = owner[stream].identity.name
                    self.stats.fail(f"typing of {stream} reached {first} and {vm.identity.name}")
                owner[stream] = vm
        totals = {"received": 0, "repeated": 0, "lost": 0, "repeated_bytes": 0, "lost_bytes": 0}
        for vm in self.vms:
            vm.inputs.finish({s: typed[s] for s, _ in vm.inputs if s in typed})
        checkers = [vm.inputs for vm in self.vms]
        never = [name for name, count in typed.items() if name not in owner and count]
        for name in never:
            self.stats.fail(f"nothing {name} typed reached any VM")
            totals["lost"] += typed[name]
            totals["lost_bytes"] += span_bytes(name, 0, typed[name])
        sent = self._output_sent()
        for client in self.clients:
            client.output.finish({s: sent[s] for s, _ in client.output if s in sent})
            checkers.append(client.output)
        for checker in checkers:
            for key, value in checker.totals().items():
                totals[key] += value
        self.stats.counts["typed_markers"] = sum(typed.values())
        self.stats.counts["typed_markers_never_arrived"] = sum(typed[n] for n in never)
        self.stats.counts["markers_received"] = totals["received"]
        self.stats.counts["lost_markers"] = totals["lost"]
        self.stats.counts["repeated_markers"] = totals["repeated"]
        self.stats.counts["lost_bytes"] = totals["lost_bytes"]
        self.stats.counts["repeated_bytes"] = totals["repeated_bytes"]

    def report(self, **extra: Any) -> dict[str, Any]:
        """`tally()`, then the JSON-able report."""
        self.tally()
        return summary(self.stats, vms=len(self.vms), **extra)
