#!/usr/bin/env bash
# Set up a virtualenv and run the reference system's failure drills in virtual time.
# Extra arguments go to the drill runner, e.g. `bash scripts/demo.sh --seed 3 --backend trio`
# (see `--help`). `bash scripts/demo.sh --primitives` runs the older demo instead: every
# call policy under injected faults (`examples/demo.py`).
source "$(dirname "$0")/_venv.sh"
install_project demo "reference"
if [ "${1:-}" = "--primitives" ]; then
    shift
    exec "$PY" examples/demo.py "$@"
fi
PYTHONPATH="examples${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m reference_system "$@"
