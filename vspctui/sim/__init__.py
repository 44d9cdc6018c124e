"""vspc-sim: fake ESXi hosts for testing any vSPC over the protocol alone.

The VM side of each connection is `vspc.common.esxi.EsxiSession` (sans-IO); this
package adds the asyncio plumbing and what a test rig needs around it:

- `identity`: VM names, UUIDs and port labels, generated or read from a file;
- `markers`: sequence-numbered markers and the checker that finds lost or repeated bytes;
- `guest`: what runs "inside" a VM (a marker stream, a replayed file, a login shell);
- `link`: one connection to the proxy (an `asyncio.Protocol` around `EsxiSession`);
- `vm`: a VM across its connections, and its vMotions (success, NOTNOW, ABORT, abandon);
- `client`: a raw telnet client that types markers and checks what it reads;
- `report`: counters, latency percentiles, text/JSON output, the progress line;
- `fleet`: many VMs and clients driven together (also the storm benchmark's worker);
- `cli`: the `vspc-sim` console script and its command prompt.

No admin socket anywhere: it works against any vSPC (docs/vspc-sim.md).
"""
