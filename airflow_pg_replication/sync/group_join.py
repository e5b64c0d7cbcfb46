"""A table joins its slot group exactly: a snapshot under a temporary slot, or (from a dedicated slot) a drain.

The group's slot serves every table of the group and is never dropped for one table. To add a
table, or to snapshot it again::

    state := snapshotting ─► group slot exists ─► the table joins the group's publication (commits at C)
      ─► a TEMPORARY slot with EXPORT_SNAPSHOT: consistent point X, snapshot S
      ─► binary COPY under S ─► destination.replace(rows, state := ready(snapshot X, applied X - 1))

Why that is exact. PostgreSQL reaches a new slot's consistent point X only once every transaction
running when the slot was asked for has ended, and the slot is asked for after C. So every
transaction that could have changed the table before it was in the publication (and so was
decoded without it) ended before X: it is in S. Every transaction that commits at or after X
started after C and is decoded with the table in the publication: the group's slot gives it to the
change log. S holds exactly the transactions that committed before X, so the table applies the
log's transactions with commit LSN >= X (applied LSN X - 1) and skips the ones before: nothing
lost, nothing twice (the ALTER PUBLICATION / in-flight transaction problem of logical replication,
closed by waiting for X).

A table that has a loaded copy on a dedicated slot (a deployment from before slot groups) moves
without a copy: it joins the publication (C), takes an X the same way (no snapshot needed), drains
its old slot up to X, drops it, and goes on from the log above X - 1. A crash midway leaves the old
slot or the old state, and the next run finishes the move or, with the old slot gone, snapshots.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.sync.table_copy import CopyOptions
from airflow_pg_replication.table_state import ReplicationState, TablePhase, full_copy_state

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable

log = logging.getLogger(__name__)

#: Snapshots of a source at once, each holding a temporary replication slot (slots are few: 10 by default).
MAX_PARALLEL_SNAPSHOTS = 2
#: How long a snapshot waits for its turn before the task's retry takes over.
SNAPSHOT_TURN_WAIT_SECONDS = 3600


def join_group(
    source: SourceDatabase,
    table: ReplicatedTable,
    *,
    full_refresh_asked: bool = False,
    chunk_bytes: int = 8 << 20,
    max_parallel_snapshots: int = MAX_PARALLEL_SNAPSHOTS,
    options: CopyOptions | None = None,
) -> dict[str, Any]:
    """Bring ``table`` into its slot group: move it from its old dedicated slot if it can, else snapshot it."""
    from airflow_pg_replication.source import publications
    from airflow_pg_replication.source.catalog import require_key

    t = table
    assert t.group is not None and t.change_log is not None, f"{t.qualified_name} is in no slot group"
    started = time.monotonic()
    with source.connect() as conn:
        source.check_wal_level(conn)
        info = t.read_info(source, conn)
        require_key(info, mode="cdc")
        _ensure_group_slot(source, conn, t)
        publications.add_table(conn, t.publication, t.schema, t.name)  # before X: see the module docstring
        with t.open_destination(read_only=True) as dest:
            state = dest.read_state()
        old_slot = state.slot if state is not None and state.applies_changes and state.slot != t.slot else None
        if old_slot and not full_refresh_asked:
            old = source.slot_info(conn, old_slot)
            if old is not None and not old.lost and old.in_this_database:
                return _move_from_dedicated_slot(source, conn, t, old_slot, started)
            log.info(
                "%s: its copy followed slot %s, which is %s: taking a snapshot to join slot group %s",
                t.qualified_name,
                old_slot,
                "gone" if old is None else "lost",
                t.group,
            )
        elif full_refresh_asked:
            log.info("%s: full refresh asked for: a new snapshot in slot group %s", t.qualified_name, t.group)
        from airflow_pg_replication.source import advisory_locks

        with advisory_locks.one_of(
            conn,
            "snapshots",
            max_parallel_snapshots,
            what="a turn to snapshot",
            wait_seconds=SNAPSHOT_TURN_WAIT_SECONDS,
        ):
            result = _snapshot_into_group(
                source, t, conn, info, options or CopyOptions(chunk_bytes=chunk_bytes), started
            )
        if old_slot:
            _drop_old_slot(source, conn, t, old_slot)
    return result


def _ensure_group_slot(source: SourceDatabase, conn: psycopg.Connection, t: ReplicatedTable) -> None:
    """The group's slot, created (no snapshot) if it is not there yet; a lost one fails with the fix."""
    from psycopg import sql

    from airflow_pg_replication.errors import SlotLostError

    slot = source.slot_info(conn, t.slot)
    if slot is None:
        lsn = source.create_slot(conn, t.slot)
        log.info("created slot %s of slot group %s at %s", t.slot, t.group, _lsn(lsn))
    elif slot.lost:
        raise SlotLostError(
            f"slot {t.slot} of slot group {t.group} was invalidated (wal_status=lost): the changes of every table of "
            f"the group since their last capture are gone. The group's capture task re-creates it with "
            "on_slot_lost: resync (then every table of the group takes a new snapshot); or drop it by hand: "
            + sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(t.slot)).as_string()
        )


def _snapshot_into_group(
    source: SourceDatabase,
    t: ReplicatedTable,
    conn: psycopg.Connection,
    info: Any,
    options: CopyOptions,
    started: float,
) -> dict[str, Any]:
    """Copy the table under a temporary slot's snapshot; state ready at X, applied X - 1.

    A big table is read in page ranges at once under a snapshot a keeper process holds (the
    temporary slot lives in it), and an interrupted copy goes on while the keeper lives.
    """
    from airflow_pg_replication.destination.columns import destination_columns
    from airflow_pg_replication.source.snapshot_reads import (
        CopyProgress,
        begin_snapshot,
        copy_batches,
        estimated_rows,
        prefetched,
        snapshot_schema,
    )
    from airflow_pg_replication.sync.arrow_memory import use_jemalloc
    from airflow_pg_replication.sync.table_copy import kept_ranged_copy, resumable_copy

    use_jemalloc()
    assert t.change_log is not None
    hints = destination_columns(info.columns, soft_deletes=t.soft_deletes)
    schema = snapshot_schema(info)
    progress = CopyProgress(t.qualified_name, expected_rows=estimated_rows(conn, t.schema, t.name))
    ranges = options.ranges(conn, t.schema, t.name)

    def ready(x: int) -> ReplicationState:
        return full_copy_state(t.qualified_name, TablePhase.READY, slot=t.slot, snapshot_lsn=x, applied_lsn=x - 1)

    def prepare(dest: TableDestination) -> None:  # first say the copy is not usable: a crash leads to a new one
        dest.prepare_replace(
            full_copy_state(t.qualified_name, TablePhase.SNAPSHOTTING, slot=t.slot),
            schema=schema,
            columns=hints,
            primary_key=info.primary_key,
        )

    with t.open_destination() as dest, source.connect(autocommit=False) as copy_conn:
        log.info(
            "%s: snapshot into %s, joining slot group %s (slot %s)%s",
            t.qualified_name,
            dest.describe(),
            t.group,
            t.slot,
            f", {len(ranges)} page ranges" if ranges else "",
        )
        if ranges is not None:
            x = kept_ranged_copy(
                source,
                dest,
                conn,
                info,
                ranges,
                slot=_temporary_slot_name(),
                temporary=True,
                before_slot=lambda: prepare(dest),
                state_at=ready,
                hints=hints,
                schema=schema,
                progress=progress,
                options=options,
                resume=resumable_copy(dest, conn, t.qualified_name),
            )
        else:
            prepare(dest)
            with source.create_slot_with_snapshot(_temporary_slot_name(), temporary=True) as created:
                x = created.consistent_lsn
                begin_snapshot(copy_conn, created.snapshot_name)
                rows = prefetched(
                    copy_batches(copy_conn, info, lsn=x, block_bytes=options.chunk_bytes, progress=progress)
                )
                dest.replace(rows, hints, info.primary_key, schema=schema, state=ready(x))
                copy_conn.rollback()
    # The log's transactions of this table before X are in the copy; a resync marker for them is done with.
    t.change_log.clear_resync(t.qualified_name, snapshot_lsn=x)
    dropped = t.change_log.delete_applied(t.qualified_name, x - 1)
    secs = time.monotonic() - started
    log.info(
        "%s: joined slot group %s at consistent point %s: %s; %d segment(s) before it dropped; total %.1f s",
        t.qualified_name,
        t.group,
        _lsn(x),
        progress.summary(),
        dropped,
        secs,
    )
    return {
        "table": t.qualified_name,
        "rows": progress.rows,
        "lsn": _lsn(x),
        "mb": round(progress.bytes / 1e6, 3),
        "seconds": round(secs, 3),
        "destination_table": t.destination_table,
        "slot_group": t.group,
        "joined": "snapshot",
    }


def _move_from_dedicated_slot(
    source: SourceDatabase, conn: psycopg.Connection, t: ReplicatedTable, old_slot: str, started: float
) -> dict[str, Any]:
    """Drain the old dedicated slot up to X, drop it, and go on from the group's log above X - 1 (no copy)."""
    from dataclasses import replace

    from airflow_pg_replication.sync.cdc_run import apply_changes

    x = source.consistent_point_now(_temporary_slot_name())
    log.info(
        "%s: moving from dedicated slot %s to slot group %s: draining the old slot up to %s",
        t.qualified_name,
        old_slot,
        t.group,
        _lsn(x),
    )
    old = replace(t, slot=old_slot, publication=old_slot, group=None, change_log=None)
    drained = apply_changes(source, old, upto_lsn=x, max_run_seconds=float("inf"))
    with t.open_destination() as dest:
        state = _checked_state(dest, t, old_slot)
        _drop_old_slot(source, conn, t, old_slot)  # before the state: a crash here leads to a snapshot, not a leak
        applied = max(state.applied_lsn or 0, x - 1)
        dest.write_state(state.moved_to(TablePhase.READY, slot=t.slot, applied_lsn=applied))
    assert t.change_log is not None
    t.change_log.delete_applied(t.qualified_name, applied)
    secs = time.monotonic() - started
    log.info(
        "%s: moved to slot group %s without a copy: %s change(s) drained from %s, now applying the group's "
        "log above %s; %.1f s",
        t.qualified_name,
        t.group,
        f"{drained['changes']:,}",
        old_slot,
        _lsn(applied),
        secs,
    )
    return {
        "table": t.qualified_name,
        "rows": 0,
        "lsn": _lsn(x),
        "seconds": round(secs, 3),
        "destination_table": t.destination_table,
        "slot_group": t.group,
        "joined": "moved",
        "drained_changes": drained["changes"],
    }


def _checked_state(dest: TableDestination, t: ReplicatedTable, old_slot: str) -> ReplicationState:
    from airflow_pg_replication.errors import TransientError

    state = dest.read_state()
    if state is None or not state.applies_changes or state.slot != old_slot:
        raise TransientError(
            f"{t.qualified_name}: its state changed while it moved from slot {old_slot} "
            f"({state.status if state else 'no state'}); the retry starts over"
        )
    return state


def _drop_old_slot(source: SourceDatabase, conn: psycopg.Connection, t: ReplicatedTable, old_slot: str) -> None:
    """Drop the table's old dedicated slot and its publication (of the same name, when the role may)."""
    if source.drop_slot(conn, old_slot):
        log.info("%s: dropped its old dedicated slot %s", t.qualified_name, old_slot)
    try:
        source.drop_publication(conn, old_slot)
    except Exception as exc:  # not its owner: the publication stays, harmless (no slot reads it)
        log.warning(
            "%s: could not drop the old publication %s (%s); its owner may: DROP PUBLICATION %s;",
            t.qualified_name,
            old_slot,
            exc,
            old_slot,
        )


def _temporary_slot_name() -> str:
    return f"pgrepl_tmp_{uuid.uuid4().hex[:16]}"


def _lsn(lsn: int) -> str:
    from airflow_pg_replication.source.pgoutput import format_lsn

    return format_lsn(lsn)
