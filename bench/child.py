"""Child-process runs: the measured code in its own process, its peak RSS polled, its result back over stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULT_MARK = "BENCH_RESULT "


class ChildFailed(RuntimeError):
    def __init__(self, what: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(f"{what} failed in the child process (exit {returncode})")
        self.what = what
        self.returncode = returncode
        self.stderr_tail = stderr_tail


def print_child_failure(exc: ChildFailed) -> None:
    print(f"\n!! {exc}\n--- child stderr (tail) ---\n{exc.stderr_tail}\n---------------------------")


@dataclass
class ChildRun:
    result: dict
    tree_peak_rss_mb: float  # ru_maxrss from wait4: the child, or a process it started and reaped if larger
    wall: float  # whole child process, start to exit (interpreter start and imports included)

    @property
    def peak_rss_mb(self) -> float:
        """Peak RSS of the child process alone, MB: the larger of its VmHWM (the kernel's high-water
        mark of its own address space) and what polling /proc/<pid>/statm every 5 ms saw.

        Not ru_maxrss: after fork/vfork + exec, Linux carries the high-water mark of the address space
        the child was forked from (this benchmark process) into the child's ru_maxrss, so wait4 and
        getrusage(RUSAGE_SELF) report max(parent RSS at spawn, child peak).
        """
        return (
            max(self.result.get("vm_hwm_mb") or 0.0, self.result.get("polled_peak_rss_mb") or 0.0)
            or self.tree_peak_rss_mb
        )

    def rss_note(self) -> str:
        """The other readings, for the record."""
        r = self.result
        note = f"; VmHWM {r.get('vm_hwm_mb', 0):,.0f} MB, /proc polled {r.get('polled_peak_rss_mb', 0):,.0f} MB"
        if self.tree_peak_rss_mb > self.peak_rss_mb + 1:
            note += (
                f"; ru_maxrss {self.tree_peak_rss_mb:,.0f} MB is the parent's RSS at spawn, carried over"
                " by exec, not the child's"
            )
        return note


_child_seq = 0


def run_child(
    script: Path, payload: dict, *, workdir: Path, env: dict[str, str] | None = None, what: str = "child"
) -> ChildRun:
    """Run ``script --_child <json>`` and reap it with wait4, so its rusage is its own."""
    global _child_seq
    _child_seq += 1
    out_path = workdir / f"child{_child_seq}.out"
    err_path = workdir / f"child{_child_seq}.err"
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(script), "--_child", json.dumps(payload)],
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            env=env or dict(os.environ),
        )
        poller = RssPoller(proc.pid, every=0.005)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        poller.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    out = out_path.read_text(errors="replace")
    err = err_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    result = None
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
    if proc.returncode != 0 or result is None:
        tail = "\n".join((err + out).splitlines()[-60:])
        raise ChildFailed(what, proc.returncode, tail)
    result["polled_peak_rss_mb"] = poller.peak_mb
    return ChildRun(result, usage.ru_maxrss / 1024.0, wall)  # Linux: ru_maxrss in KiB


class RssPoller:
    """Reads /proc/<pid>/statm every ``every`` s on a thread: RSS as it is, not a high-water mark.

    ``on_sample(rss_mb)``, if given, is called with each reading (from the polling thread).
    """

    def __init__(self, pid: int | str, every: float, on_sample: Callable[[float], None] | None = None) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

        def poll() -> None:
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    while not self._stop.is_set():
                        fh.seek(0)
                        fields = fh.read().split()
                        if fields:
                            rss = int(fields[1]) * page_mb
                            self.peak_mb = max(self.peak_mb, rss)
                            if on_sample is not None:
                                on_sample(rss)
                        self._stop.wait(every)
            except (OSError, ValueError):
                pass

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def proc_status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child_entry(fn: Callable[[dict], dict]) -> None:
    """The ``--_child`` side: run fn(payload), print its result (plus VmHWM) on one marked line."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    payload = json.loads(sys.argv[sys.argv.index("--_child") + 1])
    try:
        result = fn(payload)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    import resource

    result["vm_hwm_mb"] = proc_status_mb("VmHWM")
    result["self_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # processes this child started and reaped itself (wait4 folds their peak into the child's ru_maxrss)
    result["descendants_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    sys.stdout.write(RESULT_MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: it is not part of what we measure


def import_heavy() -> float:
    """Import the third-party modules the operators import lazily inside execute(); returns seconds.

    Once per task process, like Airflow's own imports: printed by the benchmarks, not counted.
    """
    t0 = time.monotonic()
    import adbc_driver_postgresql.dbapi  # noqa: F401
    import dlt  # noqa: F401
    import duckdb  # noqa: F401
    import numpy  # noqa: F401
    import psycopg  # noqa: F401
    import pyarrow
    import pyarrow.compute
    import pyarrow.json
    import pyarrow.parquet  # noqa: F401
    from airflow.providers.postgres.hooks.postgres import PostgresHook  # noqa: F401
    from dlt.destinations import duckdb as _duck  # noqa: F401

    return time.monotonic() - t0
