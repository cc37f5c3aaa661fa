# Sourced by the other scripts: make sure .venv exists and has the project installed.
# Progress goes to stderr, so a script that sources this one keeps a clean stdout.
# Only python3 (>= 3.10) is needed on the machine; everything else comes from PyPI, at the
# versions pinned in requirements/constraints.txt (refresh it with `bash scripts/lock.sh`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
LOCK=requirements/constraints.txt
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the virtual environment $VENV" >&2
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# What an install of `extras` + `groups` stands on: when none of it changed, a second run
# installs nothing (the project itself is installed editable, so source edits need no step).
_install_stamp() {
    local digest
    digest=$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)
    echo "$VENV/.installed-$1-$digest"
}

# install_project PROFILE EXTRAS [GROUP ...]
#   PROFILE names the set (a later run with the same set and the same files skips pip);
#   EXTRAS is the comma-separated extras of the project, e.g. "reference" or "";
#   each GROUP is a PEP 735 dependency group from pyproject.toml, e.g. "dev".
# A profile also counts as installed when a wider one is: demo < dev < bench.
install_project() {
    local profile="$1" extras="$2"
    shift 2
    local stamp wider
    stamp=$(_install_stamp "$profile")
    case "$profile" in
        demo) wider="dev bench" ;;
        dev) wider="bench" ;;
        *) wider="" ;;
    esac
    for candidate in "$profile" $wider; do
        if [ -f "$(_install_stamp "$candidate")" ]; then return 0; fi
    done
    local started=$SECONDS
    echo "installing the project ($profile) into $VENV, from $LOCK; first run only" >&2
    local pip_pin
    pip_pin=$(grep -E '^pip==' "$LOCK" | cut -d' ' -f1)
    "$PY" -m pip install --quiet --disable-pip-version-check "$pip_pin" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    local args=(-c "$LOCK" -e ".${extras:+[$extras]}")
    local group
    for group in "$@"; do args+=(--group "$group"); done
    # pip's own lines, one per package, so that a first run shows where it is.
    "$PY" -m pip install --disable-pip-version-check --progress-bar off "${args[@]}" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" \
        | grep -E "^(Collecting|Successfully installed|ERROR|error)" \
        | sed -e 's/^Collecting /  collecting /' -e 's/ (from .*//' >&2 || true
    "$PY" -c "import resilience_kit" # fail loudly if the install did not work
    rm -f "$VENV"/.installed-"$profile"-*
    touch "$stamp"
    echo "installed in $(( SECONDS - started )) s" >&2
}
