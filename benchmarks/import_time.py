"""How long does importing resilience-kit take, next to tenacity and stamina?

Each statement runs in a fresh interpreter under ``python -X importtime``; its cost is
the cumulative time of the modules it imported that a bare interpreter had not (so
``site`` and the start-up modules are left out for every library alike). The best of
``--runs`` runs (7 by default) is reported, in milliseconds, with its ratio to
``import tenacity``. A peer that is not installed is skipped with a message (the
``bench`` extra installs both).

The child processes may write bytecode even when ``PYTHONDONTWRITEBYTECODE`` is set
here, and each statement runs once unmeasured first: an installed package has its
``.pyc`` files, and compiling an editable checkout's sources on every run would count
the compiler, not the imports, against resilience-kit alone.

    python benchmarks/import_time.py
    python benchmarks/import_time.py --runs 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys

STATEMENTS = (
    ("resilience_kit", "import resilience_kit"),
    ("resilience_kit", "from resilience_kit import RetryPolicy"),
    ("resilience_kit", "from resilience_kit import CircuitBreaker, Pipeline, RetryPolicy"),
    ("resilience_kit", "from resilience_kit import Outbox"),
    ("tenacity", "import tenacity"),
    ("stamina", "import stamina"),
)
REFERENCE = "import tenacity"


def importtime(code: str) -> list[tuple[str, int]]:
    """The top-level imports of a fresh interpreter running ``code``: (module, cumulative µs)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    found = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # one space after the bar: not nested in another import
            found.append((name.strip(), int(cumulative)))
    return found


def cost_ms(code: str, startup: set[str]) -> float:
    """Milliseconds spent importing what ``code`` imports beyond a bare interpreter."""
    return sum(us for name, us in importtime(code) if name not in startup) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per statement")
    args = parser.parse_args()

    startup = {name for name, _ in importtime("pass")}
    best: dict[str, float] = {}
    for package, code in STATEMENTS:
        if importlib.util.find_spec(package) is None:
            print(f"skipped: {package} is not installed (pip install {package})", file=sys.stderr)
            continue
        importtime(code)  # writes the bytecode the measured runs read
        best[code] = min(cost_ms(code, startup) for _ in range(args.runs))

    print(f"Python {platform.python_version()}, best of {args.runs} fresh processes\n")
    print("| statement | ms | ratio to `import tenacity` |")
    print("|---|---:|---:|")
    reference = best.get(REFERENCE)
    for code, ms in best.items():
        ratio = f"{ms / reference:.2f}" if reference else "-"
        print(f"| `{code}` | {ms:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
