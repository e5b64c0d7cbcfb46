"""The generated DAGs under a real Airflow: scheduler, dag-processor, triggerer and api-server as processes.

``airflow dags test`` (test_dag_run.py) never serializes a DAG and skips the scheduler, the triggerer and
concurrency. Here the dag-processor parses and serializes the DAG file, the scheduler creates runs from the
DAGs' cron timetables and hands tasks to LocalExecutor worker processes, the triggerer runs the deferred
sensor, and a run is triggered through the REST API. SQLite metadata DB, all in a temp dir
(:class:`airflow_pg_replication.testing.airflow_deployment.AirflowDeployment`). Takes 2–4 minutes: runs
follow the wall clock's minutes.
"""

from __future__ import annotations

import datetime
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_pg_replication import query_warehouse
from airflow_pg_replication.testing.airflow_deployment import (
    PG_REPLICATION_DAG_FILES,
    AirflowDeployment,
    DeploymentError,
)
from tests.integration.conftest import source_rows

CUSTOMERS = "pg_replication__public__customers"  # wait_for_changes in reschedule mode
ORDERS = "pg_replication__public__orders"  # wait_for_changes deferrable: waits in the triggerer
DAG_IDS = (CUSTOMERS, ORDERS)
COLUMNS = {
    "customers": ["customer_id", "name", "email", "updated_at"],
    "orders": ["order_id", "customer_id", "total", "status"],
}
KEYS = {"customers": ["customer_id"], "orders": ["order_id"]}
SNAPSHOT_TASKS = {
    "plan": "success",
    "full_refresh": "success",
    "wait_for_changes": "skipped",
    "apply_changes": "skipped",
}
CDC_TASKS = {"plan": "success", "full_refresh": "skipped", "wait_for_changes": "success", "apply_changes": "success"}

REGISTRY = """\
source:
  conn_id: pg_source
destination:
  type: duckdb
  credentials: {duckdb}
  dataset: replica
defaults:
  mode: cdc
  schedule: "* * * * *"        # a run every minute, by the scheduler
  poke_interval: 2
  wait_timeout: 20
tables:
  - table: public.customers
    deferrable: false          # reschedule mode: one task process per poke
  - table: public.orders
    deferrable: true           # one poke, then the triggerer waits
    wait_timeout: 45
"""


def make_tables(pg_db) -> None:
    pg_db.execute(
        "CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text NOT NULL, email text, "
        "updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00')"
    )
    pg_db.execute(
        "INSERT INTO customers (customer_id, name, email) "
        "SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 300) g"
    )
    pg_db.execute(
        "CREATE TABLE orders (order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
        "total numeric(12,2) NOT NULL, status text NOT NULL)"
    )
    pg_db.execute(
        "INSERT INTO orders SELECT g, 1 + g % 300, (g * 7 % 1000) / 4.0, 'new' FROM generate_series(1, 500) g"
    )


@pytest.fixture
def airflow(pg_db, tmp_path: Path) -> Iterator[AirflowDeployment]:
    """A throwaway Airflow (not started yet) whose DAGs folder holds the shipped DAG files, reading a
    registry of customers and orders into ``tmp_path/warehouse.duckdb``; stopped on every way out."""
    make_tables(pg_db)
    registry = tmp_path / "tables.yaml"
    registry.write_text(REGISTRY.format(duckdb=tmp_path / "warehouse.duckdb"))
    deployment = AirflowDeployment(
        tmp_path / "airflow",
        dag_files=PG_REPLICATION_DAG_FILES,
        env={"AIRFLOW_CONN_PG_SOURCE": pg_db.conn_uri, "PG_REPLICATION_REGISTRY": str(registry)},
    )
    try:
        yield deployment
    finally:
        deployment.stop()


def read_duckdb(path: Path, query: str, timeout: float = 120) -> list[tuple]:
    """Read the warehouse as users should while tasks run: under the package's shared lock."""
    return query_warehouse(query, path=path, timeout=timeout)


class Checker:
    """The test's view of the warehouse and the source, with timed phases for the report."""

    def __init__(self, af: AirflowDeployment, pg_db: Any, warehouse: Path) -> None:
        self.af, self.pg_db, self.warehouse = af, pg_db, warehouse
        self.t0 = time.monotonic()
        self.phases: list[str] = []

    def phase(self, name: str) -> None:
        self.phases.append(f"{time.monotonic() - self.t0:6.1f}s {name}")
        print(self.phases[-1], flush=True)

    def differences(self, table: str) -> str | None:
        cols, key = COLUMNS[table], KEYS[table]
        quoted = ", ".join(f'"{c}"' for c in cols)
        dst = read_duckdb(
            self.warehouse, f'SELECT {quoted} FROM replica."{table}" ORDER BY ' + ", ".join(f'"{k}"' for k in key)
        )
        src = source_rows(self.pg_db, f"public.{table}", cols, key)
        if dst == src:
            return None
        only_src, only_dst = sorted(set(src) - set(dst)), sorted(set(dst) - set(src))
        return (
            f"replica.{table} differs from public.{table}: {len(src)} source rows, {len(dst)} destination "
            f"rows; only in the source: {only_src[:3]}; only in the destination: {only_dst[:3]}"
        )

    def assert_same(self, table: str) -> None:
        diff = self.differences(table)
        assert diff is None, diff

    def state(self, table: str) -> dict[str, Any]:
        rows = read_duckdb(
            self.warehouse,
            "SELECT status, snapshot_lsn, applied_lsn FROM "
            f"replica._pg_replication_state WHERE table_name = 'public.{table}'",
        )
        assert rows, f"no state row for public.{table}"
        return dict(zip(("status", "snapshot_lsn", "applied_lsn"), rows[0]))

    def run_where(
        self,
        dag_id: str,
        what: str,
        timeout: float,
        accept: Callable[[dict, dict], bool],
        *,
        run_type: str | None = "scheduled",
        after: str | None = None,
    ) -> tuple[dict, dict]:
        """Wait for a run of ``dag_id`` (newer than ``after``) for which ``accept(run, task_states)`` holds."""
        found: dict[str, Any] = {}

        def look() -> bool:
            for run in reversed(self.af.runs(dag_id)):
                if (run_type and run["run_type"] != run_type) or (after and run["run_after"] <= after):
                    continue
                tasks = self.af.task_states(dag_id, run["dag_run_id"])
                if accept(run, tasks):
                    found.update(run=run, tasks=tasks)
                    return True
            return False

        self.af.wait_for(look, timeout, f"{what} ({dag_id})", interval=1, describe=lambda: self.runs_seen(dag_id))
        return found["run"], found["tasks"]

    def runs_seen(self, dag_id: str) -> str:
        lines = []
        for run in self.af.runs(dag_id)[-6:]:
            lines.append(self.af.describe_run(dag_id, run["dag_run_id"], with_logs=run["state"] == "failed"))
        return "\n".join(lines) or f"no runs of {dag_id}"

    def seconds_left_deferred(self, dag_id: str, run_id: str, task_id: str = "wait_for_changes") -> float:
        """Seconds until the deferred task's trigger times out (so a write made now still finds it waiting)."""
        rows = self.af.metadata(
            "SELECT trigger_timeout FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "AND task_id = ? AND state = 'deferred'",
            (dag_id, run_id, task_id),
        )
        if not rows or rows[0][0] is None:
            return 0.0
        timeout = datetime.datetime.fromisoformat(rows[0][0]).replace(tzinfo=datetime.timezone.utc)
        return (timeout - datetime.datetime.now(datetime.timezone.utc)).total_seconds()

    def failed_tasks(self, dag_id: str) -> list[str]:
        """Runs with a failed task, except those failed by Airflow's own stale-event race (warned about)."""
        races = self.af.stale_event_failures()
        bad = []
        for run in self.af.runs(dag_id):
            tasks = self.af.task_states(dag_id, run["dag_run_id"])
            failed = {t for t, state in tasks.items() if state in ("failed", "up_for_retry")}
            if not failed and "upstream_failed" not in tasks.values():
                continue
            if failed == {"wait_for_changes"} and (dag_id, "wait_for_changes", run["dag_run_id"]) in races:
                warnings.warn(
                    f"{dag_id}/{run['dag_run_id']}: the scheduler failed wait_for_changes (reschedule "
                    "mode) on a late executor event: Airflow's race apache/airflow#71172, not the sensor",
                    stacklevel=2,
                )
                continue
            bad.append(self.af.describe_run(dag_id, run["dag_run_id"]))
        return bad


@pytest.mark.timeout(540)
def test_scheduled_runs_deferral_and_rest_trigger_under_a_real_airflow(
    airflow: AirflowDeployment, pg_db, tmp_path: Path
) -> None:
    af = airflow
    check = Checker(af, pg_db, tmp_path / "warehouse.duckdb")
    try:
        _scenario(af, pg_db, check)
    except DeploymentError as exc:  # a wait ran out or a component died: the message carries the logs
        pytest.fail(f"{exc}\n\nphases so far:\n" + "\n".join(check.phases), pytrace=False)


def _scenario(af: AirflowDeployment, pg_db, check: Checker) -> None:
    af.start()  # airflow db migrate, then the four components; waits until they report healthy
    check.phase("airflow db migrate; scheduler, dag-processor, triggerer, api-server healthy")

    # (a) the dag-processor parsed the DAG files with no import error and serialized both DAGs
    dags = af.wait_for_dags(DAG_IDS, timeout=120)
    assert af.import_errors() == []
    assert set(DAG_IDS) <= set(af.serialized_dag_ids())
    for dag_id in DAG_IDS:
        assert dags[dag_id]["is_paused"] is True, dags[dag_id]
        assert dags[dag_id]["timetable_summary"] == "* * * * *", dags[dag_id]
        assert {t["name"] for t in dags[dag_id]["tags"]} == {"pg_replication", "public", "cdc"}
    check.phase("DAGs parsed and serialized, no import errors")

    # (b) unpaused, the scheduler's own runs (run_type scheduled) snapshot each table
    for dag_id in DAG_IDS:
        af.unpause(dag_id)
    first: dict[str, dict] = {}
    for dag_id in DAG_IDS:
        first[dag_id], tasks = check.run_where(
            dag_id,
            "a scheduled run that takes the snapshot",
            180,
            lambda run, tasks: run["state"] in ("success", "failed") or tasks.get("full_refresh") == "failed",
        )
        assert first[dag_id]["state"] == "success" and tasks == SNAPSHOT_TASKS, check.runs_seen(dag_id)
    check.assert_same("customers")
    check.assert_same("orders")
    snapshot_lsn = check.state("customers")["snapshot_lsn"]
    check.phase("scheduled runs took both snapshots (plan -> full_refresh); destination equals source")

    # (c) writes after the snapshot are applied by a later scheduled run (reschedule-mode sensor)
    pg_db.execute("INSERT INTO customers (customer_id, name) SELECT g, 'late ' || g FROM generate_series(1001, 1040) g")
    pg_db.execute(
        "UPDATE customers SET email = NULL, name = 'Müller', updated_at = '2025-06-01 12:00:00+02' "
        "WHERE customer_id % 9 = 0"
    )
    pg_db.execute("DELETE FROM customers WHERE customer_id BETWEEN 100 AND 119")
    cdc_run, _ = check.run_where(  # 240 s: a run failed by Airflow's race (below) backs the next off 1 min
        CUSTOMERS,
        "a later scheduled run that applies the changes",
        240,
        lambda run, tasks: run["state"] == "success" and tasks == CDC_TASKS,
        after=first[CUSTOMERS]["run_after"],
    )
    check.assert_same("customers")
    check.phase(
        f"scheduled run {cdc_run['dag_run_id']} applied customers' changes (wait_for_changes -> "
        f"apply_changes); destination equals source"
    )

    # (d) orders, deferrable: no write yet, so the first poke finds nothing and the sensor defers
    deferred_run, _ = check.run_where(
        ORDERS,
        "a scheduled run whose wait_for_changes is deferred (in the triggerer) for 15 s more or longer",
        150,
        lambda run, tasks: (
            tasks.get("wait_for_changes") == "deferred" and check.seconds_left_deferred(ORDERS, run["dag_run_id"]) > 15
        ),
        after=first[ORDERS]["run_after"],
    )
    check.phase(f"orders run {deferred_run['dag_run_id']}: wait_for_changes deferred")
    pg_db.execute("UPDATE orders SET status = 'paid', total = total + 1 WHERE order_id % 5 = 0")
    pg_db.execute("INSERT INTO orders VALUES (9001, 7, 12.50, 'new'), (9002, 8, 99.99, 'new')")
    pg_db.execute("DELETE FROM orders WHERE order_id BETWEEN 10 AND 14")
    run_id = deferred_run["dag_run_id"]
    run = af.wait_for_run(ORDERS, run_id, timeout=120)
    tasks = af.task_states(ORDERS, run_id)
    assert run["state"] == "success" and tasks == CDC_TASKS, af.describe_run(ORDERS, run_id)
    events = [
        e
        for (e,) in af.metadata(
            "SELECT event FROM log WHERE dag_id = ? AND run_id = ? AND task_id = 'wait_for_changes' ORDER BY id",
            (ORDERS, run_id),
        )
    ]
    assert events.count("deferred") == 1 and events[-1] == "success", events  # resumed, not re-run from scratch
    check.assert_same("orders")
    check.phase(
        "the triggerer resumed wait_for_changes on the write; apply_changes applied it; destination equals source"
    )

    # (e) a run triggered through the REST API with {"full_refresh": true} takes a new snapshot
    pg_db.execute("UPDATE customers SET name = name || ' (renamed)' WHERE customer_id <= 5")
    manual = af.trigger(CUSTOMERS, conf={"full_refresh": True})
    assert manual["run_type"] == "manual" and manual["conf"] == {"full_refresh": True}, manual
    run = af.wait_for_run(CUSTOMERS, manual["dag_run_id"], timeout=150)
    tasks = af.task_states(CUSTOMERS, manual["dag_run_id"])
    assert run["state"] == "success" and tasks == SNAPSHOT_TASKS, af.describe_run(CUSTOMERS, manual["dag_run_id"])
    new_snapshot_lsn = check.state("customers")["snapshot_lsn"]
    assert new_snapshot_lsn > snapshot_lsn, (snapshot_lsn, new_snapshot_lsn)
    check.phase(
        f"REST-triggered run {manual['dag_run_id']}: full_refresh took a new snapshot "
        f"(snapshot LSN {snapshot_lsn} -> {new_snapshot_lsn})"
    )

    # no task of any run failed or went up for retry; then, with Airflow stopped, the warehouse holds
    # exactly the source
    failed = check.failed_tasks(CUSTOMERS) + check.failed_tasks(ORDERS)
    assert not failed, "\n".join(failed)
    # the dag-processor re-parsed the file every 10 s: an unchanged DAG must serialize the same every time
    versions = dict(af.metadata("SELECT dag_id, count(*) FROM dag_version GROUP BY dag_id"))
    capture = "pg_replication__capture__default"  # both tables share slot group default: its capture DAG
    assert versions == {CUSTOMERS: 1, ORDERS: 1, capture: 1}, (
        f"DAG versions (one per differing serialization): {versions}"
    )
    af.stop()
    check.assert_same("customers")
    check.assert_same("orders")
    check.phase("Airflow stopped; destination equals source for both tables")
