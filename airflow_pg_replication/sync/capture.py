"""Capture: drain a slot group's slot into its change log, batch by batch, durable before the slot advances.

The data flow of a batch::

    peek the group slot (whole transactions, ≤ max_batch_changes messages, ADBC: Arrow chunks)
      ─► split by table (numpy over the batch: no Python per message)
      ─► one segment per table into the change log, durable (fsync + rename, or one PUT)
      ─► only then: the slot advances past the batch

The capture is the only reader of the group's slot; one runs at a time per group (an advisory lock
on the source, so workers on other machines wait too). A crash after the log write and before the
advance captures the same transactions again; the log keeps each once when read. A table that
falls further behind than ``max_log_bytes`` has its segments dropped and a resync marker left,
so the log cannot grow without bound; that table takes a new snapshot. Tables that left the
registry leave the group's publication and the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_pg_replication.errors import NeedsAttentionError, SlotLostError, TransientError
from airflow_pg_replication.phase_timing import phase

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.changelog.store import ChangeLog
    from airflow_pg_replication.source.database import SourceDatabase

log = logging.getLogger(__name__)

#: Default time budget of one capture run, in seconds (a batch in progress is finished).
MAX_RUN_SECONDS = 300
#: Default limit on one table's pending segments (10 GiB): past it the table is put to resync.
MAX_LOG_BYTES = 10 * 1024**3
#: How long a capture waits for another capture of the same group before its task retries.
CAPTURE_TURN_WAIT_SECONDS = 1800
#: How long a capture waits for a slot that another backend holds for a moment (a sensor's peek).
BUSY_SLOT_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class SlotGroupTarget:
    """One slot group as the capture sees it: its slot and publication, its registry tables, its log."""

    name: str
    slot: str
    publication: str
    tables: tuple[str, ...] | None  # schema.table of every registry table of the group (None: not known here)
    change_log: ChangeLog = field(compare=False)
    on_slot_lost: str = "fail"  # fail | resync (re-create the slot; every table takes a new snapshot)


@dataclass
class CaptureResult:
    """What a capture run did, for the log, XCom and Asset events."""

    group: str
    changes: int = 0
    transactions: int = 0
    batches: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # table -> row changes captured
    lsn: str | None = None  # where the slot stands now
    more: bool = False
    resynced: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "changes": self.changes,
            "transactions": self.transactions,
            "batches": self.batches,
            "tables": dict(self.tables),
            "lsn": self.lsn,
            "more": self.more,
            "resynced": list(self.resynced),
            "seconds": round(self.seconds, 3),
        }


def capture_changes(
    source: SourceDatabase,
    group: SlotGroupTarget,
    *,
    max_batch_changes: int = 100_000,
    max_run_seconds: float = MAX_RUN_SECONDS,
    max_log_bytes: int = MAX_LOG_BYTES,
    until_lsn: int | None = None,
) -> CaptureResult:
    """Drain the group's slot up to the WAL position flushed at the start (or ``until_lsn``) into its log.

    Waits for a capture of the same group that is running (on any worker). With ``until_lsn``,
    returns at once when the slot already stands at or past it (another capture did the work).
    """
    from airflow_pg_replication.source import advisory_locks

    started = time.monotonic()
    result = CaptureResult(group.name)
    with (
        source.connect() as conn,
        advisory_locks.advisory_lock(
            conn,
            f"capture {group.slot}",
            what=f"the running capture of slot group {group.name}",
            wait_seconds=CAPTURE_TURN_WAIT_SECONDS,
        ),
    ):
        slot = _checked_slot(source, conn, group)
        if until_lsn is not None and slot is not None and _confirmed(slot) >= until_lsn:
            result.lsn = slot.confirmed_flush_lsn
            return result  # captured meanwhile by someone else
        if group.tables is not None:
            _leave_publication(conn, group)
        _capture_batches(source, conn, group, result, max_batch_changes, max_run_seconds, started)
        result.resynced = _bound_the_log(group, max_log_bytes)
    result.seconds = time.monotonic() - started
    log.info(
        "slot group %s: captured %s change(s) of %d table(s) in %s transaction(s) and %d batch(es), slot at %s; "
        "%.1f s%s",
        group.name,
        f"{result.changes:,}",
        len(result.tables),
        f"{result.transactions:,}",
        result.batches,
        result.lsn,
        result.seconds,
        "; more is waiting (time budget)" if result.more else "",
    )
    return result


def _capture_batches(
    source: SourceDatabase,
    conn: psycopg.Connection,
    group: SlotGroupTarget,
    result: CaptureResult,
    max_batch_changes: int,
    max_run_seconds: float,
    started: float,
) -> None:
    """Peek, split, write, advance — batch after batch up to the WAL flushed now."""
    from airflow_pg_replication.changes.stream_split import split_by_table
    from airflow_pg_replication.source.binary_copy import adbc_connect
    from airflow_pg_replication.source.pgoutput import format_lsn, parse_lsn

    slot = source.slot_info(conn, group.slot)
    confirmed = parse_lsn(slot.confirmed_flush_lsn) if slot and slot.confirmed_flush_lsn else 0
    upto = source.current_wal_flush_lsn(conn)
    wanted = set(group.tables) if group.tables is not None else None
    arrow_conn = adbc_connect(source.arrow_connection_params(), autocommit=True)
    try:
        while True:
            batch_started = time.monotonic()
            with phase("capture.read_slot"):
                chunks = _while_the_slot_is_busy(
                    group,
                    "read",
                    lambda: list(
                        source.peek_change_chunks(
                            conn,
                            group.slot,
                            group.publication,
                            upto_lsn=upto,
                            max_changes=max_batch_changes,
                            arrow_conn=arrow_conn,
                        )
                    ),
                )
            messages = pa.chunked_array(chunks, pa.binary()) if chunks else pa.chunked_array([], pa.binary())
            cut = len(messages) >= max_batch_changes
            with phase("capture.split"):
                split = split_by_table(messages)
            written = 0
            for (namespace, name), stream in split.tables.items():
                table = f"{namespace}.{name}"
                if wanted is not None and table not in wanted:
                    continue  # left the registry: its changes are dropped (and it leaves the publication)
                with phase("capture.write_log"):
                    group.change_log.write_segment(
                        table,
                        stream.commit_lsn,
                        stream.messages,
                        last_end_lsn=stream.last_end_lsn,
                        changes=stream.changes,
                    )
                result.tables[table] = result.tables.get(table, 0) + stream.changes
                result.changes += stream.changes
                written += 1
            # Every segment of the batch is durable: only now may the slot move past it.
            advance_to = split.last_end_lsn if cut else max(upto, split.last_end_lsn or 0)
            if advance_to and advance_to > confirmed:
                with phase("capture.advance_slot"):
                    _while_the_slot_is_busy(
                        group, "advance", lambda to=advance_to: source.advance_slot(conn, group.slot, to)
                    )
                confirmed = advance_to
            result.transactions += split.transactions
            result.batches += 1
            log.info(
                "slot group %s: batch %d: %s message(s), %.1f MB, %d transaction(s), %d table(s) written, slot "
                "-> %s; %.2f s",
                group.name,
                result.batches,
                f"{split.message_count:,}",
                split.byte_count / 1e6,
                split.transactions,
                written,
                format_lsn(confirmed),
                time.monotonic() - batch_started,
            )
            if not cut:
                break
            if time.monotonic() - started >= max_run_seconds:
                result.more = True
                break
    finally:
        arrow_conn.close()
    result.lsn = format_lsn(confirmed) if confirmed else None


def _while_the_slot_is_busy(group: SlotGroupTarget, doing: str, step: Any) -> Any:
    """Run ``step``; while another backend holds the group's slot for a moment (a table's sensor peeking
    it), wait and try again, for at most :data:`BUSY_SLOT_WAIT_SECONDS`."""
    deadline = time.monotonic() + BUSY_SLOT_WAIT_SECONDS
    pause = 0.05
    while True:
        try:
            return step()
        except Exception as exc:  # psycopg's ObjectInUse, or ADBC's wrapping of the same server error
            if "is active for PID" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise TransientError(
                    f"slot {group.slot} of slot group {group.name} stayed in use by another backend for "
                    f"{BUSY_SLOT_WAIT_SECONDS:g} s while the capture tried to {doing} it: {str(exc).strip()}; the "
                    "task's retry tries again"
                ) from exc
            log.info(
                "slot group %s: slot %s is in use for a moment (a sensor's peek?): trying to %s it again",
                group.name,
                group.slot,
                doing,
            )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _checked_slot(source: SourceDatabase, conn: psycopg.Connection, group: SlotGroupTarget) -> Any:
    """The group's slot; created when missing; a lost one fails, or with on_slot_lost resync is re-created."""
    slot = source.slot_info(conn, group.slot)
    if slot is None:
        source.create_slot(conn, group.slot)
        log.info("slot group %s: created its slot %s", group.name, group.slot)
        return source.slot_info(conn, group.slot)
    if not slot.in_this_database:
        raise NeedsAttentionError(
            f"slot {group.slot} of slot group {group.name} belongs to database {slot.database}; "
            "give the group a distinct slot in slot_groups"
        )
    if not slot.lost:
        return slot
    if group.on_slot_lost != "resync":
        raise SlotLostError(
            f"slot {group.slot} of slot group {group.name} was invalidated (wal_status=lost): changes of the group's "
            "tables since the last capture are gone. Set on_slot_lost: resync to re-create it and snapshot every "
            f"table of the group again, or drop it by hand: {_drop_slot_sql(group.slot)}"
        )
    log.warning(
        "slot group %s: slot %s was invalidated; on_slot_lost=resync: re-creating it, and every table of the "
        "group takes a new snapshot",
        group.name,
        group.slot,
    )
    source.drop_slot(conn, group.slot)
    lsn = source.create_slot(conn, group.slot)
    for table in group.tables if group.tables is not None else group.change_log.tables():
        group.change_log.drop_for_resync(table, f"slot {group.slot} was invalidated", dropped_upto_lsn=lsn)
    return source.slot_info(conn, group.slot)


def _leave_publication(conn: psycopg.Connection, group: SlotGroupTarget) -> None:
    """Tables that left the registry leave the group's publication and its log."""
    from airflow_pg_replication.source import publications

    members = publications.published_tables(conn, group.publication) or set()
    wanted = set(group.tables or ())
    for schema, table in sorted(members):
        if f"{schema}.{table}" not in wanted:
            publications.remove_table(conn, group.publication, schema, table)
    for table in group.change_log.tables():
        if table not in wanted:
            group.change_log.drop_table(table)
            log.info("slot group %s: %s left the registry; its change log is deleted", group.name, table)


def _bound_the_log(group: SlotGroupTarget, max_log_bytes: int) -> list[str]:
    """Put a table whose pending segments pass ``max_log_bytes`` to resync (its segments dropped)."""
    resynced = []
    for table in group.tables if group.tables is not None else group.change_log.tables():
        pending = group.change_log.pending_bytes(table)
        if pending > max_log_bytes:
            group.change_log.drop_for_resync(
                table, f"{pending:,} bytes of changes waited in the change log, past max_log_bytes={max_log_bytes:,}"
            )
            log.warning(
                "slot group %s: %s fell behind by %s bytes (max_log_bytes=%s): its pending changes are dropped "
                "and it takes a new snapshot at its next run",
                group.name,
                table,
                f"{pending:,}",
                f"{max_log_bytes:,}",
            )
            resynced.append(table)
    return resynced


def _confirmed(slot: Any) -> int:
    from airflow_pg_replication.source.pgoutput import parse_lsn

    return parse_lsn(slot.confirmed_flush_lsn) if slot.confirmed_flush_lsn else 0


def _drop_slot_sql(slot: str) -> str:
    """The statement that drops ``slot``, for a person to run."""
    from psycopg import sql

    return sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(slot)).as_string(None)
