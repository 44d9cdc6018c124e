"""Cluster mode (docs/cluster.md): several vspcd nodes, one console namespace.

Only imported when `--cluster` is given: the registry needs the optional `redis`
client (`pip install 'vspc[cluster]'`); a plain vspcd stays stdlib-only.
"""
