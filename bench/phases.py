"""Phase report: wall time per phase as the package records it (``phase_timing``), with the peak RSS seen in each."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from child import RssPoller


def record_phases(fn: Callable[[], Any], *, every: float = 0.01) -> tuple[Any, dict]:
    """Run ``fn()`` with the package's phase timings on and this process's RSS sampled every ``every`` s.

    Returns fn's result and a JSON-friendly report: ``rows`` ([thread, path, seconds, calls, peak RSS
    MB while the phase was open]), ``timeline`` ([seconds since start, RSS MB, MB held by pyarrow's
    default pool]) and ``overhead_s`` (what the timings themselves cost, estimated).
    """
    import pyarrow as pa

    from airflow_pg_replication.phase_timing import recording

    peaks: dict[tuple[str, ...], float] = {}
    timeline: list[tuple[float, float, float]] = []
    started = time.monotonic()
    with recording() as rec:

        def on_sample(rss: float) -> None:
            for path in rec.open_paths():
                for k in range(1, len(path) + 1):
                    if rss > peaks.get(path[:k], 0.0):
                        peaks[path[:k]] = rss
            timeline.append((time.monotonic() - started, rss, pa.total_allocated_bytes() / 2**20))

        poller = RssPoller("self", every, on_sample)
        try:
            result = fn()
        finally:
            poller.stop()
    rows = [[r.thread, list(r.path), r.seconds, r.count, peaks.get(r.path)] for r in rec.records()]
    calls = sum(r.count for r in rec.records())
    return result, {"rows": rows, "timeline": timeline, "overhead_s": calls * _cost_of_one_phase()}


def _cost_of_one_phase(n: int = 20_000) -> float:
    """Seconds one recorded ``with phase(...)`` costs here (measured)."""
    from airflow_pg_replication.phase_timing import phase, recording

    with recording():
        t0 = time.perf_counter()
        for _ in range(n):
            with phase("probe"):
                pass
        return (time.perf_counter() - t0) / n


def _tree_order(rows: list[list]) -> list[list]:
    """Rows of one thread in tree order: a phase after its parent, siblings in the order they first ran."""
    first: dict[tuple[str, ...], int] = {}
    for i, (_thread, path, *_rest) in enumerate(rows):
        for k in range(1, len(path) + 1):
            first[tuple(path[:k])] = min(first.get(tuple(path[:k]), i), i)
    return sorted(rows, key=lambda r: [first[tuple(r[1][:k])] for k in range(1, len(r[1]) + 1)])


def print_phases(report: dict, total: float, min_secs: float = 0.0005) -> None:
    """The report as one tree per thread: seconds, % of ``total`` (the timed run), calls, peak RSS."""
    rows = report["rows"]
    if not rows:
        print("  (no phase recorded)")
        return
    rss = any(r[4] for r in rows)
    width = max(2 * (len(r[1]) - 1) + len(r[1][-1]) for r in rows) + 4
    head = f"  {'phase':<{width}} {'seconds':>9} {'% total':>8} {'calls':>7}" + (f" {'peak RSS MB':>12}" if rss else "")
    threads = sorted({r[0] for r in rows}, key=lambda t: (t != "", t))
    for thread in threads:
        mine = _tree_order([r for r in rows if r[0] == thread])
        if thread:
            print(f"\n  on thread {thread} (concurrent with the main thread: its share overlaps)")
        else:
            print("  on the task's (main) thread")
        print(head)
        for _thread, path, secs, calls, peak in mine:
            if secs < min_secs:
                continue
            label = "  " * (len(path) - 1) + path[-1]
            extra = (f" {peak:12,.0f}" if peak else f" {'':>12}") if rss else ""
            print(f"  {label:<{width}} {secs:9.3f} {100 * secs / total:7.1f}% {calls:7d}" + extra)
        if not thread:
            top = sum(r[2] for r in mine if len(r[1]) == 1)
            rest = total - top
            print(f"  {'(not in a phase)':<{width}} {rest:9.3f} {100 * rest / total:7.1f}%")
    print(f"\n  (the timings themselves cost ~{report['overhead_s'] * 1e3:.1f} ms)")


def print_timeline(report: dict, points: int = 10) -> None:
    """RSS at ``points`` moments of the run, with what pyarrow's pool held then."""
    tl = report["timeline"]
    if not tl:
        return
    picks = sorted({round(i * (len(tl) - 1) / (points - 1)) for i in range(points)})
    cells = [f"{tl[i][0]:.1f} s: {tl[i][1]:,.0f} MB (pool {tl[i][2]:,.0f})" for i in picks]
    half = (len(cells) + 1) // 2
    print("\n  RSS during the run (pyarrow pool = MB Arrow holds):")
    print("    " + "   ".join(cells[:half]))
    print("    " + "   ".join(cells[half:]))
