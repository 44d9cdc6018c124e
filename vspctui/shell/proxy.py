"""`vspc proxy VM`: stdin/stdout as a binary-clean pipe to one console.

What `ssh -W host:port` is for TCP, this is for a console: bytes read from stdin go to
the VM, bytes from the VM go to stdout, through the admin attach channel
(docs/admin-protocol.md, "The attach channel"), which carries raw bytes both ways --
vspcd does the telnet escaping towards the VM (0xff doubling) and undoes it on the way
back, and nothing here interprets a byte: no raw mode, no escape key, no CR/LF
translation, no banner on stdout.  So

    gdb -ex 'target remote | vspc proxy VM'
    socat - EXEC:'vspc proxy VM'

work, and a script can pipe into it.  The session ends when stdin ends (the connection
is half-closed, which vspcd takes as detach; output still in flight is printed first),
when stdout's reader goes away, or when vspcd closes the connection (clear, kick,
shutdown; vspcd's one `[vspcd: ...]` line then ends the output, as for every attach
client).  Messages go to stderr only.

Spec: docs/vspc.md ("`vspc proxy`: gdb, socat, scripts").
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from vspc.common.admin import LockMode
from vspc.common.display import safe
from vspc.vspctui.attach import Outcome, write_all
from vspc.vspctui.client import AttachSession, open_attach
from vspc.vspctui.cmdtable import Context, ExitCode

__all__ = ["Proxy", "run_proxy"]

_CHUNK = 64 * 1024


class Proxy:
    """Copies stdin -> attach channel and attach channel -> stdout until one side ends."""

    def __init__(self, session: AttachSession, in_fd: int, out_fd: int) -> None:
        self.session = session
        self._in_fd, self._out_fd = in_fd, out_fd
        self._plain_file = False  # stdin is a regular file: epoll refuses it, reads never block

    async def _read_stdin(self) -> bytes:
        """The next chunk of stdin, b"" at its end; waits without blocking the loop."""
        if not self._plain_file:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(self._in_fd, ready.set_result, None)
            except PermissionError:
                self._plain_file = True
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(self._in_fd)
        try:
            return os.read(self._in_fd, _CHUNK)
        except BlockingIOError:  # woken for nothing (a shared non-blocking fd): try again
            return await self._read_stdin()
        except OSError:  # EIO and the like: stdin is gone, which is its end
            return b""

    async def _input(self) -> None:
        writer = self.session.writer
        while data := await self._read_stdin():
            writer.write(data)
            await writer.drain()  # a fast producer waits for vspcd, never buffers here
        if writer.can_write_eof():
            writer.write_eof()  # half-close: detach, and let vspcd finish the output

    async def _output(self) -> bool:
        """Copy output until vspcd closes; False if stdout's reader went away first."""
        while data := await self.session.reader.read(_CHUNK):
            try:
                write_all(self._out_fd, data)
            except BrokenPipeError:
                return False
        return True

    async def run(self) -> Outcome:
        """Copy both ways; how the session ended."""
        output = asyncio.create_task(self._output(), name="vspc-proxy-output")
        feeding = asyncio.create_task(self._input(), name="vspc-proxy-input")
        try:
            done, _ = await asyncio.wait({output, feeding}, return_when=asyncio.FIRST_COMPLETED)
            if feeding in done:
                feeding.result()  # a write error to vspcd surfaces here
                await output
                return Outcome.EOF
            return Outcome.CLOSED if output.result() else Outcome.EOF
        finally:
            for task in (feeding, output):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await self.session.close()


async def run_proxy(
    ctx: Context,
    vm: str,
    *,
    lock: LockMode | None = None,
    readonly: bool = False,
    replay: int = 0,
) -> int:
    """The `proxy` command: returns an ExitCode.

    Raises:
        AdminError, ClientError: the attach was refused or vspcd is unreachable.
    """
    # quiet: no "[vspcd: ...]" status lines inside a byte stream gdb or a script parses.
    session = await open_attach(
        ctx.address, vm, lock=lock, readonly=readonly, replay=replay, quiet=True
    )
    outcome = await Proxy(session, ctx.stdin_fd, ctx.stdout_fd).run()
    if outcome is Outcome.CLOSED:
        ctx.err.write(f"vspc: {safe(session.grant.name)}: connection closed by vspcd\n")
        return ExitCode.DETACHED
    return ExitCode.OK
