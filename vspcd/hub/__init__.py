"""The hub: every console's state and policy, with time, timers, secrets and ports injected.

- `hub`: the `Hub`, the one object the daemon holds (VM connection events, observers,
  console lifetime, shutdown), dispatching to:
- `state`: the registries, injected services and the steps every part shares;
- `binding`: identification, binding a VM connection to its console, takeover;
- `announce`: the connection's `vm_connected`, waiting briefly for VM-NAME;
- `migration`: the vMotion entry points (BEGIN, PEER, COMPLETE, ABORT, F8);
- `clients`: attaching, lock modes, typed input and its hold;
- `info`: console lookup by name and the admin protocol's info records;
- `console`: the per-console records and the small protocols links implement;
- `events`: the typed, frozen hub events every observer matches on;
- `vmotion`: the vMotion state machine as one (phase, trigger, role) -> action table;
- `ratelog`: the one rate-limited logger (a flood becomes one line per period).

Pure: no asyncio, sockets or files (docs/architecture.md, "The parts").
"""
