"""Console selectors: which consoles a configuration rule names.

Spec: docs/security.md "Who may do what" (the `consoles` key of `[[access]]`) and
docs/operations.md "Console alerts" (the `consoles` key of `[[alert]]`): both tables
name consoles the same way, so both parse and match them here.

A selector is one of

* a glob (`fnmatch`, case-sensitive) on the console's display name or VM name;
* `uuid:` and a VM UUID in any form `canonical_uuid` accepts (exact match);
* `label:` and a glob on the console's port label (`?port=`, --multi-console).

Sans-IO and pure: the hub's own parts, the access policy (vspcd/faces/admin/policy.py)
and the alert rules (vspcd/history/alerts.py) all import it, which is why it lives in
the hub (every other part may import the hub; docs/architecture.md "Import directions").
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from vspc.common.vmware import canonical_uuid

__all__ = ["ConsoleRef", "Selector", "parse_selector"]


@dataclass(frozen=True, slots=True)
class ConsoleRef:
    """What rules match a console on: its display name and VM name (globs), its
    canonical UUID (`uuid:`) and its port label (`label:`)."""

    name: str
    vm_name: str = ""
    uuid: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class Selector:
    """One parsed selector (see the module docstring)."""

    kind: str  # "name", "uuid" or "label"
    value: str

    def matches(self, console: ConsoleRef) -> bool:
        match self.kind:
            case "uuid":
                return console.uuid == self.value
            case "label":
                return fnmatchcase(console.label, self.value)
        return fnmatchcase(console.name, self.value) or (
            bool(console.vm_name) and fnmatchcase(console.vm_name, self.value)
        )


def parse_selector(text: str) -> Selector:
    """One selector as written in a configuration file.

    Raises:
        ValueError: a `uuid:` selector whose UUID is not one (the message says why).
    """
    if text.startswith("uuid:"):
        return Selector("uuid", canonical_uuid(text[5:]))
    if text.startswith("label:"):
        return Selector("label", text[6:])
    return Selector("name", text)
