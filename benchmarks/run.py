"""Per-call overhead of resilience_kit's policies next to peer libraries, with pyperf.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py           # full run, about 8 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --fast    # rough numbers in about 1.5 minutes

It checks that every case does what it claims (rejections reject, retries retry, and
how often each library sleeps), measures each case with pyperf in worker processes,
measures rejection cost over a million rejections (``growth.py``), writes
``benchmarks/results/latest.json`` (plus pyperf's raw ``latest.pyperf.json``) and
prints Markdown tables. Any pyperf option works too (``--help``); ``--only REGEX``
runs the matching cases only (and writes ``partial.json`` instead).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import cases
import pyperf
from cases import REJECTED, RETRY, SCENARIO_TITLES, SCENARIOS, SUCCESS, Case

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEERS = (
    "tenacity",
    "stamina",
    "backoff",
    "pybreaker",
    "circuitbreaker",
    "aiobreaker",
    "purgatory",
    "anyio",
    "pyperf",
)
GROWTH_LIBRARIES = ("ours", "purgatory", "circuitbreaker", "pybreaker")
STAT = "median_ns"  # robust to the load spikes of a shared machine; the mean is kept too
FLAT = 1.25  # "flat": the cost after N rejections is within this factor of the first 1,000

# Peers' default instrumentation stays on (stamina logs a WARNING per retry); a handler
# on the root logger keeps that off the terminal without disabling it.
logging.getLogger().addHandler(logging.NullHandler())


# -- checking the cases before timing them ------------------------------------------------------


@contextmanager
def counting_sleeps() -> Iterator[list[float | None]]:
    """Record every ``time.sleep``, ``asyncio.sleep`` and ``anyio.sleep`` while active.

    A profile hook sees every call of the C function ``time.sleep``, even where a
    library bound it to another name (its delay is then unknown: ``None``); the module
    attributes are also patched to record the delays of those who look them up at call
    time, which every async library here does.
    """
    delays: list[float | None] = []
    real_sleep, real_asleep, real_anyio_sleep = time.sleep, asyncio.sleep, anyio.sleep

    def sleep(delay: float) -> None:
        delays.append(delay)
        real_sleep(delay)

    async def asleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        delays.append(delay)
        return await real_asleep(delay, *args, **kwargs)

    async def anyio_sleep(delay: float) -> None:
        delays.append(delay)
        await real_anyio_sleep(delay)

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and arg is real_sleep and frame.f_code is not sleep.__code__:
            delays.append(None)

    time.sleep, asyncio.sleep, anyio.sleep = sleep, asleep, anyio_sleep  # type: ignore[assignment]
    sys.setprofile(profile)
    try:
        yield delays
    finally:
        sys.setprofile(None)
        time.sleep, asyncio.sleep, anyio.sleep = real_sleep, real_asleep, real_anyio_sleep  # type: ignore[assignment]


def verify(selected: list[Case], calls: int = 3) -> dict[str, float]:
    """Run each case a few times; fail loudly if it does not behave as labelled.

    Returns the number of sleeps per call for each retry-path case.
    """
    loop = asyncio.new_event_loop()
    sleeps: dict[str, float] = {}
    try:
        for case in selected:
            made = case.make()
            fn = loop.run_until_complete(made) if case.mode == "async" else made

            def once(fn: Any = fn, case: Case = case) -> Any:
                result = fn(1)
                return loop.run_until_complete(result) if case.mode == "async" else result

            with counting_sleeps() as delays:
                for _ in range(calls):
                    if case.catch:
                        try:
                            once()
                        except case.catch:
                            continue
                        raise AssertionError(f"{case.name}: the call was not rejected")
                    if once() != 1:
                        raise AssertionError(f"{case.name}: wrong result")
            if case.scenario == RETRY:
                sleeps[case.name] = len(delays) / calls
                if any(delay not in (0, None) for delay in delays):
                    raise AssertionError(f"{case.name}: slept {delays}, expected no delay")
    finally:
        loop.close()
    return sleeps


# -- the rejection-growth experiment -------------------------------------------------------------


def run_growth(rejections: int) -> list[dict[str, Any]]:
    results = []
    for library in GROWTH_LIBRARIES:
        print(f"growth: {library}, {rejections:,} rejections ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, str(HERE / "growth.py"), library, str(rejections)],
            check=True,
            capture_output=True,
            text=True,
            cwd=HERE,
        )
        results.append(json.loads(out.stdout))
    return results


# -- reporting -----------------------------------------------------------------------------------


def summarize(bench: pyperf.Benchmark) -> dict[str, Any]:
    return {
        "mean_ns": bench.mean() * 1e9,
        "stdev_ns": (bench.stdev() if bench.get_nvalue() > 1 else 0.0) * 1e9,
        "median_ns": bench.median() * 1e9,
        "values": bench.get_nvalue(),
        "loops": bench.get_loops(),
    }


def fmt_ns(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


class Results:
    """Lookups over the measured cases: ``ns("sync", "success", "tenacity")``."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self._by_key = {(r["mode"], r["scenario"], r["label"]): r for r in rows}

    def get(self, mode: str, scenario: str, label: str) -> dict[str, Any] | None:
        return self._by_key.get((mode, scenario, label))

    def ns(self, mode: str, scenario: str, label: str) -> float | None:
        row = self.get(mode, scenario, label)
        return None if row is None else row[STAT]


def case_tables(results: Results) -> str:
    out = []
    for scenario in SCENARIOS:
        labels: list[str] = []
        for row in results.rows:
            if row["scenario"] == scenario and row["label"] not in labels:
                labels.append(row["label"])
        if not labels:
            continue
        retry = scenario == RETRY
        out.append(f"#### {SCENARIO_TITLES[scenario]}\n")
        head = "| Case | sync ns/call | sync x bare | async ns/call | async x bare |"
        rule = "|---|---:|---:|---:|---:|"
        if retry:
            head += " sleeps/call (sync, async) |"
            rule += "---:|"
        out += [head, rule]
        for label in labels:
            cells = [label]
            sleeps = []
            for mode in ("sync", "async"):
                row = results.get(mode, scenario, label)
                bare = results.ns(mode, SUCCESS, "bare call")
                ns = None if row is None else row[STAT]
                cells.append(fmt_ns(ns))
                cells.append(fmt_x(None if ns is None or not bare else ns / bare))
                sleeps.append("n/a" if row is None else f"{row.get('sleeps_per_call', 0):g}")
            if retry:
                cells.append(", ".join(sleeps))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def growth_table(growth: list[dict[str, Any]]) -> str:
    if not growth:
        return ""
    spans = [span for span in growth[0]["decades"] if not span.startswith("1-")]
    out = [
        "| Library | first 1,000 | "
        + " | ".join(spans)
        + " | growth | GC share | traceback entries held | peak RSS growth |",
        "|---|" + "---:|" * (len(spans) + 5),
    ]
    for g in growth:
        cells = [g["library"], fmt_ns(g["first_1000_ns"])]
        for span in spans:
            decade = g["decades"][span]
            cells.append(fmt_ns(decade["p10_ns"] + decade["gc_ns_per_rejection"]))
        last = g["decades"][list(g["decades"])[-1]]
        share = last["gc_ns_per_rejection"] / (last["p10_ns"] + last["gc_ns_per_rejection"])
        cells += [
            f"{g['growth']:.2f}x",
            f"{share:.0%}",
            f"{g['traceback_entries']:,}",
            f"{g['peak_rss_growth_mib']:,.0f} MiB",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(results: Results, growth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Judge the issue's targets from the measurements."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        verdict = "n/a" if met is None else "met" if met else "MISSED"
        out.append({"target": target, "measured": measured, "verdict": verdict})

    def compare(
        target: str, ours: str, ref: str, limit: float, modes: tuple[str, ...] = ("sync", "async")
    ) -> None:
        parts, met = [], True
        for mode in modes:
            a, b = results.ns(mode, SUCCESS, ours), results.ns(mode, SUCCESS, ref)
            ratio = _ratio(a, b)
            if ratio is None:
                continue
            parts.append(f"{mode}: {fmt_ns(a)} vs {fmt_ns(b)} ns = {ratio:.2f}x")
            met = met and ratio <= limit
        add(target, "; ".join(parts), met if parts else None)

    # 1. RetryPolicy success path <= 2x a pass-through decorator (total time per call;
    #    the ratio of the time each adds to a bare call is shown too).
    parts, met = [], True
    for mode in ("sync", "async"):
        ours = results.ns(mode, SUCCESS, "ours: RetryPolicy")
        ref = results.ns(mode, SUCCESS, "pass-through decorator")
        bare = results.ns(mode, SUCCESS, "bare call")
        if ours is None or ref is None or bare is None:
            continue
        parts.append(
            f"{mode}: {fmt_ns(ours)} vs {fmt_ns(ref)} ns = {ours / ref:.2f}x "
            f"(added over a bare call: {fmt_ns(ours - bare)} vs {fmt_ns(ref - bare)} ns "
            f"= {(ours - bare) / (ref - bare):.2f}x)"
        )
        met = met and ours / ref <= 2.0
    add(
        "RetryPolicy success path <= 2x a pass-through decorator",
        "; ".join(parts),
        met if parts else None,
    )

    compare(
        "CircuitBreaker closed path cheaper than circuitbreaker",
        "ours: CircuitBreaker",
        "circuitbreaker",
        1.0,
    )
    # Issue 10: in the window states where every success is recorded, too.
    for label, _, _ in cases.WINDOW_STATES:
        compare(
            f"CircuitBreaker closed path ({label.removeprefix('ours: CircuitBreaker, ')}) "
            "no dearer than circuitbreaker",
            label,
            "circuitbreaker",
            1.0,
        )
    parts, met = [], True
    for mode in ("sync", "async"):
        a = results.ns(mode, REJECTED, "ours: CircuitBreaker")
        b = results.ns(mode, REJECTED, "circuitbreaker")
        ratio = _ratio(a, b)
        if ratio is not None:
            parts.append(f"{mode}: {fmt_ns(a)} vs {fmt_ns(b)} ns = {ratio:.2f}x")
            met = met and ratio <= 1.0
    add(
        "CircuitBreaker rejection cheaper than circuitbreaker's",
        "; ".join(parts),
        met if parts else None,
    )

    by_lib = {g["library"]: g for g in growth}

    def growth_summary(g: dict[str, Any]) -> str:
        return (
            f"{g['library']}: {fmt_ns(g['first_1000_ns'])} ns per rejection over the first "
            f"1,000, {fmt_ns(g['last_decade_ns'])} ns just before {g['rejections']:,} "
            f"({g['growth']:.2f}x); {g['traceback_entries']:,} traceback entries held; "
            f"peak RSS +{g['peak_rss_growth_mib']:,.0f} MiB"
        )

    def grew(g: dict[str, Any]) -> bool:
        return bool(g["growth"] > FLAT)

    if "ours" in by_lib:
        g = by_lib["ours"]
        add(
            f"CircuitBreaker rejection cost flat over {g['rejections']:,} rejections",
            growth_summary(g),
            not grew(g),
        )
    if "purgatory" in by_lib:
        g = by_lib["purgatory"]
        add("purgatory's rejection cost grows", growth_summary(g), grew(g))

    compare(
        "Pipeline(RetryPolicy, CircuitBreaker) cheaper than circuitbreaker alone",
        "ours: Pipeline(RetryPolicy, CircuitBreaker)",
        "circuitbreaker",
        1.0,
    )
    compare(
        "Timeout no dearer than a hand-written anyio.fail_after",
        "ours: Timeout",
        "hand-written anyio.fail_after",
        1.0,
        ("async",),
    )
    compare(
        "Pipeline(Timeout, RetryPolicy, CircuitBreaker) within 1.2x of anyio.fail_after",
        "ours: Pipeline(Timeout, RetryPolicy, CircuitBreaker)",
        "hand-written anyio.fail_after",
        1.2,
        ("async",),
    )

    parts, met, seen = [], True, False
    for mode in ("sync", "async"):
        row = results.get(mode, RETRY, "ours: RetryPolicy")
        if row is not None:
            seen = True
            parts.append(f"{mode}: {row.get('sleeps_per_call', 0):g} sleeps per call")
            met = met and row.get("sleeps_per_call", 0) == 0
    add("a zero delay never sleeps", "; ".join(parts), met if seen else None)

    parts, met = [], True
    for mode in ("sync", "async"):
        a = results.ns(mode, RETRY, "ours: RetryPolicy")
        b = results.ns(mode, RETRY, "hand-rolled retry loop")
        ratio = _ratio(a, b)
        if ratio is not None:
            parts.append(f"{mode}: {fmt_ns(a)} vs {fmt_ns(b)} ns = {ratio:.2f}x")
            met = met and ratio <= 3.0
    add("retry path within 3x a hand-rolled retry loop", "; ".join(parts), met if parts else None)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    out = ["| Target | Measured | Verdict |", "|---|---|---|"]
    out += [f"| {r['target']} | {r['measured']} | {r['verdict']} |" for r in rows]
    return "\n".join(out) + "\n"


def machine(args: Any) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("resilience-patterns", *PEERS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # noqa: PERF203
            versions[name] = "not installed"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
        "pyperf": {"processes": args.processes, "values": args.values, "fast": args.fast},
        "versions": versions,
    }


def report(
    args: Any,
    benches: dict[str, pyperf.Benchmark],
    selected: list[Case],
    sleeps: dict[str, float],
    growth: list[dict[str, Any]],
    started: float,
) -> str:
    rows = []
    for case in selected:
        bench = benches.get(case.name)
        if bench is None:
            continue
        row = {
            "name": case.name,
            "mode": case.mode,
            "scenario": case.scenario,
            "label": case.label,
            **summarize(bench),
        }
        if case.name in sleeps:
            row["sleeps_per_call"] = sleeps[case.name]
        rows.append(row)
    results = Results(rows)
    for row in rows:
        bare = results.ns(row["mode"], SUCCESS, "bare call")
        row["x_bare"] = row[STAT] / bare if bare else None
    judged = targets(results, growth)
    info = machine(args)
    info["duration_s"] = round(time.monotonic() - started)
    RESULTS.mkdir(exist_ok=True)
    document = {"machine": info, "cases": rows, "growth": growth, "targets": judged}
    # A partial run (--only) must not replace the last complete one.
    stem = "partial" if args.only else "latest"
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    if benches:
        suite = pyperf.BenchmarkSuite(list(benches.values()))
        suite.dump(str(RESULTS / f"{stem}.pyperf.json"), replace=True)

    lines = [
        (
            f"Measured {info['date']} on {info['cpu'] or 'an unknown CPU'} "
            f"({info['nproc']} CPUs), {info['implementation']} {info['python']}, "
            f"{info['platform']}; `{info['command']}` "
            f"(pyperf: {args.processes} processes x {args.values} values; "
            f"{info['duration_s']} s in all). Median ns per call over pyperf's values; "
            "x bare = ratio to a bare call in the same mode.\n"
        ),
        case_tables(results),
    ]
    if growth:
        lines += [
            f"#### Rejection cost over {growth[0]['rejections']:,} rejections (sync)\n",
            (
                "ns per rejection, in batches of 1,000: for the first 1,000, the best of 9 "
                "fresh breakers; for each later span, its 10th-percentile batch plus the time "
                "of full garbage collections per rejection over the span. Growth: the last "
                "span against the first 1,000. GC share: the full collections' part of the "
                "last span.\n"
            ),
            growth_table(growth),
        ]
    lines += ["#### Targets\n", targets_table(judged)]
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()

    def forward(cmd: list[str], args: Any) -> None:
        if args.only:
            cmd.extend(("--only", args.only))

    runner = pyperf.Runner(
        processes=6,  # --fast halves this
        values=3,
        program_args=(str(Path(__file__).resolve()),),
        add_cmdline_args=forward,
    )
    runner.argparser.add_argument(
        "--only", default="", help="run only the cases whose name matches this regex"
    )
    runner.argparser.add_argument(
        "--growth",
        type=int,
        default=None,
        help="rejections in the growth experiment (default 1,000,000; 100,000 with --fast; "
        "0 skips it)",
    )
    # pyperf's stability warnings would bury the table; -v brings them back.
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    runner.argparser.set_defaults(quiet=not verbose)
    args = runner.parse_args()
    if (
        args.fast
        and not args.worker
        and not any(a.startswith(("-p", "--processes")) for a in sys.argv)
    ):
        # Quicker than pyperf's own --fast (3 processes): rough numbers in about a minute.
        args.processes, args.min_time = 2, 0.05
    selected = [case for case in cases.CASES if re.search(args.only, case.name)]

    sleeps: dict[str, float] = {}
    if not args.worker:
        sleeps = verify(selected)
    benches: dict[str, pyperf.Benchmark] = {}
    for case in selected:
        bench = runner.bench_time_func(case.name, cases.time_case, case)
        if bench is not None:
            benches[case.name] = bench
    if args.worker:
        return
    rejections = args.growth if args.growth is not None else 100_000 if args.fast else 1_000_000
    growth = run_growth(rejections) if rejections and not args.only else []
    print()
    print(report(args, benches, selected, sleeps, growth, started))


if __name__ == "__main__":
    main()
