#!/usr/bin/env bash
# Set up a virtualenv and run the whole test suite (unit, property, docs, examples) with
# coverage of src/ (at least 90%). Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
install_project "dev,docs,reference"
# coverage starts before pytest (not pytest-cov): our own pytest11 plugin imports the
# package while pytest starts, and those lines must be measured too.
"$PY" -m coverage erase
"$PY" -m coverage run -m pytest "$@"
"$PY" -m coverage report --fail-under=90
