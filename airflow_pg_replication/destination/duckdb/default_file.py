"""Where the embedded default warehouse lives: ``$AIRFLOW_HOME/pg_replication.duckdb``."""

from __future__ import annotations

import os


def default_duckdb_path() -> str:
    """Absolute path of the default DuckDB file: ``$AIRFLOW_HOME/pg_replication.duckdb``, else in the cwd."""
    return os.path.abspath(os.path.join(os.environ.get("AIRFLOW_HOME") or ".", "pg_replication.duckdb"))
