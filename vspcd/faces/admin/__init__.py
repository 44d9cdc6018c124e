"""The admin server: JSON-lines admin connections on the Unix socket (and optional TCP).

Boundary: asyncio plumbing between operator tools and the hub.  Framing, validation,
the closed sets and the command table's fields come from `vspc.common.admin`; console
state and policy (lookup, locks, clear, kick, scrollback) from the hub.  This package
adds only what a connection knows: who the peer is and what it may do, the limits
that stop one bad peer from costing anyone else anything, the attach channel, and the
fan-out of hub events to subscribers and tail followers.

Spec: docs/admin-protocol.md (the contract: commands, attach channel, lock modes,
events, access control, error codes, limits).

Modules:

- `access`: who the peer is (SO_PEERCRED -> `Identity`) and what it may do
  (`authorize`, the `--readonly-group` check);
- `limits`: `Limits`, the request token bucket, why a connection is not read;
- `handlers`: `HANDLERS`, one function per command;
- `tails`: the consoles a connection follows (`tail` with `follow`);
- `link`: `AdminLink`, one connection, and its `Mode`s;
- `server`: `AdminServer` (listeners, connection limits, event fan-out) and its
  `AdminSettings`.
"""
