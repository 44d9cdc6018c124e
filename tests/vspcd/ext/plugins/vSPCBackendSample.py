"""vSPCBackendSample: the sample vspcd plugin backend of docs/plugins.md.

Load it with any of:  --backend Sample  (vSPC.py's spelling: this module on
PYTHONPATH),  --backend vSPCBackendSample:vSPCBackendSample,  or an entry point in
group vspc.backends.  --backend-args '-o FILE [-s SEED]': one JSON line per
notification is appended to FILE; SEED lines "UUID NAME PORT" pre-seed consoles
and their telnet ports at start, as vSPC.py's backends remembered them.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


class vSPCBackendSample:  # vSPC.py's naming: the module and its class alike
    def __init__(self, args: str) -> None:
        parser = argparse.ArgumentParser(prog="--backend Sample", add_help=False)
        parser.add_argument("-o", "--out", type=Path, required=True)
        parser.add_argument("-s", "--seed", type=Path)
        options = parser.parse_args(shlex.split(args))  # SystemExit: a usage error
        self.path: Path = options.out
        self.seed: Path | None = options.seed
        self.out: IO[str] | None = None

    def load(self) -> Iterable[tuple[str, str, int | None]]:
        if self.seed is None:
            return []
        rows = []
        for line in self.seed.read_text().splitlines():
            uuid, name, port = line.split()
            rows.append((uuid, name, int(port)))
        return rows

    def start(self, hub: Any) -> None:
        self.out = self.path.open("a", buffering=1)  # line-buffered: one write per line
        self._write("start", consoles=[[c.name, c.port] for c in hub.consoles()])

    def console_up(self, event: Any) -> None:
        self._write("console_up", key=str(event.key), name=event.name, port=event.info.port)

    def console_down(self, event: Any) -> None:
        self._write("console_down", key=str(event.key), why=type(event).__name__)

    def console_output(self, key: Any, name: str, data: bytes) -> None:
        self._write("console_output", key=str(key), data=data.decode("utf-8", "replace"))

    def client_changed(self, event: Any) -> None:
        kind = type(event).__name__
        self._write("client_changed", key=str(event.key), kind=kind, peer=event.client.peer)

    def close(self) -> None:
        self._write("close")
        if self.out is not None:
            self.out.close()

    def _write(self, what: str, **fields: Any) -> None:
        if self.out is not None:
            self.out.write(json.dumps({"what": what, **fields}) + "\n")
