"""cProfile helpers: profile one in-process call, print its top entries and chosen cost centres."""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from env import short_path


def profile_call(fn: Callable[[], Any]) -> tuple[Any, pstats.Stats, float]:
    """Run ``fn`` under cProfile; returns (its result, the stats, wall seconds)."""
    prof = cProfile.Profile()
    t0 = time.monotonic()
    prof.enable()
    try:
        result = fn()
    finally:
        prof.disable()
    wall = time.monotonic() - t0
    return result, pstats.Stats(prof), wall


def func_label(key: tuple) -> str:
    path, line, name = key
    if path == "~":
        return name
    return f"{short_path(path)}:{line}({name})"


def print_top(stats: pstats.Stats, n: int = 30, total: float | None = None) -> None:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)[:n]  # type: ignore[attr-defined]
    total = total or max((v[3] for _, v in rows), default=1.0)
    print(f"  {'cum s':>8} {'cum %':>6} {'self s':>8} {'calls':>10}  function")
    for key, (cc, nc, tt, ct, _callers) in rows:
        calls = f"{nc}" if cc == nc else f"{nc}/{cc}"
        print(f"  {ct:8.3f} {100 * ct / total:5.1f}% {tt:8.3f} {calls:>10}  {func_label(key)}")


def find_funcs(stats: pstats.Stats, file_part: str, name: str) -> list[tuple]:
    return [k for k in stats.stats if file_part in k[0] and k[2] == name]  # type: ignore[attr-defined]


def cum(stats: pstats.Stats, file_part: str, name: str) -> float:
    """Cumulative seconds of the matching function(s) (summed; 0 when absent)."""
    return sum(stats.stats[k][3] for k in find_funcs(stats, file_part, name))  # type: ignore[attr-defined]


def self_time_under(stats: pstats.Stats, file_part: str) -> float:
    """Total self time of every function whose file path contains ``file_part``."""
    return sum(v[2] for k, v in stats.stats.items() if file_part in k[0])  # type: ignore[attr-defined]


def print_centres(rows: Sequence[tuple[str, float]], total: float) -> None:
    width = max(len(label) for label, _ in rows)
    for label, secs in rows:
        print(f"  {label:<{width}}  {secs:8.3f} s  {100 * secs / total:5.1f}%")


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence INFO/WARNING logs of in-process runs (Airflow renders them to stdout); errors still show."""
    import logging

    from airflow.sdk.bases.operator import ExecutorSafeguard

    logging.disable(logging.WARNING)
    saved = ExecutorSafeguard.test_mode
    ExecutorSafeguard.test_mode = True  # no "cannot be called outside of the Task Runner" warning on stdout
    try:
        yield
    finally:
        ExecutorSafeguard.test_mode = saved
        logging.disable(logging.NOTSET)
