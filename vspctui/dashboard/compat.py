"""urwid across the versions vspc-tui runs on: Debian 12's python3-urwid (2.1) and PyPI's (2.6+).

`Wrap` is the base of every widget wrapper here: urwid 2.6+ types `WidgetWrap` as a
generic, which 2.1 cannot subscript at import.  `RawScreen` is the terminal screen,
`urwid.display.raw` from 2.4 on and `urwid.raw_display` before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import urwid

try:  # urwid >= 2.4
    from urwid.display.raw import Screen as RawScreen
except ImportError:  # urwid 2.1 (Debian 12's python3-urwid)
    from urwid.raw_display import Screen as RawScreen  # type: ignore[import-not-found,no-redef]

if TYPE_CHECKING:
    Wrap = urwid.WidgetWrap[urwid.Widget]
else:
    Wrap = urwid.WidgetWrap

__all__ = ["RawScreen", "Wrap"]
