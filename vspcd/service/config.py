"""vspcd's configuration, as the rest of the service sees it (docs/operations.md §3).

The pieces: vspcd/service/flags.py (every flag as one table of data),
vspcd/service/cli.py (argparse built from the table; `parse_args`, `reload_config` and
the checks of values together), vspcd/service/configfile.py (the TOML file),
vspcd/service/compat.py (vSPC.py's backend spellings and environment variables) and
vspcd/service/configdata.py (the frozen `Config` record).  This module gathers their
public names so callers import one place.
"""

from __future__ import annotations

from vspc.vspcd.service.cli import build_parser, parse_args, reload_config
from vspc.vspcd.service.compat import BACKENDS
from vspc.vspcd.service.configdata import Config, ConfigError, LogTarget, default_admin_socket
from vspc.vspcd.service.configfile import file_keys, read_config_file

__all__ = [
    "BACKENDS",
    "Config",
    "ConfigError",
    "LogTarget",
    "build_parser",
    "default_admin_socket",
    "file_keys",
    "parse_args",
    "read_config_file",
    "reload_config",
]
