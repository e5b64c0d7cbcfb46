#!/usr/bin/env python
"""Benchmark: PgCdcApplyOperator draining a slot vs a raw read of the same slot.

Starts a throwaway PostgreSQL, builds ``customers`` from bench/seed.sql (--rows rows), snapshots it
with PgFullRefreshOperator (which creates the slot), then runs --changes row changes in
100-row transactions, round robin: 3 update transactions, 1 insert, 1 delete (60/20/20 %),
generated server-side in one DO block (deterministic). Then:
  (a) raw drain: SELECT count(*), sum(length(data)) FROM pg_logical_slot_peek_binary_changes(...)
      (server-side decoding only, best of 2), and the documented Python baseline: all (lsn, data)
      rows of that peek fetched into Python with psycopg (the ratio's base).
  (b) PgCdcApplyOperator(max_batch_changes=--batch).execute({}) in a loop until a run returns
      more == false (it read up to the LSN fixed at its start: caught up), in a child process (wall time; peak RSS of that process
      alone: max of its VmHWM and /proc polling, not ru_maxrss, see _common.ChildRun).
--repeat runs (default 3; this machine's speed drifts ±20 % within a minute) of each, alternately (a fetch, then an apply run on its own slot and
DuckDB file, all snapshotted before the changes): the ratio is best apply / best fetch, and each
pair's ratio is printed too. Every run's DuckDB copy is compared with the source on every column.
Targets: apply/raw <= 3.0, peak RSS <= 512 MB (the highest of the runs). --profile adds a
decode/fold ladder, phase timers and a cProfile run, each on its own extra slot; --phases: only
the phase-timed run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_RATIO = 3.0
TARGET_RSS_MB = 512.0
TABLE = "public.customers"
KEY = "customer_id"
PROFILE_SLOTS = {"phases": "pgrepl_bench_phases", "profile": "pgrepl_bench_profile"}


# -- operators -------------------------------------------------------------------------------------


def _dest(path: str) -> dict:
    return {"type": "duckdb", "credentials": path, "dataset": "replica"}


def _full_refresh(duckdb_path: str, slot: str | None):
    from airflow_pg_replication import PgFullRefreshOperator

    return PgFullRefreshOperator(task_id="bench_snapshot", table=TABLE, destination=_dest(duckdb_path),
                                 mode="cdc", slot=slot)


def _apply(duckdb_path: str, slot: str | None, batch: int):
    from airflow_pg_replication import PgCdcApplyOperator

    return PgCdcApplyOperator(task_id="bench_apply", table=TABLE, destination=_dest(duckdb_path),
                              max_batch_changes=batch, slot=slot)


def apply_loop(op, max_calls: int = 100_000) -> list[dict]:
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


def child(payload: dict) -> dict:
    t0 = time.monotonic()
    from airflow_pg_replication.operators.cdc_apply import PgCdcApplyOperator  # noqa: F401  (airflow)

    airflow_import = time.monotonic() - t0
    heavy_import = C.import_heavy()
    rss_before = C.proc_status_mb("VmRSS")
    if payload["op"] == "full_refresh":
        op = _full_refresh(payload["duckdb"], payload.get("slot"))
        t0 = time.monotonic()
        out = op.execute({})
        return {"execute_s": time.monotonic() - t0, "out": out}
    op = _apply(payload["duckdb"], payload.get("slot"), payload["batch"])
    timer = phase_timer() if payload.get("phases") else None
    if timer:
        timer.start_sampler()
    t0 = time.monotonic()
    calls = apply_loop(op)
    secs = time.monotonic() - t0
    if timer:
        timer.stop_sampler()
    return {"execute_s": secs, "calls": calls, "airflow_import_s": airflow_import,
            "heavy_import_s": heavy_import, "rss_before_execute_mb": rss_before,
            "phases": timer.as_rows() if timer else None, "timer_overhead_s": timer.overhead_s() if timer else 0}


# -- workload ------------------------------------------------------------------------------------


def plan(changes: int, rows: int) -> dict:
    """The transactions the workload runs: 100-row transactions, kinds round robin u,u,u,i,d."""
    ntx = (changes + 99) // 100
    counts = {"update": 0, "insert": 0, "delete": 0}
    for i in range(ntx):
        size = min(100, changes - 100 * i)
        counts[("update", "update", "update", "insert", "delete")[i % 5]] += size
    deletes = counts["delete"]
    if deletes + 100 >= rows:
        raise SystemExit(f"--rows ({rows:,}) must exceed the number of deletes ({deletes:,}) by at least 100")
    span = rows - deletes  # updates hit ids deletes+1 .. rows, which are never deleted
    step = next(p for p in (7919, 7927, 7933, 7937) if span % p)
    return {"ntx": ntx, "counts": counts, "span": span, "step": step}


def workload_sql(changes: int, rows: int, p: dict) -> str:
    return f"""
DO $bench$
DECLARE
  n bigint := {changes}; r bigint := {rows}; lo bigint := {p['counts']['delete']};
  span bigint := {p['span']}; step bigint := {p['step']};
  sz bigint; u bigint := 0; ins bigint := 0; del bigint := 0;
BEGIN
  FOR i IN 0 .. {p['ntx'] - 1} LOOP
    sz := least(100, n - i::bigint * 100);
    IF i % 5 = 3 THEN
      INSERT INTO customers (customer_id, first_name, last_name, email, balance, tags, attrs, created_at, updated_at)
      SELECT r + g, 'New', 'Customer ' || g, 'new' || g || '@example.com',
             round(((g * 7919) % 100000) / 100.0, 2),
             CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['new', 'batch ' || i] END,
             jsonb_build_object('tier', 'basic', 'score', g % 1000, 'src', 'bench'),
             timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => g),
             CASE WHEN g % 2 = 0 THEN NULL ELSE timestamptz '2025-06-01 00:00:00+00' + make_interval(secs => g) END
      FROM generate_series(ins + 1, ins + sz) g;
      ins := ins + sz;
    ELSIF i % 5 = 4 THEN
      DELETE FROM customers WHERE customer_id BETWEEN del + 1 AND del + sz;
      del := del + sz;
    ELSE
      UPDATE customers
         SET balance = coalesce(balance, 0) + 1.25,
             email = 'u' || i || '.' || customer_id || '@upd.example',
             attrs = jsonb_set(coalesce(attrs, '{{}}'::jsonb), '{{score}}', to_jsonb(i)),
             updated_at = timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => i)
       WHERE customer_id IN (SELECT lo + 1 + (k * step) % span FROM generate_series(u, u + sz - 1) k);
      u := u + sz;
    END IF;
    COMMIT;
  END LOOP;
END
$bench$;
"""


# -- raw baselines ---------------------------------------------------------------------------------

PEEK = ("pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
        "'publication_names', %s)")


def raw_sql_drain(dsn: str, slot: str, pub: str) -> tuple[float, tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        row = conn.execute(f"SELECT count(*), sum(length(data)) FROM {PEEK}", (slot, pub)).fetchone()
        return time.monotonic() - t0, row


def raw_python_fetch(dsn: str, slot: str, pub: str, binary: bool = False) -> tuple[float, list]:
    """All (lsn, data) rows of the peek, fetched into Python (client-side cursor, fetchall)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        rows = conn.cursor(binary=binary).execute(f"SELECT lsn::text, data FROM {PEEK}", (slot, pub)).fetchall()
        return time.monotonic() - t0, rows


def decode_fold_ladder(rows: list) -> list[tuple[str, float]]:
    from airflow_pg_replication.changes.reference_fold import ChangeFolder
    from airflow_pg_replication.source.pgoutput import decode

    t0 = time.monotonic()
    msgs = [decode(data) for _lsn, data in rows]
    dec = time.monotonic() - t0
    folder = ChangeFolder([KEY], relation_names={("public", "customers")})
    t0 = time.monotonic()
    for m in msgs:
        folder.feed(m)
    fold = time.monotonic() - t0
    b = folder.batch
    out = [(f"pgoutput.decode of all {len(msgs):,} messages (per-message path)", dec),
           (f"ChangeFolder.feed of all ({b.changes:,} changes -> {len(b.rows):,} keys)", fold)]
    try:
        from airflow_pg_replication.changes.columnar_fold import fold_columnar
    except ImportError:
        return out
    data = [d for _lsn, d in rows]
    t0 = time.monotonic()
    cb = fold_columnar(data, [KEY], applied_lsn=None, relation_names={("public", "customers")})
    secs = time.monotonic() - t0
    what = "not eligible, fell back" if cb is None else f"{len(cb):,} keys"
    out.append((f"columnar_fold.fold_columnar of all (decode + fold column-wise; {what})", secs))
    return out


# -- comparison --------------------------------------------------------------------------------------

PG_SELECT = ("SELECT customer_id, first_name, last_name, email, balance, tags, attrs, "
             "(extract(epoch FROM created_at) * 1000000)::bigint, "
             "(extract(epoch FROM updated_at) * 1000000)::bigint FROM customers ORDER BY customer_id")
DUCK_SELECT = ("SELECT customer_id, first_name, last_name, email, balance, tags, attrs, "
               "epoch_us(created_at), epoch_us(updated_at) FROM replica.customers ORDER BY customer_id")


def compare(dsn: str, duck_path: str) -> tuple[int, int, list]:
    """(source rows, destination rows, first differences) over all columns, by key."""
    import duckdb
    import psycopg

    with psycopg.connect(dsn) as conn:
        src = conn.execute(PG_SELECT).fetchall()
    with duckdb.connect(duck_path, read_only=True) as con:
        dst_raw = con.execute(DUCK_SELECT).fetchall()

    def js(v):
        return json.loads(v) if isinstance(v, str) else v

    dst = [(*r[:5], js(r[5]), js(r[6]), *r[7:]) for r in dst_raw]
    diffs = []
    if len(src) == len(dst):
        for a, b in zip(src, dst):
            if tuple(a) != tuple(b):
                diffs.append((a, b))
                if len(diffs) >= 3:
                    break
    else:
        sk = {r[0] for r in src}
        dk = {r[0] for r in dst}
        diffs = [("only in source", sorted(sk - dk)[:5]), ("only in destination", sorted(dk - sk)[:5])]
    return len(src), len(dst), diffs


# -- in-process profiling ----------------------------------------------------------------------------


def phase_timer() -> C.PhaseTimer:
    """Wall-clock timers around the main steps of an apply (used in a child run)."""
    from airflow_pg_replication.sync import batch_apply as apply as apply_mod
    from airflow_pg_replication.changes import columnar_fold as columnar_fold
    from airflow_pg_replication.destination.opening import DestinationOpening
    from airflow_pg_replication.hooks.replication import PgReplicationHook
    from airflow_pg_replication.operators.cdc_apply import PgCdcApplyOperator

    timer = C.PhaseTimer()
    for name in ("check_wal_level", "slot_info", "table_info", "current_wal_lsn", "advance_slot"):
        timer.wrap(PgReplicationHook, name, f"hook.{name}")
    timer.wrap(PgReplicationHook, "peek_change_chunks", "hook.peek_change_chunks: next() = ADBC fetch from the slot", generator=True)
    timer.wrap(DestinationOpening, "prepared", "DestinationOpening.prepared (waiting for the state)")
    timer.wrap(DestinationOpening, "result", "DestinationOpening.result (waiting for the destination thread)")
    timer.wrap(PgCdcApplyOperator, "_columns_of_relations", "PgCdcApplyOperator._columns_of_relations")
    timer.wrap(PgCdcApplyOperator, "_apply_changes", "PgCdcApplyOperator._apply_changes (read, fold, apply)")
    timer.wrap(columnar_fold, "fold_columnar", "columnar_fold.fold_columnar (decode + fold, column-wise)")
    timer.wrap(apply_mod, "apply_changes", "apply.apply_changes (per-message path)")
    timer.wrap(apply_mod, "type_columnar", "apply.type_columnar (text -> typed Arrow)")
    timer.wrap(apply_mod, "apply_typed", "apply.apply_typed")
    timer.wrap(apply_mod, "_finish_table", "apply._finish_table (kept values, table)")
    timer.wrap(apply_mod, "_typed_keys", "apply._typed_keys (delete keys -> typed)")
    timer.wrap(apply_mod, "_rows_to_table", "apply._rows_to_table (text -> Arrow)")
    timer.wrap(apply_mod, "text_to_arrow", label_fn=C.conversion_label)  # the name it imported
    C.wrap_destination_phases(timer)
    return timer


def phases(tmp: Path, batch: int) -> None:
    """The apply loop once more, in a child with phase timers and an RSS sampler (no profiler)."""
    run = C.run_child(Path(__file__), {"op": "apply_loop", "duckdb": str(tmp / "phases.duckdb"), "batch": batch,
                                       "slot": PROFILE_SLOTS["phases"], "phases": True},
                      workdir=tmp, what="phase-timed apply loop")
    r = run.result
    total = r["execute_s"]
    rows = r["phases"]
    top = sum(secs for path, secs, _n, _rss in rows if len(path) == 1 and not path[0].startswith("["))
    print(f"\nPhase timers, the apply loop once more in a child ({sum(c['changes'] for c in r['calls']):,} changes, "
          f"{len(r['calls'])} calls, {total:.2f} s, peak RSS {run.peak_rss_mb:,.0f} MB; calls summed; peak RSS "
          f"column = highest RSS sampled while the phase ran; the timers themselves cost ~{r['timer_overhead_s']:.2f} s):")
    C.print_phase_rows(rows, total)
    print(f"  {'remainder: message loop, decode/fold not timed above, operator glue':<64} {total - top:9.3f} "
          f"{100 * (total - top) / total:7.1f}%")


def profile(tmp: Path, batch: int) -> None:
    op = _apply(str(tmp / "profile.duckdb"), PROFILE_SLOTS["profile"], batch)
    C.import_heavy()  # as in the timed runs: module imports are not part of the profile
    with C.quiet_logging():
        calls, stats, wall = C.profile_call(lambda: apply_loop(op))
    print(f"\ncProfile of the in-process apply loop ({sum(c['changes'] for c in calls):,} changes, {len(calls)} calls;"
          f" {wall:.2f} s under the profiler, main thread only):")
    print("Top 30 by cumulative time:")
    C.print_top(stats, 30, total=wall)
    s = stats
    rows = [
        ("hook.peek_change_chunks (ADBC fetch from the slot)", C.cum(s, "hooks/replication.py", "peek_change_chunks")),
        ("columnar_fold.fold_columnar (decode + fold, column-wise)",
         C.cum(s, "airflow_pg_replication/changes/columnar_fold.py", "fold_columnar")),
        ("pgoutput.decode (per-message path)", C.cum(s, "airflow_pg_replication/source/pgoutput.py", "decode")),
        ("ChangeFolder.feed (fold)", C.cum(s, "airflow_pg_replication/changes/reference_fold.py", "feed")),
        ("apply.type_columnar (text -> typed Arrow)", C.cum(s, "airflow_pg_replication/sync/batch_apply.py", "type_columnar")),
        ("apply.apply_typed (all destination work)", C.cum(s, "airflow_pg_replication/sync/batch_apply.py", "apply_typed")),
        ("apply.apply_changes (per-message path)", C.cum(s, "airflow_pg_replication/sync/batch_apply.py", "apply_changes")),
        ("  apply._rows_to_table (text -> Arrow)", C.cum(s, "airflow_pg_replication/sync/batch_apply.py", "_rows_to_table")),
        ("  typemap.text_to_arrow (type conversion)", C.cum(s, "airflow_pg_replication/source/type_map.py", "text_to_arrow")),
        ("  TableDestination.apply_batch", C.cum(s, "airflow_pg_replication/destination/duckdb/table.py", "apply_batch")),
        ("    NativeDuckDb.merge (one DuckDB transaction)", C.cum(s, "airflow_pg_replication/destination/duckdb/native.py", "merge")),
        ("  TableDestination.delete_keys", C.cum(s, "airflow_pg_replication/destination/dlt_table.py", "delete_keys")),
        ("  TableDestination.merge (dlt run)", C.cum(s, "airflow_pg_replication/destination/dlt_table.py", "merge")),
        ("dlt config resolution (resolve_configuration)", C.cum(s, "dlt/common/configuration/resolve.py", "resolve_configuration")),
        ("waiting on threads (lock.acquire: dlt load jobs)", C.cum(s, "~", "<method 'acquire' of '_thread.lock' objects>")),
    ]
    print("\nSelected cost centres from the profile (cumulative, % of profiled loop):")
    C.print_centres(rows, wall)


# -- main ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=500_000, help="row changes to apply (default 500,000)")
    ap.add_argument("--rows", type=int, default=200_000, help="initial rows in customers (default 200,000)")
    ap.add_argument("--batch", type=int, default=100_000, help="max_batch_changes per execute() (default 100,000)")
    ap.add_argument("--profile", action="store_true",
                    help="also: decode/fold ladder, phase timers and cProfile of in-process apply loops")
    ap.add_argument("--phases", action="store_true",
                    help="only the phase-timed child run of --profile (wall time and peak RSS per step)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of each side, raw fetch then apply, alternately; best of each (default 3)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    p = plan(args.changes, args.rows)

    with C.bench_env() as tmp, C.cluster() as (pg, dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        print(f"CDC benchmark: {args.rows:,} rows, {args.changes:,} changes ({p['counts']['update']:,} updates, "
              f"{p['counts']['insert']:,} inserts, {p['counts']['delete']:,} deletes in {p['ntx']:,} transactions), "
              f"max_batch_changes={args.batch:,}, {args.repeat} timed run(s) of each side")
        print(f"  {C.package_state()}")
        seed_s = C.seed(pg, dsn, args.rows)
        print(f"  seeded customers in {seed_s:.1f} s")
        # one snapshot (slot + DuckDB file) per timed apply run, all taken before the changes
        runs = [(str(tmp / "bench.duckdb"), None)] + [
            (str(tmp / f"run{k}.duckdb"), f"pgrepl_bench_run{k}") for k in range(2, args.repeat + 1)]
        try:
            snap = C.run_child(Path(__file__), {"op": "full_refresh", "duckdb": runs[0][0]}, workdir=tmp,
                               what="PgFullRefreshOperator.execute (snapshot)")
            extra = [(path, slot) for path, slot in runs[1:]]
            if args.profile or args.phases:
                extra += [(str(tmp / f"{name}.duckdb"), slot) for name, slot in PROFILE_SLOTS.items()
                          if args.profile or name == "phases"]
            for path, slot in extra:
                C.run_child(Path(__file__), {"op": "full_refresh", "duckdb": path, "slot": slot}, workdir=tmp,
                            what=f"snapshot for slot {slot}")
        except C.ChildFailed as exc:
            C.print_child_failure(exc)
            return 1
        print(f"  snapshot (PgFullRefreshOperator, creates the slot): {snap.result['execute_s']:.2f} s")

        from airflow_pg_replication.registry.names import publication_name

        pub = publication_name("public", "customers")
        slot = "pgrepl_bench_raw"  # the raw drains' own slot: peeked, never advanced
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        t0 = time.monotonic()
        C.run_psql(pg, dsn, command=workload_sql(args.changes, args.rows, p))
        print(f"  workload ran in {time.monotonic() - t0:.1f} s")

        sql_s, (nmsg, nbytes) = C.best_of(2, lambda: raw_sql_drain(dsn, slot, pub))
        ladder = []
        if args.profile:
            bin_s, _ = C.best_of(2, lambda: raw_python_fetch(dsn, slot, pub, binary=True))
            _, rows = raw_python_fetch(dsn, slot, pub)
            ladder = decode_fold_ladder(rows)
            del rows

        # Each timed apply run follows a raw fetch, so both sides see the machine in the same state.
        fetches, applies, peaks, checks = [], [], [], []
        for duck, run_slot in runs:
            fetch_s, rows = raw_python_fetch(dsn, slot, pub)
            del rows
            fetches.append(fetch_s)
            payload = {"op": "apply_loop", "duckdb": duck, "batch": args.batch}
            if run_slot:
                payload["slot"] = run_slot
            try:
                run = C.run_child(Path(__file__), payload, workdir=tmp, what="PgCdcApplyOperator.execute loop")
            except C.ChildFailed as exc:
                C.print_child_failure(exc)
                return 1
            applies.append(run)
            peaks.append(run.peak_rss_mb)
            checks.append(compare(dsn, duck))
        py_s = min(fetches)
        best = min(range(len(applies)), key=lambda k: applies[k].result["execute_s"])
        r = applies[best].result
        apply_s = r["execute_s"]
        applied = min(sum(c["changes"] for c in a.result["calls"]) for a in applies)
        nsrc, ndst, diffs = checks[best]
        equal = all(n_src == n_dst and not d for n_src, n_dst, d in checks)
        ratio = apply_s / py_s
        peak = max(peaks)

        print("\nResults")
        C.line("slot content (peek)", f"{nmsg:,} messages, {nbytes / 1e6:,.1f} MB of pgoutput")
        C.line("raw drain, server side: count/sum (best of 2)", f"{sql_s:.2f} s")
        C.line(f"raw drain, Python fetch of (lsn, data) (best of {len(fetches)})",
               f"{py_s:.2f} s  (ratio base; runs: {', '.join(format(f, '.2f') for f in fetches)} s)")
        C.line("apply loop: execute() calls", f"{len(r['calls'])} (changes per call: "
               f"{', '.join(format(c['changes'], ',') for c in r['calls'])}; batches per call: "
               f"{', '.join(str(c.get('batches', 1)) for c in r['calls'])})")
        C.line("apply loop: changes applied / generated", f"{applied:,} / {args.changes:,} (every run)")
        C.line(f"apply loop wall time (best of {len(applies)})",
               f"{apply_s:.2f} s  ({args.changes / apply_s:,.0f} changes/s; per call: "
               f"{', '.join(format(c['wall_s'], '.1f') for c in r['calls'])} s; runs: "
               f"{', '.join(format(a.result['execute_s'], '.2f') for a in applies)} s)")
        C.line("  + first import of dlt/pyarrow/duckdb/adbc/numpy/psycopg/PostgresHook",
               f"{r['heavy_import_s']:.2f} s (once per task process)")
        pairs = ", ".join(format(a.result["execute_s"] / f, ".2f") for a, f in zip(applies, fetches))
        C.line("ratio apply / raw Python fetch (<= 3.0)", f"{ratio:.2f}  {C.verdict(ratio <= TARGET_RATIO)}   "
               f"(best / best; run by run: {pairs}; vs server-side drain: {apply_s / sql_s:.2f})")
        C.line("peak RSS of the apply process (<= 512 MB)", f"{peak:,.0f} MB  "
               f"{C.verdict(peak <= TARGET_RSS_MB)}   (highest of the runs, process alone; after imports "
               f"{r['rss_before_execute_mb']:,.0f} MB{applies[best].rss_note()})")
        C.line("destination equals source (all columns)", f"{'yes' if equal else 'NO'}  "
               f"({nsrc:,} source rows, {ndst:,} destination rows; every run checked)")
        for d in (d for _a, _b, ds in checks for d in ds):
            print(f"    diff: {d}")
        overall = equal and applied == args.changes and ratio <= TARGET_RATIO and peak <= TARGET_RSS_MB
        C.line("overall", C.verdict(overall))
        print(f"  machine: {C.machine_note()}")

        if args.profile:
            print("\nStage ladder (each stage alone, over the whole slot content in one go):")
            C.line("server-side decoding: count/sum of the peek", f"{sql_s:.2f} s")
            C.line("Python fetch, text format (hook's query shape)", f"{py_s:.2f} s")
            C.line("Python fetch, binary format", f"{bin_s:.2f} s")
            for label, secs in ladder:
                C.line(label, f"{secs:.2f} s")
            C.line("full apply loop (child run above)", f"{apply_s:.2f} s")
            phases(tmp, args.batch)
            profile(tmp, args.batch)
        elif args.phases:
            phases(tmp, args.batch)

    if not equal or applied != args.changes:
        return 1
    return 1 if (args.strict and not overall) else 0


if __name__ == "__main__":
    if "--_child" in sys.argv:
        C.child_entry(child)
    sys.exit(main())
