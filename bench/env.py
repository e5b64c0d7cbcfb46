"""Bench environment: a private temp dir, a throwaway PostgreSQL, psql and seeding, raw COPY drains."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SEED_SQL = BENCH_DIR / "seed.sql"

if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

# Server settings for the benchmark cluster, on top of ThrowawayCluster's defaults (fsync off, ...).
# A large max_wal_size only avoids checkpoint storms while seeding millions of rows.
CLUSTER_SETTINGS = {"max_wal_size": "16GB", "checkpoint_timeout": "1h", "autovacuum": "off"}


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


def short_path(path: str) -> str:
    """A source path relative to site-packages or the checkout, for printing."""
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
