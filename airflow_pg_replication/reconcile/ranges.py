"""Key-range planning, range predicates for both sides, and range result comparison/reporting for reconciliation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import sql

    from airflow_pg_replication.reconcile.hashing import RangeDigest
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.type_map import PgColumn

__all__ = [
    "KeyRange",
    "KeySpace",
    "RangePlan",
    "format_key",
    "mismatch_message",
    "plain",
    "plan_ranges",
    "public_result",
    "range_result",
    "range_step",
]

_TEXT_TYPES = ("text", "varchar", "bpchar", "name")  # ordered by COLLATE "C" directly
SHOWN_KEYS = 10  # keys named per list in the error message (the result lists up to detail_rows)


@dataclass(frozen=True)
class KeyRange:
    lower: tuple | None  # inclusive; (text values, typed values), None: unbounded
    upper: tuple | None  # exclusive
    nulls: bool = False  # the rows whose key has a NULL (only for nullable key columns)


@dataclass
class RangePlan:
    source_rows: int
    ranges: list[KeyRange]


def range_step(rows: int, n_ranges: int) -> int:
    """Rows per range: bounds are the keys at every ``step``-th position in key order."""
    return math.ceil(rows / n_ranges)


def plan_ranges(bounds: Sequence[tuple], nullable: bool) -> list[KeyRange]:
    """Ranges ``[start, b1), [b1, b2), ..., [bn, end)`` from sorted bounds, plus the NULL-key range if any."""
    edges = [None, *bounds, None]
    ranges = [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    if nullable:
        ranges.append(KeyRange(None, None, nulls=True))
    return ranges


class KeySpace:
    """The table's key columns, their ordering expressions and the range predicates on both sides."""

    def __init__(self, info: TableInfo, nullable: bool) -> None:
        by_name = {c.name: c for c in info.columns}
        self.info = info
        self.names = list(info.primary_key)
        self.columns = [by_name[n] for n in self.names]
        self.nullable = nullable

    def _expr(self, col: PgColumn) -> sql.Composable:
        """How PostgreSQL orders the column the way the destination orders its copy."""
        import pyarrow as pa
        from psycopg import sql

        from airflow_pg_replication.source.type_map import arrow_type, typed_transport

        col = dataclasses.replace(col, type=typed_transport(col.type))  # ordered by the type, however it travels
        ident = sql.Identifier(col.name)
        if (
            col.type.element is None
            and col.type.schema == "pg_catalog"
            and not col.type.is_enum
            and col.type.name in _TEXT_TYPES
        ):
            return sql.SQL('{} COLLATE "C"').format(ident)
        if pa.types.is_string(arrow_type(col)):
            return sql.SQL('({}::text COLLATE "C")').format(ident)
        return ident

    def count_query(self) -> sql.Composed:
        from psycopg import sql

        return sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.info.schema, self.info.name))

    def bounds_query(self) -> sql.Composed:
        """The keys (as text) at every ``step``-th row in key order after the first; one ``%s``: the step."""
        from psycopg import sql

        idents = [sql.Identifier(n) for n in self.names]
        not_null = (
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(i) for i in idents)
            if self.nullable
            else sql.SQL("")
        )
        return sql.SQL(
            "SELECT {texts} FROM (SELECT {cols}, row_number() OVER (ORDER BY {order}) AS rn FROM {table}{nn}) s "
            "WHERE rn > 1 AND (rn - 1) %% %s = 0 ORDER BY rn"
        ).format(
            texts=sql.SQL(", ").join(sql.SQL("{}::text").format(i) for i in idents),
            cols=sql.SQL(", ").join(idents),
            order=sql.SQL(", ").join(self._expr(c) for c in self.columns),
            table=sql.Identifier(self.info.schema, self.info.name),
            nn=not_null,
        )

    def typed_bounds(self, texts: Sequence[tuple]) -> list[tuple]:
        """Bounds as ``(text values, typed values)`` from the key texts :meth:`bounds_query` returned."""
        if not texts:
            return []
        import pyarrow as pa

        from airflow_pg_replication.source.type_map import text_to_arrow

        typed = list(
            zip(
                *[
                    text_to_arrow(pa.array([r[j] for r in texts], pa.string()), c).to_pylist()
                    for j, c in enumerate(self.columns)
                ]
            )
        )
        return list(zip(texts, typed))

    def pg_predicate(self, rng: KeyRange) -> sql.Composable | None:
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

    def dest_predicate(self, client: Any, rng: KeyRange) -> tuple[str | None, list]:
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


# -- comparing and reporting ---------------------------------------------------------------------------


def range_result(i: int, n: int, rng: KeyRange, names: Sequence[str], src: RangeDigest, dst: RangeDigest) -> dict:
    """Compare range ``i`` of ``n`` (key columns ``names``); when it differs and is small, list the keys."""
    ok = src.rows == dst.rows and src.digest == dst.digest

    def bound(b: tuple | None) -> Any:
        if b is None:
            return None
        shown = [plain(v) for v in b[1]]
        return shown[0] if len(shown) == 1 else shown

    lower, upper = bound(rng.lower), bound(rng.upper)
    if rng.nulls:
        label = f"range {i + 1}/{n} (keys with NULLs)"
    elif not names:
        label = f"range {i + 1}/{n} (whole table: no key)"
    else:
        label = (
            f"range {i + 1}/{n} [{format_key(lower, names) if rng.lower else 'start'} .. "
            f"{format_key(upper, names) if rng.upper else 'end'})"
        )
    res: dict[str, Any] = {
        "range": i + 1,
        "label": label,
        "lower": lower,
        "upper": upper,
        "ok": ok,
        "source_rows": src.rows,
        "destination_rows": dst.rows,
    }
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
    for k, (_, shown, count) in dst.keys.items():
        other = src.keys.get(k)
        if other is None or other[2] < count:
            extra.append(shown)
    res.update(
        detail=True, missing=sorted(missing, key=repr), extra=sorted(extra, key=repr), changed=sorted(changed, key=repr)
    )
    return res


def plain(v: Any) -> Any:
    """A JSON-friendly form of a typed key value (range bounds in results)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    return str(v)


def format_key(key: Any, names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"{names[0]}={key!r}"
    if not names or not isinstance(key, list):
        return repr(key)
    return "(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, key)) + ")"


def public_result(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "ok"}


def mismatch_message(table: str, out: dict, bad: list[dict], names: list[str]) -> str:
    """The error naming each differing range and, where listed, its missing / extra / changed keys."""
    lines = [
        f"{table}: destination differs from the source at LSN {out['lsn']}: {len(bad)} of {out['ranges']} "
        f"range(s) differ (source {out['rows']:,} rows, destination {out['destination_rows']:,} rows)"
    ]
    key_names = names or []
    for r in bad:
        line = f"  {r['label']}: source {r['source_rows']:,} rows, destination {r['destination_rows']:,} rows"
        if r.get("detail"):
            for what in ("missing", "extra", "changed"):
                items = r[what]
                if items:
                    shown = ", ".join(format_key(k, key_names) for k in items[:SHOWN_KEYS])
                    more = f" and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
                    label = {
                        "missing": "missing in destination",
                        "extra": "extra in destination",
                        "changed": "changed",
                    }[what]
                    line += f"; {label}: {shown}{more}"
        else:
            line += "; too many rows to list the keys: narrow it down with more ranges"
        lines.append(line)
    lines.append("Fix: trigger the table's DAG with full_refresh=true to reload it.")
    return "\n".join(lines)
