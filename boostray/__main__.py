"""`python -m boostray ...` is the `boostray` command."""

import sys

from boostray.cli import main

if __name__ == "__main__":
    sys.exit(main())
