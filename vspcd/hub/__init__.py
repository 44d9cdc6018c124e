"""The hub: every console's state and policy, with time, timers, secrets and ports injected.

- `hub`: the `Hub` (consoles, clients, locks, cookies, the vMotion entry points);
- `console`: the per-console records and the small protocols links implement;
- `events`: the typed, frozen hub events every observer matches on;
- `vmotion`: the vMotion state machine as one (phase, trigger, role) -> action table;
- `ratelog`: the one rate-limited logger (a flood becomes one line per period).

Pure: no asyncio, sockets or files (docs/architecture.md, "The parts").
"""
