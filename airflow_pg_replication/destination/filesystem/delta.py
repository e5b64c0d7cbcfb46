"""A Delta table's CDC steps with the ``deltalake`` package: merge upserts by key, delete keys, truncate.

Each step is one Delta commit and idempotent: a key merge sets the row to the batch's values
whatever it held, a delete of a missing key does nothing, and a truncate leaves an empty (or, soft,
marked) table. So a batch re-applied after a crash anywhere in it gives the same table.

Keys and rows travel as Arrow tables (the merge's source), never as SQL literals; the predicates
name columns only, quoted. ``storage_options`` are deltalake's (the bucket's keys on object storage, see
:mod:`.object_storage`); None on a local disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.filesystem.lake import quote_identifier
from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable


def open_table(url: str, storage_options: dict[str, str] | None = None) -> DeltaTable | None:
    """The Delta table at ``url``, or None when there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(url, storage_options=storage_options)
    except TableNotFoundError:
        return None


def key_predicate(key_columns: Sequence[str]) -> str:
    """``target."k" = source."k" AND …``: the merge's match on the key."""
    return " AND ".join(
        compose("target." + quote_identifier(k), "=", "source." + quote_identifier(k)) for k in key_columns
    )


def compatible(table: pa.Table, target: DeltaTable | None) -> pa.Table:
    """``table`` with types Delta stores (dlt's rules: time as text, …), cast to the target's type where it has one."""
    import pyarrow as pa
    from dlt.common.libs.deltalake import ensure_delta_compatible_arrow_data

    table = ensure_delta_compatible_arrow_data(table)
    if target is None:
        return table
    have = pa.schema(target.schema().to_arrow())
    fields = [
        have.field(f.name) if f.name in have.names and have.field(f.name).type != f.type else f for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def upsert(url: str, rows: pa.Table, key_columns: Sequence[str], storage_options: dict[str, str] | None = None) -> None:
    """Insert or update ``rows`` by key; columns new to the table are added (rows before them hold NULL)."""
    from deltalake import write_deltalake

    target = open_table(url, storage_options)
    data = compatible(rows, target)
    if target is None:  # an empty snapshot left no table behind: this is its first row
        write_deltalake(url, data, mode="append", schema_mode="merge", storage_options=storage_options)
        return
    (
        target.merge(data, key_predicate(key_columns), source_alias="source", target_alias="target", merge_schema=True)
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def delete_keys(url: str, keys: pa.Table, storage_options: dict[str, str] | None = None) -> None:
    """Delete the rows whose key is one of ``keys`` (a table of the key columns, typed)."""
    target = open_table(url, storage_options)
    if target is None or not keys.num_rows:
        return
    (
        target.merge(
            compatible(keys, target), key_predicate(keys.column_names), source_alias="source", target_alias="target"
        )
        .when_matched_delete()
        .execute()
    )


def truncate(
    url: str, *, soft_at: datetime | None, lsn: int | None, storage_options: dict[str, str] | None = None
) -> None:
    """Delete every row; with ``soft_at``, mark every live row deleted at that time (and ``lsn``) instead."""
    target = open_table(url, storage_options)
    if target is None:
        return
    if soft_at is None:
        target.delete()
        return
    values: dict[str, Any] = {DELETED_AT_COLUMN: soft_at}
    if lsn is not None:
        values[LSN_COLUMN] = lsn
    target.update(new_values=values, predicate=compose(quote_identifier(DELETED_AT_COLUMN), "IS NULL"))
