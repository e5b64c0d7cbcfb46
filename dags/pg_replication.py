"""Airflow DAG file: one replication DAG per table of the pg_replication registry.

The registry is ``tables.yaml`` next to this file, or the file named by the environment
variable ``PG_REPLICATION_REGISTRY``. Parsing reads only that file: no database, no network,
and no dlt/pyarrow import (those happen inside the tasks). A broken table entry becomes a DAG
whose single task fails with the registry error, so the other tables' DAGs still load; the
companion file ``pg_replication_registry_errors.py`` puts the same error among Airflow's import errors.
"""

from __future__ import annotations

from pathlib import Path

from airflow_pg_replication.dag_factory import build_dags, registry_path

globals().update(build_dags(registry_path(Path(__file__).parent)))  # Airflow finds DAGs among globals
