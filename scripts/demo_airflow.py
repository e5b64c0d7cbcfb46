#!/usr/bin/env python3
"""Live demo in a real Airflow: PostgreSQL -> scheduled DAGs (snapshot, then CDC) -> DuckDB, with the UI, until Ctrl-C.

1. starts a throwaway PostgreSQL cluster (wal_level=logical) with ``public.customers`` and ``public.orders``;
2. writes a registry in the shipped style (``dags/tables.yaml``) for both tables, scheduled every minute
   (``customers`` waits for changes in the triggerer, ``deferrable: true``; ``orders`` in reschedule mode);
3. starts Airflow's scheduler, dag-processor, triggerer and api-server (LocalExecutor, SQLite, a temp
   AIRFLOW_HOME) with the shipped DAG files, and unpauses the two DAGs;
4. prints the UI's URL and login, then every ``--every`` seconds (half-way between two runs) prints each
   DAG's latest runs and whether DuckDB equals the source, and writes to the source (inserts, updates, deletes);
5. on Ctrl-C (or after ``--minutes``) stops Airflow and PostgreSQL and removes the demo dir (``--keep`` keeps it).

Usage: ``make demo-airflow`` (or ``.venv/bin/python scripts/demo_airflow.py [--port 8080] [--every 60] [--no-login]``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import signal
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too

DATABASE = "shop"
DAGS = {"customers": "pg_replication__public__customers", "orders": "pg_replication__public__orders"}
COLUMNS = {
    "customers": ["customer_id", "first_name", "last_name", "email", "created_at"],
    "orders": ["order_id", "customer_id", "total", "status", "ordered_at"],
}
_T0 = time.monotonic()

REGISTRY = """\
# pg_replication table registry (demo): one Airflow DAG per table, as in dags/tables.yaml.
source:
  conn_id: pg_source                # Airflow connection id of the source PostgreSQL (AIRFLOW_CONN_PG_SOURCE)
destination:
  type: duckdb
  credentials: {duckdb}
  dataset: replica
defaults:
  mode: cdc
  schedule: "* * * * *"             # every minute, so there is something to watch (shipped: */5)
  deletes: hard
  poke_interval: 5                  # wait_for_changes looks at the slot every 5 s ...
  wait_timeout: 40                  # ... for up to 40 s, then the run skips apply_changes
tables:
  - table: public.customers
    primary_key: [customer_id]
    deferrable: true                # waits in the triggerer: no worker slot while waiting
  - table: public.orders
    deferrable: false               # reschedule mode: a short task process every poke
"""


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def create_tables(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.customers (customer_id bigint PRIMARY KEY, first_name text NOT NULL, "
            "last_name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO public.customers SELECT g, 'First' || g, 'Last' || g, 'customer' || g || "
            "'@example.com', timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes' "
            "FROM generate_series(1, %s::int) g",
            (rows,),
        )
        conn.execute(
            "CREATE TABLE public.orders (order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
            "total numeric(12,2) NOT NULL, status text NOT NULL, "
            "ordered_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO public.orders (order_id, customer_id, total, status) "
            "SELECT g, 1 + g %% %s, round((random() * 500)::numeric, 2), 'new' "
            "FROM generate_series(1, %s::int) g",
            (rows, rows * 3),
        )


def write_some(dsn: str, rng: random.Random) -> str:
    """A few transactions on both tables: new orders, paid orders, a new customer, an edit, a delete."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        next_order = conn.execute("SELECT coalesce(max(order_id), 0) + 1 FROM public.orders").fetchone()[0]
        next_customer = conn.execute("SELECT coalesce(max(customer_id), 0) + 1 FROM public.customers").fetchone()[0]
        new_orders = rng.randint(3, 12)
        conn.execute(
            "INSERT INTO public.orders (order_id, customer_id, total, status) "
            "SELECT g, 1 + (g * 7919) %% 1000, round((random() * 500)::numeric, 2), 'new' "
            "FROM generate_series(%s::bigint, %s::bigint) g",
            (next_order, next_order + new_orders - 1),
        )
        paid = conn.execute(
            "UPDATE public.orders SET status = 'paid' WHERE order_id IN (SELECT order_id FROM "
            "public.orders WHERE status = 'new' ORDER BY random() LIMIT %s)",
            (rng.randint(1, 8),),
        ).rowcount
        with conn.transaction():
            conn.execute(
                "INSERT INTO public.customers (customer_id, first_name, last_name, email) "
                "VALUES (%s, 'New', 'Customer', NULL)",
                (next_customer,),
            )
            edited = conn.execute(
                "UPDATE public.customers SET email = lower(first_name) || '.' || customer_id || "
                "'@example.org' WHERE customer_id = (SELECT customer_id FROM public.customers "
                "ORDER BY random() LIMIT 1)"
            ).rowcount
        deleted = conn.execute(
            "DELETE FROM public.orders WHERE order_id = (SELECT order_id FROM public.orders "
            "WHERE status = 'paid' ORDER BY random() LIMIT 1)"
        ).rowcount
    return f"orders: {new_orders} inserted, {paid} paid, {deleted} deleted; customers: 1 inserted, {edited} edited"


def _normal(row: tuple) -> tuple:
    """Comparable values: timestamps as UTC ISO text, decimals as text."""
    out = []
    for value in row:
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        out.append(value)
    return tuple(out)


def compare(dsn: str, duck: Path, table: str) -> str:
    """How the DuckDB copy compares with the source, row for row on the source's columns."""
    import duckdb
    import psycopg

    cols = ", ".join(COLUMNS[table])
    with psycopg.connect(dsn) as conn:
        src = {_normal(r) for r in conn.execute(f"SELECT {cols} FROM public.{table}").fetchall()}
    from airflow_pg_replication import query_warehouse
    from airflow_pg_replication.errors import TransientError

    try:  # under the package's shared lock: waits for a task that writes, never makes one wait long
        dst = {_normal(r) for r in query_warehouse(f"SELECT {cols} FROM replica.{table}", path=duck, timeout=20)}
    except (FileNotFoundError, duckdb.CatalogException):
        return "not loaded yet"
    except TransientError:
        return "busy (a snapshot is writing it)"
    if src == dst:
        return f"equals the source ({len(dst)} rows)"
    return (
        f"{len(src - dst)} source rows not there yet, {len(dst - src)} rows to remove or update "
        f"(the next runs apply them)"
    )


def latest_runs(af, dag_id: str, count: int = 3) -> str:
    parts = []
    races = af.stale_event_failures()
    for run in af.runs(dag_id)[-count:]:
        tasks = af.task_states(dag_id, run["dag_run_id"])
        ran = [
            t for t in ("full_refresh", "wait_for_changes", "apply_changes") if tasks.get(t) not in (None, "skipped")
        ]
        note = ""
        if run["state"] == "failed" and (dag_id, "wait_for_changes", run["dag_run_id"]) in races:
            note = " (Airflow's scheduler race apache/airflow#71172 in reschedule mode; the next run catches up)"
        parts.append(
            f"{run['run_type']} {(run.get('run_after') or '')[11:19]} {run['state']}"
            f" [{', '.join(f'{t}={tasks[t]}' for t in ran) or 'plan'}]{note}"
        )
    return "; ".join(parts) or "no runs yet"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="UI/API port (default 8080; a free one if taken)")
    parser.add_argument(
        "--every",
        type=float,
        default=60,
        help="seconds between writes to the source, half-way between runs (default 60)",
    )
    parser.add_argument("--rows", type=int, default=1000, help="customers to start with (orders: 3x)")
    parser.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (default: at Ctrl-C)")
    parser.add_argument("--no-login", action="store_true", help="every UI visitor is an admin (no login page)")
    parser.add_argument("--keep", action="store_true", help="keep the demo dir (AIRFLOW_HOME, logs, DuckDB file)")
    args = parser.parse_args()

    from airflow_pg_replication.testing.airflow_deployment import (
        PG_REPLICATION_DAG_FILES,
        AirflowDeployment,
        DeploymentError,
        free_port,
    )
    from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster

    port = args.port
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        port = free_port()
        say(f"port {args.port} is taken; using {port}")

    signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops the demo as Ctrl-C does
    workdir = Path(tempfile.mkdtemp(prefix="pg-replication-demo-airflow-"))
    cluster = ThrowawayCluster()
    af = None
    ok = False
    try:
        say(f"demo dir {workdir}")
        cluster.start()
        dsn = cluster.create_database(DATABASE)
        create_tables(dsn, args.rows)
        say(
            f"PostgreSQL on port {cluster.port} (wal_level=logical): database {DATABASE!r} with public.customers "
            f"({args.rows} rows) and public.orders ({args.rows * 3} rows)"
        )
        duck = workdir / "warehouse.duckdb"
        registry = workdir / "tables.yaml"
        registry.write_text(REGISTRY.format(duckdb=duck))
        af = AirflowDeployment(
            workdir / "airflow",
            dag_files=PG_REPLICATION_DAG_FILES,
            port=port,
            all_admins=args.no_login,
            env={"AIRFLOW_CONN_PG_SOURCE": cluster.conn_uri(DATABASE), "PG_REPLICATION_REGISTRY": str(registry)},
        )
        say("airflow db migrate, then scheduler, dag-processor, triggerer and api-server (about 30 s) ...")
        af.start()
        af.wait_for_dags(DAGS.values(), timeout=180)
        for dag_id in DAGS.values():
            af.unpause(dag_id)
        say(f"DAGs {', '.join(DAGS.values())} loaded and unpaused; the scheduler starts a run every minute")
        login = (
            "no login needed (every visitor is an admin)"
            if args.no_login
            else f"log in as {af.username!r} with password {af.password!r} (throwaway demo credentials)"
        )
        print(
            f"""
    Airflow UI:  {af.url}/          {login}
    DAGs:        {af.url}/dags/{DAGS["customers"]}
                 {af.url}/dags/{DAGS["orders"]}
    registry:    {registry}
    DuckDB:      {duck}  (dataset replica; --keep keeps it, and the logs, after Ctrl-C)
    logs:        {af.logs}/  (components), {af.home / "logs"}/  (tasks)
    Ctrl-C stops Airflow and PostgreSQL.
""",
            flush=True,
        )
        rng = random.Random(11)
        deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
        while deadline is None or time.monotonic() < deadline:
            # write half-way between two runs (runs start on the minute), after the status of what ran
            wait = (args.every / 2 - time.time()) % args.every
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            end = time.monotonic() + wait
            while time.monotonic() < end:
                af.check_alive()
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if deadline is not None and time.monotonic() >= deadline:
                break
            for table, dag_id in DAGS.items():
                print(f"    {dag_id}: {latest_runs(af, dag_id)}", flush=True)
                print(f"    replica.{table}: {compare(dsn, duck, table)}", flush=True)
            say(f"source: {write_some(dsn, rng)}")
            time.sleep(1)
        ok = True
    except KeyboardInterrupt:
        print(flush=True)
        say("Ctrl-C: stopping")
        ok = True
    except DeploymentError as exc:
        say(f"Airflow failed: {exc}")
    finally:
        if af is not None:
            af.stop()
        cluster.stop()
        if args.keep or not ok:
            say(f"stopped Airflow and PostgreSQL; kept {workdir} (logs, DuckDB file); remove it when done")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("stopped Airflow and PostgreSQL; demo dir removed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
