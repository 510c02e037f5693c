"""``python -m autodim``: the ``autodim`` command."""

import sys

from autodim.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
