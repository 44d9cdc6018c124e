"""Compress rotated console logs off the event loop (`--log-compress`, docs/operations.md).

Boundary: `GzipQueue.submit(path)` is what `ConsoleLogs` calls when it rotates a file;
the compressing happens in a child process (`python -m vspc.vspcd.history.gzipper FILE`).

Why a subprocess and not `loop.run_in_executor`: the daemon keeps threads off the data
path, and gzip of a multi-megabyte file is CPU work that in a thread would still take
the GIL from the event loop in slices.  A child process has its own interpreter (and on
a multi-core host its own core), costs the loop only a pipe and a wait, and cannot stall
it.  At most one child runs at a time; rotated files wait in a queue (a rotation storm
costs disk space for a while, never a fork bomb).  A file still uncompressed at
shutdown stays so: `FILE.N` and `FILE.N.gz` are both valid rotated files for readers.

The child writes `FILE.gz.tmp`, renames it to `FILE.gz` and only then removes `FILE`,
so a crash at any point leaves a complete file behind.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["GzipQueue", "compress_file"]


def compress_file(path: Path) -> Path:
    """gzip `path` to `path.gz` atomically and remove `path`; returns the new file.

    Raises:
        OSError: reading or writing failed (`path` is then left as it was).
    """
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    with open(path, "rb") as source:
        mode = os.fstat(source.fileno()).st_mode & 0o777
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed,
        ):
            shutil.copyfileobj(source, packed, 1 << 20)
    if not path.exists():  # pruned while we worked: do not resurrect it
        tmp.unlink()
        return target
    os.replace(tmp, target)
    path.unlink()
    return target


class GzipQueue:
    """Compresses submitted files one at a time in a child process."""

    def __init__(self) -> None:
        self._queue: collections.deque[Path] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.done = 0  # files compressed (tests and logs)

    def submit(self, path: Path) -> None:
        """Queue `path` for compression (called on the event loop; never blocks)."""
        self._queue.append(path)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._queue:
            path = self._queue.popleft()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "vspc.vspcd.history.gzipper",
                str(path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
                log.error("console log %s: gzip failed (%s); left uncompressed", path, tail[0])
            else:
                self.done += 1

    async def drain(self) -> None:
        """Wait until the queue is empty (tests; shutdown does not wait)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def close(self) -> None:
        """Stop after the file in progress (its child finishes on its own)."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None


def main(argv: list[str]) -> int:
    """`python -m vspc.vspcd.history.gzipper FILE...`: compress each FILE; 1 on any failure."""
    status = 0
    for name in argv:
        try:
            compress_file(Path(name))
        except OSError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
