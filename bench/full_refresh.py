#!/usr/bin/env python
"""Benchmark: PgFullRefreshOperator (snapshot, mode=cdc) vs a raw binary COPY of the same table.

Starts a throwaway PostgreSQL, builds ``customers`` from bench/seed.sql with --rows rows, then:
  (a) raw:      COPY (SELECT * FROM customers) TO STDOUT (FORMAT binary), drained by psycopg (best of 2)
  (c) dlt:      dlt.sources.sql_database.sql_table(backend="connectorx") into a fresh DuckDB file, in a
                child process (--no-dlt skips it; needs connectorx, the ``bench`` extra)
  (b) operator: PgFullRefreshOperator(mode="cdc", slot=...).execute({}) into a fresh DuckDB file (on a
                dedicated slot; --slot-group: joining slot group ``default``), in a child process
                (peak RSS of that process alone: max of its VmHWM and /proc polling every 5 ms;
                not ru_maxrss, which exec inherits from the spawning process, see child.ChildRun)
Targets (issue 15): operator/raw <= 1.8, dlt/operator >= 2 and peak RSS <= 512 MB. Exit status 0 unless something broke
(or --strict and a target is missed). Heavy modules (dlt, pyarrow, duckdb, adbc, numpy) are imported before
the timer starts; their import time is reported separately.

--profile adds a stage ladder (raw binary COPY of the package's query, the package's reader alone, in a child),
a phase-timed child run (the package's own phase timings, bench/phases.py: wall time and peak RSS per
step, RSS while streaming) and a cProfile of one in-process run (top 30 cumulative entries; main
thread only). --phases: only the phase run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from child import ChildFailed, child_entry, import_heavy, print_child_failure, proc_status_mb, run_child
from env import bench_env, best_of, cluster, drain_copy, seed, table_size_mb
from phases import print_phases, print_timeline, record_phases
from profiling import cum, print_centres, print_top, profile_call, quiet_logging, self_time_under
from report import line, machine_note, package_state, verdict

TARGET_RATIO = 1.8
TARGET_DLT_SPEEDUP = 2.0
TARGET_RSS_MB = 512.0
TABLE = "public.customers"


def _operator(duckdb_path: str, chunk_bytes: int | None, slot: str | None, parallelism: int | None = None):
    """The snapshot of a CDC table: on a dedicated ``slot``, or (None) joining slot group ``default``."""
    from airflow_pg_replication import PgFullRefreshOperator

    kw: dict = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
    if parallelism:
        kw["snapshot_parallelism"] = parallelism
    return PgFullRefreshOperator(
        task_id="bench_full_refresh",
        table=TABLE,
        destination={"type": "duckdb", "credentials": duckdb_path, "dataset": "replica"},
        mode="cdc",
        slot=slot,
        **kw,
    )


def in_child(payload: dict) -> dict:
    """Runs in the child process: import, then one timed execute() (or the read alone, op=read)."""
    t0 = time.monotonic()
    from airflow_pg_replication.operators.full_refresh import PgFullRefreshOperator  # noqa: F401  (airflow)

    airflow_import = time.monotonic() - t0
    heavy_import = import_heavy()
    rss_before = proc_status_mb("VmRSS")
    if payload.get("op") == "dlt":
        return {"execute_s": dlt_sql_table(payload["source"], payload["duckdb"], payload["workdir"])}
    if payload.get("op") == "read":
        (secs, rows), report = record_phases(lambda: read_arrow(payload.get("chunk_bytes")))
        return {"execute_s": secs, "rows": rows, "rss_before_execute_mb": rss_before, "phases": report}
    op = _operator(payload["duckdb"], payload.get("chunk_bytes"), payload.get("slot"), payload.get("parallelism"))
    report = None
    t0, cpu0 = time.monotonic(), time.process_time()
    if payload.get("phases"):
        out, report = record_phases(lambda: op.execute({}))
    else:
        out = op.execute({})
    secs = time.monotonic() - t0
    cpu = time.process_time() - cpu0  # every thread of the task's process (not the source's backends)
    return {
        "execute_s": secs,
        "cpu_s": cpu,
        "airflow_import_s": airflow_import,
        "heavy_import_s": heavy_import,
        "rss_before_execute_mb": rss_before,
        "out": out,
        "phases": report,
    }


def dlt_sql_table(source_dsn: str, duckdb_path: str, workdir: str) -> float:
    """dlt's fastest configuration for this copy: sql_table with connectorx (Arrow) into DuckDB; seconds."""
    import dlt
    from dlt.sources.sql_database import sql_table

    t0 = time.monotonic()
    pipeline = dlt.pipeline(
        pipeline_name="bench_cx",
        pipelines_dir=workdir,
        destination=dlt.destinations.duckdb(duckdb_path),
        dataset_name="replica",
    )
    pipeline.run(sql_table(credentials=source_dsn, table="customers", backend="connectorx"))
    return time.monotonic() - t0


def duck_count(path: str) -> int:
    import duckdb

    with duckdb.connect(path, read_only=True) as con:
        return con.execute("SELECT count(*) FROM replica.customers").fetchone()[0]


def read_arrow(chunk_bytes: int | None) -> tuple[float, int]:
    """The package's snapshot read alone: binary COPY (ADBC) -> typed Arrow batches, dropped (no destination)."""
    from airflow_pg_replication.hooks.replication import PgReplicationHook
    from airflow_pg_replication.source import snapshot_reads as snapshot

    hook = PgReplicationHook(postgres_conn_id="pg_source")
    with hook.connect() as conn:
        info = hook.table_info(conn, "public", "customers")
    kw = {"block_bytes": chunk_bytes} if chunk_bytes else {}
    with hook.connect(autocommit=False) as conn:
        snapshot.begin_snapshot(conn, None)
        t0 = time.monotonic()
        n = 0
        for batch in snapshot.copy_batches(conn, info, lsn=1, progress=snapshot.CopyProgress("bench"), **kw):
            n += batch.num_rows
        secs = time.monotonic() - t0
        conn.rollback()
    return secs, n


def ladder(dsn: str, tmp: Path, chunk_bytes: int | None) -> list[tuple[str, float, str]]:
    """Cumulative stages of the read path, each timed alone (best of 2)."""
    import psycopg

    from airflow_pg_replication.source.binary_copy import BinaryCopyReader
    from airflow_pg_replication.source.catalog import read_table_info

    with psycopg.connect(dsn) as conn:  # the query the package sends (numeric as text, array guards)
        query = BinaryCopyReader(conn, read_table_info(conn, "public", "customers")).query().as_string(conn)
    raw_s, raw_bytes = best_of(2, lambda: drain_copy(dsn, f"COPY ({query}) TO STDOUT (FORMAT binary)"))
    reads = [
        run_child(Path(__file__), {"op": "read", "chunk_bytes": chunk_bytes}, workdir=tmp, what="snapshot read alone")
        for _ in range(2)
    ]
    best = min(reads, key=lambda r: r.result["execute_s"])
    totals = {r[1][-1]: r[2] for r in best.result["phases"]["rows"]}
    return [
        (f"raw COPY binary of the package's query ({raw_bytes / 1e6:,.0f} MB)", raw_s, ""),
        (
            "package binary COPY (ADBC) -> typed Arrow batches, no destination",
            best.result["execute_s"],
            f"; ADBC read {totals.get('snapshot.read', 0):.2f} s + conversion "
            f"{totals.get('snapshot.convert', 0):.2f} s; child peak RSS {max(r.peak_rss_mb for r in reads):,.0f} MB",
        ),
    ]


def phases(tmp: Path, chunk_bytes: int | None, slot: str | None, parallelism: int | None = None) -> None:
    """One more child run with the package's phase timings and an RSS sampler (no profiler)."""
    run = run_child(
        Path(__file__),
        {
            "duckdb": str(tmp / "phases.duckdb"),
            "chunk_bytes": chunk_bytes,
            "slot": slot,
            "phases": True,
            "parallelism": parallelism,
        },
        workdir=tmp,
        what="phase-timed execute",
    )
    r = run.result
    print(
        f"\nPhase timings, one more child execute() ({r['out']['rows']:,} rows, {r['execute_s']:.2f} s, "
        f"peak RSS {run.peak_rss_mb:,.0f} MB; RSS before execute {r['rss_before_execute_mb']:,.0f} MB; "
        "peak RSS column = highest RSS sampled while the phase ran):"
    )
    print_phases(r["phases"], r["execute_s"])
    print_timeline(r["phases"])


def profile(tmp: Path, chunk_bytes: int | None, slot: str | None, parallelism: int | None = None) -> None:
    op = _operator(str(tmp / "profile.duckdb"), chunk_bytes, slot, parallelism)
    import_heavy()  # as in the timed runs: module imports are not part of the profile
    with quiet_logging():
        out, stats, wall = profile_call(lambda: op.execute({}))
    print(
        f"\ncProfile of one in-process execute() ({out['rows']:,} rows; {wall:.2f} s under the profiler, "
        "main thread only):"
    )
    print("Top 30 by cumulative time:")
    print_top(stats, 30, total=wall)
    s = stats
    rows = [
        (
            "NativeDuckDb.replace (Arrow stream -> DuckDB; pulls the COPY generator)",
            cum(s, "airflow_pg_replication/destination/duckdb/native.py", "replace"),
        ),
        (
            "pyarrow parquet writing (ParquetWriter.write_*)",
            cum(s, "pyarrow/parquet/core.py", "write_batch") + cum(s, "pyarrow/parquet/core.py", "write_table"),
        ),
        (
            "dlt config resolution (resolve_configuration)",
            cum(s, "dlt/common/configuration/resolve.py", "resolve_configuration"),
        ),
        (
            "dlt schema/arrow normalisation in extract (self time, dlt/common/libs/pyarrow.py)",
            self_time_under(s, "dlt/common/libs/pyarrow.py"),
        ),
        (
            "waiting on threads (lock.acquire: load jobs, read-ahead)",
            cum(s, "~", "<method 'acquire' of '_thread.lock' objects>"),
        ),
    ]
    print(
        "\nSelected cost centres from the profile (cumulative, % of profiled execute; the read and its "
        "conversion run on the read-ahead thread, outside this profile: see the phase timings):"
    )
    print_centres(rows, wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in customers (default 1,000,000)")
    ap.add_argument("--chunk-bytes", type=int, default=None, help="chunk_bytes (default: the operator's)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs (fresh process and DuckDB file each)")
    ap.add_argument("--profile", action="store_true", help="also: stage ladder, phase timings and cProfile")
    ap.add_argument("--phases", action="store_true", help="only the phase-timed child run of --profile")
    ap.add_argument("--slot-group", action="store_true", help="join slot group default, not a dedicated slot")
    ap.add_argument("--parallelism", type=int, default=None, help="snapshot_parallelism (default: the machine's)")
    ap.add_argument("--no-dlt", action="store_true", help="skip dlt's sql_table + connectorx run")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    slot = None if args.slot_group else "pgrepl_bench_snapshot"

    with bench_env() as tmp, cluster() as (pg, dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        how = "joining slot group default" if slot is None else f"on dedicated slot {slot}"
        print(f"full refresh benchmark: {args.rows:,} rows, {how}, PostgreSQL at {pg.bindir}; {package_state()}")
        seed_s = seed(pg, dsn, args.rows)
        size = table_size_mb(dsn)
        print(f"  seeded customers in {seed_s:.1f} s ({size:,.0f} MB on disk incl. indexes)")

        raw_s, raw_bytes = best_of(
            2, lambda: drain_copy(dsn, "COPY (SELECT * FROM customers) TO STDOUT (FORMAT binary)")
        )

        runs = []
        try:
            for i in range(max(args.repeat, 1)):
                duck = str(tmp / f"bench{i}.duckdb")
                runs.append(
                    (
                        run_child(
                            Path(__file__),
                            {
                                "duckdb": duck,
                                "chunk_bytes": args.chunk_bytes,
                                "slot": slot,
                                "parallelism": args.parallelism,
                            },
                            workdir=tmp,
                            what="PgFullRefreshOperator.execute",
                        ),
                        duck,
                    )
                )
            dlt_run = None
            if not args.no_dlt:
                try:
                    import connectorx  # noqa: F401

                    dlt_run = run_child(
                        Path(__file__),
                        {"op": "dlt", "source": dsn, "duckdb": str(tmp / "dlt.duckdb"), "workdir": str(tmp / "dlt")},
                        workdir=tmp,
                        what="dlt sql_table + connectorx",
                    )
                except ImportError:
                    print("  dlt sql_table + connectorx: connectorx is not installed (pip install -e '.[bench]')")
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1
        run, duck = min(runs, key=lambda rd: rd[0].result["execute_s"])
        peak_rss = max(rd[0].peak_rss_mb for rd in runs)
        r = run.result
        op_s = r["execute_s"]
        count = duck_count(duck)
        ratio = op_s / raw_s
        ok_count = count == args.rows and r["out"]["rows"] == args.rows

        print("\nResults")
        line(
            "rows (source / operator / DuckDB)",
            f"{args.rows:,} / {r['out']['rows']:,} / {count:,}  {'OK' if ok_count else 'MISMATCH'}",
        )
        line(
            "raw COPY binary -> /dev/null (best of 2)",
            f"{raw_s:.2f} s  ({raw_bytes / 1e6:,.0f} MB, {args.rows / raw_s:,.0f} rows/s)",
        )
        line(
            "operator execute()" + (f" (best of {len(runs)})" if len(runs) > 1 else ""),
            f"{op_s:.2f} s  ({args.rows / op_s:,.0f} rows/s)",
        )
        line(
            "  CPU of the task's process (all threads)",
            f"{r['cpu_s']:.2f} s; with the source's COPY backend (~raw) {r['cpu_s'] + raw_s:.2f} CPU-s for"
            f" {os.cpu_count()} CPUs: no run beats {(r['cpu_s'] + raw_s) / (os.cpu_count() or 1):.2f} s here",
        )
        line(
            "  + first import of dlt/pyarrow/duckdb/adbc/numpy/psycopg/PostgresHook",
            f"{r['heavy_import_s']:.2f} s (paid once per task process;"
            f" airflow+provider import {r['airflow_import_s']:.2f} s)",
        )
        line(
            f"ratio operator / raw (target <= {TARGET_RATIO})",
            f"{ratio:.2f}  {verdict(ratio <= TARGET_RATIO)}"
            f"   (incl. heavy imports: {(op_s + r['heavy_import_s']) / raw_s:.2f})",
        )
        if len(runs) > 1:
            line(
                "all runs: execute s / peak RSS MB",
                ", ".join(f"{rd[0].result['execute_s']:.2f} / {rd[0].peak_rss_mb:,.0f}" for rd in runs),
            )
        line(
            "peak RSS of the operator process (<= 512 MB)",
            f"{peak_rss:,.0f} MB  "
            f"{verdict(peak_rss <= TARGET_RSS_MB)}   (process alone; "
            f"RSS after imports, before execute: {r['rss_before_execute_mb']:,.0f} MB{run.rss_note()})",
        )
        overall = ok_count and ratio <= TARGET_RATIO and peak_rss <= TARGET_RSS_MB
        if dlt_run is not None:
            dlt_s = dlt_run.result["execute_s"]
            speedup = dlt_s / op_s
            line(
                "dlt sql_table + connectorx -> duckdb",
                f"{dlt_s:.2f} s ({dlt_s / raw_s:.2f}x raw); operator is {speedup:.2f}x faster"
                f" (target >= {TARGET_DLT_SPEEDUP})  {verdict(speedup >= TARGET_DLT_SPEEDUP)}",
            )
            overall = overall and speedup >= TARGET_DLT_SPEEDUP
        line("overall", verdict(overall))
        print(f"  machine: {machine_note()}")

        if args.profile:
            print("\nStage ladder (each stage timed alone, best of 2):")
            line("raw COPY binary, SELECT *", f"{raw_s:.2f} s")
            for label, secs, note in ladder(dsn, tmp, args.chunk_bytes):
                line(label, f"{secs:.2f} s  ({secs / raw_s:.2f}x raw){note}")
            line("full operator execute() (child run above)", f"{op_s:.2f} s  ({ratio:.2f}x raw)")
            phases(tmp, args.chunk_bytes, slot, args.parallelism)
            profile(tmp, args.chunk_bytes, slot, args.parallelism)
        elif args.phases:
            phases(tmp, args.chunk_bytes, slot, args.parallelism)

    if not ok_count:
        return 1
    return 1 if (args.strict and not overall) else 0


if __name__ == "__main__":
    if "--_child" in sys.argv:
        child_entry(in_child)
    sys.exit(main())
