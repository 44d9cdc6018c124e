"""Generate the man pages vspcd(8), vspc(1), vspc-tui(1), vspc-sim(1), vspc-web(1) and
vspcd.toml(5).

Usage: ``python3 packaging/manpages.py [--tree] OUTDIR`` (--tree: into OUTDIR/manN/, as
under /usr/share/man; with vspc importable: an installed
package, a venv, or ``PYTHONPATH`` at a build tree such as pybuild's).

Nothing here is written twice: options, their help and defaults come from the argparse
parsers the programs themselves build, `vspc`'s commands from its command table
(vspctui/cmdtable.py, the `commands` of vspctui/shell/commands.py), the keys of
vspcd.toml from vspcd's parser (every long option is a key), and vspc-tui's keys from
its key table.  Run by debian/rules, by packaging/vspc.spec and by tests/test_manpages.py,
which fails when a flag or command is missing from a page.

This is a build tool, outside the packages: it imports vspcd and vspctui both, which
neither package may do of the other (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where each parser comes from: the one place to adapt when a module is reorganised.
PARSERS: dict[str, tuple[str, str]] = {
    "vspcd": ("vspc.vspcd.service.config", "build_parser"),
    "vspc": ("vspc.vspctui.shell.cli", "build_parser"),
    "vspc-tui": ("vspc.vspctui.dashboard.app", "build_parser"),
    "vspc-sim": ("vspc.vspctui.sim.cli", "build_parser"),
    "vspc-web": ("vspc.vspctui.web.cli", "build_parser"),
}
COMMAND_TABLE = ("vspc.vspctui.shell.commands", "commands")
KEY_SECTIONS = ("vspc.vspctui.dashboard.keys", "help_sections")
FILE_KEYS = ("vspc.vspcd.service.config", "file_keys")  # () -> {key: Flag}
VERSION = ("vspc.vspcd", "__version__")


def _load(where: tuple[str, str]) -> Any:
    module, name = where
    return getattr(importlib.import_module(module), name)


def parser_for(prog: str) -> argparse.ArgumentParser:
    """The ArgumentParser program `prog` builds for itself."""
    build: Callable[[], argparse.ArgumentParser] = _load(PARSERS[prog])
    return build()


# ===================================================================== roff


def text(value: str) -> str:
    """Plain text as roff: backslashes, dashes and line-leading control characters made
    literal."""
    out = value.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.splitlines() or [""]:
        line = " ".join(line.split())
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _one_line(value: str) -> str:
    return text(" ".join(value.split()))


def _quoted(value: str) -> str:
    return '"' + _one_line(value).replace('"', "\\(dq") + '"'


def _metavar(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if action.nargs == 0:
        return ""
    default = action.dest.upper()
    return formatter._format_args(action, default)


def help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as `--help` shows it (%(default)s expanded, the program's own
    "(default: X)" added)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    formatter = parser._get_formatter()
    return formatter._expand_help(action)


def option_item(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    """One `.TP` item for an option or positional."""
    formatter = parser._get_formatter()
    metavar = _metavar(action, formatter)
    if action.option_strings:
        names = ", ".join(f"\\fB{_one_line(name)}\\fR" for name in action.option_strings)
        head = names + (f" \\fI{_one_line(metavar)}\\fR" if metavar else "")
    else:
        head = f"\\fI{_one_line(metavar or action.dest)}\\fR"
    lines = [".TP", head]
    body = help_of(parser, action)
    choices = getattr(action, "choices", None)
    if choices and not isinstance(choices, dict) and "{" not in metavar:
        body += f" (one of: {', '.join(str(c) for c in choices)})"
    lines.append(_one_line(body) if body else "\\&")
    return lines


def _visible(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)


def options_section(parser: argparse.ArgumentParser, title: str = "OPTIONS") -> list[str]:
    """Every argument of `parser`, in its groups."""
    lines = [f".SH {title}"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _visible(a)]
        if not actions:
            continue
        if group.title and group.title not in ("options", "optional arguments"):
            lines.append(f".SS {_quoted(group.title)}")
        if group.description:
            lines += [".PP", _one_line(group.description)]
        for action in actions:
            lines += option_item(parser, action)
    return lines


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    prog, _, rest = usage.partition(" ")
    return [".SH SYNOPSIS", ".nf", f"\\fB{_one_line(prog)}\\fR {text(rest)}", ".fi"]


@dataclass(frozen=True)
class Page:
    name: str
    section: int
    summary: str
    body: list[str]

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.section}"

    def render(self, version: str) -> str:
        manual = {1: "User Commands", 5: "File Formats", 8: "System Administration"}
        head = [
            f'.TH {_quoted(self.name.upper())} {self.section} "" '
            f"{_quoted('vspc ' + version)} {_quoted(manual[self.section])}",
            ".SH NAME",
            f"{text(self.name)} \\- {_one_line(self.summary)}",
        ]
        return "\n".join(head + self.body) + "\n"


def _paragraphs(value: str | None) -> list[str]:
    if not value:
        return []
    out: list[str] = []
    for para in value.split("\n\n"):
        if para.strip():
            out += [".PP", _one_line(para)]
    return out


def _see_also(*pages: str) -> list[str]:
    refs = [page.partition("(") for page in pages]
    return [".SH SEE ALSO", ",\n".join(f"\\fB{text(name)}\\fR({rest}" for name, _, rest in refs)]


def _files(entries: Iterable[tuple[str, str]]) -> list[str]:
    lines = [".SH FILES"]
    for path, what in entries:
        lines += [".TP", f"\\fI{text(path)}\\fR", _one_line(what)]
    return lines


# ===================================================================== the pages


def vspcd_page() -> Page:
    parser = parser_for("vspcd")
    body = synopsis(parser) + [".SH DESCRIPTION"] + _paragraphs(parser.description)
    body += options_section(parser)
    body += [".SH NOTES"] + _paragraphs(parser.epilog)
    body += _files([
        ("/etc/vspcd/vspcd.toml", "the configuration file, see vspcd.toml(5)"),
        ("/run/vspcd/vspcd.sock", "the admin socket of the packaged service"),
        ("/var/log/consoles", "console logs (--log-dir in the packaged configuration)"),
        ("/var/lib/vspcd", "state (--persist-file)"),
    ])  # fmt: skip
    body += _see_also("vspcd.toml(5)", "vspc(1)", "vspc-tui(1)", "vspc-sim(1)", "systemctl(1)")
    return Page("vspcd", 8, "virtual serial port concentrator for VMware ESXi", body)


def vspc_page() -> Page:
    parser = parser_for("vspc")
    table = _load(COMMAND_TABLE)
    body = synopsis(parser) + [".SH DESCRIPTION"] + _paragraphs(parser.description)
    body += options_section(parser, "GLOBAL OPTIONS")
    body += [".SH COMMANDS"]
    for command in table:
        if not command.cli:
            continue
        names = " | ".join([command.name, *command.aliases])
        body += [f".SS {_quoted('vspc ' + names)}", _one_line(command.help)]
        sub = command.parser(prog=f"vspc {command.name}")
        for action in sub._actions:
            if _visible(action) and not isinstance(action, argparse._HelpAction):
                body += option_item(sub, action)
    body += [".SH NOTES", ".nf"] + [text(line) for line in (parser.epilog or "").splitlines()]
    body += [".fi"]
    body += _see_also("vspcd(8)", "vspc-tui(1)")
    return Page("vspc", 1, "command-line client of vspcd", body)


def vspc_tui_page() -> Page:
    parser = parser_for("vspc-tui")
    body = synopsis(parser) + [".SH DESCRIPTION"] + _paragraphs(parser.description)
    body += options_section(parser)
    sections: list[tuple[str, list[tuple[str, str]]]] = _load(KEY_SECTIONS)()
    body += [".SH KEYS"]
    for title, rows in sections:
        body.append(f".SS {_quoted(title)}")
        for keys, what in rows:
            body += [".TP", f"\\fB{_one_line(keys)}\\fR", _one_line(what)]
    body += [".SH NOTES"] + _paragraphs(parser.epilog)
    body += _see_also("vspc(1)", "vspcd(8)")
    return Page("vspc-tui", 1, "dashboard of vspcd", body)


def vspc_sim_page() -> Page:
    parser = parser_for("vspc-sim")
    body = synopsis(parser) + [".SH DESCRIPTION"] + _paragraphs(parser.description)
    body += options_section(parser)
    if parser.epilog:
        body += [".SH NOTES"] + _paragraphs(parser.epilog)
    body += _see_also("vspcd(8)", "vspc(1)")
    return Page("vspc-sim", 1, "simulated ESXi VMs for testing a serial port concentrator", body)


def vspc_web_page() -> Page:
    parser = parser_for("vspc-web")
    body = synopsis(parser) + [".SH DESCRIPTION"] + _paragraphs(parser.description)
    body += _paragraphs(
        "A web server that shows the consoles of vspcd(8) in a browser, over the admin "
        "socket only. On a loopback address it prints a URL with a secret token; "
        "anywhere else it needs --cert and --key and a login method (--auth passwords, "
        "pam or proxy-header), and acts for each logged-in user through vspcd's "
        "delegates setting, with that user's access levels. Options may also be set in "
        "/etc/vspc/vspc-web.toml (keys are the long options, dashes as underscores)."
    )
    body += options_section(parser)
    body += [".SH FILES", ".TP", f"\\fB{text('/etc/vspc/vspc-web.toml')}\\fR"]
    body += [_one_line("the options, as TOML"), ".TP", f"\\fB{text('vspc-web.service')}\\fR"]
    body += [_one_line("the systemd unit (it runs as the user vspc-web)")]
    body += _see_also("vspcd(8)", "vspc(1)", "vspcd.toml(5)")
    return Page("vspc-web", 1, "vspcd's consoles in a browser", body)


def file_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """vspcd's configuration keys and the option each stands for, as vspcd reads them."""
    # The flag table gives each key its flag; the parser (built from the same table)
    # gives the action whose help and metavar the page prints.
    flags: dict[str, Any] = _load(FILE_KEYS)()
    by_option = {option: action for action in parser._actions for option in action.option_strings}
    return {key: by_option[flag.options[0]] for key, flag in flags.items()}


def vspcd_toml_page() -> Page:
    parser = parser_for("vspcd")
    body = [
        ".SH SYNOPSIS",
        "/etc/vspcd/vspcd.toml",
        ".SH DESCRIPTION",
        _one_line(
            "The configuration file of vspcd(8), in TOML. Every long option of vspcd is a "
            "key, its dashes written as underscores (--client-limit 4 is client_limit = 4). "
            "A flag on the command line wins over the file. Switches take true or false, "
            "lists take TOML arrays, file modes are quoted octal strings. "
            "vspcd --check-config validates the file; SIGHUP (systemctl reload vspcd) "
            "re-reads it and logs what changed and what needs a restart. "
            "vspc(1) and vspc-tui(1) read admin_socket from it too."
        ),
        ".SH KEYS",
    ]
    formatter = parser._get_formatter()
    for key, action in sorted(file_keys(parser).items()):
        value = "true | false" if action.nargs == 0 else _metavar(action, formatter)
        flag = next(n for n in action.option_strings if n.startswith("--"))
        body += [".TP", f"\\fB{text(key)}\\fR = \\fI{_one_line(value)}\\fR"]
        body.append(_one_line(f"{help_of(parser, action)} (as {flag})"))
    body += [".SH EXAMPLE", ".nf"]
    body += [
        text(line)
        for line in ('admin_socket_group = "vspcd"', "proxy_port = 13370", "client_limit = 4",
                     'log_dir = "/var/log/consoles"', 'log_mode = "0600"')
    ]  # fmt: skip
    body += [".fi"]
    body += _see_also("vspcd(8)", "vspc(1)")
    return Page("vspcd.toml", 5, "configuration file of vspcd", body)


PAGES: tuple[Callable[[], Page], ...] = (
    vspcd_page,
    vspc_page,
    vspc_tui_page,
    vspc_sim_page,
    vspc_web_page,
    vspcd_toml_page,
)


def write_pages(outdir: Path, *, tree: bool = False) -> list[Path]:
    """Write every page into `outdir` (`tree`: into its manN/); returns their paths."""
    version: str = _load(VERSION)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for make in PAGES:
        page = make()
        path = (outdir / f"man{page.section}" if tree else outdir) / page.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page.render(version), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    tree = "--tree" in args
    args = [arg for arg in args if arg != "--tree"]
    if len(args) != 1:
        sys.stderr.write("usage: python3 packaging/manpages.py [--tree] OUTDIR\n")
        return 2
    for path in write_pages(Path(args[0]), tree=tree):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
