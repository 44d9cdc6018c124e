"""Input recording: chosen consoles' output and typed input as asciicast v2 files.

Boundary: a hub output listener, input listener and observer (like the console logs,
vspcd/history/consolelog.py); it reads consoles, never changes them.  Which consoles
are recorded is the caller's predicate (`record_input = true` in an `[[access]]` rule,
docs/security.md "Input recording"); nothing is recorded without `--record-dir`.

File format (asciicast v2, https://docs.asciinema.org/manual/asciicast/v2/): a header
line `{"version": 2, "width": 80, "height": 24, "timestamp": ..., "title": ...}`, then
one JSON array per event, `[seconds since the header's timestamp, code, data]`:

* `"o"`: bytes the VM printed; `"i"`: bytes an operator typed (attach or telnet);
* `"m"` (a marker): who types from here on, written before an `"i"` event whenever
  the typist changes, e.g. `input: alice (attach client 3)`.  Players
  (`asciinema play`, `asciinema cat`) show only `"o"` and skip the others.

Console bytes are not always UTF-8: each stream is decoded incrementally with
U+FFFD for what is not, so a character split across two chunks stays whole.  A serial
console has no size, hence 80x24.

One file per console run: `DIR/NAME-UUID-YYYYmmddTHHMMSSZ.cast`, opened at the
console's first recorded event, closed when its VM disconnects or the console
expires, and at `reopen()` (SIGHUP, the rotation point: the next event opens a new
file with a new header).  A file is never appended to after it was closed, so every
file's times are relative to its own header.

Writing is never on the data path: events are buffered per file and written with
`os.write` at most once per `flush_interval` (or when a buffer passes
`buffer_limit`), as console logs are; a failed open or write is logged once per file
and its bytes dropped, so a full disk costs recordings, never memory or the daemon.
Files are created with `mode` (default 0600): typed input holds passwords.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vspc.vspcd.history.naming import log_file_name
from vspc.vspcd.hub.console import Cancellable, Client, Console
from vspc.vspcd.hub.events import ConsoleExpired, HubEvent, VmDisconnected, VmRenamed

log = logging.getLogger(__name__)

__all__ = ["RecordSettings", "Recordings", "typist"]

WIDTH, HEIGHT = 80, 24


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Where and how recordings are written."""

    directory: Path
    mode: int = 0o600
    flush_interval: float = 1.0  # 0: write every event at once
    buffer_limit: int = 64 * 1024


def typist(client: Client) -> str:
    """Who typed, for the marker: user (or peer) and the client's kind and id."""
    who = client.user or client.channel.peer
    return f"input: {who} ({client.kind.value} client {client.ident})"


class _Cast:
    """One console's open recording."""

    __slots__ = ("console", "path", "fd", "start", "buffer", "out", "inp", "last", "failed")

    def __init__(self, console: Console, start: float) -> None:
        self.console = console
        self.path: Path | None = None
        self.fd: int | None = None
        self.start = start
        self.buffer = bytearray()
        self.out = codecs.getincrementaldecoder("utf-8")("replace")
        self.inp = codecs.getincrementaldecoder("utf-8")("replace")
        self.last = ""  # the last typist marker written
        self.failed = False


class Recordings:
    """Asciicast recordings of the consoles `wants` picks (module docstring).

    Args:
        settings: directory, file mode, flush timing.
        wants: whether a console is recorded; asked when a console is first seen, when
            it is renamed and after `reconsider()`.
        call_later: `loop.call_later`, for the periodic flush.
        wall_clock: Unix time (headers, event times); tests pass a fake.
    """

    def __init__(
        self,
        settings: RecordSettings,
        *,
        wants: Callable[[Console], bool],
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._wants = wants
        self._call_later = call_later
        self._clock = wall_clock
        self._decided: dict[str, bool] = {}  # by str(console.key)
        self._casts: dict[str, _Cast] = {}
        self._dirty: set[str] = set()
        self._timer: Cancellable | None = None

    @property
    def settings(self) -> RecordSettings:
        return self._settings

    def check_directory(self) -> None:
        """Create the directory (0700) if missing and check it is writable.

        Raises:
            OSError: it cannot be created or written (the message names it).
        """
        directory = self._settings.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"record directory {directory}: {exc.strerror or exc}") from None
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(f"record directory {directory}: not a writable directory")

    def reconsider(self) -> None:
        """Ask `wants` again for every console (the rules were reloaded)."""
        self._decided.clear()

    # -- hub hooks ------------------------------------------------------------------

    def output(self, console: Console, data: bytes) -> None:
        """Hub output listener."""
        cast = self._cast(console)
        if cast is not None:
            self._event(cast, "o", cast.out.decode(data))

    def input(self, console: Console, client: Client, data: bytes) -> None:
        """Hub input listener: bytes `client` typed (accepted for the VM)."""
        cast = self._cast(console)
        if cast is None:
            return
        who = typist(client)
        if who != cast.last:
            cast.last = who
            self._event(cast, "m", who)
        self._event(cast, "i", cast.inp.decode(data))

    def observe(self, event: HubEvent) -> None:
        """Hub observer: end a console's file when its VM goes; re-decide on rename."""
        match event:
            case VmDisconnected(key=key) | ConsoleExpired(key=key):
                self._decided.pop(str(key), None)
                self._end(str(key))
            case VmRenamed(key=key):
                self._decided.pop(str(key), None)

    # -- files ----------------------------------------------------------------------

    def _cast(self, console: Console) -> _Cast | None:
        key = str(console.key)
        wanted = self._decided.get(key)
        if wanted is None:
            wanted = self._decided[key] = self._wants(console)
            if not wanted:
                self._end(key)
        if not wanted:
            return None
        cast = self._casts.get(key)
        if cast is not None and cast.console is not console:  # same key, a new console
            self._end(key)
            cast = None
        if cast is None:
            cast = self._casts[key] = _Cast(console, self._clock())
            self._open(cast)
        return cast

    def _open(self, cast: _Cast) -> None:
        console = cast.console
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cast.start))
        # Room for the UUID, the stamp and a counter within NAME_MAX (255 bytes).
        name = log_file_name("", console.display_name).encode()[:150].decode("utf-8", "ignore")
        uuid = console.key.uuid
        stem = f"{name}-{uuid}" if name and name != uuid else uuid
        path = self._settings.directory / f"{stem}-{stamp}.cast"
        count = 1
        while path.exists():  # a second run within the same second
            count += 1
            path = self._settings.directory / f"{stem}-{stamp}~{count}.cast"  # sorts after
        cast.path = path
        header = {
            "version": 2,
            "width": WIDTH,
            "height": HEIGHT,
            "timestamp": int(cast.start),
            "title": f"vspcd: {console.display_name} ({console.key})",
        }
        cast.buffer += json.dumps(header, ensure_ascii=False).encode() + b"\n"
        log.info("%s: recording output and input to %s", console.display_name, path)
        self._mark_dirty(cast)

    def _event(self, cast: _Cast, code: str, text: str) -> None:
        if not text:
            return
        at = round(max(0.0, self._clock() - cast.start), 6)
        cast.buffer += json.dumps([at, code, text], ensure_ascii=False).encode() + b"\n"
        self._mark_dirty(cast)

    def _mark_dirty(self, cast: _Cast) -> None:
        key = str(cast.console.key)
        if self._settings.flush_interval <= 0 or len(cast.buffer) >= self._settings.buffer_limit:
            self._write(cast)
            return
        self._dirty.add(key)
        if self._timer is None:
            self._timer = self._call_later(self._settings.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered event now."""
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            cast = self._casts.get(key)
            if cast is not None:
                self._write(cast)

    def _write(self, cast: _Cast) -> None:
        if not cast.buffer or cast.path is None:
            return
        data, cast.buffer = bytes(cast.buffer), bytearray()
        try:
            if cast.fd is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
                cast.fd = os.open(cast.path, flags, self._settings.mode)
                os.fchmod(cast.fd, self._settings.mode)  # not narrowed by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(cast.fd, view) :]
            cast.failed = False
        except OSError as exc:
            if not cast.failed:
                cast.failed = True
                log.error("recording %s: %s; its events are dropped", cast.path, exc)

    def _end(self, key: str) -> None:
        cast = self._casts.pop(key, None)
        if cast is None:
            return
        self._dirty.discard(key)
        self._write(cast)
        if cast.fd is not None:
            os.close(cast.fd)
            cast.fd = None

    def reopen(self) -> None:
        """End every recording (SIGHUP): the next event of each console starts a new
        file with its own header."""
        for key in list(self._casts):
            self._end(key)

    def close(self) -> None:
        """Write and close everything (shutdown); idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reopen()

    @property
    def open_count(self) -> int:
        """Recording files currently open (for the descriptor estimate)."""
        return sum(1 for cast in self._casts.values() if cast.fd is not None)
