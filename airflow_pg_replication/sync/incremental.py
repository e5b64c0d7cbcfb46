"""Incremental refresh: copy the rows whose cursor column reached the last high-water mark, merged by key.

The data flow of a run::

    state (mark M)  ──►  one REPEATABLE READ snapshot:  max(cursor), count of NULL cursors,
                                                        binary COPY of rows with cursor >= M - lookback
                    ──►  destination.merge(rows)  ──►  state := loaded(mark = max cursor copied)

The new mark is written only after the rows it covers have committed, so a crash re-reads a
window, never skips one.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.table_state import TablePhase, full_copy_state

if TYPE_CHECKING:
    from psycopg import sql

    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.source.type_map import PgColumn
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable
    from airflow_pg_replication.table_state import ReplicationState

log = logging.getLogger(__name__)

#: Cursor column types (base type names, through domains) whose text output sorts and casts back exactly.
TEMPORAL_CURSOR_TYPES = frozenset({"timestamptz", "timestamp", "date"})
NUMERIC_CURSOR_TYPES = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"})


class IncrementalRefresh:
    """Copy the rows of a table whose ``cursor_column`` (e.g. ``updated_at``) reached the high-water mark.

    The first run (no state, or an empty or missing destination table) copies the whole table.
    Each later run copies the rows with ``cursor_column >= mark - cursor_lookback`` and merges
    them into the destination by primary key, so re-read rows are idempotent. The comparison is
    ``>=``, not ``>``: rows sharing the mark's value are re-read every run, so a row committed
    after a run with exactly the mark's value is never missed. The new mark is the largest cursor
    value among the rows read, taken in the same REPEATABLE READ snapshot as the copy; it is kept
    in the destination's state table (``cursor_value``, as PostgreSQL's text output of the
    column's type) and written only after the data load has committed, so a crash between the
    two re-reads a window, never skips one. A run that reads no row keeps the mark.

    Cursor columns: ``timestamptz``, ``timestamp``, ``date``, integers, ``numeric`` and floats
    (or domains over them). ``cursor_lookback`` (an interval like ``"5 minutes"``) is for the
    time types only. An index on the cursor column keeps each run's read small. A primary key is
    required (the table's, or ``primary_key=``).

    What this mode cannot see, by design — prefer CDC (``mode: cdc``) where these matter:

    * **Hard deletes.** A deleted row stays in the destination. (The DAG param
      ``full_refresh=true`` makes one run copy the whole table with *replace*, dropping them.)
    * **Rows committed late with an older cursor value**: a transaction that sets
      ``updated_at = now()`` at its start and commits after a run has already read a newer
      value. ``cursor_lookback`` re-reads that window; a row later than the lookback is missed.
    * **Updates that do not move the cursor** (the application forgot to bump ``updated_at``).
    * **Rows whose cursor is NULL** are copied by the first (full) run only; later runs never
      see them or their changes. Each run logs a warning with their count.
    """

    def __init__(
        self,
        source: SourceDatabase,
        table: ReplicatedTable,
        *,
        cursor_column: str,
        lookback: datetime.timedelta | None = None,
        lookback_text: str | None = None,
        chunk_bytes: int = 8 << 20,
    ) -> None:
        self.source = source
        self.table = table
        self.cursor_column = cursor_column
        self.lookback = lookback
        self.lookback_text = lookback_text  # as written in the registry, for messages
        self.chunk_bytes = chunk_bytes

    def _cursor(self, info: TableInfo) -> PgColumn:
        """The cursor column's description; a missing column or an unsupported type is a clear error."""
        found = [c for c in info.columns if c.name == self.cursor_column]
        if not found:
            raise NeedsAttentionError(
                f"cursor_column {self.cursor_column!r} does not exist in {info.qualified_name} (names are "
                f"case-sensitive); its columns are: {', '.join(info.column_names)}. Fix cursor_column in the registry."
            )
        col = found[0]
        kind = col.type.name
        if col.type.element is not None or kind not in TEMPORAL_CURSOR_TYPES | NUMERIC_CURSOR_TYPES:
            raise NeedsAttentionError(
                f"cursor_column {info.qualified_name}.{col.name} has type {kind}{'[]' if col.type.element else ''}; "
                "an incremental cursor must be timestamptz, timestamp, date, an integer or numeric column "
                "that grows when a row is written (e.g. updated_at timestamptz DEFAULT now())."
            )
        if self.lookback and kind not in TEMPORAL_CURSOR_TYPES:
            raise NeedsAttentionError(
                f"cursor_lookback {self.lookback_text!r} is a time interval, but cursor_column "
                f"{info.qualified_name}.{col.name} is {kind}; remove cursor_lookback (it only applies to "
                "timestamptz, timestamp and date cursors)."
            )
        return col

    def _lower_bound(self, col: PgColumn, mark: str) -> sql.Composable:
        """``mark::type`` (minus the lookback): the inclusive lower bound of the rows to read."""
        from psycopg import sql

        bound = sql.Literal(mark) + sql.SQL("::") + sql.Identifier(col.type.schema, col.type.name)
        if self.lookback:
            bound = sql.SQL("({} - {})").format(bound, sql.Literal(self.lookback))
        return bound

    def run(self, *, full_refresh_asked: bool = False) -> dict[str, Any]:
        """Copy the rows past the mark (the whole table the first time, or when asked) and merge them."""
        from psycopg import sql

        from airflow_pg_replication.destination.columns import destination_columns
        from airflow_pg_replication.source.catalog import one_value, require_key
        from airflow_pg_replication.source.pgoutput import format_lsn
        from airflow_pg_replication.source.snapshot_reads import (
            CopyProgress,
            begin_snapshot,
            copy_batches,
            snapshot_schema,
        )
        from airflow_pg_replication.sync.arrow_memory import use_jemalloc

        use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
        t, source = self.table, self.source
        started = time.monotonic()
        forced = full_refresh_asked
        with source.connect() as conn:
            info = t.read_info(source, conn)
        require_key(info, mode="incremental")
        col = self._cursor(info)
        hints = destination_columns(info.columns, soft_deletes=t.soft_deletes)
        if t.soft_deletes:
            log.warning(
                "%s: deletes: soft has no effect in incremental mode (deletes are not seen); %s stays empty",
                t.qualified_name,
                "_pg_deleted_at",
            )
        progress = CopyProgress(t.qualified_name)
        cursor_id = sql.Identifier(col.name)
        table_id = sql.SQL("{}.{}").format(sql.Identifier(info.schema), sql.Identifier(info.name))

        with t.open_destination() as dest, source.connect(autocommit=False) as copy_conn:
            state = dest.read_state()
            mark_before, why_full = _previous_mark(state, dest, forced)
            if why_full:
                log.info("%s: copying the whole table (%s) into %s", t.qualified_name, why_full, dest.describe())
            begin_snapshot(copy_conn, None)
            lsn = source.current_wal_lsn(copy_conn)  # the snapshot's first statement: it fixes the snapshot
            where = cursor_from = None
            if mark_before is not None:
                lower = self._lower_bound(col, mark_before)
                cursor_from = one_value(copy_conn, sql.SQL("SELECT ({})::text").format(lower))
                where = sql.SQL("{} >= {}").format(cursor_id, lower)
                log.info(
                    "%s: copying rows with %s >= %s (mark %s%s) into %s",
                    t.qualified_name,
                    col.name,
                    cursor_from,
                    mark_before,
                    f" - lookback {self.lookback_text}" if self.lookback else "",
                    dest.describe(),
                )
            # Same snapshot as the COPY below, so this is exactly the largest cursor value copied.
            max_sql = sql.SQL("SELECT max({})::text FROM {}").format(cursor_id, table_id)
            new_max = one_value(copy_conn, max_sql + (sql.SQL(" WHERE ") + where if where is not None else sql.SQL("")))
            nulls_sql = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(table_id, cursor_id)
            nulls = one_value(copy_conn, nulls_sql)
            batches = copy_batches(
                copy_conn, info, lsn=lsn, block_bytes=self.chunk_bytes, progress=progress, where=where
            )
            if forced:
                dest.replace(batches, hints, info.primary_key, schema=snapshot_schema(info))
            else:
                dest.merge(batches, hints, info.primary_key)
            copy_conn.rollback()
            mark_after = new_max if new_max is not None else mark_before
            # Only now, with the data committed: a crash before this line re-reads the window next run.
            dest.write_state(
                full_copy_state(t.qualified_name, TablePhase.LOADED, snapshot_lsn=lsn, cursor_value=mark_after)
            )

        if nulls:
            log.warning(
                "%s: %d row(s) have a NULL %s; %s. Give the column a value (e.g. DEFAULT now() NOT NULL) or use "
                "mode cdc / full_refresh for this table.",
                t.qualified_name,
                nulls,
                col.name,
                "they were copied by this full copy, but later runs will not see their changes"
                if where is None
                else "incremental runs do not copy them (only a full copy does)",
            )
        if progress.rows == 0:
            log.info(
                "%s: copied nothing: %s",
                t.qualified_name,
                "the source table is empty"
                if where is None
                else f"no row has {col.name} >= {cursor_from} (rows at the mark were deleted or moved back); "
                "the mark is kept",
            )
        elif where is not None and mark_after == mark_before:
            log.info(
                "%s: nothing newer than the mark %s; re-read %d row(s) at or behind it (ties%s are "
                "re-read and merged idempotently by design)",
                t.qualified_name,
                mark_before,
                progress.rows,
                " and the lookback window" if self.lookback else "",
            )
        secs = time.monotonic() - started
        log.info(
            "%s: incremental refresh done at LSN %s: mark %s -> %s; %s; total %.1f s",
            t.qualified_name,
            format_lsn(lsn),
            mark_before,
            mark_after,
            progress.summary(),
            secs,
        )
        return {
            "table": t.qualified_name,
            "rows": progress.rows,
            "lsn": format_lsn(lsn),
            "cursor_from": cursor_from,
            "cursor_to": mark_after,
            "full_copy": where is None,
            "mb": round(progress.bytes / 1e6, 3),
            "seconds": round(secs, 3),
            "destination_table": t.destination_table,
        }


def _previous_mark(
    state: ReplicationState | None, dest: TableDestination, forced: bool
) -> tuple[str | None, str | None]:
    """The mark to read from, or ``(None, why the whole table is copied)``."""
    if forced:
        return None, "full_refresh asked for by the run's params; replacing the destination table"
    if state is None:
        return None, "first run: no replication state"
    if state.status is not TablePhase.LOADED or state.cursor_value is None:
        return None, f"no high-water mark in the state (status {state.status})"
    if not dest.has_rows():
        return None, f"the destination table is missing or empty (mark was {state.cursor_value})"
    return state.cursor_value, None
