"""The admin command table: every command, its fields, who may run it.

Boundary: `COMMANDS` is the one schema of the admin requests (docs/admin-protocol.md).  The
daemon validates requests against it (`validate_request`, `required_access`), its
handler table must name the same commands (vspcd/faces/admin.py checks at import), and
command-line clients derive their arguments from it: each `FieldSpec` carries its
type, default, bounds, choices, help text and a placeholder, and `FieldSpec.convert`
turns a command-line word into the value the daemon would accept, with the daemon's
own check.  Part of the sans-IO admin codec (`vspc.common.admin`, which re-exports it).
Spec: docs/admin-protocol.md, "Commands".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vspc.common.admin import validate
from vspc.common.admin.enums import Access, Level, LockMode
from vspc.common.admin.errors import AdminError, ErrorCode, RequestId
from vspc.common.admin.messages import id_of

__all__ = [
    "COMMANDS",
    "MAX_ALERTS",
    "MAX_GREP",
    "MAX_REASON",
    "MAX_REPLAY",
    "CommandSpec",
    "FieldKind",
    "FieldSpec",
    "Request",
    "required_access",
    "required_level",
    "validate_request",
]

MAX_REPLAY = 1 << 20  # largest `replay` / tail `bytes` a request may ask for
MAX_REASON = 1024  # characters of a clear/kick reason
MAX_ALERTS = 1000  # alerts one `alerts` reply may carry
MAX_GREP = 10000  # matches one `grep` reply may carry


class FieldKind(StrEnum):
    """JSON type of a request field."""

    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    ENUM = "enum"


# Spellings `FieldSpec.convert` accepts for a BOOL field given as a word.
_TRUE = frozenset(("true", "yes", "on", "1"))
_FALSE = frozenset(("false", "no", "off", "0"))


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One request field: its JSON type, whether it is required, default and bounds.

    It also holds what a command-line client needs to offer the field as an argument,
    so `vspc` restates none of it.  By convention a required field is a positional
    argument and any other field is a `--name` option (a BOOL one is a flag).  Such a
    client reads:
    - `kind`, for the Python type (`python_type`);
    - `default`, `help` (`help_with_default` appends the default);
    - `choices` (`choice_values`), `metavar` (`placeholder`) and `short` (an extra
      one-letter option);
    - `convert`, which turns one word into the value the daemon would accept, with
      the daemon's own checks.
    """

    name: str
    kind: FieldKind
    help: str
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = validate.MAX_STR
    choices: type[StrEnum] | None = None  # for ENUM
    metavar: str | None = None  # the value's name in usage lines; None: `placeholder`
    short: str | None = None  # a one-letter option for command-line clients, e.g. "-n"

    @property
    def python_type(self) -> type:
        """The type `read` and `convert` return: str, int, bool, or the StrEnum."""
        match self.kind:
            case FieldKind.INT:
                return int
            case FieldKind.BOOL:
                return bool
            case FieldKind.ENUM:
                assert self.choices is not None, "ENUM fields name their StrEnum"
                return self.choices
        return str

    @property
    def choice_values(self) -> tuple[str, ...]:
        """The wire values an ENUM field accepts, in declaration order; () otherwise."""
        return () if self.choices is None else tuple(member.value for member in self.choices)

    @property
    def placeholder(self) -> str:
        """The value's name in usage lines: `metavar`, else the field's name, in
        capitals for an option (argparse's convention)."""
        if self.metavar:
            return self.metavar
        return self.name if self.required else self.name.upper()

    @property
    def help_with_default(self) -> str:
        """`help`, plus "(default X)" when the field has a default worth showing."""
        if self.default is None or self.default is False:
            return self.help
        return f"{self.help} (default {self.default})"

    def convert(self, text: str) -> Any:
        """One command-line word -> this field's value, checked as the daemon checks it.

        Integers are decimal, booleans are true/false, yes/no, on/off or 1/0, and an
        ENUM takes one of `choice_values`.

        Raises:
            ValueError: the word is not a valid value; the message says why (argparse
                users wrap it in ArgumentTypeError to show it).
        """
        value: Any = text
        if self.kind is FieldKind.INT:
            try:
                value = int(text, 10)
            except ValueError:
                raise ValueError(f"{self.name}: not an integer: {text!r}") from None
        elif self.kind is FieldKind.BOOL:
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(f"{self.name}: not true or false: {text!r}")
            value = word in _TRUE
        try:
            return self.read({self.name: value})
        except AdminError as exc:
            raise ValueError(exc.message) from None

    def read(self, request: Mapping[str, Any]) -> Any:
        """Validate this field of `request`; the value, or the default if absent.

        Raises:
            AdminError: BAD_FIELD.
        """
        match self.kind:
            case FieldKind.STR if self.required:
                return validate.require_str(request, self.name, max_length=self.max_length)
            case FieldKind.STR:
                return validate.optional_str(
                    request, self.name, self.default, max_length=self.max_length
                )
            case FieldKind.INT if self.required:
                return validate.require_int(
                    request, self.name, minimum=self.minimum, maximum=self.maximum
                )
            case FieldKind.INT:
                return validate.optional_int(
                    request, self.name, self.default, minimum=self.minimum, maximum=self.maximum
                )
            case FieldKind.BOOL:
                return validate.optional_bool(request, self.name, bool(self.default))
            case FieldKind.ENUM if self.required:
                assert self.choices is not None, "ENUM fields name their StrEnum"
                return validate.require_enum(request, self.name, self.choices)
            case FieldKind.ENUM:
                assert self.choices is not None, "ENUM fields name their StrEnum"
                return validate.optional_enum(request, self.name, self.choices, self.default)
        raise AssertionError(f"unhandled field kind {self.kind}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One admin command: its fields and who may run it.

    `access` is what the command needs in general; `required_access` refines it for
    attach (read-only attaches are open to read-only peers).  `exactly_one` names
    fields of which exactly one must be given (clear: vm or port).
    """

    name: str
    help: str
    fields: tuple[FieldSpec, ...] = ()
    access: Access = Access.READONLY
    exactly_one: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: command, id and every field with defaults filled in."""

    cmd: str
    id: RequestId | None
    fields: Mapping[str, Any] = field(default_factory=dict)


def _check_attach(request: Mapping[str, Any], fields: dict[str, Any]) -> None:
    # A read-only client holding a lock would stop everyone from typing: refuse it.
    if fields["readonly"] and fields["lock"] in (LockMode.EXCLUSIVE, LockMode.WRITE):
        raise validate.bad_field(
            request, f"a read-only attach cannot take the {fields['lock']} lock"
        )


_VM = FieldSpec("vm", FieldKind.STR, "console: name, NAME_LABEL, key, UUID or telnet port", True)
_VM_FILTER = FieldSpec("vm", FieldKind.STR, "only this console (as for show)")
_REASON = FieldSpec(
    "reason",
    FieldKind.STR,
    "shown to the disconnected clients",
    max_length=MAX_REASON,
    metavar="TEXT",
)

COMMANDS: Mapping[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "hello",
            "protocol version, daemon version, capabilities, your access",
            (
                FieldSpec("client", FieldKind.STR, "client name/version, for the log"),
                FieldSpec(
                    "as_user",
                    FieldKind.STR,
                    "act for this user (only for the daemon's `delegates`)",
                    max_length=256,
                ),
            ),
        ),
        CommandSpec("list", "every console with its lock and clients"),
        CommandSpec("show", "one console in detail", (_VM,)),
        CommandSpec(
            "attach",
            "switch this connection to the console's raw byte stream",
            (
                _VM,
                FieldSpec(
                    "lock",
                    FieldKind.ENUM,
                    "lock mode",
                    default=LockMode.FREE_FOR_ALL_OR_READONLY,
                    choices=LockMode,
                    metavar="MODE",
                ),
                FieldSpec(
                    "readonly",
                    FieldKind.BOOL,
                    "watch only; typing is refused",
                    default=False,
                    short="-r",
                ),
                FieldSpec(
                    "replay",
                    FieldKind.INT,
                    "bytes of scrollback to send first",
                    default=0,
                    minimum=0,
                    maximum=MAX_REPLAY,
                    metavar="N",
                ),
                FieldSpec(
                    "quiet",
                    FieldKind.BOOL,
                    "only the console's bytes: no [vspcd: ...] status lines while attached "
                    "(the reason for a clear or kick is still said)",
                    default=False,
                ),
            ),
            check=_check_attach,
        ),
        CommandSpec(
            "clear",
            "disconnect every client of a console",
            (
                FieldSpec("vm", FieldKind.STR, "console (as for show)"),
                FieldSpec(
                    "port", FieldKind.INT, "console by telnet port", minimum=1, maximum=65535
                ),
                _REASON,
            ),
            access=Access.FULL,
            exactly_one=("vm", "port"),
        ),
        CommandSpec(
            "kick",
            "disconnect one client",
            (
                FieldSpec(
                    "client",
                    FieldKind.INT,
                    "client id (list/show)",
                    True,
                    minimum=1,
                    metavar="client_id",
                ),
                _REASON,
            ),
            access=Access.FULL,
        ),
        CommandSpec("subscribe", "push state-change events on this connection"),
        CommandSpec("unsubscribe", "stop pushing state-change events"),
        CommandSpec(
            "tail",
            "a console's recent output, optionally followed as output events",
            (
                _VM,
                FieldSpec(
                    "bytes",
                    FieldKind.INT,
                    "bytes of scrollback to return",
                    default=4096,
                    minimum=0,
                    maximum=MAX_REPLAY,
                    metavar="N",
                    short="-n",
                ),
                FieldSpec(
                    "follow",
                    FieldKind.BOOL,
                    "then push new output as output events",
                    default=False,
                    short="-f",
                ),
            ),
        ),
        CommandSpec("untail", "stop following a console", (_VM,)),
        CommandSpec(
            "stats",
            "the daemon's counters and gauges (the numbers GET /metrics exposes)",
        ),
        CommandSpec("whoami", "who vspcd thinks you are: user, uid, groups, default level"),
        CommandSpec(
            "access",
            "your level on one console, and the rule that gave it",
            (FieldSpec("vm", FieldKind.STR, "console (as for show)", True),),
        ),
        CommandSpec(
            "who",
            "who is on which console: how, in which mode, since when",
            (_VM_FILTER,),
        ),
        CommandSpec(
            "break",
            "send a serial break (telnet IAC BRK) to the VM",
            (_VM,),
            access=Access.FULL,
        ),
        CommandSpec(
            "alerts",
            "recent console alerts (kernel panics, Oopses, ...), oldest first",
            (
                _VM_FILTER,
                FieldSpec(
                    "limit",
                    FieldKind.INT,
                    "at most this many",
                    default=50,
                    minimum=1,
                    maximum=MAX_ALERTS,
                    metavar="N",
                    short="-n",
                ),
            ),
        ),
        CommandSpec(
            "grep",
            "search every console's history (logs, rotated and gzipped ones, scrollback)",
            (
                FieldSpec("pattern", FieldKind.STR, "a Python regular expression", True),
                FieldSpec(
                    "consoles",
                    FieldKind.STR,
                    "only these consoles: selectors separated by commas (globs, uuid:, label:)",
                    metavar="LIST",
                ),
                FieldSpec("since", FieldKind.INT, "lines from this Unix time on", minimum=0),
                FieldSpec("until", FieldKind.INT, "lines up to this Unix time", minimum=0),
                FieldSpec(
                    "ignore_case",
                    FieldKind.BOOL,
                    "match case-insensitively",
                    default=False,
                    short="-i",
                ),
                FieldSpec(
                    "limit",
                    FieldKind.INT,
                    "at most this many matches (then truncated is true)",
                    default=1000,
                    minimum=1,
                    maximum=MAX_GREP,
                    metavar="N",
                    short="-n",
                ),
            ),
        ),
    )
}


def validate_request(request: Mapping[str, Any]) -> Request:
    """Check a parsed request against `COMMANDS`; fill in defaults.

    Unknown fields are refused rather than ignored, so a typo or a field this daemon
    does not know yet fails loudly instead of silently doing something else.

    Raises:
        AdminError: UNKNOWN_CMD or BAD_FIELD, with the request's id.
    """
    rid = id_of(request)
    cmd = request.get("cmd")
    spec = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if spec is None:
        raise AdminError(ErrorCode.UNKNOWN_CMD, f"unknown command {cmd!r}", rid)
    known = {"cmd", "id", *(f.name for f in spec.fields)}
    unknown = sorted(name for name in request if name not in known)
    if unknown:
        raise validate.bad_field(request, f"unknown field(s) for {spec.name}: {', '.join(unknown)}")
    fields = {f.name: f.read(request) for f in spec.fields}
    if spec.exactly_one:
        given = [name for name in spec.exactly_one if fields.get(name) is not None]
        if len(given) != 1:
            names = " or ".join(repr(name) for name in spec.exactly_one)
            raise validate.bad_field(request, f"{spec.name} needs exactly one of {names}")
    if spec.check is not None:
        spec.check(request, fields)
    return Request(spec.name, rid, fields)


def required_access(request: Request) -> Access:
    """The access level `request` needs (docs: "Access control").

    Read-only peers may attach read-only, and an attach with the default
    free_for_all_or_readonly mode is downgraded to read-only for them rather than
    refused; every other lock mode is a write request.
    """
    if request.cmd == "attach":
        if (
            request.fields["readonly"]
            or request.fields["lock"] is LockMode.FREE_FOR_ALL_OR_READONLY
        ):
            return Access.READONLY
        return Access.FULL
    return COMMANDS[request.cmd].access


def required_level(request: Request) -> Level:
    """The level on the named console `request` needs (docs/admin-protocol.md,
    "Access control"); `Level.NONE` for commands about no one console.

    Every console command needs at least WATCH (below it the console does not exist
    for the peer).  An attach needs WATCH when read-only or in the default
    free_for_all_or_readonly mode (which a watcher joins read-only), WRITE to type
    (free_for_all) or hold the write lock, CONTROL for the exclusive lock; clear and
    kick need CONTROL, and so does break (a break can stop a guest: SysRq, a
    debugger).  `who` names a console only as a filter: WATCH.
    """
    match request.cmd:
        case "attach":
            lock = request.fields["lock"]
            if lock is LockMode.EXCLUSIVE:
                return Level.CONTROL
            if request.fields["readonly"] or lock is LockMode.FREE_FOR_ALL_OR_READONLY:
                return Level.WATCH
            return Level.WRITE
        case "clear" | "kick" | "break":
            return Level.CONTROL
        case "show" | "tail" | "untail" | "access" | "who":
            return Level.WATCH
    return Level.NONE
