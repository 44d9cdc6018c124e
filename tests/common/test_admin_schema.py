"""The admin package keeps its public API, and `COMMANDS` is enough to build a CLI.

common/admin/ is a package (one module per concern; it was one module).
`vspc.common.admin` must still export every name it exported before, as the same
objects, and its modules may import only the modules listed above them.  The
command table carries each field's type, default, help, choices, placeholder and
short option, so a command-line client derives its arguments from it.  The last
tests do that with argparse and send the result through the daemon's validator.
"""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vspc.common.admin as admin
from vspc.common.admin import (
    COMMANDS,
    MAX_REPLAY,
    CommandSpec,
    FieldKind,
    FieldSpec,
    LockMode,
    validate_request,
)

# `vspc.common.admin.__all__` as of 669813c, before the split.
BEFORE_SPLIT = {
    "COMMANDS", "MAX_ID_LENGTH", "MAX_LINE", "MAX_REASON", "MAX_REPLAY", "PROTOCOL_VERSION",
    "Access", "AdminError", "AttachGrant", "ClientInfo", "ClientKind", "CommandSpec",
    "ConsoleInfo", "ErrorCode", "Event", "EventName", "FieldKind", "FieldSpec", "Hello",
    "LineFramer", "LockMode", "Request", "RequestId", "TailChunk", "VMotionPhase",
    "decode_bytes", "decode_message", "encode_bytes", "encode_message", "failed", "is_event",
    "is_reply", "ok", "optional_bool", "optional_enum", "optional_int", "optional_str",
    "parse_request", "raise_for_reply", "require_int", "require_str", "required_access",
    "validate_request",
}  # fmt: skip
# The package's modules, each allowed to import only those before it.
LAYERS = ("errors", "enums", "messages", "framing", "validate", "commands", "infos")
PACKAGE = Path(admin.__file__).parent


def test_all_is_a_superset_of_the_names_before_the_split() -> None:
    assert set(admin.__all__) >= BEFORE_SPLIT
    assert len(admin.__all__) == len(set(admin.__all__))
    for name in admin.__all__:
        assert hasattr(admin, name), name


def test_every_module_is_listed_and_declares_all() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)
    exported = set()
    for name in LAYERS:
        module = importlib.import_module(f"vspc.common.admin.{name}")
        for public in module.__all__:
            assert hasattr(module, public), (name, public)
        exported |= {n for n in module.__all__ if n in admin.__all__}
        for public in set(module.__all__) & set(admin.__all__):
            assert getattr(admin, public) is getattr(module, public), public  # one object
    assert exported == set(admin.__all__)


@pytest.mark.parametrize("index", range(len(LAYERS)))
def test_modules_import_only_the_layers_below(index: int) -> None:
    name = LAYERS[index]
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    ours: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vspc."):
            if node.module == "vspc.common.admin":  # `from vspc.common.admin import validate`
                ours |= {alias.name for alias in node.names}
            else:
                ours.add(node.module.rsplit(".", 1)[-1])
    assert ours <= set(LAYERS[:index]), (name, ours)


# --- what a command-line client reads from the table -------------------------------------


def test_tail_and_attach_defaults_come_from_the_table() -> None:
    # The values vspctui once restated by hand, now derived from the table.
    tail = {f.name: f for f in COMMANDS["tail"].fields}
    attach = {f.name: f for f in COMMANDS["attach"].fields}
    assert tail["bytes"].default == 4096 and tail["bytes"].short == "-n"
    assert tail["bytes"].help_with_default == "bytes of scrollback to return (default 4096)"
    assert attach["replay"].default == 0 and attach["replay"].placeholder == "N"
    assert attach["lock"].help_with_default == "lock mode (default free_for_all_or_readonly)"
    assert attach["lock"].choice_values == tuple(mode.value for mode in LockMode)
    assert attach["readonly"].help_with_default == attach["readonly"].help  # False: no note
    assert attach["vm"].placeholder == "vm" and tail["follow"].placeholder == "FOLLOW"


@pytest.mark.parametrize(
    ("kind", "choices", "expected"),
    [
        (FieldKind.STR, None, str),
        (FieldKind.INT, None, int),
        (FieldKind.BOOL, None, bool),
        (FieldKind.ENUM, LockMode, LockMode),
    ],
)
def test_python_type(kind: FieldKind, choices: type[LockMode] | None, expected: type) -> None:
    assert FieldSpec("x", kind, "x", choices=choices).python_type is expected


def test_convert_checks_as_the_daemon_does() -> None:
    replay = {f.name: f for f in COMMANDS["attach"].fields}["replay"]
    assert replay.convert("17") == 17
    with pytest.raises(ValueError, match="not an integer: '1e3'"):
        replay.convert("1e3")
    with pytest.raises(ValueError, match=f"field 'replay' must be >= 0 and <= {MAX_REPLAY}"):
        replay.convert(str(MAX_REPLAY + 1))
    lock = {f.name: f for f in COMMANDS["attach"].fields}["lock"]
    assert lock.convert("write") is LockMode.WRITE
    with pytest.raises(ValueError, match="must be one of: exclusive, write"):
        lock.convert("mine")
    follow = {f.name: f for f in COMMANDS["tail"].fields}["follow"]
    assert [follow.convert(w) for w in ("yes", "On", "1", "false", "no", "0")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="not true or false"):
        follow.convert("maybe")
    vm = COMMANDS["show"].fields[0]
    assert vm.convert("db01") == "db01"
    with pytest.raises(ValueError, match="must not be empty"):
        vm.convert("")


@settings(max_examples=100, deadline=None)
@given(st.integers(-(1 << 22), 1 << 22))
def test_convert_accepts_exactly_what_validate_request_accepts(n: int) -> None:
    field = {f.name: f for f in COMMANDS["tail"].fields}["bytes"]
    try:
        wire = validate_request({"cmd": "tail", "vm": "x", "bytes": n}).fields["bytes"]
    except admin.AdminError as exc:
        with pytest.raises(ValueError, match=exc.message):
            field.convert(str(n))
    else:
        assert field.convert(str(n)) == wire


def _argument_type(spec: FieldSpec) -> Any:
    def convert(text: str) -> Any:
        try:
            return spec.convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parser_for(command: CommandSpec) -> argparse.ArgumentParser:
    """What a CLI derives from one table entry: nothing restated by hand."""
    parser = argparse.ArgumentParser(prog=command.name, description=command.help)
    for spec in command.fields:
        help_text = spec.help_with_default
        if spec.required:
            parser.add_argument(spec.name, type=_argument_type(spec), help=help_text)
            continue
        names = [f"--{spec.name}", *([spec.short] if spec.short else [])]
        if spec.kind is FieldKind.BOOL:
            parser.add_argument(*names, action="store_true", help=help_text)
        else:
            parser.add_argument(
                *names,
                type=_argument_type(spec),
                default=spec.default,
                choices=[spec.convert(v) for v in spec.choice_values] or None,
                metavar=spec.placeholder,
                help=help_text,
            )
    return parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_derives_a_parser_whose_defaults_the_daemon_accepts(name: str) -> None:
    command = COMMANDS[name]
    parser = parser_for(command)
    argv = [
        f"{f.name}-value" if f.kind is FieldKind.STR else "1" for f in command.fields if f.required
    ]
    if command.exactly_one:
        argv += [f"--{command.exactly_one[0]}", "db01"]  # clear: vm or port
    request = {
        "cmd": name,
        **{k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None},
    }
    assert validate_request(request).cmd == name
    assert command.help in parser.format_help()


def test_derived_tail_parser_reads_short_options_and_defaults() -> None:
    parser = parser_for(COMMANDS["tail"])
    assert vars(parser.parse_args(["db01"])) == {"vm": "db01", "bytes": 4096, "follow": False}
    assert vars(parser.parse_args(["db01", "-n", "10", "-f"])) == {
        "vm": "db01",
        "bytes": 10,
        "follow": True,
    }
    usage = parser.format_help()
    assert "-n N, --bytes N" in usage or "--bytes N, -n N" in usage
    assert "(default 4096)" in usage


def test_derived_attach_parser_refuses_a_bad_lock_with_the_daemon_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser_for(COMMANDS["attach"]).parse_args(["db01", "--lock", "mine"])
    assert "must be one of: exclusive, write, free_for_all" in capsys.readouterr().err
