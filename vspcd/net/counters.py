"""Process-wide counters the accept path and the output channel bump.

Boundary: plain objects with integer attributes and nothing else, importable by the
links layer without importing the metrics registry.  Each site that counts does one
``counters.LISTENERS.x += 1`` (an attribute increment: no lock, no allocation beyond
the int itself, no call), so the counters cost nothing measurable on the accept and
output paths (docs/benchmarks.md, "Metrics").  `vspcd/faces/metrics.py` reads them at
scrape time.

They are per process, as Prometheus client libraries' default registry is: one
vspcd runs per process.  Tests that start several daemons in one process compare
differences, never absolute values.
"""

from __future__ import annotations

__all__ = ["LISTENERS", "OUTPUT", "ListenerCounters", "OutputCounters"]


class ListenerCounters:
    """What every `vspcd.net.accept.Listener` counted (ESXi, telnet and admin ports)."""

    __slots__ = (
        "backoffs",
        "evicted_idle",
        "parked",
        "refused_allow",
        "refused_unidentified",
        "setup_failed",
        "tls_completed",
        "tls_failed",
        "tls_slot_timeouts",
        "tls_started",
    )

    def __init__(self) -> None:
        self.backoffs = 0  # accepts paused after EMFILE/ENFILE/ENOBUFS/ENOMEM (or worse)
        self.evicted_idle = 0  # unidentified and silent: their slot went to a newcomer
        self.parked = 0  # accepts paused, every slot busy: the kernel queue holds the rest
        self.refused_allow = 0  # closed at accept: not in the allow list
        self.refused_unidentified = 0  # closed at accept: unidentified-connection caps
        self.setup_failed = 0  # plain or TLS setup failed before the protocol started
        self.tls_started = 0  # handshakes begun (a handshake slot was granted)
        self.tls_completed = 0
        self.tls_failed = 0  # failed or timed out during the handshake
        self.tls_slot_timeouts = 0  # waited for a handshake slot in vain; dropped


class OutputCounters:
    """Console output lost to slow readers (`vspcd.flow.ClientOutput`), all clients."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


LISTENERS = ListenerCounters()
OUTPUT = OutputCounters()
