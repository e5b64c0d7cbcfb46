"""How far a snapshot's copy has got, committed with its rows: ``_pg_replication_snapshot_progress``.

One row per page range of the copy in progress: the exported snapshot it is read under, where
the rows go (``in_place``: the empty destination table itself; ``staging``: a staging table
swapped in at the end), the rows of the range committed so far, and whether the range is done.
The rows are rewritten in every commit of the copy's rows and deleted in the transaction that
makes the copy the table's content. A copy that finds them, and can still import their snapshot,
goes on from there; else it starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_pg_replication.destination.sql import compose

PROGRESS_TABLE = "_pg_replication_snapshot_progress"
IN_PLACE = "in_place"
STAGING = "staging"

#: One range's position: (range index, first page, end page or None, rows committed, done).
Position = tuple[int, int, "int | None", int, bool]


@dataclass
class StoredProgress:
    """What an interrupted copy left: its snapshot, its consistent point, its target, each range's position."""

    snapshot: str
    snapshot_lsn: int
    target: str
    ranges: dict[int, tuple[int, bool]]  # range index -> (rows committed, done)
    pages: dict[int, tuple[int, int | None]]  # range index -> (first page, end page)

    @property
    def rows(self) -> int:
        return sum(rows for rows, _done in self.ranges.values())


@dataclass
class SnapshotProgress:
    """A resumable copy, as the destination records it in each commit of the copy's rows.

    ``positions`` gives every range's position at the moment of a commit (the rows the writer has
    taken). ``resume_target`` is set when going on from :class:`StoredProgress`: the rows go on into
    the same target, which already holds the committed ranges.
    """

    table_name: str
    snapshot: str
    snapshot_lsn: int
    positions: Callable[[], list[Position]]
    resume_target: str | None = None
    commits: int = field(default=0)


def create_statement(client: Any) -> str:
    table = client.make_qualified_table_name(PROGRESS_TABLE)
    return compose(
        "CREATE TABLE IF NOT EXISTS",
        table,
        "(table_name VARCHAR NOT NULL, snapshot_name VARCHAR NOT NULL, snapshot_lsn BIGINT NOT NULL,",
        "target VARCHAR NOT NULL, range_index INTEGER NOT NULL, first_page BIGINT NOT NULL, end_page BIGINT,",
        "rows_committed BIGINT NOT NULL, done BOOLEAN NOT NULL, committed_at TIMESTAMP WITH TIME ZONE NOT NULL)",
    )


def clear_statement(client: Any, table_name: str) -> tuple[str, list]:
    return compose("DELETE FROM", client.make_qualified_table_name(PROGRESS_TABLE), "WHERE table_name = ?"), [
        table_name
    ]


def record_statements(client: Any, progress: SnapshotProgress, target: str) -> list[tuple[str, list]]:
    """The progress rows as of now (``?`` placeholders), replacing the table's earlier ones."""
    positions = progress.positions()
    statements = [clear_statement(client, progress.table_name)]
    if positions:
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, now())"] * len(positions))
        params: list[Any] = []
        for index, first, end, rows, done in positions:
            params += [progress.table_name, progress.snapshot, progress.snapshot_lsn, target, index, first, end]
            params += [rows, done]
        statements.append(
            (compose("INSERT INTO", client.make_qualified_table_name(PROGRESS_TABLE), "VALUES", values), params)
        )
    return statements


def read_progress(con: Any, client: Any, table_name: str) -> StoredProgress | None:
    """The interrupted copy of ``table_name`` (a DuckDB connection ``con``), or None."""
    import duckdb

    table = client.make_qualified_table_name(PROGRESS_TABLE)
    try:
        rows = con.execute(
            compose(
                "SELECT snapshot_name, snapshot_lsn, target, range_index, first_page, end_page, rows_committed, done",
                "FROM",
                table,
                "WHERE table_name = ? ORDER BY range_index",
            ),
            [table_name],
        ).fetchall()
    except duckdb.CatalogException:
        return None
    if not rows:
        return None
    snapshot, lsn, target = rows[0][0], rows[0][1], rows[0][2]
    return StoredProgress(
        snapshot=snapshot,
        snapshot_lsn=int(lsn),
        target=target,
        ranges={int(r[3]): (int(r[6]), bool(r[7])) for r in rows},
        pages={int(r[3]): (int(r[4]), None if r[5] is None else int(r[5])) for r in rows},
    )
