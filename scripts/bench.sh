#!/usr/bin/env bash
# Set up a virtualenv with the peer libraries (the `bench` dependency group) and run a
# benchmark: `bash scripts/bench.sh benchmarks/run.py --fast`. See docs/benchmarks.md.
source "$(dirname "$0")/_venv.sh"
install_project bench "postgres,redis,kafka,jwt,reference" dev bench
exec "$PY" "$@"
