#!/usr/bin/env python
"""Benchmark: slot groups (capture into the change log, then apply per table) vs a raw drain of the same WAL.

Two scenarios, each on a fresh throwaway PostgreSQL (bench/seed.sql's ``customers`` shape):

  one:    ``customers`` (--rows rows), --changes row changes (bench/cdc_workload.py: 100-row
          transactions, 60 % updates, 20 % inserts, 20 % deletes).
  twenty: 20 tables ``t01`` .. ``t20`` (--rows / 20 rows each), --changes changes spread evenly over
          them, interleaved in one WAL (each workload transaction runs once per table).

Every table is snapshotted first by PgFullRefreshOperator joining slot group ``default`` (one slot,
``pgrepl_default``, and its publication). A raw slot is created before the changes. Then:

  (a) raw drain: every (lsn, data) row of ``pg_logical_slot_peek_binary_changes`` on the raw slot with
      the group's publication, fetched into Python with psycopg (best of 2): the ratio's base, as in
      bench/cdc.py; the server-side count/sum of the same peek for information.
  (b) in one child process: PgCaptureOperator(...).execute({}) until caught up (the group's slot drained
      into the change log under $AIRFLOW_HOME, durable before the slot advances), then each table's
      PgCdcApplyOperator(...).execute({}) until caught up (each reads its own segments of the log).
      Wall time of both; peak RSS of that process alone.
  (c) twenty only: what 20 dedicated slots cost the source on the same WAL: one peek per table with a
      publication of that table alone (each decodes the whole WAL), server side and Python fetch.

Every table's DuckDB copy is compared with the source on every column. Targets: one table
(capture + apply) / raw <= 3.0 and peak RSS <= 512 MB; twenty tables (capture + all applies) / one raw
drain <= 4.0. Exit status 0 unless something broke (--strict: also when a target is missed).

Usage: ``.venv/bin/python bench/groups.py [--scenario one|twenty|both] [--changes 500000] [--rows 200000]
[--phases]`` (--phases: the package's phase timings of the capture + apply run, a little slower).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cdc_workload import compare, plan, raw_python_fetch, raw_sql_drain, workload_sql
from child import ChildFailed, child_entry, import_heavy, print_child_failure, proc_status_mb, run_child
from env import bench_env, best_of, cluster, run_psql, seed
from phases import print_phases, record_phases
from report import line, machine_note, package_state, verdict

TARGET_ONE = 3.0
TARGET_TWENTY = 4.0
TARGET_RSS_MB = 512.0
GROUP_PUBLICATION = "pgrepl_default"  # slot group default's slot and publication (registry.names.group_slot_name)
RAW_SLOT = "pgrepl_bench_raw"


def _dest(path: str) -> dict:
    return {"type": "duckdb", "credentials": path, "dataset": "replica"}


def _drain(op: Any, max_calls: int = 10_000) -> tuple[float, list[dict]]:
    """execute() until a run says nothing more is waiting; returns (seconds, results)."""
    calls = []
    t0 = time.monotonic()
    for _ in range(max_calls):
        out = op.execute({})
        calls.append(out)
        if not out["more"]:
            return time.monotonic() - t0, calls
    raise RuntimeError(f"{op.task_id} did not catch up within {max_calls} calls")


def in_child(payload: dict) -> dict:
    """Runs in the child process: the snapshots, or the timed capture + applies."""
    from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
    from airflow_pg_replication.operators.capture import PgCaptureOperator

    import_heavy()
    rss_before = proc_status_mb("VmRSS")
    tables = payload["tables"]
    if payload["op"] == "snapshots":
        t0 = time.monotonic()
        for t in tables:
            PgFullRefreshOperator(
                task_id="snapshot", table=t, destination=_dest(payload["duckdb"]), mode="cdc"
            ).execute({})
        return {"seconds": time.monotonic() - t0}
    capture = PgCaptureOperator(task_id="capture", tables=tables, back_off_after_failed_runs=False)
    applies: list[dict] = []

    def capture_and_apply() -> tuple[float, list[dict]]:
        capture_s, captures = _drain(capture)
        for t in tables:
            op = PgCdcApplyOperator(task_id="apply", table=t, destination=_dest(payload["duckdb"]))
            secs, calls = _drain(op)
            applies.append({"table": t, "seconds": secs, "changes": sum(c["changes"] for c in calls)})
        return capture_s, captures

    report = None
    if payload.get("phases"):
        (capture_s, captures), report = record_phases(capture_and_apply)
    else:
        capture_s, captures = capture_and_apply()
    return {
        "phases": report,
        "capture_s": capture_s,
        "captured": sum(c["changes"] for c in captures),
        "capture_calls": len(captures),
        "capture_batches": sum(c["batches"] for c in captures),
        "applies": applies,
        "rss_before_mb": rss_before,
    }


def build_tables(pg: Any, dsn: str, rows: int, count: int) -> list[str]:
    """``customers`` (count 1) or t01..tNN, each a copy of customers' first rows/count rows."""
    seed(pg, dsn, rows if count == 1 else rows // count)
    if count == 1:
        return ["customers"]
    import psycopg
    from psycopg import sql

    names = [f"t{k:02d}" for k in range(1, count + 1)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE customers INCLUDING ALL)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM customers").format(sql.Identifier(name)))
        conn.execute("DROP TABLE customers")
    return names


def create_table_publications(dsn: str, tables: list[str]) -> None:
    """A publication per table, as dedicated slots have (before the raw slot: pgoutput reads them as of each change)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(f"pgrepl_bench_{t}"), sql.Identifier(t)
                )
            )


def dedicated_slots_cost(dsn: str, tables: list[str]) -> tuple[float, float]:
    """One peek per table with a publication of that table alone: (server-side s, Python fetch s), summed."""
    server = fetch = 0.0
    for t in tables:
        server += raw_sql_drain(dsn, RAW_SLOT, f"pgrepl_bench_{t}")[0]
        secs, rows = raw_python_fetch(dsn, RAW_SLOT, f"pgrepl_bench_{t}")
        del rows
        fetch += secs
    return server, fetch


def scenario(name: str, count: int, args: argparse.Namespace) -> bool:
    with bench_env() as tmp, cluster() as (pg, dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        tables = build_tables(pg, dsn, args.rows, count)
        per_table = args.changes // count
        rows_each = args.rows // count
        print(
            f"\nslot group benchmark [{name}]: {count} table(s) of {rows_each:,} rows, {per_table * count:,} "
            f"changes ({per_table:,} per table), {package_state()}"
        )
        duck = str(tmp / "warehouse.duckdb")
        try:
            snap = run_child(Path(__file__), {"op": "snapshots", "tables": tables, "duckdb": duck}, workdir=tmp,
                             what="snapshots joining slot group default")  # fmt: skip
        except ChildFailed as exc:
            print_child_failure(exc)
            return False
        print(f"  snapshots of {count} table(s) into slot group default: {snap.result['seconds']:.1f} s")

        import psycopg

        if count > 1:
            create_table_publications(dsn, tables)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (RAW_SLOT,))
        t0 = time.monotonic()
        run_psql(pg, dsn, command=workload_sql(per_table, rows_each, plan(per_table, rows_each), tuple(tables)))
        print(f"  workload ran in {time.monotonic() - t0:.1f} s")

        server_s, (messages, size) = best_of(2, lambda: raw_sql_drain(dsn, RAW_SLOT, GROUP_PUBLICATION))
        fetch_s, _ = best_of(2, lambda: (lambda r: (r[0], None))(raw_python_fetch(dsn, RAW_SLOT, GROUP_PUBLICATION)))

        try:
            payload = {"op": "capture_apply", "tables": tables, "duckdb": duck, "phases": args.phases}
            run = run_child(Path(__file__), payload, workdir=tmp, what="capture + apply")
        except ChildFailed as exc:
            print_child_failure(exc)
            return False
        r = run.result
        apply_s = sum(a["seconds"] for a in r["applies"])
        applied = sum(a["changes"] for a in r["applies"])
        total = r["capture_s"] + apply_s
        ratio = total / fetch_s
        checks = [(t, compare(dsn, duck, t)) for t in tables]
        exact = all(not diffs and n_src == n_dst for _, (n_src, n_dst, diffs) in checks)

        target = TARGET_ONE if count == 1 else TARGET_TWENTY
        ok_ratio = ratio <= target
        ok_rss = run.peak_rss_mb <= TARGET_RSS_MB
        print("\nResults")
        line(
            "slot content (peek, group publication)", f"{messages:,} messages, {(size or 0) / 1e6:,.1f} MB of pgoutput"
        )
        line("raw drain, server side: count/sum (best of 2)", f"{server_s:.2f} s")
        line("raw drain, Python fetch of (lsn, data) (best of 2)", f"{fetch_s:.2f} s  (ratio base)")
        line(
            "capture: execute() calls, batches",
            f"{r['capture_calls']}, {r['capture_batches']}; {r['captured']:,} changes in {r['capture_s']:.2f} s "
            f"({r['captured'] / max(r['capture_s'], 1e-9):,.0f} changes/s)",
        )
        slowest = max(r["applies"], key=lambda a: a["seconds"])
        line(
            f"apply of {count} table(s) from the log",
            f"{applied:,} changes in {apply_s:.2f} s ({applied / max(apply_s, 1e-9):,.0f} changes/s; "
            f"slowest table {slowest['table']} {slowest['seconds']:.2f} s)",
        )
        line(
            f"ratio (capture + apply) / raw fetch (<= {target:.1f})",
            f"{ratio:.2f}  {verdict(ok_ratio)}   "
            f"(capture {r['capture_s'] / fetch_s:.2f}x + apply {apply_s / fetch_s:.2f}x)",
        )
        line(f"peak RSS of that process (<= {TARGET_RSS_MB:.0f} MB)", f"{run.peak_rss_mb:,.0f} MB  {verdict(ok_rss)}")
        line(
            "destination equals source (all columns)",
            "yes, every table" if exact else f"NO: {[(t, c) for t, c in checks if c[2] or c[0] != c[1]][:2]}",
        )
        if count > 1:
            ded_server, ded_fetch = dedicated_slots_cost(dsn, tables)
            line(
                f"{count} dedicated slots on the same WAL (information)",
                f"server-side decoding {ded_server:.2f} s ({ded_server / server_s:.1f}x the group's one slot); "
                f"Python fetch {ded_fetch:.2f} s; every slot decodes the whole WAL",
            )
        print(f"  machine: {machine_note()}")
        if r["phases"]:
            print("\nPhase timings of that run (phase timings on: a few % slower than without)")
            print_phases(r["phases"], total)
        return exact and (not args.strict or (ok_ratio and ok_rss))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["one", "twenty", "both"], default="both")
    ap.add_argument("--changes", type=int, default=500_000, help="row changes in all (default 500,000)")
    ap.add_argument("--rows", type=int, default=200_000, help="initial rows in all (default 200,000)")
    ap.add_argument("--phases", action="store_true", help="time the run's phases too (bench/phases.py)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    ok = True
    if args.scenario in ("one", "both"):
        ok &= scenario("one", 1, args)
    if args.scenario in ("twenty", "both"):
        ok &= scenario("twenty", 20, args)
    return 0 if ok else 1


if __name__ == "__main__":
    if "--_child" in sys.argv:
        child_entry(in_child)
    sys.exit(main())
