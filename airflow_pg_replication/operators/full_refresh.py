"""PgFullRefreshOperator: snapshot one table into the destination; for CDC tables at the slot's consistent point."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from airflow_pg_replication.operators.base import PgTableOperator, table_task

log = logging.getLogger(__name__)


class PgFullRefreshOperator(PgTableOperator):
    """Copy a whole table, replacing its destination copy.

    ``mode="cdc"`` (the default): drop and re-create the table's slot with an exported snapshot,
    copy the table under that snapshot and record the slot's consistent LSN with the data, so
    :class:`PgCdcApplyOperator` goes on exactly where the copy ends. ``mode="full_refresh"``:
    copy without a slot. Memory is bounded by ``chunk_bytes``, not by the table's size.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "mode")

    def __init__(self, *, mode: str = "cdc", chunk_bytes: int = 8 << 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("cdc", "full_refresh"):
            raise ValueError(f"PgFullRefreshOperator mode must be 'cdc' or 'full_refresh', not {mode!r} "
                             "(incremental tables use PgIncrementalOperator)")
        self.mode = mode
        self.chunk_bytes = chunk_bytes

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.arrow_memory import use_jemalloc
        from airflow_pg_replication.destination.columns import destination_columns
        from airflow_pg_replication.destination.state_table import ReplicationState
        from airflow_pg_replication.source.pgoutput import format_lsn
        from airflow_pg_replication.source.snapshot_reads import (
            CopyProgress,
            begin_snapshot,
            copy_batches,
            prefetched,
            snapshot_schema,
        )
        from airflow_pg_replication.source.catalog import require_key

        use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
        t = self.target
        hook = self.source_hook()
        started = time.monotonic()
        with hook.connect() as conn:
            info = hook.table_info(conn, t.schema, t.name, columns=self.columns, primary_key=self.primary_key)
            if self.mode == "cdc":
                hook.check_wal_level(conn)
                require_key(info, mode="cdc")
            hints = destination_columns(info.columns, soft_deletes=self.deletes == "soft")
            progress = CopyProgress(t.qualified_name)
            with self.table_destination() as dest, hook.connect(autocommit=False) as copy_conn:
                log.info("%s: full refresh (%s) into %s", t.qualified_name, self.mode, dest.describe())
                if self.mode == "cdc":
                    # First say the copy is not usable, so a crash anywhere below leads to a new snapshot.
                    dest.prepare_replace(ReplicationState(t.qualified_name, "snapshotting", slot=t.slot),
                                         schema=snapshot_schema(info), columns=hints, primary_key=info.primary_key)
                    hook.ensure_publication(conn, t.publication, t.schema, t.name)
                    hook.drop_slot(conn, t.slot)
                    with hook.create_slot_with_snapshot(t.slot) as created:
                        lsn = created.consistent_lsn
                        begin_snapshot(copy_conn, created.snapshot_name)
                        state = ReplicationState(t.qualified_name, "ready", slot=t.slot, snapshot_lsn=lsn)
                        dest.replace(prefetched(copy_batches(copy_conn, info, lsn=lsn, block_bytes=self.chunk_bytes,
                                                             progress=progress)), hints, info.primary_key,
                                     schema=snapshot_schema(info), state=state)
                        copy_conn.rollback()
                else:
                    begin_snapshot(copy_conn, None)
                    lsn = hook.current_wal_lsn(copy_conn)
                    state = ReplicationState(t.qualified_name, "loaded", snapshot_lsn=lsn)
                    dest.replace(prefetched(copy_batches(copy_conn, info, lsn=lsn, block_bytes=self.chunk_bytes,
                                                         progress=progress)), hints, info.primary_key,
                                 schema=snapshot_schema(info), state=state)
                    copy_conn.rollback()
        secs = time.monotonic() - started
        log.info("%s: full refresh done at LSN %s: %s; total %.1f s", t.qualified_name, format_lsn(lsn),
                 progress.summary(), secs)
        return {"table": t.qualified_name, "rows": progress.rows, "lsn": format_lsn(lsn),
                "mb": round(progress.bytes / 1e6, 3), "seconds": round(secs, 3),
                "destination_table": t.destination_table}
