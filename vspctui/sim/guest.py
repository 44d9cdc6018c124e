"""What runs "inside" a fake VM: a login shell, a marker stream, a replayed file.

vspc-sim acts as an interactive VM for demos and for testing telnet clients,
conserver and the dashboard (docs/vspc-sim.md).  These are sans-IO: bytes typed at the serial
port go in, bytes the guest prints come out; `vm.SimVm` does the writing and timing.

`Shell` is a serial getty plus a toy shell.  It echoes what is typed (the proxy tells
telnet clients WILL ECHO, so the far end must echo), treats CR, LF and CR NUL as
Enter, erases with DEL or BS, accepts any password, and knows a few commands
(`help`).  `exit` or `logout` returns to the login prompt.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from enum import Enum

from vspc.vspctui.sim.markers import marker

__all__ = ["MarkerSource", "Shell", "ShellState"]

FILLER = b" the quick brown fox jumps over the lazy dog\r\n"  # no 0xff, no '<'


class MarkerSource:
    """Numbered console lines `<STREAM:N> the quick brown fox...` for one VM."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.sent = 0

    def line(self) -> bytes:
        """The next line; counts it as sent."""
        data = marker(self.stream, self.sent) + FILLER
        self.sent += 1
        return data


class ShellState(Enum):
    LOGIN = "login"
    PASSWORD = "password"
    SHELL = "shell"


class Shell:
    """A getty and a line-editing toy shell, for one VM named `hostname`."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.state = ShellState.LOGIN
        self.user = ""
        self._line = bytearray()
        self._after_cr = False  # swallow the LF or NUL of a CR LF / CR NUL pair
        self._commands: dict[str, Callable[[list[str]], str]] = {
            "help": lambda _: "commands: " + " ".join(sorted(self._commands)),
            "echo": lambda args: " ".join(args),
            "hostname": lambda _: self.hostname,
            "whoami": lambda _: self.user,
            "uname": lambda _: "Linux " + self.hostname + " vspc-sim",
            "seq": self._seq,
        }

    def banner(self) -> bytes:
        """What the console shows first (and after a logout)."""
        return f"\r\n{self.hostname} login: ".encode()

    def feed(self, data: bytes) -> bytes:
        """Process typed bytes; return what the guest prints (echo and replies)."""
        out = bytearray()
        for byte in data:
            if self._after_cr:
                self._after_cr = False
                if byte in (0x0A, 0x00):
                    continue
            if byte in (0x0D, 0x0A):
                self._after_cr = byte == 0x0D
                out += b"\r\n" + self._enter(self._line.decode("utf-8", "replace"))
                self._line.clear()
            elif byte in (0x7F, 0x08):
                if self._line:
                    self._line.pop()
                    if self.state is not ShellState.PASSWORD:
                        out += b"\b \b"
            elif byte >= 0x20:
                self._line.append(byte)
                if self.state is not ShellState.PASSWORD:
                    out.append(byte)
        return bytes(out)

    def _enter(self, line: str) -> bytes:
        match self.state:
            case ShellState.LOGIN:
                if not line.strip():
                    return f"{self.hostname} login: ".encode()
                self.user = line.strip()
                self.state = ShellState.PASSWORD
                return b"Password: "
            case ShellState.PASSWORD:
                self.state = ShellState.SHELL
                return f"Welcome to {self.hostname} (vspc-sim).\r\n".encode() + self._prompt()
            case ShellState.SHELL:
                return self._run(line)

    def _prompt(self) -> bytes:
        return f"{self.user}@{self.hostname}:~$ ".encode()

    def _run(self, line: str) -> bytes:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return f"sh: {exc}\r\n".encode() + self._prompt()
        if not words:
            return self._prompt()
        if words[0] in ("exit", "logout"):
            self.state = ShellState.LOGIN
            return self.banner()
        command = self._commands.get(words[0])
        reply = command(words[1:]) if command else f"sh: {words[0]}: command not found"
        text = reply.replace("\n", "\r\n") + "\r\n" if reply else ""
        return text.encode() + self._prompt()

    @staticmethod
    def _seq(args: list[str]) -> str:
        try:
            count = min(10_000, int(args[0])) if args else 10
        except ValueError:
            return "seq: not a number"
        return "\n".join(str(i) for i in range(1, count + 1))
