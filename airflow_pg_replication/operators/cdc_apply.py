"""PgCdcApplyOperator: apply one bounded batch of a table's changes from its slot, then advance the slot."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from airflow_pg_replication.errors import ReplicationError
from airflow_pg_replication.operators.base import PgTableOperator

log = logging.getLogger(__name__)


class PgCdcApplyOperator(PgTableOperator):
    """Read up to ``max_batch_changes`` changes (whole transactions) and merge them into the destination.

    The upper LSN is fixed when the run starts, so a run never chases a growing backlog. The
    destination commits first, then the state row with the last applied commit LSN, and only
    then does the slot advance: a crash anywhere re-reads the batch, and transactions at or
    below the stored LSN are skipped, so nothing is lost and nothing is applied twice.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "max_batch_changes")

    def __init__(self, *, max_batch_changes: int = 100_000, max_lag_bytes: int | None = None,
                 max_rows_in_memory: int = 200_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_batch_changes = max_batch_changes
        self.max_rows_in_memory = max_rows_in_memory
        self.max_lag_bytes = max_lag_bytes

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.arrow_memory import use_jemalloc
        from airflow_pg_replication.destination_opening import DestinationOpening
        from airflow_pg_replication.pgoutput import format_lsn, parse_lsn
        from airflow_pg_replication.source_catalog import require_key

        use_jemalloc()  # lower peak RSS for the batches' Arrow buffers
        t = self.target
        hook = self.source_hook()
        started = time.monotonic()
        with _ArrowConnection(hook) as arrow_conn, hook.connect() as conn:
            hook.check_wal_level(conn)
            slot = hook.slot_info(conn, t.slot)
            self._check_slot(slot)
            info = hook.table_info(conn, t.schema, t.name, columns=self.columns, primary_key=self.primary_key)
            require_key(info, mode="cdc")
            upto = hook.current_wal_lsn(conn)
            start_lsn = slot.confirmed_flush_lsn
            # PostgreSQL decodes the batch while a thread opens the destination, reads the state and
            # checkpoints the last run's commits (until the batch is folded, if need be).
            with DestinationOpening(self.table_destination(), self._open_state,
                                    then=lambda dest: dest.checkpoint()) as opening:
                chunks = hook.peek_change_chunks(conn, t.slot, t.publication, upto_lsn=upto,
                                                 max_changes=self.max_batch_changes, arrow_conn=arrow_conn.get())
                run = self._apply_changes(conn, chunks, opening, info)
                batch, cut = run.batch, run.cut
                # Where the slot may advance to: all read WAL when the read ran to ``upto``, else the last commit.
                advance_to = batch.last_end_lsn if cut else max(upto, batch.last_end_lsn or 0)
                if run.nothing:
                    why = ("every transaction read was already applied" if batch.skipped
                           else "no change for this table in the WAL read")
                    log.info("%s: nothing to apply between %s and %s (%s); %d transaction(s) of other tables read",
                             t.qualified_name, start_lsn, format_lsn(advance_to), why, batch.transactions)
            if advance_to and (slot.confirmed_flush_lsn is None or advance_to > parse_lsn(slot.confirmed_flush_lsn)):
                hook.advance_slot(conn, t.slot, advance_to)  # only now: the batch and its state are committed
        secs = time.monotonic() - started
        changes = batch.changes if not run.nothing else 0
        applied = run.applied
        log.info(
            "%s: applied %d change(s) in %d transaction(s), LSN %s -> %s%s: %s upserts, %s deletes%s; "
            "%.1f s (%.0f changes/s)%s",
            t.qualified_name, changes, batch.transactions - batch.skipped, start_lsn,
            format_lsn(advance_to) if advance_to else start_lsn,
            f", {batch.skipped} already applied skipped" if batch.skipped else "",
            applied.upserts if applied else 0, applied.deletes if applied else 0,
            ", table truncated" if applied and applied.truncated else "",
            secs, changes / secs if secs else 0.0,
            "; more changes are waiting (batch limit reached)" if cut else "",
        )
        return {"table": t.qualified_name, "changes": changes, "lsn": format_lsn(advance_to) if advance_to else start_lsn,
                "transactions": batch.transactions - batch.skipped, "more": cut, "seconds": round(secs, 3)}

    def _open_state(self, dest: Any) -> Any:
        """On the opening thread: the table's state, which must be a loaded snapshot of this slot.

        Commits of this run are left in DuckDB's WAL; the last run's are checkpointed next.
        """
        t = self.target
        state = dest.read_state()
        if state is None or state.status != "ready" or state.slot != t.slot:
            raise ReplicationError(
                f"{t.qualified_name} has no loaded snapshot for slot {t.slot} in {dest.describe()}"
                f" (state: {state.status if state else 'none'}). Run the full_refresh task first "
                "(trigger the DAG with full_refresh=true)."
            )
        dest.defer_checkpoints()
        return state

    def _apply_changes(self, conn: Any, changes: Iterable[Any], opening: Any, info: Any) -> _BatchRun:
        """Fold the read's Arrow chunks and apply them with the state (its LSN set here); the slot is untouched.

        ``opening`` gives the state once the read is in, and the destination once the batch is
        folded, or at the first part of a batch too big to hold.
        """
        import pyarrow as pa

        from airflow_pg_replication.apply import apply_changes, apply_typed, type_columnar
        from airflow_pg_replication.changes import ChangeFolder
        from airflow_pg_replication.columnar_fold import fold_columnar
        from airflow_pg_replication.pgoutput import decode

        t = self.target
        names = {(t.schema, t.name)}
        soft = self.deletes == "soft"
        read_started = time.monotonic()
        chunks: list[pa.Array] = []  # the batch's messages as Arrow, folded column-wise at the end ...
        held = 0
        folder = None  # ... or message by message, past max_rows_in_memory or for an unusual batch
        applied = None
        messages = 0
        for chunk in changes:
            messages += len(chunk)
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
        return _BatchRun(batch, cut, nothing, applied)

    def _check_slot(self, slot: Any) -> None:
        """A missing or invalidated slot fails with the fix (as the sensor does); lag past the limit warns."""
        from airflow_pg_replication.slot_health import judge_slot

        t = self.target
        judge_slot(slot, slot_name=t.slot, table=t.qualified_name, min_lag_bytes=0, max_lag_bytes=2**63 - 1)
        if not slot.in_this_database:
            raise ReplicationError(f"replication slot {t.slot} belongs to database {slot.database}, not this one; "
                                   "set a distinct `slot` name for this table in the registry")
        if self.max_lag_bytes and slot.lag_bytes and slot.lag_bytes > self.max_lag_bytes:
            log.warning("%s: slot %s holds %s bytes of WAL, past max_lag_bytes=%s; applying a batch to catch up",
                        t.qualified_name, t.slot, f"{slot.lag_bytes:,}", f"{self.max_lag_bytes:,}")

    @staticmethod
    def _columns_of_relations(conn: Any, rels: Sequence[Any], info: Any) -> dict:
        """Types of every column the batch's relation messages carried (schema changes included)."""
        from airflow_pg_replication.source_catalog import resolve_column_types
        from airflow_pg_replication.typemap import PgColumn

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
    """What a run read and applied: the folded batch, whether the read hit the batch limit, the result."""

    batch: Any  # ColumnarBatch or ChangeBatch
    cut: bool
    nothing: bool
    applied: Any  # ApplyResult or None


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

        from airflow_pg_replication.binary_copy import adbc_connect

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pg_replication_connect")
        self._future = self._pool.submit(adbc_connect, self._params, autocommit=True)
        return self

    def get(self) -> Any:
        return self._future.result()

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        if self._future.done() and self._future.exception() is None:
            self._future.result().close()
