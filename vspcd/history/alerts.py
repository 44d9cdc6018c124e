"""Console alerts: rules that recognise a VM in trouble in its console output.

Spec: docs/operations.md "Console alerts".  Sans-IO: bytes in, `Hit`s out, with the
clock injected; vspcd/history/watch.py feeds it from the hub's output path and
reports the hits as `ConsoleAlert` hub events.

Rules.  The built-in rules (`BUILTIN_RULES`, on unless `--no-builtin-alerts`) match
the text Linux and Windows really print when they fail: a kernel panic, an Oops, a
`BUG:` line, a soft lockup, a hung task, the OOM killer, systemd's emergency and
rescue shells, a Windows bug check on the EMS console.  The configuration file adds
`[[alert]]` tables (`parse_alerts`): `name`, `regex` (Python syntax), `consoles`
(the selectors of `[[access]]`: globs, `uuid:`, `label:`; vspcd/hub/selectors.py),
`severity` (info, warning, critical) and `hold_off` seconds.  A custom rule with a
built-in's name replaces it.

Matching.  Output is cut into lines at `\\n`; a bare `\\r` (a progress line
overwriting itself) also ends a line.  Terminal escape sequences (CSI, OSC, and the
other ESC sequences) are removed first, so colour codes cannot split a word.  Only
complete lines are matched, so a line split across any number of TCP segments is
matched once, whole.  The unfinished line is kept per console up to `line_limit`
bytes; the rest of a longer line is dropped, never accumulated.  Each chunk's
complete lines are matched as one block, through a pre-filter built once per rule
set: every rule's required literal text (`anchors`, found by the stdlib's own regex
parser) is grouped under its rarest byte, and a block is searched for a literal only
if it contains that byte (one `memchr`), and with a rule's regular expression only
if it contains one of the rule's literals.  A literal made only of bytes all text
has (lower case, blanks) is searched for directly (one substring search per block,
no byte check first); an ignore-case rule's literals, lower-cased, are searched in
the block lower-cased once.  Output that matches nothing thus costs a few `memchr`
scans per chunk plus one substring search per lower-case literal, not a regex scan
per rule: Python's `re` has no multi-pattern search, and an alternation of many
rules runs at a few MB/s.  Only a rule without required literal text is searched
with its expression in every block.

One alert per console and rule per hold-off (default 300 s); it carries the line
and up to `context_lines` non-blank lines before it.  Those lines are kept from the
end of each chunk, so a chunk that matches nothing is never copied: a copy of a
large read (the event loop reads up to 256 KiB at a time) cost more than the
pre-filter's scans (docs/benchmarks.md, "Console watch, third round").
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vspc.vspcd.hub.events import Severity
from vspc.vspcd.hub.selectors import ConsoleRef, Selector, parse_selector

# The stdlib's own regex parser (`re._parser`, `re._constants`; private and untyped),
# so the literals a rule requires are what `re` itself understands the rule to
# require.  A Python without them gets `_plain_anchors`: correct, but rules with
# groups or alternatives then run their expression on every block.
try:
    _parser: Any = importlib.import_module("re._parser")
    _const: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - every supported Python has them
    _parser = _const = None

__all__ = [
    "BUILTIN_RULES",
    "CONTEXT_LINES",
    "DEFAULT_HOLD_OFF",
    "LINE_LIMIT",
    "AlertConfigError",
    "AlertMatcher",
    "AlertRule",
    "Hit",
    "anchors",
    "folded_anchors",
    "parse_alerts",
    "rule_set",
    "rules_in_force",
    "strip_escapes",
]

DEFAULT_HOLD_OFF = 300.0
LINE_LIMIT = 4096  # bytes of an unfinished line kept per console
CONTEXT_LINES = 5

# What the kernel puts before a message on the console: an optional log level
# (`<1>`), the printk timestamp (`[   12.345678] `) and, with CONFIG_PRINTK_CALLER,
# the caller (`[T123] ` / `[C1] `).  "At line start" means after these.
_KPREFIX = r"^(?:<\d>)?(?:\[ *\d+\.\d+\] ?)?(?:\[ *[CT]\d+\] ?)?"


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One rule: a name, a regular expression and where it applies."""

    name: str
    regex: str
    severity: Severity = Severity.CRITICAL
    hold_off: float = DEFAULT_HOLD_OFF
    consoles: tuple[Selector, ...] = ()  # empty: every console
    builtin: bool = False

    def applies_to(self, console: ConsoleRef) -> bool:
        return not self.consoles or any(s.matches(console) for s in self.consoles)


def _builtin(name: str, regex: str, severity: Severity = Severity.CRITICAL) -> AlertRule:
    return AlertRule(name, regex, severity, builtin=True)


BUILTIN_RULES: tuple[AlertRule, ...] = (
    # panic(): "Kernel panic - not syncing: VFS: Unable to mount root fs on ..."
    _builtin("kernel_panic", r"Kernel panic - not syncing"),
    # die(): "Oops: 0002 [#1] SMP PTI", "Oops: general protection fault, probably for
    # non-canonical address ...", older x86 "general protection fault: 0000 [#1] SMP",
    # arm64 "Internal error: Oops: 96000005 [#1] PREEMPT SMP".
    _builtin(
        "kernel_oops",
        _KPREFIX + r"(?:Oops(?::| -) |Internal error: Oops"
        r"|general protection fault(?:, probably for non-canonical address 0x[0-9a-f]+)?: "
        r"[0-9a-f]{4} \[#\d+\])",
    ),
    # "BUG: unable to handle page fault for address", "BUG: kernel NULL pointer
    # dereference, address: 0000000000000008", "kernel BUG at mm/slub.c:4152!"; an old
    # "BUG: soft lockup" is soft_lockup's.
    _builtin("kernel_bug", _KPREFIX + r"(?:BUG: (?!soft lockup)|kernel BUG at )"),
    # "watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:123]"
    _builtin("soft_lockup", r"BUG: soft lockup - CPU#\d+"),
    # "INFO: task jbd2/sda1-8:245 blocked for more than 120 seconds."
    _builtin("hung_task", r"INFO: task .+ blocked for more than \d+ seconds", Severity.WARNING),
    # "Out of memory: Killed process 1234 (java) total-vm:...", older "Out of memory:
    # Kill process 1234 (java) score 901 or sacrifice child", "Memory cgroup out of
    # memory: Killed process ...", "java invoked oom-killer: gfp_mask=0x..."
    _builtin(
        "oom_kill",
        r"[Oo]ut of memory: Kill(?:ed)? process \d+|invoked oom-killer:",
        Severity.WARNING,
    ),
    # systemd's emergency.service / rescue.service: "You are in emergency mode. After
    # logging in, type "journalctl -xb" to view system logs, ..."
    _builtin("emergency_mode", r"You are in (?:emergency|rescue) mode\."),
    # Windows EMS on a bug check: "*** STOP: 0x0000007B (0xF78D2524,0xC0000034,...)",
    # the machine-info XML `<INSTANCE CLASSNAME="BLUESCREEN">`, and the screen text
    # ("A problem has been detected and Windows has been shut down ...", since
    # Windows 8 "Your PC ran into a problem and needs to restart", Windows 11 "Your
    # device ...").
    _builtin(
        "windows_bugcheck",
        r"\*\*\* STOP: 0x[0-9A-Fa-f]{8}|CLASSNAME=\"BLUESCREEN\""
        r"|A problem has been detected and Windows has been shut down"
        r"|Your (?:PC|device) ran into a problem and needs to restart",
    ),
)


# ----------------------------------------------------------------- configuration


class AlertConfigError(ValueError):
    """`[[alert]]` tables are invalid; `errors` has one "key: why" per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = tuple(errors)


_KEYS = ("name", "regex", "consoles", "severity", "hold_off")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def parse_alerts(table: Mapping[str, object]) -> tuple[AlertRule, ...]:
    """The custom rules of a configuration file's `alert` key (`[[alert]]` tables).

    Raises:
        AlertConfigError: every problem, each as "alert[N].key: why".
    """
    raw = table.get("alert", [])
    errors: list[str] = []
    if not isinstance(raw, list):
        raise AlertConfigError(["alert: expected an array of tables ([[alert]])"])
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for number, item in enumerate(raw, 1):
        rule = _rule(f"alert[{number}]", item, errors)
        if rule is None:
            continue
        if rule.name in seen:
            errors.append(f"alert[{number}].name: {rule.name!r} is used by an earlier [[alert]]")
            continue
        seen.add(rule.name)
        rules.append(rule)
    if errors:
        raise AlertConfigError(errors)
    return tuple(rules)


def _rule(where: str, item: object, errors: list[str]) -> AlertRule | None:
    if not isinstance(item, dict):
        errors.append(f"{where}: expected a table")
        return None
    before = len(errors)
    for key in sorted(set(item) - set(_KEYS)):
        errors.append(f"{where}: unknown key {key!r} (keys: {', '.join(_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        errors.append(f"{where}.name: expected 1-64 letters, digits, '_', '.', '-' (got {name!r})")
    regex = item.get("regex")
    if not isinstance(regex, str) or not regex:
        errors.append(f"{where}.regex: expected a non-empty string")
    else:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            errors.append(f"{where}.regex: not a valid regular expression: {exc}")
        else:
            if compiled.match(""):
                errors.append(f"{where}.regex: matches the empty line (every line)")
    selectors: list[Selector] = []
    consoles = item.get("consoles", [])
    if not isinstance(consoles, list) or not all(isinstance(c, str) and c for c in consoles):
        errors.append(f"{where}.consoles: expected an array of non-empty strings")
    else:
        for text in consoles:
            try:
                selectors.append(parse_selector(text))
            except ValueError as exc:
                errors.append(f"{where}.consoles: {text!r}: {exc}")
    severity = item.get("severity", Severity.WARNING.value)
    if severity not in Severity.__members__.values():
        choices = ", ".join(s.value for s in Severity)
        errors.append(f"{where}.severity: {severity!r} is not one of {choices}")
    hold_off = item.get("hold_off", DEFAULT_HOLD_OFF)
    if isinstance(hold_off, bool) or not isinstance(hold_off, int | float) or hold_off < 0:
        errors.append(f"{where}.hold_off: expected seconds >= 0, got {hold_off!r}")
    if len(errors) > before:
        return None
    assert isinstance(name, str) and isinstance(regex, str)
    return AlertRule(
        name,
        regex,
        Severity(severity),
        float(hold_off),
        tuple(selectors),
    )


def rules_in_force(custom: Iterable[AlertRule], builtins: bool) -> tuple[AlertRule, ...]:
    """The built-ins (unless off) then the custom rules; a custom rule named like a
    built-in replaces it."""
    custom = tuple(custom)
    names = {rule.name for rule in custom}
    base = tuple(r for r in BUILTIN_RULES if r.name not in names) if builtins else ()
    return base + custom


# ----------------------------------------------------------------- matching

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC strings, and the
# other two- and three-byte ESC sequences.
_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"
    rb"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    rb"|\x1b[ -/]*[0-~]"
    rb"|\x1b"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip_escapes(data: bytes) -> bytes:
    """`data` without terminal escape sequences."""
    return _ESCAPES.sub(b"", data) if b"\x1b" in data else data


def _lines(text: str) -> str:
    """CR LF and a bare CR (a line overwriting itself) end a line, as LF does."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _clean(line: str) -> str:
    return _CONTROLS.sub("", line)


# How rare a byte is in console text, for choosing which literal of a rule to look
# for first: lower-case letters and blanks are everywhere, digits and common
# punctuation less so, capitals and the rest are rare (the rare-byte heuristic of
# grep-like tools).
_LOWER_BY_FREQUENCY = "etaoinshrdlcumwfgypbvkjxqz"


def _rarity(byte: int) -> int:
    char = chr(byte)
    if char in " \t":
        return 0
    if "a" <= char <= "z":
        return 1 + _LOWER_BY_FREQUENCY.index(char)  # 1..26
    if char.isdigit() or char in ".,-_:/[]()'":
        return 30
    if char.isupper():
        return 40
    return 50


def _score(literal: bytes) -> tuple[int, int]:
    return (max(_rarity(b) for b in literal), min(len(literal), 8))


def anchors(regex: str) -> tuple[bytes, ...] | None:
    """Literals one of which every match of `regex` contains, or None if none could be
    found (an ignore-case rule: `folded_anchors`; or one without required literal text).

    Uses the stdlib's own regex parser, so the literals are exactly what `re`
    understands the expression to require.
    """
    return _anchors(regex, fold=False)


def folded_anchors(regex: str) -> tuple[bytes, ...] | None:
    """For an ignore-case rule (`(?i)`): its literals in lower case, one of which the
    lower-cased text of every match contains; None if there are none, or if one is
    not ASCII (`bytes.lower` folds ASCII only)."""
    found = _anchors(regex, fold=True)
    if found is None or not all(literal.isascii() for literal in found):
        return None
    return tuple(dict.fromkeys(literal.lower() for literal in found))


def _anchors(regex: str, *, fold: bool) -> tuple[bytes, ...] | None:
    if _parser is None:
        return None if fold else _plain_anchors(regex)
    try:
        parsed = _parser.parse(regex)
        if bool(parsed.state.flags & re.IGNORECASE) != fold:
            return None
        return _sequence_anchors(list(parsed), fold)
    except re.error:
        return None
    except (AttributeError, TypeError, ValueError, IndexError):  # a changed private API
        return None if fold else _plain_anchors(regex)


_META = frozenset(".^$*+?{}[]()|")
_CLASSES = frozenset("dDwWsSbBAZ0123456789")  # escapes that are not one literal character


def _plain_anchors(regex: str) -> tuple[bytes, ...] | None:
    """The literal runs of a simple expression read from its text (no parser): used
    only when `re._parser` is unusable.  Unsure (groups, alternatives, inline flags,
    character classes): None, so the rule is searched in every block."""
    if any(c in regex for c in "()|"):
        return None
    runs: list[str] = []
    run: list[str] = []
    position = 0
    while position < len(regex):
        char = regex[position]
        position += 1
        if char == "\\":
            if position >= len(regex) or regex[position] in _CLASSES or regex[position].isalpha():
                char = ""  # a class or an escape like \n: ends the run
            else:
                char = regex[position]
            position += 1
        elif char == "[":  # a character class: ends the run; skip to its "]"
            position += regex[position : position + 1] == "^"
            position += regex[position : position + 1] == "]"
            while position < len(regex) and regex[position] != "]":
                position += 2 if regex[position] == "\\" else 1
            position += 1
            char = ""
        elif char in _META:
            if char in "*?{" and run:
                run.pop()  # the character before is optional (or repeated)
            if char == "{":
                position = regex.find("}", position) + 1 or len(regex)
            elif char == "+":
                pass  # the character before is still required once
            char = ""
        if char:
            run.append(char)
            continue
        if run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    if not runs:
        return None
    best = max(runs, key=lambda text: _score(text.encode("utf-8")))
    return (best.encode("utf-8"),)


def _sequence_anchors(items: list[tuple[Any, Any]], fold: bool) -> tuple[bytes, ...] | None:
    options: list[tuple[bytes, ...]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            options.append(("".join(run).encode("utf-8"),))
            run.clear()

    for op, av in items:
        if op is _const.LITERAL:
            run.append(chr(av))
            continue
        flush()
        found: tuple[bytes, ...] | None = None
        if op is _const.SUBPATTERN and (fold or not av[1] & _const.SRE_FLAG_IGNORECASE):
            found = _sequence_anchors(list(av[3]), fold)
        elif op is _const.BRANCH:
            branches = [_sequence_anchors(list(branch), fold) for branch in av[1]]
            if all(branches):
                found = tuple(a for branch in branches if branch for a in branch)
        elif op in (_const.MAX_REPEAT, _const.MIN_REPEAT) and av[0] >= 1:
            found = _sequence_anchors(list(av[2]), fold)
        if found:
            options.append(found)
    flush()
    if not options:
        return None
    return max(options, key=lambda found: min(_score(a) for a in found))


@dataclass(frozen=True, slots=True)
class _RuleSet:
    """The rules that apply to some consoles, compiled, with their literals grouped by
    each literal's rarest byte."""

    rules: tuple[tuple[AlertRule, re.Pattern[str]], ...]
    # (rarest byte, ((literal, rule indices), ...)), rarest bytes first; literals
    # made only of bytes every text has (lower case, blanks) under b"".
    groups: tuple[tuple[bytes, tuple[tuple[bytes, tuple[int, ...]], ...]], ...]
    # Ignore-case rules' lower-case literals, looked for in the lower-cased block.
    folded: tuple[tuple[bytes, tuple[int, ...]], ...]
    always: tuple[int, ...]  # rules without literals: searched in every block
    longest: int  # bytes of the longest literal

    def live(self, block: bytes) -> set[int]:
        """The rules that may match in `block`: one whose literal it contains, and the
        ones without literals.  Absent rare bytes are one `memchr` each; common-byte
        literals one substring search each; ignore-case literals one `lower()` of
        the block and a search each."""
        found = set(self.always)
        for byte, literals in self.groups:
            if not byte or byte in block:
                for literal, indices in literals:
                    if literal in block:
                        found.update(indices)
        if self.folded:
            lowered = block.lower()
            for literal, indices in self.folded:
                if literal in lowered:
                    found.update(indices)
        return found


def _shortest(found: tuple[bytes, ...] | None) -> tuple[bytes, ...] | None:
    """`found` without a literal that contains another of them: where it is, the
    other is too ("Internal error: Oops" and "Oops"), so it adds only a search."""
    if not found:
        return found
    return tuple(a for a in found if not any(b != a and b in a for b in found))


def rule_set(rules: Sequence[AlertRule]) -> _RuleSet:
    """Compile `rules` (all valid) and group their literals (the pre-filter)."""
    compiled = tuple((rule, re.compile(rule.regex, re.MULTILINE)) for rule in rules)
    by_literal: dict[bytes, list[int]] = {}
    by_folded: dict[bytes, list[int]] = {}
    always: list[int] = []
    for index, rule in enumerate(rules):
        found = _shortest(anchors(rule.regex))
        if found:
            for literal in found:
                by_literal.setdefault(literal, []).append(index)
            continue
        folded = _shortest(folded_anchors(rule.regex))
        if not folded:
            always.append(index)
            continue
        for literal in folded:
            by_folded.setdefault(literal, []).append(index)
    groups: dict[bytes, list[tuple[bytes, tuple[int, ...]]]] = {}
    for literal, indices in by_literal.items():
        rarest = max(literal, key=_rarity)
        # A lower-case letter or blank is in every chunk of text: checking for it
        # first is a wasted scan.
        key = b"" if _rarity(rarest) < 30 else bytes((rarest,))
        groups.setdefault(key, []).append((literal, tuple(indices)))
    ordered = sorted(groups.items(), key=lambda item: -_rarity(item[0][0]) if item[0] else 0)
    return _RuleSet(
        compiled,
        tuple((b, tuple(lits)) for b, lits in ordered),
        tuple((literal, tuple(indices)) for literal, indices in by_folded.items()),
        tuple(always),
        max(map(len, [*by_literal, *by_folded]), default=0),
    )


@dataclass(frozen=True, slots=True)
class Hit:
    """One alert: the rule, the line that matched and the lines before it."""

    rule: AlertRule
    line: str
    context: tuple[str, ...]
    when: float


@dataclass(slots=True)
class _Stream:
    """One console's unfinished line and recent lines (raw, newest last)."""

    ruleset: _RuleSet | None
    pending: bytes = b""
    recent: list[bytes] = field(default_factory=list)


class AlertMatcher:
    """Per-console line assembly and rule matching (see the module docstring).

    Args:
        rules: the rules in force (`rules_in_force`).
        clock: seconds, for hold-offs and `Hit.when` (the watcher passes Unix time).
    """

    def __init__(
        self,
        rules: Sequence[AlertRule],
        *,
        clock: Callable[[], float],
        context_lines: int = CONTEXT_LINES,
        line_limit: int = LINE_LIMIT,
    ) -> None:
        self._clock = clock
        self._context = context_lines
        self._limit = line_limit
        self._streams: dict[Any, _Stream] = {}
        self._last: dict[tuple[Any, str], float] = {}  # (console, rule) -> last alert
        self._sets: dict[tuple[int, ...], _RuleSet] = {}
        self.rules: tuple[AlertRule, ...] = ()
        self.set_rules(rules)

    def set_rules(self, rules: Sequence[AlertRule]) -> None:
        """New rules (a reload); unfinished lines, recent lines and hold-offs are kept."""
        self.rules = tuple(rules)
        self._sets = {}
        if self.rules and not any(rule.consoles for rule in self.rules):
            # Every console gets every rule: compile them now, not at the first
            # output of the first console (a few ms on the output path).
            self._sets[tuple(range(len(self.rules)))] = rule_set(self.rules)
        for stream in self._streams.values():
            stream.ruleset = None  # chosen again at the console's next chunk

    def forget(self, key: Any) -> None:
        """The console is gone: drop its line and hold-offs."""
        self._streams.pop(key, None)
        for pair in [pair for pair in self._last if pair[0] == key]:
            del self._last[pair]

    def renamed(self, key: Any) -> None:
        """The console's name changed: choose its rules again (globs match names)."""
        stream = self._streams.get(key)
        if stream is not None:
            stream.ruleset = None

    def _ruleset_for(self, console: ConsoleRef) -> _RuleSet:
        chosen = tuple(i for i, rule in enumerate(self.rules) if rule.applies_to(console))
        found = self._sets.get(chosen)
        if found is None:
            found = self._sets[chosen] = rule_set([self.rules[i] for i in chosen])
        return found

    def feed(self, key: Any, console: Callable[[], ConsoleRef], data: bytes) -> list[Hit]:
        """Console `key` printed `data`; the alerts it raises (usually none).

        `console` describes the console for the rules' selectors; it is called only
        when the console's rules must be chosen (first output, rename, reload).
        """
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(self._ruleset_for(console()))
        elif stream.ruleset is None:
            stream.ruleset = self._ruleset_for(console())
        end = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if end < 0:
            room = self._limit - len(stream.pending)
            if room > 0:
                stream.pending += data[:room]
            return []
        ruleset = stream.ruleset
        assert ruleset is not None
        pending = stream.pending
        stream.pending = data[end + 1 : end + 1 + self._limit]
        if not ruleset.rules:
            return []
        # The pre-filter looks at the chunk as it is (no copy: usually nothing is
        # live), and at the unfinished line the chunk continues with as much of the
        # chunk as a literal split across the two can reach (the rest of the chunk
        # was just looked at); what lies after `end` is looked at again when its line
        # is complete.
        live = ruleset.live(data)
        if pending:
            first = data.find(b"\n")
            reach = min(first if first >= 0 else end, ruleset.longest)
            live |= ruleset.live(pending + data[:reach])
        if b"\x1b" in data or b"\x1b" in pending:
            live |= ruleset.live(strip_escapes(pending + data[:end]))
        if not live:
            self._remember_chunk(stream, pending, data)
            return []
        block = strip_escapes(pending + data[:end])
        hits = self._match(key, stream, ruleset, live, block)
        self._remember(stream, block)
        return hits

    def _match(
        self, key: Any, stream: _Stream, ruleset: _RuleSet, live: set[int], block: bytes
    ) -> list[Hit]:
        text = _lines(block.decode("utf-8", "replace"))
        found: list[tuple[int, int, AlertRule]] = []
        for index in sorted(live):
            rule, pattern = ruleset.rules[index]
            for match in pattern.finditer(text):
                start = text.rfind("\n", 0, match.start()) + 1
                found.append((start, index, rule))
        hits: list[Hit] = []
        now: float | None = None
        for start, _, rule in sorted(found, key=lambda item: item[:2]):
            now = self._clock() if now is None else now
            last = self._last.get((key, rule.name))
            if last is not None and now - last < rule.hold_off:
                continue
            self._last[(key, rule.name)] = now
            stop = text.find("\n", start)
            line = _clean(text[start : len(text) if stop < 0 else stop])
            context = self._context_before(stream, text, start)
            hits.append(Hit(rule, line[: self._limit], context, now))
        return hits

    def _context_before(self, stream: _Stream, text: str, start: int) -> tuple[str, ...]:
        want = self._context
        if want <= 0:
            return ()
        lines = [_clean(line) for line in text[:start].split("\n")]
        lines = [line for line in lines if line.strip()][-want:]
        if len(lines) < want:
            older = _lines(b"\n".join(stream.recent).decode("utf-8", "replace")).split("\n")
            lines = [_clean(line) for line in older if line.strip()] + lines
        return tuple(line[: self._limit] for line in lines[-want:])

    def _remember_chunk(self, stream: _Stream, pending: bytes, data: bytes) -> None:
        """`_remember` of the lines `pending` + `data` complete, without copying `data`."""
        want = self._context
        if want <= 0:
            return
        # Only the last 2 * `want` LF-ended lines and the line before them can be
        # kept: start after the LF before that line, so that a large chunk is not
        # copied (what lies before that LF, `pending` too, would be dropped below).
        start = len(data)
        for _ in range(2 * want + 1):
            start = data.rfind(b"\n", 0, start)
            if start < 0:
                break
        if start >= 0:
            data, pending = data[start + 1 :], b""
        pieces = data.rsplit(b"\n", 2 * want)
        tail = pieces.pop()  # after the last LF: lines a CR ended, then the unfinished one
        pieces += tail.split(b"\r")[:-1]
        if pending and len(pieces) <= 2 * want:
            pieces[0] = pending + pieces[0]
        self._remember(stream, b"\n".join(pieces[-2 * want :]))

    def _remember(self, stream: _Stream, block: bytes) -> None:
        want = self._context
        if want <= 0:
            return
        pieces = block.rsplit(b"\n", 2 * want)[-2 * want :]
        kept = [p for piece in pieces for p in piece.split(b"\r") if p.strip()][-want:]
        if len(kept) < want:
            kept = stream.recent + kept
        stream.recent = [line[: self._limit] for line in kept[-want:]]
