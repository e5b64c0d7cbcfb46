"""Pick a table's destination implementation from the registry's ``destination`` mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_pg_replication.destination.base import TableDestination


def table_destination(
    spec: Mapping[str, Any] | None,
    *,
    table_name: str,
    destination_table: str,
    pipeline_name: str,
    read_only: bool = False,
) -> TableDestination:
    """The destination of one table: native DuckDB for ``type: duckdb`` (the default), dlt for every other type.

    ``spec`` holds type, credentials and dataset; an Airflow ``conn_id`` must already be resolved
    into credentials (the Airflow shells do it).
    """
    spec = {"type": "duckdb", **dict(spec or {})}
    kwargs = {
        "table_name": table_name,
        "destination_table": destination_table,
        "pipeline_name": pipeline_name,
        "read_only": read_only,
    }
    if spec["type"] == "duckdb":
        from airflow_pg_replication.destination.duckdb.table import DuckDbTableDestination

        return DuckDbTableDestination(spec, **kwargs)
    from airflow_pg_replication.destination.dlt_table import DltTableDestination

    return DltTableDestination(spec, **kwargs)
