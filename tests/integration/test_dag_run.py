"""Generated DAGs run under Airflow (`airflow dags test`, SQLite metadata DB) against a real PostgreSQL.

Also: the DAG file keeps parse time light, and one broken registry entry hides no other table's DAG.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_pg_replication import build_dags
from airflow_pg_replication.registry.models import RegistryError
from tests.integration.conftest import source_rows

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "pg_replication.py"
DAG_ID = "pg_replication__public__customers"
COLS = ["customer_id", "first_name", "last_name", "email", "created_at"]


def make_customers(pg_db, rows: int) -> None:
    pg_db.execute(
        "CREATE TABLE customers (customer_id bigint PRIMARY KEY, first_name text NOT NULL, "
        "last_name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now())"
    )
    pg_db.execute(
        "INSERT INTO customers SELECT g, 'first' || g, 'last' || g, 'c' || g || '@example.com', "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour' FROM generate_series(1, %s::int) g",
        (rows,),
    )


@dataclass
class AirflowEnv:
    """A private AIRFLOW_HOME (SQLite, migrated once per session) and a DAGs folder holding the DAG file."""

    home: Path
    dags: Path

    def env(self, registry: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        if "AIRFLOW_CONN_PG_SOURCE" in os.environ:  # set by the pg_db fixture
            env["AIRFLOW_CONN_PG_SOURCE"] = os.environ["AIRFLOW_CONN_PG_SOURCE"]
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PG_REPLICATION_REGISTRY": str(registry),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            }
        )
        return env

    def airflow(self, *args: str, registry: Path, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env(registry),
            cwd=self.home,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{_tail(proc)}")
        return proc

    def last_run(self, dag_id: str) -> tuple[str, dict[str, str]]:
        """(state of the latest run of dag_id, {task_id: state}) from the metadata DB."""
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


def _tail(proc: subprocess.CompletedProcess, lines: int = 80) -> str:
    out = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(line for line in out.splitlines() if "No tasks to run" not in line)[-12000:]


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    root = tmp_path_factory.mktemp("airflow")
    env = AirflowEnv(root / "home", root / "dags")
    env.home.mkdir()
    env.dags.mkdir()
    shutil.copy(DAG_FILE, env.dags / DAG_FILE.name)
    env.airflow("db", "migrate", registry=REPO / "dags" / "tables.yaml")
    return env


def write_registry(path: Path, duckdb_path: Path, tables: str) -> Path:
    path.write_text(
        textwrap.dedent(f"""\
        source:
          conn_id: pg_source
        destination:
          type: duckdb
          credentials: {duckdb_path}
          dataset: replica
        defaults:
          schedule: null
          poke_interval: 1
          wait_timeout: 60
        tables:
        """)
        + textwrap.indent(textwrap.dedent(tables), "  ")
    )
    return path


def test_dag_snapshot_then_cdc_under_airflow(airflow_env: AirflowEnv, pg_db, duck, tmp_path: Path) -> None:
    make_customers(pg_db, rows=200)
    registry = write_registry(
        tmp_path / "tables.yaml",
        duck.path,
        """\
        - table: public.customers
          primary_key: [customer_id]
        """,
    )

    def same_as_source() -> None:
        key = ["customer_id"]
        assert duck.rows("customers", COLS, key) == source_rows(pg_db, "public.customers", COLS, key)

    # Run 1: no slot yet, so plan -> full_refresh (the snapshot).
    airflow_env.airflow("dags", "test", DAG_ID, registry=registry)
    state, tasks = airflow_env.last_run(DAG_ID)
    assert state == "success", tasks
    assert tasks == {
        "plan": "success",
        "full_refresh": "success",
        "wait_for_changes": "skipped",
        "apply_changes": "skipped",
    }
    same_as_source()
    assert duck.query("SELECT count(*) FROM replica.customers")[0][0] == 200

    # Changes on the source: inserts, updates, a key change, deletes.
    pg_db.execute(
        "INSERT INTO customers (customer_id, first_name, last_name) "
        "SELECT g, 'new' || g, 'row' FROM generate_series(1001, 1020) g"
    )
    pg_db.execute("UPDATE customers SET email = NULL, last_name = 'Müller' WHERE customer_id % 7 = 0")
    pg_db.execute("UPDATE customers SET customer_id = 5000 WHERE customer_id = 3")
    pg_db.execute("DELETE FROM customers WHERE customer_id BETWEEN 50 AND 59")

    # Run 2: snapshot loaded and slot healthy, so plan -> wait_for_changes -> apply_changes.
    airflow_env.airflow("dags", "test", DAG_ID, registry=registry)
    state, tasks = airflow_env.last_run(DAG_ID)
    assert state == "success", tasks
    assert tasks == {
        "plan": "success",
        "full_refresh": "skipped",
        "wait_for_changes": "success",
        "apply_changes": "success",
    }
    same_as_source()
    assert duck.query("SELECT count(*) FROM replica.customers WHERE customer_id IN (3, 50)") == [(0,)]


BROKEN_REGISTRY = """\
    - table: public.customers
    - table: public.orders
      mode: incremental          # no cursor_column: this entry is broken
    """


def test_broken_entry_does_not_hide_other_dags(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "tables.yaml", tmp_path / "w.duckdb", BROKEN_REGISTRY)
    dags = build_dags(registry)
    assert set(dags) == {
        "pg_replication__public__customers",
        "pg_replication__public__orders",
        "pg_replication__capture__default",
    }  # customers' slot group's capture
    assert set(dags["pg_replication__public__customers"].task_dict) == {
        "plan",
        "full_refresh",
        "wait_for_changes",
        "apply_changes",
    }
    broken = dags["pg_replication__public__orders"]
    assert list(broken.task_dict) == ["registry_error"]
    with pytest.raises(RegistryError) as err:
        broken.task_dict["registry_error"].python_callable()
    message = str(err.value)
    assert str(registry) in message and "cursor_column" in message and "tables[1]" in message


def test_dag_file_builds_from_env_registry_without_heavy_imports(tmp_path: Path) -> None:
    """dags/pg_replication.py: reads $PG_REPLICATION_REGISTRY, registers every DAG, imports no dlt/pyarrow."""
    registry = write_registry(tmp_path / "tables.yaml", tmp_path / "w.duckdb", BROKEN_REGISTRY)
    code = textwrap.dedent(f"""\
        import runpy, sys
        ns = runpy.run_path({str(DAG_FILE)!r})
        from airflow.sdk import DAG
        print(sorted(k for k, v in ns.items() if isinstance(v, DAG)))
        heavy = ('dlt', 'pyarrow', 'duckdb', 'pandas', 'adbc_driver_manager', 'adbc_driver_postgresql')
        print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        PG_REPLICATION_REGISTRY=str(registry),
        AIRFLOW_HOME=str(tmp_path / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    dag_ids, heavy = proc.stdout.strip().splitlines()[-2:]
    assert dag_ids == (
        "['pg_replication__capture__default', 'pg_replication__public__customers', 'pg_replication__public__orders']"
    )
    assert heavy == "[]", f"parsing the DAG file imported {heavy}"


def test_dag_file_default_registry_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample dags/tables.yaml loads and yields the customers CDC DAG."""
    monkeypatch.delenv("PG_REPLICATION_REGISTRY", raising=False)
    dag = runpy.run_path(str(DAG_FILE))[DAG_ID]
    assert set(dag.task_dict) == {"plan", "full_refresh", "wait_for_changes", "apply_changes"}
    assert {"pg_replication", "public", "cdc"} <= set(dag.tags)


def test_broken_dag_run_fails_with_registry_error(airflow_env: AirflowEnv, tmp_path: Path) -> None:
    """Under Airflow, the broken entry's DAG run fails and its log names the registry problem."""
    registry = write_registry(tmp_path / "tables.yaml", tmp_path / "w.duckdb", BROKEN_REGISTRY)
    proc = airflow_env.airflow("dags", "test", "pg_replication__public__orders", registry=registry, check=False)
    assert proc.returncode != 0, _tail(proc)
    state, tasks = airflow_env.last_run("pg_replication__public__orders")
    assert state == "failed" and tasks == {"registry_error": "failed"}
    output = proc.stdout + proc.stderr
    assert "RegistryError" in output and "cursor_column" in output, _tail(proc)


def test_broken_entry_is_an_airflow_import_error_and_good_dags_load(tmp_path: Path) -> None:
    """Airflow's DagBag over dags/: the broken entry is listed among import errors (file, line, key),
    and every good table's DAG still loads."""
    registry = write_registry(tmp_path / "tables.yaml", tmp_path / "w.duckdb", BROKEN_REGISTRY)
    dags = tmp_path / "dags"
    dags.mkdir()
    for name in ("pg_replication.py", "pg_replication_registry_errors.py"):
        shutil.copy(REPO / "dags" / name, dags / name)
    code = textwrap.dedent(f"""\
        import json
        try:
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:
            from airflow.models.dagbag import DagBag
        bag = DagBag(dag_folder={str(dags)!r})
        errors = {{k.split("/")[-1]: v for k, v in bag.import_errors.items()}}
        print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": errors}}))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        PG_REPLICATION_REGISTRY=str(registry),
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pg_replication__public__customers" in out["dags"]
    assert list(out["errors"]) == ["pg_replication_registry_errors.py"]
    error = out["errors"]["pg_replication_registry_errors.py"]
    assert "tables[1]" in error and "cursor_column" in error and f"{registry}:" in error


def test_only_the_running_dag_is_built_during_task_execution(tmp_path: Path, monkeypatch) -> None:
    """Airflow's parsing context names the DAG a task belongs to: only that one is built."""
    registry = write_registry(tmp_path / "tables.yaml", tmp_path / "w.duckdb", BROKEN_REGISTRY)
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "pg_replication__public__customers")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "apply_changes")
    assert list(build_dags(registry)) == ["pg_replication__public__customers"]
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID")
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID")
    assert len(build_dags(registry)) == 3  # customers, the broken orders, and the slot group's capture
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "pg_replication__capture__default")
    assert list(build_dags(registry)) == ["pg_replication__capture__default"]
