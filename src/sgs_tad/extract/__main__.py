"""``python -m sgs_tad.extract``."""

import sys

from sgs_tad.extract.cli import main

if __name__ == "__main__":
    sys.exit(main())
