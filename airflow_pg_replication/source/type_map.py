"""Map PostgreSQL types and their TEXT output to Arrow arrays and dlt column hints.

The CDC (pgoutput) path hands us the types' TEXT output, and so does the snapshot for every
type it does not read binary (see :mod:`.binary_copy`, whose binary columns are checked to equal
this parser's result), produced under ``TimeZone=UTC``, ``DateStyle=ISO, MDY``,
``IntervalStyle=iso_8601``, ``extra_float_digits=3`` and ``bytea_output=hex``, as Arrow
``string`` arrays (null = SQL NULL). :func:`text_to_arrow` turns such a column into one
typed Arrow array (vectorised with ``pyarrow.compute``; see :mod:`.textparse`), so both
paths produce identical types and values.

Rules
-----
* Types are resolved through domains to their ultimate base type; a domain's typmod
  (e.g. ``numeric(10,2)``) applies when the column's own typmod is -1.
* ``int2/int4/int8/oid`` -> int16/int32/int64/int64; ``float4/float8`` -> float32/float64,
  keeping ``NaN`` and ``±Infinity`` as IEEE NaN/±inf; ``bool`` -> bool.
* ``numeric(p,s)`` -> ``decimal128(p,s)`` (``decimal256`` when p > 38, which DuckDB, limited
  to DECIMAL(38), refuses at load).
  A negative scale (PG 15+) becomes ``(p-s, 0)``, a scale above the precision ``(s, s)``.
  Unbounded ``numeric`` -> ``decimal128(38, 9)``, dlt's default decimal. Conversion is
  exact or fails: a value with more integer or (non-zero) fractional digits than the type
  holds, and numeric ``NaN``/``±Infinity`` (no decimal equivalent), raise
  :class:`TextParseError` naming column and value; declare ``numeric(p,s)`` or ``float8``.
* ``date`` -> date32; ``time`` -> time64[us] ('24:00:00', outside Arrow's time64 range,
  becomes 23:59:59.999999); ``timestamp`` -> timestamp[us]; ``timestamptz`` ->
  timestamp[us, UTC] (any ``±hh[:mm[:ss]]`` offset is applied). BC dates and years > 9999
  are converted exactly (proleptic Gregorian, as PostgreSQL); timestamps after
  294247-01-10 (the end of Arrow's int64 microseconds) raise :class:`TextParseError`.
* ``infinity``/``-infinity`` dates and timestamps map to the sentinels DuckDB uses for its
  own ±infinity: ±(2**63-1) us and ±(2**31-1) days, so they load into DuckDB as
  ``infinity``/``-infinity``. They are outside Python's ``datetime`` range, so
  ``to_pylist()`` on them raises; inspect them with ``.view(pa.int64())`` (dates:
  ``pa.int32()``). Other destinations may reject them loudly; none gets a wrong date.
* ``interval`` -> string in ISO 8601 (``P1Y2M3DT4H5M6.789S``): dlt has no interval type
  and Arrow's month_day_nano interval cannot be written to parquet.
* ``uuid`` -> string (canonical lower-case form; dlt has no uuid type).
* ``json``/``jsonb`` -> string with dlt ``data_type: json``; JSON ``null`` stays the
  string ``'null'``, only SQL NULL is null.
* ``bytea`` -> binary (hex output decoded). ``char(n)``/``bpchar`` keep their padding.
* Enums, ``text``, ``varchar``, ``name``, ``timetz``, ``inet``, ``cidr``, ``macaddr``,
  ``xml``, ``money``, ranges, composites, extension types (``citext``, ...) and any other
  type -> string, unchanged.
* Arrays -> ``list_(element type)`` with elements converted by the same rules (``json[]``
  elements stay JSON text strings) and dlt ``data_type: json``; DuckDB stores them as JSON
  arrays. Only 1-D values are supported: non-default lower bounds (``[0:1]={1,2}``) are
  dropped, multi-dimensional values raise :class:`TextParseError`.
* dlt hints carry ``nullable`` from :class:`PgColumn` (default True: CDC cannot know).
* **Text transport** (:func:`text_transport`, for a PostgreSQL destination, whose columns have
  the source's own types): ``numeric``, ``time`` and every array travel as their text output,
  unparsed (Arrow ``string``), because Arrow would lose some of their values (numeric
  ``NaN``/``±Infinity`` and digits past ``decimal128``, ``24:00:00``, array bounds and dimensions)
  that PostgreSQL holds. Every other type maps as above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from airflow_pg_replication.source import array_literals
from airflow_pg_replication.source import text_values as textparse
from airflow_pg_replication.source.text_values import TextParseError

__all__ = [
    "TYPE_CATALOG_SQL",
    "UNBOUNDED_NUMERIC",
    "PgColumn",
    "PgType",
    "TextParseError",
    "arrow_type",
    "base_type_name",
    "dlt_column_hints",
    "numeric_precision_scale",
    "resolve_types",
    "text_to_arrow",
    "text_to_table",
    "text_transport",
    "typed_transport",
]

# Parameter: the requested type oids as ``int[]`` (psycopg: a list of ints). Returns one row
# for each requested type AND for every type it refers to (domain base types, array element
# types, recursively), so that :func:`resolve_types` can resolve domains and arrays to their
# ultimate base types:
#   oid          int8  the type's oid
#   nspname      text  its schema
#   typname      text  its name
#   typtype      char  'b' base, 'd' domain, 'e' enum, 'c' composite, 'r' range, ...
#   typcategory  char  pg_type.typcategory ('A' array, 'N' numeric, 'S' string, ...)
#   typbasetype  int8  for a domain, the type it is defined over, else 0
#   typtypmod    int4  for a domain, the typmod of its base type (e.g. numeric(10,2)), else -1
#   typelem      int8  for a true array type, its element type, else 0
#   typdelim     text  the array element delimiter of this type (',' except box: ';')
TYPE_CATALOG_SQL = """
WITH RECURSIVE closure(oid) AS (
    SELECT unnest(%s::int8[])::oid
  UNION
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE e.oid END
      FROM closure c
      JOIN pg_catalog.pg_type t ON t.oid = c.oid
      LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND e.typarray = t.oid
     WHERE t.typtype = 'd' OR e.oid IS NOT NULL
)
SELECT t.oid::int8 AS oid,
       n.nspname::text AS nspname,
       t.typname::text AS typname,
       t.typtype::text AS typtype,
       t.typcategory::text AS typcategory,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE 0 END)::int8 AS typbasetype,
       (CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE -1 END)::int4 AS typtypmod,
       COALESCE(e.oid, 0)::int8 AS typelem,
       t.typdelim::text AS typdelim
  FROM closure c
  JOIN pg_catalog.pg_type t ON t.oid = c.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND e.typarray = t.oid
 ORDER BY t.oid
"""
_CATALOG_COLUMNS = (
    "oid",
    "nspname",
    "typname",
    "typtype",
    "typcategory",
    "typbasetype",
    "typtypmod",
    "typelem",
    "typdelim",
)


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL type resolved through domains: ``name`` is the ultimate base typname."""

    oid: int
    name: str
    is_enum: bool = False
    element: PgType | None = None
    typmod: int = -1  # the domain's base typmod, used when the column's typmod is -1
    schema: str = "pg_catalog"
    delimiter: str = ","  # typdelim; for an array type, its element's (',' except box: ';')
    #: Values travel as their text output, unparsed (see "Text transport" above; :func:`text_transport`).
    as_text: bool = False


#: Types whose values Arrow cannot always hold exactly: under text transport they travel as text.
_LOSSY_IN_ARROW = frozenset({"numeric", "time"})


def text_transport(t: PgType) -> PgType:
    """``t`` marked to travel as its text output when Arrow could lose some of its values (numeric,
    time, arrays); other types unchanged. For a destination that stores the source's own types."""
    if t.as_text:
        return t
    if t.element is not None or base_type_name(t) in _LOSSY_IN_ARROW:
        return dataclasses.replace(t, as_text=True)
    return t


def typed_transport(t: PgType) -> PgType:
    """``t`` without text transport: the type map's own Arrow type for it."""
    return dataclasses.replace(t, as_text=False) if t.as_text else t


@dataclass(frozen=True)
class PgColumn:
    """A column: name, resolved type and ``atttypmod`` (for arrays: the element's typmod)."""

    name: str
    type: PgType
    typmod: int = -1
    nullable: bool = True


def resolve_types(rows: Sequence[Sequence[Any] | Mapping[str, Any]]) -> dict[int, PgType]:
    """Resolve :data:`TYPE_CATALOG_SQL` rows (tuples or dict rows) into ``{oid: PgType}``."""
    raw: dict[int, dict[str, Any]] = {}
    for row in rows:
        rec = dict(row) if isinstance(row, Mapping) else dict(zip(_CATALOG_COLUMNS, row))
        raw[int(rec["oid"])] = rec
    done: dict[int, PgType] = {}

    def resolve(oid: int, seen: tuple[int, ...] = ()) -> PgType:
        if oid in done:
            return done[oid]
        if oid not in raw or oid in seen:
            raise KeyError(f"type oid {oid} missing from the TYPE_CATALOG_SQL rows")
        rec = raw[oid]
        if rec["typtype"] == "d":
            base = resolve(int(rec["typbasetype"]), (*seen, oid))
            typmod = int(rec["typtypmod"]) if int(rec["typtypmod"]) >= 0 else base.typmod
            result = PgType(oid, base.name, base.is_enum, base.element, typmod, base.schema, base.delimiter)
        else:
            elem = int(rec["typelem"] or 0)
            element = resolve(elem, (*seen, oid)) if elem else None
            delimiter = element.delimiter if element else (rec.get("typdelim") or ",")
            result = PgType(oid, rec["typname"], rec["typtype"] == "e", element, -1, rec["nspname"], delimiter)
        done[oid] = result
        return result

    for oid in raw:
        resolve(oid)
    return done


def _typmod(col: PgColumn) -> int:
    return col.typmod if col.typmod >= 0 else col.type.typmod


def _element_column(col: PgColumn) -> PgColumn:
    assert col.type.element is not None
    return PgColumn(f"{col.name}[]", col.type.element, _typmod(col), True)


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    """``(precision, scale)`` of a ``numeric`` typmod (PG 15 signed scale), None if unbounded."""
    if typmod < 4:
        return None
    return ((typmod - 4) >> 16) & 0xFFFF, (((typmod - 4) & 0x7FF) ^ 1024) - 1024


UNBOUNDED_NUMERIC = (38, 9)

_SCALARS: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


def base_type_name(t: PgType) -> str | None:
    """The pg_catalog type name that drives the mapping, None for text-like types."""
    return None if t.is_enum or t.schema != "pg_catalog" else t.name


def _decimal_type(col: PgColumn) -> pa.DataType:
    ps = numeric_precision_scale(_typmod(col))
    p, s = UNBOUNDED_NUMERIC if ps is None else ps
    p, s = (p - s, 0) if s < 0 else (max(p, s), s)
    return pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)


def arrow_type(col: PgColumn) -> pa.DataType:
    """The Arrow type :func:`text_to_arrow` produces for ``col`` (see "Rules")."""
    if col.type.as_text:
        return pa.string()
    if col.type.element is not None:
        return pa.list_(arrow_type(_element_column(col)))
    name = base_type_name(col.type)
    if name == "numeric":
        return _decimal_type(col)
    return _SCALARS.get(name or "", pa.string())


def dlt_column_hints(col: PgColumn) -> dict[str, Any]:
    """The dlt column schema entry for ``col`` so destinations create the intended types."""
    if col.type.as_text:  # the same column: its transport does not change its type
        col = dataclasses.replace(col, type=typed_transport(col.type))
    hints: dict[str, Any] = {"name": col.name, "nullable": col.nullable}
    name = base_type_name(col.type)
    if col.type.element is not None or name in ("json", "jsonb"):
        hints["data_type"] = "json"
        return hints
    at = arrow_type(col)
    if pa.types.is_integer(at):
        hints["data_type"] = "bigint"
        if at.bit_width != 64:
            hints["precision"] = at.bit_width
    elif pa.types.is_decimal(at):
        hints.update(data_type="decimal", precision=at.precision, scale=at.scale)
    elif pa.types.is_timestamp(at):
        hints.update(data_type="timestamp", precision=6, timezone=at.tz is not None)
    elif pa.types.is_time(at):
        hints.update(data_type="time", precision=6)
    else:
        hints["data_type"] = {
            pa.float32(): "double",
            pa.float64(): "double",
            pa.bool_(): "bool",
            pa.binary(): "binary",
            pa.date32(): "date",
        }.get(at, "text")
    return hints


def text_to_arrow(values: pa.Array | pa.ChunkedArray | Sequence[str | None], col: PgColumn) -> pa.Array:
    """Convert PostgreSQL TEXT output values (None = SQL NULL) to an array of ``arrow_type``."""
    values = textparse.as_string_array(values)
    if col.type.as_text:  # text transport: the text output itself
        return values
    to = arrow_type(col)
    if col.type.element is not None:
        element = _element_column(col)
        return array_literals.parse_array(values, to, lambda v: text_to_arrow(v, element), col.name, col.type.delimiter)
    if pa.types.is_string(to):
        return values
    if pa.types.is_integer(to):
        return textparse.parse_int(values, to, col.name)
    if pa.types.is_floating(to):
        return textparse.parse_float(values, to, col.name)
    if pa.types.is_decimal(to):
        declared = numeric_precision_scale(_typmod(col))
        return textparse.parse_decimal(
            values, to, col.name, fits=declared is not None and declared[1] >= 0 and declared[0] <= 38
        )
    if pa.types.is_boolean(to):
        return textparse.parse_bool(values, col.name)
    if pa.types.is_binary(to):
        return textparse.parse_bytea(values, col.name)
    if pa.types.is_date(to):
        return textparse.parse_date(values, col.name)
    if pa.types.is_time(to):
        return textparse.parse_time(values, col.name)
    if pa.types.is_timestamp(to):
        return textparse.parse_timestamp(values, col.name, tz=to.tz is not None)
    raise AssertionError(f"unhandled arrow type {to}")  # pragma: no cover


def text_to_table(columns: Mapping[str, Any], pg_columns: Sequence[PgColumn]) -> pa.Table:
    """Convert each of ``pg_columns`` from ``columns[name]`` into one typed Arrow table."""
    names = [c.name for c in pg_columns]
    missing = [n for n in names if n not in columns]
    extra = [n for n in columns if n not in set(names)]
    if missing or extra:
        raise ValueError(f"columns do not match pg_columns: missing {missing}, extra {extra}")
    fields = [pa.field(c.name, arrow_type(c), nullable=c.nullable) for c in pg_columns]
    arrays = [text_to_arrow(columns[c.name], c) for c in pg_columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
