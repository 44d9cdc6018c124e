"""`vspc attach`: this terminal <-> one console's attach channel, with an escape menu.

Boundary: takes an `AttachSession` (vspctui/client.py) and the process's stdin/stdout
file descriptors.  While attached the terminal is in raw mode (termios), so every key
goes to the VM exactly as typed: Enter is b"\\r" (vSPC.py's client turned it into
b"\\n" and broke nano), ^C and ^Z are bytes for the VM, not signals.  The escape key
(default ^], configurable, or none) restores the terminal and opens a prompt_toolkit
prompt with completion: continue, quit, send-escape, who, info, help.  The terminal is
restored in `finally` on every way out: quit, the daemon closing, errors, SIGTERM.

When stdin is not a terminal (a pipe or a file), bytes are copied both ways with no
raw mode and no escape menu; EOF on stdin half-closes the connection, which the daemon
takes as detach (docs/admin-protocol.md, "The attach channel").

Spec: docs/admin-protocol.md; usage: docs/vspc.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.input.ansi_escape_sequences import ANSI_SEQUENCES
from prompt_toolkit.input.typeahead import get_typeahead
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys

from vspc.common.admin import AdminError, ConsoleInfo, LockMode
from vspc.common.display import safe
from vspc.vspctui.client import AdminClient, AttachSession, ClientError, open_attach
from vspc.vspctui.cmdtable import Context, ExitCode, by_prefix
from vspc.vspctui.formatting import CLIENT_HEADERS, client_rows, format_table, who

__all__ = [
    "DEFAULT_ESCAPE",
    "MENU",
    "Attacher",
    "Outcome",
    "escape_name",
    "parse_escape",
    "raw_terminal",
    "write_all",
    "run_attach",
]

DEFAULT_ESCAPE = 0x1D  # ^], as telnet
_CHUNK = 64 * 1024
_INPUT_HIGH_WATER = 256 * 1024  # unsent input above which stdin stops being read
# Keys that start a longer key sequence in prompt_toolkit's Emacs bindings (^] is
# character-search, ESC is Meta, ^X prefixes ^X^E and friends): as an escape key
# pressed again at the menu's prompt, each would take the next key typed with it.
_PREFIX_KEYS = frozenset({Keys.ControlSquareClose, Keys.Escape, Keys.ControlX})


def parse_escape(text: str) -> int | None:
    """`^]` / `^A` / `^?` / one character / `none` -> the escape byte (None: disabled).

    Raises:
        ValueError: anything else.
    """
    if text.lower() in ("none", "off", ""):
        return None
    if len(text) == 2 and text[0] == "^":
        char = text[1].upper()
        if char == "?":
            return 0x7F
        if "@" <= char <= "_":
            return ord(char) - 0x40
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise ValueError(f"escape key must look like ^] or be one ASCII character, not {text!r}")


def escape_name(byte: int | None) -> str:
    """Caret notation of an escape byte, for messages."""
    if byte is None:
        return "none"
    if byte == 0x7F:
        return "^?"
    return f"^{chr(byte + 0x40)}" if byte < 0x20 else chr(byte)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on `fd` for the duration; the previous attributes come back on any exit.

    Raw mode (cfmakeraw) clears ICRNL, so Enter arrives as b"\\r"; ISIG, so ^C/^Z/^\\
    are bytes; and OPOST, so the VM's own b"\\r\\n" reaches the screen unchanged.
    """
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        # TCSADRAIN: let our last output reach the screen before cooking the terminal.
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`, waiting for room if the fd is non-blocking."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # Someone made our stdout non-blocking (it is shared); wait for room.
            select.select([], [fd], [])
            continue
        view = view[written:]


class Outcome(Enum):
    """How an attach session ended."""

    QUIT = "quit"  # the operator chose quit in the escape menu
    EOF = "eof"  # stdin ended (not a terminal)
    CLOSED = "closed"  # vspcd closed the connection (clear, kick, shutdown)


class _Input(Enum):
    ESCAPE = "escape"
    EOF = "eof"


class _Action(Enum):
    CONTINUE = "continue"
    QUIT = "quit"


MenuHandler = Callable[["Attacher"], Awaitable["_Action | None"]]


@dataclass(frozen=True, slots=True)
class MenuEntry:
    help: str
    run: MenuHandler


async def _continue(attacher: Attacher) -> _Action:
    return _Action.CONTINUE


async def _quit(attacher: Attacher) -> _Action:
    return _Action.QUIT


async def _send_escape(attacher: Attacher) -> _Action:
    if attacher.escape is not None:
        attacher.send(bytes([attacher.escape]))
    return _Action.CONTINUE


async def _who(attacher: Attacher) -> None:
    console = await attacher.refresh()
    if console is None:
        return
    if not console.attached:
        attacher.say("no clients attached")
        return
    attacher.say(format_table(CLIENT_HEADERS, client_rows(console.attached)))


async def _info(attacher: Attacher) -> None:
    grant = attacher.session.grant
    attacher.say(f"console: {safe(grant.name)} ({safe(grant.key)})")
    attacher.say(f"you: client {grant.client}, mode {grant.mode.value}")
    console = await attacher.refresh()
    write = "no (read-only)" if attacher.readonly else "yes"
    attacher.say(f"can type: {write}")
    if console is not None:
        holder = console.lock_holder
        if console.lock is None or holder is None:
            attacher.say("lock: none")
        else:
            name = "you" if holder.id == grant.client else who(holder)
            attacher.say(f"lock: {console.lock.value} held by {name} (client {holder.id})")
        attacher.say(f"vm: {'connected' if console.connected else 'disconnected'}, "
                     f"vmotion {console.vmotion.value}")  # fmt: skip
    attacher.say(f"escape key: {escape_name(attacher.escape)}")


async def _break(attacher: Attacher) -> _Action:
    """A serial break to the VM, over a second connection (control access only;
    vspcd tells every attached client who sent it)."""
    await attacher.send_break()
    return _Action.CONTINUE


async def _help(attacher: Attacher) -> None:
    width = max(len(name) for name in MENU)
    for name, entry in MENU.items():
        attacher.say(f"  {name:<{width}}  {entry.help}")
    attacher.say("an empty line continues; any unique prefix works")


MENU: dict[str, MenuEntry] = {
    "continue": MenuEntry("back to the console", _continue),
    "quit": MenuEntry("detach and exit", _quit),
    "send-escape": MenuEntry("send the escape character itself to the VM", _send_escape),
    "break": MenuEntry("send a serial break to the VM (control access)", _break),
    "who": MenuEntry("clients attached to this console", _who),
    "info": MenuEntry("this session: mode, read-only, lock holder", _info),
    "help": MenuEntry("this list", _help),
}


def menu_lookup(word: str) -> MenuEntry | None:
    """Exact name, `?`, or a unique prefix (`q`, `i`, `s`)."""
    if word == "?":
        return MENU["help"]
    found = by_prefix(word, MENU)
    return found[0] if len(found) == 1 else None


class Attacher:
    """Copies bytes between the terminal and an attach channel; runs the escape menu.

    Args:
        session: the granted attach connection.
        ctx: for the daemon's address (who/info use a second connection) and fds.
        escape: escape byte, or None to pass every byte through.
        readonly: `--readonly`: refuse typing locally (vspcd would discard it anyway).
        locked_out: vspcd granted read-only for now (another client's lock, or
            read-only access); typing is still sent, as vspcd takes it again once a
            lock is released.
        prompt_factory: builds the escape prompt (tests may inject pipe input).
    """

    def __init__(
        self,
        session: AttachSession,
        ctx: Context,
        *,
        escape: int | None,
        readonly: bool,
        locked_out: bool = False,
        prompt_factory: Callable[[], PromptSession[str]] | None = None,
    ) -> None:
        self.session = session
        self.escape = escape
        self._refuse = readonly
        self.readonly = readonly or locked_out  # as last known; `who`/`info` refresh it
        self._ctx = ctx
        self._in_fd, self._out_fd = ctx.stdin_fd, ctx.stdout_fd
        self._tty = os.isatty(self._in_fd)
        self._prompt_factory = prompt_factory or self._default_prompt
        self._prompt: PromptSession[str] | None = None
        self._gate = asyncio.Event()  # cleared while the menu owns the screen
        self._gate.set()
        self._input: asyncio.Future[_Input] | None = None
        self._reading = False
        self._warned = False
        grant = session.grant
        state = ", read-only" if self.readonly else ""
        hint = f"escape key is {escape_name(escape)}" if self._tty and escape else "no escape key"
        self._banner = f"vspc: attached to {safe(grant.name)} ({grant.mode.value}{state}); {hint}\n"

    @property
    def interactive(self) -> bool:
        """stdin is a terminal: raw mode and the escape menu apply."""
        return self._tty

    # -- output: vspcd -> terminal -----------------------------------------------------

    async def _pump_output(self) -> None:
        reader = self.session.reader
        while data := await reader.read(_CHUNK):
            # While the menu is open, stop reading: the daemon's per-client high-water
            # policy applies, as for a slow telnet client, and nothing is lost here.
            await self._gate.wait()
            write_all(self._out_fd, data)

    def say(self, text: str) -> None:
        """A line of ours on the terminal (raw mode needs the explicit CR)."""
        write_all(self._out_fd, text.replace("\n", "\r\n").encode() + b"\r\n")

    # -- input: terminal -> vspcd ------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Forward typed bytes, or refuse them when attached with --readonly."""
        if not data:
            return
        if self._refuse:
            if not self._warned:
                key = escape_name(self.escape)
                self.say(f"\n[vspc: read-only: typing is not sent; {key} for the menu]")
                self._warned = True
            else:
                write_all(self._out_fd, b"\a")
            return
        if self.readonly and not self._warned:
            # Only vspcd knows whether this is still true: a write lock that made this
            # session read-only may be gone, and vspcd then takes input again.  Refusing
            # here (as vspc once did) kept such a session mute until the menu's who/info.
            self.say("\n[vspc: vspcd may discard typing: this session was read-only when it "
                     "attached]")  # fmt: skip
            self._warned = True
        writer = self.session.writer
        writer.write(data)
        if writer.transport.get_write_buffer_size() > _INPUT_HIGH_WATER and self._reading:
            # A paste faster than the daemon takes it: stop reading stdin until drained.
            self._stop_reading()
            asyncio.get_running_loop().create_task(self._resume_after_drain())

    async def _resume_after_drain(self) -> None:
        with contextlib.suppress(OSError):
            await self.session.writer.drain()
        if self._input is not None and not self._input.done():
            self._start_reading()

    def _on_stdin(self) -> None:
        try:
            data = os.read(self._in_fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal went away
            data = b""
        if self._input is None or self._input.done():
            return
        if not data:
            self._input.set_result(_Input.EOF)
            return
        if self.escape is not None and self._tty:
            cut = data.find(bytes([self.escape]))
            if cut >= 0:
                # Bytes typed after the escape key in the same read are dropped, as
                # telnet does: the menu owns the keyboard from here.
                self.send(data[:cut])
                self._input.set_result(_Input.ESCAPE)
                return
        self.send(data)

    def _start_reading(self) -> None:
        asyncio.get_running_loop().add_reader(self._in_fd, self._on_stdin)
        self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._in_fd)
            self._reading = False

    async def _copy_file(self) -> _Input:
        # epoll refuses regular files and /dev/null; they never block, so just read.
        while data := os.read(self._in_fd, _CHUNK):
            self.send(data)
            await self.session.writer.drain()
        return _Input.EOF

    async def _next_input(self, pump: asyncio.Task[None]) -> _Input | None:
        """Copy stdin until the escape key or EOF; None if vspcd closed first."""
        self._input = asyncio.get_running_loop().create_future()
        waiter: asyncio.Future[Any] = self._input
        copier: asyncio.Task[_Input] | None = None
        try:
            self._start_reading()
        except PermissionError:
            copier = asyncio.create_task(self._copy_file())
            waiter = copier
        try:
            done, _ = await asyncio.wait({waiter, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop_reading()
            if copier is not None and not copier.done():
                copier.cancel()
        if waiter in done:
            result: _Input = waiter.result()
            return result
        return None

    # -- the session -------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Copy bytes both ways until quit, stdin EOF or the daemon closing."""
        pump = asyncio.create_task(self._pump_output(), name="vspc-attach-output")
        try:
            while True:
                if self._tty:
                    with raw_terminal(self._in_fd):
                        self._show_banner()
                        got = await self._next_input(pump)
                else:
                    self._show_banner()
                    got = await self._next_input(pump)
                if got is None:
                    await pump  # re-raise a read error, if that is why it ended
                    return Outcome.CLOSED
                if got is _Input.EOF:
                    # Half-close = detach; keep printing until the daemon closes its side.
                    if self.session.writer.can_write_eof():
                        self.session.writer.write_eof()
                    await pump
                    return Outcome.EOF
                if await self._menu() is _Action.QUIT:
                    return Outcome.QUIT
                self._forward_typeahead()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
            await self.session.close()

    def _forward_typeahead(self) -> None:
        # Keys typed right after "continue" can arrive in the same read as its Enter;
        # prompt_toolkit keeps them for its next prompt.  They were meant for the VM.
        if self._prompt is None:
            return
        keys = get_typeahead(self._prompt.input)
        self.send("".join(key.data for key in keys).encode("utf-8", "surrogateescape"))

    def _show_banner(self) -> None:
        # Printed once the terminal is raw, so whoever sees it knows keys now go
        # through unchanged (the pty tests synchronise on it).
        if self._banner:
            err = self._ctx.err
            err.write(self._banner.replace("\n", "\r\n") if self._tty else self._banner)
            err.flush()
            self._banner = ""

    def _default_prompt(self) -> PromptSession[str]:
        return PromptSession(completer=WordCompleter(list(MENU)), complete_while_typing=True)

    def _menu_keys(self) -> KeyBindings:
        """The escape key pressed again at the prompt does nothing.

        Unbound, a second ^] would start prompt_toolkit's character search and the
        first letter of the command typed next would be taken as what to search for
        (`info` ran as `nfo`); bound eagerly to nothing, it is simply ignored.
        """
        keys = KeyBindings()
        key = ANSI_SEQUENCES.get(chr(self.escape)) if self.escape is not None else None
        if key in _PREFIX_KEYS:

            @keys.add(key, eager=True)
            def _ignore(event: KeyPressEvent) -> None:
                pass

        return keys

    async def _menu(self) -> _Action:
        self._gate.clear()
        try:
            write_all(self._out_fd, b"\r\n")
            if self._prompt is None:
                self._prompt = self._prompt_factory()
            state = " (read-only)" if self.readonly else ""
            message = f"vspc {safe(self.session.grant.name)}{state}> "
            keys = self._menu_keys()
            while True:
                try:
                    line = await self._prompt.prompt_async(message, key_bindings=keys)
                except (EOFError, KeyboardInterrupt):
                    return _Action.CONTINUE
                words = line.split()
                if not words:
                    return _Action.CONTINUE
                entry = menu_lookup(words[0])
                if entry is None:
                    self.say(f"unknown command: {words[0]} (try 'help')")
                    continue
                action = await entry.run(self)
                if action is not None:
                    return action
        finally:
            self._gate.set()

    async def send_break(self) -> None:
        """Ask vspcd, over a second connection, to send this console a serial break."""
        try:
            async with await AdminClient.connect(self._ctx.address) as client:
                await client.request("break", vm=self.session.grant.key)
        except (AdminError, ClientError) as exc:
            self.say(f"vspc: break: {safe(exc)}")

    async def refresh(self) -> ConsoleInfo | None:
        """`show` this console over a second connection; update `readonly` from it."""
        try:
            async with await AdminClient.connect(self._ctx.address) as client:
                console = await client.show(self.session.grant.key)
        except (AdminError, ClientError) as exc:
            self.say(f"vspc: {safe(exc)}")
            return None
        me = next((c for c in console.attached if c.id == self.session.grant.client), None)
        if me is not None:
            self.readonly = me.readonly
        return console


async def run_attach(
    ctx: Context,
    vm: str,
    *,
    lock: LockMode | None = None,
    readonly: bool = False,
    replay: int = 0,
    quiet: bool = False,
    escape: int | None = DEFAULT_ESCAPE,
    prompt_factory: Callable[[], PromptSession[str]] | None = None,
) -> int:
    """The `attach` command: returns an ExitCode.

    Raises:
        AdminError, ClientError: the attach was refused or the daemon is unreachable
            (before the terminal is touched).
    """
    session = await open_attach(
        ctx.address, vm, lock=lock, readonly=readonly, replay=replay, quiet=quiet
    )
    grant = session.grant
    attacher = Attacher(
        session,
        ctx,
        escape=escape,
        readonly=readonly,
        locked_out=grant.readonly,
        prompt_factory=prompt_factory,
    )

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated: list[int] = []

    def on_signal(signum: int) -> None:
        terminated.append(signum)
        if task is not None:
            task.cancel()

    handled = []
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
    try:
        outcome = await attacher.run()
    except asyncio.CancelledError:
        if not terminated:
            raise
        ctx.err.write(f"\nvspc: terminated by signal {terminated[0]}\n")
        return 128 + terminated[0]
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    if outcome is Outcome.CLOSED:
        ctx.err.write(f"\nvspc: {safe(grant.name)}: connection closed by vspcd\n")
        return ExitCode.DETACHED
    if outcome is Outcome.QUIT:
        ctx.err.write(f"vspc: detached from {safe(grant.name)}\n")
    return ExitCode.OK
