"""Net: the sockets between vspcd and its peers, as thin asyncio protocols.

- `listeners`: the ESXi proxy port, and the names of the pieces below in one place:
  `accept` (the accept loop every port shares), `tls` (context, first-byte
  sniffing), `ports` (the per-console port binder), `unixsock` (the admin socket),
  `peercred` (who is on it), `sockopts` (binding, keepalive);
- `links`: `VmLink` (an ESXi connection), `TelnetClientLink` (an operator's telnet);
- `flow`: the one output channel every operator connection writes through;
- `admission`: allow lists and admission slots at accept;
- `counters`: what the accept path and the output channel count for metrics.

Public asyncio API only, so the stdlib loop and uvloop behave the same.  A link
feeds its codec (vspc.common), hands the codec's events to the hub and writes
what the codec produced; it decides nothing the hub should (docs/architecture.md).
"""
