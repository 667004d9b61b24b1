"""``python -m xbatch``: the ``xbatch`` command (see :mod:`xbatch.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
