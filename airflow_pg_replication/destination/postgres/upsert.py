"""Rows written by key into a PostgreSQL replica: staged in a temporary table by ``COPY``, then one statement.

* **Staging.** Arrow rows go as CSV (:func:`.values.to_csv`) into a temporary table made like the
  replica's columns, dropped with the transaction.
* **Upserts.** Where the replica has an index on exactly its key columns (made with it) and the
  server has ``MERGE`` (PostgreSQL 15), one ``MERGE`` updates the rows that are there (every
  column: the staged value, or its default for a column the rows do not carry, as an insert would
  give it) and inserts the others. An update in place leaves the key index alone when it stays on
  its page (a HOT update: the tables made here keep :data:`FILLFACTOR`), where a ``DELETE`` and an
  ``INSERT`` add an index entry for each row. Otherwise, and when the ``MERGE`` finds a key twice
  in the replica or in the staged rows (a key the source does not enforce), the rows of the staged
  keys are deleted and the staged rows inserted: one row per staged row, exactly as before.
* **Plans.** The replica has no statistics until it is analyzed (autovacuum may be off, or behind
  a snapshot just loaded) and its key index is not unique, so the planner expects thousands of
  rows per key and scans the whole index or table for each batch. A batch matched on an index is
  joined by index probes (a nested loop, the hash and merge joins off for its statements).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.postgres.types import matched_as_text
from airflow_pg_replication.phase_timing import phase, timed_iter
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

log = logging.getLogger(__name__)

#: Fill factor of the replica tables made here: room on each page for an updated row to stay there (HOT).
FILLFACTOR = 90

#: The first server version with ``MERGE``.
MERGE_VERSION = 150000

STAGED = "pg_replication_staged"

#: Rows of a batch made into CSV at a time while the server parses the ones before.
SLICE_ROWS = 16_384

#: A replica's columns as the catalog has them: name -> (type oid, typmod, type name of it or its elements).
Columns = dict[str, tuple[int, int, str]]


@dataclass(frozen=True)
class KeyedTable:
    """A replica table written by key in the caller's transaction on ``conn``."""

    conn: psycopg.Connection
    name: sql.Identifier
    columns: Columns  # its columns now
    key_columns: Sequence[str]
    indexed: bool  # an index on exactly ``key_columns``

    @property
    def whole_rows(self) -> bool:
        """Rows matched on all their values, NULL-safe: a table keyed by all its columns and unindexed."""
        data = {n for n in self.columns if n not in (LSN_COLUMN, DELETED_AT_COLUMN)}
        return set(self.key_columns) >= data and not self.indexed

    @property
    def probes(self) -> bool:
        """Whether the key is matched on the index (no key column compared as text)."""
        return self.indexed and not any(matched_as_text(self.columns.get(k, (0, 0, ""))[2]) for k in self.key_columns)

    @property
    def mergeable(self) -> bool:
        """Whether upserts go by ``MERGE``: matched on the index, on PostgreSQL 15 or later."""
        return self.probes and self.conn.info.server_version >= MERGE_VERSION

    def match(self, other: sql.Composable, *, alias: str = "t") -> sql.Composable:
        """``t.k = o.k AND …``; on text output for types without equality; NULL-safe for :attr:`whole_rows`."""
        from psycopg import sql

        parts = []
        op = sql.SQL("IS NOT DISTINCT FROM" if self.whole_rows else "=")
        for k in self.key_columns:
            left = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(k))
            right = sql.SQL("{}.{}").format(other, sql.Identifier(k))
            if matched_as_text(self.columns[k][2] if k in self.columns else ""):
                left, right = sql.SQL("{}::text").format(left), sql.SQL("{}::text").format(right)
            parts.append(sql.SQL("{} {} {}").format(left, op, right))
        return sql.SQL(" AND ").join(parts)

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        """The statements inside join staged rows by index probes when the key is indexed (see the module)."""
        if not self.probes:
            yield
            return
        names = ("enable_hashjoin", "enable_mergejoin")
        before = self.conn.execute(
            "SELECT current_setting(%s), current_setting(%s), set_config(%s, 'off', true), set_config(%s, 'off', true)",
            (*names, *names),
        ).fetchone()
        assert before is not None
        try:
            yield
        finally:
            self.conn.execute(
                "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
                (names[0], before[0], names[1], before[1]),
            )

    def delete_matching(self, rows: sql.Identifier) -> int:
        """Delete the rows whose key is among ``rows``'; how many went."""
        from psycopg import sql

        with phase("postgres.delete"), self.probing():
            cur = self.conn.execute(
                sql.SQL("DELETE FROM {} AS t USING {} WHERE {}").format(self.name, rows, self.match(rows))
            )
        return cur.rowcount

    def insert(self, rows: sql.Identifier, names: Sequence[str]) -> None:
        from psycopg import sql

        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        with phase("postgres.insert"):
            self.conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(self.name, cols, cols, rows))

    def delete(self, keys: pa.Table) -> None:
        """Delete the rows of a batch's deleted keys."""
        with staged(self.conn, self.name, keys.column_names, [self._in_order(keys)], in_memory=True) as (rows, _):
            self.delete_matching(rows)

    def upsert(self, batch: pa.Table) -> None:
        """Write a batch's rows (one row per key) over the rows of their keys."""
        names = batch.column_names
        with staged(self.conn, self.name, names, [self._in_order(batch)], in_memory=True) as (rows, count):
            if not self.key_columns:
                self.insert(rows, names)
            elif not (self.mergeable and self._merged(rows, names, count)):
                self.delete_matching(rows)
                self.insert(rows, names)

    def _in_order(self, rows: pa.Table) -> pa.Table:
        return in_key_order(rows, self.key_columns) if self.probes else rows

    def _merged(self, rows: sql.Identifier, names: Sequence[str], count: int) -> bool:
        """``MERGE`` the staged rows; False (and nothing changed) when a key is there twice, on either side."""
        import psycopg
        from psycopg import sql

        staged_col = [sql.SQL("{}.{}").format(rows, sql.Identifier(n)) for n in names]
        sets = [sql.SQL("{} = {}").format(sql.Identifier(n), v) for n, v in zip(names, staged_col)]
        sets += [sql.SQL("{} = DEFAULT").format(sql.Identifier(n)) for n in self.columns if n not in names]
        statement = sql.SQL(
            "MERGE INTO {} AS t USING {} ON {} WHEN MATCHED THEN UPDATE SET {}"
            " WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})"
        ).format(
            self.name,
            rows,
            self.match(rows),
            sql.SQL(", ").join(sets),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(staged_col),
        )
        try:
            with phase("postgres.merge"), self.probing(), self.conn.transaction():  # a savepoint
                status = self.conn.execute(statement).statusmessage or ""  # MERGE <rows written>
                if status.split()[-1:] != [str(count)]:  # a key the replica holds more than once: updated as many times
                    raise _KeyTwice
        except (_KeyTwice, psycopg.errors.CardinalityViolation):  # ... or a key staged twice
            log.info("%s: a key is there more than once: its rows are deleted and inserted", self.name.as_string())
            return False
        return True


class _KeyTwice(Exception):
    """The ``MERGE`` matched a key more than once: rolled back to its savepoint."""


def in_key_order(rows: pa.Table, key_columns: Sequence[str]) -> pa.Table:
    """``rows`` sorted by their key, so the index probes of a batch walk the index (and often the table) in order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if rows.num_rows < 2 or not key_columns:
        return rows
    try:
        return rows.take(pc.sort_indices(rows, [(k, "ascending") for k in key_columns]))
    except pa.ArrowException:  # a key type Arrow does not sort: any order will do
        return rows


@contextlib.contextmanager
def staged(
    conn: psycopg.Connection, like: sql.Identifier, names: Sequence[str], tables: Iterable[Any], *, in_memory: bool
) -> Iterator[tuple[sql.Identifier, int]]:
    """A temporary table of ``like``'s ``names`` columns (same types) holding ``tables``' rows, and their count.

    ``in_memory``: see :func:`copy_rows`."""
    from psycopg import sql

    staging = sql.Identifier(STAGED)
    with phase("postgres.stage"):
        conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                staging, sql.SQL(", ").join(map(sql.Identifier, names)), like
            )
        )
    with phase("postgres.staging_copy"):  # postgres.copy inside, and the server's parsing until the COPY ends
        count = copy_rows(conn, staging, names, tables, in_memory=in_memory)
    yield staging, count
    with phase("postgres.stage"):
        conn.execute(sql.SQL("DROP TABLE {}").format(staging))  # on an error, the rollback drops it


def copy_rows(
    conn: psycopg.Connection,
    target: sql.Composable,
    names: Sequence[str],
    tables: Iterable[Any],
    *,
    in_memory: bool = False,
) -> int:
    """``COPY`` Arrow tables or record batches of columns ``names`` into ``target`` as CSV; how many rows.

    ``in_memory``: the rows are all in memory already (a batch being staged); they go in slices of
    :data:`SLICE_ROWS` through a writer thread, so the server parses one slice while the next is
    made. Rows read as they come (a snapshot) go as they come, holding no more than one at a time.
    """
    from psycopg import sql
    from psycopg.copy import QueuedLibpqWriter

    from airflow_pg_replication.destination.postgres.values import to_csv

    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target, cols)
    count = 0
    with conn.cursor() as cur, cur.copy(statement, writer=QueuedLibpqWriter(cur) if in_memory else None) as copy:
        for data in timed_iter("postgres.wait_rows", tables):
            step = SLICE_ROWS if in_memory else max(data.num_rows, 1)
            for start in range(0, data.num_rows, step):
                with phase("postgres.copy"):
                    with phase("postgres.csv"):
                        text = to_csv(data.slice(start, step).select(list(names)))
                    copy.write(text)
            count += data.num_rows
    return count
