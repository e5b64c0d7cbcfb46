"""One CDC run of a table: batch after batch from its slot, each committed then acknowledged, up to a fixed LSN.

The order that keeps a crash harmless, batch by batch::

    1. the batch's data      ─┐ one DuckDB transaction (data, then state, elsewhere)
    2. its state row (LSN)   ─┘
    3. the slot advances past it (acknowledged)

A crash before 3 reads the batch again, and the state's LSN makes the fold skip what was applied.
The run stops at the WAL position flushed at its start (it never chases a growing backlog), or at
the time budget, between batches.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.phase_timing import phase

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.source.catalog import SlotInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.cdc_batch import BatchOutcome, CdcBatch
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable

log = logging.getLogger(__name__)

#: Default time budget of one run, in seconds: two periods of the default ``*/5`` schedule. A run
#: drains a backlog of tens of millions of changes (~100k changes/s on a small machine), pays its
#: start and the sensor's wait once for all of it, and gives its worker slot back within ten minutes.
MAX_RUN_SECONDS = 600


def apply_changes(
    source: SourceDatabase,
    table: ReplicatedTable,
    *,
    max_batch_changes: int = 100_000,
    max_rows_in_memory: int = 200_000,
    max_lag_bytes: int | None = None,
    max_run_seconds: float = MAX_RUN_SECONDS,
    upto_lsn: int | None = None,
) -> dict[str, Any]:
    """Apply the table's changes up to the WAL position flushed at the run's start, batch after batch.

    From the table's own slot, or for a table of a slot group from the group's change log, after
    capturing from the group's slot first when the log is behind that position (so a table's run
    on its own always brings it up to date). ``upto_lsn``: stop at this position instead (a drain).
    Returns ``{table, changes, lsn, transactions, more, seconds, batches}``; ``more`` is true when
    the time budget stopped the run before that position.
    """
    from airflow_pg_replication.source.catalog import require_key
    from airflow_pg_replication.source.pgoutput import format_lsn, parse_lsn
    from airflow_pg_replication.sync.arrow_memory import use_jemalloc
    from airflow_pg_replication.sync.cdc_batch import CdcBatch

    use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
    t = table
    started = time.monotonic()
    with _ArrowConnection(source) as arrow_conn, source.connect() as conn:
        source.check_wal_level(conn)
        slot = _check_slot(t, source.slot_info(conn, t.slot), max_lag_bytes)
        info = t.read_info(source, conn)
        require_key(info, mode="cdc")
        batch = CdcBatch(source, t, info, max_batch_changes=max_batch_changes, max_rows_in_memory=max_rows_in_memory)
        # The run's target: WAL flushed after this waits for the next run. The flush position, not
        # the write position: a peek reads only flushed WAL, and the slot may advance to ``upto``.
        upto = upto_lsn if upto_lsn is not None else source.current_wal_flush_lsn(conn)
        start_lsn = slot.confirmed_flush_lsn
        confirmed = parse_lsn(start_lsn) if start_lsn else None
        if t.change_log is not None:
            _capture_up_to(source, t, upto, confirmed, max_batch_changes)
        try:
            outcomes, stop, confirmed = _batches(
                source, t, batch, conn, arrow_conn, upto, confirmed, started, max_run_seconds
            )
        except BaseException as exc:
            batch.close(exc)
            raise
        batch.close()  # a run from the log: its destination, kept open from batch to batch, closes
    secs = time.monotonic() - started
    changes = sum(o.changes for o in outcomes)
    transactions = sum(o.transactions for o in outcomes)
    upserts = sum(o.applied.upserts for o in outcomes if o.applied)
    deletes = sum(o.applied.deletes for o in outcomes if o.applied)
    lsn = format_lsn(confirmed) if confirmed else start_lsn
    log.info(
        "%s: %s. Applied %s change(s) in %s transaction(s) and %d batch(es), LSN %s -> %s: %s upserted "
        "row(s), %s deleted; %.1f s (%s changes/s)",
        t.qualified_name,
        stop,
        f"{changes:,}",
        f"{transactions:,}",
        len(outcomes),
        start_lsn,
        lsn,
        f"{upserts:,}",
        f"{deletes:,}",
        secs,
        f"{changes / secs if secs else 0.0:,.0f}",
    )
    return {
        "table": t.qualified_name,
        "changes": changes,
        "lsn": lsn,
        "transactions": transactions,
        "more": outcomes[-1].cut,
        "seconds": round(secs, 3),
        "batches": len(outcomes),
    }


def _capture_up_to(
    source: SourceDatabase, table: ReplicatedTable, upto: int, confirmed: int | None, max_batch_changes: int
) -> None:
    """A group's table: make the change log hold every change committed before ``upto`` (capture first if not)."""
    from airflow_pg_replication.sync.capture import SlotGroupTarget, capture_changes

    if confirmed is not None and confirmed >= upto:
        return  # the group's capture has been there already
    assert table.group is not None and table.change_log is not None
    log.info(
        "%s: the change log of slot group %s is behind the WAL position at the run's start: capturing first",
        table.qualified_name,
        table.group,
    )
    group = SlotGroupTarget(table.group, table.slot, table.publication, None, table.change_log)
    capture_changes(source, group, max_batch_changes=max_batch_changes, until_lsn=upto, max_run_seconds=float("inf"))


def _batches(
    source: SourceDatabase,
    t: ReplicatedTable,
    batch: CdcBatch,
    conn: psycopg.Connection,
    arrow_conn: _ArrowConnection,
    upto: int,
    confirmed: int | None,
    started: float,
    max_run_seconds: float,
) -> tuple[list[BatchOutcome], str, int | None]:
    """Batch after batch, each committed then acknowledged; returns the outcomes, why it stopped, the position."""
    from airflow_pg_replication.source.pgoutput import format_lsn

    outcomes: list[BatchOutcome] = []
    while True:
        with phase("cdc.batch"):
            outcome = batch.run(conn, arrow_conn.get(), upto, confirmed)
        outcomes.append(outcome)
        # Here the batch's data and its state row are committed (steps 1 and 2; a run from the log
        # keeps the destination open, the others closed it); only now is it acknowledged (step 3):
        # the slot advances past it, or the log's applied segments go.
        if t.change_log is not None:  # a group's table: its applied segments go
            moved = outcome.applied_lsn is not None
            if outcome.applied_lsn is not None:
                with phase("cdc.delete_applied"):
                    t.change_log.delete_applied(t.qualified_name, outcome.applied_lsn)
                confirmed = outcome.applied_lsn
        else:
            move_to = outcome.advance_to if (outcome.advance_to or 0) > (confirmed or 0) else None
            moved = move_to is not None
            if move_to is not None:
                with phase("cdc.advance_slot"):
                    source.advance_slot(conn, t.slot, move_to)
                confirmed = move_to
        _log_batch(t, len(outcomes), outcome)
        if not outcome.cut:
            stop = f"caught up to {format_lsn(upto)}, the WAL position at the run's start"
            break
        if not moved:  # cannot happen (a cut batch ends past the slot); never loop on the same batch
            stop = "the slot did not move past the batch's end; the next run reads on"
            log.warning("%s: %s", t.qualified_name, stop)
            break
        if time.monotonic() - started >= max_run_seconds:
            stop = (
                f"time budget reached (max_run_seconds={max_run_seconds:g}) with "
                f"{max(0, upto - (confirmed or 0)):,} bytes of WAL left before {format_lsn(upto)}, the WAL "
                "position at the run's start; the next run goes on from there"
            )
            break
    return outcomes, stop, confirmed


def _check_slot(table: ReplicatedTable, slot: SlotInfo | None, max_lag_bytes: int | None) -> SlotInfo:
    """The slot; a missing or invalidated one fails with the fix (as the sensor does); lag past the limit warns."""
    from airflow_pg_replication.source.slot_health import judge_slot

    judge_slot(slot, slot_name=table.slot, table=table.qualified_name, min_lag_bytes=0, max_lag_bytes=2**63 - 1)
    assert slot is not None  # judge_slot raised otherwise
    if not slot.in_this_database:
        raise NeedsAttentionError(
            f"replication slot {table.slot} belongs to database {slot.database}, not this one; "
            "set a distinct `slot` name for this table in the registry"
        )
    if max_lag_bytes and slot.lag_bytes and slot.lag_bytes > max_lag_bytes:
        log.warning(
            "%s: slot %s holds %s bytes of WAL, past max_lag_bytes=%s; catching up batch after batch",
            table.qualified_name,
            table.slot,
            f"{slot.lag_bytes:,}",
            f"{max_lag_bytes:,}",
        )
    return slot


def _log_batch(table: ReplicatedTable, number: int, outcome: BatchOutcome) -> None:
    """One line per batch: LSN range, changes, rows, MB read, rate."""
    from airflow_pg_replication.source.pgoutput import format_lsn

    if outcome.nothing:
        return
    applied = outcome.applied
    log.info(
        "%s: batch %d: LSN %s -> %s, %s change(s) in %s transaction(s)%s: %s upserted row(s), %s deleted%s; "
        "%.1f MB of pgoutput; %.2f s (%s changes/s)%s",
        table.qualified_name,
        number,
        format_lsn(outcome.from_lsn) if outcome.from_lsn else "the slot's start",
        format_lsn(end) if (end := outcome.advance_to or outcome.applied_lsn) is not None else "no commit",
        f"{outcome.changes:,}",
        f"{outcome.transactions:,}",
        f", {outcome.skipped} already applied skipped" if outcome.skipped else "",
        f"{applied.upserts if applied else 0:,}",
        f"{applied.deletes if applied else 0:,}",
        ", table truncated" if applied and applied.truncated else "",
        outcome.bytes_read / 1e6,
        outcome.seconds,
        f"{outcome.changes / outcome.seconds if outcome.seconds else 0.0:,.0f}",
        "; the batch limit was reached, more is waiting" if outcome.cut else "",
    )


class _ArrowConnection:
    """The ADBC connection for the change read, opened on a thread while the run's checks go on.

    Connecting costs a backend start and ADBC's type lookups (~40 ms), once per run; it
    overlaps with the slot and catalog lookups that come before the read.
    """

    def __init__(self, source: SourceDatabase) -> None:
        self._params = source.arrow_connection_params()  # on this thread: an Airflow connection lookup
        self._pool: Any = None
        self._future: Any = None

    def __enter__(self) -> _ArrowConnection:
        from concurrent.futures import ThreadPoolExecutor

        from airflow_pg_replication.source.binary_copy import adbc_connect

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pg_replication_connect")
        self._future = self._pool.submit(adbc_connect, self._params, autocommit=True)
        return self

    def get(self) -> Any:
        return self._future.result()

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        if self._future.done() and self._future.exception() is None:
            self._future.result().close()
