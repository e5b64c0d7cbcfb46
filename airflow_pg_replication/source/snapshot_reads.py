"""Consistent, chunked read of a table as typed Arrow record batches, under one snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from airflow_pg_replication.phase_timing import phase, timed_iter
from airflow_pg_replication.replica_columns import LSN_COLUMN
from airflow_pg_replication.source.type_map import arrow_type

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    from airflow_pg_replication.source.catalog import TableInfo

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class CopyProgress:
    """Running totals of a copy, logged every ``every`` seconds by :meth:`tick`."""

    table: str
    every: float = 5.0
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)
    expected_rows: int | None = None  # the planner's estimate (pg_class.reltuples), for a share and an ETA

    def tick(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info("%s: %s%s", self.table, self.summary(), self.outlook())

    def outlook(self) -> str:
        """``; ~41 % of ~3,000,000 rows (planner estimate), ETA ~7 s`` while the estimate is ahead, else ``""``."""
        expected = self.expected_rows
        if not expected or self.rows <= 0 or self.rows >= expected:
            return ""
        secs = max(time.monotonic() - self.started, 1e-9)
        eta = (expected - self.rows) / (self.rows / secs)
        return f"; ~{100 * self.rows / expected:.0f} % of ~{expected:,} rows (planner estimate), ETA ~{eta:,.0f} s"

    def summary(self) -> str:
        secs = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.rows:,} rows, {self.bytes / 1e6:,.1f} MB in {secs:,.1f} s "
            f"({self.rows / secs:,.0f} rows/s, {self.bytes / 1e6 / secs:,.1f} MB/s)"
        )


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` while a thread reads up to ``depth`` ahead, so reading overlaps loading.

    The producer's error is raised in the consumer; a consumer that stops early stops the producer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="pg_replication_prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()


def begin_snapshot(conn: psycopg.Connection, snapshot_name: str | None) -> None:
    """Open a read-only repeatable-read transaction, at the exported snapshot when given."""
    import psycopg
    from psycopg import sql

    if conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("begin_snapshot needs an idle connection with autocommit off")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    if snapshot_name:  # must be the transaction's first statement
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
    else:
        conn.execute("SELECT 1")  # start the transaction: its snapshot is taken now


def snapshot_schema(info: TableInfo) -> pa.Schema:
    """The Arrow schema of :func:`copy_batches`' batches: the table's columns, then ``_pg_lsn``."""
    import pyarrow as pa

    return pa.schema([(c.name, arrow_type(c)) for c in info.columns] + [(LSN_COLUMN, pa.int64())])


def copy_batches(
    conn: psycopg.Connection,
    info: TableInfo,
    *,
    lsn: int | None,
    block_bytes: int = 8 << 20,
    progress: CopyProgress | None = None,
    where: sql.Composable | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the table as typed Arrow record batches of about ``block_bytes`` each.

    ``conn`` is in a snapshot transaction (see :func:`begin_snapshot`); the rows are read under
    that snapshot through ADBC's binary COPY (see :mod:`.binary_copy`). Memory is set by
    ``block_bytes``, not by the table. Every batch gets the ``_pg_lsn`` column (``lsn``).
    """
    import pyarrow as pa

    from airflow_pg_replication.source.binary_copy import BinaryCopyReader

    progress = progress or CopyProgress(info.qualified_name)
    lsn_type = pa.int64()
    schema = snapshot_schema(info)
    with BinaryCopyReader(conn, info, where=where, block_bytes=block_bytes) as reader:
        empty = True
        for batch in timed_iter("snapshot.read", reader):  # binary COPY through ADBC
            with phase("snapshot.convert"):  # text-format columns parsed, ADBC's values mapped
                arrays = reader.convert(batch)
            arrays.append(pa.repeat(pa.scalar(lsn, lsn_type), batch.num_rows))
            progress.bytes += batch.nbytes
            progress.tick(batch.num_rows)
            empty = False
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        if empty:  # an empty table still yields one empty batch, so the destination table is created
            yield pa.RecordBatch.from_pylist([], schema=schema)


def estimated_rows(conn: psycopg.Connection, schema: str, table: str) -> int | None:
    """The planner's row count of ``schema.table`` (``pg_class.reltuples``); None when never analyzed."""
    row = conn.execute(
        "SELECT c.reltuples::int8 FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None
