"""A small transport for plain VM connections (issue #12 item 3, memory per console).

asyncio's `_SelectorSocketTransport` costs about 1.4 KB per idle connection: the
object has no `__slots__` (a `__dict__`), an `_extra` dict with `sockname` and a
`TransportSocket` wrapper, a write deque, the loop's weak map entry, and one
`add_reader` registration (`Handle`, context copy, `SelectorKey`, bound method).
With a VM connection per console that was over a third of an idle console
(docs/benchmarks.md, "Memory per idle console").

`LeanTransport` implements the part of `asyncio.Transport` vspcd uses, with the same
semantics as the stdlib selector transport:

* reads: `data_received` per `recv`, `eof_received` on end of stream (a false
  answer closes the transport), `pause_reading`/`resume_reading`;
* writes: sent at once while the kernel takes them, the rest buffered and sent when
  the socket is writable; `pause_writing` on the protocol once the buffer passes the
  high-water mark, `resume_writing` once it drains to the low-water mark;
  `write_eof` after the buffer drains;
* `close` flushes, then `connection_lost(None)`; `abort` drops the buffer;
  a socket error or a protocol exception reports through the loop's exception
  handler (as asyncio does) and `connection_lost(exc)`; every callback runs on the
  loop, never inside the caller's `write`/`close`;
* `get_extra_info('peername' | 'sockname' | 'socket')`.

Readiness: on Linux every lean transport's socket sits in one shared epoll set
(vspcd/net/acceptpoll.py), registered once with the loop, so an idle connection holds
no loop registration at all; elsewhere each uses `loop.add_reader`.  The set is
level-triggered and read 64 ready sockets per wake-up (the kernel rotates its ready
list), so a busy VM delays the others by at most a batch, as a loop iteration of
asyncio's own readers would.  Writers use
`loop.add_writer` only while something is buffered.  It is built only where
listeners.py's synchronous hand-over runs (the stdlib selector loop, plain TCP):
TLS connections and other loops (uvloop) keep asyncio's transports.
tests/vspcd/net/test_leantransport.py runs it over socketpairs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from asyncio import trsock
from typing import Any

from vspc.vspcd.net import acceptpoll
from vspc.vspcd.net.acceptpoll import AcceptPoller

__all__ = ["LeanTransport", "readiness_poller"]

log = logging.getLogger(__name__)

MAX_READ = 256 * 1024  # bytes per recv, asyncio's `max_size`
DEFAULT_HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
_DEFAULT_LIMITS = (DEFAULT_HIGH_WATER // 4, DEFAULT_HIGH_WATER)
_LIMITS: dict[tuple[int, int], tuple[int, int]] = {_DEFAULT_LIMITS: _DEFAULT_LIMITS}

_GONE = asyncio.Protocol()  # the protocol slot after connection_lost: no-op callbacks

_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AcceptPoller] = (
    weakref.WeakKeyDictionary()
)


def readiness_poller(loop: asyncio.AbstractEventLoop) -> AcceptPoller | None:
    """The loop's shared read-readiness set for lean transports; None without epoll.

    The poller gives its epoll descriptor back when its last socket leaves
    (`AcceptPoller.remove`), so a loop that is done holds nothing.
    """
    if not acceptpoll.available():
        return None
    poller = _POLLERS.get(loop)
    if poller is None:
        poller = _POLLERS[loop] = AcceptPoller(loop, close_when_empty=True)
    return poller


class LeanTransport(asyncio.Transport):
    """A plain TCP socket as an `asyncio.Transport`, with `__slots__`.

    Args:
        loop: the running selector event loop.
        sock: a connected, non-blocking socket; the transport owns it from now on.
        protocol: gets `connection_made` on the loop's next iteration.
        peername: the peer's address as `accept()` returned it.
    """

    __slots__ = (
        "_loop",
        "_sock",
        "_protocol",
        "_peername",
        "_poller",
        "_buffer",
        "_limits",
        "_state",
    )

    # `_state` bits (one int instead of six bool slots).
    _CLOSING = 1  # close() or abort() called, or a fatal error
    _LOST = 2  # connection_lost is scheduled
    _EOF = 4  # write_eof() called
    _READING = 8  # registered for reads
    _PAUSED = 16  # the protocol was told pause_writing
    _WRITING = 32  # registered with add_writer
    _CONNECTED = 64  # connection_made has run
    _WARNED = 128  # a write after the loss was logged

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        peername: Any = None,
    ) -> None:
        # No super().__init__(): that would build the `_extra` dict this class avoids.
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._protocol = protocol
        self._peername = peername
        self._poller = readiness_poller(loop)
        self._buffer: bytearray | None = None  # only while something waits to be sent
        self._limits = _DEFAULT_LIMITS  # (low, high) write-buffer marks
        self._state = 0
        loop.call_soon(self._connection_made)

    def __repr__(self) -> str:
        return f"<LeanTransport fd={self._fd} state={self._state:#x}>"

    @property
    def _fd(self) -> int:
        # Not a slot: a descriptor above 256 is a 32-byte int object per connection.
        # Every use (un)registers while the socket is still open.
        return -1 if self._sock is None else self._sock.fileno()

    # -- BaseTransport ------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername if self._peername is not None else default
        if name == "socket":  # wrapped as asyncio does (no close() through it)
            return trsock.TransportSocket(self._sock) if self._sock is not None else default
        if name == "sockname":
            if self._sock is None:
                return default
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return bool(self._state & self._CLOSING)

    def close(self) -> None:
        if self._state & self._CLOSING:
            return
        self._state |= self._CLOSING
        self._stop_reading()
        if not self._buffer:
            self._schedule_lost(None)
        # else: _write_ready finishes the flush, then reports the loss

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- ReadTransport ------------------------------------------------------------------

    def is_reading(self) -> bool:
        return bool(self._state & self._READING)

    def pause_reading(self) -> None:
        if not self._state & self._CLOSING:
            self._stop_reading()

    def resume_reading(self) -> None:
        if self._state & (self._CLOSING | self._READING) or not self._state & self._CONNECTED:
            return
        self._start_reading()

    # -- WriteTransport -----------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        limits = (low, high)
        # Every VM link sets the same marks: one shared tuple, not one per connection.
        self._limits = _LIMITS.setdefault(limits, limits) if len(_LIMITS) < 16 else limits
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._limits

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) if self._buffer else 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._state & self._EOF:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._state & self._LOST or self._sock is None:
            if not self._state & self._WARNED:  # once, where asyncio repeats it
                self._state |= self._WARNED
                log.warning("%r: write after the connection was lost; dropped", self)
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if sent == len(data):
                return
            self._buffer = bytearray(memoryview(data)[sent:])
            self._start_writing()
        else:
            self._buffer += data
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._state & (self._CLOSING | self._EOF):
            return
        self._state |= self._EOF
        if not self._buffer and self._sock is not None:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self._force_close(None)

    # -- readiness ----------------------------------------------------------------------

    def _connection_made(self) -> None:
        # Runs even if close() came first, as in asyncio: connection_lost is queued
        # behind this callback, so the protocol always sees made, then lost.
        self._state |= self._CONNECTED
        self._protocol.connection_made(self)
        if not self._state & (self._CLOSING | self._READING):
            self._start_reading()

    def _start_reading(self) -> None:
        self._state |= self._READING
        if self._poller is not None:
            self._poller.add(self._fd, self)
        else:
            self._loop.add_reader(self._fd, self._read_ready)

    def _stop_reading(self) -> None:
        if not self._state & self._READING:
            return
        self._state &= ~self._READING
        if self._poller is not None:
            self._poller.remove(self._fd)
        else:
            self._loop.remove_reader(self._fd)

    def accept_ready(self) -> None:
        """The shared poller saw the socket readable (acceptpoll.AcceptTarget)."""
        self._read_ready()

    def _read_ready(self) -> None:
        if self._state & self._CLOSING or self._sock is None:
            return
        try:
            data = self._sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        protocol = self._protocol
        try:
            if data:
                protocol.data_received(data)  # type: ignore[attr-defined]
                return
            self._stop_reading()
            if not protocol.eof_received():  # type: ignore[attr-defined]
                self.close()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            what = "data_received()" if data else "eof_received()"
            self._fatal_error(exc, f"Fatal error: protocol.{what} call failed.")

    def _start_writing(self) -> None:
        if not self._state & self._WRITING:
            self._state |= self._WRITING
            self._loop.add_writer(self._fd, self._write_ready)

    def _stop_writing(self) -> None:
        if self._state & self._WRITING:
            self._state &= ~self._WRITING
            self._loop.remove_writer(self._fd)

    def _write_ready(self) -> None:
        if self._state & self._LOST or self._sock is None or not self._buffer:
            self._stop_writing()
            return
        try:
            sent = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._stop_writing()
            self._buffer = None
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        del self._buffer[:sent]
        if self._buffer:
            self._maybe_resume()
            return
        self._buffer = None
        self._stop_writing()
        self._maybe_resume()
        if self._state & self._CLOSING:
            self._schedule_lost(None)
        elif self._state & self._EOF:
            self._sock.shutdown(socket.SHUT_WR)

    # -- flow control -------------------------------------------------------------------

    def _maybe_pause(self) -> None:
        if self._state & self._PAUSED or self.get_write_buffer_size() <= self._limits[1]:
            return
        self._state |= self._PAUSED
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.pause_writing() failed", exc)

    def _maybe_resume(self) -> None:
        if not self._state & self._PAUSED or self.get_write_buffer_size() > self._limits[0]:
            return
        self._state &= ~self._PAUSED
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report("protocol.resume_writing() failed", exc)

    # -- the end ------------------------------------------------------------------------

    def _report(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # As asyncio: a peer resetting the connection is routine (debug log only).
        if isinstance(exc, OSError):
            log.debug("%r: %s", self, message, exc_info=True)
        else:
            self._report(message, exc)
        self._force_close(exc if isinstance(exc, Exception) else None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._state & self._LOST:
            return
        self._buffer = None
        self._stop_writing()
        self._state |= self._CLOSING
        self._stop_reading()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: Exception | None) -> None:
        if self._state & self._LOST:
            return
        self._state |= self._LOST
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            # No transport <-> protocol cycle left: both are freed by refcount
            # (tests/vspcd/test_memory.py), as asyncio's transport does.
            self._protocol = _GONE
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()
