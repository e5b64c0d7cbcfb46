"""The destination columns of a replica table, as dlt column hints.

The source's columns, then ``_pg_lsn`` (and ``_pg_deleted_at``). A source column's hints also carry
its :class:`PgColumn` under :data:`PG_COLUMN_HINT`, for a destination that stores the source's own
types (PostgreSQL); :func:`dlt_hints` leaves it out of what dlt is handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    from airflow_pg_replication.source.type_map import PgColumn

#: The hint key holding a source column's :class:`PgColumn` (dlt ignores ``x-`` hints; we strip it anyway).
PG_COLUMN_HINT = "x-pg-column"


def destination_columns(columns: Sequence[PgColumn], *, soft_deletes: bool) -> list[dict]:
    """dlt column schema for the source columns plus ``_pg_lsn`` (and ``_pg_deleted_at`` for soft deletes)."""
    from airflow_pg_replication.source.type_map import dlt_column_hints

    out = [{**dlt_column_hints(c), "name": c.name, PG_COLUMN_HINT: c} for c in columns]
    for col in out:  # explicit, so a widened int4 -> int8 column overrides dlt's stored precision
        if col.get("data_type") == "bigint" and col.get("precision") is None:
            col["precision"] = 64
    out.append({"name": LSN_COLUMN, "data_type": "bigint"})
    if soft_deletes:
        out.append({"name": DELETED_AT_COLUMN, "data_type": "timestamp", "timezone": True})
    return out


def json_column_names(columns: Sequence[dict]) -> set[str]:
    """Names of the dlt columns typed json (from json/jsonb or arrays) among ``columns``."""
    return {c["name"] for c in columns if c.get("data_type") == "json"}


def dlt_hints(columns: Sequence[dict]) -> list[dict]:
    """``columns`` as dlt takes them: without :data:`PG_COLUMN_HINT` (a Python object dlt cannot store)."""
    return [{k: v for k, v in c.items() if k != PG_COLUMN_HINT} for c in columns]
