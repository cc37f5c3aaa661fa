"""``python -m resilience_kit``: the ``resilience-kit`` command line."""

import sys

from resilience_kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
