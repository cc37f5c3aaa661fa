#!/usr/bin/env bash
# Refresh requirements/constraints.txt, the lock that every development install uses: the
# newest versions that satisfy pyproject.toml's extras and dependency groups, for every
# Python and platform the project supports. Review the diff, run `bash .ci/run`, commit.
source "$(dirname "$0")/_venv.sh"
"$PY" -m pip install --quiet --disable-pip-version-check "uv>=0.9"
"$VENV/bin/uv" pip compile pyproject.toml --all-extras --group dev --group bench \
    --universal --python-version 3.10 --quiet -o "$LOCK"
echo "wrote $LOCK"
