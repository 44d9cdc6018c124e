"""Faces: what operators and scripts see of the daemon.

- `admin`: the JSON-lines admin protocol on the Unix socket (docs/admin-protocol.md);
- `render`: hub infos and events -> admin rows and event lines (one schema);
- `http`: the `--http` listener (`/metrics`, `/healthz`, `/console_log/<uuid>`);
- `metrics`, `exposition`: counters read at scrape time, the Prometheus text format.
"""
