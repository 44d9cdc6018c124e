"""Console alert rules (vspcd/history/alerts.py): real kernel and Windows text, split
at every byte boundary; near misses; hold-off; escapes; long lines; configuration."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.vspcd.history import alerts as alerts_module
from vspc.vspcd.history.alerts import (
    BUILTIN_RULES,
    LINE_LIMIT,
    AlertConfigError,
    AlertMatcher,
    AlertRule,
    Hit,
    anchors,
    folded_anchors,
    parse_alerts,
    rule_set,
    rules_in_force,
)
from vspc.vspcd.hub.events import Severity
from vspc.vspcd.hub.selectors import ConsoleRef

# Real console text, as Linux and Windows print it on a serial console (CR LF).
PANIC = (
    b"[    2.861234] List of all partitions:\r\n"
    b"[    2.861240] No filesystem could mount root, tried:\r\n"
    b"[    2.861301] Kernel panic - not syncing: VFS: Unable to mount root fs on "
    b"unknown-block(0,0)\r\n"
    b"[    2.861400] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 5.15.0-91-generic #101-Ubuntu\r\n"
)
OOPS = (
    b"[ 1234.567890] BUG: kernel NULL pointer dereference, address: 0000000000000008\r\n"
    b"[ 1234.567901] #PF: supervisor read access in kernel mode\r\n"
    b"[ 1234.567912] Oops: 0000 [#1] PREEMPT SMP NOPTI\r\n"
)
GPF = (
    b"[  301.112233] general protection fault, probably for non-canonical address "
    b"0xdead000000000122: 0000 [#1] SMP PTI\r\n"
)
HUNG = (
    b"[  363.187531] INFO: task jbd2/sda1-8:245 blocked for more than 120 seconds.\r\n"
    b"[  363.187544]       Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1\r\n"
)
OOM = (
    b"[ 8812.120001] java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|"
    b"__GFP_COMP), order=0, oom_score_adj=0\r\n"
    b"[ 8812.120034] Out of memory: Killed process 4242 (java) total-vm:8123456kB, "
    b"anon-rss:6123456kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:12345kB "
    b"oom_score_adj:0\r\n"
)
LOCKUP = b"[  120.000012] watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:123]\r\n"
EMERGENCY = (
    b'You are in emergency mode. After logging in, type "journalctl -xb" to view\r\n'
    b'system logs, "systemctl reboot" to reboot, "systemctl default" or "exit"\r\n'
)
BUGCHECK = (
    b"\r\n*** STOP: 0x0000007B (0xF78D2524,0xC0000034,0x00000000,0x00000000)\r\n"
    b"INACCESSIBLE_BOOT_DEVICE\r\n"
)
BUGCHECK_XML = (
    b'<?xml version="1.0"?>\r\n<BP>\r\n<INSTANCE CLASSNAME="BLUESCREEN">\r\n'
    b'<PROPERTY NAME="STOPCODE" TYPE="string"><VALUE>"0x7B"</VALUE></PROPERTY>\r\n'
)

CASES = [
    (PANIC, {"kernel_panic"}),
    (OOPS, {"kernel_bug", "kernel_oops"}),
    (GPF, {"kernel_oops"}),
    (HUNG, {"hung_task"}),
    (OOM, {"oom_kill"}),
    (LOCKUP, {"soft_lockup"}),
    (EMERGENCY, {"emergency_mode"}),
    (BUGCHECK, {"windows_bugcheck"}),
    (BUGCHECK_XML, {"windows_bugcheck"}),
]

NEAR_MISSES = [
    b"Don't panic: the kernel is fine\r\n",
    b"myapp[123]: BUG: counter went negative (application log)\r\n",
    b"2026-01-01 app: INFO: task queue blocked for more than expected\r\n",
    b"grep -r 'Kernel panic' /var/log\r\n" + b"Kernel panic settings: none\r\n",
    b"echo You are in emergency mode\r\n",
    b"oops, mistyped\r\n",
    b"traps: python[4242] general protection fault ip:7f sp:7ff error:0 in libc.so\r\n",
    b"STOP: 0x1 is not a valid code\r\n",
]


def matcher(rules: tuple[AlertRule, ...] = BUILTIN_RULES, **kw: object) -> AlertMatcher:
    now = [1000.0]
    m = AlertMatcher(rules, clock=lambda: now[0], **kw)  # type: ignore[arg-type]
    m.now = now  # type: ignore[attr-defined]
    return m


def feed(m: AlertMatcher, *chunks: bytes, key: str = "k", name: str = "db01") -> list[Hit]:
    hits: list[Hit] = []
    for chunk in chunks:
        hits += m.feed(key, lambda: ConsoleRef(name, name, "0" * 32, ""), chunk)
    return hits


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[sorted(e)[0] for _, e in CASES])
def test_builtins_fire_on_real_text_split_at_every_byte(text: bytes, expected: set[str]) -> None:
    whole = {(h.rule.name, h.line) for h in feed(matcher(), text)}
    assert {name for name, _ in whole} == expected
    for cut in range(1, len(text)):
        got = {(h.rule.name, h.line) for h in feed(matcher(), text[:cut], text[cut:])}
        assert got == whole, cut


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(PANIC + OOM) - 1), max_size=8))
def test_any_segmentation_gives_the_same_alerts(cuts: list[int]) -> None:
    text = b"noise\r\n" + PANIC + OOM
    points = sorted(set(cuts))
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    got = [(h.rule.name, h.line, h.context) for h in feed(matcher(), *pieces)]
    assert got == [(h.rule.name, h.line, h.context) for h in feed(matcher(), text)]


def test_the_alert_carries_the_line_and_the_lines_before_it() -> None:
    (hit,) = feed(matcher(), b"one\r\n\r\ntwo\r\n", PANIC)
    assert hit.line.startswith("[    2.861301] Kernel panic - not syncing: VFS")
    assert hit.context == (
        "one",
        "two",
        "[    2.861234] List of all partitions:",
        "[    2.861240] No filesystem could mount root, tried:",
    )
    assert hit.rule.severity is Severity.CRITICAL and hit.when == 1000.0


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_raise_nothing(text: bytes) -> None:
    assert feed(matcher(), text) == []


def test_escapes_and_carriage_returns_do_not_hide_a_line() -> None:
    text = (
        b"\x1b[1;31m[ 1.0] Kernel \x1b[0mpanic - not syncing\x1b[K: boom\r\n"
        b"\x1b]0;title\x07progress 10%\rprogress 100%\r\n"
    )
    (hit,) = feed(matcher(), text)
    assert hit.line == "[ 1.0] Kernel panic - not syncing: boom"


def test_hold_off_is_per_console_and_rule() -> None:
    m = matcher()
    assert len(feed(m, PANIC)) == 1
    assert feed(m, PANIC) == []  # within the hold-off
    assert len(feed(m, PANIC, key="other")) == 1  # another console
    assert [h.rule.name for h in feed(m, OOM)] == ["oom_kill"]  # another rule
    m.now[0] += 301  # type: ignore[attr-defined]
    assert len(feed(m, PANIC)) == 1


def test_a_long_line_is_cut_not_accumulated() -> None:
    m = matcher()
    feed(m, b"Kernel panic - not syncing: " + b"x" * (3 * LINE_LIMIT))
    stream = m._streams["k"]
    assert len(stream.pending) == LINE_LIMIT
    (hit,) = feed(m, b"y" * 100_000 + b"\n")
    assert len(hit.line) == LINE_LIMIT and hit.line.startswith("Kernel panic")


def test_custom_rules_selectors_and_reload() -> None:
    (rule,) = parse_alerts(
        {
            "alert": [
                {
                    "name": "fs_readonly",
                    "regex": r"Remounting filesystem read-only",
                    "consoles": ["db*"],
                    "severity": "warning",
                    "hold_off": 0,
                }
            ]
        }
    )
    m = matcher(rules_in_force([rule], builtins=False))
    line = b"EXT4-fs (sda1): Remounting filesystem read-only\n"
    assert [h.rule.name for h in feed(m, line)] == ["fs_readonly"]
    assert [h.rule.name for h in feed(m, line)] == ["fs_readonly"]  # hold_off 0
    assert feed(m, line, key="web", name="web01") == []  # not named by the selector
    assert feed(m, PANIC) == []  # built-ins off
    m.set_rules(rules_in_force([], builtins=True))
    assert [h.rule.name for h in feed(m, PANIC)] == ["kernel_panic"]


def test_a_custom_rule_replaces_the_builtin_of_its_name() -> None:
    custom = AlertRule("kernel_panic", r"never matches this", Severity.INFO)
    rules = rules_in_force([custom], builtins=True)
    assert [r for r in rules if r.name == "kernel_panic"] == [custom]
    assert feed(matcher(rules), PANIC) == []


def test_rules_without_literals_are_still_matched() -> None:
    assert anchors(r"(?i)kernel panic") is None
    assert anchors(r"\d+ errors") == (b" errors",)
    rule = AlertRule("ci", r"(?i)disk FAILURE", Severity.INFO)
    assert [h.rule.name for h in feed(matcher((rule,)), b"Disk failure on sda\n")] == ["ci"]


def test_config_errors_name_each_key() -> None:
    with pytest.raises(AlertConfigError) as caught:
        parse_alerts(
            {
                "alert": [
                    {"name": "bad name!", "regex": "(", "severity": "fatal", "hold_off": -1},
                    {"name": "x", "regex": "a*"},
                    {"name": "y", "regex": "ok", "consoles": ["uuid:nope"], "extra": 1},
                ]
            }
        )
    errors = "\n".join(caught.value.errors)
    for wanted in (
        "alert[1].name",
        "alert[1].regex: not a valid regular expression",
        "alert[1].severity",
        "alert[1].hold_off",
        "alert[2].regex: matches the empty line",
        "alert[3]: unknown key 'extra'",
        "alert[3].consoles: 'uuid:nope'",
    ):
        assert wanted in errors, wanted


def test_ignore_case_rules_are_prefiltered_by_their_folded_literals() -> None:
    assert folded_anchors(r"(?i)disk FAILURE on \w+") == (b"disk failure on ",)
    assert folded_anchors(r"(?i)\d+") is None  # no literal text
    assert folded_anchors(r"(?i)Fehler: Ü") is None  # bytes.lower folds ASCII only
    rules = rule_set([AlertRule("ci", r"(?i)disk FAILURE", Severity.INFO)])
    assert rules.always == () and rules.live(b"all quiet\n") == set()
    assert rules.live(b"DISK Failure on sda\n") == {0}


def test_lower_case_literals_are_searched_without_a_byte_check_first() -> None:
    rules = rule_set([AlertRule("segv", r"segfault at [0-9a-f]+", Severity.INFO)])
    assert rules.groups == ((b"", ((b"segfault at ", (0,)),)),)
    assert rules.live(b"a.out[12]: segfault at 0 ip\n") == {0}
    assert rules.live(b"nothing to see\n") == set()


@pytest.mark.parametrize(
    ("regex", "expected"),
    [
        (r"Kernel panic - not syncing", (b"Kernel panic - not syncing",)),
        (r"segfault at [0-9a-f]+", (b"segfault at ",)),
        (r"mce: \[Hardware Error\]", (b"mce: [Hardware Error]",)),
        (r"ata\d+: hard resetting link", (b": hard resetting link",)),
        (r"abc{2,3}de", (b"ab",)),
        (r"x[]a]yz", (b"yz",)),
        (r"a|b", None),  # unsure: searched in every block
        (r"(?i)x", None),
    ],
)
def test_plain_anchors_without_the_private_parser(
    regex: str, expected: tuple[bytes, ...] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerts_module, "_parser", None)
    assert anchors(regex) == expected
    # And matching stays correct: the rule still alerts.
    if expected is not None:
        rule = AlertRule("r", regex, Severity.INFO)
        m = matcher((rule,))
        line = {"abc{2,3}de": b"abccde", "x[]a]yz": b"x]yz"}.get(regex, b"")
        if line:
            assert [h.rule.name for h in feed(m, line + b"\n")] == ["r"]


# The pre-filter against the plain per-line search: built-ins and custom rules of every
# kind (lower-case literals, capitals, ignore-case, no literal at all), text made of
# pieces of their literals, cut into chunks anywhere.
PREFILTER_RULES = BUILTIN_RULES + tuple(
    AlertRule(f"c{number}", regex, Severity.INFO, hold_off=0.0)
    for number, regex in enumerate(
        (
            r"segfault at [0-9a-f]+",
            r"watchdog timeout",
            r"Call Trace:",
            r"sd \d+:\d+:\d+:\d+: \[sd\w+\] tag#",
            r"ata\d+: hard resetting link",
            r"(?i)disk failure",
            r"\d{5}",
        )
    )
)
PREFILTER_PIECES = [
    "segfault at ",
    "segfa",
    "ult at ",
    "1f",
    "watchdog",
    " timeout",
    "watchdog timeout",
    "Call Trace:",
    "Call ",
    "Trace:",
    "sd 0:0:0:0: [sda] tag#",
    "ata3: hard resetting link",
    "ata3: hard ",
    "DiSk FaIlUrE",
    "Kernel panic - not syncing",
    "Kernel ",
    "panic - not syncing",
    "[    2.000000] ",
    "Oops: 0002 [#1] SMP",
    "BUG: ",
    "soft lockup - CPU#3",
    "Out of memory: Killed process 42",
    "the quick brown fox ",
    "12345",
    "0",
    " ",
    "\r\n",
    "\n",
    "\r",
    "\x1b[1m",
]


def per_line_hits(text: bytes, rules: tuple[AlertRule, ...]) -> set[tuple[str, str]]:
    """What matching each complete line on its own finds (no pre-filter)."""
    lines = alerts_module._lines(alerts_module.strip_escapes(text).decode()).split("\n")[:-1]
    compiled = [(rule.name, re.compile(rule.regex)) for rule in rules]
    return {(name, line) for line in lines for name, regex in compiled if regex.search(line)}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PREFILTER_PIECES), max_size=40),
    st.lists(st.integers(min_value=1, max_value=1000), max_size=8),
)
def test_the_prefilter_never_misses_a_line_the_plain_search_matches(
    pieces: list[str], cuts: list[int]
) -> None:
    rules = tuple(AlertRule(r.name, r.regex, r.severity, hold_off=0.0) for r in PREFILTER_RULES)
    text = "".join(pieces).encode()
    points = sorted({c for c in cuts if c < len(text)})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    got = {(h.rule.name, h.line) for h in feed(matcher(rules), *chunks)}
    assert got == per_line_hits(text, rules)


SEGV = AlertRule("segv", r"segfault at [0-9a-f]+", Severity.INFO)


@pytest.mark.parametrize("context_lines", [1, 2, 5])
def test_context_before_blank_lines_at_a_chunk_end(context_lines: int) -> None:
    # The chunk's last lines are kept without copying the chunk: the line before its
    # last 2 * context_lines lines must still count (here the only non-blank one).
    text = b"aa\nxx\n\n" + b"\n" * (2 * context_lines - 2) + b"segf"
    (hit,) = feed(matcher((SEGV,), context_lines=context_lines), text, b"ault at 1f\n")
    assert hit.context[-1] == "xx"
