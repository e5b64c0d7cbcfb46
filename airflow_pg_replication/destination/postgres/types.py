"""The PostgreSQL column type of a replica column: the source's own type where the destination has it.

A source column (its hints carry its :class:`.PgColumn`) gets its own built-in type with its
modifiers (``numeric(12,2)``, ``varchar(10)``, ``timestamptz(3)``, ``text[]``, ``jsonb``, ``uuid``,
``inet``, ranges, ...); an enum, a composite, an extension's type or any type the destination
database may not have (or reads differently: ``money`` follows lc_monetary, ``reg*`` resolve
names) becomes ``text`` holding its text output. Columns without a :class:`.PgColumn` (``_pg_lsn``,
``_pg_deleted_at``, the state table) are typed from their dlt hints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.columns import PG_COLUMN_HINT
from airflow_pg_replication.source.type_map import numeric_precision_scale

if TYPE_CHECKING:
    from psycopg import sql

    from airflow_pg_replication.source.type_map import PgColumn, PgType

#: Built-in types a replica column keeps: every value's text output is read back as the same value.
KEPT = frozenset(
    {
        "bool",
        "int2",
        "int4",
        "int8",
        "oid",
        "float4",
        "float8",
        "numeric",
        "text",
        "varchar",
        "bpchar",
        "char",
        "name",
        "bytea",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "json",
        "jsonb",
        "jsonpath",
        "xml",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "bit",
        "varbit",
        "tsvector",
        "tsquery",
        "point",
        "line",
        "lseg",
        "box",
        "path",
        "polygon",
        "circle",
        "pg_lsn",
        "int4range",
        "int8range",
        "numrange",
        "tsrange",
        "tstzrange",
        "daterange",
        "int4multirange",
        "int8multirange",
        "nummultirange",
        "tsmultirange",
        "tstzmultirange",
        "datemultirange",
    }
)

#: Types without an equality operator: rows are matched on their text output instead.
NO_EQUALITY = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})

_FROM_DLT = {
    "text": "text",
    "double": "float8",
    "bool": "bool",
    "date": "date",
    "binary": "bytea",
    "json": "jsonb",
    "wei": "numeric",
}


def _builtin(name: str, *modifiers: int) -> sql.Composable:
    from psycopg import sql

    ident = sql.Identifier("pg_catalog", name)
    if not modifiers:
        return ident
    return sql.SQL("{}({})").format(ident, sql.SQL(", ").join(sql.Literal(int(m)) for m in modifiers))


def _modifiers(t: PgType, typmod: int) -> tuple[int, ...]:
    """The type modifiers of ``typmod`` as written in SQL (``numeric(12,2)``: (12, 2))."""
    if typmod < 0:
        return ()
    name = t.name
    if name == "numeric":
        ps = numeric_precision_scale(typmod)
        return () if ps is None else ps
    if name in ("varchar", "bpchar"):
        return (typmod - 4,) if typmod >= 4 else ()
    if name in ("bit", "varbit", "time", "timetz", "timestamp", "timestamptz"):
        return (typmod,)
    return ()  # interval's fields and precision: a plain interval holds every value of it


def pg_type(col: PgColumn) -> sql.Composable:
    """The destination type of a source column (see the module docstring)."""
    from psycopg import sql

    t = col.type
    typmod = col.typmod if col.typmod >= 0 else t.typmod
    if t.element is not None:
        from airflow_pg_replication.source.type_map import PgColumn

        inner = pg_type(PgColumn(col.name, t.element, typmod))
        return sql.SQL("{}[]").format(inner)
    if t.is_enum or t.schema != "pg_catalog" or t.name not in KEPT:
        return _builtin("text")
    return _builtin(t.name, *_modifiers(t, typmod))


def hint_type(hint: dict[str, Any]) -> sql.Composable:
    """The destination type of a column from its hints: its source type when known, else its dlt type."""
    col = hint.get(PG_COLUMN_HINT)
    if col is not None:
        return pg_type(col)
    kind = hint.get("data_type") or "text"
    if kind == "bigint":
        bits = hint.get("precision") or 64
        return _builtin("int2" if bits <= 16 else "int4" if bits <= 32 else "int8")
    if kind == "decimal":
        p, s = hint.get("precision"), hint.get("scale")
        return _builtin("numeric", p, s or 0) if p is not None else _builtin("numeric")
    if kind == "timestamp":
        return _builtin("timestamptz" if hint.get("timezone", True) else "timestamp")
    if kind == "time":
        return _builtin("time")
    return _builtin(_FROM_DLT.get(kind, "text"))


def matched_as_text(type_name: str) -> bool:
    """Whether rows are matched on a column's text output: its destination type (for an array, its
    element type; pg_type's typname) has no equality operator."""
    return type_name in NO_EQUALITY
