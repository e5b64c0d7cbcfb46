"""PgCdcApplyOperator: apply a table's changes from its slot, batch by batch, each committed then acknowledged."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from airflow_pg_replication.errors import NeedsAttentionError, TransientError
from airflow_pg_replication.operators.base import PgTableOperator, table_task

log = logging.getLogger(__name__)

#: Default time budget of one run: see PgCdcApplyOperator.
MAX_RUN_SECONDS = 600


class PgCdcApplyOperator(PgTableOperator):
    """Apply the slot's changes up to the WAL position read at the run's start, batch after batch.

    A batch is at most about ``max_batch_changes`` changes, whole transactions. Each batch is
    committed, then acknowledged, before the next is read: the destination commits the batch's
    data with its state row (the last applied commit LSN), and only then does the slot advance.
    A crash anywhere re-reads at most the batch in progress, and transactions at or below the
    stored LSN are skipped, so nothing is lost and nothing is applied twice.

    The run stops when it has reached the WAL position fixed at its start (so it never chases
    a growing backlog), or when ``max_run_seconds`` have passed at the end of a batch (a batch
    in progress is finished, never cut); then ``more`` is true and the next run goes on. The
    default, 600 s, is two periods of the default ``*/5`` schedule: a run drains a backlog of
    tens of millions of changes (~100k changes/s on a small machine), the per-run costs (task
    start, the sensor's wait) are paid once for all of it, and the worker slot comes back within
    ten minutes, with the lag checked again by the sensor of the next run. Other tables'
    tasks on the same DuckDB file take their turn between batches, not between runs.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "max_batch_changes", "max_run_seconds")

    def __init__(self, *, max_batch_changes: int = 100_000, max_lag_bytes: int | None = None,
                 max_rows_in_memory: int = 200_000, max_run_seconds: float = MAX_RUN_SECONDS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_batch_changes = max_batch_changes
        self.max_rows_in_memory = max_rows_in_memory
        self.max_lag_bytes = max_lag_bytes
        self.max_run_seconds = max_run_seconds

    @table_task
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.sync.arrow_memory import use_jemalloc
        from airflow_pg_replication.source.pgoutput import format_lsn, parse_lsn
        from airflow_pg_replication.source.catalog import require_key

        use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
        t = self.target
        hook = self.source_hook()
        started = time.monotonic()
        budget = float(self.max_run_seconds)
        runs: list[_BatchRun] = []
        with _ArrowConnection(hook) as arrow_conn, hook.connect() as conn:
            hook.check_wal_level(conn)
            slot = hook.slot_info(conn, t.slot)
            self._check_slot(slot)
            info = hook.table_info(conn, t.schema, t.name, columns=self.columns, primary_key=self.primary_key)
            require_key(info, mode="cdc")
            # The run's target: WAL flushed after this waits for the next run. The flush position, not
            # the write position: a peek reads only flushed WAL, and the slot may advance to ``upto``.
            upto = hook.current_wal_flush_lsn(conn)
            start_lsn = slot.confirmed_flush_lsn
            confirmed = parse_lsn(start_lsn) if start_lsn else None
            while True:
                run = self._read_and_apply_batch(hook, conn, arrow_conn.get(), info, upto, confirmed)
                runs.append(run)
                # Here the batch's data and its state row are committed (step 1 and 2, in one DuckDB
                # transaction, or data then state elsewhere) and the destination is closed; only now
                # is it acknowledged (step 3): the slot advances past it. A crash before this line
                # re-reads the batch, and the state's LSN makes it skip what was applied.
                moved = bool(run.advance_to and (confirmed is None or run.advance_to > confirmed))
                if moved:
                    hook.advance_slot(conn, t.slot, run.advance_to)
                    confirmed = run.advance_to
                self._log_batch(len(runs), run, format_lsn)
                if not run.cut:
                    stop = f"caught up to {format_lsn(upto)}, the WAL position at the run's start"
                    break
                if not moved:  # cannot happen (a cut batch ends past the slot); never loop on the same batch
                    stop = "the slot did not move past the batch's end; the next run reads on"
                    log.warning("%s: %s", t.qualified_name, stop)
                    break
                if time.monotonic() - started >= budget:
                    stop = (f"time budget reached (max_run_seconds={budget:g}) with {max(0, upto - confirmed):,} "
                            f"bytes of WAL left before {format_lsn(upto)}, the WAL position at the run's start; "
                            "the next run goes on from there")
                    break
        secs = time.monotonic() - started
        changes = sum(r.changes for r in runs)
        transactions = sum(r.transactions for r in runs)
        upserts = sum(r.applied.upserts for r in runs if r.applied)
        deletes = sum(r.applied.deletes for r in runs if r.applied)
        more = runs[-1].cut
        lsn = format_lsn(confirmed) if confirmed else start_lsn
        log.info("%s: %s. Applied %s change(s) in %s transaction(s) and %d batch(es), LSN %s -> %s: %s upserted "
                 "row(s), %s deleted; %.1f s (%s changes/s)", t.qualified_name, stop, f"{changes:,}",
                 f"{transactions:,}", len(runs), start_lsn, lsn, f"{upserts:,}", f"{deletes:,}", secs,
                 f"{changes / secs if secs else 0.0:,.0f}")
        return {"table": t.qualified_name, "changes": changes, "lsn": lsn, "transactions": transactions,
                "more": more, "seconds": round(secs, 3), "batches": len(runs)}

    def _read_and_apply_batch(self, hook: Any, conn: Any, arrow_conn: Any, info: Any, upto: int,
                              confirmed: int | None) -> _BatchRun:
        """One batch: read it, fold it, commit it with its state row. The slot is left to the caller.

        PostgreSQL decodes the batch while a thread opens the destination, reads the state and
        checkpoints the last batch's commits (until the batch is folded, if need be). The DuckDB
        file is held for that and for the write; between the two only when nobody waits for it
        (see :func:`_let_go_while_folding`).
        """
        from airflow_pg_replication.destination.opening import DestinationOpening
        from airflow_pg_replication.source.pgoutput import format_lsn

        t = self.target
        started = time.monotonic()
        with DestinationOpening(self.table_destination(), self._open_state, then=lambda dest: dest.checkpoint(),
                                let_go=_let_go_while_folding, recheck=self._state_unchanged) as opening:
            chunks = hook.peek_change_chunks(conn, t.slot, t.publication, upto_lsn=upto,
                                             max_changes=self.max_batch_changes, arrow_conn=arrow_conn)
            run = self._apply_changes(conn, chunks, opening, info)
        # Leaving the block closed the destination: the batch and its state row are committed.
        # Where the slot may advance to: all read WAL when the read ran to ``upto``, else the last commit.
        run.advance_to = run.last_end_lsn if run.cut else max(upto, run.last_end_lsn or 0)
        run.from_lsn = confirmed
        run.seconds = time.monotonic() - started
        if run.nothing:
            why = ("every transaction read was already applied" if run.skipped
                   else "no change for this table in the WAL read")
            log.info("%s: nothing to apply between %s and %s (%s); %d transaction(s) of other tables read",
                     t.qualified_name, format_lsn(confirmed) if confirmed else "the slot's start",
                     format_lsn(run.advance_to), why, run.read_transactions)
        return run

    def _log_batch(self, number: int, run: _BatchRun, format_lsn: Any) -> None:
        """One line per batch: LSN range, changes, rows, MB read, rate."""
        if run.nothing:
            return
        applied = run.applied
        log.info(
            "%s: batch %d: LSN %s -> %s, %s change(s) in %s transaction(s)%s: %s upserted row(s), %s deleted%s; "
            "%.1f MB of pgoutput; %.2f s (%s changes/s)%s", self.target.qualified_name, number,
            format_lsn(run.from_lsn) if run.from_lsn else "the slot's start", format_lsn(run.advance_to),
            f"{run.changes:,}", f"{run.transactions:,}",
            f", {run.skipped} already applied skipped" if run.skipped else "",
            f"{applied.upserts if applied else 0:,}", f"{applied.deletes if applied else 0:,}",
            ", table truncated" if applied and applied.truncated else "", run.bytes_read / 1e6, run.seconds,
            f"{run.changes / run.seconds if run.seconds else 0.0:,.0f}",
            "; the batch limit was reached, more is waiting" if run.cut else "",
        )

    def _open_state(self, dest: Any) -> Any:
        """On the opening thread: the table's state, which must be a loaded snapshot of this slot.

        This batch's commit is left in DuckDB's WAL; the last batch's is checkpointed next.
        """
        t = self.target
        state = dest.read_state()
        if state is None or state.status != "ready" or state.slot != t.slot:
            raise NeedsAttentionError(
                f"{t.qualified_name} has no loaded snapshot for slot {t.slot} in {dest.describe()}"
                f" (state: {state.status if state else 'none'}). Run the full_refresh task first "
                "(trigger the DAG with full_refresh=true)."
            )
        dest.defer_checkpoints()
        return state

    def _state_unchanged(self, dest: Any, as_read: Any) -> None:
        """The DuckDB file was let go while the batch folded: the table's state must be as it was read."""
        t = self.target
        now = dest.read_state()
        fields = ("status", "slot", "snapshot_lsn", "applied_lsn")
        if now is None or any(getattr(now, f) != getattr(as_read, f) for f in fields):
            raise TransientError(
                f"{t.qualified_name}: the table's state in {dest.describe()} changed while this batch was folded "
                f"(read {[getattr(as_read, f) for f in fields]}, now "
                f"{[getattr(now, f) for f in fields] if now else 'no state'}): another task loaded the table. "
                "Nothing of the batch was written and the slot did not advance; the next run reads the changes again")

    def _apply_changes(self, conn: Any, changes: Iterable[Any], opening: Any, info: Any) -> _BatchRun:
        """Fold the read's Arrow chunks and apply them with the state (its LSN set here); the slot is untouched.

        ``opening`` gives the state once the read is in, and the destination once the batch is
        folded, or at the first part of a batch too big to hold.
        """
        import pyarrow as pa

        from airflow_pg_replication.sync.batch_apply import apply_changes, apply_typed, type_columnar
        from airflow_pg_replication.changes.reference_fold import ChangeFolder
        from airflow_pg_replication.changes.columnar_fold import fold_columnar
        from airflow_pg_replication.source.pgoutput import decode

        t = self.target
        names = {(t.schema, t.name)}
        soft = self.deletes == "soft"
        read_started = time.monotonic()
        chunks: list[pa.Array] = []  # the batch's messages as Arrow, folded column-wise at the end ...
        held = 0
        folder = None  # ... or message by message, past max_rows_in_memory or for an unusual batch
        applied = None
        messages = 0
        bytes_read = 0
        for chunk in changes:
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
                    log.info("%s: applying part %d of a large batch (%d rows) to bound memory",
                             t.qualified_name, folder.flushed_parts, len(part.rows))
                    cols = self._columns_of_relations(conn, folder.relations_seen, info)
                    applied = _combine(applied, apply_changes(dest, part, cols, soft_deletes=soft))
            del pending
        state = opening.prepared()  # the destination may still be checkpointing while the batch folds
        columnar = None
        raw = pa.chunked_array(chunks, pa.binary()) if chunks else []
        if folder is None and info.primary_key:
            columnar = fold_columnar(raw, info.primary_key, applied_lsn=state.applied_lsn, relation_names=names)
        if folder is None and columnar is None:
            folder = ChangeFolder(info.primary_key, applied_lsn=state.applied_lsn, relation_names=names)
            for chunk in chunks:
                for msg in chunk.to_pylist():
                    folder.feed(decode(msg))
        del raw, chunks
        batch = columnar if columnar is not None else folder.batch
        read_secs = time.monotonic() - read_started
        cut = messages >= self.max_batch_changes  # PostgreSQL may have stopped early: more is waiting
        nothing = len(columnar) == 0 if columnar is not None else batch.empty and not folder.flushed_parts
        if not nothing:
            log.info("%s: read %d message(s), %d change(s) in %.1f s (%s fold)", t.qualified_name, messages,
                     batch.changes, read_secs, "column-wise" if columnar is not None else "per-message")
            state.applied_lsn = batch.last_commit_lsn
            if columnar is not None:  # the state commits with the data where the destination allows (DuckDB)
                cols = self._columns_of_relations(conn, [columnar.relation], info)
                typed = type_columnar(columnar, cols, soft_deletes=soft)
                dest, _ = opening.result()
                applied = apply_typed(dest, typed, state=state)
            elif batch.empty:  # all of it went out in parts: only the state is left to record
                dest.write_state(state)
            else:
                cols = self._columns_of_relations(conn, folder.relations_seen, info)
                dest, _ = opening.result()
                applied = _combine(applied, apply_changes(dest, batch, cols, soft_deletes=soft, state=state))
        return _BatchRun(0 if nothing else batch.changes, batch.transactions, batch.skipped, batch.last_end_lsn, cut,
                         nothing, applied, bytes_read=bytes_read)

    def _check_slot(self, slot: Any) -> None:
        """A missing or invalidated slot fails with the fix (as the sensor does); lag past the limit warns."""
        from airflow_pg_replication.source.slot_health import judge_slot

        t = self.target
        judge_slot(slot, slot_name=t.slot, table=t.qualified_name, min_lag_bytes=0, max_lag_bytes=2**63 - 1)
        if not slot.in_this_database:
            raise NeedsAttentionError(f"replication slot {t.slot} belongs to database {slot.database}, not this one; "
                                   "set a distinct `slot` name for this table in the registry")
        if self.max_lag_bytes and slot.lag_bytes and slot.lag_bytes > self.max_lag_bytes:
            log.warning("%s: slot %s holds %s bytes of WAL, past max_lag_bytes=%s; catching up batch after batch",
                        t.qualified_name, t.slot, f"{slot.lag_bytes:,}", f"{self.max_lag_bytes:,}")

    @staticmethod
    def _columns_of_relations(conn: Any, rels: Sequence[Any], info: Any) -> dict:
        """Types of every column the batch's relation messages carried (schema changes included)."""
        from airflow_pg_replication.source.catalog import resolve_column_types
        from airflow_pg_replication.source.type_map import PgColumn

        types = {c.type.oid: c.type for c in info.columns}  # read at the run's start: no query for these
        unknown = [c.type_oid for rel in rels for c in rel.columns if c.type_oid not in types]
        if unknown:  # a column added or retyped since
            types.update(resolve_column_types(conn, unknown))
        cols = {c.name: c for c in info.columns}
        for rel in rels:
            for c in rel.columns:
                cols[c.name] = PgColumn(c.name, types[c.type_oid], c.typmod)
        return cols


@dataclass
class _BatchRun:
    """What a batch read and applied (its figures only: a run keeps no batch's data once it is written)."""

    changes: int  # row changes applied (0 when nothing was applied)
    read_transactions: int  # committed transactions read, skipped ones included
    skipped: int  # transactions at or below the state's LSN: applied before
    last_end_lsn: int | None  # end of the last commit read
    cut: bool  # the read hit the batch limit: more is waiting
    nothing: bool
    applied: Any  # ApplyResult or None
    bytes_read: int = 0  # pgoutput read from the slot
    from_lsn: int | None = None  # the slot's confirmed position before the batch
    advance_to: int | None = None  # where the slot may advance once the batch is committed
    seconds: float = 0.0

    @property
    def transactions(self) -> int:
        return self.read_transactions - self.skipped


def _let_go_while_folding(dest: Any) -> bool:
    """Whether a batch lets go of the DuckDB file between its checkpoint and its write: when someone waits for it.

    Letting go and taking the file again costs ~25 ms a batch (closing, opening, reading the state
    again: measured ~3 % of a 100k-change batch), so a batch does it only for a reader (or another
    table's task) that waits: it gets the file while the batch folds, not after the batch's write.
    """
    return dest.others_wait_for_file()


def _combine(total: Any, part: Any) -> Any:
    """Sum the ApplyResults of a batch's parts (``total`` is None before the first)."""
    return part if total is None else total.add(part)


class _ArrowConnection:
    """The ADBC connection for the change read, opened on a thread while the run's checks go on.

    Connecting costs a backend start and ADBC's type lookups (~40 ms), once per run; it
    overlaps with the slot and catalog lookups that come before the read.
    """

    def __init__(self, hook: Any) -> None:
        self._params = hook.arrow_connection_params()  # on this thread: Airflow's connection lookup
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
