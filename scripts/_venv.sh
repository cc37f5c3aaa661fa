# Sourced by the other scripts: make sure .venv exists and has the project installed.
# Only python3 (>= 3.10) is needed on the machine; everything else comes from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
install_project() {
    # $1: the extras to install, e.g. "dev,docs"
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[$1]" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    "$PY" -c "import resilience_kit" # fail loudly if the install did not work
}
