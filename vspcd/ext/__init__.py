"""Extensions: what operators plug into the daemon.

- `hooks`, `hookenv`: `--hook-command` runs a program per hub event, with `VSPC_*`
  variables (docs/operations.md);
- `plugins`: vSPC.py-style backends and `module:Class` plugins (docs/plugins.md).

Both observe the same typed hub events as the admin protocol, in the same order.
"""
