"""The drill runner's command line: ``python -m reference_system [options]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio

from .drill import Drill, Report, registry, run_drill
from .mitigations import KNOWN

BASELINE = "baseline"
"""The run before the drills: every service together, a mixed workload, no fault."""

COLUMNS = (
    ("#", lambda r: str(r.drill.number)),
    ("drill", lambda r: r.drill.name),
    ("served", lambda r: str(r.result.served)),
    ("degr.", lambda r: str(r.result.degraded)),
    ("rej.", lambda r: str(r.result.rejected)),
    ("failed", lambda r: str(r.result.failed)),
    ("wrong", lambda r: str(r.result.wrongly_allowed)),
    ("lost", lambda r: str(r.result.events_lost)),
    ("dup.", lambda r: str(r.result.duplicate_effects)),
    ("dlq", lambda r: str(r.result.dead_lettered)),
    ("dep.calls", lambda r: str(r.result.dependency_calls)),
    ("recover", lambda r: _seconds(r.result.time_to_recover)),
    ("result", lambda r: "PASS" if r.result.passed else "FAIL"),
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reference_system",
        description="Run the reference system's failure drills in virtual time.",
    )
    parser.add_argument(
        "--drill",
        action="append",
        default=[],
        metavar="NAME",
        help="run this drill (repeatable); default: all",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the JSON report here")
    parser.add_argument(
        "--without-mitigation",
        action="append",
        default=[],
        metavar="NAME",
        choices=sorted(KNOWN),
        help="switch a mitigation off (repeatable)",
    )
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not run the baseline (number 0: every service, mixed workload, no fault) "
        "first; it is skipped anyway when a mitigation is switched off",
    )
    parser.add_argument("--list", action="store_true", help="list the drills and mitigations")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    return parser.parse_args(argv)


def table(reports: Sequence[Report]) -> str:
    """The aligned plain-text table of drill results."""
    rows = [[title for title, _ in COLUMNS]]
    rows += [[cell(report) for _, cell in COLUMNS] for report in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            value.ljust(width) if i == 1 else value.rjust(width)
            for i, (value, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def listing(drills: dict[str, Drill]) -> str:
    lines = ["Drills:"]
    for drill in drills.values():
        lines.append(f"  {drill.number:>2}  {drill.name:<26} {drill.scenario}")
        lines.append(f"      fault: {drill.fault}")
        lines.append(f"      mitigations: {', '.join(drill.mitigations) or 'none'}")
    lines.append("Mitigations (--without-mitigation NAME):")
    lines += [f"  {name:<14} {meaning}" for name, meaning in sorted(KNOWN.items())]
    return "\n".join(lines)


async def run_all(
    drills: Sequence[Drill],
    *,
    seed: int,
    without: tuple[str, ...],
    backend: str,
    out: TextIO | None,
) -> list[Report]:
    """Run ``drills`` one after another, printing a progress line for each."""
    reports = []
    numbered = [drill for drill in drills if drill.name != BASELINE]
    for drill in drills:
        if drill.name == BASELINE:
            position = "[0]"
        else:
            position = f"[{numbered.index(drill) + 1}/{len(numbered)}]"
        if out is not None:
            print(
                f"{position} {drill.name}: {drill.scenario} ...",
                end="",
                file=out,
                flush=True,
            )
        report = await run_drill(drill, seed=seed, without=without, backend=backend)
        reports.append(report)
        if out is not None:
            verdict = "PASS" if report.result.passed else "FAIL"
            print(
                f" {verdict} ({report.virtual_seconds:.0f}s virtual, "
                f"{report.wall_seconds:.1f}s real)",
                file=out,
                flush=True,
            )
            for check in report.result.checks:
                mark = "ok " if check.passed else "NOT"
                print(f"      {mark} {check.name}: {check.detail}", file=out)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Run the drills; exit status 1 if any failed."""
    args = parse(argv)
    drills = registry()
    if args.list:
        print(listing(drills))
        return 0
    unknown = [name for name in args.drill if name not in drills]
    if unknown:
        noun = "drills" if len(unknown) > 1 else "drill"
        print(f"unknown {noun}: {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    without = tuple(args.without_mitigation)
    if args.drill:
        chosen = [drills[name] for name in args.drill]
    else:
        # The baseline judges the system with every mitigation on: with one off, the
        # drills show the impact, and the baseline has nothing to say.
        skip = args.skip_baseline or bool(without)
        chosen = [d for d in drills.values() if not (skip and d.name == BASELINE)]
    started = time.perf_counter()
    reports = anyio.run(
        lambda: run_all(
            chosen,
            seed=args.seed,
            without=without,
            backend=args.backend,
            out=None if args.quiet else sys.stdout,
        ),
        backend=args.backend,
    )
    print()
    print(table(reports))
    failed = [report.drill.name for report in reports if not report.result.passed]
    drilled = [report for report in reports if report.drill.name != BASELINE]
    baseline = [report for report in reports if report.drill.name == BASELINE]
    parts = [f"baseline {'PASS' if report.result.passed else 'FAIL'}" for report in baseline]
    if drilled or not baseline:
        passed = sum(1 for report in drilled if report.result.passed)
        parts.append(f"{passed} of {len(drilled)} drills passed")
    print(
        f"\n{'; '.join(parts)} in "
        f"{time.perf_counter() - started:.1f}s (seed {args.seed}, {args.backend}"
        + (f", without {', '.join(without)}" if without else "")
        + ")"
    )
    if args.json is not None:
        document = {
            "schema": "reference-system-drills/1",
            "seed": args.seed,
            "backend": args.backend,
            "without_mitigation": list(without),
            "passed": not failed,
            "baseline": baseline[0].as_json() if baseline else None,
            "drills": [report.as_json() for report in drilled],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if failed else 0
