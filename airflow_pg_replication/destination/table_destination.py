"""dlt loads into the destination: snapshot replace, change merge, and the replication state kept with the data."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from airflow_pg_replication.destination import sql as destination_sql
from airflow_pg_replication.destination.duckdb import file_lock as duckdb_file
from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.destination.duckdb.default_file import default_duckdb_path
from airflow_pg_replication.destination.duckdb.native import MEMORY_LIMIT_MB, NativeDuckDb
from airflow_pg_replication.destination.duckdb.session import DuckDbSession
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN
from airflow_pg_replication.destination.state_table import (
    STATE_TABLE,
    ReplicationState,
    read_state,
    state_resource,
    state_statements,
    write_state,
)

if TYPE_CHECKING:
    import dlt
    import pyarrow as pa

log = logging.getLogger(__name__)



def destination_columns(columns: Sequence[Any], *, soft_deletes: bool) -> list[dict]:
    """dlt column schema for the source columns plus ``_pg_lsn`` (and ``_pg_deleted_at`` for soft deletes)."""
    from airflow_pg_replication.source.type_map import dlt_column_hints

    out = [{**dlt_column_hints(c), "name": c.name} for c in columns]
    for col in out:  # explicit, so a widened int4 -> int8 column overrides dlt's stored precision
        if col.get("data_type") == "bigint" and col.get("precision") is None:
            col["precision"] = 64
    out.append({"name": LSN_COLUMN, "data_type": "bigint"})
    if soft_deletes:
        out.append({"name": DELETED_AT_COLUMN, "data_type": "timestamp", "timezone": True})
    return out


def _json_names(columns: Sequence[dict]) -> set[str]:
    """Names of the dlt columns typed json (from json/jsonb or arrays) among ``columns``."""
    return {c["name"] for c in columns if c.get("data_type") == "json"}


def wal_bytes(path: str) -> int:
    """Bytes in a DuckDB file's WAL: commits not yet checkpointed into the file (0: none)."""
    try:
        return os.path.getsize(path + ".wal")
    except OSError:
        return 0


def _configure_dlt() -> None:
    # We hand dlt its credentials; probing Airflow Variables for dlt secrets costs seconds per run.
    os.environ.setdefault("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")
    import dlt

    dlt.config["schema.naming"] = "direct"  # keep source names as written (case, $)
    dlt.config["destination.replace_strategy"] = "insert-from-staging"  # replace swaps in one transaction
    dlt.config["runtime.dlthub_telemetry"] = False


def _dlt_destination(spec: Mapping[str, Any], duckdb_connection: Any = None):
    from dlt.common.destination import Destination

    kind = spec.get("type") or "duckdb"
    credentials = spec.get("credentials")  # a conn_id was resolved into credentials by the Airflow shell
    if kind == "duckdb":
        import dlt

        return dlt.destinations.duckdb(duckdb_connection or credentials or default_duckdb_path())
    return Destination.from_reference(kind, credentials=credentials)


class TableDestination:
    """One table's place in the destination: its dlt pipeline, its state row, its loads.

    Use as a context manager: a fresh dlt working dir each time (the destination is the truth,
    nothing local survives a worker). A DuckDB file is held, under the package's lock (see
    :mod:`.duckdb_file`), exclusive to write (one DuckDB file takes one writing process at a
    time) or, with ``read_only``, shared with other readers; :meth:`release_file` lets it go
    early and the next use opens it again. Everything taken is let go on every way out,
    ``__enter__`` failing included.
    """

    def __init__(self, destination: Mapping[str, Any] | None, *, table_name: str, destination_table: str,
                 pipeline_name: str, read_only: bool = False) -> None:
        self.spec = dict(destination or {})
        self.spec.setdefault("type", "duckdb")
        self.spec.setdefault("dataset", "replica")
        if self.spec["type"] == "duckdb" and not self.spec.get("credentials"):
            self.spec["credentials"] = default_duckdb_path()
        self.table_name = table_name
        self.destination_table = destination_table
        self.pipeline_name = pipeline_name
        self._pipeline: dlt.Pipeline | None = None
        self._sql: Any = None
        self.read_only = read_only
        self._duckdb: Any = None  # the unit of work's DuckDB connection (DuckDB destinations)
        self._deferred_checkpoints = False
        self._released = False  # the DuckDB file was let go by release_file and not opened again yet
        self._stack = contextlib.ExitStack()  # the unit of work: dlt's working dir and clients
        self._file = contextlib.ExitStack()  # the DuckDB file: its lock and connection

    def describe(self) -> str:
        where = self.spec.get("credentials") if self.spec["type"] == "duckdb" else self.spec["type"]
        return f"{self.spec['dataset']}.{self.destination_table} in {where}"

    def __enter__(self) -> TableDestination:
        try:
            if self.spec["type"] == "duckdb":
                self._open_file()
        except BaseException as exc:  # let go of what was taken (the lock file), or a retry waits on it
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _open_file(self) -> None:
        """Lock the DuckDB file (exclusive, or shared to read) and open it; waits for other holders."""
        path = str(self.spec["credentials"])
        mode = duckdb_file.SHARED if self.read_only else duckdb_file.EXCLUSIVE
        what = f"{'read' if self.read_only else 'write'} {self.table_name}"
        try:
            self._file.enter_context(duckdb_file.locked(path, mode, timeout=duckdb_file.WRITER_TIMEOUT_SECONDS,
                                                        what=what))
            if self.read_only and not os.path.exists(path):
                return  # nothing loaded yet: read_state() is None
            # One connection for the whole unit of work: dlt's clients take cursors of it, so the
            # file is opened once, not once per client.
            con = duckdb_file.connect(path, read_only=self.read_only, what=what)
            self._file.callback(con.close)
            if not self.read_only:
                # Commits are durable in the WAL; DuckDB checkpoints it once it passes 16 MB (or when
                # told to: see defer_checkpoints), not at every close.
                con.execute("PRAGMA disable_checkpoint_on_shutdown")
                if self._deferred_checkpoints:
                    con.execute("SET wal_autocheckpoint = '256MB'")
            # past this DuckDB evicts committed blocks and spills big joins, so memory stays bounded
            con.execute("SET memory_limit = ?", [f"{MEMORY_LIMIT_MB}MB"])
        except BaseException:
            self._file.close()
            raise
        self._duckdb = con

    def release_file(self) -> None:
        """Close the DuckDB file and let go of its lock, so others may use it; :meth:`reopen_file` takes it again.

        What was committed stays; the unit's SQL session and dlt pipeline are dropped with the
        connection (made again on next use).
        """
        if self._duckdb is None:
            return
        self._sql = self._pipeline = self._duckdb = None
        self._released = True
        self._file.close()

    def reopen_file(self) -> None:
        """Take and open the DuckDB file again after :meth:`release_file` (a no-op when it is open)."""
        if self.spec["type"] == "duckdb" and self._duckdb is None:
            self._open_file()
            self._released = False

    def others_wait_for_file(self) -> bool:
        """True when a reader or another writer waits for this unit's DuckDB file (False elsewhere)."""
        return self.spec["type"] == "duckdb" and duckdb_file.someone_waits(str(self.spec["credentials"]))

    @property
    def file_open(self) -> bool:
        """True while this unit holds the DuckDB file open (always False for other destinations)."""
        return self._duckdb is not None

    def defer_checkpoints(self) -> None:
        """Commits of this unit of work do not checkpoint: they stay in DuckDB's WAL.

        For CDC: a batch's commit does not wait for a checkpoint; the next batch does it with
        :meth:`checkpoint` while PostgreSQL decodes its own batch. Past 256 MB of WAL a commit
        still checkpoints, so the next opener never replays more. Kept across :meth:`reopen_file`.
        """
        self._deferred_checkpoints = True
        if self._duckdb is not None:
            self._duckdb.execute("SET wal_autocheckpoint = '256MB'")

    def checkpoint(self) -> None:
        """Fold the commits DuckDB's WAL holds into the file (a no-op elsewhere or with no WAL)."""
        if self._duckdb is not None and not self.read_only and wal_bytes(str(self.spec["credentials"])):
            self._duckdb.execute("CHECKPOINT")

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            self._pipeline = self._sql = self._duckdb = None
            self._released = False
            self._file.close()

    @property
    def pipeline(self) -> dlt.Pipeline:
        """The table's dlt pipeline, created on first use: a batch that fits the table needs none."""
        if self._pipeline is None:
            import dlt

            _configure_dlt()
            workdir = tempfile.mkdtemp(prefix="pg_replication_dlt_")
            self._stack.callback(shutil.rmtree, workdir, True)
            self._pipeline = dlt.pipeline(
                pipeline_name=self.pipeline_name, pipelines_dir=workdir,
                destination=_dlt_destination(self.spec, self._duckdb), dataset_name=self.spec["dataset"],
            )
        return self._pipeline

    @contextlib.contextmanager
    def sql_client(self) -> Iterator[Any]:
        """A SQL client of the destination, opened once per unit of work.

        DuckDB: a :class:`.DuckDbSession` on the unit's connection, with no dlt configuration to
        resolve. Elsewhere: dlt's SQL client (resolving its configuration costs tens of ms).
        """
        if self._sql is None:
            if self._released:
                self.reopen_file()  # let go by release_file: take the file again
            if self._duckdb is not None:
                self._sql = DuckDbSession(self._duckdb, self.spec["dataset"])
            else:
                client = self.pipeline.sql_client()
                client.open_connection()
                self._stack.callback(client.close_connection)
                self._sql = client
        yield self._sql

    def _run(self, resource: Any) -> None:
        """Run the pipeline; an error raised by our own data generator surfaces as itself, not wrapped by dlt."""
        from dlt.common.exceptions import DltException
        from dlt.pipeline.exceptions import PipelineStepFailed

        try:
            self.pipeline.run(resource)
        except PipelineStepFailed as exc:
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            if root is not exc and not isinstance(root, DltException):
                raise root from exc
            raise

    # -- state (see replication_state) ----------------------------------------------------------

    def read_state(self) -> ReplicationState | None:
        """The table's state row, or None when nothing was ever loaded for it."""
        if self.read_only and self.spec["type"] == "duckdb" and self._duckdb is None:
            return None  # read-only, and no DuckDB file yet
        return read_state(self.sql_client, self.table_name)

    def write_state(self, state: ReplicationState) -> None:
        """Record ``state``; call it only after the data it describes has committed."""
        write_state(self.sql_client, state, run=self._run)

    def prepare_replace(self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict],
                        primary_key: Sequence[str]) -> None:
        """Record ``state`` (the copy is not usable yet) and have the table ready for :meth:`replace`.

        DuckDB: dlt creates or evolves the table (with no rows) in the same run that creates the
        state table, when either is needed, so a first snapshot pays for one dlt run, not two.
        """
        if not self.is_duckdb or self._fits(schema):
            self.write_state(state)
            return
        with self.sql_client() as client:
            has_state_table = destination_sql.has_rows(client, STATE_TABLE)
        if has_state_table:
            self.write_state(state)
        self.widen_columns(columns)
        table = self._merge_resource([schema.empty_table()], columns, primary_key)
        self._run([table] if has_state_table else [state_resource(state), table])

    # -- loads --------------------------------------------------------------------------------

    def replace(self, batches: Iterable[pa.RecordBatch], columns: list[dict], primary_key: Sequence[str], *,
                schema: pa.Schema, state: ReplicationState | None = None) -> None:
        """Replace the table's content with ``batches`` and, when given, record ``state`` after it.

        DuckDB: dlt creates or evolves the table (with no rows), then the rows stream in and the
        state row is written in one transaction. Elsewhere dlt stages and swaps the table.
        """
        import dlt

        if self.is_duckdb:
            if not self._fits(schema):
                self.merge([schema.empty_table()], columns, primary_key)  # dlt creates / evolves the table
            if self._fits(schema):
                with self.sql_client() as client:
                    after, later = self._native_state(client, state)
                    NativeDuckDb(client, self.destination_table, json_columns=_json_names(columns)).replace(
                        batches, schema, after)
                if later is not None:
                    self.write_state(later)
                return
        resource = dlt.resource(
            batches, name=self.destination_table, columns=columns, primary_key=list(primary_key) or None,
            write_disposition="replace",
        )
        self._run(resource)
        if state is not None:
            self.write_state(state)

    def apply_batch(self, *, upserts: pa.Table | None, delete_keys: pa.Table | None,
                    truncate: tuple[datetime, int, bool] | None, columns: list[dict], key_columns: Sequence[str],
                    state: ReplicationState | None) -> None:
        """Apply one folded batch: truncate (at, lsn, soft), hard deletes by key, upserts; then ``state``.

        Every step is idempotent. DuckDB, when the table already has the batch's shape: one
        transaction for all of it. Otherwise: the steps in order, dlt for the upserts (which also
        adds new columns and widens changed ones), and the state last.
        """
        if self.is_duckdb:
            with self.sql_client() as client:  # one session: shape check, batch and state
                native = NativeDuckDb(client, self.destination_table, json_columns=_json_names(columns))
                if upserts is None or upserts.num_rows == 0 or native.fits(upserts.schema):
                    trunc = self._truncate_statement(client, truncate) if truncate is not None else None
                    after, later = self._native_state(client, state)
                    native.merge(upserts, key_columns, delete_keys, trunc, after)
                    if later is None:
                        return
                    upserts = delete_keys = truncate = None  # applied; only the first state write is left
            if upserts is None and delete_keys is None and truncate is None:
                self.write_state(later)
                return
        if truncate is not None:
            at, lsn, soft = truncate
            self.truncate(soft_at=at if soft else None, lsn=lsn)
        if delete_keys is not None and delete_keys.num_rows:
            self.delete_keys(key_columns, list(zip(*[c.to_pylist() for c in delete_keys.columns])))
        if upserts is not None and upserts.num_rows:
            self.merge([upserts], columns, key_columns)
        if state is not None:
            self.write_state(state)

    @property
    def is_duckdb(self) -> bool:
        return self.spec["type"] == "duckdb"

    def _fits(self, schema: pa.Schema) -> bool:
        with self.sql_client() as client:
            return NativeDuckDb(client, self.destination_table).fits(schema)

    @staticmethod
    def _native_state(client: Any, state: ReplicationState | None) -> tuple[list[tuple], ReplicationState | None]:
        """State statements for the data's own transaction, or the state to write right after it
        (the first time, when dlt must create the state table)."""
        if state is None:
            return [], None
        if not destination_sql.has_rows(client, STATE_TABLE):
            return [], state
        return state_statements(client, state, placeholder="?"), None

    def _truncate_statement(self, client: Any, truncate: tuple[datetime, int, bool]) -> tuple:
        at, lsn, soft = truncate
        table = client.make_qualified_table_name(self.destination_table)
        if not soft:
            return (compose("DELETE FROM", table),)
        deleted = client.escape_column_name(DELETED_AT_COLUMN)
        return (compose("UPDATE", table, "SET", deleted, "= ?,", client.escape_column_name(LSN_COLUMN),
                        "= ? WHERE", deleted, "IS NULL"), [at, lsn])

    def merge(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> None:
        """Upsert rows by key; columns whose source type was widened are widened in the destination first."""
        self.widen_columns(columns)
        self._run(self._merge_resource(tables, columns, primary_key))

    def _merge_resource(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> Any:
        """A dlt resource that upserts ``tables`` into the destination table by key (delete-insert)."""
        import dlt

        return dlt.resource(
            tables, name=self.destination_table, columns=columns, primary_key=list(primary_key) or None,
            write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        )

    def widen_columns(self, columns: list[dict]) -> list[str]:
        """ALTER destination columns whose source type grew (int -> bigint, numeric precision, ...).

        dlt keeps a column's first type; without this, a widened source column would fail to load.
        Returns the widened column names.
        """
        self.pipeline.sync_destination()
        if not self.pipeline.default_schema_name:  # nothing loaded yet: nothing to widen
            return []
        schema = self.pipeline.default_schema
        table = schema.tables.get(self.destination_table)
        if not table:
            return []
        changed = []
        for col in columns:
            old = table["columns"].get(col["name"])
            if old and any(old.get(k) != col.get(k) for k in ("data_type", "precision", "scale", "timezone")
                           if col.get(k) is not None or k in ("precision", "scale")):
                changed.append(col)
        if not changed:
            return []
        with self.pipeline.destination_client() as job_client:
            prepared = schema.tables[self.destination_table]
            mapper = job_client.capabilities.get_type_mapper()
            with self.pipeline.sql_client() as client:  # dlt's: it knows the staging dataset
                target = client.make_qualified_table_name(self.destination_table)
                for col in changed:
                    old = table["columns"][col["name"]]
                    merged = {**{k: v for k, v in old.items() if k not in ("precision", "scale")}, **col}
                    dest_type = mapper.to_destination_type(merged, prepared)
                    log.info("%s: column %s changed type in the source: %s -> %s", self.describe(), col["name"],
                             _type_text(table["columns"][col["name"]]), dest_type)
                    client.execute_sql(compose("ALTER TABLE", target, "ALTER COLUMN",
                                               client.escape_column_name(col["name"]), "TYPE", dest_type))
                    table["columns"][col["name"]] = merged
                with client.with_staging_dataset():  # dlt re-creates its staging table with the new types
                    client.execute_sql(compose("DROP TABLE IF EXISTS",
                                               client.make_qualified_table_name(self.destination_table)))
        return [c["name"] for c in changed]

    def has_rows(self) -> bool:
        """True when the destination table exists and holds at least one row."""
        with self.sql_client() as client:
            return destination_sql.has_rows(client, self.destination_table)

    def delete_keys(self, key_columns: Sequence[str], keys: Sequence[tuple]) -> None:
        """Hard-delete the rows with these keys (typed values), in chunks."""
        with self.sql_client() as client:
            destination_sql.delete_keys(client, self.destination_table, key_columns, keys)

    def truncate(self, *, soft_at: datetime | None = None, lsn: int | None = None) -> None:
        """Empty the table; with ``soft_at``, mark every live row deleted at that time instead."""
        with self.sql_client() as client:
            destination_sql.truncate(client, self.destination_table, soft_at=soft_at, lsn=lsn,
                                     deleted_column=DELETED_AT_COLUMN, lsn_column=LSN_COLUMN)

    def fetch_rows(self, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]) -> dict[tuple, dict]:
        """Current destination values of ``columns`` for these keys: key -> {column: value}."""
        with self.sql_client() as client:
            return destination_sql.fetch_rows(client, self.destination_table, key_columns, keys, columns)


def _type_text(col: dict) -> str:
    extra = ",".join(str(col[k]) for k in ("precision", "scale") if col.get(k) is not None)
    return f"{col.get('data_type')}({extra})" if extra else str(col.get("data_type"))
