"""Read a table over ADBC's binary COPY into Arrow, under the snapshot of a psycopg transaction.

PostgreSQL's binary COPY costs the server about half what text or CSV output does, and ADBC's
PostgreSQL driver decodes it into Arrow in C++. Columns whose binary form ADBC decodes into
exactly the Arrow type of our type map (:data:`NATIVE`) travel binary; every other column
travels as its text output (``::text``) and goes through :func:`.typemap.text_to_arrow`, the
same parser the CDC path uses, so both paths give identical types and values (``::text`` is
the type's output function for every type that reaches it; ``inet``, whose cast to text adds
``/32``, is sent as ``abbrev()``, its output form). Arrays of text,
integers or bool travel as JSON documents, parsed by Arrow's C++ JSON reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_pg_replication.source.text_values import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    TextParseError,
)
from airflow_pg_replication.source.type_map import arrow_type, base_type_name, text_to_arrow

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.type_map import PgColumn

#: PostgreSQL base types read binary: ADBC's Arrow type for them is our type map's.
NATIVE = frozenset(
    {
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "bool",
        "text",
        "varchar",
        "bpchar",
        "bytea",
        "date",
        "timestamp",
        "timestamptz",
        "json",
        "jsonb",
    }
)

# ADBC shifts PostgreSQL's 2000-01-01 epoch to 1970 with wrapping arithmetic, so PostgreSQL's
# ±infinity (the extreme int64 / int32) arrive as these values; anything else below the
# earliest PostgreSQL timestamp (4713 BC) is a wrapped value from after 294247 AD.
_US_2000 = 946_684_800_000_000
_DAYS_2000 = 10_957
_TS_WRAPPED = {(2**63 - 1) + _US_2000 - 2**64: TIMESTAMP_INFINITY, -(2**63) + _US_2000: TIMESTAMP_NEG_INFINITY}
_DATE_WRAPPED = {(2**31 - 1) + _DAYS_2000 - 2**32: DATE_INFINITY, -(2**31) + _DAYS_2000: DATE_NEG_INFINITY}
_TS_EARLIEST = -210_866_803_200_000_000  # 4714-11-24 BC, a little before PostgreSQL's first timestamp
_DATE_EARLIEST = -2_440_588  # 4713-01-01 BC, PostgreSQL's first date

#: Element types of arrays read binary (1-D only: a guard column refuses more dimensions,
#: which ADBC would flatten). Other arrays travel as JSON or as text.
NATIVE_ELEMENTS = frozenset({"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar"})

_JSON_ELEMENT_TYPES = ("string", "int16", "int32", "int64", "bool")


def _json_list_type(col: PgColumn) -> pa.DataType | None:
    """For a 1-D array whose elements JSON carries exactly (text-like, integers, bool): its list type."""
    import pyarrow as pa

    typ = arrow_type(col)
    if not pa.types.is_list(typ) or str(typ.value_type) not in _JSON_ELEMENT_TYPES:
        return None
    if col.type.element is not None and col.type.element.name in ("json", "jsonb"):
        return None  # JSON elements would arrive as documents, not as their text
    return typ


def _json_lists(docs: pa.Array, typ: pa.DataType) -> pa.Array:
    """``{"v": [...]}`` documents, one per row -> the list column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import json as pajson

    if len(docs) == 0:
        return pa.array([], typ)
    lines = pc.binary_join_element_wise(docs, pa.scalar("\n"), "")
    offsets = lines.buffers()[1]
    start, end = (
        int.from_bytes(offsets[i * 4 : (i + 1) * 4], "little", signed=True)
        for i in (lines.offset, lines.offset + len(lines))
    )
    data = lines.buffers()[2][start:end]
    table = pajson.read_json(
        pa.BufferReader(data),
        parse_options=pajson.ParseOptions(explicit_schema=pa.schema([("v", typ)]), newlines_in_values=False),
    )
    return table.column("v").combine_chunks()


def _unwrap_infinities(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    """Map ADBC's wrapped ±infinity to our sentinels; refuse other wrapped (out of range) values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_date = pa.types.is_date(to)
    raw = values.view(pa.int32() if is_date else pa.int64())
    earliest, wrapped = (_DATE_EARLIEST, _DATE_WRAPPED) if is_date else (_TS_EARLIEST, _TS_WRAPPED)
    lowest = pc.min(raw).as_py()
    if lowest is None or lowest >= earliest:
        return values
    special = pc.is_in(raw, pa.array(list(wrapped), raw.type))
    bad = pc.and_(pc.less(raw, earliest), pc.invert(special))
    idx = pc.index(bad, True).as_py()
    if idx >= 0:
        raise TextParseError(column, raw[idx].as_py(), f"outside the range of {to} (after 294247 AD)")
    for got, sentinel in wrapped.items():
        raw = pc.if_else(pc.equal(raw, got), pa.scalar(sentinel, raw.type), raw)
    return raw.view(to)


def adbc_connect(params: dict[str, Any], *, autocommit: bool = False) -> Any:
    """An ADBC PostgreSQL (dbapi) connection from libpq keyword parameters."""
    import adbc_driver_postgresql.dbapi as adbc
    from psycopg.conninfo import make_conninfo

    return adbc.connect(make_conninfo(**params), autocommit=autocommit)


def snapshot_session(conn: psycopg.Connection, snapshot: str) -> Any:
    """An ADBC connection in a read-only repeatable-read transaction at the exported ``snapshot``.

    ``conn`` only gives the connection parameters (it is not used: this may run on another thread).
    Close it with :func:`end_session`.
    """
    from psycopg import sql

    params = conn.info.get_parameters()
    if conn.info.password:
        params["password"] = conn.info.password
    adbc = adbc_connect(params)  # not autocommit: one transaction
    try:
        with adbc.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string())
    except BaseException:
        end_session(adbc)
        raise
    return adbc


def end_session(adbc: Any) -> None:
    """Roll back and close an ADBC connection of :func:`snapshot_session` (a broken one too)."""
    try:
        adbc.rollback()
    except Exception:  # a broken connection: closing is all there is to do
        pass
    finally:
        adbc.close()


class BinaryCopyReader:
    """One table's rows as Arrow record batches; :meth:`convert` gives each batch our column types.

    Use as a context manager. ``conn`` must be inside a repeatable-read transaction: its snapshot
    is exported and imported by an ADBC connection of the reader's own, so the rows are exactly
    what ``conn`` sees. With ``session`` (a :func:`snapshot_session`, kept open by its owner) the
    rows are read on it instead: readers of several ranges run at once on threads, each reading
    range after range on one connection.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        info: TableInfo,
        *,
        where: sql.Composable | None = None,
        block_bytes: int = 8 << 20,
        session: Any = None,
    ) -> None:
        self.conn = conn
        self.session = session
        self.info = info
        self.where = where
        self.block_bytes = block_bytes
        self._kinds = [self._kind(c) for c in info.columns]
        self._adbc: Any = None  # our own session, when not given one
        self._reader: Any = None
        self._cursor: Any = None

    @staticmethod
    def _kind(col: PgColumn) -> tuple[str, Any]:
        if col.type.as_text:  # text transport: the type's text output (numeric, time, arrays: ``::text`` is it)
            return "text", None
        name = base_type_name(col.type)
        if col.type.element is None and name in NATIVE:
            return "native", name
        if col.type.element is not None and base_type_name(col.type.element) in NATIVE_ELEMENTS:
            return "native_array", None
        json_list = _json_list_type(col)
        if json_list is not None:
            return "json_list", json_list
        return "text", None

    def query(self) -> sql.Composed:
        from psycopg import sql

        exprs: list[sql.Composable] = []
        for col, (kind, detail) in zip(self.info.columns, self._kinds):
            ident = sql.Identifier(col.name)
            if kind == "native":  # a domain's values as its base type; a no-op for a plain column
                exprs.append(sql.SQL("{}::{}").format(ident, sql.Identifier("pg_catalog", detail)))
            elif kind == "native_array":  # the array, then whether it has more than one dimension
                exprs.append(ident)
                exprs.append(sql.SQL("array_ndims({}) > 1").format(ident))
            elif kind == "json_list":
                exprs.append(sql.SQL("json_build_object('v', {})::text").format(ident))
            elif base_type_name(col.type) == "inet" and col.type.element is None:
                exprs.append(sql.SQL("abbrev({})").format(ident))  # inet's output; inet::text adds /32
            else:  # the type's output function, except the casts of bpchar, inet, bool (kept out of here)
                exprs.append(sql.SQL("{}::text").format(ident))
        return sql.SQL("SELECT {} FROM {}.{}{}").format(
            sql.SQL(", ").join(exprs),
            sql.Identifier(self.info.schema),
            sql.Identifier(self.info.name),
            sql.SQL(" WHERE ") + self.where if self.where is not None else sql.SQL(""),
        )

    def __enter__(self) -> BinaryCopyReader:
        from airflow_pg_replication.source.catalog import one_value

        try:
            if self.session is None:
                self._adbc = snapshot_session(self.conn, one_value(self.conn, "SELECT pg_export_snapshot()"))
            self._cursor = cur = (self.session or self._adbc).cursor()  # the reader lives while its cursor does
            cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(self.block_bytes)})
            cur.execute(self.query().as_string())  # needs no connection (none touched on a reader's thread)
            self._reader = cur.fetch_record_batch()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __iter__(self):
        return iter(self._reader)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
            if self._cursor is not None:
                self._cursor.close()
        finally:
            if self._adbc is not None:
                end_session(self._adbc)
            self._reader = self._cursor = self._adbc = None

    def convert(self, batch: pa.RecordBatch) -> list[pa.Array]:
        """The batch's columns as arrays of :func:`.typemap.arrow_type`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out = []
        i = 0
        for col, (kind, detail) in zip(self.info.columns, self._kinds):
            values = batch.column(i)
            i += 1
            if kind == "native_array":
                multi = batch.column(i)
                i += 1
                if pc.any(multi).as_py():
                    raise TextParseError(col.name, None, "multi-dimensional arrays are not supported")
            if kind == "json_list":
                out.append(_json_lists(values, detail))
                continue
            if kind == "text":
                out.append(text_to_arrow(values, col))
                continue
            if isinstance(values.type, pa.ExtensionType):  # json/jsonb: arrow.json over string
                values = values.storage
            to = arrow_type(col)  # for arrays: the same list type, with no field metadata
            if pa.types.is_date(to) or pa.types.is_timestamp(to):
                values = _unwrap_infinities(values, to, col.name)
            out.append(values if values.type == to else values.cast(to))
        return out
