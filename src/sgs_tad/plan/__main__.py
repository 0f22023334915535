"""``python -m sgs_tad.plan``."""

import sys

from sgs_tad.plan.cli import main

if __name__ == "__main__":
    sys.exit(main())
