"""The copy of a snapshot: one stream for a small table; for a big one, page ranges on several connections,
resumable under the same snapshot.

The data flow of a big table (see :mod:`..source.ranged_copy` and :mod:`..source.snapshot_keeper`)::

    keeper process: slot + exported snapshot S (consistent point X)
      ──► ranges read at once under S ──► the destination's one writer, which commits every
          ~quarter-million rows together with each range's position (rows committed, done)
      ──► last commit: the copy becomes the table's content, state := ready(X), positions deleted
    task killed ──► the retry finds the positions; S still importable (the keeper held it) ──► goes on
                    from there; S gone ──► says so and starts over with a new slot and snapshot

Only a destination that commits positions with its rows (DuckDB) resumes; the others read ranges at
once all the same and start over after a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.destination.snapshot_progress import StoredProgress
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.source.snapshot_ranges import PageRange
    from airflow_pg_replication.source.snapshot_reads import CopyProgress
    from airflow_pg_replication.table_state import ReplicationState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyOptions:
    """How a snapshot is read: batch size, parallel ranges (None: the machine's default), resume."""

    chunk_bytes: int = 8 << 20
    parallelism: int | None = None
    range_pages: int | None = None  # None: snapshot_ranges.RANGE_PAGES
    min_ranged_pages: int | None = None  # None: snapshot_ranges.MIN_RANGED_PAGES
    hold_seconds: float | None = None  # None: snapshot_keeper.HOLD_SECONDS

    def ranges(self, conn: psycopg.Connection, schema: str, table: str) -> list[PageRange] | None:
        from airflow_pg_replication.source import snapshot_ranges as sr

        return sr.ranges_for(
            conn,
            schema,
            table,
            min_ranged_pages=sr.MIN_RANGED_PAGES if self.min_ranged_pages is None else self.min_ranged_pages,
            range_pages=self.range_pages or sr.RANGE_PAGES,
        )

    def hold(self) -> dict[str, float]:
        """``hold_seconds`` for :func:`.snapshot_keeper.hold_snapshot` when set."""
        return {} if self.hold_seconds is None else {"hold_seconds": self.hold_seconds}

    def readers(self) -> int:
        from airflow_pg_replication.source.snapshot_ranges import default_parallelism

        return self.parallelism or default_parallelism()


def resumable_copy(dest: TableDestination, conn: psycopg.Connection, table_name: str) -> StoredProgress | None:
    """The interrupted copy to go on with, or None; says why when one was found but cannot be resumed."""
    from airflow_pg_replication.source.snapshot_keeper import snapshot_alive

    if not dest.resumable_snapshots:
        return None
    stored = dest.read_snapshot_progress()
    if stored is None:
        return None
    done = sum(1 for _rows, finished in stored.ranges.values() if finished)
    if snapshot_alive(conn, stored.snapshot):
        log.info(
            "%s: resuming the interrupted copy under snapshot %s (consistent point %s): %d of %d ranges done, "
            "%s rows committed",
            table_name,
            stored.snapshot,
            _lsn(stored.snapshot_lsn),
            done,
            len(stored.ranges),
            f"{stored.rows:,}",
        )
        return stored
    log.warning(
        "%s: an interrupted copy had committed %s rows (%d of %d ranges) under snapshot %s, but that snapshot is "
        "gone (its keeper ended: no retry came within its hold time, or the source restarted); starting over "
        "with a new snapshot",
        table_name,
        f"{stored.rows:,}",
        done,
        len(stored.ranges),
        stored.snapshot,
    )
    return None


def stored_ranges(stored: StoredProgress) -> list[PageRange]:
    """The ranges of an interrupted copy, exactly as it cut them."""
    from airflow_pg_replication.source.snapshot_ranges import PageRange

    return [PageRange(i, first, end) for i, (first, end) in sorted(stored.pages.items())]


def kept_ranged_copy(
    source: SourceDatabase,
    dest: TableDestination,
    conn: psycopg.Connection,
    info: TableInfo,
    ranges: list[PageRange],
    *,
    slot: str,
    temporary: bool,
    before_slot: Callable[[], object],
    state_at: Callable[[int], ReplicationState],
    hints: list[dict],
    schema: pa.Schema,
    progress: CopyProgress,
    options: CopyOptions,
    resume: StoredProgress | None,
) -> int:
    """Copy ``ranges`` under a snapshot a keeper process holds; returns its consistent point.

    ``resume`` (see :func:`resumable_copy`): go on under its snapshot. Else ``before_slot()`` (the
    state saying the copy is not usable, the publication) runs while the keeper starts, which then
    creates ``slot`` with an exported snapshot. The keeper is released once the copy is in: a
    failed copy leaves it holding the snapshot for the retry.
    """
    from airflow_pg_replication.phase_timing import phase
    from airflow_pg_replication.source import snapshot_keeper as keeper

    if resume is None:
        spawned = keeper.start_keeper()  # its start-up overlaps with the preparation
        try:
            before_slot()
        except BaseException:
            keeper.dismiss(spawned)
            raise
        with phase("snapshot.slot"):
            held = keeper.hold_snapshot(source, slot, temporary=temporary, keeper=spawned, **options.hold())
        snapshot, lsn = held.snapshot_name, held.consistent_lsn
    else:
        snapshot, lsn, ranges = resume.snapshot, resume.snapshot_lsn, stored_ranges(resume)
    keeper.use_snapshot(conn, snapshot)
    ranged_load(
        dest,
        conn,
        info,
        ranges,
        snapshot=snapshot,
        lsn=lsn,
        state=state_at(lsn),
        hints=hints,
        schema=schema,
        progress=progress,
        options=options,
        resume=resume,
    )
    with phase("snapshot.release"):
        keeper.release(conn, snapshot)
    return lsn


def ranged_load(
    dest: TableDestination,
    conn: psycopg.Connection,
    info: TableInfo,
    ranges: list[PageRange],
    *,
    snapshot: str,
    lsn: int,
    state: ReplicationState | None,
    hints: list[dict],
    schema: pa.Schema,
    progress: CopyProgress,
    options: CopyOptions,
    resume: StoredProgress | None = None,
    resumable: bool = True,
) -> None:
    """Copy ``ranges`` under ``snapshot`` into ``dest`` (replacing its content).

    ``resumable``: the destination records each range's position with its rows when it can (the
    snapshot is held by a keeper, so a retry may import it again).
    """
    from airflow_pg_replication.destination.snapshot_progress import SnapshotProgress
    from airflow_pg_replication.phase_timing import phase
    from airflow_pg_replication.source.ranged_copy import RangeLedger, ranged_batches

    ledger = RangeLedger(ranges)
    committed = dict(resume.ranges) if resume is not None else {}
    if resume is not None:
        progress.rows = resume.rows  # the share and ETA count what is already there
    batches: Iterator[pa.RecordBatch] = ranged_batches(
        conn,
        snapshot,
        info,
        ranges,
        lsn=lsn,
        parallelism=options.readers(),
        ledger=ledger,
        progress=progress,
        committed=committed,
        block_bytes=options.chunk_bytes,
    )
    kwargs: dict[str, Any] = {}
    if resumable and dest.resumable_snapshots:

        def positions() -> list[tuple[int, int, int | None, int, bool]]:
            now = [(r.index, r.first_page, r.end_page, rows, done) for r, rows, done in ledger.positions()]
            log.info(
                "%s: committed %s rows; ranges done %d of %d",
                info.qualified_name,
                f"{sum(p[3] for p in now):,}",
                sum(1 for p in now if p[4]),
                len(now),
            )
            return now

        kwargs["progress"] = SnapshotProgress(
            info.qualified_name,
            snapshot,
            lsn,
            positions,
            resume_target=resume.target if resume is not None else None,
        )
    with phase("snapshot.load"):
        dest.replace(batches, hints, info.primary_key, schema=schema, state=state, **kwargs)


def _lsn(lsn: int) -> str:
    from airflow_pg_replication.source.pgoutput import format_lsn

    return format_lsn(lsn)
