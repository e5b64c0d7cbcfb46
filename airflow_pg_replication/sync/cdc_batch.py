"""One CDC batch of a table: read it, fold it, commit it with its state row. Acknowledging it is the caller's.

The changes come from the table's own slot (a peek, acknowledged by advancing the slot) or, for a
table of a slot group, from the group's change log (acknowledged by deleting applied segments).
The data flow of a batch::

    PostgreSQL decodes the peek, or the log's segments are read ─► Arrow chunks of pgoutput messages
    a thread: open the destination, read the state, checkpoint the last batch (let go while folding if asked)
    fold (column-wise, or message by message) ─► type ─► destination.apply_batch(batch, state := applied LSN)

Transactions at or below the state's applied LSN were applied before and are skipped, so a batch
read again after a crash changes nothing twice. A transaction too big to hold is applied in parts,
in order; nothing is recorded until the whole batch is in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import NeedsAttentionError, TransientError
from airflow_pg_replication.phase_timing import phase, timed_iter
from airflow_pg_replication.table_state import TablePhase

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

    from airflow_pg_replication.changes.folded_batch import FoldedBatch
    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.destination.opening import DestinationOpening
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.source.pgoutput import Relation
    from airflow_pg_replication.source.type_map import PgColumn
    from airflow_pg_replication.sync.batch_write import ApplyResult
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable
    from airflow_pg_replication.table_state import ReplicationState

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What a batch read and applied (its figures only: a run keeps no batch's data once it is written)."""

    changes: int  # row changes applied (0 when nothing was applied)
    read_transactions: int  # committed transactions read, skipped ones included
    skipped: int  # transactions at or below the state's LSN: applied before
    last_end_lsn: int | None  # end of the last commit read
    cut: bool  # the read hit the batch limit: more is waiting
    nothing: bool
    applied: ApplyResult | None
    bytes_read: int = 0  # pgoutput read from the slot
    from_lsn: int | None = None  # the slot's confirmed position before the batch
    advance_to: int | None = None  # where the slot may advance once the batch is committed (own slot)
    seconds: float = 0.0
    applied_lsn: int | None = None  # the table's applied LSN once the batch is committed (new or as it was)

    @property
    def transactions(self) -> int:
        return self.read_transactions - self.skipped


class CdcBatch:
    """Reads, folds and commits one batch of ``table``'s changes, at most about ``max_batch_changes`` messages."""

    def __init__(
        self,
        source: SourceDatabase,
        table: ReplicatedTable,
        info: TableInfo,
        *,
        max_batch_changes: int,
        max_rows_in_memory: int,
    ) -> None:
        self.source = source
        self.table = table
        self.info = info
        self.max_batch_changes = max_batch_changes
        self.max_rows_in_memory = max_rows_in_memory
        self._held: TableDestination | None = None  # a run from the log: open from batch to batch

    def run(self, conn: psycopg.Connection, arrow_conn: Any, upto: int, confirmed: int | None) -> BatchOutcome:
        """Read up to ``upto`` (or the next segments of the log), fold, commit with the state row.

        Where the table's own slot may go is in the outcome; a group table's segments up to the
        outcome's ``applied_lsn`` may be deleted.

        PostgreSQL decodes the batch while a thread opens the destination, reads the state and
        checkpoints the last batch's commits (until the batch is folded, if need be). A DuckDB
        file is held for that and for the write; between the two only when nobody waits for it
        (see :func:`let_go_while_folding`).
        """
        from airflow_pg_replication.destination.opening import DestinationOpening
        from airflow_pg_replication.source.pgoutput import format_lsn

        t = self.table
        started = time.monotonic()
        if t.change_log is not None:
            return self._run_from_log(conn, started)
        with DestinationOpening(
            t.open_destination(),
            self._open_state,
            then=lambda dest: dest.checkpoint(),
            let_go=let_go_while_folding,
            recheck=self._state_unchanged,
        ) as opening:
            chunks: Iterable[pa.Array] = self.source.peek_change_chunks(
                conn,
                t.slot,
                t.publication,
                upto_lsn=upto,
                max_changes=self.max_batch_changes,
                arrow_conn=arrow_conn,
            )
            outcome = self._fold_and_apply(conn, chunks, opening)
        # Leaving the block closed the destination: the batch and its state row are committed.
        # Where the slot may advance to: all read WAL when the read ran to ``upto``, else the last commit.
        outcome.advance_to = outcome.last_end_lsn if outcome.cut else max(upto, outcome.last_end_lsn or 0)
        outcome.from_lsn = confirmed
        outcome.seconds = time.monotonic() - started
        if outcome.nothing:
            why = (
                "every transaction read was already applied"
                if outcome.skipped
                else "no change for this table in the WAL read"
            )
            log.info(
                "%s: nothing to apply between %s and %s (%s); %d transaction(s) of other tables read",
                t.qualified_name,
                format_lsn(confirmed) if confirmed else "the slot's start",
                format_lsn(outcome.advance_to) if outcome.advance_to is not None else "no commit",
                why,
                outcome.read_transactions,
            )
        return outcome

    def _run_from_log(self, conn: psycopg.Connection, started: float) -> BatchOutcome:
        """A batch of a slot group's table: the log's next segments above the applied LSN, folded and committed.

        There is no decoding to hide the destination's opening and checkpoint behind, so the
        destination stays open from batch to batch of the run (:meth:`close` ends it, with one
        checkpoint); when someone waits for the DuckDB file, a batch first checkpoints and lets
        them have it.
        """
        t = self.table
        assert t.change_log is not None
        dest = self._held
        try:
            if dest is None:
                with phase("destination.open"):
                    dest = t.open_destination().__enter__()
                self._held = dest
            elif dest.others_wait_for_file():
                with phase("destination.checkpoint"):
                    dest.checkpoint()
                dest.release_file()  # a reader (or another table's task) takes its turn here
                with phase("destination.open"):
                    dest.reopen_file()
            with phase("destination.read_state"):
                state = self._open_state(dest)
            with phase("cdc.read_log"):
                read = t.change_log.read(
                    t.qualified_name, after_lsn=state.applied_lsn, max_messages=self.max_batch_changes
                )
            outcome = self._fold_and_apply(conn, read.messages.chunks, _Opened(dest, state))
        except BaseException as exc:
            self.close(exc)
            raise
        outcome.cut = read.more  # more segments wait; the group's slot is the capture's
        outcome.advance_to = None
        outcome.from_lsn = state.applied_lsn
        outcome.seconds = time.monotonic() - started
        return outcome

    def close(self, exc: BaseException | None = None) -> None:
        """End the run: the destination a run from the log kept open is checkpointed and closed."""
        dest, self._held = self._held, None
        if dest is None:
            return
        if exc is not None:
            dest.__exit__(type(exc), exc, exc.__traceback__)
            return
        try:
            with phase("destination.checkpoint"):
                dest.checkpoint()
        except BaseException as failed:
            dest.__exit__(type(failed), failed, failed.__traceback__)
            raise
        dest.__exit__(None, None, None)

    def _columns(self, conn: psycopg.Connection, relations: Sequence[Relation]) -> dict[str, PgColumn]:
        """The batch's column types (a column added since the run's start included), as the table's transport wants."""
        import dataclasses

        from airflow_pg_replication.source.catalog import columns_of_relations
        from airflow_pg_replication.source.type_map import text_transport

        cols = columns_of_relations(conn, relations, self.info, self.table.columns)
        if not self.table.keeps_postgres_types:
            return cols
        return {name: dataclasses.replace(c, type=text_transport(c.type)) for name, c in cols.items()}

    def _open_state(self, dest: TableDestination) -> ReplicationState:
        """On the opening thread: the table's state, which must be a loaded snapshot of this slot.

        This batch's commit is left in DuckDB's WAL; the last batch's is checkpointed next.
        """
        t = self.table
        state = dest.read_state()
        if state is None or not state.applies_changes or state.slot != t.slot:
            raise NeedsAttentionError(
                f"{t.qualified_name} has no loaded snapshot for slot {t.slot} in {dest.describe()}"
                f" (state: {state.status if state else 'none'}). Run the full_refresh task first "
                "(trigger the DAG with full_refresh=true)."
            )
        dest.defer_checkpoints()
        return state

    def _state_unchanged(self, dest: TableDestination, as_read: ReplicationState) -> None:
        """The DuckDB file was let go while the batch folded: the table's state must be as it was read."""
        t = self.table
        now = dest.read_state()
        fields = ("status", "slot", "snapshot_lsn", "applied_lsn")
        if now is None or any(getattr(now, f) != getattr(as_read, f) for f in fields):
            raise TransientError(
                f"{t.qualified_name}: the table's state in {dest.describe()} changed while this batch was folded "
                f"(read {[getattr(as_read, f) for f in fields]}, now "
                f"{[getattr(now, f) for f in fields] if now else 'no state'}): another task loaded the table. "
                "Nothing of the batch was written and the slot did not advance; the next run reads the changes again"
            )

    def _fold_and_apply(
        self,
        conn: psycopg.Connection,
        changes: Iterable[pa.Array],
        opening: DestinationOpening[ReplicationState] | _Opened,
    ) -> BatchOutcome:
        """Fold the read's Arrow chunks and apply them with the state (its LSN set here); the slot is untouched.

        ``opening`` gives the state once the read is in, and the destination once the batch is
        folded, or at the first part of a batch too big to hold.
        """
        import pyarrow as pa

        from airflow_pg_replication.changes.columnar_fold import fold_columnar
        from airflow_pg_replication.changes.reference_fold import ChangeFolder
        from airflow_pg_replication.changes.typed_batch import type_columnar_batch
        from airflow_pg_replication.source.pgoutput import decode
        from airflow_pg_replication.sync.batch_write import write_change_batch, write_typed_batch

        t, info = self.table, self.info
        names = {(t.schema, t.name)}
        soft = t.soft_deletes
        read_started = time.monotonic()
        chunks: list[pa.Array] = []  # the batch's messages as Arrow, folded column-wise at the end ...
        held = 0
        folder = None  # ... or message by message, past max_rows_in_memory or for an unusual batch
        applied = None
        messages = 0
        bytes_read = 0
        for chunk in timed_iter("cdc.read", changes):  # PostgreSQL decoding the peek, ADBC fetching it
            messages += len(chunk)
            bytes_read += chunk.nbytes
            if folder is None:
                chunks.append(chunk)
                held += len(chunk)
                if held < self.max_rows_in_memory:
                    continue
                dest, state = opening.result()
                folder = ChangeFolder(info.primary_key, applied_lsn=state.applied_lsn, relation_names=names)
                pending, chunks = chunks, []
            else:
                pending = [chunk]
            for msg in (m for c in pending for m in c.to_pylist()):
                folder.feed(decode(msg))
                if len(folder.batch.rows) >= self.max_rows_in_memory:
                    # A huge transaction: apply what is folded so far, in order, and go on. Nothing is
                    # recorded or advanced until the whole batch is in, so a crash replays it from the start.
                    part = folder.take_rows()
                    log.info(
                        "%s: applying part %d of a large batch (%d rows) to bound memory",
                        t.qualified_name,
                        folder.flushed_parts,
                        len(part.rows),
                    )
                    cols = self._columns(conn, folder.relations_seen)
                    applied = _combine(applied, write_change_batch(dest, part, cols, soft_deletes=soft))
            del pending
        state = opening.prepared()  # the destination may still be checkpointing while the batch folds
        columnar = None
        raw = pa.chunked_array(chunks, pa.binary()) if chunks else []
        if folder is None and info.primary_key:
            with phase("cdc.fold.columnar"):
                columnar = fold_columnar(raw, info.primary_key, applied_lsn=state.applied_lsn, relation_names=names)
        if folder is None and columnar is None:
            folder = ChangeFolder(info.primary_key, applied_lsn=state.applied_lsn, relation_names=names)
            with phase("cdc.fold.per_message"):
                for chunk in chunks:
                    for msg in chunk.to_pylist():
                        folder.feed(decode(msg))
        del raw, chunks
        if columnar is not None:
            batch: FoldedBatch = columnar
        elif folder is not None:
            batch = folder.batch
        else:  # pragma: no cover - the per-message fold runs whenever the column-wise one does not
            raise AssertionError("neither fold ran")
        read_secs = time.monotonic() - read_started
        cut = messages >= self.max_batch_changes  # PostgreSQL may have stopped early: more is waiting
        nothing = batch.is_empty and not (folder is not None and folder.flushed_parts)
        if not nothing:
            log.info(
                "%s: read %d message(s), %d change(s) in %.1f s (%s fold)",
                t.qualified_name,
                messages,
                batch.changes,
                read_secs,
                "column-wise" if columnar is not None else "per-message",
            )
            state = state.moved_to(TablePhase.READY, applied_lsn=batch.last_commit_lsn)
            if columnar is not None:  # the state commits with the data where the destination allows (DuckDB)
                cols = self._columns(conn, [columnar.relation])
                with phase("cdc.type"):
                    typed = type_columnar_batch(columnar, cols, soft_deletes=soft)
                dest, _ = opening.result()
                applied = write_typed_batch(dest, typed, state=state)
            elif batch.is_empty:  # all of it went out in parts: only the state is left to record
                dest.write_state(state)
            elif folder is not None:  # per message (columnar is None): the batch is folder.batch
                cols = self._columns(conn, folder.relations_seen)
                dest, _ = opening.result()
                written = write_change_batch(dest, folder.batch, cols, soft_deletes=soft, state=state)
                applied = _combine(applied, written)
        return BatchOutcome(
            0 if nothing else batch.changes,
            batch.transactions,
            batch.skipped,
            batch.last_end_lsn,
            cut,
            nothing,
            applied,
            bytes_read=bytes_read,
            applied_lsn=state.applied_lsn,
        )


def let_go_while_folding(dest: TableDestination) -> bool:
    """Whether a batch lets go of the DuckDB file between its checkpoint and its write: when someone waits for it.

    Letting go and taking the file again costs ~25 ms a batch (closing, opening, reading the state
    again: measured ~3 % of a 100k-change batch), so a batch does it only for a reader (or another
    table's task) that waits: it gets the file while the batch folds, not after the batch's write.
    """
    return dest.others_wait_for_file()


def _combine(total: ApplyResult | None, part: ApplyResult) -> ApplyResult:
    """Sum the ApplyResults of a batch's parts (``total`` is None before the first)."""
    return part if total is None else total.add(part)


class _Opened:
    """An already open destination and its state, where a batch expects a :class:`.DestinationOpening`."""

    def __init__(self, dest: TableDestination, state: ReplicationState) -> None:
        self._dest = dest
        self._state = state

    def prepared(self) -> ReplicationState:
        return self._state

    def result(self) -> tuple[TableDestination, ReplicationState]:
        return self._dest, self._state
