"""Airflow DAG file: one replication DAG per table of the pg_replication registry.

The registry is ``tables.yaml`` next to this file, or the file named by the environment
variable ``PG_REPLICATION_REGISTRY``. Parsing reads only that file: no database, no network,
and no dlt/pyarrow import (those happen inside the tasks). A broken table entry becomes a DAG
whose single task fails with the registry error, so the other tables' DAGs still load.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_pg_replication import build_dags

REGISTRY = os.environ.get("PG_REPLICATION_REGISTRY") or str(Path(__file__).with_name("tables.yaml"))

globals().update(build_dags(REGISTRY))  # {dag_id: DAG}: Airflow finds DAGs among module globals
