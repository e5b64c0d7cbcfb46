"""Consistent, chunked read of a table as Arrow record batches: COPY … CSV streamed through pyarrow."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

from airflow_pg_replication.loading import LSN_COLUMN
from airflow_pg_replication.typemap import arrow_type, text_to_arrow

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    from airflow_pg_replication.source_catalog import TableInfo
    from airflow_pg_replication.typemap import PgColumn

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

    def tick(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info("%s: %s", self.table, self.summary())

    def summary(self) -> str:
        secs = max(time.monotonic() - self.started, 1e-9)
        return (f"{self.rows:,} rows, {self.bytes / 1e6:,.1f} MB in {secs:,.1f} s "
                f"({self.rows / secs:,.0f} rows/s, {self.bytes / 1e6 / secs:,.1f} MB/s)")


class _CopyReader(io.RawIOBase):
    """A file over a psycopg COPY TO STDOUT, so pyarrow's CSV reader can pull from it."""

    def __init__(self, copy: psycopg.Copy, progress: CopyProgress) -> None:
        self._chunks = iter(copy)
        self._buf = memoryview(b"")
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            self._buf = memoryview(chunk)
            self._progress.bytes += len(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


_JSON_ELEMENT_TYPES = ("string", "int16", "int32", "int64", "bool")


def _json_list_type(col: PgColumn) -> pa.DataType | None:
    """For a 1-D array whose elements JSON carries exactly (text-like, integers, bool): its list type.

    Such arrays are read as ``json_build_object('v', col)`` and parsed by Arrow's C++ JSON reader,
    many times faster than parsing PostgreSQL's array literals; values are the same either way.
    """
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
    start, end = (int.from_bytes(offsets[i * 4:(i + 1) * 4], "little", signed=True)
                  for i in (lines.offset, lines.offset + len(lines)))
    data = lines.buffers()[2][start:end]
    table = pajson.read_json(pa.BufferReader(data), parse_options=pajson.ParseOptions(
        explicit_schema=pa.schema([("v", typ)]), newlines_in_values=False))
    return table.column("v").combine_chunks()


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
    from psycopg import sql

    import psycopg

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
    conn: psycopg.Connection, info: TableInfo, *, lsn: int | None, block_bytes: int = 8 << 20,
    progress: CopyProgress | None = None, where: sql.Composable | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the table as typed Arrow record batches of about ``block_bytes`` of CSV each.

    Memory is set by ``block_bytes``, not by the table. Every batch gets the ``_pg_lsn``
    column (``lsn``, the snapshot's LSN). The caller owns the transaction (see :func:`begin_snapshot`).
    """
    import pyarrow as pa
    from pyarrow import csv
    from psycopg import sql

    progress = progress or CopyProgress(info.qualified_name)
    names = info.column_names
    as_json = [_json_list_type(c) for c in info.columns]  # arrays PostgreSQL hands over as JSON documents
    select = [
        sql.SQL("json_build_object('v', {})::text").format(sql.Identifier(c.name)) if j is not None
        else sql.Identifier(c.name)
        for c, j in zip(info.columns, as_json)
    ]
    query = sql.SQL("COPY (SELECT {} FROM {}.{}{}) TO STDOUT (FORMAT csv)").format(
        sql.SQL(", ").join(select),
        sql.Identifier(info.schema), sql.Identifier(info.name),
        sql.SQL(" WHERE ") + where if where is not None else sql.SQL(""),
    )
    read_opts = csv.ReadOptions(column_names=names, block_size=block_bytes, use_threads=True)
    parse_opts = csv.ParseOptions(newlines_in_values=True)
    convert_opts = csv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True,
        quoted_strings_can_be_null=False, null_values=[""],
    )
    lsn_type = pa.int64()
    out_names = [*names, LSN_COLUMN]
    with conn.cursor().copy(query) as copy:
        raw = io.BufferedReader(_CopyReader(copy, progress), buffer_size=1 << 20)
        try:
            reader = csv.open_csv(raw, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" not in str(exc):
                raise
            # an empty table still yields one empty batch, so the destination table is created
            yield pa.RecordBatch.from_pylist([], schema=snapshot_schema(info))
            return
        for batch in reader:
            arrays = [text_to_arrow(batch.column(i), col) if as_json[i] is None
                      else _json_lists(batch.column(i), as_json[i]) for i, col in enumerate(info.columns)]
            arrays.append(pa.repeat(pa.scalar(lsn, lsn_type), batch.num_rows))
            progress.tick(batch.num_rows)
            yield pa.RecordBatch.from_arrays(arrays, names=out_names)
