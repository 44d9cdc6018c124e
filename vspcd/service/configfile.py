"""The TOML configuration file (docs/operations.md §3a).

Every flag of vspcd/service/flags.py with a `Flag.key` is a key: the first long option
with '_' for '-' (``--client-limit 4`` is ``client_limit = 4``).  Switches take
booleans, file modes a quoted octal string, lists a TOML array or a comma-separated
string, everything else the text the flag would take (or a number).  Values go through
the flag's own converter, so a file and a command line accept the same things and
fail with the same reasons.

`read_config_file` reports every bad key of a file, one line each, naming the file, the
key and the reason: ``/etc/vspcd/vspcd.toml: key 'porrt': unknown key``.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from vspc.common.convert import octal_mode
from vspc.vspcd.faces.admin.policy import AccessConfigError, parse_access
from vspc.vspcd.history.alerts import AlertConfigError, parse_alerts
from vspc.vspcd.service.configdata import ConfigError
from vspc.vspcd.service.flags import FLAGS, Flag, Kind

__all__ = ["convert_value", "file_keys", "read_config_file"]


def file_keys() -> dict[str, Flag]:
    """Every configuration-file key and the flag it stands for."""
    return {flag.key: flag for flag in FLAGS if flag.key is not None}


def _toml_repr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def convert_value(flag: Flag, value: object) -> object:
    """A TOML value as the flag's parsed value; ValueError says why it is bad."""
    if flag.kind in (Kind.SWITCH, Kind.TOGGLE):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_repr(value)}")
        if flag.kind is Kind.TOGGLE:
            return value
        return flag.const if value else flag.default
    if flag.kind is Kind.OPTIONAL and isinstance(value, bool):
        # An option whose value is optional (--metrics): true is the bare flag.
        return flag.const if value else flag.default
    if isinstance(value, list):
        # Lists such as allow lists may be TOML arrays; the option takes them
        # comma-separated, as on the command line.
        if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in value):
            raise ValueError("expected an array of strings")
        value = ",".join(str(item) for item in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string or a number, got {_toml_repr(value)}")
    if flag.convert is octal_mode and not isinstance(value, str):
        # TOML's 0o660 and 432 are the same integer; only a string says "octal".
        raise ValueError(f'write file modes as a quoted octal string, e.g. "0660", not {value}')
    text = value if isinstance(value, str) else str(value)
    return text if flag.convert is None else flag.convert(text)


def read_config_file(path: Path) -> dict[str, object]:
    """The values (by `Flag.dest`) a configuration file sets.

    Raises:
        ConfigError: the file cannot be read or parsed (one line), or has bad keys
            (one line per key).
    """
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    keys = file_keys()
    values: dict[str, object] = {}
    problems: list[str] = []
    # Per-console access rules have no flag: a table is no command-line value.
    access: dict[str, object] = {
        key: table.pop(key) for key in ("access_default", "access", "delegates") if key in table
    }
    if access:
        try:
            values["access_policy"] = parse_access(access)
        except AccessConfigError as exc:
            problems.extend(f"{path}: {error}" for error in exc.errors)
    # Console alert rules ([[alert]]) have no flag either.
    if "alert" in table:
        try:
            values["alert_rules"] = parse_alerts({"alert": table.pop("alert")})
        except AlertConfigError as exc:
            problems.extend(f"{path}: {error}" for error in exc.errors)
    for key, value in table.items():
        flag = keys.get(key)
        if flag is None:
            close = difflib.get_close_matches(key.replace("-", "_"), keys, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see vspcd --help"
            problems.append(
                f"{path}: key {key!r}: unknown key (keys are the long options with '_' "
                f"for '-'; {hint})"
            )
            continue
        try:
            values[flag.dest] = convert_value(flag, value)
        except ValueError as exc:
            problems.append(f"{path}: key {key!r}: {exc}")
    if problems:
        raise ConfigError(*problems)
    return values
