"""The metrics registry: a hub observer plus gauges read at scrape time
(docs/operations.md "Metrics").

Boundary: a face (docs/architecture.md).  Nothing here runs on the data path:

- counters of things that *happen* to consoles (vMotions by outcome, VM connections,
  takeovers, dropped input) are plain ints bumped by `Metrics.observe`, an observer
  subscribed with `hub.subscribe` like admin, persistence, hooks and plugins (one
  mechanism: rule 2 of docs/architecture.md);
- what the accept path and the output channel count lives in `vspcd/net/counters.py`
  (one attribute increment at each site);
- everything else is read when someone asks (`snapshot()`, i.e. `GET /metrics` or the
  admin `stats` command): consoles by state, clients by kind and held input by walking
  the hub's consoles, bytes each way by summing the per-console `Counters` the hub
  keeps anyway (plus those of expired consoles, folded in by the observer on
  `ConsoleExpired`), descriptors from /proc/self/fd and RLIMIT_NOFILE.

So a scrape costs O(consoles + clients), and nothing costs anything between scrapes.

BEGIN -> GOAHEAD latency.  The hub answers BEGIN synchronously, inside the read that
carried it, and the VM link writes GOAHEAD to the transport as that read's processing
ends (vspcd/net/links.py flushes the codec's output after `data_received`).  The histogram
measures from the hub accepting BEGIN (`Migration.since`, taken in that read, after
the held input was flushed ahead of GOAHEAD as docs/protocol.md §4.4 duty 1 asks) to
GOAHEAD leaving the daemon's transport buffer for the kernel.  `VMotionBegun` is
observed in the same read: when the VM connection's write buffer is empty then,
GOAHEAD goes straight to the kernel as the read ends and the observation is taken at
once (it leaves out the rest of that read's processing, microseconds; no allocation,
no callback).  When older VM-bound bytes are still queued, GOAHEAD queues behind them:
the buffer is looked at every `DRAIN_POLL` seconds until it is empty, and that wait is
the observation.  That queueing is what ESXi's 5 s GOAHEAD deadline is about, so it is
measured rather than estimated.  A vMotion that ends before its GOAHEAD drained
(ABORT, the source gone) is not observed; neither is time in the kernel's socket
buffer or on the wire.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from vspc.common.admin import ClientKind, LatencyHistogram, Stats, VMotionPhase
from vspc.vspcd.faces.exposition import Family, render
from vspc.vspcd.hub.console import Cancellable, Console, ConsoleKey, Counters, Migration
from vspc.vspcd.hub.events import (
    AbortReason,
    ConsoleAlert,
    ConsoleExpired,
    ConsoleRestored,
    DropReason,
    HubEvent,
    InputDropped,
    RefusalReason,
    TakeoverRefused,
    VmConnected,
    VmDisconnected,
    VMotionAborted,
    VMotionBegun,
    VMotionCompleted,
    VMotionRefused,
    VmReplaced,
)
from vspc.vspcd.hub.hub import Hub
from vspc.vspcd.net import counters

__all__ = [
    "GOAHEAD_BUCKETS",
    "Histogram",
    "LoopMonitor",
    "Metrics",
    "Sources",
    "exposition",
    "families",
]

# Seconds.  ESXi gives up on a BEGIN after 5 s (docs/protocol.md §4.4 duty 2), so the
# buckets resolve the sub-millisecond common case and the approach to that deadline.
GOAHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DRAIN_POLL = 0.005
DRAIN_GIVE_UP = 30.0  # a GOAHEAD queued this long is not going anywhere: stop looking


class Histogram:
    """A fixed-bucket histogram: per-bucket counts, a sum and a count (no allocation
    per observation)."""

    __slots__ = ("bounds", "_counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self._counts):
            self._counts[i] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> LatencyHistogram:
        """Prometheus' form: each bucket counts every observation <= its bound."""
        running, buckets = 0, []
        for bound, n in zip(self.bounds, self._counts, strict=True):
            running += n
            buckets.append((bound, running))
        return LatencyHistogram(tuple(buckets), self.sum, self.count)


class LoopMonitor:
    """How late the event loop runs a timer: the "loop is responsive" half of /healthz.

    A heartbeat every `interval` seconds records how much later than asked it ran; a
    loop blocked by a slow disk, a huge GC or a bug shows up as lag, here and in
    `vspcd_event_loop_lag_seconds`.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self._call_later = call_later
        self.interval = interval
        self.lag = 0.0
        self.beats = 0
        self._due = 0.0
        self._timer: Cancellable | None = None

    def start(self) -> None:
        self._due = self._clock() + self.interval
        self._timer = self._call_later(self.interval, self._beat)

    def _beat(self) -> None:
        now = self._clock()
        self.lag = max(0.0, now - self._due)
        self.beats += 1
        self._due = now + self.interval
        self._timer = self._call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the pull-time numbers that are not the hub's come from (the daemon's
    parts, read at scrape time; each a cheap call)."""

    fds_in_use: Callable[[], int]
    fd_limit: Callable[[], int]
    admin_refused: Callable[[], int] = lambda: 0
    unidentified_dropped: Callable[[], int] = lambda: 0
    handshakes_in_progress: Callable[[], int] = lambda: 0
    handshakes_waiting: Callable[[], int] = lambda: 0


class Metrics:
    """The registry.  `hub.subscribe(metrics.observe)`; `snapshot()` when asked.

    Args:
        hub: read at scrape time (consoles, clients, held input, per-console counters).
        sources: the daemon's other pull-time numbers.
        clock / call_later: the hub's (loop) clock and scheduler, for the GOAHEAD
            latency and the loop monitor.
    """

    def __init__(
        self,
        hub: Hub,
        sources: Sources,
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Cancellable],
    ) -> None:
        self._hub = hub
        self._sources = sources
        self._clock = clock
        self._call_later = call_later
        self._started = clock()
        self.loop = LoopMonitor(clock, call_later)
        # Counters from hub events.
        self.vm_connections = 0
        self.vm_disconnections = 0
        self.vms_replaced = 0
        self.takeovers_refused = 0
        self.vmotions_completed = 0
        self.vmotions_abandoned = 0
        self.vmotions_aborted = dict.fromkeys(
            (r for r in AbortReason if r is not AbortReason.ABANDONED), 0
        )
        self.vmotions_notnow = dict.fromkeys(RefusalReason, 0)
        self.input_dropped = dict.fromkeys(DropReason, 0)
        self.console_alerts: dict[str, int] = {}  # by rule name
        self.goahead = Histogram(GOAHEAD_BUCKETS)
        # Per-console byte counters, so an expired console's bytes stay counted.
        self._live: dict[ConsoleKey, Counters] = {}
        self._retired_from_vm = 0
        self._retired_to_vm = 0
        # The listener counters are per process; this daemon reports what happened
        # since it started (several in-process daemons in tests stay apart).
        self._listeners_base = _copy_listeners(counters.LISTENERS)
        self._dropped_base = counters.OUTPUT.dropped
        self._handlers: dict[type, Callable[[Any], None]] = {
            VmConnected: self._vm_connected,
            VmDisconnected: self._vm_disconnected,
            VMotionBegun: self._begun,
            VMotionCompleted: self._completed,
            VMotionAborted: self._aborted,
            VMotionRefused: self._refused,
            InputDropped: self._input_dropped,
            TakeoverRefused: self._takeover_refused,
            VmReplaced: self._replaced,
            ConsoleRestored: self._restored,
            ConsoleExpired: self._expired,
            ConsoleAlert: self._alert,
        }

    # ------------------------------------------------------------ the observer

    def observe(self, event: HubEvent) -> None:
        """The hub observer: one dict lookup by type, then integer increments.

        A table rather than a `match` on classes: most events (output-free ones like
        VMotionPeered, LockChanged) are not counted, and a `match` would try every
        case on them (bench/metrics_overhead.py measured the difference).
        """
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _vm_connected(self, event: VmConnected) -> None:
        self.vm_connections += 1
        self._remember(event.key)

    def _vm_disconnected(self, event: VmDisconnected) -> None:
        self.vm_disconnections += 1

    def _completed(self, event: VMotionCompleted) -> None:
        self.vmotions_completed += 1

    def _aborted(self, event: VMotionAborted) -> None:
        if event.reason is AbortReason.ABANDONED:
            self.vmotions_abandoned += 1
        else:
            self.vmotions_aborted[event.reason] += 1

    def _refused(self, event: VMotionRefused) -> None:
        self.vmotions_notnow[event.reason] += 1

    def _input_dropped(self, event: InputDropped) -> None:
        self.input_dropped[event.reason] += event.count

    def _alert(self, event: ConsoleAlert) -> None:
        self.console_alerts[event.alert] = self.console_alerts.get(event.alert, 0) + 1

    def _takeover_refused(self, event: TakeoverRefused) -> None:
        self.takeovers_refused += 1

    def _replaced(self, event: VmReplaced) -> None:
        self.vms_replaced += 1

    def _restored(self, event: ConsoleRestored) -> None:
        self._remember(event.key)

    def _expired(self, event: ConsoleExpired) -> None:
        gone = self._live.pop(event.key, None)
        if gone is not None:
            self._retired_from_vm += gone.bytes_from_vm
            self._retired_to_vm += gone.bytes_to_vm

    def _remember(self, key: ConsoleKey) -> None:
        console = self._hub.console(key)
        if console is not None:
            self._live[key] = console.counters

    # ------------------------------------------------------------ GOAHEAD latency

    def _begun(self, event: VMotionBegun) -> None:
        console = self._hub.console(event.key)
        if console is not None and console.migration is not None:
            self._goahead_sent(console, console.migration)

    def _goahead_sent(self, console: Console, mig: Migration) -> None:
        if console.migration is not mig:
            return  # ended before GOAHEAD drained: not observed (module docstring)
        waited = self._clock() - mig.since
        if mig.source.channel.write_backlog() == 0:
            self.goahead.observe(waited)
        elif waited < DRAIN_GIVE_UP:
            self._call_later(DRAIN_POLL, partial(self._goahead_sent, console, mig))

    # ------------------------------------------------------------ scrape time

    def snapshot(self) -> Stats:
        """Every number, as the admin `stats` reply and `GET /metrics` report them."""
        consoles = dict.fromkeys(("connected", "disconnected", *_PHASES.values()), 0)
        clients = dict.fromkeys((k.value for k in ClientKind), 0)
        held = 0
        from_vm, to_vm = self._retired_from_vm, self._retired_to_vm
        for console in self._hub.consoles():
            if console.migration is not None:
                consoles[_PHASES[console.phase]] += 1
            else:
                consoles["connected" if console.connected else "disconnected"] += 1
            for client in console.clients:
                clients[client.kind.value] += 1
            held += console.held
            if console.key not in self._live:
                self._live[console.key] = console.counters  # e.g. created by a plugin
            from_vm += console.counters.bytes_from_vm
            to_vm += console.counters.bytes_to_vm
        base, now = self._listeners_base, counters.LISTENERS
        sources = self._sources
        return Stats(
            uptime=self._clock() - self._started,
            consoles=consoles,
            clients=clients,
            bytes_vm_to_clients=from_vm,
            bytes_clients_to_vm=to_vm,
            vmotions_completed=self.vmotions_completed,
            vmotions_abandoned=self.vmotions_abandoned,
            vmotions_aborted={_label(r): n for r, n in self.vmotions_aborted.items()},
            vmotions_notnow={_label(r): n for r, n in self.vmotions_notnow.items()},
            goahead_latency=self.goahead.cumulative(),
            client_bytes_dropped=counters.OUTPUT.dropped - self._dropped_base,
            input_bytes_dropped={_label(r): n for r, n in self.input_dropped.items()},
            held_input_bytes=held,
            fds_in_use=sources.fds_in_use(),
            fd_limit=sources.fd_limit(),
            admin_refused=sources.admin_refused(),
            tls_handshakes={
                "started": now.tls_started - base.tls_started,
                "completed": now.tls_completed - base.tls_completed,
                "failed": now.tls_failed - base.tls_failed,
                "slot_timeouts": now.tls_slot_timeouts - base.tls_slot_timeouts,
                "in_progress": sources.handshakes_in_progress(),
                "waiting": sources.handshakes_waiting(),
            },
            listener_backoffs=now.backoffs - base.backoffs,
            connections_refused={
                "allow_list": now.refused_allow - base.refused_allow,
                "unidentified_limit": now.refused_unidentified - base.refused_unidentified,
            },
            unidentified_dropped=sources.unidentified_dropped(),
            takeovers_refused=self.takeovers_refused,
            console_alerts=dict(self.console_alerts),
            vms_replaced=self.vms_replaced,
            vm_connections=self.vm_connections,
            vm_disconnections=self.vm_disconnections,
            loop_lag=self.loop.lag,
        )


_PHASES = {VMotionPhase.PENDING: "pending", VMotionPhase.PEERED: "peered"}


def _label(reason: AbortReason | RefusalReason | DropReason) -> str:
    """A reason as a label value: the enum's name (`source_aborted`), stable and
    free of spaces, rather than its log text."""
    return reason.name.lower()


def _copy_listeners(source: counters.ListenerCounters) -> counters.ListenerCounters:
    """A copy of the process-wide listener counters (the baseline at start)."""
    copy = counters.ListenerCounters()
    for name in counters.ListenerCounters.__slots__:
        setattr(copy, name, getattr(source, name))
    return copy


def _by(label: str, counts: Mapping[str, int]) -> dict[tuple[tuple[str, str], ...], int]:
    return {((label, key),): n for key, n in counts.items()}


def families(stats: Stats) -> list[Family]:
    """`stats` as Prometheus metric families (docs/operations.md, "Metrics")."""
    latency = stats.goahead_latency
    tls = {k: v for k, v in stats.tls_handshakes.items() if k not in ("in_progress", "waiting")}
    return [
        Family.gauge("vspcd_uptime_seconds", "Seconds since the daemon started.", stats.uptime),
        Family.gauge("vspcd_consoles", "Consoles by state.", _by("state", stats.consoles)),
        Family.gauge(
            "vspcd_clients", "Attached operator clients by kind.", _by("kind", stats.clients)
        ),
        Family.counter(
            "vspcd_console_bytes",
            "Console bytes: VM output to clients, operator input delivered to the VM.",
            {
                (("direction", "vm_to_clients"),): stats.bytes_vm_to_clients,
                (("direction", "clients_to_vm"),): stats.bytes_clients_to_vm,
            },
        ),
        Family.counter(
            "vspcd_vmotions",
            "vMotions by outcome (completed, aborted by reason, notnow by reason, abandoned).",
            {
                (("outcome", "completed"), ("reason", "")): stats.vmotions_completed,
                (("outcome", "abandoned"), ("reason", "")): stats.vmotions_abandoned,
                **{
                    (("outcome", "aborted"), ("reason", r)): n
                    for r, n in stats.vmotions_aborted.items()
                },
                **{
                    (("outcome", "notnow"), ("reason", r)): n
                    for r, n in stats.vmotions_notnow.items()
                },
            },
        ),
        Family.histogram(
            "vspcd_vmotion_goahead_seconds",
            "BEGIN accepted by the hub to GOAHEAD handed to the kernel (queueing included).",
            latency.buckets,
            latency.sum,
            latency.count,
        ),
        Family.counter(
            "vspcd_client_output_dropped_bytes",
            "Console output dropped for slow-reading clients.",
            stats.client_bytes_dropped,
        ),
        Family.counter(
            "vspcd_input_dropped_bytes",
            "Operator input that never reached the VM, by reason.",
            _by("reason", stats.input_bytes_dropped),
        ),
        Family.gauge(
            "vspcd_held_input_bytes",
            "Operator input held for the VM (vMotion, congestion, no VM).",
            stats.held_input_bytes,
        ),
        Family.gauge("vspcd_open_fds", "File descriptors in use.", stats.fds_in_use),
        Family.gauge("vspcd_max_fds", "The open-file limit (RLIMIT_NOFILE, soft).", stats.fd_limit),
        Family.counter(
            "vspcd_admin_refused",
            "Admin connections refused (connection and per-peer limits).",
            stats.admin_refused,
        ),
        Family.counter(
            "vspcd_tls_handshakes",
            "TLS handshakes on the ESXi port by result.",
            _by("result", tls),
        ),
        Family.gauge(
            "vspcd_tls_handshakes_in_progress",
            "TLS handshakes holding a handshake slot now.",
            stats.tls_handshakes.get("in_progress", 0),
        ),
        Family.gauge(
            "vspcd_tls_handshakes_waiting",
            "TLS handshakes waiting for a handshake slot now.",
            stats.tls_handshakes.get("waiting", 0),
        ),
        Family.counter(
            "vspcd_listener_backoffs",
            "Accept pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM or another accept error.",
            stats.listener_backoffs,
        ),
        Family.counter(
            "vspcd_connections_refused",
            "Connections closed at accept, by reason.",
            _by("reason", stats.connections_refused),
        ),
        Family.counter(
            "vspcd_unidentified_dropped",
            "VM connections dropped for not identifying in time or within the byte limit.",
            stats.unidentified_dropped,
        ),
        Family.counter(
            "vspcd_takeovers_refused",
            "Console takeovers refused because the live VM answered the probe.",
            stats.takeovers_refused,
        ),
        Family.counter(
            "vspcd_vm_replaced", "VM connections replaced by a newer one.", stats.vms_replaced
        ),
        Family.counter(
            "vspcd_vm_connections", "VM connections that became a console's.", stats.vm_connections
        ),
        Family.counter(
            "vspcd_vm_disconnections",
            "Consoles whose VM connection went away.",
            stats.vm_disconnections,
        ),
        Family.counter(
            "vspcd_console_alerts",
            "Console alerts raised, by rule (docs/operations.md, 'Console alerts').",
            _by("alert", stats.console_alerts),
        ),
        Family.gauge(
            "vspcd_event_loop_lag_seconds",
            "How late the event loop ran its last 1 s heartbeat.",
            stats.loop_lag,
        ),
    ]


def exposition(stats: Stats) -> str:
    """The `GET /metrics` body."""
    return render(families(stats))
