#!/usr/bin/env python
"""Benchmark: PgCdcApplyOperator draining a slot vs a raw read of the same slot.

Starts a throwaway PostgreSQL, builds ``customers`` from bench/seed.sql (--rows rows), snapshots it
with PgFullRefreshOperator (which creates the slot), then runs --changes row changes in
100-row transactions, round robin: 3 update transactions, 1 insert, 1 delete (60/20/20 %),
generated server-side in one DO block (deterministic; bench/cdc_workload.py). Then:
  (a) raw drain: SELECT count(*), sum(length(data)) FROM pg_logical_slot_peek_binary_changes(...)
      (server-side decoding only, best of 2), and the documented Python baseline: all (lsn, data)
      rows of that peek fetched into Python with psycopg (the ratio's base).
  (b) PgCdcApplyOperator(max_batch_changes=--batch).execute({}) in a loop until a run returns
      more == false (it read up to the LSN fixed at its start: caught up), in a child process (wall
      time; peak RSS of that process alone: max of its VmHWM and /proc polling, not ru_maxrss, see
      child.ChildRun).
--repeat runs (default 3; this machine's speed drifts ±20 % within a minute) of each, alternately (a
fetch, then an apply run on its own slot and DuckDB file, all snapshotted before the changes): the
ratio is best apply / best fetch, and each pair's ratio is printed too. Every run's DuckDB copy is
compared with the source on every column. Targets: apply/raw <= 3.0, peak RSS <= 512 MB (the highest
of the runs). --profile adds a decode/fold ladder, the package's phase timings (bench/phases.py) and
a cProfile run, each on its own extra slot; --phases: only the phase-timed run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cdc_profile import decode_fold_ladder, print_profile
from cdc_workload import compare, plan, raw_python_fetch, raw_sql_drain, workload_sql
from child import ChildFailed, child_entry, import_heavy, print_child_failure, proc_status_mb, run_child
from env import bench_env, best_of, cluster, run_psql, seed
from phases import print_phases, record_phases
from profiling import profile_call, quiet_logging
from report import line, machine_note, package_state, verdict

TARGET_RATIO = 3.0
TARGET_RSS_MB = 512.0
TABLE = "public.customers"
PROFILE_SLOTS = {"phases": "pgrepl_bench_phases", "profile": "pgrepl_bench_profile"}


def _dest(path: str) -> dict:
    return {"type": "duckdb", "credentials": path, "dataset": "replica"}


def _full_refresh(duckdb_path: str, slot: str | None) -> Any:
    from airflow_pg_replication import PgFullRefreshOperator

    return PgFullRefreshOperator(
        task_id="bench_snapshot", table=TABLE, destination=_dest(duckdb_path), mode="cdc", slot=slot
    )


def _apply(duckdb_path: str, slot: str | None, batch: int) -> Any:
    from airflow_pg_replication import PgCdcApplyOperator

    return PgCdcApplyOperator(
        task_id="bench_apply", table=TABLE, destination=_dest(duckdb_path), max_batch_changes=batch, slot=slot
    )


def apply_loop(op: Any, max_calls: int = 100_000) -> list[dict]:
    """execute() until a run says nothing more is waiting: it read to the LSN fixed at its start.

    The workload is over before the first call, so that run has applied every change.
    """
    calls = []
    for _ in range(max_calls):
        t0 = time.monotonic()
        out = op.execute({})
        out["wall_s"] = time.monotonic() - t0
        calls.append(out)
        if not out["more"]:
            return calls
    raise RuntimeError(f"apply loop did not finish within {max_calls} calls")


def in_child(payload: dict) -> dict:
    """Runs in the child process: a snapshot, or the timed apply loop (with phase timings if asked)."""
    t0 = time.monotonic()
    from airflow_pg_replication.operators.cdc_apply import PgCdcApplyOperator  # noqa: F401  (airflow)

    airflow_import = time.monotonic() - t0
    heavy_import = import_heavy()
    rss_before = proc_status_mb("VmRSS")
    if payload["op"] == "full_refresh":
        op = _full_refresh(payload["duckdb"], payload.get("slot"))
        t0 = time.monotonic()
        out = op.execute({})
        return {"execute_s": time.monotonic() - t0, "out": out}
    op = _apply(payload["duckdb"], payload.get("slot"), payload["batch"])
    report = None
    t0 = time.monotonic()
    if payload.get("phases"):
        calls, report = record_phases(lambda: apply_loop(op))
    else:
        calls = apply_loop(op)
    secs = time.monotonic() - t0
    return {
        "execute_s": secs,
        "calls": calls,
        "airflow_import_s": airflow_import,
        "heavy_import_s": heavy_import,
        "rss_before_execute_mb": rss_before,
        "phases": report,
    }


def phases(tmp: Path, batch: int) -> None:
    """The apply loop once more, in a child with the package's phase timings and an RSS sampler (no profiler)."""
    payload = {
        "op": "apply_loop",
        "duckdb": str(tmp / "phases.duckdb"),
        "batch": batch,
        "slot": PROFILE_SLOTS["phases"],
        "phases": True,
    }
    run = run_child(Path(__file__), payload, workdir=tmp, what="phase-timed apply loop")
    r = run.result
    print(
        f"\nPhase timings, the apply loop once more in a child ({sum(c['changes'] for c in r['calls']):,} changes, "
        f"{len(r['calls'])} call(s), {sum(c.get('batches', 1) for c in r['calls'])} batches, {r['execute_s']:.2f} s, "
        f"peak RSS {run.peak_rss_mb:,.0f} MB; peak RSS column = highest RSS sampled while the phase ran):"
    )
    print_phases(r["phases"], r["execute_s"])


def profile(tmp: Path, batch: int) -> None:
    """cProfile of one more apply loop, in this process (main thread only)."""
    op = _apply(str(tmp / "profile.duckdb"), PROFILE_SLOTS["profile"], batch)
    import_heavy()  # as in the timed runs: module imports are not part of the profile
    with quiet_logging():
        calls, stats, wall = profile_call(lambda: apply_loop(op))
    print_profile(calls, stats, wall)


def snapshots(tmp: Path, runs: list[tuple[str, str]], profiling: list[str]) -> Any:
    """One snapshot (slot + DuckDB file) per timed run and per profiling run, all before the changes."""
    snap = run_child(
        Path(__file__),
        {"op": "full_refresh", "duckdb": runs[0][0], "slot": runs[0][1]},
        workdir=tmp,
        what="PgFullRefreshOperator.execute (snapshot)",
    )
    extra = runs[1:] + [(str(tmp / f"{name}.duckdb"), PROFILE_SLOTS[name]) for name in profiling]
    for path, slot in extra:
        payload = {"op": "full_refresh", "duckdb": path, "slot": slot}
        run_child(Path(__file__), payload, workdir=tmp, what=f"snapshot for slot {slot}")
    return snap


def timed_runs(tmp: Path, dsn: str, slot: str, pub: str, runs: list, batch: int) -> tuple[list, list, list]:
    """Each timed apply run follows a raw fetch, so both sides see the machine in the same state."""
    fetches, applies, checks = [], [], []
    for duck, run_slot in runs:
        fetch_s, rows = raw_python_fetch(dsn, slot, pub)
        del rows
        fetches.append(fetch_s)
        payload = {"op": "apply_loop", "duckdb": duck, "batch": batch, "slot": run_slot}
        applies.append(run_child(Path(__file__), payload, workdir=tmp, what="PgCdcApplyOperator.execute loop"))
        checks.append(compare(dsn, duck))
    return fetches, applies, checks


def results(args: Any, sql: tuple, fetches: list, applies: list, checks: list) -> bool:
    """Print the results; returns whether every target was met."""
    sql_s, nmsg, nbytes = sql
    py_s = min(fetches)
    best = min(range(len(applies)), key=lambda k: applies[k].result["execute_s"])
    r = applies[best].result
    apply_s = r["execute_s"]
    applied = min(sum(c["changes"] for c in a.result["calls"]) for a in applies)
    nsrc, ndst, _diffs = checks[best]
    equal = all(n_src == n_dst and not d for n_src, n_dst, d in checks)
    ratio = apply_s / py_s
    peak = max(a.peak_rss_mb for a in applies)
    calls = r["calls"]
    print("\nResults")
    line("slot content (peek)", f"{nmsg:,} messages, {nbytes / 1e6:,.1f} MB of pgoutput")
    line("raw drain, server side: count/sum (best of 2)", f"{sql_s:.2f} s")
    runs_s = ", ".join(format(f, ".2f") for f in fetches)
    line(
        f"raw drain, Python fetch of (lsn, data) (best of {len(fetches)})",
        f"{py_s:.2f} s  (ratio base; runs: {runs_s} s)",
    )
    line(
        "apply loop: execute() calls",
        f"{len(calls)} (changes per call: {', '.join(format(c['changes'], ',') for c in calls)}; "
        f"batches per call: {', '.join(str(c.get('batches', 1)) for c in calls)})",
    )
    line("apply loop: changes applied / generated", f"{applied:,} / {args.changes:,} (every run)")
    line(
        f"apply loop wall time (best of {len(applies)})",
        f"{apply_s:.2f} s  ({args.changes / apply_s:,.0f} changes/s; per call: "
        f"{', '.join(format(c['wall_s'], '.1f') for c in calls)} s; runs: "
        f"{', '.join(format(a.result['execute_s'], '.2f') for a in applies)} s)",
    )
    line(
        "  + first import of dlt/pyarrow/duckdb/adbc/numpy/psycopg/PostgresHook",
        f"{r['heavy_import_s']:.2f} s (once per task process)",
    )
    pairs = ", ".join(format(a.result["execute_s"] / f, ".2f") for a, f in zip(applies, fetches))
    line(
        "ratio apply / raw Python fetch (<= 3.0)",
        f"{ratio:.2f}  {verdict(ratio <= TARGET_RATIO)}   "
        f"(best / best; run by run: {pairs}; vs server-side drain: {apply_s / sql_s:.2f})",
    )
    line(
        "peak RSS of the apply process (<= 512 MB)",
        f"{peak:,.0f} MB  {verdict(peak <= TARGET_RSS_MB)}   (highest of the runs, process alone; after imports "
        f"{r['rss_before_execute_mb']:,.0f} MB{applies[best].rss_note()})",
    )
    line(
        "destination equals source (all columns)",
        f"{'yes' if equal else 'NO'}  ({nsrc:,} source rows, {ndst:,} destination rows; every run checked)",
    )
    for d in (d for _a, _b, ds in checks for d in ds):
        print(f"    diff: {d}")
    overall = equal and applied == args.changes and ratio <= TARGET_RATIO and peak <= TARGET_RSS_MB
    line("overall", verdict(overall))
    print(f"  machine: {machine_note()}")
    return overall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=500_000, help="row changes to apply (default 500,000)")
    ap.add_argument("--rows", type=int, default=200_000, help="initial rows in customers (default 200,000)")
    ap.add_argument("--batch", type=int, default=100_000, help="max_batch_changes per execute() (default 100,000)")
    ap.add_argument("--profile", action="store_true", help="also: decode/fold ladder, phase timings and cProfile")
    ap.add_argument("--phases", action="store_true", help="only the phase-timed child run of --profile")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each side, alternately (default 3)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    p = plan(args.changes, args.rows)
    profiling = ["phases", "profile"] if args.profile else ["phases"] if args.phases else []

    with bench_env() as tmp, cluster() as (pg, dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        c = p["counts"]
        print(
            f"CDC benchmark: {args.rows:,} rows, {args.changes:,} changes ({c['update']:,} updates, "
            f"{c['insert']:,} inserts, {c['delete']:,} deletes in {p['ntx']:,} transactions), "
            f"max_batch_changes={args.batch:,}, {args.repeat} timed run(s) of each side"
        )
        print(f"  {package_state()}")
        print(f"  seeded customers in {seed(pg, dsn, args.rows):.1f} s")
        # every run on a dedicated slot of its own (not a slot group's change log): its publication has its name
        runs = [(str(tmp / f"run{k}.duckdb"), f"pgrepl_bench_run{k}") for k in range(1, args.repeat + 1)]
        try:
            snap = snapshots(tmp, runs, profiling)
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1
        print(f"  snapshot (PgFullRefreshOperator, creates the slot): {snap.result['execute_s']:.2f} s")

        import psycopg

        pub = runs[0][1]  # the first run's publication: the table, as every run's
        slot = "pgrepl_bench_raw"  # the raw drains' own slot: peeked, never advanced
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        t0 = time.monotonic()
        run_psql(pg, dsn, command=workload_sql(args.changes, args.rows, p))
        print(f"  workload ran in {time.monotonic() - t0:.1f} s")

        sql_s, (nmsg, nbytes) = best_of(2, lambda: raw_sql_drain(dsn, slot, pub))
        if args.profile:
            bin_s, _ = best_of(2, lambda: raw_python_fetch(dsn, slot, pub, binary=True))
            ladder = decode_fold_ladder(raw_python_fetch(dsn, slot, pub)[1])
        try:
            fetches, applies, checks = timed_runs(tmp, dsn, slot, pub, runs, args.batch)
        except ChildFailed as exc:
            print_child_failure(exc)
            return 1
        overall = results(args, (sql_s, nmsg, nbytes), fetches, applies, checks)
        applied = min(sum(c["changes"] for c in a.result["calls"]) for a in applies)
        equal = all(n_src == n_dst and not d for n_src, n_dst, d in checks)

        if args.profile:
            print("\nStage ladder (each stage alone, over the whole slot content in one go):")
            line("server-side decoding: count/sum of the peek", f"{sql_s:.2f} s")
            line("Python fetch, text format (hook's query shape)", f"{min(fetches):.2f} s")
            line("Python fetch, binary format", f"{bin_s:.2f} s")
            for label, secs in ladder:
                line(label, f"{secs:.2f} s")
            line("full apply loop (child run above)", f"{min(a.result['execute_s'] for a in applies):.2f} s")
            profile(tmp, args.batch)
        if profiling:
            phases(tmp, args.batch)

    if not equal or applied != args.changes:
        return 1
    return 1 if (args.strict and not overall) else 0


if __name__ == "__main__":
    if "--_child" in sys.argv:
        child_entry(in_child)
    sys.exit(main())
