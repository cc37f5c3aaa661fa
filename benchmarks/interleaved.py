"""Success-path cases of run.py timed in one process, interleaved, best of many short runs.

    bash scripts/bench.sh benchmarks/interleaved.py 'CircuitBreaker,|circuitbreaker|bare'

On a shared, loaded machine pyperf's medians over a few worker processes swing by 2x
from run to run, because the load changes between one case's workers and the next's.
Here every case is timed once per round, round after round, so each sees the same load;
the fastest round of each is the cost with the least interference, and its ratio to the
reference (circuitbreaker unless ``--reference`` says otherwise) is what to read. Prints
a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import statistics

import cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", help="a regex: the success-path cases whose name matches")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--loops", type=int, default=20_000, help="calls per case per round")
    parser.add_argument("--reference", default="circuitbreaker")
    args = parser.parse_args()
    selected = [
        case
        for case in cases.CASES
        if case.scenario == cases.SUCCESS and re.search(args.only, case.name)
    ]
    timings: dict[str, list[float]] = {case.name: [] for case in selected}
    for _ in range(args.rounds):
        for case in selected:
            timings[case.name].append(cases.time_case(args.loops, case) / args.loops * 1e9)
    print(f"Best and median of {args.rounds} rounds of {args.loops:,} calls, ns per call.\n")
    print("| Case | mode | best | median | best / reference's best |")
    print("|---|---|---:|---:|---:|")
    for case in selected:
        values = timings[case.name]
        reference = timings.get(f"{case.mode}/{cases.SUCCESS}/{args.reference}")
        ratio = f"{min(values) / min(reference):.2f}x" if reference else "n/a"
        print(
            f"| {case.label} | {case.mode} | {min(values):,.0f} | "
            f"{statistics.median(values):,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
