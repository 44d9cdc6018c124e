"""`python -m vspc.vspcd`: the same entry point as the `vspcd` console script."""

import sys

from vspc.vspcd.service.main import main

if __name__ == "__main__":
    sys.exit(main())
