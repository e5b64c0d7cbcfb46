"""Read a PostgreSQL destination as the source is read: every value's text output, typed by the source's type map.

A cursor from :func:`text_cursor` returns each value as PostgreSQL's text output (under the
session of :mod:`.connection`); :class:`ResultTypes` types a result's columns from the
destination's catalog with the source's own rules (:mod:`airflow_pg_replication.source.type_map`,
text transport included), so what reconciliation and kept values read from the destination has
the very types and values the source gives.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    from airflow_pg_replication.source.type_map import PgColumn, PgType


@functools.cache
def _builtin_oids() -> tuple[int, ...]:
    from psycopg import postgres

    oids: set[int] = set()
    for info in postgres.types:  # every type psycopg would load into a Python object, and its array
        oids.add(info.oid)
        if info.array_oid:
            oids.add(info.array_oid)
    return tuple(sorted(oids))


def text_cursor(conn: psycopg.Connection, name: str | None = None) -> Any:
    """A cursor (server-side when named) that returns every value as its text output (a ``str``)."""
    from psycopg.types.string import TextLoader

    cur = conn.cursor(name=name) if name else conn.cursor()
    for oid in _builtin_oids():
        cur.adapters.register_loader(oid, TextLoader)
    return cur


class ResultTypes:
    """Types of result columns (oid, typmod) as :class:`PgColumn` s, resolved in the destination's catalog once."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._types: dict[int, PgType] = {}

    def columns(self, cur: Any) -> list[PgColumn]:
        """The columns of ``cur``'s current result, with text transport (as for a PostgreSQL destination)."""
        from airflow_pg_replication.source.catalog import resolve_column_types
        from airflow_pg_replication.source.type_map import PgColumn, text_transport

        res = cur.pgresult
        if res is None:
            raise RuntimeError("no result to type")
        fields = [(res.fname(i).decode(), res.ftype(i), res.fmod(i)) for i in range(res.nfields)]
        unknown = sorted({oid for _, oid, _ in fields if oid not in self._types})
        if unknown:
            self._types.update(resolve_column_types(self.conn, unknown))
        return [PgColumn(name, text_transport(self._types[oid]), fmod) for name, oid, fmod in fields]

    @staticmethod
    def arrow(rows: Sequence[Sequence[str | None]], columns: Sequence[PgColumn]) -> pa.Table:
        """Rows of text values as an Arrow table of the type map's types."""
        import pyarrow as pa

        from airflow_pg_replication.source.type_map import text_to_arrow

        arrays = [text_to_arrow(pa.array([r[j] for r in rows], pa.string()), c) for j, c in enumerate(columns)]
        return pa.Table.from_arrays(arrays, names=[c.name for c in columns])


class ArrowCursor:
    """A server-side cursor's rows as Arrow tables (see :meth:`PgArrowClient.execute_query`)."""

    def __init__(self, cur: Any, types: ResultTypes) -> None:
        self._cur = cur
        self._types = types
        self._columns: list[PgColumn] | None = None

    @property
    def description(self) -> Any:
        return self._cur.description

    def iter_arrow(self, chunk_size: int) -> Iterator[pa.Table]:
        while True:
            rows = self._cur.fetchmany(chunk_size)
            if not rows:
                return
            if self._columns is None:
                self._columns = self._types.columns(self._cur)
            yield self._types.arrow(rows, self._columns)


class PgArrowClient:
    """What reconciliation asks of a destination's SQL client: quoted names, and queries streamed as Arrow.

    Names are quoted by psycopg (:class:`psycopg.sql.Identifier`); :meth:`sql_text` renders a
    composed statement (say the source's own key-range predicate) for the same connection.
    """

    def __init__(self, conn: psycopg.Connection, dataset: str) -> None:
        self.conn = conn
        self.dataset_name = dataset
        self._types = ResultTypes(conn)

    def __enter__(self) -> PgArrowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def make_qualified_table_name(self, name: str) -> str:
        from psycopg import sql

        return sql.Identifier(self.dataset_name, name).as_string(self.conn)

    def escape_column_name(self, name: str) -> str:
        from psycopg import sql

        return sql.Identifier(name).as_string(self.conn)

    def sql_text(self, statement: sql.Composable) -> str:
        return statement.as_string(self.conn)

    @contextlib.contextmanager
    def execute_query(self, query: str, *params: Any) -> Iterator[ArrowCursor]:
        """Run ``query`` (``%s`` placeholders for ``params``) in a read transaction, its rows streamed."""
        import psycopg
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        with self.conn.transaction():
            cur = text_cursor(self.conn, name="pg_replication_read")
            try:
                try:
                    cur.execute(query, params or None)
                except psycopg.errors.UndefinedTable as exc:
                    raise DatabaseUndefinedRelation(exc) from exc
                yield ArrowCursor(cur, self._types)
            finally:
                cur.close()
