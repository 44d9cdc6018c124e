"""Net: the sockets between vspcd and its peers, as thin asyncio protocols.

- `listeners`: accept loops, TLS detection, the per-console port binder;
- `links`: `VmLink` (an ESXi connection), `TelnetClientLink` (an operator's telnet);
- `flow`: the one output channel every operator connection writes through;
- `admission`: allow lists and admission slots at accept;
- `counters`: what the accept path and the output channel count for metrics.

A link feeds its codec (vspc.common), hands the codec's events to the hub and writes
what the codec produced; it decides nothing the hub should (docs/architecture.md).
"""
