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

- `policy`: the access rules (`access_default`, `[[access]]`) parsed and judged,
  sans-IO: `parse_access`, `AccessPolicy`, `Identity`;
- `access`: who the peer is (SO_PEERCRED + SO_PEERGROUPS -> `Identity`) and the
  rules bound to this daemon (`Gate`: its own uid, `--readonly-group`);
- `resolve`: a console name resolved among the consoles a peer may watch;
- `limits`: `Limits`, the request token bucket, why a connection is not read;
- `handlers`: `HANDLERS`, one function per command;
- `tails`: the consoles a connection follows (`tail` with `follow`);
- `link`: `AdminLink`, one connection, and its `Mode`s;
- `server`: `AdminServer` (listeners, connection limits, event fan-out) and its
  `AdminSettings`.
"""
