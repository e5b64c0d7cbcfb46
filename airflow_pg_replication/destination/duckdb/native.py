"""DuckDB fast path: Arrow straight into the file, the data and the state row in one transaction.

dlt still creates and evolves tables (and loads every other destination); this path is used
only when the destination already has every incoming column with the type the batch carries,
so dlt's stored schema stays true. One transaction per batch also makes a load and its state
row commit together: a crash leaves either both or neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.phase_timing import phase, timed_iter

COMMIT_ROWS = (
    245_760  # rows per transaction of a staged load: two DuckDB row groups; fewer commits are faster, more use memory
)
MEMORY_LIMIT_MB = 64  # DuckDB's buffer pool (set by TableDestination when it opens the file)

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_pg_replication.destination.snapshot_progress import SnapshotProgress


def duckdb_type(typ: pa.DataType) -> str | None:
    """The DuckDB column type dlt creates for an Arrow type (None: no fast path for it)."""
    import pyarrow as pa

    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return "JSON"
    simple = {
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BLOB",
        pa.date32(): "DATE",
        pa.time64("us"): "TIME",
    }
    if typ in simple:
        return simple[typ]
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "VARCHAR"  # or JSON: both take text
    if pa.types.is_decimal(typ):
        return f"DECIMAL({typ.precision},{typ.scale})"
    if pa.types.is_timestamp(typ):
        return "TIMESTAMP WITH TIME ZONE" if typ.tz else "TIMESTAMP"
    return None


class NativeDuckDb:
    """Writes into one table of a DuckDB file through dlt's own connection to it."""

    def __init__(self, client: Any, table_name: str, *, json_columns: Iterable[str] = ()) -> None:
        self.client = client
        self.json_columns = frozenset(json_columns)  # source json/jsonb columns: their text is valid JSON
        self.con = client.native_connection
        self.table_name = table_name
        self.table = client.make_qualified_table_name(table_name)
        self._columns: dict[str, str] | None = None  # the table's columns, as fits() last read them

    def columns(self) -> dict[str, str]:
        """The destination table's columns and DuckDB types ({} when it does not exist).

        Call outside a transaction: a missing table is a catalog error, which aborts an open one.
        """
        import duckdb

        try:  # pragma_table_info: ~1 ms; the first duckdb_columns() of a connection costs ~10 ms
            rows = self.con.execute("SELECT name, type FROM pragma_table_info(?)", [self.table]).fetchall()
        except duckdb.CatalogException:
            return {}
        return dict(rows)

    def _read_columns(self) -> dict[str, str]:
        """:meth:`columns`, read once per instance (``fits`` reads them afresh)."""
        if self._columns is None:
            self._columns = self.columns()
        return self._columns

    def fits(self, schema: pa.Schema) -> bool:
        """True when every column of ``schema`` exists with the type dlt would have given it."""
        have = self._columns = self.columns()
        for field in schema:
            want, got = duckdb_type(field.type), have.get(field.name)
            if want is None or got is None:
                return False
            if got != want and not (want == "VARCHAR" and got == "JSON"):
                return False
        return True

    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        after: Sequence[tuple],
        *,
        progress: SnapshotProgress | None = None,
    ) -> None:
        """Swap the table's content for ``batches``, then run ``after``; readers see old or new only.

        Batches land in a staging table, committed every ``COMMIT_ROWS`` rows so memory stays
        bounded (DuckDB holds an open transaction's Arrow input until it commits); one transaction
        then swaps the staged rows in and runs ``after``. An empty table (a first snapshot) is
        loaded in place. Batches are pushed from this thread: DuckDB never calls back into Python.

        ``progress``: every commit of rows also records how far the copy got (see
        :mod:`..snapshot_progress`), and the staging table outlives a failure, so a later copy
        under the same snapshot goes on where this one stopped; with ``resume_target`` set, this
        is that later copy, and the rows go on into the target that holds the committed ones.
        """
        from airflow_pg_replication.destination import snapshot_progress as sp

        self._read_columns()  # before the transactions below: _json_as_is needs them
        staging_schema = self.client.escape_column_name(self.client.dataset_name + "_staging")
        staging = staging_schema + "." + self.client.escape_column_name(self.table_name + "__pg_replace")
        if progress is not None and progress.resume_target is not None:
            target = progress.resume_target
        else:
            first = self.con.execute(compose("SELECT count(*) FROM (SELECT 1 FROM", self.table, "LIMIT 1)"))
            target = sp.STAGING if first.fetchone()[0] else sp.IN_PLACE
            if target == sp.STAGING:
                self.con.execute(compose("CREATE SCHEMA IF NOT EXISTS", staging_schema))
                self.con.execute(compose("CREATE OR REPLACE TABLE", staging, "AS SELECT * FROM", self.table, "LIMIT 0"))
        record: Callable[[], list[tuple]] | None = None
        if progress is not None:
            self.con.execute(sp.create_statement(self.client))
            after = [*after, sp.clear_statement(self.client, progress.table_name)]

            def record() -> list[tuple]:
                progress.commits += 1
                return list(sp.record_statements(self.client, progress, target))

        if target == sp.IN_PLACE:
            self._load_committing(self.table, batches, schema, record)
            self._transaction(lambda: None, after)
            return
        ok = False
        try:
            self._load_committing(staging, batches, schema, record)
            self._transaction(
                lambda: (
                    self.con.execute(compose("DELETE FROM", self.table)),
                    self.con.execute(self._insert_statement(self.table, staging, schema.names)),
                ),
                after,
            )
            ok = True
        finally:
            if ok or progress is None:  # a resumable copy keeps its staged rows for the next try
                self.con.execute(compose("DROP TABLE IF EXISTS", staging))

    def _load_committing(
        self,
        target: str,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        record: Callable[[], list[tuple]] | None = None,
    ) -> None:
        """Insert ``batches`` into ``target``, committing every ``COMMIT_ROWS`` rows (and ``record()``'s rows)."""
        import pyarrow as pa

        insert = self._insert_statement(target, "pg_replication_src", schema.names)
        pending = 0
        # The rows go to the file as row groups fill; the WAL only points at them. Without this,
        # every commit past 16 MB of WAL would checkpoint (rewrite) the table so far.
        before = self.con.execute("SELECT current_setting('wal_autocheckpoint')").fetchone()[0]
        self.con.execute("SET wal_autocheckpoint = '1TB'")

        def commit() -> None:
            with phase("duckdb.commit"):
                for stmt in record() if record is not None else ():
                    self.con.execute(*stmt)
                self.con.execute("COMMIT")

        self.con.execute("BEGIN TRANSACTION")
        try:
            for batch in timed_iter("duckdb.wait_rows", batches):  # the rows' reader not keeping up
                if not batch.num_rows:
                    continue
                with phase("duckdb.insert"):
                    self._run_with(
                        "pg_replication_src", self._json_as_is(pa.Table.from_batches([batch], schema=schema)), insert
                    )
                pending += batch.num_rows
                if pending >= COMMIT_ROWS:
                    commit()
                    self.con.execute("BEGIN TRANSACTION")
                    pending = 0
            commit()
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self.con.execute("SET wal_autocheckpoint = ?", [before])

    def _insert_statement(self, target: str, source: str, names: Sequence[str]) -> str:
        cols = ", ".join(self.client.escape_column_name(n) for n in names)
        return compose("INSERT INTO", target, "(", cols, ") SELECT", cols, "FROM", source)

    def merge(
        self,
        upserts: pa.Table | None,
        key_columns: Sequence[str],
        delete_keys: pa.Table | None,
        truncate: tuple[str, Sequence[Any]] | None,
        after: Sequence[tuple],
    ) -> None:
        """In one transaction: truncate, delete keys, delete-then-insert the upserts, then ``after``."""
        import pyarrow as pa

        def work() -> None:
            if truncate is not None:
                self.con.execute(*truncate)
            # one DELETE for the deleted keys and the keys about to be re-inserted
            parts = [t.select(list(key_columns)) for t in (delete_keys, upserts) if t is not None and t.num_rows]
            if parts:
                keys = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
                match = " AND ".join(
                    compose("t." + self.client.escape_column_name(k), "=", "k." + self.client.escape_column_name(k))
                    for k in key_columns
                )
                self._run_with(
                    "pg_replication_keys",
                    keys,
                    compose(
                        "DELETE FROM",
                        self.table,
                        "AS t WHERE EXISTS (SELECT 1 FROM pg_replication_keys AS k WHERE",
                        match,
                        ")",
                    ),
                )
            if upserts is not None and upserts.num_rows:
                self._load("pg_replication_src", upserts, upserts.column_names)

        if upserts is not None and upserts.num_rows:
            self._read_columns()  # before the transaction: _json_as_is needs them
        self._transaction(work, after)

    def _load(self, name: str, data: Any, names: Sequence[str]) -> None:
        self._run_with(name, self._json_as_is(data), self._insert_statement(self.table, name, names))

    def _json_as_is(self, data: pa.Table) -> pa.Table:
        """``json_columns`` bound for JSON columns, marked as Arrow JSON so DuckDB stores them unparsed.

        They hold PostgreSQL json/jsonb text, valid JSON already; DuckDB would parse each value
        again to validate it (~0.15 µs a value). Other text (say a column retyped from jsonb to
        text, into a JSON column) is still validated. Zero-copy; without ``pa.json_``
        (pyarrow < 19) the data goes as it is.
        """
        import pyarrow as pa

        json_type = getattr(pa, "json_", None)
        if json_type is None or not self.json_columns or not isinstance(data, pa.Table):
            return data
        have = self._read_columns()
        for i, field in enumerate(data.schema):
            if field.name in self.json_columns and have.get(field.name) == "JSON" and pa.types.is_string(field.type):
                column = pa.chunked_array(
                    [pa.ExtensionArray.from_storage(json_type(), chunk) for chunk in data.column(i).chunks], json_type()
                )
                data = data.set_column(i, field.name, column)
        return data

    def _run_with(self, name: str, data: Any, statement: str) -> None:
        """Run ``statement`` with the Arrow ``data`` visible as the view ``name``."""
        self.con.register(name, data)
        try:
            self.con.execute(statement)
        finally:
            with contextlib.suppress(Exception):  # an aborted transaction refuses it; the rollback comes next
                self.con.unregister(name)

    def _transaction(self, work: Callable[[], object], after: Sequence[tuple]) -> None:
        with phase("duckdb.transaction"), self.client.begin_transaction():
            work()
            for stmt in after:
                self.con.execute(*stmt)
