"""Port binding in a crowded range (docs/reliability.md).

With `-r` inside the kernel's ephemeral port range, outgoing connections on the host
hold ports the daemon wants for consoles.  This opens OUTGOING connections to a
listener in a helper process (so this process holds only the client ends, whose
local ports come from /proc/sys/net/ipv4/ip_local_port_range), then times
`PortBinder.bind` for CONSOLES consoles starting at the range's low end:

- `remembered`: the daemon's binder (foreign-held ports tried once per retry period);
- `retry_every_bind`: the same binder with retry=0, i.e. the old behaviour of trying
  every foreign-held port again on each bind (run for fewer consoles: it is slow).

Prints ONE JSON line (binds/s for each).  Not a test.  `--quick` runs toy sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vspc.vspcd.net.listeners import PortBinder

HOST = "127.0.0.1"


def _acceptor(port_pipe: Connection, count: int) -> None:
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen(4096)
    port_pipe.send(server.getsockname()[1])
    held = [server.accept()[0] for _ in range(count)]
    port_pipe.recv()  # wait until told to stop
    for conn in held:
        conn.close()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def _bind_many(start: int, consoles: int, retry: float) -> dict[str, Any]:
    binder = PortBinder(HOST, start, asyncio.get_running_loop(), retry=retry)

    def factory() -> asyncio.Protocol:
        return asyncio.Protocol()

    began = time.perf_counter()
    bound = 0
    try:
        for _ in range(consoles):
            if binder.bind(factory) is None:
                break
            bound += 1
        elapsed = time.perf_counter() - began
    finally:
        binder.close_all()
    return {
        "consoles": bound,
        "seconds": round(elapsed, 3),
        "binds_per_s": round(bound / elapsed, 1) if elapsed else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outgoing", type=int, default=9000)
    parser.add_argument("--consoles", type=int, default=9000)
    parser.add_argument("--old-consoles", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.outgoing, args.consoles, args.old_consoles = 300, 300, 50
    _raise_fd_limit(args.outgoing + args.consoles + 200)
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    parent, child = multiprocessing.Pipe()
    helper = multiprocessing.Process(target=_acceptor, args=(child, args.outgoing))
    helper.start()
    port = parent.recv()
    clients = []
    for _ in range(args.outgoing):
        client = socket.socket()
        client.connect((HOST, port))
        clients.append(client)
    local_ports = sorted(c.getsockname()[1] for c in clients)
    try:
        new = asyncio.run(_bind_many(low, args.consoles, retry=30.0))
        old = asyncio.run(_bind_many(low, args.old_consoles, retry=0.0))
    finally:
        parent.send("stop")
        for client in clients:
            client.close()
        helper.join(10)
    result = {
        "scenario": "port_bind_crowded",
        "ephemeral_range": [low, high],
        "outgoing_connections": args.outgoing,
        "outgoing_ports_span": [local_ports[0], local_ports[-1]],
        "range_start": low,
        "remembered": new,
        "retry_every_bind": old,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
