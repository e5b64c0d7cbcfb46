"""Where a filesystem destination keeps a dataset: its tables' folders, the per-table state files, and a
DuckDB client that reads them (for kept TOAST values, ``has_rows`` and reconciliation).

Layout under ``<bucket_url>/<dataset>/`` (dlt's own, plus one folder of ours)::

    <table>/                      dlt's files of the table (a Delta table, or Parquet files)
    _pg_replication_state/<schema.table>.parquet   one small file per source table: its state row
    _dlt_loads/ _dlt_version/ _dlt_pipeline_state/  dlt's bookkeeping

Each table's state is a file of its own, replaced whole (written aside, then renamed into place on
a local disk; one PUT on object storage), so tables of one dataset never contend for it and a
reader sees the old row or the new one. Read them all as one table with
``SELECT * FROM read_parquet('<bucket_url>/<dataset>/_pg_replication_state/*.parquet')``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.filesystem.object_storage import StorageCredentials, is_s3_url
from airflow_pg_replication.destination.state_table import STATE_TABLE, ReplicationState

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

#: Extra columns of a state file: how many state writes this table had (see :mod:`.parquet_changes`), and the
#: table's primary key (the current state of a Parquet change layout is per key).
GENERATION_COLUMN = "_generation"
PRIMARY_KEY_COLUMN = "_primary_key"


@dataclass
class StateFile:
    """What a table's state file holds: its state row, its generation and its primary key."""

    state: ReplicationState | None = None
    generation: int = 0
    primary_key: list[str] = field(default_factory=list)


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (DuckDB's and DataFusion's rules: double quotes, doubled inside)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a quoted SQL string literal (single quotes, doubled inside)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Lake:
    """A dataset's folder under a bucket URL (a local path, ``file://…``, or an fsspec URL such as ``s3://…``).

    ``storage``: an ``s3://`` bucket's keys (:mod:`.object_storage`); without them the worker's environment's
    (:meth:`.StorageCredentials.from_environment`). Not used for a local folder."""

    bucket_url: str
    dataset: str
    storage: StorageCredentials | None = field(default=None, repr=False)
    fs: Any = field(init=False, repr=False)
    root: str = field(init=False)

    def __post_init__(self) -> None:
        from fsspec.core import url_to_fs

        options: dict[str, Any] = {}
        if is_s3_url(self.bucket_url):
            if self.storage is None:
                self.storage = StorageCredentials.from_environment()
            options = self.storage.fsspec_options()
        self.fs, root = url_to_fs(self.bucket_url, **options)
        self.root = root.rstrip("/")

    @property
    def delta_options(self) -> dict[str, str] | None:
        """``storage_options`` for deltalake on S3 (None elsewhere: its own environment lookup)."""
        return self.storage.delta_options() if self.storage is not None and is_s3_url(self.bucket_url) else None

    @property
    def local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def path(self, *parts: str) -> str:
        """A path in the dataset's folder, as the filesystem names it (no protocol)."""
        return "/".join([self.root, self.dataset, *parts])

    def url(self, path: str) -> str:
        """``path`` with its protocol, for readers outside fsspec (deltalake, DuckDB); a plain path on a local disk."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def table_url(self, name: str) -> str:
        return self.url(self.path(name))

    def files(self, name: str, suffix: str = ".parquet") -> list[str]:
        """The files directly in table ``name``'s folder ending in ``suffix``, sorted by name; [] when none."""
        try:
            found = self.fs.ls(self.path(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(p for p in found if p.endswith(suffix))

    def row_count(self, path: str) -> int:
        """The rows of a Parquet file, from its footer."""
        import pyarrow.parquet as pq

        with self.fs.open(path, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)

    def remove(self, paths: Sequence[str]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(p)

    def write_atomically(self, path: str, write: Callable[[Any], None]) -> None:
        """Write a file whole: ``write(file)`` into a file aside, renamed over ``path`` (local); one PUT elsewhere."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self.local:
            with self.fs.open(path, "wb") as f:
                write(f)
            return
        import os

        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    # -- state -----------------------------------------------------------------------------------

    def state_path(self, table_name: str) -> str:
        return self.path(STATE_TABLE, f"{table_name}.parquet")

    def read_state(self, table_name: str) -> StateFile:
        """The table's state file (an empty :class:`StateFile` when never written)."""
        import pyarrow.parquet as pq

        try:
            with self.fs.open(self.state_path(table_name), "rb") as f:
                rows = pq.read_table(f).to_pylist()
        except FileNotFoundError:
            return StateFile()
        if not rows:
            return StateFile()
        row = rows[0]
        return StateFile(
            ReplicationState.from_row(row),
            int(row.get(GENERATION_COLUMN) or 0),
            list(row.get(PRIMARY_KEY_COLUMN) or []),
        )

    def write_state(self, file: StateFile) -> None:
        """Replace the table's state file with ``file``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from airflow_pg_replication.destination.state_table import _state_schema

        if file.state is None:
            raise ValueError("a state file needs a state row")
        schema = _state_schema().append(pa.field(GENERATION_COLUMN, pa.int64()))
        schema = schema.append(pa.field(PRIMARY_KEY_COLUMN, pa.list_(pa.string())))
        row = {**file.state.as_row(), GENERATION_COLUMN: file.generation, PRIMARY_KEY_COLUMN: file.primary_key}
        table = pa.Table.from_pylist([row], schema=schema)
        self.write_atomically(self.state_path(file.state.table_name), lambda f: pq.write_table(table, f))


class LakeSqlClient:
    """A DuckDB connection in memory whose views read the dataset's tables (the subset of dlt's SQL client that
    reconciliation and :mod:`..sql` use: quoting, ``execute_sql`` and ``execute_query`` with ``%s`` parameters).

    ``define(con, name)`` creates the view ``name`` (a temporary view, named as the table) and returns True, or
    False when the table does not exist; a query of a table not defined raises dlt's
    ``DatabaseUndefinedRelation``, as dlt's clients do.
    """

    def __init__(self, define: Callable[[duckdb.DuckDBPyConnection, str], bool]) -> None:
        import duckdb

        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        self._define = define
        self._defined: set[str] = set()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> LakeSqlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        return self._con

    def escape_column_name(self, name: str, quote: bool = True) -> str:
        return quote_identifier(name) if quote else name

    def make_qualified_table_name(self, name: str, quote: bool = True) -> str:
        if name not in self._defined and self._define(self._con, name):
            self._defined.add(name)
        return quote_identifier(name)

    def forget(self, name: str) -> None:
        """Drop the view of ``name``, so the next use reads the table's files again (after a write)."""
        if name in self._defined:
            self._defined.discard(name)
            self._con.execute("DROP VIEW IF EXISTS " + quote_identifier(name))

    @contextlib.contextmanager
    def execute_query(self, query: str, *args: Any) -> Iterator[_Cursor]:
        import duckdb
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        try:
            cur = self._con.execute(query.replace("%s", "?"), list(args) if args else None)
        except duckdb.CatalogException as exc:
            raise DatabaseUndefinedRelation(exc) from exc
        yield _Cursor(cur)

    def execute_sql(self, query: str, *args: Any) -> list[tuple] | None:
        with self.execute_query(query, *args) as cur:
            return cur.fetchall() if cur.description is not None else None

    def arrow(self, query: str, *args: Any) -> pa.Table:
        """The whole result as one Arrow table."""
        import duckdb
        from dlt.destinations.exceptions import DatabaseUndefinedRelation

        try:
            return self._con.sql(query.replace("%s", "?"), params=list(args) if args else None).to_arrow_table()
        except duckdb.CatalogException as exc:
            raise DatabaseUndefinedRelation(exc) from exc


class _Cursor:
    """A DuckDB result as dlt's cursors show it: ``description``, ``fetchall`` and ``iter_arrow``."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur

    @property
    def description(self) -> Any:
        return self._cur.description

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall()

    def iter_arrow(self, chunk_size: int) -> Iterator[pa.Table]:
        import pyarrow as pa

        if not chunk_size:
            yield self._cur.to_arrow_table()
            return
        reader = self._cur.to_arrow_reader(chunk_size)
        if reader is None:  # no result set
            return
        for batch in reader:
            yield pa.Table.from_batches([batch])
