"""PgReconcileOperator: compare a table's source and destination copies at a known LSN, range by range.

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
  snapshot loads with, the destination through dlt's ``sql_client`` as Arrow), every value is
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

import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Sequence

from airflow_pg_replication.destination_sql import compose
from airflow_pg_replication.errors import ReplicationError, SlotLostError
from airflow_pg_replication.operators.base import PgTableOperator

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import sql

    from airflow_pg_replication.source_catalog import TableInfo
    from airflow_pg_replication.typemap import PgColumn

log = logging.getLogger(__name__)

_MASK = (1 << 128) - 1
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)
_TEXT_TYPES = ("text", "varchar", "bpchar", "name")  # ordered by COLLATE "C" directly
_SHOWN_KEYS = 10  # keys named per list in the error message (the result lists up to detail_rows)


class PgReconcileOperator(PgTableOperator):
    """Compare source and destination row by row (count + content hash per key range) at a known LSN.

    Returns ``{"table", "rows", "lsn", "ranges", "mismatched_ranges", "ok", ...}``. When the copies
    differ it raises :class:`ReplicationError` naming the differing key ranges and, for small
    ranges, the differing keys (with ``fail_on_mismatch=False`` it returns ``ok: False`` instead).
    For CDC tables the comparison only runs when the destination has applied every change up to
    the source snapshot; see the module docstring for the rule and ``when_behind``.
    """

    template_fields: Sequence[str] = (*PgTableOperator.template_fields, "ranges", "when_behind")
    ui_color = "#e8f4d9"

    def __init__(
        self, *, ranges: int = 16, when_behind: str = "skip", detail_rows: int = 1000,
        fail_on_mismatch: bool = True, max_pending_scan: int = 100_000, chunk_rows: int = 50_000,
        chunk_bytes: int = 4 << 20, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if when_behind not in ("skip", "fail"):
            raise ValueError(f"when_behind must be 'skip' or 'fail', not {when_behind!r}")
        self.ranges = ranges
        self.when_behind = when_behind
        self.detail_rows = detail_rows
        self.fail_on_mismatch = fail_on_mismatch
        self.max_pending_scan = max_pending_scan
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes

    # -- the run ----------------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_pg_replication.pgoutput import format_lsn
        from airflow_pg_replication.snapshot import begin_snapshot

        t = self.target
        n_ranges = int(self.ranges)
        if n_ranges < 1:
            raise ValueError(f"ranges must be at least 1, not {self.ranges!r}")
        hook = self.source_hook()
        started = time.monotonic()
        with hook.connect() as conn, self.table_destination() as dest:
            state = dest.read_state()
            if state is None:
                raise ReplicationError(
                    f"{t.qualified_name}: nothing was loaded into {dest.describe()} yet (no replication state); "
                    "run the full_refresh task first")
            if state.status == "snapshotting":
                self._behind(f"{t.qualified_name}: destination is behind: a snapshot into {dest.describe()} "
                             "is in progress or failed (state: snapshotting); run full_refresh first")
            cdc = state.status == "ready"
            if cdc and state.slot != t.slot:
                raise ReplicationError(
                    f"{t.qualified_name}: the destination's snapshot was loaded for slot {state.slot}, not {t.slot}; "
                    "run full_refresh first")
            info = hook.table_info(conn, t.schema, t.name, columns=self.columns, primary_key=self.primary_key)
            applied = max(state.applied_lsn or 0, state.snapshot_lsn or 0)
            with hook.connect(autocommit=False) as snap:
                begin_snapshot(snap, None)
                lsn = hook.current_wal_lsn(snap)  # read after the snapshot was taken: it covers all it sees
                if cdc:
                    self._check_pending(hook, conn, info, applied, lsn)
                keys = _KeySpace(info, _nullable_key_columns(conn, info))
                plan = keys.plan(snap, n_ranges)
                log.info("%s: reconciling against %s at LSN %s%s: %s rows in the source, %d range(s) by %s",
                         t.qualified_name, dest.describe(), format_lsn(lsn),
                         f" (destination applied up to {format_lsn(applied)})" if cdc else "",
                         f"{plan.source_rows:,}", len(plan.ranges), ", ".join(keys.names) or "(no key: whole rows)")
                results = self._compare(snap, dest, info, keys, plan)
                snap.rollback()
            after = dest.read_state()
        moved = after is None or any(getattr(after, f) != getattr(state, f)
                                     for f in ("status", "applied_lsn", "snapshot_lsn", "cursor_value"))
        if moved:
            self._behind(f"{t.qualified_name}: the destination changed while it was compared (applied LSN "
                         f"{_fmt_lsn(state.applied_lsn)} -> {_fmt_lsn(after.applied_lsn if after else None)}); "
                         "the result is ambiguous: run the reconciliation again")
        bad = [r for r in results if not r["ok"]]
        secs = time.monotonic() - started
        out = {
            "table": t.qualified_name, "rows": sum(r["source_rows"] for r in results),
            "destination_rows": sum(r["destination_rows"] for r in results), "lsn": format_lsn(lsn),
            "applied_lsn": format_lsn(applied) if cdc else None, "mode": "cdc" if cdc else "loaded",
            "ranges": len(results), "mismatched_ranges": [_public(r) for r in bad], "ok": not bad,
            "seconds": round(secs, 3),
        }
        if not bad:
            log.info("%s: source and destination match at LSN %s: %s rows in %d range(s); %.1f s",
                     t.qualified_name, out["lsn"], f"{out['rows']:,}", len(results), secs)
            return out
        message = _mismatch_message(t.qualified_name, out, bad, keys.names)
        log.error("%s", message)
        if self.fail_on_mismatch:
            raise ReplicationError(message)
        return out

    def _behind(self, message: str) -> None:
        if self.when_behind == "fail":
            raise ReplicationError(message)
        from airflow.sdk.exceptions import AirflowSkipException

        log.info("%s", message)
        raise AirflowSkipException(message)

    def _check_pending(self, hook: Any, conn: Any, info: TableInfo, applied: int, lsn: int) -> None:
        """Skip/fail when the slot holds changes of the table committed after ``applied``, up to ``lsn``."""
        from airflow_pg_replication.changes import ChangeFolder
        from airflow_pg_replication.pgoutput import decode, format_lsn

        t = self.target
        slot = hook.slot_info(conn, t.slot)
        if slot is None or slot.lost:
            raise SlotLostError(
                f"{t.qualified_name}: replication slot {t.slot} is {'missing' if slot is None else 'invalidated'}, "
                "so the destination cannot catch up and cannot be compared at a known LSN. Resync: trigger the "
                "DAG with full_refresh=true.")
        folder = ChangeFolder(info.primary_key, applied_lsn=applied, relation_names={(t.schema, t.name)})
        messages = 0
        for _lsn, data in hook.peek_changes(conn, t.slot, t.publication, upto_lsn=lsn,
                                            max_changes=self.max_pending_scan):
            messages += 1
            folder.feed(decode(data))
        pending = folder.batch.changes
        cut = messages >= self.max_pending_scan
        if pending or cut:
            self._behind(
                f"{t.qualified_name}: destination is behind: {pending:,}{'+' if cut else ''} changes pending; "
                f"run apply_changes first (applied up to LSN {format_lsn(applied)}, the source is at "
                f"{format_lsn(lsn)})")
        log.info("%s: no change pending between the applied LSN %s and the source snapshot at %s",
                 t.qualified_name, format_lsn(applied), format_lsn(lsn))

    def _compare(self, snap: Any, dest: Any, info: TableInfo, keys: _KeySpace, plan: _Plan) -> list[dict]:
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        from airflow_pg_replication.loading import DELETED_AT_COLUMN
        from airflow_pg_replication.snapshot import CopyProgress, copy_batches

        t = self.target
        canon = [_Canon(c) for c in info.columns]
        key_idx = [info.column_names.index(k) for k in keys.names]
        results = []
        with dest.pipeline.sql_client() as client:
            table = client.make_qualified_table_name(t.destination_table)
            try:
                with client.execute_query(compose("SELECT * FROM", table, "LIMIT 0")) as cur:
                    have = [d[0] for d in cur.description]
            except DatabaseUndefinedRelation:
                raise ReplicationError(f"{t.qualified_name}: destination table {dest.describe()} does not exist; "
                                       "run the full_refresh task first") from None
            missing = [c for c in info.column_names if c not in have]
            if missing:
                raise ReplicationError(
                    f"{t.qualified_name}: column(s) {', '.join(missing)} of the source are not in {dest.describe()} "
                    "(added after the last snapshot?); run full_refresh, or apply the changes that add them")
            select = ", ".join(client.escape_column_name(c) for c in info.column_names)
            live = compose(client.escape_column_name(DELETED_AT_COLUMN), "IS NULL") if DELETED_AT_COLUMN in have else None
            for i, rng in enumerate(plan.ranges):
                started = time.monotonic()
                src = _Side(self.detail_rows)
                progress = CopyProgress(t.qualified_name, every=60.0)
                for batch in copy_batches(snap, info, lsn=None, block_bytes=self.chunk_bytes, progress=progress,
                                          where=keys.pg_predicate(rng)):
                    src.feed([batch.column(j) for j in range(len(canon))], canon, key_idx)
                dst = _Side(self.detail_rows)
                where, params = keys.dest_predicate(client, rng)
                conds = [c for c in (where, live) if c]
                query = compose("SELECT", select, "FROM", table, *(["WHERE", " AND ".join(conds)] if conds else []))
                with client.execute_query(query, *params) as cur, warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")  # duckdb, harmless
                    for tbl in cur.iter_arrow(self.chunk_rows):
                        dst.feed([tbl.column(j) for j in range(len(canon))], canon, key_idx)
                res = _range_result(i, len(plan.ranges), rng, keys, src, dst)
                log.info("%s: %s: %s source rows, %s destination rows: %s (%.1f s)", t.qualified_name,
                         res["label"], f"{src.rows:,}", f"{dst.rows:,}", "match" if res["ok"] else "DIFFERENT",
                         time.monotonic() - started)
                results.append(res)
        return results


# -- key ranges ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    lower: tuple | None  # inclusive; (text values, typed values), None: unbounded
    upper: tuple | None  # exclusive
    nulls: bool = False  # the rows whose key has a NULL (only for nullable key columns)


@dataclass
class _Plan:
    source_rows: int
    ranges: list[_Range]


def _nullable_key_columns(conn: Any, info: TableInfo) -> bool:
    if not info.primary_key:
        return False
    row = conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s) AND NOT attnotnull",
        (info.oid, list(info.primary_key)),
    ).fetchone()
    return bool(row[0])


class _KeySpace:
    """The table's key columns, their ordering expressions and the range predicates on both sides."""

    def __init__(self, info: TableInfo, nullable: bool) -> None:
        by_name = {c.name: c for c in info.columns}
        self.info = info
        self.names = list(info.primary_key)
        self.columns = [by_name[n] for n in self.names]
        self.nullable = nullable

    def _expr(self, col: PgColumn) -> sql.Composable:
        """How PostgreSQL orders the column the way the destination orders its copy."""
        from psycopg import sql

        from airflow_pg_replication.typemap import arrow_type

        import pyarrow as pa

        ident = sql.Identifier(col.name)
        if col.type.element is None and col.type.schema == "pg_catalog" and not col.type.is_enum \
                and col.type.name in _TEXT_TYPES:
            return sql.SQL('{} COLLATE "C"').format(ident)
        if pa.types.is_string(arrow_type(col)):
            return sql.SQL('({}::text COLLATE "C")').format(ident)
        return ident

    def plan(self, snap: Any, n_ranges: int) -> _Plan:
        """Count the source rows and pick range bounds at equal row-count steps in key order."""
        from psycopg import sql

        import pyarrow as pa

        from airflow_pg_replication.typemap import text_to_arrow

        table = sql.Identifier(self.info.schema, self.info.name)
        rows = snap.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        ranges: list[_Range] = []
        bounds: list[tuple] = []
        if self.names and rows and n_ranges > 1:
            step = math.ceil(rows / n_ranges)
            idents = [sql.Identifier(n) for n in self.names]
            not_null = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(
                sql.SQL("{} IS NOT NULL").format(i) for i in idents) if self.nullable else sql.SQL("")
            query = sql.SQL(
                "SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {order}) AS rn FROM {table}{nn}) s "
                "WHERE rn > 1 AND (rn - 1) %% %s = 0 ORDER BY rn"
            ).format(
                texts=sql.SQL(", ").join(sql.SQL("{}::text").format(i) for i in idents),
                cols=sql.SQL(", ").join(idents),
                order=sql.SQL(", ").join(self._expr(c) for c in self.columns),
                table=table, nn=not_null,
            )
            texts = [tuple(r) for r in snap.execute(query, (step,)).fetchall()]
            if texts:
                typed = list(zip(*[
                    text_to_arrow(pa.array([r[j] for r in texts], pa.string()), c).to_pylist()
                    for j, c in enumerate(self.columns)
                ]))
                bounds = list(zip(texts, typed))
        edges = [None, *bounds, None]
        ranges = [_Range(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
        if self.nullable:
            ranges.append(_Range(None, None, nulls=True))
        return _Plan(rows, ranges)

    def pg_predicate(self, rng: _Range) -> sql.Composable | None:
        from psycopg import sql

        if not self.names:
            return None
        if rng.nulls:
            return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(n)) for n in self.names)
        exprs = sql.SQL(", ").join(self._expr(c) for c in self.columns)
        parts = []
        for bound, op in ((rng.lower, ">="), (rng.upper, "<")):
            if bound is not None:
                lits = sql.SQL(", ").join(sql.Literal(v) for v in bound[0])
                parts.append(sql.SQL("({}) {} ({})").format(exprs, sql.SQL(op), lits))
        if self.nullable and not parts:
            parts = [sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(n)) for n in self.names)]
        return sql.SQL(" AND ").join(parts) if parts else None

    def dest_predicate(self, client: Any, rng: _Range) -> tuple[str | None, list]:
        """The same range for the destination: an expanded lexicographic comparison (portable SQL)."""
        if not self.names:
            return None, []
        names = [client.escape_column_name(n) for n in self.names]
        if rng.nulls:
            return "(" + " OR ".join(f"{n} IS NULL" for n in names) + ")", []
        parts, params = [], []
        for bound, strict, last in ((rng.lower, ">", ">="), (rng.upper, "<", "<")):
            if bound is None:
                continue
            values = bound[1]
            ors = []
            for i in range(len(names)):
                conds = [f"{names[j]} = %s" for j in range(i)]
                conds.append(f"{names[i]} {last if i == len(names) - 1 else strict} %s")
                params.extend([*values[:i], values[i]])
                ors.append("(" + " AND ".join(conds) + ")")
            parts.append("(" + " OR ".join(ors) + ")")
        if self.nullable and not parts:
            parts = [" AND ".join(f"{n} IS NOT NULL" for n in names)]
        return (" AND ".join(parts) if parts else None), params


# -- normalising and hashing -------------------------------------------------------------------------


def _num(v: Any) -> str:
    d = v if isinstance(v, Decimal) else Decimal(str(v))
    if d.is_nan() or d.is_infinite():
        return str(d)
    return "0" if d == 0 else str(d.normalize())


def _json_number(o: Any) -> Any:
    if isinstance(o, Decimal):
        if o.is_finite() and o == o.to_integral_value():
            return int(o)  # 1.0 and 1 are the same JSON number
        return "\x00n" + _num(o)  # marked, so a number never equals a string
    raise TypeError(f"not JSON: {type(o).__name__}")


def _json(v: Any) -> str:
    """A JSON value (text, or already parsed) in canonical text: keys sorted, numbers exact and normalised."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v).decode()
    if not isinstance(v, str):  # parsed by the driver: go through text, so numbers are treated alike
        v = json.dumps(v, default=str)
    return _JSON_OUT.encode(_JSON_IN.decode(v))


_JSON_IN = json.JSONDecoder(parse_float=Decimal)
_JSON_OUT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_number)


class _Canon:
    """Normalises one column's values, from either side, to a canonical, hashable Python form."""

    def __init__(self, col: PgColumn) -> None:
        import pyarrow as pa

        from airflow_pg_replication.typemap import arrow_type

        self.col = col
        self.target = arrow_type(col)
        at = self.target
        base = col.type.name if col.type.schema == "pg_catalog" and not col.type.is_enum else None
        self.element = _Canon(_element_of(col)) if col.type.element is not None else None
        if self.element is not None:
            self.kind = "list"
        elif base in ("json", "jsonb"):
            self.kind = "json"
        elif pa.types.is_integer(at):
            self.kind = "int"
        elif pa.types.is_floating(at):
            self.kind = "float"
        elif pa.types.is_decimal(at):
            self.kind = "decimal"
        elif pa.types.is_boolean(at):
            self.kind = "bool"
        elif pa.types.is_binary(at):
            self.kind = "binary"
        elif pa.types.is_timestamp(at) or pa.types.is_date(at) or pa.types.is_time(at):
            self.kind = "temporal"
        else:
            self.kind = "text"

    # vectorised path: a whole Arrow column
    def column(self, arr: pa.Array | pa.ChunkedArray) -> list:
        import pyarrow as pa

        if self.kind == "temporal":
            return self._temporal_column(arr)
        if self.kind == "decimal":
            return self._decimal_column(arr)
        if self.kind in ("int", "float", "bool", "text") and _same_family(arr.type, self.target):
            return arr.to_pylist()
        if self.kind == "list" and pa.types.is_list(arr.type):
            return self._list_column(arr)
        return [None if v is None else self.value(v) for v in arr.to_pylist()]

    def _list_column(self, arr: Any) -> list:
        if self.element.kind == "temporal":  # convert the elements in Arrow (handles ±infinity)
            import pyarrow as pa

            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
            flat = self.element.column(arr.values)
            offsets, valid = arr.offsets.to_pylist(), arr.is_valid().to_pylist()
            return [("[", tuple(flat[offsets[i]:offsets[i + 1]])) if valid[i] else None for i in range(len(arr))]
        return [None if v is None else self.value(v) for v in arr.to_pylist()]

    def _decimal_column(self, arr: Any) -> list:
        """Decimals as the column's decimal type rendered as text (same scale on both sides)."""
        import pyarrow as pa

        try:
            if not pa.types.is_decimal(arr.type):  # e.g. a destination that returns floats or strings
                arr = pa.array([None if v is None else Decimal(str(v)) for v in arr.to_pylist()], self.target)
            elif arr.type != self.target:
                arr = arr.cast(self.target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ArithmeticError):
            return [None if v is None else _num(v) for v in arr.to_pylist()]  # cannot hold it: will differ
        return arr.cast(pa.string()).to_pylist()

    def _temporal_column(self, arr: Any) -> list:
        import pyarrow as pa

        from airflow_pg_replication.typemap import text_to_arrow

        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = text_to_arrow(arr.cast(pa.string()), self.col)
        elif arr.type != self.target:
            try:
                arr = arr.cast(self.target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return [None if v is None else self.value(v) for v in arr.to_pylist()]
        as_int = pa.int32() if pa.types.is_date32(self.target) else pa.int64()
        return arr.cast(as_int).to_pylist()

    # per-value path: nested values and values of unexpected types
    def value(self, v: Any) -> Any:
        if v is None:
            return None
        k = self.kind
        if k == "int":
            return int(v)
        if k == "float":
            return float(v)
        if k == "decimal":
            return _num(v)
        if k == "bool":
            return v if isinstance(v, bool) else str(v).lower() in ("true", "t", "1")
        if k == "binary":
            if isinstance(v, str):
                return bytes.fromhex(v[2:]) if v.startswith("\\x") else v.encode()
            return bytes(v)
        if k == "temporal":
            return self._temporal_value(v)
        if k == "json":
            return _json(v)
        if k == "list":
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = bytes(v).decode()
            items = _JSON_IN.decode(v) if isinstance(v, str) else v
            if self.element.kind in ("int", "text", "bool"):
                return ("[", tuple(items))
            return ("[", tuple(self.element.value(x) for x in items))
        return v if isinstance(v, str) else str(v)

    def _temporal_value(self, v: Any) -> int:
        import pyarrow as pa

        from airflow_pg_replication.typemap import text_to_arrow

        at = self.target
        if isinstance(v, str):
            parsed = text_to_arrow(pa.array([v], pa.string()), self.col)
            return parsed.cast(pa.int32() if pa.types.is_date32(at) else pa.int64())[0].as_py()
        if isinstance(v, int):
            return v
        if pa.types.is_date(at):
            return ((v.date() if isinstance(v, datetime) else v) - _EPOCH_DATE).days
        if pa.types.is_time(at):
            return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
        if isinstance(v, datetime):
            if v.tzinfo is not None:
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
        else:  # a date where a timestamp was expected
            v = datetime(v.year, v.month, v.day)
        return (v - _EPOCH) // timedelta(microseconds=1)

    def display(self, c: Any) -> Any:
        """A readable, JSON-friendly form of a canonical value (for keys in messages and results)."""
        import pyarrow as pa

        if c is None or isinstance(c, (bool, int, float, str)) and self.kind != "temporal":
            return c
        if isinstance(c, bytes):
            return "\\x" + c.hex()
        if self.kind == "temporal":
            at = self.target
            try:
                if pa.types.is_date(at):
                    return (_EPOCH_DATE + timedelta(days=c)).isoformat()
                if pa.types.is_time(at):
                    return (datetime.min + timedelta(microseconds=c)).time().isoformat()
                out = _EPOCH + timedelta(microseconds=c)
                return out.replace(tzinfo=timezone.utc).isoformat() if at.tz else out.isoformat()
            except OverflowError:
                return "infinity" if c > 0 else "-infinity"
        return repr(c)


def _element_of(col: PgColumn) -> PgColumn:
    from airflow_pg_replication.typemap import PgColumn

    return PgColumn(f"{col.name}[]", col.type.element, col.typmod if col.typmod >= 0 else col.type.typmod)


def _same_family(actual: Any, target: Any) -> bool:
    import pyarrow as pa

    for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string):
        if check(target):
            return check(actual)
    return False


def _row_hash(row: tuple) -> int:
    return int.from_bytes(hashlib.blake2b(repr(row).encode(), digest_size=16).digest(), "big")


@dataclass
class _Side:
    """One side of one range: row count, sum of row hashes, and (while small) each key's row hash."""

    limit: int
    rows: int = 0
    digest: int = 0
    keys: dict | None = field(default_factory=dict)  # canonical key -> [row hash, display key, count]

    def feed(self, arrays: list, canon: list[_Canon], key_idx: list[int]) -> None:
        columns = [c.column(a) for c, a in zip(canon, arrays)]
        for row in zip(*columns):
            h = _row_hash(row)
            self.rows += 1
            self.digest = (self.digest + h) & _MASK
            if self.keys is None:
                continue
            key = tuple(row[i] for i in key_idx) if key_idx else h  # no key: a row is identified by its content
            entry = self.keys.get(key)
            if entry is not None:
                entry[2] += 1
                continue
            if len(self.keys) >= self.limit:
                self.keys = None
                continue
            shown = _display_key(list(key), [canon[i] for i in key_idx]) if key_idx else _display_key(list(row), canon)
            self.keys[key] = [h, shown, 1]


def _display_key(values: list, canon: list[_Canon]) -> Any:
    shown = [c.display(v) for c, v in zip(canon, values)]
    return shown[0] if len(shown) == 1 else shown


def _range_result(i: int, n: int, rng: _Range, keys: _KeySpace, src: _Side, dst: _Side) -> dict:
    ok = src.rows == dst.rows and src.digest == dst.digest

    def bound(b: tuple | None) -> Any:
        if b is None:
            return None
        shown = [_plain(v) for v in b[1]]
        return shown[0] if len(shown) == 1 else shown

    lower, upper = bound(rng.lower), bound(rng.upper)
    if rng.nulls:
        label = f"range {i + 1}/{n} (keys with NULLs)"
    elif not keys.names:
        label = f"range {i + 1}/{n} (whole table: no key)"
    else:
        label = (f"range {i + 1}/{n} [{_fmt_key(lower, keys.names) if rng.lower else 'start'} .. "
                 f"{_fmt_key(upper, keys.names) if rng.upper else 'end'})")
    res: dict[str, Any] = {"range": i + 1, "label": label, "lower": lower, "upper": upper, "ok": ok,
                           "source_rows": src.rows, "destination_rows": dst.rows}
    if ok:
        return res
    if src.keys is None or dst.keys is None:
        res["detail"] = False
        return res
    missing, extra, changed = [], [], []
    for k, (h, shown, count) in src.keys.items():
        other = dst.keys.get(k)
        if other is None or other[2] < count:
            missing.append(shown)
        elif other[0] != h:
            changed.append(shown)
    for k, (h, shown, count) in dst.keys.items():
        other = src.keys.get(k)
        if other is None or other[2] < count:
            extra.append(shown)
    res.update(detail=True, missing=sorted(missing, key=repr), extra=sorted(extra, key=repr),
               changed=sorted(changed, key=repr))
    return res


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    return str(v)


def _fmt_key(key: Any, names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"{names[0]}={key!r}"
    if not names or not isinstance(key, list):
        return repr(key)
    return "(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, key)) + ")"


def _fmt_lsn(lsn: int | None) -> str:
    from airflow_pg_replication.pgoutput import format_lsn

    return format_lsn(lsn) if lsn else "none"


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "ok"}


def _mismatch_message(table: str, out: dict, bad: list[dict], names: list[str]) -> str:
    lines = [f"{table}: destination differs from the source at LSN {out['lsn']}: {len(bad)} of {out['ranges']} "
             f"range(s) differ (source {out['rows']:,} rows, destination {out['destination_rows']:,} rows)"]
    key_names = names or []
    for r in bad:
        line = f"  {r['label']}: source {r['source_rows']:,} rows, destination {r['destination_rows']:,} rows"
        if r.get("detail"):
            for what in ("missing", "extra", "changed"):
                items = r[what]
                if items:
                    shown = ", ".join(_fmt_key(k, key_names) for k in items[:_SHOWN_KEYS])
                    more = f" and {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else ""
                    label = {"missing": "missing in destination", "extra": "extra in destination",
                             "changed": "changed"}[what]
                    line += f"; {label}: {shown}{more}"
        else:
            line += "; too many rows to list the keys: narrow it down with more ranges"
        lines.append(line)
    lines.append("Fix: trigger the table's DAG with full_refresh=true to reload it.")
    return "\n".join(lines)
