"""Type a folded batch: its text values become the Arrow types of the destination columns.

Cells whose value the destination keeps (an unchanged TOAST value, a soft delete of a row not
seen in the batch) are marked, not filled: filling them reads the destination
(:mod:`airflow_pg_replication.sync.batch_write`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_pg_replication.source.type_map import PgColumn, text_to_arrow

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_pg_replication.changes.columnar_fold import ColumnarBatch


def typed_keys(keys: Sequence[tuple], key_columns: Sequence[str], columns: Mapping[str, PgColumn]) -> pa.Table:
    """Key tuples of text values -> an Arrow table of the key columns, typed."""
    import pyarrow as pa

    return pa.table(
        {
            name: text_to_arrow(pa.array([k[i] for k in keys], pa.string()), columns[name])
            for i, name in enumerate(key_columns)
        }
    )


@dataclass
class TypedBatch:
    """A column-wise folded batch typed for its destination, not yet written (see :func:`type_columnar_batch`)."""

    arrays: list  # typed Arrow column per layout column, of the rows kept
    layout: tuple[str, ...]
    key_columns: tuple[str, ...]
    columns: Mapping[str, PgColumn]
    to_fill: dict[int, list[int]]  # column index -> rows whose value the destination keeps
    lsn: pa.Array
    deleted_at: pa.Array | None
    delete_keys: pa.Table | None
    soft_deletes: bool
    upserts: int
    deletes: int


def type_columnar_batch(batch: ColumnarBatch, columns: Mapping[str, PgColumn], *, soft_deletes: bool) -> TypedBatch:
    """The text values of a column-wise folded batch (:mod:`.columnar_fold`), typed; no destination needed.

    Written with :func:`.sync.batch_write.write_typed_batch`: the outcome of
    :func:`.sync.batch_write.write_change_batch` (the reference path), in bulk.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    key_columns = batch.key_columns
    layout = tuple(c.name for c in batch.relation.columns if c.name in columns)  # `columns` may leave some out
    deleted = batch.deleted.to_numpy(zero_copy_only=False)
    delete_keys = None
    if soft_deletes:
        keep = np.ones(len(deleted), dtype=bool)
    else:
        keep = ~deleted
        if deleted.any():
            gone = pa.array(deleted)
            delete_keys = pa.table({k: text_to_arrow(batch.values[k].filter(gone), columns[k]) for k in key_columns})
    mask = pa.array(keep)
    unknown = ~batch.known.to_numpy(zero_copy_only=False)[keep]  # soft deletes of rows not seen: keep all
    to_fill: dict[int, list[int]] = {}
    arrays = []
    for c, name in enumerate(layout):
        arrays.append(text_to_arrow(batch.values[name].filter(mask), columns[name]))
        kept = np.zeros(int(keep.sum()), dtype=bool)
        if name in batch.unchanged:
            kept |= batch.unchanged[name].to_numpy(zero_copy_only=False)[keep]
        if name not in key_columns:
            kept |= unknown
        if kept.any():
            to_fill[c] = np.flatnonzero(kept).tolist()
    deleted_at = None
    if soft_deletes:
        deleted_at = pc.if_else(batch.deleted, batch.commit_time, pa.nulls(len(batch), batch.commit_time.type))
    return TypedBatch(
        arrays,
        layout,
        key_columns,
        columns,
        to_fill,
        batch.commit_lsn.filter(mask),
        deleted_at,
        delete_keys,
        soft_deletes,
        upserts=int((~deleted).sum()),
        deletes=int(deleted.sum()),
    )
