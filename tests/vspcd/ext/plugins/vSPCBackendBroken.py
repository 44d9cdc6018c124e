"""vSPC.py spelling of a module that fails to import (a missing dependency)."""

import vspc_no_such_dependency  # noqa: F401
