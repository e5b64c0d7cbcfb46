"""Write a folded batch into the destination: typed rows, kept TOAST values read back first, then one apply_batch.

Two ways in, one way out: :func:`write_change_batch` for the reference (per-message) fold,
:func:`write_typed_batch` for a column-wise folded batch typed by :mod:`.changes.typed_batch`.
Kept values are read from the destination before anything of the batch is written, so a value
found nowhere fails the batch with nothing half-applied.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_pg_replication.changes.reference_fold import ChangeBatch, RowState
from airflow_pg_replication.changes.typed_batch import TypedBatch, typed_keys
from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.columns import destination_columns
from airflow_pg_replication.destination.state_table import ReplicationState
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.phase_timing import phase
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN
from airflow_pg_replication.source.pgoutput import UNCHANGED_TOAST, format_lsn
from airflow_pg_replication.source.type_map import PgColumn, arrow_type, text_to_arrow

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger(__name__)


@dataclass
class ApplyResult:
    """What one apply wrote."""

    upserts: int = 0
    deletes: int = 0
    truncated: bool = False
    kept_values: int = 0  # cells whose value was kept from the destination (unchanged TOAST, soft deletes)

    def add(self, part: ApplyResult) -> ApplyResult:
        """Fold the result of another part of the same batch into this one."""
        self.upserts += part.upserts
        self.deletes += part.deletes
        self.truncated = self.truncated or part.truncated
        self.kept_values += part.kept_values
        return self


def write_change_batch(
    dest: TableDestination,
    batch: ChangeBatch,
    columns: Mapping[str, PgColumn],
    *,
    soft_deletes: bool,
    state: ReplicationState | None = None,
) -> ApplyResult:
    """Write ``batch`` into ``dest`` and then ``state``. Every step is idempotent, so re-applying is harmless.

    ``columns`` maps each replicated column name to its type; it covers every layout in the batch.
    """
    import pyarrow as pa

    result = ApplyResult()
    relation_columns = batch.relation.columns if batch.relation is not None else ()  # None: a batch of no row
    key_columns = batch.key_columns or tuple(c.name for c in relation_columns)
    truncate = None
    if batch.truncate is not None:
        lsn, at = batch.truncate
        truncate = (at, lsn, soft_deletes)
        result.truncated = True
    hard_deleted = [k for k, r in batch.rows.items() if r.deleted and not soft_deletes]
    delete_keys = typed_keys(hard_deleted, key_columns, columns) if hard_deleted else None
    result.deletes = len(hard_deleted)
    written = [(k, r) for k, r in batch.rows.items() if not r.deleted or soft_deletes]
    by_layout: dict[tuple[str, ...], list[tuple[tuple, RowState]]] = {}
    for key, row in written:
        by_layout.setdefault(row.layout, []).append((key, row))
    with phase("cdc.type"):  # text -> typed Arrow, kept values read back
        tables = [
            _rows_to_table(dest, rows, layout, key_columns, columns, soft_deletes, result, batch.continues_lsn)
            for layout, rows in by_layout.items()
        ]
    upserts = None
    if tables:
        upserts = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    hint_cols = [columns[n] for n in (upserts.column_names if upserts is not None else []) if n in columns]
    with phase("cdc.write"):
        dest.apply_batch(
            upserts=upserts,
            delete_keys=delete_keys,
            truncate=truncate,
            key_columns=key_columns,
            columns=destination_columns(hint_cols, soft_deletes=soft_deletes),
            state=state,
        )
    result.upserts = sum(1 for _, r in written if not r.deleted)
    result.deletes += sum(1 for _, r in written if r.deleted)
    return result


def _rows_to_table(
    dest: TableDestination,
    rows: list[tuple[tuple, RowState]],
    layout: tuple[str, ...],
    key_columns: Sequence[str],
    columns: Mapping[str, PgColumn],
    soft_deletes: bool,
    result: ApplyResult,
    continues_lsn: int | None = None,
) -> pa.Table:
    """One Arrow table for rows of one column layout; cells to keep are read back from the destination.

    A row whose key changed in the batch has its kept cells read under its source key (the key it
    had before the batch), not its own (see :class:`_Sources`).
    """
    import pyarrow as pa

    if any(name not in columns for name in layout):  # columns the registry's `columns` list leaves out
        keep = [i for i, name in enumerate(layout) if name in columns]
        layout = tuple(layout[i] for i in keep)
        rows = [
            (
                key,
                dataclasses.replace(
                    row, layout=layout, values=None if row.values is None else tuple(row.values[i] for i in keep)
                ),
            )
            for key, row in rows
        ]
    key_pos = {name: i for i, name in enumerate(key_columns)}
    width = len(layout)
    values: list[tuple] = []
    for key, row in rows:
        if row.values is not None:
            values.append(row.values)
        else:  # a soft delete of a row not seen in this batch: keep everything but the key
            values.append(tuple(key[key_pos[n]] if n in key_pos else UNCHANGED_TOAST for n in layout))
    to_fill: dict[int, list[int]] = {}  # column index -> row indexes whose value is kept
    for r, vals in enumerate(values):
        if UNCHANGED_TOAST in vals:
            for c in range(width):
                if vals[c] is UNCHANGED_TOAST:
                    to_fill.setdefault(c, []).append(r)
    text_columns = list(zip(*values)) if values else [()] * width
    arrays = []
    for c, name in enumerate(layout):
        col_text: Sequence[object] = text_columns[c]
        if c in to_fill:
            col_text = [None if v is UNCHANGED_TOAST else v for v in col_text]
        arrays.append(text_to_arrow(pa.array(col_text, pa.string()), columns[name]))
    deleted_at = None
    if soft_deletes:
        deleted_at = pa.array(
            [row.commit_time if row.deleted else None for _, row in rows], pa.timestamp("us", tz="UTC")
        )
    sources = _Sources.of(rows, key_columns, columns, continues_lsn) if to_fill else None
    return _finish_table(
        dest,
        arrays,
        layout,
        key_columns,
        columns,
        to_fill,
        pa.array([row.commit_lsn for _, row in rows], pa.int64()),
        deleted_at,
        result,
        sources=sources,
    )


@dataclass
class _Sources:
    """Rows whose key changed in the batch: the key to read their kept cells under, and when they left it."""

    keys: list[tuple | None]  # per row: typed key it had before the batch (None: read under its own key)
    left_lsn: list[int | None]  # per row: commit LSN of the change that moved it off that key
    continues_lsn: int | None  # see ChangeBatch.continues_lsn

    @classmethod
    def of(
        cls,
        rows: list[tuple[tuple, RowState]],
        key_columns: Sequence[str],
        columns: Mapping[str, PgColumn],
        continues_lsn: int | None,
    ) -> _Sources | None:
        """The source keys of ``rows``, typed like the destination's keys; None when no row moved."""
        moved = {r: row.source_key for r, (_, row) in enumerate(rows) if row.source_key is not None}
        if not moved:
            return None
        typed = typed_keys(list(moved.values()), key_columns, columns)
        keys: list[tuple | None] = [None] * len(rows)
        for r, key in zip(moved, zip(*[c.to_pylist() for c in typed.columns])):
            keys[r] = key
        return cls(keys, [row.source_lsn for _, row in rows], continues_lsn)

    def still_there(self, r: int, written_lsn: int | None) -> bool:
        """Whether the destination row under row ``r``'s source key is that row as it was before it moved.

        It is when written before the move: a write at or after it comes from an earlier,
        interrupted attempt of this batch (the key may hold another row by now). In a later part of
        a batch applied in parts, the previous part may have written it in the same transaction.
        """
        left = self.left_lsn[r]
        if left is None:  # set with the source key: asked only of rows that moved
            raise ValueError(f"row {r} of the batch did not move: it has no source key to check")
        return (written_lsn or 0) < left or written_lsn == left == self.continues_lsn


def _finish_table(
    dest: TableDestination,
    arrays: list,
    layout: Sequence[str],
    key_columns: Sequence[str],
    columns: Mapping[str, PgColumn],
    to_fill: dict[int, list[int]],
    lsn: pa.Array,
    deleted_at: pa.Array | None,
    result: ApplyResult,
    *,
    sources: _Sources | None = None,
) -> pa.Table:
    """Typed columns + kept values read back from the destination + ``_pg_lsn`` (+ ``_pg_deleted_at``).

    Raises :class:`NeedsAttentionError` when a live row's kept value is not in the destination,
    before anything is written.
    """
    import pyarrow as pa

    if to_fill:
        kept = _KeptCells(tuple(layout), key_columns, columns, to_fill, lsn, deleted_at, sources)
        with phase("cdc.kept_values"):
            arrays = _fill_kept_values(dest, arrays, kept, result)
    names = [*layout, LSN_COLUMN]
    arrays = [*arrays, lsn]
    if deleted_at is not None:
        names.append(DELETED_AT_COLUMN)
        arrays.append(deleted_at)
    return pa.Table.from_arrays(arrays, names=names)


def write_typed_batch(
    dest: TableDestination, typed: TypedBatch, *, state: ReplicationState | None = None
) -> ApplyResult:
    """Write a :class:`TypedBatch` into ``dest`` (kept values read from it first), then ``state``."""
    result = ApplyResult(upserts=typed.upserts, deletes=typed.deletes)
    upserts = (
        _finish_table(
            dest,
            typed.arrays,
            typed.layout,
            typed.key_columns,
            typed.columns,
            typed.to_fill,
            typed.lsn,
            typed.deleted_at,
            result,
        )
        if len(typed.lsn)
        else None
    )
    hint_cols = [typed.columns[n] for n in typed.layout]
    with phase("cdc.write"):
        dest.apply_batch(
            upserts=upserts,
            delete_keys=typed.delete_keys,
            truncate=None,
            key_columns=typed.key_columns,
            columns=destination_columns(hint_cols, soft_deletes=typed.soft_deletes),
            state=state,
        )
    return result


@dataclass
class _KeptCells:
    """The cells of an upsert table to read back from the destination, and how to find and report them."""

    layout: tuple[str, ...]
    key_columns: Sequence[str]
    columns: Mapping[str, PgColumn]
    to_fill: dict[int, list[int]]  # column index -> row indexes whose value is kept
    lsn: pa.Array  # commit LSN per row
    deleted_at: pa.Array | None  # soft deletes: non-null for rows written as deleted
    sources: _Sources | None  # rows whose key changed in the batch


def _fill_kept_values(dest: TableDestination, arrays: list, kept: _KeptCells, result: ApplyResult) -> list:
    """Replace kept cells (unchanged TOAST, soft deletes) with the destination's values of the row before the batch.

    A row whose key changed in the batch is read under its source key, the key it had before the
    batch. This runs before the batch is written, so it reads the pre-batch destination. A live
    row whose value is not there fails the batch (see :func:`_missing_kept_values`).
    """
    import pyarrow as pa

    key_idx = [kept.layout.index(k) for k in kept.key_columns]
    keys_py = list(zip(*[arrays[i].to_pylist() for i in key_idx]))
    need_rows = sorted({r for rs in kept.to_fill.values() for r in rs})
    src = kept.sources
    moved: dict[int, tuple] = {}  # row -> the key it had before the batch, for rows whose key changed in it
    if src is not None:
        moved = {r: key for r in need_rows if (key := src.keys[r]) is not None}
    read_from = {r: moved[r] if r in moved else keys_py[r] for r in need_rows}
    fill_names = [kept.layout[c] for c in sorted(kept.to_fill)]
    fetch_names = [*fill_names, LSN_COLUMN] if moved else fill_names
    current = dest.fetch_rows(kept.key_columns, list(dict.fromkeys(read_from.values())), fetch_names)
    missing = [
        r
        for r in need_rows
        if read_from[r] not in current
        or (src is not None and r in moved and not src.still_there(r, current[read_from[r]][LSN_COLUMN]))
    ]
    if missing:
        _missing_kept_values(dest, kept, missing, keys_py, read_from)
    out = list(arrays)
    gone = set(missing)  # only soft-deleted rows get here: their unknown cells stay NULL
    for c, rows in kept.to_fill.items():
        name = kept.layout[c]
        col = kept.columns[name]
        typ = arrow_type(col)
        found = [None if r in gone else current[read_from[r]][name] for r in rows]
        if dest.keeps_postgres_types:  # PostgreSQL's text output: typed by the source's own parser
            fill = text_to_arrow(pa.array(found, pa.string()), col)
        else:
            fill = pa.array([_as_arrow_value(v, typ) for v in found], typ)
        out[c] = _scatter(out[c], rows, fill)
        result.kept_values += len(rows)
    return out


def _scatter(values: pa.Array, rows: list[int], fill: pa.Array) -> pa.Array:
    """``values`` with ``fill[i]`` at position ``rows[i]`` (Arrow values throughout: ±infinity stay as they are)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    order = np.arange(len(values))
    order[rows] = len(values) + np.arange(len(rows))
    return pa.concat_arrays([values, fill.cast(values.type)]).take(pa.array(order))


def _missing_kept_values(
    dest: TableDestination, kept: _KeptCells, missing: list[int], keys_py: list[tuple], read_from: Mapping[int, tuple]
) -> None:
    """Rows whose kept values are not in the destination: fail for live rows; warn for soft-deleted ones.

    A live row's value must never be guessed, so the batch fails before anything of it is written.
    A soft-deleted row gets NULLs for the values not found, as the row is gone from the source anyway.
    """
    deleted = [kept.deleted_at is not None and kept.deleted_at[r].is_valid for r in missing]
    live = [r for r, gone in zip(missing, deleted) if not gone]
    if live:
        raise NeedsAttentionError(_missing_message(dest, kept, live, keys_py, read_from))
    log.warning(
        "%s: %d soft-deleted row(s) with values neither in this batch nor in the destination (e.g. key %s); "
        "those columns stay NULL until the next full refresh",
        dest.table_name,
        len(missing),
        keys_py[missing[0]],
    )


def _missing_message(
    dest: TableDestination, kept: _KeptCells, live: list[int], keys_py: list[tuple], read_from: Mapping[int, tuple]
) -> str:
    """The error for live rows whose unchanged TOAST values are neither in the batch nor in the destination."""
    names = ", ".join(kept.key_columns)
    shown = []
    for r in live[:5]:
        cols = ", ".join(kept.layout[c] for c in sorted(kept.to_fill) if r in kept.to_fill[c])
        moved = read_from[r] != keys_py[r] or (kept.sources is not None and kept.sources.keys[r] is not None)
        where = f" (its key before this batch: ({names}) = {read_from[r]})" if moved else ""
        lsn = format_lsn(kept.lsn[r].as_py())
        shown.append(f"({names}) = {keys_py[r]}{where}, column(s) {cols}, commit LSN {lsn}")
    more = f"; and {len(live) - len(shown)} more" if len(live) > len(shown) else ""
    return (
        f"{dest.table_name}: {len(live)} row(s) changed with unchanged TOAST values (large values PostgreSQL "
        f"does not resend) that are neither earlier in this batch nor in {dest.describe()} under the row's key "
        f"before this batch (missing, or rewritten since by an interrupted earlier attempt of this batch): "
        f"{'; '.join(shown)}{more}. The destination is out of step with the source and these rows would get "
        "wrong values, so the batch stops before writing them: no state is recorded and the slot does not "
        "advance. Resync the table: trigger the DAG with full_refresh=true."
    )


def _as_arrow_value(value: object, typ: pa.DataType) -> object:
    """A value read back from the destination, shaped for ``typ`` (lists may come back as JSON text, times as
    ISO text: Delta has no time type)."""
    import pyarrow as pa

    if isinstance(value, str) and (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        import json

        return json.loads(value)
    if isinstance(value, str) and pa.types.is_time(typ):
        import datetime

        return datetime.time.fromisoformat(value)
    return value
