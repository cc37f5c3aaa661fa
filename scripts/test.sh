#!/usr/bin/env bash
# Set up a virtualenv and run the whole test suite (unit, property, docs, examples) with
# coverage of src/ (at least 90%). Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
install_project "dev,docs"
exec "$PY" -m pytest --cov=resilience_kit --cov-branch --cov-report=term-missing:skip-covered \
    --cov-fail-under=90 "$@"
