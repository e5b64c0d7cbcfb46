"""Snapshot a table into its destination; for CDC, exactly at its slot's consistent point (the cutover).

The data flow of a CDC snapshot::

    state := snapshotting  ──►  publication  ──►  drop + CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT
                                                        │ consistent point X, snapshot S
    binary COPY under S (ADBC, prefetched)  ──►  destination.replace(rows, state := ready(X))

The copy holds exactly the transactions committed before X; the slot decodes exactly those
committed at or after X. So CDC goes on where the copy ends: nothing lost, nothing twice. The
state says ``snapshotting`` first, so a crash anywhere leads to a new snapshot, never to CDC on
a partial copy.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.phase_timing import phase

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg
    import pyarrow as pa

    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable

log = logging.getLogger(__name__)


def snapshot_table(
    source: SourceDatabase, table: ReplicatedTable, *, with_slot: bool, chunk_bytes: int = 8 << 20
) -> dict[str, Any]:
    """Copy the whole table, replacing its destination copy; returns ``{table, rows, lsn, mb, seconds, ...}``.

    ``with_slot`` (CDC): drop and re-create the table's slot with an exported snapshot, copy under
    it, and record the consistent point with the data. Without: copy under a fresh snapshot, no
    slot. Memory is bounded by ``chunk_bytes``, not by the table's size.
    """
    from airflow_pg_replication.destination.columns import destination_columns
    from airflow_pg_replication.source.catalog import require_key
    from airflow_pg_replication.source.pgoutput import format_lsn
    from airflow_pg_replication.source.snapshot_reads import (
        CopyProgress,
        begin_snapshot,
        copy_batches,
        estimated_rows,
        prefetched,
        snapshot_schema,
    )
    from airflow_pg_replication.sync.arrow_memory import use_jemalloc
    from airflow_pg_replication.table_state import TablePhase, full_copy_state

    use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
    t = table
    started = time.monotonic()
    with source.connect() as conn:
        info = t.read_info(source, conn)
        if with_slot:
            source.check_wal_level(conn)
            require_key(info, mode="cdc")
        hints = destination_columns(info.columns, soft_deletes=t.soft_deletes)
        schema = snapshot_schema(info)
        progress = CopyProgress(t.qualified_name, expected_rows=estimated_rows(conn, t.schema, t.name))

        def rows(copy_conn: psycopg.Connection, lsn: int) -> Iterator[pa.RecordBatch]:
            return prefetched(copy_batches(copy_conn, info, lsn=lsn, block_bytes=chunk_bytes, progress=progress))

        with t.open_destination() as dest, source.connect(autocommit=False) as copy_conn:
            log.info(
                "%s: full refresh (%s) into %s",
                t.qualified_name,
                "cdc" if with_slot else "full_refresh",
                dest.describe(),
            )
            if with_slot:
                # First say the copy is not usable, so a crash anywhere below leads to a new snapshot.
                with phase("snapshot.prepare"):  # a first snapshot's dlt run creates the tables here
                    dest.prepare_replace(
                        full_copy_state(t.qualified_name, TablePhase.SNAPSHOTTING, slot=t.slot),
                        schema=schema,
                        columns=hints,
                        primary_key=info.primary_key,
                    )
                source.ensure_publication(conn, t.publication, t.schema, t.name)
                source.drop_slot(conn, t.slot)
                with source.create_slot_with_snapshot(t.slot) as created:
                    lsn = created.consistent_lsn
                    begin_snapshot(copy_conn, created.snapshot_name)
                    state = full_copy_state(t.qualified_name, TablePhase.READY, slot=t.slot, snapshot_lsn=lsn)
                    with phase("snapshot.load"):
                        dest.replace(rows(copy_conn, lsn), hints, info.primary_key, schema=schema, state=state)
                    copy_conn.rollback()
            else:
                begin_snapshot(copy_conn, None)
                lsn = source.current_wal_lsn(copy_conn)
                state = full_copy_state(t.qualified_name, TablePhase.LOADED, snapshot_lsn=lsn)
                with phase("snapshot.load"):
                    dest.replace(rows(copy_conn, lsn), hints, info.primary_key, schema=schema, state=state)
                copy_conn.rollback()
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
