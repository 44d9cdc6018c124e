"""History: what vspcd remembers.

- `consolelog`: each console's output in `--log-dir` files, rotated and compressed;
- `naming`, `lineformat`, `gzipper`, `settings`: their file names, timestamped lines,
  background compression and settings;
- `eventlog`: `--log-events` (one JSON line per hub event in `FILE.events`);
- `persist`, `store`: consoles and their ports across restarts (sqlite3).

Observers of the hub's events and output; the hub never calls them.
"""
