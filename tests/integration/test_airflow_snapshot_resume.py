"""A big table's snapshot killed in the middle under a real Airflow; Airflow's retry goes on where it stopped.

The scheduler, dag-processor and api-server run as processes (LocalExecutor). The registry's table
is in slot group ``default``; the workers' environment makes it a "big" table (ranges of 2 MB from
1 MB up). The test triggers the table's DAG, waits until the copy reads its last ranges, and SIGKILLs
the task's own process, as an OOM kill or a lost worker would. Airflow marks the try failed and
retries it 30 s later; the retry imports the snapshot the keeper process held and resumes. The
destination then equals the source, no key twice, and the group's CDC goes on from there.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from airflow_pg_replication import query_warehouse
from airflow_pg_replication.testing.airflow_deployment import PG_REPLICATION_DAG_FILES, AirflowDeployment
from tests.integration.conftest import source_rows

DAG = "pg_replication__public__events"
ROWS = 1_200_000
REGISTRY = """\
source:
  conn_id: pg_source
destination:
  type: duckdb
  credentials: {duckdb}
  dataset: replica
defaults:
  schedule: null
tables:
  - table: public.events
    snapshot_parallelism: 1
"""


@pytest.fixture
def airflow(pg_db, tmp_path: Path):
    pg_db.execute("CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, note text)")
    pg_db.execute(
        "INSERT INTO events SELECT g, 'kind ' || (g %% 17), 'note for event ' || g FROM generate_series(1, %s) g",
        (ROWS,),
    )
    pg_db.execute("VACUUM ANALYZE events")
    registry = tmp_path / "tables.yaml"
    registry.write_text(REGISTRY.format(duckdb=tmp_path / "warehouse.duckdb"))
    deployment = AirflowDeployment(
        tmp_path / "airflow",
        dag_files=PG_REPLICATION_DAG_FILES,
        env={
            "AIRFLOW_CONN_PG_SOURCE": pg_db.conn_uri,
            "PG_REPLICATION_REGISTRY": str(registry),
            "PG_REPLICATION_SNAPSHOT_MIN_RANGED_MB": "1",
            "PG_REPLICATION_SNAPSHOT_RANGE_MB": "2",
        },
    )
    try:
        yield deployment
    finally:
        deployment.stop()


def copy_under_way(pg_db, last_pages: int) -> tuple[int, int] | None:
    """(client port of the task's main session, first page being read) once a range past ``last_pages`` is read."""
    rows = pg_db.query(
        "SELECT u.client_port, c.query FROM pg_stat_activity u JOIN pg_stat_activity c "
        "ON c.query LIKE 'COPY (SELECT%%ctid >=%%' "  # a reader's range: being sent, or sent and being read
        "WHERE u.application_name LIKE 'pgrepl_copy %%'"
    )
    for port, query in rows:
        first = int(re.search(r"ctid >= '\((\d+),0\)'", query).group(1))
        if first >= last_pages:
            return port, first
    return None


def process_with_local_port(port: int) -> psutil.Process:
    """The process owning the TCP socket whose local port is ``port`` (the task's connection to PostgreSQL)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"no process holds local port {port}")


def test_a_snapshot_killed_mid_copy_is_resumed_by_airflows_retry(airflow, pg_db, tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    pages = pg_db.query("SELECT pg_relation_size('events') / 8192")[0][0]
    airflow.start()
    airflow.wait_for_dags([DAG])
    airflow.unpause(DAG)
    run_id = airflow.trigger(DAG)["dag_run_id"]

    found: dict = {}

    def late_in_the_copy() -> bool:
        got = copy_under_way(pg_db, last_pages=int(pages * 0.7))
        if got:
            found["port"], found["page"] = got
        return got is not None

    airflow.wait_for(late_in_the_copy, 240, "the copy to read its last ranges", interval=0.05)
    task = process_with_local_port(found["port"])
    os.kill(task.pid, signal.SIGKILL)  # the task's own process, in the middle of a range
    killed_at = time.monotonic()

    run = airflow.wait_for_run(DAG, run_id, timeout=300)
    assert run["state"] == "success", airflow.describe_run(DAG, run_id)
    tries = airflow.task_instances(DAG, run_id)["full_refresh"]["try_number"]
    assert tries == 2, f"full_refresh took {tries} tries"
    log = airflow.task_log(DAG, run_id, "full_refresh", lines=400)
    assert "resuming the interrupted copy under snapshot" in log, log
    assert time.monotonic() - killed_at < 300

    count, distinct = query_warehouse("SELECT count(*), count(DISTINCT id) FROM replica.events", path=warehouse)[0]
    assert count == distinct == ROWS
    cols, key = ["id", "kind", "note"], ["id"]
    want = source_rows(pg_db, "public.events", cols, key)
    assert query_warehouse("SELECT id, kind, note FROM replica.events ORDER BY id", path=warehouse) == want
    # the keeper let go of the snapshot once the copy was in
    deadline = time.monotonic() + 20
    while pg_db.query("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgrepl_snapshot_keeper %%'")[
        0
    ] != (0,):
        assert time.monotonic() < deadline, "the snapshot keeper outlived the copy"
        time.sleep(0.5)
