"""Snapshot a table into its destination; for CDC, exactly at its slot's consistent point (the cutover).

The data flow of a CDC snapshot::

    state := snapshotting  ──►  publication  ──►  drop + CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT
                                                        │ consistent point X, snapshot S
    binary COPY under S (ADBC, prefetched)  ──►  destination.replace(rows, state := ready(X))

A big table is read in page ranges at once, under a snapshot a keeper process holds, and resumes
after a crash (:mod:`.table_copy`).

The copy holds exactly the transactions committed before X; the slot decodes exactly those
committed at or after X. So CDC goes on where the copy ends: nothing lost, nothing twice. The
state says ``snapshotting`` first, so a crash anywhere leads to a new snapshot, never to CDC on
a partial copy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.phase_timing import phase
from airflow_pg_replication.sync.table_copy import CopyOptions, kept_ranged_copy, ranged_load, resumable_copy

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg
    import pyarrow as pa

    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.source.snapshot_ranges import PageRange
    from airflow_pg_replication.source.snapshot_reads import CopyProgress
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable
    from airflow_pg_replication.table_state import ReplicationState

log = logging.getLogger(__name__)


def snapshot_table(
    source: SourceDatabase,
    table: ReplicatedTable,
    *,
    with_slot: bool,
    chunk_bytes: int = 8 << 20,
    options: CopyOptions | None = None,
) -> dict[str, Any]:
    """Copy the whole table, replacing its destination copy; returns ``{table, rows, lsn, mb, seconds, ...}``.

    ``with_slot`` (CDC): drop and re-create the table's slot with an exported snapshot, copy under
    it, and record the consistent point with the data. Without: copy under a fresh snapshot, no
    slot. Memory is bounded by ``chunk_bytes``, not by the table's size. A big table is read in page
    ranges at once and, for CDC, resumes an interrupted copy (see :mod:`.table_copy`).
    """
    from airflow_pg_replication.destination.columns import destination_columns
    from airflow_pg_replication.source.catalog import require_key
    from airflow_pg_replication.source.pgoutput import format_lsn
    from airflow_pg_replication.source.snapshot_reads import CopyProgress, estimated_rows, snapshot_schema
    from airflow_pg_replication.sync.arrow_memory import use_jemalloc

    options = options or CopyOptions(chunk_bytes=chunk_bytes)
    use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
    t = table
    started = time.monotonic()
    with source.connect() as conn:
        with phase("snapshot.catalog"):
            info = t.read_info(source, conn)
            if with_slot:
                source.check_wal_level(conn)
                require_key(info, mode="cdc")
        copy = _Copy(
            source,
            t,
            conn,
            info,
            hints=destination_columns(info.columns, soft_deletes=t.soft_deletes),
            schema=snapshot_schema(info),
            progress=CopyProgress(t.qualified_name, expected_rows=estimated_rows(conn, t.schema, t.name)),
            options=options,
        )
        ranges = options.ranges(conn, t.schema, t.name)
        with t.open_destination() as dest, source.connect(autocommit=False) as copy_conn:
            log.info(
                "%s: full refresh (%s) into %s%s",
                t.qualified_name,
                "cdc" if with_slot else "full_refresh",
                dest.describe(),
                f", {len(ranges)} page ranges" if ranges else "",
            )
            if with_slot and ranges is not None:
                lsn = copy.ranged_with_slot(dest, ranges)
            elif with_slot:
                lsn = copy.one_stream_with_slot(dest, copy_conn)
            else:
                lsn = copy.without_slot(dest, copy_conn, ranges)
    progress = copy.progress
    secs = time.monotonic() - started
    log.info(
        "%s: full refresh done at LSN %s: %s; total %.1f s", t.qualified_name, format_lsn(lsn), progress.summary(), secs
    )
    return {
        "table": t.qualified_name,
        "rows": progress.rows,
        "lsn": format_lsn(lsn),
        "mb": round(progress.bytes / 1e6, 3),
        "seconds": round(secs, 3),
        "destination_table": t.destination_table,
    }


@dataclass
class _Copy:
    """One snapshot's copy of a table: what every way of copying it needs."""

    source: SourceDatabase
    t: ReplicatedTable
    conn: psycopg.Connection
    info: TableInfo
    hints: list[dict]
    schema: pa.Schema
    progress: CopyProgress
    options: CopyOptions

    def rows(self, copy_conn: psycopg.Connection, lsn: int) -> Iterator[pa.RecordBatch]:
        from airflow_pg_replication.source.snapshot_reads import copy_batches, prefetched

        return prefetched(
            copy_batches(copy_conn, self.info, lsn=lsn, block_bytes=self.options.chunk_bytes, progress=self.progress)
        )

    def prepare(self, dest: TableDestination) -> None:
        """Say the copy is not usable first, so a crash anywhere after leads to a new snapshot."""
        from airflow_pg_replication.table_state import TablePhase, full_copy_state

        with phase("snapshot.prepare"):  # a first snapshot's dlt run creates the tables here
            dest.prepare_replace(
                full_copy_state(self.t.qualified_name, TablePhase.SNAPSHOTTING, slot=self.t.slot),
                schema=self.schema,
                columns=self.hints,
                primary_key=self.info.primary_key,
            )

    def ready(self, lsn: int) -> ReplicationState:
        from airflow_pg_replication.table_state import TablePhase, full_copy_state

        return full_copy_state(self.t.qualified_name, TablePhase.READY, slot=self.t.slot, snapshot_lsn=lsn)

    def one_stream_with_slot(self, dest: TableDestination, copy_conn: psycopg.Connection) -> int:
        from airflow_pg_replication.source.snapshot_reads import begin_snapshot

        t = self.t
        self.prepare(dest)
        self.source.ensure_publication(self.conn, t.publication, t.schema, t.name)
        self.source.drop_slot(self.conn, t.slot)
        with self.source.create_slot_with_snapshot(t.slot) as created:
            lsn = created.consistent_lsn
            begin_snapshot(copy_conn, created.snapshot_name)
            with phase("snapshot.load"):
                self.replace(dest, self.rows(copy_conn, lsn), self.ready(lsn))
            copy_conn.rollback()
        return lsn

    def ranged_with_slot(self, dest: TableDestination, ranges: list[PageRange]) -> int:
        """Page ranges at once under a snapshot a keeper process holds; an interrupted copy goes on."""
        from airflow_pg_replication.source import snapshot_keeper as keeper

        t = self.t
        with phase("snapshot.resume_check"):
            resume = resumable_copy(dest, self.conn, t.qualified_name)
        if resume is not None and self.source.slot_info(self.conn, t.slot) is None:
            log.warning("%s: slot %s of the interrupted copy is gone; starting over", t.qualified_name, t.slot)
            keeper.release(self.conn, resume.snapshot)
            resume = None

        def before_slot() -> None:
            self.prepare(dest)
            with phase("snapshot.publication"):
                self.source.ensure_publication(self.conn, t.publication, t.schema, t.name)
                self.source.drop_slot(self.conn, t.slot)

        return kept_ranged_copy(
            self.source,
            dest,
            self.conn,
            self.info,
            ranges,
            slot=t.slot,
            temporary=False,
            before_slot=before_slot,
            state_at=self.ready,
            hints=self.hints,
            schema=self.schema,
            progress=self.progress,
            options=self.options,
            resume=resume,
        )

    def replace(self, dest: TableDestination, rows: Iterator[pa.RecordBatch], state: ReplicationState) -> None:
        dest.replace(rows, self.hints, self.info.primary_key, schema=self.schema, state=state)

    def without_slot(
        self, dest: TableDestination, copy_conn: psycopg.Connection, ranges: list[PageRange] | None
    ) -> int:
        from airflow_pg_replication.source.catalog import one_value
        from airflow_pg_replication.source.snapshot_reads import begin_snapshot
        from airflow_pg_replication.table_state import TablePhase, full_copy_state

        begin_snapshot(copy_conn, None)
        lsn = self.source.current_wal_lsn(copy_conn)
        state = full_copy_state(self.t.qualified_name, TablePhase.LOADED, snapshot_lsn=lsn)
        if ranges is None:
            with phase("snapshot.load"):
                self.replace(dest, self.rows(copy_conn, lsn), state)
        else:  # ranges at once under this transaction's snapshot; not resumable: it ends with the task
            ranged_load(
                dest,
                copy_conn,
                self.info,
                ranges,
                snapshot=str(one_value(copy_conn, "SELECT pg_export_snapshot()")),
                lsn=lsn,
                state=state,
                hints=self.hints,
                schema=self.schema,
                progress=self.progress,
                options=self.options,
                resumable=False,
            )
        copy_conn.rollback()
        return lsn
