"""The destination interface: one table's place in a destination, its state row, and its loads.

Every destination keeps three promises the protocols in ``sync/`` rely on:

* ``replace`` swaps the table's content for a snapshot, then records the state;
* ``apply_batch`` merges a folded batch (truncate, deletes by key, upserts), then records the state;
* ``read_state`` / ``write_state`` keep the table's :class:`ReplicationState` with the data, written
  only after the data it describes has committed (in the same transaction where the destination
  allows, as DuckDB does).

Implementations: :class:`.dlt_table.DltTableDestination` (every dlt destination),
:class:`.duckdb.table.DuckDbTableDestination` (Arrow straight into the file) and
:class:`.postgres.table.PostgresTableDestination` (psycopg, the source's own types); pick one with
:func:`.factory.table_destination`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_pg_replication.destination.snapshot_progress import StoredProgress
    from airflow_pg_replication.destination.state_table import ReplicationState


class TableDestination(abc.ABC):
    """One table's copy in a destination. Use as a context manager: one unit of work.

    ``spec`` is the registry's ``destination`` mapping (type, credentials, dataset) with any
    Airflow connection already resolved into credentials. Everything a unit takes (files,
    connections, working dirs) is let go on every way out.
    """

    #: True when opening is slow local work (a DuckDB file's WAL replay) worth overlapping with the
    #: source's decoding on a thread; False when the destination keeps per-thread context (dlt).
    opens_in_background = False
    #: True for PostgreSQL: its columns have the source's own types, so values that Arrow could lose
    #: (numeric, time, arrays) travel as the source's text output (:func:`.type_map.text_transport`),
    #: :meth:`fetch_rows` returns PostgreSQL's text output of every value, and reconciliation selects
    #: key ranges there with the source's own predicate.
    keeps_postgres_types = False
    #: True when :meth:`replace` takes ``progress=`` (a :class:`.snapshot_progress.SnapshotProgress`),
    #: recording how far a copy got with its rows, and :meth:`read_snapshot_progress` reads it back.
    resumable_snapshots = False

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        table_name: str,
        destination_table: str,
        pipeline_name: str,
        read_only: bool = False,
    ) -> None:
        self.spec = dict(spec)
        self.spec.setdefault("dataset", "replica")
        self.table_name = table_name  # the source's schema.table: the state row's key
        self.destination_table = destination_table
        self.pipeline_name = pipeline_name
        self.read_only = read_only
        self._stack = contextlib.ExitStack()  # what the unit of work took

    def describe(self) -> str:
        """Where the copy is, for logs and errors (no credentials)."""
        return f"{self.spec['dataset']}.{self.destination_table} in {self.spec['type']}"

    def __enter__(self) -> TableDestination:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- state ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def read_state(self) -> ReplicationState | None:
        """The table's state row, or None when nothing was ever loaded for it."""

    @abc.abstractmethod
    def write_state(self, state: ReplicationState) -> None:
        """Record ``state``; call it only after the data it describes has committed."""

    # -- loads ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def prepare_replace(
        self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict], primary_key: Sequence[str]
    ) -> None:
        """Record ``state`` (the copy is not usable yet) and have the table ready for :meth:`replace`."""

    @abc.abstractmethod
    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[dict],
        primary_key: Sequence[str],
        *,
        schema: pa.Schema,
        state: ReplicationState | None = None,
    ) -> None:
        """Replace the table's content with ``batches`` and, when given, record ``state`` with or after it."""

    @abc.abstractmethod
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
        """Apply one folded batch: truncate (at, lsn, soft), hard deletes by key, upserts; then ``state``.

        Every step is idempotent, so a batch re-applied after a crash gives the same table.
        """

    @abc.abstractmethod
    def merge(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> None:
        """Upsert rows by key (incremental refresh)."""

    @abc.abstractmethod
    def has_rows(self) -> bool:
        """True when the destination table exists and holds at least one row."""

    @abc.abstractmethod
    def fetch_rows(
        self, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, dict]:
        """Current values of ``columns`` for these keys: key -> {column: value} (kept TOAST values)."""

    @abc.abstractmethod
    def arrow_client(self) -> contextlib.AbstractContextManager[Any]:
        """A SQL client whose cursors stream Arrow (``execute_query`` / ``iter_arrow``), for reconciliation."""

    # -- a destination that is a local file (DuckDB) lets it go between uses; others hold nothing --

    def read_snapshot_progress(self) -> StoredProgress | None:
        """How far an interrupted copy of the table got (never recorded, here)."""
        return None

    def defer_checkpoints(self) -> None:  # noqa: B027  deliberately a no-op hook: only DuckDB overrides it
        """Commits of this unit may stay in a write-ahead log until :meth:`checkpoint` (a no-op here)."""

    def checkpoint(self) -> None:  # noqa: B027  deliberately a no-op hook: only DuckDB overrides it
        """Fold what the destination's own write-ahead log holds into its files (a no-op here)."""

    def release_file(self) -> None:  # noqa: B027  deliberately a no-op hook: only DuckDB overrides it
        """Let others use the destination's file until the next use (a no-op here)."""

    def reopen_file(self) -> None:  # noqa: B027  deliberately a no-op hook: only DuckDB overrides it
        """Take the file again after :meth:`release_file` (a no-op here)."""

    def others_wait_for_file(self) -> bool:
        """True when another task or reader waits for this unit's file (never, here)."""
        return False

    @property
    def file_open(self) -> bool:
        """True while this unit holds a destination file open (never, here)."""
        return False
