#!/usr/bin/env bash
# Build the wheel and sdist, check their metadata with twine, then install the built wheel
# (not the source tree) into a fresh virtual environment, once without extras and once per
# extra, and smoke-test each: a file missing from the wheel fails here.
source "$(dirname "$0")/_venv.sh"
install_project dev "postgres,redis,kafka,jwt,reference" dev
root=$PWD
dist=$(mktemp -d)
trap 'rm -rf "$dist"' EXIT
"$PY" -m build --quiet --outdir "$dist" . >/dev/null
"$PY" -m twine check --strict "$dist"/*
wheel=$(ls "$dist"/*.whl)
# The published metadata offers exactly the extras a user installs, no tooling.
extras=$(unzip -p "$wheel" '*.dist-info/METADATA' | sed -n 's/^Provides-Extra: //p' | sort | tr '\n' ' ')
if [ "$extras" != "jwt kafka postgres redis reference " ]; then
    echo "unexpected extras in the wheel's metadata: $extras" >&2
    exit 1
fi
for extra in none postgres redis kafka jwt reference; do
    echo "wheel + ${extra}:"
    venv="$dist/venv-$extra"
    python3 -m venv "$venv"
    spec="$wheel"
    if [ "$extra" != none ]; then spec="$wheel[$extra]"; fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$LOCK" "$spec" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" || true
    # From outside the source tree, so `import resilience_kit` can only find the wheel.
    (cd "$dist" && "$venv/bin/python" "$root/scripts/smoke_wheel.py" "$extra")
done
