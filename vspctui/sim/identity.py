"""Who the fake VMs are: names, UUIDs and port labels, generated or read from a file.

Usage: docs/vspc-sim.md.  A generated VM `i` of a run with prefix `sim` is `sim-0000i` with UUID
`5eed<tag:8 hex><i:20 hex>` (unique per tag, so several vspc-sim runs against one
proxy do not collide), and no label: one serial port per VM, serviceURI `vSPC.py`.
With several ports per VM they are labelled `console1`, `console2`, ...

A VM file has one VM per line, `#` starts a comment, fields split on whitespace:

    NAME [UUID|-] [LABEL]

`-` or a missing UUID means "generate one"; a LABEL makes the serviceURI
`vSPC.py?port=LABEL` (docs/protocol.md §3.3), the way one VM's second serial port names
itself.  Two lines may share a UUID when their labels differ (two ports of one VM).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from vspc.common import vmware as vm

__all__ = ["Identity", "IdentityError", "generate", "read_file"]


class IdentityError(ValueError):
    """A VM file line that cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One fake VM serial port as the proxy will see it."""

    name: str
    uuid: str  # canonical: 32 lower-case hex digits
    label: str = ""
    service_base: str = "vSPC.py"

    @property
    def service_uri(self) -> str:
        """The serviceURI sent in DO-PROXY: the base, plus `?port=LABEL` if labelled."""
        if not self.label:
            return self.service_base
        return f"{self.service_base}?{urllib.parse.urlencode({'port': self.label})}"


def _uuid(tag: int, index: int) -> str:
    return f"5eed{tag & 0xFFFFFFFF:08x}{index:020x}"


def generate(
    count: int, *, prefix: str = "sim", tag: int = 0, start: int = 0, ports: int = 1
) -> list[Identity]:
    """`count` VMs named `PREFIX-NNNNN` from index `start`, UUIDs unique per `tag`.

    With `ports` > 1 each VM has that many serial ports, labelled `console1`, ...
    (one Identity each, sharing the VM's name and UUID).
    """
    if ports < 1:
        raise ValueError(f"a VM has at least one serial port, not {ports}")
    labels = [f"console{p}" for p in range(1, ports + 1)] if ports > 1 else [""]
    return [
        Identity(f"{prefix}-{i:05d}", _uuid(tag, i), label)
        for i in range(start, start + count)
        for label in labels
    ]


def read_file(path: Path, *, tag: int = 0) -> list[Identity]:
    """Parse a VM file (see the module docstring).

    Raises:
        IdentityError: a line has too many fields, a bad UUID, or repeats a port.
        OSError: the file cannot be read.
    """
    found: list[Identity] = []
    seen: set[tuple[str, str]] = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 3:
            raise IdentityError(f"{path}:{number}: expected NAME [UUID|-] [LABEL]")
        name = fields[0]
        given = fields[1] if len(fields) > 1 else "-"
        try:
            uuid = _uuid(tag, len(found)) if given == "-" else vm.canonical_uuid(given)
        except ValueError as exc:
            raise IdentityError(f"{path}:{number}: {exc}") from None
        label = fields[2] if len(fields) > 2 else ""
        if (uuid, label) in seen:
            raise IdentityError(f"{path}:{number}: UUID {uuid} label {label!r} repeated")
        seen.add((uuid, label))
        found.append(Identity(name, uuid, label))
    return found
