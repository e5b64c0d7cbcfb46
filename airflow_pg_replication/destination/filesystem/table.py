"""dlt's ``filesystem`` destination (a local folder or an fsspec URL), as Delta tables or plain Parquet files.

``destination: {type: filesystem, credentials: /data/lake, dataset: replica, table_format: delta}``:

* ``table_format: delta`` -- each table is a Delta table (``deltalake``), holding the current state: dlt
  writes the snapshot (a replace), and each CDC batch is merged in place by key (Delta commits:
  truncate, delete keys, upsert), so ``DeltaTable('<lake>/replica/<table>')`` reads like the DuckDB copy.
* ``table_format: parquet`` -- plain Parquet files: dlt writes the snapshot, and each batch appends one
  file of row versions and tombstones (:mod:`.parquet_changes`); the current state is a query.

On object storage (``credentials: s3://bucket/lake``) the bucket's keys come from an Airflow connection
(``conn_id``, resolved by the operators) or the worker's environment, and reach dlt, fsspec, DuckDB and
deltalake alike (:mod:`.object_storage`).

The state row lives in a small file per table (:mod:`.lake`), written after the data. There are no
transactions on a lake, so every write is idempotent: a batch re-applied after a crash between its
data and its state row gives the same table (Delta: merges by key; Parquet: the crashed attempt's
files are deleted before the batch is written again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination import sql as destination_sql
from airflow_pg_replication.destination.columns import dlt_hints
from airflow_pg_replication.destination.dlt_table import DltTableDestination
from airflow_pg_replication.destination.filesystem import delta, parquet_changes
from airflow_pg_replication.destination.filesystem.lake import Lake, LakeSqlClient, StateFile, quote_identifier
from airflow_pg_replication.destination.filesystem.object_storage import storage_credentials
from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from airflow_pg_replication.destination.state_table import ReplicationState

#: The ``table_format`` values of a filesystem destination.
TABLE_FORMATS = ("delta", "parquet")


def check_table_format(spec: dict[str, Any]) -> str:
    """The spec's ``table_format``; raises a :class:`NeedsAttentionError` with the fix when it is missing or unknown."""
    fmt = spec.get("table_format")
    if fmt not in TABLE_FORMATS:
        raise NeedsAttentionError(
            f"destination type filesystem needs table_format: delta (a Delta table per source table, merged in "
            f"place) or parquet (plain Parquet files, an append-only change layout); got {fmt!r}"
        )
    return str(fmt)


def bucket_url(spec: dict[str, Any]) -> str:
    """The spec's ``credentials`` as dlt's ``bucket_url``: a URL as given, a local path made absolute.

    A URL holding a user or password (say an Airflow connection's URI put there in place of the lake's URL)
    is refused without being repeated: it is the place of the lake, the keys come from ``conn_id``."""
    url = spec.get("credentials")
    if not url:
        raise NeedsAttentionError(
            "destination type filesystem needs credentials: the folder or URL of the lake "
            "(e.g. /data/lake, file:///data/lake or s3://bucket/lake)"
        )
    url = str(url)
    if "://" not in url:
        return os.path.abspath(url)
    scheme, rest = url.split("://", 1)
    if "@" in rest.split("/", 1)[0] or scheme.lower() in _CONNECTION_SCHEMES:
        raise NeedsAttentionError(
            f"destination type filesystem: credentials must be the lake's URL (e.g. s3://bucket/lake), not a "
            f"{scheme}:// URL with a user or password (not repeated here); give the bucket's keys through an Airflow "
            "connection (conn_id) or the worker's environment"
        )
    return url


#: Schemes of Airflow connection URIs that are no lake URL (what a conn_id resolved into ``credentials`` looks like).
_CONNECTION_SCHEMES = frozenset({"aws", "google-cloud-platform", "google_cloud_platform", "wasb", "adls"})


class _Counted:
    """An iterable of record batches that counts the rows it yields."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for b in self._batches:
            self.rows += b.num_rows
            yield b


class FilesystemTableDestination(DltTableDestination):
    """One table's copy in a lake folder, as a Delta table or Parquet files (see the module's doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table_format = check_table_format(self.spec)
        self.bucket_url = bucket_url(self.spec)
        self.storage = storage_credentials(self.spec, self.bucket_url)  # None: a local folder, or not S3
        self.lake = Lake(self.bucket_url, self.spec["dataset"], self.storage)
        self._reader: LakeSqlClient | None = None
        self._primary_key: list[str] | None = None  # given by the unit's replace or batch; else the state file's
        self._writing: int | None = None  # the generation this unit's data files take (Parquet), once it writes
        self._seq = 0
        self._initialized = False  # the dataset's folder is dlt's (see _initialize_dataset)

    @property
    def delta(self) -> bool:
        return self.table_format == "delta"

    def describe(self) -> str:
        return f"{self.spec['dataset']}.{self.destination_table} ({self.table_format}) in filesystem {self.bucket_url}"

    def __exit__(self, *exc: object) -> None:
        try:
            self._forget_reads()
        finally:
            super().__exit__(*exc)

    def dlt_destination(self) -> Any:
        from dlt.destinations import filesystem

        # dlt replaces a Delta table through its staging copy, plain files by truncating; our names never
        # hold the layout's separators ('/', '.'), so its warning about them does not apply.
        return filesystem(
            bucket_url=self.bucket_url,
            credentials=self.storage.dlt_credentials() if self.storage is not None else None,
            replace_strategy="insert-from-staging" if self.delta else "truncate-and-insert",
            warn_unsafe_layout_separators=False,
        )

    @property
    def table_url(self) -> str:
        return self.lake.table_url(self.destination_table)

    # -- reads -------------------------------------------------------------------------------------

    def _define(self, con: duckdb.DuckDBPyConnection, name: str) -> bool:
        """The view ``name`` over this table's current state (only this table is readable here)."""
        if name != self.destination_table:
            return False
        if self.delta:
            table = delta.open_table(self.table_url, self.lake.delta_options)
            if table is None:
                return False
            con.register(name, table.to_pyarrow_dataset())
            return True
        return parquet_changes.define_current_view(con, self.lake, name, name, self._key_columns())

    def _key_columns(self) -> list[str]:
        if self._primary_key is None:
            self._primary_key = self.lake.read_state(self.table_name).primary_key
        return self._primary_key

    def _client(self) -> LakeSqlClient:
        if self._reader is None:
            self._reader = LakeSqlClient(self._define)
        return self._reader

    def _forget_reads(self) -> None:
        """After a write: the next read looks at the files again."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @contextlib.contextmanager
    def sql_client(self) -> Iterator[Any]:
        yield self._client()

    @contextlib.contextmanager
    def arrow_client(self) -> Iterator[Any]:
        with LakeSqlClient(self._define) as client:
            yield client

    def has_rows(self) -> bool:
        return destination_sql.has_rows(self._client(), self.destination_table)

    def fetch_rows(
        self, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, dict]:
        return destination_sql.fetch_rows(self._client(), self.destination_table, key_columns, keys, columns)

    # -- state -------------------------------------------------------------------------------------

    def read_state(self) -> ReplicationState | None:
        return self.lake.read_state(self.table_name).state

    def write_state(self, state: ReplicationState) -> None:
        """Replace the state file; its generation commits the data files written since the last one."""
        self._initialize_dataset()
        before = self.lake.read_state(self.table_name)
        generation = max(before.generation + 1, self._writing or 0)
        key = self._primary_key if self._primary_key is not None else before.primary_key
        self.lake.write_state(StateFile(state, generation, list(key)))
        self._writing = None

    def _initialize_dataset(self) -> None:
        """Have dlt create the dataset's folder (and its marker file) before a file of ours goes in: dlt
        refuses a dataset folder that exists without its marker."""
        from dlt.destinations.impl.filesystem.filesystem import INIT_FILE_NAME

        if self._initialized:
            return
        if not self.lake.fs.exists(self.lake.path(INIT_FILE_NAME)):
            with self.pipeline.destination_client() as client:
                client.initialize_storage()
        self._initialized = True

    # -- loads -------------------------------------------------------------------------------------

    def prepare_replace(
        self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict], primary_key: Sequence[str]
    ) -> None:
        self._primary_key = list(primary_key)
        self.write_state(state)

    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[dict],
        primary_key: Sequence[str],
        *,
        schema: pa.Schema,
        state: ReplicationState | None = None,
    ) -> None:
        """dlt writes the snapshot (Delta: an overwrite; Parquet: the folder's files replaced); then the state."""
        import dlt

        self._primary_key = list(primary_key)
        if not self.delta:  # the change files too: dlt would only remove its own
            self.lake.remove(self.lake.files(self.destination_table))
        counted = _Counted(batches)
        self.run(
            dlt.resource(  # type: ignore[call-overload]  # see DltTableDestination.merge_resource
                counted,
                name=self.destination_table,
                columns=dlt_hints(columns),
                primary_key=list(primary_key) or None,
                write_disposition="replace",
                table_format="delta" if self.delta else None,
            )
        )
        if not counted.rows and self.delta:  # dlt loads nothing for no rows: the old rows must still go
            delta.truncate(self.table_url, soft_at=None, lsn=None, storage_options=self.lake.delta_options)
        self._forget_reads()
        if state is not None:
            self.write_state(state)

    def apply_batch(
        self,
        *,
        upserts: pa.Table | None,
        delete_keys: pa.Table | None,
        truncate: tuple[datetime, int, bool] | None,
        columns: list[dict],
        key_columns: Sequence[str],
        state: ReplicationState | None,
    ) -> None:
        """Truncate, deletes, upserts, each idempotent; then the state file."""
        self._initialize_dataset()
        if upserts is not None and not upserts.num_rows:
            upserts = None
        if delete_keys is not None and not delete_keys.num_rows:
            delete_keys = None
        if self.delta:
            options = self.lake.delta_options
            if truncate is not None:
                at, lsn, soft = truncate
                delta.truncate(self.table_url, soft_at=at if soft else None, lsn=lsn, storage_options=options)
            if delete_keys is not None:
                delta.delete_keys(self.table_url, delete_keys, options)
            if upserts is not None:
                delta.upsert(self.table_url, upserts, key_columns, options)
        else:
            self._append_changes(upserts, delete_keys, truncate, key_columns)
        self._forget_reads()
        if state is not None:
            self.write_state(state)

    def merge(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> None:
        """Upsert rows by key (incremental refresh): Delta merges, Parquet appends row versions."""
        import pyarrow as pa

        self._initialize_dataset()
        for table in tables:
            if isinstance(table, pa.RecordBatch):
                table = pa.Table.from_batches([table])
            if not table.num_rows:
                continue
            if self.delta:
                delta.upsert(self.table_url, table, primary_key, self.lake.delta_options)
            else:
                self._write_changes(table)
        self._forget_reads()

    def widen_columns(self, columns: list[dict]) -> list[str]:
        """Not done here: Delta and Parquet keep a column's first type (see docs/destinations-filesystem.md)."""
        return []

    # -- the Parquet change layout --------------------------------------------------------------------

    def _begin_writing(self) -> int:
        """This unit's generation of data files; on its first write, the files a crashed unit left are deleted."""
        if self._writing is None:
            committed = self.lake.read_state(self.table_name).generation
            files = self.lake.files(self.destination_table)
            self.lake.remove([p for p in parquet_changes.uncommitted(files, committed) if self.lake.row_count(p)])
            self._writing = committed + 1
        return self._writing

    def _write_changes(self, table: pa.Table) -> None:
        generation = self._begin_writing()
        parquet_changes.write_change_file(self.lake, self.destination_table, generation, self._seq, table)
        self._seq += 1

    def _append_changes(
        self,
        upserts: pa.Table | None,
        delete_keys: pa.Table | None,
        truncate: tuple[datetime, int, bool] | None,
        key_columns: Sequence[str],
    ) -> None:
        """One change file: soft-truncate marks, tombstones, then the upserts (a key at most once)."""
        import pyarrow as pa

        self._begin_writing()
        if key_columns:
            self._primary_key = list(key_columns)
        parts: list[pa.Table] = []
        if truncate is not None:
            at, lsn, soft = truncate
            if soft:
                parts.extend(self._soft_truncate_marks(at, lsn, upserts, delete_keys, key_columns))
            else:
                self._hard_truncate()
        if delete_keys is not None and (marks := parquet_changes.tombstones(delete_keys, upserts)) is not None:
            parts.append(marks)
        if upserts is not None:
            parts.append(upserts)
        if parts:
            self._write_changes(parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive"))

    def _soft_truncate_marks(
        self,
        at: datetime,
        lsn: int,
        upserts: pa.Table | None,
        delete_keys: pa.Table | None,
        key_columns: Sequence[str],
    ) -> list[pa.Table]:
        """Every live row not in this write, again, marked deleted at ``at`` (and ``lsn``)."""
        import pyarrow as pa

        client = self._client()
        table = client.make_qualified_table_name(self.destination_table)
        try:
            live = client.arrow(
                compose("SELECT * FROM", table, "WHERE", quote_identifier(DELETED_AT_COLUMN), "IS NULL")
            )
        except Exception as exc:  # no table yet: nothing to mark
            from dlt.destinations.exceptions import DatabaseUndefinedRelation

            if isinstance(exc, DatabaseUndefinedRelation):
                return []
            raise
        for written in (upserts, delete_keys):
            if written is not None:
                live = parquet_changes.anti_join(live, written, key_columns)
        if not live.num_rows:
            return []
        n = live.num_rows
        live = live.set_column(
            live.column_names.index(DELETED_AT_COLUMN),
            DELETED_AT_COLUMN,
            pa.array([at] * n, pa.timestamp("us", tz="UTC")),
        )
        live = live.set_column(live.column_names.index(LSN_COLUMN), LSN_COLUMN, pa.array([lsn] * n, pa.int64()))
        return [live]

    def _hard_truncate(self) -> None:
        """Remove every file of the table, leaving an empty one that keeps its columns."""
        client = self._client()
        table = client.make_qualified_table_name(self.destination_table)
        try:
            empty = client.arrow(compose("SELECT * FROM", table, "LIMIT 0"))
        except Exception as exc:
            from dlt.destinations.exceptions import DatabaseUndefinedRelation

            if isinstance(exc, DatabaseUndefinedRelation):
                return
            raise
        self._forget_reads()
        self.lake.remove(self.lake.files(self.destination_table))
        self._write_changes(empty)
