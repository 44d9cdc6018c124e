"""Service: configuration and wiring, signals, systemd, privileges.

- `main`: the `vspcd` entry point (flags -> `Config` -> logging -> `serve`);
- `config`: the flag table, the TOML config file and vSPC.py's spellings;
- `server`: builds the hub, listeners, faces, history and extensions (`portalloc`:
  the telnet port allocators); `run`: `serve()`, which runs them until a signal;
- `reload`: what SIGHUP changes live; `notify`: systemd's `sd_notify`;
- `privileges`, `daemon`, `eventloop`, `resources`, `heap`: dropping root,
  daemonising, choosing the event loop, fd limits, memory after a flood.
"""
