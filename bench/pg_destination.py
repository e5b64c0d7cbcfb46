#!/usr/bin/env python
"""Benchmark: PostgreSQL -> PostgreSQL (the native PostgreSQL destination) against a raw COPY pipe and dlt.

Starts two throwaway PostgreSQL clusters, a source and a warehouse; builds ``customers`` from
bench/seed.sql with --rows rows in the source. Then, in one run:

  snapshot
    (a) raw:   ``COPY (SELECT * FROM customers) TO STDOUT (FORMAT binary)`` piped chunk by chunk into
               ``COPY raw.customers FROM STDIN (FORMAT binary)`` on the warehouse, into a table of the
               same columns and primary key, with psycopg (best of 2): the ratio's base.
    (b) ours:  PgFullRefreshOperator(mode="cdc", destination type postgres).execute({}) in a child
               process (on a dedicated slot), peak RSS of that process alone.
    (c) dlt:   ``dlt.sources.sql_database.sql_table(backend="connectorx")`` into dlt's postgres
               destination with ``loader_file_format="insert_values"`` (its default, csv, cannot write
               the text[] column) (``pip install connectorx``; skipped with a note when missing).
  CDC
    --changes row changes (bench/cdc_workload.py), then
    (a) raw:   every (lsn, data) row of the slot's peek fetched into Python (best of 2);
    (b) ours:  PgCdcApplyOperator(...).execute({}) until caught up, in a child process.

Both copies are compared with the source on every column (md5 of the rows' text, in key order).
Targets: snapshot <= 2.5x the COPY pipe; CDC <= 4x the raw fetch; peak RSS <= 512 MB.
Exit status 0 unless something broke (--strict: also when a target is missed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cdc_workload import plan, raw_python_fetch, workload_sql
from child import ChildFailed, child_entry, import_heavy, print_child_failure, proc_status_mb, run_child
from env import bench_env, best_of, cluster, run_psql, seed
from phases import print_phases, record_phases
from report import line, machine_note, package_state, verdict

TARGET_SNAPSHOT = 2.5
TARGET_CDC = 4.0
TARGET_RSS_MB = 512.0
SLOT = "pgrepl_bench_pgdest"
RAW_SLOT = "pgrepl_bench_raw"
COLUMNS = "customer_id, first_name, last_name, email, balance, tags, attrs, created_at, updated_at"
DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
DROP TABLE IF EXISTS raw.customers;
CREATE TABLE raw.customers (
  customer_id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, email text,
  balance numeric(12,2), tags text[], attrs jsonb, created_at timestamptz NOT NULL, updated_at timestamptz
);
"""


def _destination(uri: str) -> dict:
    return {"type": "postgres", "credentials": uri, "dataset": "replica"}


def _drain(op: Any) -> tuple[float, list[dict]]:
    calls = []
    t0 = time.monotonic()
    while True:
        out = op.execute({})
        calls.append(out)
        if not out["more"]:
            return time.monotonic() - t0, calls


def in_child(payload: dict) -> dict:
    """Runs in the child process: our snapshot, our apply loop, or dlt's sql_table."""
    if payload["op"] == "dlt":
        import dlt
        from dlt.sources.sql_database import sql_table

        t0 = time.monotonic()
        # dlt's postgres credentials insist on a password: the cluster trusts local connections, so any will do
        warehouse = payload["warehouse"].replace("://postgres@", "://postgres:unused@", 1)
        pipeline = dlt.pipeline(
            pipeline_name="bench_cx",
            pipelines_dir=payload["workdir"],
            destination=dlt.destinations.postgres(warehouse),
            dataset_name="dlt_cx",
        )
        # dlt's default for postgres (csv) cannot write the text[] column: insert_values can
        pipeline.run(
            sql_table(credentials=payload["source"], table="customers", backend="connectorx"),
            loader_file_format="insert_values",
        )
        return {"execute_s": time.monotonic() - t0}
    from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator

    import_heavy()
    rss_before = proc_status_mb("VmRSS")
    dest = _destination(payload["warehouse"])
    if payload["op"] == "snapshot":
        op = PgFullRefreshOperator(
            task_id="snapshot", table="public.customers", destination=dest, mode="cdc", slot=SLOT
        )
        t0 = time.monotonic()
        out = op.execute({})
        return {"execute_s": time.monotonic() - t0, "rows": out.get("rows"), "rss_before_mb": rss_before}
    apply = PgCdcApplyOperator(task_id="apply", table="public.customers", destination=dest, slot=SLOT)
    report = None
    if payload.get("phases"):
        (secs, calls), report = record_phases(lambda: _drain(apply))
    else:
        secs, calls = _drain(apply)
    return {
        "phases": report,
        "execute_s": secs,
        "changes": sum(c["changes"] for c in calls),
        "batches": sum(c["batches"] for c in calls),
        "rss_before_mb": rss_before,
    }


def raw_pipe(dsn: str, wh_dsn: str) -> tuple[float, int]:
    """COPY binary out of the source, chunk by chunk into COPY binary on the warehouse (table made first)."""
    import psycopg

    with psycopg.connect(wh_dsn, autocommit=True) as wh:
        wh.execute(DDL)
    with psycopg.connect(dsn) as src, psycopg.connect(wh_dsn) as wh:
        t0 = time.monotonic()
        n = 0
        with (
            src.cursor().copy("COPY (SELECT * FROM customers) TO STDOUT (FORMAT binary)") as out,
            wh.cursor().copy("COPY raw.customers FROM STDIN (FORMAT binary)") as into,
        ):
            for chunk in out:
                into.write(chunk)
                n += len(chunk)
        wh.commit()
        return time.monotonic() - t0, n


def digest(dsn: str, table: str, where: str = "") -> tuple[int, str]:
    """(rows, md5 of every row's text in key order) over the source's columns."""
    import psycopg
    from psycopg import sql

    schema, name = table.split(".")
    query = sql.SQL(
        "SELECT count(*), md5(string_agg(r::text, '|' ORDER BY r.customer_id)) FROM (SELECT {} FROM {} {}) r"
    ).format(sql.SQL(COLUMNS), sql.Identifier(schema, name), sql.SQL(where))
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        count, md5 = conn.execute(query).fetchone()
        return count, md5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in customers (default 1,000,000)")
    ap.add_argument("--changes", type=int, default=500_000, help="row changes for the CDC part (default 500,000)")
    ap.add_argument("--no-dlt", action="store_true", help="skip dlt's sql_table run")
    ap.add_argument("--phases", action="store_true", help="time the apply loop's phases (a little slower)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()

    with bench_env() as tmp, cluster() as (pg, dsn), cluster("warehouse") as (_wh, wh_dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        print(f"PostgreSQL destination benchmark: {args.rows:,} rows, {args.changes:,} changes; {package_state()}")
        print(f"  seeded customers in {seed(pg, dsn, args.rows):.1f} s")
        pipe_s, pipe_bytes = best_of(2, lambda: raw_pipe(dsn, wh_dsn))
        payload = {"warehouse": wh_dsn, "source": dsn, "workdir": str(tmp / "dlt")}
        try:
            snap = run_child(Path(__file__), {**payload, "op": "snapshot"}, workdir=tmp, what="snapshot")
            cx = None
            if not args.no_dlt:
                try:
                    import connectorx  # noqa: F401

                    cx = run_child(Path(__file__), {**payload, "op": "dlt"}, workdir=tmp, what="dlt sql_table")
                except ImportError:
                    print("  dlt sql_table + connectorx: connectorx is not installed (pip install connectorx)")
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1
        snap_same = digest(dsn, "public.customers") == digest(wh_dsn, "replica.customers")

        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (RAW_SLOT,))
        rows_now = args.rows
        t0 = time.monotonic()
        run_psql(pg, dsn, command=workload_sql(args.changes, rows_now, plan(args.changes, rows_now)))
        print(f"  CDC workload ran in {time.monotonic() - t0:.1f} s")
        fetch_s, _ = best_of(2, lambda: (lambda r: (r[0], None))(raw_python_fetch(dsn, RAW_SLOT, SLOT)))
        try:
            cdc = run_child(
                Path(__file__), {**payload, "op": "apply", "phases": args.phases}, workdir=tmp, what="apply loop"
            )
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1
        cdc_same = digest(dsn, "public.customers") == digest(wh_dsn, "replica.customers")

    s, c = snap.result, cdc.result
    snap_ratio, cdc_ratio = s["execute_s"] / pipe_s, c["execute_s"] / fetch_s
    rss = max(snap.peak_rss_mb, cdc.peak_rss_mb)
    ok = {
        "snapshot": snap_ratio <= TARGET_SNAPSHOT,
        "cdc": cdc_ratio <= TARGET_CDC,
        "rss": rss <= TARGET_RSS_MB,
    }
    print("\nResults")
    line("raw COPY pipe source -> warehouse (best of 2)", f"{pipe_s:.2f} s  ({pipe_bytes / 1e6:,.0f} MB binary)")
    line(
        "snapshot: PgFullRefreshOperator -> postgres",
        f"{s['execute_s']:.2f} s  ({s['rows']:,} rows; {snap_ratio:.2f}x the pipe, <= {TARGET_SNAPSHOT}: "
        f"{verdict(ok['snapshot'])})",
    )
    if cx is not None:
        cx_s = cx.result["execute_s"]
        line(
            "dlt sql_table + connectorx -> postgres",
            f"{cx_s:.2f} s  ({cx_s / pipe_s:.2f}x the pipe; ours is {cx_s / s['execute_s']:.2f}x faster)",
        )
    line("raw drain: Python fetch of the peek (best of 2)", f"{fetch_s:.2f} s")
    line(
        "CDC: PgCdcApplyOperator loop -> postgres",
        f"{c['execute_s']:.2f} s  ({c['changes']:,} changes in {c['batches']} batches; {cdc_ratio:.2f}x the fetch, "
        f"<= {TARGET_CDC}: {verdict(ok['cdc'])})",
    )
    line(f"peak RSS of our processes (<= {TARGET_RSS_MB:.0f} MB)", f"{rss:,.0f} MB  {verdict(ok['rss'])}")
    line("warehouse equals source (every column)", f"after the snapshot: {snap_same}; after CDC: {cdc_same}")
    print(f"  machine: {machine_note()}")
    if c.get("phases"):
        print("\nPhase timings of the apply loop")
        print_phases(c["phases"], c["execute_s"])
    exact = snap_same and cdc_same
    return 0 if exact and (not args.strict or all(ok.values())) else 1


if __name__ == "__main__":
    if "--_child" in sys.argv:
        child_entry(in_child)
    sys.exit(main())
