"""DuckDB: one table's copy in a DuckDB file, Arrow straight in, the data and its state row in one transaction.

dlt creates and evolves the table (and the state table); once the table has a batch's shape, the
batch goes from Arrow into the file through :class:`.native.NativeDuckDb`, with no dlt pipeline.
The file is held under the package's lock (:mod:`.file_lock`): exclusive to write, shared to read,
and let go between uses when someone waits for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination import sql as destination_sql
from airflow_pg_replication.destination.columns import json_column_names
from airflow_pg_replication.destination.dlt_table import DltTableDestination
from airflow_pg_replication.destination.duckdb import file_lock
from airflow_pg_replication.destination.duckdb.default_file import default_duckdb_path
from airflow_pg_replication.destination.duckdb.native import MEMORY_LIMIT_MB, NativeDuckDb
from airflow_pg_replication.destination.duckdb.session import DuckDbSession
from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.destination.state_table import STATE_TABLE, ReplicationState, state_statements
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_pg_replication.destination.snapshot_progress import SnapshotProgress, StoredProgress


def wal_bytes(path: str) -> int:
    """Bytes in a DuckDB file's WAL: commits not yet checkpointed into the file (0: none)."""
    try:
        return os.path.getsize(path + ".wal")
    except OSError:
        return 0


class DuckDbTableDestination(DltTableDestination):
    """One table's copy in a DuckDB file (default: ``$AIRFLOW_HOME/pg_replication.duckdb``).

    A unit of work holds the file (lock and one connection, which dlt's clients share) from
    ``__enter__`` to ``__exit__``, or until :meth:`release_file`; its next use opens it again.
    """

    opens_in_background = True
    #: False: every load takes dlt's generic path, as another destination would (tests use it to
    #: exercise that path on a real database).
    native = True
    resumable_snapshots = True

    def __init__(self, spec: Mapping[str, Any], **kwargs: Any) -> None:
        spec = dict(spec)
        spec["credentials"] = str(spec.get("credentials") or default_duckdb_path())
        super().__init__(spec, **kwargs)
        self.path = spec["credentials"]
        self._duckdb: Any = None  # the unit's connection
        self._deferred_checkpoints = False
        self._released = False  # let go by release_file and not opened again yet
        self._file = contextlib.ExitStack()  # the file: its lock and connection

    def describe(self) -> str:
        return f"{self.spec['dataset']}.{self.destination_table} in {self.path}"

    # -- the file --------------------------------------------------------------------------------

    def __enter__(self) -> DuckDbTableDestination:
        try:
            self._open_file()
        except BaseException as exc:  # let go of what was taken (the lock file), or a retry waits on it
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _open_file(self) -> None:
        """Lock the file (exclusive, or shared to read) and open it; waits for other holders."""
        mode = file_lock.SHARED if self.read_only else file_lock.EXCLUSIVE
        what = f"{'read' if self.read_only else 'write'} {self.table_name}"
        try:
            self._file.enter_context(
                file_lock.locked(self.path, mode, timeout=file_lock.WRITER_TIMEOUT_SECONDS, what=what)
            )
            if self.read_only and not os.path.exists(self.path):
                # Nothing loaded yet: an empty in-memory database answers (no state, no table) and no file
                # is made, by us or by dlt.
                import duckdb

                con = duckdb.connect(":memory:")
            else:
                con = file_lock.connect(self.path, read_only=self.read_only, what=what)
            self._file.callback(con.close)
            if not self.read_only:
                # dlt's SQL client turns checkpoint-on-shutdown back on for the whole database when it
                # borrows the connection; turned off again right before the close (callbacks run last first)
                self._file.callback(con.execute, "PRAGMA disable_checkpoint_on_shutdown")
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

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._duckdb = None
            self._released = False
            self._file.close()

    def release_file(self) -> None:
        """Close the file and let go of its lock, so others may use it; what was committed stays.

        The unit's SQL session and dlt pipeline go with the connection (made again on next use).
        """
        if self._duckdb is None:
            return
        self._sql = self._pipeline = self._duckdb = None
        self._released = True
        self._file.close()

    def reopen_file(self) -> None:
        if self._duckdb is None:
            self._open_file()
            self._released = False

    def others_wait_for_file(self) -> bool:
        return file_lock.someone_waits(self.path)

    @property
    def file_open(self) -> bool:
        return self._duckdb is not None

    def defer_checkpoints(self) -> None:
        """Commits of this unit do not checkpoint: they stay in DuckDB's WAL (durable; readers see them).

        For CDC: a batch's commit does not wait for a checkpoint; the next batch does it with
        :meth:`checkpoint` while PostgreSQL decodes its own batch. Past 256 MB of WAL a commit
        still checkpoints, so the next opener never replays more. Kept across :meth:`reopen_file`.
        """
        self._deferred_checkpoints = True
        if self._duckdb is not None:
            self._duckdb.execute("SET wal_autocheckpoint = '256MB'")

    def checkpoint(self) -> None:
        if self._duckdb is not None and not self.read_only and wal_bytes(self.path):
            self._duckdb.execute("CHECKPOINT")

    # -- clients -----------------------------------------------------------------------------------

    def dlt_destination(self) -> Any:
        import dlt

        return dlt.destinations.duckdb(self._duckdb or self.path)

    @contextlib.contextmanager
    def sql_client(self) -> Iterator[Any]:
        """A :class:`.DuckDbSession` on the unit's connection: no dlt configuration to resolve."""
        if self._sql is None:
            if self._released:
                self.reopen_file()  # let go by release_file: take the file again
            if not self.native:
                with super().sql_client() as client:
                    yield client
                return
            self._sql = DuckDbSession(self._duckdb, self.spec["dataset"])
        yield self._sql

    # -- state and loads ---------------------------------------------------------------------------

    def prepare_replace(
        self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict], primary_key: Sequence[str]
    ) -> None:
        """dlt creates or evolves the table (with no rows) in the same run that creates the state
        table, when either is needed, so a first snapshot pays for one dlt run, not two."""
        if not self.native or self._fits(schema):
            self.write_state(state)
            return
        with self.sql_client() as client:
            has_state_table = destination_sql.has_rows(client, STATE_TABLE)
        if has_state_table:
            self.write_state(state)
        self.widen_columns(columns)
        table = self.merge_resource([schema.empty_table()], columns, primary_key)
        from airflow_pg_replication.destination.state_table import state_resource

        self.run([table] if has_state_table else [state_resource(state), table])

    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[dict],
        primary_key: Sequence[str],
        *,
        schema: pa.Schema,
        state: ReplicationState | None = None,
        progress: SnapshotProgress | None = None,
    ) -> None:
        """dlt creates or evolves the table (with no rows), then the rows stream in and the state row
        is written in one transaction. ``progress``: a resumable copy (see :meth:`.NativeDuckDb.replace`)."""
        if self.native and not self._fits(schema):
            self.merge([schema.empty_table()], columns, primary_key)  # dlt creates / evolves the table
        if not (self.native and self._fits(schema)):
            super().replace(batches, columns, primary_key, schema=schema, state=state)
            return
        with self.sql_client() as client:
            after, later = self._native_state(client, state)
            NativeDuckDb(client, self.destination_table, json_columns=json_column_names(columns)).replace(
                batches, schema, after, progress=progress
            )
        if later is not None:
            self.write_state(later)

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
        """When the table already has the batch's shape: one transaction for all of it, state included.
        Otherwise dlt's steps (which also add new columns and widen changed ones)."""
        if self.native:
            with self.sql_client() as client:  # one session: shape check, batch and state
                native = NativeDuckDb(client, self.destination_table, json_columns=json_column_names(columns))
                if upserts is None or upserts.num_rows == 0 or native.fits(upserts.schema):
                    trunc = self._truncate_statement(client, truncate) if truncate is not None else None
                    after, later = self._native_state(client, state)
                    native.merge(upserts, key_columns, delete_keys, trunc, after)
                    if later is not None:  # applied; only the first state write is left
                        self.write_state(later)
                    return
        super().apply_batch(
            upserts=upserts,
            delete_keys=delete_keys,
            truncate=truncate,
            columns=columns,
            key_columns=key_columns,
            state=state,
        )

    def read_snapshot_progress(self) -> StoredProgress | None:
        from airflow_pg_replication.destination.snapshot_progress import read_progress

        with self.sql_client() as client:
            return read_progress(client.native_connection, client, self.table_name)

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
        return (
            compose(
                "UPDATE",
                table,
                "SET",
                deleted,
                "= ?,",
                client.escape_column_name(LSN_COLUMN),
                "= ? WHERE",
                deleted,
                "IS NULL",
            ),
            [at, lsn],
        )
