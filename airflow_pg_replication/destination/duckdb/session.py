"""A SQL session on the DuckDB file that needs no dlt pipeline: the part of dlt's SQL client the fast path uses.

Creating a dlt pipeline and its SQL client resolves dlt's configuration, which costs a task
about half a second the first time and ~0.1 s each time after. A CDC batch that fits the
destination table needs none of dlt, so it runs on this session; dlt is brought in (lazily,
by :class:`.loading.TableDestination`) only to create or evolve tables. Names are quoted as dlt
quotes them for DuckDB (``"dataset"."table"``, ``"`` doubled), so both address the same tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb


def quote_identifier(name: str) -> str:
    """A DuckDB identifier, quoted (dlt's ``escape_postgres_identifier``)."""
    return '"' + name.replace('"', '""') + '"'


class DuckDbSession:
    """One DuckDB connection, addressed like dlt's DuckDB SQL client of ``dataset_name``."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, dataset_name: str) -> None:
        from dlt.common.normalizers.naming.direct import NamingConvention

        self.native_connection = connection
        # the schema dlt creates for the dataset: its name through our naming convention ("direct")
        self.dataset_name = NamingConvention().normalize_identifier(dataset_name)

    def escape_column_name(self, name: str) -> str:
        return quote_identifier(name)

    def make_qualified_table_name(self, table_name: str) -> str:
        return quote_identifier(self.dataset_name) + "." + quote_identifier(table_name)

    def execute_sql(self, sql: str, *args: Any) -> list[tuple] | None:
        """Run ``sql`` (``%s`` placeholders, as dlt's clients take); rows, or None for a statement.

        A missing table or schema raises dlt's ``DatabaseUndefinedRelation``, as dlt's client does.
        """
        import duckdb
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        try:
            cur = self.native_connection.execute(sql.replace("%s", "?") if args else sql, list(args) or None)
        except duckdb.CatalogException as exc:
            raise DatabaseUndefinedRelation(exc) from exc
        return cur.fetchall() if cur.description is not None else None

    @contextlib.contextmanager
    def begin_transaction(self) -> Iterator[DuckDbSession]:
        """Commit what the block ran, or roll it back when it raises."""
        con = self.native_connection
        con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
