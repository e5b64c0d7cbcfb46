"""Read a table's page ranges on several connections at once, under one exported snapshot.

The data flow::

    ranges [0, 1, 2, …] ──► reader threads (each: ADBC binary COPY of one range at a time,
                            SET TRANSACTION SNAPSHOT S, typed like copy_batches) ──►
    one queue bounded in bytes (two batches a reader) ──► the consumer (the destination's one writer), batches of any
    range interleaved; the ledger counts each range's rows handed over and the ranges finished

Every reader imports the same snapshot, so the union of the ranges is the table exactly as the
snapshot sees it. A consumer that commits what it took can record :meth:`RangeLedger.positions`
with it: a later copy under the same snapshot skips, in each range, the rows already committed
(see :mod:`.snapshot_ranges` for why a range re-read gives the same rows in the same order). A
reader whose connection breaks reads its range again, skipping what it had handed over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.phase_timing import phase
from airflow_pg_replication.source.binary_copy import BinaryCopyReader, end_session, snapshot_session
from airflow_pg_replication.source.snapshot_reads import snapshot_schema

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.snapshot_ranges import PageRange
    from airflow_pg_replication.source.snapshot_reads import CopyProgress

log = logging.getLogger(__name__)

#: Batches of about ``block_bytes`` that may wait for the consumer, per reader and one more: enough to keep
#: every reader busy while the writer works, and the process's memory flat whatever the table's size.
QUEUED_BATCHES_PER_READER = 2
#: Times one range is read again after its connection broke, before the copy fails.
RANGE_RETRIES = 2


@dataclass
class RangeLedger:
    """Per range: rows handed to the consumer (including those skipped as already committed), and done."""

    ranges: Sequence[PageRange]
    rows: dict[int, int] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def positions(self) -> list[tuple[PageRange, int, bool]]:
        """Each range with the rows the consumer has taken of it so far, and whether it has taken all."""
        return [(r, self.rows.get(r.index, 0), r.index in self.done) for r in self.ranges]


class _Queue:
    """Items in order, bounded by the sum of their bytes (one item always fits)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: list[tuple[Any, int]] = []
        self.bytes = 0
        self.cond = threading.Condition()
        self.closed = False  # the consumer went away: producers stop

    def put(self, item: Any, nbytes: int) -> bool:
        with self.cond:
            while self.items and self.bytes + nbytes > self.max_bytes and not self.closed:
                self.cond.wait(0.1)
            if self.closed:
                return False
            self.items.append((item, nbytes))
            self.bytes += nbytes
            self.cond.notify_all()
            return True

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item, nbytes = self.items.pop(0)
            self.bytes -= nbytes
            self.cond.notify_all()
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


_END = "end"  # a range's last item
_FAILED = "failed"


def ranged_batches(
    conn: psycopg.Connection,
    snapshot: str,
    info: TableInfo,
    ranges: Sequence[PageRange],
    *,
    lsn: int,
    parallelism: int,
    ledger: RangeLedger,
    progress: CopyProgress,
    committed: Mapping[int, tuple[int, bool]] | None = None,
    block_bytes: int = 8 << 20,
    queue_bytes: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``ranges`` under ``snapshot`` as typed batches (``_pg_lsn`` = ``lsn``), ranges interleaved.

    ``committed`` (range index -> rows, done) from an earlier copy under the same snapshot: those
    rows are skipped and finished ranges not read. ``conn`` only gives the connection parameters.
    """
    import pyarrow as pa

    committed = dict(committed or {})
    todo = [r for r in ranges if not committed.get(r.index, (0, False))[1]]
    for r in ranges:
        rows, done = committed.get(r.index, (0, False))
        ledger.rows[r.index] = rows
        if done:
            ledger.done.add(r.index)
    workers = max(1, min(parallelism, len(todo)))
    queue = _Queue(queue_bytes or block_bytes * (QUEUED_BATCHES_PER_READER * workers + 1))
    pending = list(reversed(todo))
    lock = threading.Lock()
    schema = snapshot_schema(info)

    def next_range() -> PageRange | None:
        with lock:
            return pending.pop() if pending else None

    def read_range(r: PageRange, sessions: list[Any]) -> bool:
        """Hand over the range's rows past those committed; False when the consumer went away.

        ``sessions`` holds the reader thread's ADBC connection at the snapshot (opened on first use,
        dropped when it breaks), so a reader reads range after range on one connection.
        """
        skip = committed.get(r.index, (0, False))[0]
        handed = 0  # rows of this range put in the queue by this reader, skipped ones included
        for attempt in range(RANGE_RETRIES + 1):
            try:
                if not sessions:
                    sessions.append(snapshot_session(conn, snapshot))
                with BinaryCopyReader(
                    conn, info, where=r.where(), block_bytes=block_bytes, session=sessions[0]
                ) as reader:
                    seen = 0
                    for raw in reader:
                        n = raw.num_rows
                        if seen + n <= max(skip, handed):
                            seen += n
                            continue
                        start = max(skip, handed) - seen
                        seen += n
                        arrays = reader.convert(raw.slice(start) if start else raw)
                        arrays.append(pa.repeat(pa.scalar(lsn, pa.int64()), n - start))
                        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
                        if not queue.put((r.index, batch), batch.nbytes):
                            return False
                        handed = seen
                    if seen < skip:
                        raise RuntimeError(
                            f"{info.qualified_name}: range {r.describe()} has {seen:,} rows under snapshot "
                            f"{snapshot}, fewer than the {skip:,} committed before: not the same snapshot"
                        )
                return queue.put((r.index, _END), 0)
            except Exception as exc:
                if sessions:  # broken, or in an aborted transaction: a retry opens another
                    end_session(sessions.pop())
                if attempt == RANGE_RETRIES or not _is_connection_error(exc):
                    raise
                log.warning(
                    "%s: reading range %s broke after %s rows (%s); reading it again under snapshot %s",
                    info.qualified_name,
                    r.describe(),
                    f"{handed:,}",
                    exc,
                    snapshot,
                )
        return True

    def work() -> None:
        sessions: list[Any] = []  # this reader's connection at the snapshot
        try:
            while (r := next_range()) is not None:
                if not read_range(r, sessions):
                    return
            queue.put((None, _END), 0)
        except BaseException as exc:  # handed to the consumer
            queue.put((None, (_FAILED, exc)), 0)
        finally:
            for session in sessions:
                end_session(session)

    threads = [threading.Thread(target=work, name=f"pg_replication_range_{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    log.info(
        "%s: reading %d of %d page ranges on %d connection(s) under snapshot %s",
        info.qualified_name,
        len(todo),
        len(ranges),
        workers,
        snapshot,
    )
    finished = 0
    yielded = False
    try:
        while finished < workers:
            with phase("snapshot.wait_ranges"):
                index, item = queue.get()
            if index is None:
                if isinstance(item, tuple):
                    raise item[1]
                finished += 1
                continue
            if isinstance(item, str):  # _END
                ledger.done.add(index)
                continue
            progress.bytes += item.nbytes
            progress.tick(item.num_rows)
            ledger.rows[index] = ledger.rows.get(index, 0) + item.num_rows
            yielded = True
            yield item
        if not yielded:  # an empty table still yields one empty batch, so the destination table is created
            yield pa.RecordBatch.from_pylist([], schema=schema)
    finally:
        queue.close()
        for t in threads:
            t.join()


def _is_connection_error(exc: BaseException) -> bool:
    """A broken connection (the range can be read again), not an error in the data or the query."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    return name in ("OperationalError", "IOError", "OSError", "ArrowIOError") and any(
        word in text for word in ("connection", "terminat", "server closed", "broken pipe", "eof")
    )
