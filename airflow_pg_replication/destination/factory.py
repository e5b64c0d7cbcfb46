"""Pick a table's destination implementation from the registry's ``destination`` mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_pg_replication.destination.base import TableDestination

#: dlt's names of PostgreSQL, which the native PostgreSQL destination serves.
POSTGRES_TYPES = frozenset({"postgres", "postgresql"})


def destination_class(spec: Mapping[str, Any] | None) -> type[TableDestination]:
    """The implementation for ``spec``'s type: native DuckDB (the default) and PostgreSQL, dlt's filesystem as
    Delta or Parquet, dlt for every other."""
    kind = dict(spec or {}).get("type") or "duckdb"
    if kind == "duckdb":
        from airflow_pg_replication.destination.duckdb.table import DuckDbTableDestination

        return DuckDbTableDestination
    if kind in POSTGRES_TYPES:
        from airflow_pg_replication.destination.postgres.table import PostgresTableDestination

        return PostgresTableDestination
    if kind == "filesystem":
        from airflow_pg_replication.destination.filesystem.table import FilesystemTableDestination

        return FilesystemTableDestination
    from airflow_pg_replication.destination.dlt_table import DltTableDestination

    return DltTableDestination


def table_destination(
    spec: Mapping[str, Any] | None,
    *,
    table_name: str,
    destination_table: str,
    pipeline_name: str,
    read_only: bool = False,
) -> TableDestination:
    """The destination of one table: native DuckDB for ``type: duckdb`` (the default), native PostgreSQL for
    ``type: postgres``, Delta tables or Parquet files for ``type: filesystem`` (with ``table_format``), dlt for
    every other type.

    ``spec`` holds type, credentials and dataset (and ``table_format`` for filesystem); an Airflow ``conn_id``
    must already be resolved into credentials (the Airflow shells do it).
    """
    spec = {"type": "duckdb", **dict(spec or {})}
    return destination_class(spec)(
        spec,
        table_name=table_name,
        destination_table=destination_table,
        pipeline_name=pipeline_name,
        read_only=read_only,
    )
