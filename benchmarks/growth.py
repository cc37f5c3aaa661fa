"""Does the cost of a rejection stay flat as rejections pile up?

An open breaker that re-raises one exception instance (purgatory does) makes Python
append to that instance's ``__traceback__`` on every raise: the chain, and the memory
it holds, grow without bound. A breaker that raises a fresh exception each time stays
flat. This measures the per-rejection cost over the first 1,000 rejections of a fresh
breaker and again after ``N`` rejections, with the garbage collector on as in real use.

Run by ``run.py`` in one child process per library (so each starts from a clean heap)::

    .venv/bin/python benchmarks/growth.py ours 1000000
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import statistics
import sys
from collections.abc import Callable
from time import perf_counter_ns

import cases

logging.getLogger().addHandler(logging.NullHandler())  # no stderr noise from state changes

BATCH = 1_000
FRESH_BREAKERS = 9  # the "first 1,000" figure: the best of this many new breakers
AFTER_BATCHES = 20  # the "after N" best batch: the best of this many batches past N


def _rejector(library: str) -> tuple[Callable[[], None], Callable[[], object]]:
    """A fresh tripped breaker: one rejected call, and a probe of what it has accumulated."""
    if library == "ours":
        fn = cases.trip(cases.our_breaker("growth", trippable=True)(cases.failing))
        catch: tuple[type[BaseException], ...] = (cases.CircuitOpenError,)
    elif library == "purgatory":
        fn = cases.trip(cases.purgatory_sync()("growth")(cases.failing))
        catch = (cases.OpenedState,)
    elif library == "circuitbreaker":
        fn = cases.trip(cases.circuitbreaker_breaker()(cases.failing))
        catch = (cases.circuitbreaker.CircuitBreakerError,)
    elif library == "pybreaker":
        fn = cases._pybreaker_open()
        catch = (cases.pybreaker.CircuitBreakerError,)
    else:
        raise SystemExit(f"unknown library {library!r}")

    last: list[BaseException] = []

    def reject() -> None:
        try:
            fn(1)
        except catch as exc:
            if not last:
                last.append(exc)
        else:
            raise AssertionError(f"{library}: the call was not rejected")

    def traceback_length() -> object:
        # Walk the traceback of the first rejection's exception object: if the library
        # re-raises that same object, this chain is what keeps growing.
        tb = last[0].__traceback__ if last else None
        length = 0
        while tb is not None:
            length += 1
            tb = tb.tb_next
        return length

    return reject, traceback_length


def _batch(reject: Callable[[], None]) -> float:
    """Nanoseconds per rejection over one batch of ``BATCH`` rejections."""
    t0 = perf_counter_ns()
    for _ in range(BATCH):
        reject()
    return (perf_counter_ns() - t0) / BATCH


class GcTimer:
    """Wall time spent in full (generation 2) collections, from ``gc.callbacks``.

    Young collections run every few hundred allocations, so nearly every batch has its
    share of them already; a full collection lands in one batch, which a low percentile
    leaves out, so its time is added back separately.
    """

    def __init__(self) -> None:
        self.total_ns = 0
        self._started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = perf_counter_ns()
        else:
            self.total_ns += perf_counter_ns() - self._started


def _low(values: list[float]) -> float:
    """The 10th percentile (the minimum for fewer than ten values)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 10]


def _span(low: int, high: int) -> str:
    return f"{low:,}-{high:,}"


def measure(library: str, total: int) -> dict[str, object]:
    _rejector(library)[0]()  # warm the code paths once, on a breaker we then drop
    first = []
    for _ in range(FRESH_BREAKERS):
        reject, _ = _rejector(library)
        first.append(_batch(reject))

    reject, traceback_length = _rejector(library)
    gc_timer = GcTimer()
    gc.callbacks.append(gc_timer)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches, gc_ns = [], []
    for _ in range(total // BATCH):
        batches.append(_batch(reject))
        gc_ns.append(gc_timer.total_ns)
    after = [_batch(reject) for _ in range(AFTER_BATCHES)]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gc.callbacks.remove(gc_timer)

    # Per decade of rejections: a low percentile of the batches (other processes on the
    # machine only ever add time, so the fast batches are the undisturbed cost), plus the
    # full collections' time per rejection, which that percentile leaves out.
    decades = {}
    low = 0
    while low < total:
        high = min(max(low * 10, BATCH), total)
        lo, hi = low // BATCH, high // BATCH
        collected = gc_ns[hi - 1] - (gc_ns[lo - 1] if lo else 0)
        decades[_span(low + 1, high)] = {
            "p10_ns": round(_low(batches[lo:hi]), 1),
            "median_ns": round(statistics.median(batches[lo:hi]), 1),
            "mean_ns": round(statistics.fmean(batches[lo:hi]), 1),
            "gc_ns_per_rejection": round(collected / (high - low), 1),
        }
        low = high
    first_ns = min(first)
    last = decades[list(decades)[-1]]
    last_ns = last["p10_ns"] + last["gc_ns_per_rejection"]
    return {
        "library": library,
        "rejections": total,
        # A fresh breaker's first 1,000 rejections (the best of several breakers) ...
        "first_1000_ns": round(first_ns, 1),
        # ... against the undisturbed batch plus the amortized full collections in the
        # last decade before ``total``.
        "last_decade_ns": round(last_ns, 1),
        "growth": round(last_ns / first_ns, 2),
        "after_n_best_ns": round(min(after), 1),
        "first_1000_best_ns": round(min(first), 1),
        "decades": decades,
        "peak_rss_growth_mib": round((rss_after - rss_before) / 1024, 1),
        "traceback_entries": traceback_length(),
    }


def main() -> None:
    library = sys.argv[1]
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    print(json.dumps(measure(library, total)))


if __name__ == "__main__":
    main()
