#!/usr/bin/env python
"""Benchmark: the cost of a wait_for_changes poke for a quiet table on a busy database.

Starts a throwaway PostgreSQL with a quiet table ``quiet`` (its publication and two pgoutput slots)
and a busy table ``busy``, not published. A writer thread inserts into ``busy`` at --rate MB/s of
WAL (one transaction every 50 ms) for --seconds; every --interval seconds the benchmark pokes:

  sensor: the sensor's poke (table_changes.poke_sync, as PgSlotLagSensor.poke and SlotLagTrigger
          run it) on slot pgrepl_public_quiet: read the slot, peek it with the table's publication
          up to the WAL flush position, and when nothing of the table waits, advance the slot there;
  naive:  the same peek on slot bench_naive_quiet, which is never advanced: what a poke that only
          peeks costs when the backlog of other tables' WAL keeps growing;
  old:    the previous sensor's rule, slot byte lag >= min_lag_bytes (1): would it have fired?

Every --own-every-th poke first updates one row of ``quiet``: the sensor must fire then (and only
then); the benchmark then advances its slot to the flush position, as apply_changes does after
applying. Per poke it prints the wall time, the WAL read (slot restart_lsn to the flush position:
what PostgreSQL decodes), how far the slot moved, and the naive peek's time and backlog.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from env import bench_env, cluster
from report import line, machine_note, package_state, verdict

SLOT = "pgrepl_public_quiet"
NAIVE_SLOT = "bench_naive_quiet"
PUB = "pgrepl_public_quiet"
NAIVE_PEEK = (
    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s::name, %s::pg_lsn, %s::int, "
    "'proto_version', '1', 'publication_names', %s::text)"
)


class BusyWriter(threading.Thread):
    """Inserts into ``busy`` at ``rate`` bytes of WAL per second, one transaction every ``tick`` s."""

    def __init__(self, dsn: str, rate: float, tick: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rate, self.tick = dsn, rate, tick
        self.stop = threading.Event()
        self.wal_bytes = 0
        self.transactions = 0
        self.seconds = 0.0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            lsn = lambda: conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]  # noqa: E731
            start_lsn, started = lsn(), time.monotonic()
            per_row = 350.0  # WAL bytes per inserted row, re-estimated as it goes
            while not self.stop.is_set():
                elapsed = time.monotonic() - started
                produced = int(lsn() - start_lsn)
                due = self.rate * (elapsed + self.tick) - produced
                if due > 0:
                    rows = max(1, min(int(due / per_row), 50_000))
                    before = lsn()
                    conn.execute(
                        "INSERT INTO busy (payload) SELECT repeat(md5(g::text), 6) FROM generate_series(1, %s) g",
                        (rows,),
                    )
                    per_row = 0.8 * per_row + 0.2 * max(float(lsn() - before) / rows, 50.0)
                    self.transactions += 1
                self.stop.wait(self.tick)
            self.wal_bytes = int(lsn() - start_lsn)
            self.seconds = time.monotonic() - started


def setup(dsn: str) -> None:
    import psycopg
    from psycopg import sql

    from airflow_pg_replication import PgReplicationHook

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE quiet (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO quiet SELECT g, 'q' || g FROM generate_series(1, 1000) g")
        conn.execute("CREATE TABLE busy (id bigserial PRIMARY KEY, payload text)")
        hook = PgReplicationHook(postgres_conn_id="pg_source")
        hook.ensure_publication(conn, PUB, "public", "quiet")
        for slot in (SLOT, NAIVE_SLOT):
            conn.execute(sql.SQL("SELECT pg_create_logical_replication_slot({}, 'pgoutput')").format(sql.Literal(slot)))


def one_poke(dsn: str, k: int, own_change: bool) -> dict:
    import psycopg

    from airflow_pg_replication.source.table_changes import peek_bound, poke_sync, poke_target

    target = poke_target("public.quiet", slot=SLOT, publication=PUB, min_lag_bytes=1, max_lag_bytes=10**13)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if own_change:
            conn.execute("UPDATE quiet SET name = name || '+' WHERE id = %s", (k % 1000 + 1,))
        lag = conn.execute(
            "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        ).fetchone()[0]
        t0 = time.monotonic()
        seen = poke_sync(conn, target)
        poke_s = time.monotonic() - t0
        if seen.ready:  # as apply_changes does once the changes are in the destination
            conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", (SLOT,))
        upto, restart = conn.execute(
            "SELECT pg_current_wal_flush_lsn()::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (NAIVE_SLOT,),
        ).fetchone()
        t0 = time.monotonic()
        conn.execute(NAIVE_PEEK, (NAIVE_SLOT, upto, peek_bound(1), PUB)).fetchone()
        naive_s = time.monotonic() - t0
        naive_backlog = conn.execute("SELECT %s::pg_lsn - %s::pg_lsn", (upto, restart)).fetchone()[0]
    return {
        "poke_s": poke_s,
        "peek_s": seen.peek_seconds,
        "advance_s": seen.advance_seconds,
        "wal_read": seen.wal_read_bytes,
        "span": (seen.decoded_to or 0) - (seen.decoded_from or 0),
        "advanced": seen.advanced_bytes,
        "fired": seen.ready,
        "changes": seen.changes,
        "busy": seen.busy,
        "own_change": own_change,
        "old_fired": (lag or 0) >= 1,
        "naive_s": naive_s,
        "naive_backlog": int(naive_backlog),
        "message": seen.message,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=2.0, help="WAL of the busy writer, MB/s (default 2)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the writer runs (default 60)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between pokes (default 5)")
    ap.add_argument(
        "--own-every",
        type=int,
        default=4,
        help="every N-th poke first updates one row of the quiet table (default 4; 0: never)",
    )
    ap.add_argument("--verbose", action="store_true", help="print each poke's log message")
    args = ap.parse_args()

    import os

    with bench_env(), cluster() as (pg, dsn):
        os.environ["AIRFLOW_CONN_PG_SOURCE"] = pg.conn_uri("bench")
        print(
            f"wait_for_changes poke benchmark: quiet table, busy writer at {args.rate:g} MB/s of WAL for "
            f"{args.seconds:g} s, a poke every {args.interval:g} s, a change of the quiet table before every "
            f"{args.own_every}th poke"
        )
        print(f"  {package_state()}; {machine_note()}")
        setup(dsn)
        writer = BusyWriter(dsn, args.rate * 1e6)
        writer.start()
        polls = []
        started = time.monotonic()
        k = 0
        try:
            while time.monotonic() - started < args.seconds:
                k += 1
                time.sleep(max(0.0, started + k * args.interval - time.monotonic()))
                polls.append(one_poke(dsn, k, own_change=bool(args.own_every) and k % args.own_every == 0))
        finally:
            writer.stop.set()
            writer.join()
        mb = 1e6
        print(
            f"  writer: {writer.wal_bytes / mb:,.1f} MB of WAL in {writer.transactions:,} transactions, "
            f"{writer.wal_bytes / mb / max(writer.seconds, 1e-9):.2f} MB/s\n"
        )
        print(
            f"  {'poke':>4} {'own':>4} {'fired':>5} {'old':>4} | {'poke ms':>8} {'peek ms':>8} {'adv ms':>7} "
            f"{'WAL read MB':>11} {'span MB':>8} {'advanced MB':>11} | {'naive ms':>9} {'backlog MB':>10}"
        )
        for i, p in enumerate(polls, 1):
            print(
                f"  {i:4d} {'yes' if p['own_change'] else '':>4} {'yes' if p['fired'] else 'no':>5} "
                f"{'yes' if p['old_fired'] else 'no':>4} | {p['poke_s'] * 1e3:8.1f} {p['peek_s'] * 1e3:8.1f} "
                f"{p['advance_s'] * 1e3:7.1f} {p['wal_read'] / mb:11.2f} {p['span'] / mb:8.2f} "
                f"{p['advanced'] / mb:11.2f} | {p['naive_s'] * 1e3:9.1f} {p['naive_backlog'] / mb:10.1f}"
                + ("  (busy)" if p["busy"] else "")
            )
            if args.verbose:
                print(f"       {p['message']}")
        quiet = [p for p in polls if not p["own_change"]]
        own = [p for p in polls if p["own_change"]]
        med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
        print("\n  summary")
        line(
            "sensor poke, median / max",
            f"{med([p['poke_s'] for p in polls]) * 1e3:.1f} / {max(p['poke_s'] for p in polls) * 1e3:.1f} ms",
        )
        line(
            "sensor WAL read per poke, median / max",
            f"{med([p['wal_read'] for p in polls]) / mb:.2f} / {max(p['wal_read'] for p in polls) / mb:.2f} MB",
        )
        line("WAL written per poke interval", f"{writer.wal_bytes / max(len(polls), 1) / mb:.2f} MB")
        line(
            "naive peek, first / last",
            f"{polls[0]['naive_s'] * 1e3:.1f} / {polls[-1]['naive_s'] * 1e3:.1f} ms "
            f"(backlog {polls[0]['naive_backlog'] / mb:.1f} -> {polls[-1]['naive_backlog'] / mb:.1f} MB)",
        )
        line(
            "last naive peek / median sensor poke",
            f"{polls[-1]['naive_s'] / max(med([p['poke_s'] for p in polls]), 1e-9):.1f}x",
        )
        line("sensor fired (own change before the poke)", f"{sum(p['fired'] for p in own)}/{len(own)}")
        line("sensor fired (no own change: empty applies)", f"{sum(p['fired'] for p in quiet)}/{len(quiet)}")
        line("old byte-lag rule fired (no own change)", f"{sum(p['old_fired'] for p in quiet)}/{len(quiet)}")
        ok = all(p["fired"] for p in own) and not any(p["fired"] for p in quiet)
        line("fires exactly on the table's own changes", verdict(ok))
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
