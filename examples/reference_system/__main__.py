"""``python -m reference_system`` (from examples/) or ``python examples/reference_system``."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a directory: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_system.core.runner import main

if __name__ == "__main__":
    sys.exit(main())
