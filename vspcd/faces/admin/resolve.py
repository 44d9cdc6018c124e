"""An operator's name for a console, resolved among the consoles it may watch.

Boundary: the same stages and error messages as `Hub.find` (vspcd/hub/hub.py: display
name or key, then UUID in any accepted form, then VM name, then telnet port), over a
given list of consoles.  With per-console access rules (docs/admin-protocol.md
"Access control") a console the operator may not watch does not exist for it: it
neither matches nor makes a name ambiguous, and no message names it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vspc.common.vmware import canonical_uuid
from vspc.vspcd.hub.console import Console
from vspc.vspcd.hub.info import only

__all__ = ["find_among"]


def find_among(consoles: Sequence[Console], spec: str) -> Console:
    """The one console of `consoles` that `spec` names.

    Raises:
        HubError: `vm_not_found` or `ambiguous_vm`.
    """
    found = [c for c in consoles if spec in (c.display_name, str(c.key))]
    if not found:
        try:
            uuid = canonical_uuid(spec)
        except ValueError:
            uuid = None
        if uuid is not None:
            found = [c for c in consoles if c.key.uuid == uuid]
            found = [c for c in found if not c.key.label] or found
    if not found:
        found = [c for c in consoles if c.name == spec]
    if not found and spec.isdigit():
        found = [c for c in consoles if c.port == int(spec)]
    return only(found, spec)
