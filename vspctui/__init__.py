"""Operator tools for vspcd: the `vspc` command-line client and the urwid dashboard."""
