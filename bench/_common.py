"""Shared helpers of the benchmarks in bench/: temp environment, throwaway cluster, seeding,
child processes with exact peak RSS, raw PostgreSQL baselines and cProfile reports.

Nothing here writes outside one temp dir, which is deleted at the end of a run.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SEED_SQL = BENCH_DIR / "seed.sql"
RESULT_MARK = "BENCH_RESULT "

if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

# Server settings for the benchmark cluster, on top of ThrowawayCluster's defaults (fsync off, ...).
# A large max_wal_size only avoids checkpoint storms while seeding millions of rows.
CLUSTER_SETTINGS = {"max_wal_size": "16GB", "checkpoint_timeout": "1h", "autovacuum": "off"}


# -- environment ---------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_env() -> Iterator[Path]:
    """A private temp dir; Airflow's and dlt's home dirs point into it so no file is left behind.

    The package's bytecode is compiled first, as an install does (``make venv`` compiles the
    dependencies'): otherwise, with PYTHONDONTWRITEBYTECODE set, every timed child would compile
    the package's sources again.
    """
    import compileall

    import airflow_pg_replication

    compileall.compile_dir(str(Path(airflow_pg_replication.__file__).parent), quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="pgrepl-bench-"))
    saved = dict(os.environ)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(tmp / "airflow_home"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "DLT_DATA_DIR": str(tmp / "dlt_data"),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "TMPDIR": str(tmp),  # dlt working dirs of the operators land here too
        }
    )
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = saved_tempdir
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def cluster(dbname: str = "bench") -> Iterator[tuple[Any, str]]:
    """A throwaway PostgreSQL with one database; yields (cluster, dsn)."""
    from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster

    with ThrowawayCluster(settings=CLUSTER_SETTINGS) as pg:
        yield pg, pg.create_database(dbname)


def psql_path(pg: Any) -> str:
    for cand in (os.path.join(pg.bindir, "psql"), shutil.which("psql"), "/usr/bin/psql"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("psql not found (looked in the cluster's bindir, $PATH and /usr/bin)")


def run_psql(
    pg: Any, dsn: str, *, file: Path | None = None, command: str | None = None, variables: dict[str, Any] | None = None
) -> None:
    cmd = [psql_path(pg), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for k, v in (variables or {}).items():
        cmd += ["-v", f"{k}={v}"]
    cmd += ["-f", str(file)] if file else ["-c", command or ""]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def seed(pg: Any, dsn: str, rows: int, docs: int = 0) -> float:
    """Build ``customers`` (and ``documents`` when docs > 0) from bench/seed.sql; returns seconds."""
    t0 = time.monotonic()
    run_psql(pg, dsn, file=SEED_SQL, variables={"rows": rows, "docs": docs})
    return time.monotonic() - t0


def table_size_mb(dsn: str, table: str = "customers") -> float:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()[0] / 1e6


# -- raw baselines -------------------------------------------------------------------------------


def drain_copy(dsn: str, query: str) -> tuple[float, int]:
    """Run a ``COPY ... TO STDOUT`` and drop the data; returns (seconds, bytes)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        t0 = time.monotonic()
        n = 0
        with conn.cursor().copy(query) as copy:
            for chunk in copy:
                n += len(chunk)
        return time.monotonic() - t0, n


def best_of(k: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` k times; fn returns (seconds, extra). Returns the best seconds and its extra."""
    results = [fn() for _ in range(k)]
    return min(results, key=lambda r: r[0])


# -- child processes -----------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    def __init__(self, what: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(f"{what} failed in the child process (exit {returncode})")
        self.what = what
        self.returncode = returncode
        self.stderr_tail = stderr_tail


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
        poller = _RssPoller(proc.pid)
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


class _RssPoller:
    """Reads /proc/<pid>/statm every few ms from this process: the child's RSS as it is, not a high-water mark."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        import threading

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
                            self.peak_mb = max(self.peak_mb, int(fields[1]) * page_mb)
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
    spawned: list[str] = []  # processes the measured code starts (for the record)

    def on_fork() -> None:
        frames = [f"{_short(f.filename)}:{f.lineno}" for f in traceback.extract_stack()[-8:-1]]
        spawned.append("fork at " + " <- ".join(reversed(frames)))

    os.register_at_fork(before=on_fork)
    real_popen_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **k):  # type: ignore[no-untyped-def]
        spawned.append("exec " + (" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))[:200])
        return real_popen_init(self, args, *a, **k)

    subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]
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
    result["spawned"] = spawned[:10]
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


# -- profiling -----------------------------------------------------------------------------------


def profile_call(fn: Callable[[], Any]) -> tuple[Any, pstats.Stats, float]:
    prof = cProfile.Profile()
    t0 = time.monotonic()
    prof.enable()
    try:
        result = fn()
    finally:
        prof.disable()
    wall = time.monotonic() - t0
    return result, pstats.Stats(prof), wall


def _short(path: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def func_label(key: tuple) -> str:
    path, line, name = key
    if path == "~":
        return name
    return f"{_short(path)}:{line}({name})"


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


def self_time(stats: pstats.Stats, file_part: str, name: str) -> float:
    return sum(stats.stats[k][2] for k in find_funcs(stats, file_part, name))  # type: ignore[attr-defined]


def self_time_under(stats: pstats.Stats, file_part: str) -> float:
    """Total self time of every function whose file path contains ``file_part``."""
    return sum(v[2] for k, v in stats.stats.items() if file_part in k[0])  # type: ignore[attr-defined]


def print_centres(rows: Sequence[tuple[str, float]], total: float) -> None:
    width = max(len(label) for label, _ in rows)
    for label, secs in rows:
        print(f"  {label:<{width}}  {secs:8.3f} s  {100 * secs / total:5.1f}%")


class PhaseTimer:
    """Wall-clock timers patched around chosen methods, kept as a call tree (per thread).

    Used in place of cProfile for the phase breakdown: it adds one timer per wrapped call, so the
    numbers are close to an unprofiled run. Generator functions are timed per ``next()``.
    """

    def __init__(self) -> None:
        import threading

        self.records: dict[tuple[str, ...], list] = {}
        self._local = threading.local()
        self._main_stack: list[str] = []
        self._main = threading.main_thread()
        self._undo: list[tuple[Any, str, Any]] = []

    def _timed(self, label: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        import threading

        if threading.current_thread() is self._main:
            st = self._main_stack
        else:  # a worker (dlt load jobs): file its calls under what the main thread waits in
            st = getattr(self._local, "stack", None)
            if st is None:
                st = self._local.stack = []
            if not st:
                st.extend(self._main_stack)
                label = "[thread] " + label
        st.append(label)
        rec = self.records.setdefault(tuple(st), [0.0, 0])
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            rec[0] += time.perf_counter() - t0
            rec[1] += 1
            st.pop()
            if threading.current_thread() is not self._main and label.startswith("[thread] "):
                st.clear()

    def wrap(
        self,
        owner: Any,
        name: str,
        label: str | None = None,
        *,
        generator: bool = False,
        label_fn: Callable[..., str] | None = None,
    ) -> None:
        """Time ``owner.name`` (a method, or a module function); ``generator``: time each next() too.

        ``label_fn(*args, **kwargs)`` names each call (e.g. by column), instead of the fixed label.
        """
        import functools

        raw = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if raw is None:  # the package is still evolving: time what exists
            return
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        label = label or f"{getattr(owner, '__name__', owner)}.{name}"
        timer = self

        if generator:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                it = iter(timer._timed(label + " (call)", fn, *args, **kwargs))
                while True:
                    try:
                        item = timer._timed(label, next, it)
                    except StopIteration:
                        return
                    yield item
        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return timer._timed(label_fn(*args, **kwargs) if label_fn else label, fn, *args, **kwargs)

        new = (
            staticmethod(wrapper)
            if isinstance(raw, staticmethod)
            else (classmethod(wrapper) if isinstance(raw, classmethod) else wrapper)
        )
        setattr(owner, name, new)
        self._undo.append((owner, name, raw))

    def restore(self) -> None:
        for owner, name, raw in reversed(self._undo):
            setattr(owner, name, raw)
        self._undo.clear()

    # -- RSS sampling: the peak RSS seen while each phase of the main thread was running --------

    def start_sampler(self, every: float = 0.01) -> None:
        import threading

        self.rss_peaks: dict[tuple[str, ...], float] = {}
        self._stop = threading.Event()
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

        def sample() -> None:
            with open("/proc/self/statm") as fh:
                while not self._stop.is_set():
                    fh.seek(0)
                    rss = int(fh.read().split()[1]) * page_mb
                    path = tuple(self._main_stack)
                    for k in range(len(path) + 1):
                        key = path[:k]
                        if rss > self.rss_peaks.get(key, 0.0):
                            self.rss_peaks[key] = rss
                    self._stop.wait(every)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop_sampler(self) -> None:
        self._stop.set()
        self._sampler.join()

    def overhead_s(self) -> float:
        """Estimated total cost of the timers themselves: calls made x measured cost of one timed call."""
        calls = sum(n for _s, n in self.records.values())
        probe = PhaseTimer()
        noop = lambda: None  # noqa: E731
        t0 = time.perf_counter()
        for _ in range(20_000):
            probe._timed("probe", noop)
        per_call = (time.perf_counter() - t0) / 20_000
        return calls * per_call

    def as_rows(self) -> list[list]:
        """JSON-friendly records: [path, seconds, calls, peak RSS MB or None]."""
        peaks = getattr(self, "rss_peaks", {})
        return [[list(p), secs, calls, peaks.get(p)] for p, (secs, calls) in self.records.items()]

    def print_tree(self, total: float, min_secs: float = 0.0005) -> None:
        print_phase_rows(self.as_rows(), total, min_secs)


def print_phase_rows(rows: list[list], total: float, min_secs: float = 0.0005) -> None:
    """Print PhaseTimer rows as an indented tree (seconds, % of total, calls, peak RSS).

    ``[thread]`` rows ran on another thread, filed under what the main thread was doing when they
    started; they overlap the main thread's time, so percentages may add up to more than 100.
    """
    rss = any(r[3] for r in rows)
    if any(p[-1].startswith("[thread]") for p, *_ in rows):
        print("  ([thread] rows ran on other threads, concurrently with the main thread: shares may overlap)")
    width = max((2 * (len(r[0]) - 1) + len(r[0][-1]) for r in rows), default=10) + 2
    print(f"  {'phase':<{width}} {'seconds':>9} {'% total':>8} {'calls':>7}" + (f" {'peak RSS MB':>12}" if rss else ""))
    for path, secs, calls, peak in rows:
        if secs < min_secs:
            continue
        label = "  " * (len(path) - 1) + path[-1]
        extra = (f" {peak:12,.0f}" if peak else f" {'':>12}") if rss else ""
        print(f"  {label:<{width}} {secs:9.3f} {100 * secs / total:7.1f}% {calls:7d}" + extra)


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


def wrap_destination_phases(timer: PhaseTimer) -> None:
    """Time the package's destination layer (TableDestination, native DuckDB writes) and dlt under it."""
    from airflow_pg_replication.destination import table_destination as loading

    for name in (
        "__enter__",
        "checkpoint",
        "read_state",
        "write_state",
        "replace",
        "apply_batch",
        "merge",
        "delete_keys",
        "fetch_rows",
        "widen_columns",
        "truncate",
        "_fits",
    ):
        timer.wrap(loading.TableDestination, name, f"TableDestination.{name}")
    try:
        from airflow_pg_replication.destination.duckdb.native import NativeDuckDb
    except ImportError:
        pass
    else:
        for name in ("fits", "replace", "merge", "_transaction", "_load", "_run_with"):
            timer.wrap(NativeDuckDb, name, f"NativeDuckDb.{name}")
    wrap_dlt_phases(timer)


def wrap_dlt_phases(timer: PhaseTimer) -> None:
    """Time dlt's pipeline steps and the work under them (arrow extract, parquet, load jobs, DuckDB SQL)."""
    from dlt.common.data_writers.writers import ArrowToParquetWriter
    from dlt.common.destination.client import RunnableLoadJob
    from dlt.destinations.impl.duckdb.sql_client import DuckDbSqlClient
    from dlt.destinations.sql_client import SqlClientBase
    from dlt.extract.extractors import ArrowExtractor
    from dlt.load.load import Load
    from dlt.pipeline.pipeline import Pipeline

    for step in ("run", "extract", "normalize", "load", "sync_destination"):
        timer.wrap(Pipeline, step, f"dlt Pipeline.{step}")
    timer.wrap(ArrowExtractor, "write_items", "dlt ArrowExtractor.write_items (schema merge, buffering)")
    timer.wrap(ArrowToParquetWriter, "write_data", "parquet writing (ArrowToParquetWriter.write_data)")
    for name in ("initialize_package", "start_new_jobs", "complete_jobs", "complete_package"):
        timer.wrap(Load, name, f"dlt Load.{name}")
    timer.wrap(RunnableLoadJob, "run_managed", "dlt load job")
    timer.wrap(DuckDbSqlClient, "execute_sql", "DuckDB execute_sql")
    timer.wrap(SqlClientBase, "execute_many", "DuckDB execute_many")


# -- report formatting ---------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


def print_child_failure(exc: ChildFailed) -> None:
    print(f"\n!! {exc}\n--- child stderr (tail) ---\n{exc.stderr_tail}\n---------------------------")


def conversion_label(values: Any, col: Any, *args: Any, **kwargs: Any) -> str:
    """Phase label of one typemap.text_to_arrow call: the column and its PostgreSQL type."""
    t = col.type
    kind = f"{t.element.name}[]" if t.element is not None else t.name
    return f"text_to_arrow {col.name} ({kind})"


def machine_note() -> str:
    """CPUs and load: other processes on the machine make timings noisy."""
    la = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min)"


def package_state() -> str:
    """Which code was measured: git commit and the package files modified since (others edit in parallel)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "airflow_pg_replication"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "package version: unknown (no git)"
    files = [ln[3:] for ln in dirty if ln.strip()]
    return f"package: git {sha}" + (f" + {len(files)} uncommitted file(s) in airflow_pg_replication/" if files else "")
