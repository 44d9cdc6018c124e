"""What a cluster node needs of the daemon's configuration (docs/cluster.md).

vspcd/service/server.py builds it from the service's Config, so that the cluster
part never imports the service (docs/architecture.md, "The parts").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClusterSettings"]


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A node's share of the configuration (the flags in parentheses)."""

    registry: str  # the Redis URL (--cluster)
    node_id: str  # (--node-id)
    node_address: str  # HOST:PORT of this node's inter-node links (--node-address)
    secret_file: Path  # the shared secret authenticating links (--cluster-secret-file)
    lease: float  # TTL of the node's lease in the registry (--cluster-lease)
    vmotion_abandon: float  # the F8 grace period (docs/protocol.md §4.3, --vmotion-abandon)
    vm_expire_time: float  # how long a console outlives its VM and clients (--vm-expire-time)
    port_range_start: int  # the first telnet port of the range (--port-range-start)
    vm_iface: str  # the address telnet ports listen on (-i/--vm-iface)
