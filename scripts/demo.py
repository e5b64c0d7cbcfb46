#!/usr/bin/env python3
"""End-to-end demo: PostgreSQL -> Airflow DAGs (snapshot, capture, CDC) -> DuckDB, and a source/destination check.

Runs everything on this machine and removes what it made (after a failure it keeps the demo dir, for its logs):

1. starts a throwaway PostgreSQL cluster (wal_level=logical) and fills ``public.customers`` and
   ``public.orders``;
2. makes a temporary AIRFLOW_HOME (SQLite), a registry of both tables (slot group ``default``: one
   replication slot for both) and a DAGs folder holding a copy of ``dags/pg_replication.py``; runs
   ``airflow db migrate``;
3. ``airflow dags test`` of each table's DAG: the ``plan`` branch takes its snapshot (the table joins
   the group's publication; a temporary slot gives the exact point where its changes start);
4. inserts, updates and deletes rows of both tables on the source;
5. ``airflow dags test pg_replication__capture__default``: the group's one slot is drained into the
   change log (one segment per table, durable before the slot advances);
6. each table's DAG again: ``plan`` -> ``wait_for_changes`` -> ``apply_changes`` from the change log;
7. prints the DuckDB copy and compares each table with the source, row for row; exits 1 on any difference.

Usage: ``make demo`` (or ``.venv/bin/python scripts/demo.py [--rows N] [--keep]``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too

DATABASE = "shop"
#: The demo's tables and the columns compared (fixed names: the queries below are over these only).
COLUMNS = {
    "customers": ["customer_id", "first_name", "last_name", "email", "created_at"],
    "orders": ["order_id", "customer_id", "amount", "status", "items"],
}
CAPTURE_DAG_ID = "pg_replication__capture__default"


def dag_id(table: str) -> str:
    return f"pg_replication__public__{table}"


_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:5.1f}s] {message}", flush=True)


# -- source ----------------------------------------------------------------------------------------------


def create_customers(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.customers (customer_id bigint PRIMARY KEY, first_name text NOT NULL, "
            "last_name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO public.customers (customer_id, first_name, last_name, email, created_at) "
            "SELECT g, 'First' || g, 'Last' || g, 'customer' || g || '@example.com', "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes' FROM generate_series(1, %s::int) g",
            (rows,),
        )
        conn.execute(
            "CREATE TABLE public.orders (order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
            "amount numeric(12,2) NOT NULL, status text NOT NULL, items jsonb)"
        )
        conn.execute(
            "INSERT INTO public.orders (order_id, customer_id, amount, status, items) "
            "SELECT g, 1 + g %% %s, round((g * 7.31) %% 500, 2), 'placed', "
            "jsonb_build_array(jsonb_build_object('sku', 'SKU-' || g %% 97, 'qty', 1 + g %% 3)) "
            "FROM generate_series(1, %s::int) g",
            (rows, 2 * rows),
        )


def change_orders(dsn: str, rows: int) -> str:
    """New orders, status updates and cancelled orders deleted; returns a summary."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        inserted = conn.execute(
            "INSERT INTO public.orders (order_id, customer_id, amount, status, items) "
            "SELECT g, 1 + g %% %s, 19.99, 'placed', NULL FROM generate_series(%s::int, %s::int) g",
            (rows, 2 * rows + 1, 2 * rows + 30),
        ).rowcount
        with conn.transaction():
            updated = conn.execute("UPDATE public.orders SET status = 'shipped' WHERE order_id % 5 = 0").rowcount
            deleted = conn.execute("DELETE FROM public.orders WHERE order_id % 50 = 7").rowcount
    return f"{inserted} inserted, {updated} updated, {deleted} deleted"


def change_customers(dsn: str, rows: int) -> str:
    """Inserts, updates (one changes a primary key) and deletes in a few transactions; returns a summary."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        inserted = conn.execute(
            "INSERT INTO public.customers (customer_id, first_name, last_name, email) "
            "SELECT g, 'New' || g, 'Customer', NULL FROM generate_series(%s::int, %s::int) g",
            (rows + 1, rows + 50),
        ).rowcount
        with conn.transaction():
            updated = conn.execute(
                "UPDATE public.customers SET email = lower(first_name) || '@example.org', last_name = 'Müller' "
                "WHERE customer_id % 10 = 0"
            ).rowcount
            updated += conn.execute(
                "UPDATE public.customers SET customer_id = customer_id + 1000000 WHERE customer_id = 7"
            ).rowcount
        deleted = conn.execute("DELETE FROM public.customers WHERE customer_id % 40 = 3").rowcount
        conn.execute("INSERT INTO public.customers (customer_id, first_name, last_name) VALUES (-1, 'brief', 'life')")
        conn.execute("DELETE FROM public.customers WHERE customer_id = -1")
    return f"{inserted} inserted, {updated} updated, {deleted + 1} deleted, 1 inserted and deleted again"


def source_rows(dsn: str, table: str) -> list[tuple]:
    import psycopg
    from psycopg import sql

    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])), sql.Identifier("public", table)
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(query).fetchall()


# -- destination -----------------------------------------------------------------------------------------


def duckdb_rows(
    path: Path, table: str, columns: Sequence[str], order_by: str | None = None, limit: int | None = None
) -> list[tuple]:
    """Rows of replica.<table>; ``order_by`` is SQL over the demo's fixed column names."""
    import duckdb

    assert table in COLUMNS, table  # the demo's own fixed names only
    cols = ", ".join(f'"{c}"' for c in columns)
    query = f"SELECT {cols} FROM replica.{table}"
    query += f" ORDER BY {order_by}" if order_by else ""
    query += f" LIMIT {int(limit)}" if limit else ""
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(query).fetchall()


def normalize(row: Sequence[Any]) -> tuple:
    """A comparable, printable form: timestamps as UTC ISO text, decimals as text."""
    out = []
    for value in row:
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, (list, dict)):  # jsonb as psycopg reads it
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, str) and value[:1] in "[{":  # jsonb as DuckDB holds it (JSON text)
            value = json.dumps(json.loads(value), sort_keys=True)
        out.append(value)
    return tuple(out)


def digest(rows: Sequence[tuple]) -> str:
    """Order-independent hash of a set of rows."""
    h = hashlib.sha256()
    for row in sorted(repr(r) for r in rows):
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def print_table(rows: Sequence[tuple], columns: Sequence[str]) -> None:
    text = [[("NULL" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    print("    " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in text:
        print("    " + "  ".join(v.ljust(w) for v, w in zip(r, widths)))


# -- Airflow ---------------------------------------------------------------------------------------------

REGISTRY_TEMPLATE = """\
# Demo registry: two CDC tables in slot group "default" (one replication slot, one capture DAG),
# run by hand (schedule: null), quick sensor pokes.
source:
  conn_id: pg_source
destination:
  type: duckdb
  credentials: {duckdb}
  dataset: replica
defaults:
  mode: cdc
  schedule: null
  poke_interval: 2
  wait_timeout: 60
  verify: true      # a final task compares source and destination (row hashes by key range)
tables:
  - table: public.customers
    primary_key: [customer_id]
  - table: public.orders
    primary_key: [order_id]
slot_groups:
  default:
    schedule: null  # the demo runs the capture DAG by hand
"""


def log_tail(path: Path, lines: int = 60) -> str:
    text = [line for line in path.read_text(errors="replace").splitlines() if "No tasks to run" not in line]
    return "\n".join(text[-lines:])


class Airflow:
    """The ``airflow`` CLI against a private AIRFLOW_HOME (SQLite metadata DB)."""

    def __init__(self, home: Path, dags: Path, registry: Path, conn_uri: str) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PG_REPLICATION_REGISTRY": str(registry),
            "AIRFLOW_CONN_PG_SOURCE": conn_uri,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }

    def run(self, *args: str, log_name: str) -> None:
        log = self.home / f"{log_name}.log"
        cmd = [sys.executable, "-m", "airflow", *args]
        with open(log, "w") as out:
            proc = subprocess.run(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                timeout=600,
            )
        if proc.returncode != 0:
            raise SystemExit(
                f"`airflow {' '.join(args)}` failed (exit {proc.returncode}); last lines of {log}:\n{log_tail(log)}"
            )

    def last_run_tasks(self, dag_id: str) -> tuple[str, dict[str, str]]:
        """State of the latest run of ``dag_id`` and of each of its tasks, from the metadata DB."""
        with sqlite3.connect(self.home / "airflow.db") as db:
            run_id, state = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
            tasks = dict(
                db.execute(
                    "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
                ).fetchall()
            )
        return state, tasks


def run_dag(airflow: Airflow, dag: str, label: str, expect_ran: list[str], expect_skipped: list[str]) -> None:
    started = time.monotonic()
    airflow.run("dags", "test", dag, log_name=label)
    state, tasks = airflow.last_run_tasks(dag)
    order = ["plan", "full_refresh", "wait_for_changes", "apply_changes", "verify", "capture_changes"]
    shown = ", ".join(f"{t}={tasks[t]}" for t in sorted(tasks, key=lambda t: order.index(t) if t in order else 99))
    say(f"  run {state} in {time.monotonic() - started:.1f}s: {shown}")
    wrong = [t for t in expect_ran if tasks.get(t) != "success"] + [
        t for t in expect_skipped if tasks.get(t) != "skipped"
    ]
    if state != "success" or wrong:
        log = airflow.home / f"{label}.log"
        raise SystemExit(
            f"unexpected task states in {label} (expected {expect_ran} success, {expect_skipped} "
            f"skipped); last lines of {log}:\n{log_tail(log)}"
        )


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows in public.customers (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the demo dir (AIRFLOW_HOME, logs, DuckDB file)")
    args = parser.parse_args()

    from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster

    workdir = Path(tempfile.mkdtemp(prefix="pg-replication-demo-"))
    cluster = ThrowawayCluster()
    ok, verdict = False, ""
    try:
        say(f"demo dir {workdir}")
        cluster.start()
        dsn = cluster.create_database(DATABASE)
        say(f"PostgreSQL started (binaries {cluster.bindir}, port {cluster.port}, wal_level=logical)")
        create_customers(dsn, args.rows)
        say(
            f"source: created public.customers ({args.rows} rows) and public.orders ({2 * args.rows} rows) "
            f"in database {DATABASE!r}"
        )

        home, dags = workdir / "airflow", workdir / "dags"
        home.mkdir()
        dags.mkdir()
        shutil.copy(REPO / "dags" / "pg_replication.py", dags / "pg_replication.py")
        duck = workdir / "warehouse.duckdb"
        registry = workdir / "tables.yaml"
        registry.write_text(REGISTRY_TEMPLATE.format(duckdb=duck))
        airflow = Airflow(home, dags, registry, cluster.conn_uri(DATABASE))
        say("airflow db migrate (SQLite metadata DB in the demo dir) ...")
        airflow.run("db", "migrate", log_name="db-migrate")

        for table in COLUMNS:
            say(f"run 1: airflow dags test {dag_id(table)}  (expect plan -> full_refresh -> verify)")
            run_dag(
                airflow,
                dag_id(table),
                f"run-1-{table}",
                ["plan", "full_refresh", "verify"],
                ["wait_for_changes", "apply_changes"],
            )

        say(f"source: customers {change_customers(dsn, args.rows)}")
        say(f"source: orders {change_orders(dsn, args.rows)}")

        say(f"capture: airflow dags test {CAPTURE_DAG_ID}  (the group's slot -> change log, one segment per table)")
        run_dag(airflow, CAPTURE_DAG_ID, "capture", ["capture_changes"], [])
        segments = sorted(p.relative_to(home) for p in (home / "pg_replication" / "changes").rglob("*") if p.is_file())
        say(f"  change log under $AIRFLOW_HOME: {len(segments)} file(s), e.g. {', '.join(map(str, segments[:2]))}")

        for table in COLUMNS:
            say(f"run 2: airflow dags test {dag_id(table)}  (plan -> wait_for_changes -> apply_changes -> verify)")
            run_dag(
                airflow,
                dag_id(table),
                f"run-2-{table}",
                ["plan", "wait_for_changes", "apply_changes", "verify"],
                ["full_refresh"],
            )

        shown = [*COLUMNS["customers"], "_pg_lsn"]
        say(f"DuckDB {duck.name}: replica.customers, first rows (_pg_lsn: the snapshot's LSN, or a later commit's):")
        print_table([normalize(r) for r in duckdb_rows(duck, "customers", shown, "customer_id", 5)], shown)
        say("rows last written by CDC (highest _pg_lsn):")
        print_table(
            [normalize(r) for r in duckdb_rows(duck, "customers", shown, "_pg_lsn DESC, customer_id", 3)], shown
        )
        verdicts = []
        for table, columns in COLUMNS.items():
            src = sorted(normalize(r) for r in source_rows(dsn, table))
            dst = sorted(normalize(r) for r in duckdb_rows(duck, table, columns))
            say(f"compare public.{table} on {', '.join(columns)}:")
            print(f"    source      (PostgreSQL): {len(src):6d} rows, hash {digest(src)}")
            print(f"    destination (DuckDB)    : {len(dst):6d} rows, hash {digest(dst)}")
            if src != dst:
                only_src, only_dst = sorted(set(src) - set(dst)), sorted(set(dst) - set(src))
                print(f"    {len(only_src)} row(s) only in the source, e.g. {only_src[:3]}")
                print(f"    {len(only_dst)} row(s) only in the destination, e.g. {only_dst[:3]}")
            verdicts.append((table, len(src), src == dst))
        ok = all(same for _, _, same in verdicts)
        if ok:
            verdict = (
                "MATCH: "
                + ", ".join(f"{t} {n} rows" for t, n, _ in verdicts)
                + "; destination equals source row for row"
            )
        else:
            verdict = "MISMATCH: " + ", ".join(t for t, _, same in verdicts if not same) + " differ(s) from the source"
    finally:
        cluster.stop()
        if args.keep or not ok:
            say(f"cleaned up: cluster stopped; kept {workdir} (logs, DuckDB file); remove it when done")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("cleaned up: cluster stopped, demo dir removed")
    print(verdict or "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
