"""Reconcile: compare a table's source and destination copies at a known LSN, range by range.

How the comparison works
------------------------
* The source is read in one ``REPEATABLE READ, READ ONLY`` transaction; ``pg_current_wal_lsn()``
  read in it right after its snapshot is taken is the LSN the comparison is "at".
* The key space is split into ``ranges`` ranges of about equal row counts: the source's keys at
  every ``ceil(rows / ranges)``-th position in key order are the bounds (works for any key:
  single or composite, integer, text, timestamp, ...). Text-like key columns are ordered with
  ``COLLATE "C"`` (and other text-mapped types such as uuid, enum or interval by their text
  form), i.e. by code point, which is how the destination orders the strings it holds; so the
  same predicate selects the same rows on both sides. A table without a key is one range.
* Per range, both sides are streamed (the source through the same COPY -> Arrow type map the
  snapshot loads with, the destination through dlt's ``sql_client`` as Arrow; a PostgreSQL
  destination through its text output and the source's own type map, its ranges selected with
  the source's own predicate), every value is
  normalised through one path (integers, floats, decimals normalised, temporal values as
  integer micro-seconds / days in UTC, JSON parsed and re-serialised with sorted keys, lists
  element by element, bytes), each row is hashed with BLAKE2b and the row hashes are summed
  (mod 2**128: order-independent, and unlike XOR duplicated rows do not cancel out). Equal
  count and equal sum: the range matches. Memory is bounded per range.
* A differing range is named by its key bounds; when both sides hold at most ``detail_rows``
  rows in it, the differing keys are listed too: missing in destination, extra in destination
  (or duplicated there), changed.
* Only the replicated columns are compared (``_pg_lsn`` / ``_pg_deleted_at`` are not); rows
  the destination keeps as soft-deleted (``_pg_deleted_at IS NOT NULL``) are left out.

The LSN rule for CDC tables
---------------------------
A CDC table's copy lags its source by design, so a plain comparison while writes go on would
report differences that are only "not applied yet". The operator therefore compares only when
the destination has applied exactly what the source snapshot shows:

1. Read the destination's state (``A`` = last applied commit LSN, at least the snapshot's LSN),
   holding the destination's lock (DuckDB: no apply can run meanwhile).
2. Take the source snapshot ``S`` and read ``L = pg_current_wal_lsn()`` inside it. Every
   transaction visible in ``S`` committed before ``L``.
3. Peek the table's slot (with its publication, without consuming anything) up to ``L`` and
   count the table's changes in transactions that committed after ``A``. If there are any, the
   destination is behind the snapshot: the run is skipped (``when_behind="skip"``, the
   default: AirflowSkipException) or fails (``when_behind="fail"``) with "destination is
   behind: N changes pending; run apply_changes first". (A transaction that commits between
   ``S`` and ``L`` is counted as pending too: the rule errs on the side of not comparing.)
4. Otherwise no transaction in ``(A, L]`` touched the table, so the source at ``S`` and the
   destination at ``A`` must be equal: compare.
5. Read the state again; if the applied LSN moved while comparing (possible for destinations
   without a file lock), the result is ambiguous and treated like "behind".

Full-refresh and incremental tables (state ``loaded``) are compared directly; the result
reports the LSN the source was read at (differences then include writes since the last load).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.errors import NeedsAttentionError, ReplicationError, SlotLostError
from airflow_pg_replication.reconcile.hashing import ColumnCanon, RangeDigest
from airflow_pg_replication.reconcile.ranges import (
    KeySpace,
    RangePlan,
    mismatch_message,
    plan_ranges,
    public_result,
    range_result,
    range_step,
)
from airflow_pg_replication.table_state import TablePhase

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.sync.replicated_table import ReplicatedTable

log = logging.getLogger(__name__)


class DestinationBehind(ReplicationError):
    """The destination has not applied every change up to the source snapshot: comparing now would mislead."""


class Reconciliation:
    """Compare a table's source and destination copies, range by range, at a known LSN.

    ``run()`` returns ``{"table", "rows", "lsn", "ranges", "mismatched_ranges", "ok", ...}``. When
    the copies differ it raises :class:`NeedsAttentionError` naming the differing key ranges and, for
    small ranges, the differing keys (with ``fail_on_mismatch=False`` it returns ``ok: False``).
    A CDC table's destination that is behind the source snapshot raises :class:`DestinationBehind`.
    """

    def __init__(
        self,
        source: SourceDatabase,
        table: ReplicatedTable,
        *,
        ranges: int = 16,
        detail_rows: int = 1000,
        fail_on_mismatch: bool = True,
        max_pending_scan: int = 100_000,
        chunk_rows: int = 50_000,
        chunk_bytes: int = 4 << 20,
    ) -> None:
        self.source = source
        self.table = table
        self.ranges = ranges
        self.detail_rows = detail_rows
        self.fail_on_mismatch = fail_on_mismatch
        self.max_pending_scan = max_pending_scan
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes

    def run(self) -> dict[str, Any]:
        """Compare, and say how it went; see the module docstring for the LSN rule."""
        from airflow_pg_replication.source.pgoutput import format_lsn
        from airflow_pg_replication.source.snapshot_reads import begin_snapshot

        t, source = self.table, self.source
        n_ranges = int(self.ranges)
        if n_ranges < 1:
            raise ValueError(f"ranges must be at least 1, not {self.ranges!r}")
        started = time.monotonic()
        with source.connect() as conn, t.open_destination(read_only=True) as dest:
            state = dest.read_state()
            if state is None:
                raise ReplicationError(
                    f"{t.qualified_name}: nothing was loaded into {dest.describe()} yet (no replication state); "
                    "run the full_refresh task first"
                )
            if state.status is TablePhase.SNAPSHOTTING:
                self._behind(
                    f"{t.qualified_name}: destination is behind: a snapshot into {dest.describe()} "
                    "is in progress or failed (state: snapshotting); run full_refresh first"
                )
            cdc = state.applies_changes
            if cdc and state.slot != t.slot:
                raise ReplicationError(
                    f"{t.qualified_name}: the destination's snapshot was loaded for slot {state.slot}, not {t.slot}; "
                    "run full_refresh first"
                )
            info = t.read_info(source, conn)
            applied = max(state.applied_lsn or 0, state.snapshot_lsn or 0)
            with source.connect(autocommit=False) as snap:
                begin_snapshot(snap, None)
                lsn = source.current_wal_lsn(snap)  # read after the snapshot was taken: it covers all it sees
                if cdc:
                    self._check_pending(conn, info, applied, lsn)
                keys = KeySpace(info, _nullable_key_columns(conn, info))
                plan = _plan(snap, keys, n_ranges)
                log.info(
                    "%s: reconciling against %s at LSN %s%s: %s rows in the source, %d range(s) by %s",
                    t.qualified_name,
                    dest.describe(),
                    format_lsn(lsn),
                    f" (destination applied up to {format_lsn(applied)})" if cdc else "",
                    f"{plan.source_rows:,}",
                    len(plan.ranges),
                    ", ".join(keys.names) or "(no key: whole rows)",
                )
                results = self._compare(snap, dest, info, keys, plan)
                snap.rollback()
            after = dest.read_state()
        moved = after is None or any(
            getattr(after, f) != getattr(state, f) for f in ("status", "applied_lsn", "snapshot_lsn", "cursor_value")
        )
        if moved:
            self._behind(
                f"{t.qualified_name}: the destination changed while it was compared (applied LSN "
                f"{_fmt_lsn(state.applied_lsn)} -> {_fmt_lsn(after.applied_lsn if after else None)}); "
                "the result is ambiguous: run the reconciliation again"
            )
        bad = [r for r in results if not r["ok"]]
        secs = time.monotonic() - started
        out = {
            "table": t.qualified_name,
            "rows": sum(r["source_rows"] for r in results),
            "destination_rows": sum(r["destination_rows"] for r in results),
            "lsn": format_lsn(lsn),
            "applied_lsn": format_lsn(applied) if cdc else None,
            "mode": "cdc" if cdc else "loaded",
            "ranges": len(results),
            "mismatched_ranges": [public_result(r) for r in bad],
            "ok": not bad,
            "seconds": round(secs, 3),
        }
        if not bad:
            log.info(
                "%s: source and destination match at LSN %s: %s rows in %d range(s); %.1f s",
                t.qualified_name,
                out["lsn"],
                f"{out['rows']:,}",
                len(results),
                secs,
            )
            return out
        message = mismatch_message(t.qualified_name, out, bad, keys.names)
        log.error("%s", message)
        if self.fail_on_mismatch:
            raise NeedsAttentionError(message)
        return out

    def _behind(self, message: str) -> None:
        log.info("%s", message)
        raise DestinationBehind(message)

    def _check_pending(self, conn: psycopg.Connection, info: TableInfo, applied: int, lsn: int) -> None:
        """Skip/fail when the slot holds changes of the table committed after ``applied``, up to ``lsn``."""
        from airflow_pg_replication.changes.reference_fold import ChangeFolder
        from airflow_pg_replication.source.pgoutput import decode, format_lsn

        t = self.table
        slot = self.source.slot_info(conn, t.slot)
        if slot is None or slot.lost:
            raise SlotLostError(
                f"{t.qualified_name}: replication slot {t.slot} is {'missing' if slot is None else 'invalidated'}, "
                "so the destination cannot catch up and cannot be compared at a known LSN. Resync: trigger the "
                "DAG with full_refresh=true."
            )
        if t.change_log is not None:  # a group's table: changes captured but not applied wait in the log
            waiting = [s for s in t.change_log.segments(t.qualified_name) if s.last_commit_lsn > applied]
            if waiting:
                self._behind(
                    f"{t.qualified_name}: destination is behind: {len(waiting)} segment(s) of its changes wait in the "
                    f"change log of slot group {t.group}; run apply_changes first (applied up to LSN "
                    f"{format_lsn(applied)})"
                )
        folder = ChangeFolder(info.primary_key, applied_lsn=applied, relation_names={(t.schema, t.name)})
        messages = 0
        # A peek reads only flushed WAL: every commit the snapshot sees must be flushed before the peek.
        self.source.wait_for_flush(conn, lsn)
        for chunk in self.source.peek_change_chunks(
            conn, t.slot, t.publication, upto_lsn=lsn, max_changes=self.max_pending_scan
        ):
            messages += len(chunk)
            for data in chunk.to_pylist():
                folder.feed(decode(data))
        pending = folder.batch.changes
        cut = messages >= self.max_pending_scan
        if pending or cut:
            self._behind(
                f"{t.qualified_name}: destination is behind: {pending:,}{'+' if cut else ''} changes pending; "
                f"run apply_changes first (applied up to LSN {format_lsn(applied)}, the source is at "
                f"{format_lsn(lsn)})"
            )
        log.info(
            "%s: no change pending between the applied LSN %s and the source snapshot at %s",
            t.qualified_name,
            format_lsn(applied),
            format_lsn(lsn),
        )

    def _compare(
        self, snap: psycopg.Connection, dest: TableDestination, info: TableInfo, keys: KeySpace, plan: RangePlan
    ) -> list[dict]:
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN
        from airflow_pg_replication.source.snapshot_reads import CopyProgress, copy_batches

        t = self.table
        canon = [ColumnCanon(c) for c in info.columns]
        key_idx = [info.column_names.index(k) for k in keys.names]
        results = []
        with dest.arrow_client() as client:  # dlt's client: its cursors stream Arrow
            table = client.make_qualified_table_name(t.destination_table)
            try:
                with client.execute_query(compose("SELECT * FROM", table, "LIMIT 0")) as cur:
                    have = [d[0] for d in cur.description]
            except DatabaseUndefinedRelation:
                raise ReplicationError(
                    f"{t.qualified_name}: destination table {dest.describe()} does not exist; "
                    "run the full_refresh task first"
                ) from None
            missing = [c for c in info.column_names if c not in have]
            if missing:
                raise ReplicationError(
                    f"{t.qualified_name}: column(s) {', '.join(missing)} of the source are not in {dest.describe()} "
                    "(added after the last snapshot?); run full_refresh, or apply the changes that add them"
                )
            select = ", ".join(client.escape_column_name(c) for c in info.column_names)
            live = (
                compose(client.escape_column_name(DELETED_AT_COLUMN), "IS NULL") if DELETED_AT_COLUMN in have else None
            )
            for i, rng in enumerate(plan.ranges):
                started = time.monotonic()
                src = RangeDigest(self.detail_rows)
                progress = CopyProgress(t.qualified_name, every=60.0)
                for batch in copy_batches(
                    snap, info, lsn=None, block_bytes=self.chunk_bytes, progress=progress, where=keys.pg_predicate(rng)
                ):
                    src.feed([batch.column(j) for j in range(len(canon))], canon, key_idx)
                dst = RangeDigest(self.detail_rows)
                params: list = []
                if dest.keeps_postgres_types:  # PostgreSQL with the source's types: the source's own predicate
                    same = keys.pg_predicate(rng)
                    where = client.sql_text(same) if same is not None else None
                else:
                    where, params = keys.dest_predicate(client, rng)
                conds = [c for c in (where, live) if c]
                query = compose("SELECT", select, "FROM", table, *(["WHERE", " AND ".join(conds)] if conds else []))
                with client.execute_query(query, *params) as cur, warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")  # duckdb, harmless
                    for tbl in cur.iter_arrow(self.chunk_rows):
                        dst.feed([tbl.column(j) for j in range(len(canon))], canon, key_idx)
                res = range_result(i, len(plan.ranges), rng, keys.names, src, dst)
                log.info(
                    "%s: %s: %s source rows, %s destination rows: %s (%.1f s)",
                    t.qualified_name,
                    res["label"],
                    f"{src.rows:,}",
                    f"{dst.rows:,}",
                    "match" if res["ok"] else "DIFFERENT",
                    time.monotonic() - started,
                )
                results.append(res)
        return results


def _plan(snap: psycopg.Connection, keys: KeySpace, n_ranges: int) -> RangePlan:
    """Count the source rows and pick range bounds at equal row-count steps in key order."""
    from airflow_pg_replication.source.catalog import one_value

    rows = one_value(snap, keys.count_query())
    bounds: list[tuple] = []
    if keys.names and rows and n_ranges > 1:
        texts = [tuple(r) for r in snap.execute(keys.bounds_query(), (range_step(rows, n_ranges),)).fetchall()]
        bounds = keys.typed_bounds(texts)
    return RangePlan(rows, plan_ranges(bounds, keys.nullable))


def _nullable_key_columns(conn: psycopg.Connection, info: TableInfo) -> bool:
    from airflow_pg_replication.source.catalog import one_value

    if not info.primary_key:
        return False
    nullable = one_value(
        conn,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s) AND NOT attnotnull",
        (info.oid, list(info.primary_key)),
    )
    return bool(nullable)


def _fmt_lsn(lsn: int | None) -> str:
    from airflow_pg_replication.source.pgoutput import format_lsn

    return format_lsn(lsn) if lsn else "none"
