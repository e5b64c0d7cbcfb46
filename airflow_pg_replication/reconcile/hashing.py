"""Canonical row values from either side of a reconciliation and their order-independent per-range hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_pg_replication.source.type_map import PgColumn, PgType

__all__ = ["ColumnCanon", "RangeDigest", "canonical_json", "canonical_number", "display_key", "row_hash"]

HASH_MASK = (1 << 128) - 1  # row hashes are summed modulo 2**128
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)


def canonical_number(v: Any) -> str:
    """A number as normalised decimal text: ``1.50`` and ``1.5`` alike, ``-0`` as ``0``, NaN/±Infinity kept."""
    d = v if isinstance(v, Decimal) else Decimal(str(v))
    if d.is_nan() or d.is_infinite():
        return str(d)
    return "0" if d == 0 else str(d.normalize())


def _json_number(o: Any) -> Any:
    if isinstance(o, Decimal):
        if o.is_finite() and o == o.to_integral_value():
            return int(o)  # 1.0 and 1 are the same JSON number
        return "\x00n" + canonical_number(o)  # marked, so a number never equals a string
    raise TypeError(f"not JSON: {type(o).__name__}")


def canonical_json(v: Any) -> str:
    """A JSON value (text, or already parsed) in canonical text: keys sorted, numbers exact and normalised."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v).decode()
    if not isinstance(v, str):  # parsed by the driver: go through text, so numbers are treated alike
        v = json.dumps(v, default=str)
    return _JSON_OUT.encode(_JSON_IN.decode(v))


_JSON_IN = json.JSONDecoder(parse_float=Decimal)
_JSON_OUT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_number)


class ColumnCanon:
    """Normalises one column's values, from either side, to a canonical, hashable Python form."""

    def __init__(self, col: PgColumn) -> None:
        import pyarrow as pa

        from airflow_pg_replication.source.type_map import arrow_type

        self.col = col
        self.target = arrow_type(col)
        at = self.target
        base = col.type.name if col.type.schema == "pg_catalog" and not col.type.is_enum else None
        element = col.type.element
        self.element = ColumnCanon(_element_of(col, element)) if element is not None and not col.type.as_text else None
        if base in ("json", "jsonb") and element is None:
            self.kind = "json"
        elif col.type.as_text:  # text transport: both sides give the type's text output
            self.kind = "text"
        elif self.element is not None:
            self.kind = "list"
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
        if self.element is not None and pa.types.is_list(arr.type):  # kind "list"
            return self._list_column(arr, self.element)
        return [None if v is None else self.value(v) for v in arr.to_pylist()]

    def _list_column(self, arr: pa.Array | pa.ChunkedArray, element: ColumnCanon) -> list:
        if element.kind == "temporal":  # convert the elements in Arrow (handles ±infinity)
            import pyarrow as pa

            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
            flat = element.column(arr.values)
            offsets, valid = arr.offsets.to_pylist(), arr.is_valid().to_pylist()
            return [("[", tuple(flat[offsets[i] : offsets[i + 1]])) if valid[i] else None for i in range(len(arr))]
        return [None if v is None else self.value(v) for v in arr.to_pylist()]

    def _decimal_column(self, arr: pa.Array | pa.ChunkedArray) -> list:
        """Decimals as the column's decimal type rendered as text (same scale on both sides)."""
        import pyarrow as pa

        try:
            if not pa.types.is_decimal(arr.type):  # e.g. a destination that returns floats or strings
                arr = pa.array([None if v is None else Decimal(str(v)) for v in arr.to_pylist()], self.target)
            elif arr.type != self.target:
                arr = arr.cast(self.target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ArithmeticError):
            return [None if v is None else canonical_number(v) for v in arr.to_pylist()]  # cannot hold it: will differ
        return arr.cast(pa.string()).to_pylist()

    def _temporal_column(self, arr: pa.Array | pa.ChunkedArray) -> list:
        import pyarrow as pa

        from airflow_pg_replication.source.type_map import text_to_arrow

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
            return canonical_number(v)
        if k == "bool":
            return v if isinstance(v, bool) else str(v).lower() in ("true", "t", "1")
        if k == "binary":
            if isinstance(v, str):
                return bytes.fromhex(v[2:]) if v.startswith("\\x") else v.encode()
            return bytes(v)
        if k == "temporal":
            return self._temporal_value(v)
        if k == "json":
            return canonical_json(v)
        if self.element is not None:  # kind "list"
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = bytes(v).decode()
            items = _JSON_IN.decode(v) if isinstance(v, str) else v
            if self.element.kind in ("int", "text", "bool"):
                return ("[", tuple(items))
            return ("[", tuple(self.element.value(x) for x in items))
        return v if isinstance(v, str) else str(v)

    def _temporal_value(self, v: Any) -> int:
        import pyarrow as pa

        from airflow_pg_replication.source.type_map import text_to_arrow

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

        if c is None or (isinstance(c, (bool, int, float, str)) and self.kind != "temporal"):
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


def _element_of(col: PgColumn, element: PgType) -> PgColumn:
    from airflow_pg_replication.source.type_map import PgColumn

    return PgColumn(f"{col.name}[]", element, col.typmod if col.typmod >= 0 else col.type.typmod)


def _same_family(actual: pa.DataType, target: pa.DataType) -> bool:
    import pyarrow as pa

    for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string):
        if check(target):
            return check(actual)
    return False


def row_hash(row: tuple) -> int:
    """A 128-bit BLAKE2b hash of a row of canonical values."""
    return int.from_bytes(hashlib.blake2b(repr(row).encode(), digest_size=16).digest(), "big")


def display_key(values: list, canon: list[ColumnCanon]) -> Any:
    """Canonical key values in readable form: the value itself for a one-column key, else a list."""
    shown = [c.display(v) for c, v in zip(canon, values)]
    return shown[0] if len(shown) == 1 else shown


@dataclass
class RangeDigest:
    """One side of one range: row count, sum of row hashes, and (while small) each key's row hash."""

    limit: int
    rows: int = 0
    digest: int = 0
    keys: dict | None = field(default_factory=dict)  # canonical key -> [row hash, display key, count]

    def feed(self, arrays: list, canon: list[ColumnCanon], key_idx: list[int]) -> None:
        """Add a batch given as one Arrow column per entry of ``canon``; ``key_idx`` are the key columns."""
        columns = [c.column(a) for c, a in zip(canon, arrays)]
        for row in zip(*columns):
            h = row_hash(row)
            self.rows += 1
            self.digest = (self.digest + h) & HASH_MASK
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
            if isinstance(key, tuple):  # a key column (else the row's hash: the row is its own key)
                shown = display_key(list(key), [canon[i] for i in key_idx])
            else:
                shown = display_key(list(row), canon)
            self.keys[key] = [h, shown, 1]
