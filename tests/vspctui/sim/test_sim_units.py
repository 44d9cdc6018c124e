"""vspc-sim's sans-IO parts (docs/vspc-sim.md): markers, the guest shell, VM files, ports."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vspc.vspctui.sim.cli import parse_ports
from vspc.vspctui.sim.commands import run_command
from vspc.vspctui.sim.guest import MarkerSource, Shell, ShellState
from vspc.vspctui.sim.identity import Identity, IdentityError, generate, read_file
from vspc.vspctui.sim.markers import MarkerChecker, marker, span_bytes


def stream_of(numbers: list[int], stream: str = "c1") -> bytes:
    return b"noise\r\n".join(marker(stream, n) for n in numbers)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200)
@given(count=st.integers(0, 60), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_an_exact_stream_is_clean_however_it_is_chunked(count: int, cuts: list[int]) -> None:
    checker = MarkerChecker()
    for piece in chunked(stream_of(list(range(count))), cuts):
        checker.feed(piece)
    checker.finish({"c1": count})
    assert checker.totals() == {
        "received": count,
        "repeated": 0,
        "lost": 0,
        "repeated_bytes": 0,
        "lost_bytes": 0,
    }


@settings(max_examples=200)
@given(
    numbers=st.lists(st.integers(0, 200), max_size=80),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_every_marker_counts_once_as_received_or_repeated(
    numbers: list[int], cuts: list[int]
) -> None:
    checker = MarkerChecker()
    for piece in chunked(stream_of(numbers), cuts):
        checker.feed(piece)
    sent = max(numbers, default=-1) + 1
    checker.finish({"c1": sent})
    totals = checker.totals()
    assert totals["received"] + totals["repeated"] == len(numbers)
    # What was never received in order is lost: sent = received + lost.
    assert totals["received"] + totals["lost"] == sent


@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_checker(data: bytes) -> None:
    checker = MarkerChecker(from_first=True)
    checker.feed(data)
    checker.finish({})


def test_loss_and_repeat_bytes_are_the_markers_lengths() -> None:
    checker = MarkerChecker()
    checker.feed(stream_of([0, 1, 1, 4]))
    checker.finish({"c1": 7})
    tally = checker.streams["c1"]
    assert (tally.received, tally.repeated, tally.lost) == (3, 1, 4)
    assert tally.repeated_bytes == len(marker("c1", 1))
    assert tally.lost_bytes == sum(len(marker("c1", n)) for n in (2, 3, 5, 6))
    assert span_bytes("ab", 5, 1234) == sum(len(marker("ab", n)) for n in range(5, 1234))


def test_a_stream_joined_late_is_checked_from_its_first_marker() -> None:
    checker = MarkerChecker(from_first=True)
    checker.feed(stream_of([40, 41, 43], "v0"))
    checker.finish({"v0": 44, "v9": 10})  # v9 was never seen: no claim about it
    assert checker.totals()["lost"] == 1
    strict = MarkerChecker()
    strict.finish({"c3": 2})  # typed, never arrived: lost whole
    assert strict.totals()["lost"] == 2


def test_markers_refuse_unsafe_stream_names() -> None:
    with pytest.raises(ValueError):
        marker("a b", 1)
    with pytest.raises(ValueError):
        marker("ok", -1)


def test_marker_source_numbers_its_lines() -> None:
    source = MarkerSource("v3")
    assert source.line().startswith(b"<v3:0> ")
    assert source.line().startswith(b"<v3:1> ") and source.sent == 2


def test_shell_logs_in_runs_commands_and_logs_out() -> None:
    shell = Shell("db01")
    assert shell.banner().endswith(b"db01 login: ")
    assert shell.feed(b"\r\n") == b"\r\ndb01 login: "  # Enter alone: the prompt again
    assert shell.feed(b"root\r\n") == b"root\r\nPassword: "
    assert shell.feed(b"secret\r\x00") == b"\r\nWelcome to db01 (vspc-sim).\r\nroot@db01:~$ "
    assert shell.state is ShellState.SHELL
    assert shell.feed(b"echo hi  there\r") == b"echo hi  there\r\nhi there\r\nroot@db01:~$ "
    assert shell.feed(b"ecx\x7fho ok\n") == b"ecx\b \bho ok\r\nok\r\nroot@db01:~$ "
    assert b"command not found" in shell.feed(b"reboot\r")
    assert shell.feed(b"seq 3\r").startswith(b"seq 3\r\n1\r\n2\r\n3\r\n")
    assert shell.feed(b"exit\r").endswith(b"db01 login: ")
    assert shell.state is ShellState.LOGIN


@given(data=st.binary(max_size=200))
def test_the_shell_takes_any_bytes(data: bytes) -> None:
    Shell("x").feed(data)


def test_generated_identities_are_unique_per_tag() -> None:
    one, two = generate(3, tag=1), generate(3, tag=2)
    assert [i.name for i in one] == ["sim-00000", "sim-00001", "sim-00002"]
    assert len({i.uuid for i in one + two}) == 6
    assert generate(1, start=7)[0].name == "sim-00007"
    two_ports = generate(2, ports=2)
    assert [(i.name, i.label) for i in two_ports] == [
        ("sim-00000", "console1"),
        ("sim-00000", "console2"),
        ("sim-00001", "console1"),
        ("sim-00001", "console2"),
    ]
    assert two_ports[0].uuid == two_ports[1].uuid != two_ports[2].uuid
    with pytest.raises(ValueError):
        generate(1, ports=0)


def test_vm_file_names_uuids_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "vms"
    path.write_text(
        "# name uuid label\n"
        "db01 01234567-89ab-cdef-fedc-ba9800000000\n"
        "web02 - \n"
        "web02b 01234567-89AB-cdef-fedc-ba9800000000 console2  # a second port\n"
    )
    vms = read_file(path)
    assert vms[0] == Identity("db01", "0123456789abcdeffedcba9800000000")
    assert vms[1].name == "web02" and len(vms[1].uuid) == 32
    assert vms[2].label == "console2" and vms[2].service_uri == "vSPC.py?port=console2"
    assert vms[0].service_uri == "vSPC.py"


@pytest.mark.parametrize(
    ("text", "error"),
    [("a not-a-uuid\n", "bad VM-VC-UUID"), ("a - x y\n", "expected NAME"), ("a - x\nb - x\n", "")],
)
def test_bad_vm_files_name_the_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "vms"
    path.write_text(text.replace("- x\nb - x", "0" * 32 + " x\nb " + "0" * 32 + " x"))
    with pytest.raises(IdentityError, match=f"{path}:\\d+: {error}"):
        read_file(path)


def test_port_lists() -> None:
    assert parse_ports("7000-7002,7010") == [7000, 7001, 7002, 7010]
    for bad in ("7002-7000", "0", "x", "70000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_command_lines_may_carry_comments() -> None:
    # docs/vspc-sim.md shows prompt commands annotated with `# ...`: pasted as they
    # are, a comment is neither a command nor an argument.
    out = io.StringIO()
    assert asyncio.run(run_command(None, "# the VMs, then a vMotion", out))  # type: ignore[arg-type]
    assert asyncio.run(run_command(None, "help   # what there is", out))  # type: ignore[arg-type]
    assert "unknown command" not in out.getvalue() and "vmotion" in out.getvalue()
