#!/usr/bin/env bash
# Set up a virtualenv and run the demo: every call policy under injected faults.
# Extra arguments go to the demo, e.g. `bash scripts/demo.sh --backend trio`.
source "$(dirname "$0")/_venv.sh"
install_project demo "reference"
exec "$PY" examples/demo.py "$@"
