"""Sans-IO protocol code shared by vspcd, the operator tools and the tests.

Imports nothing from the rest of the project and does no I/O: no asyncio, no logging,
no clock.  Installed as `vspc.common` (see pyproject.toml for why not `common`).
"""
