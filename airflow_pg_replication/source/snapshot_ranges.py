"""A big table cut into ranges of heap pages (CTID ranges), each read on its own connection.

A range is read with ``WHERE ctid >= '(first,0)' AND ctid < '(end,0)'``, a TID range scan
(PostgreSQL 14+): only its pages are read, in page order and, within a page, in line-pointer
order. Under one snapshot the same range always gives the same rows in the same order, so a copy
that stopped after ``n`` rows of a range can go on by reading the range again and skipping ``n``.
The last range has no end: pages added while the ranges were planned are still read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

#: Heap pages per range (8 kB pages: 64 MB of heap, about a quarter-million narrow rows). Small enough
#: that a range re-read after a crash costs little, large enough that a range's start-up cost is noise.
RANGE_PAGES = 8192
#: Tables with fewer heap pages are read in one stream, with no ranges (and no resume): 256 MB.
MIN_RANGED_PAGES = 32768
#: TID range scans came with PostgreSQL 14; before, a ctid condition would scan the whole table per range.
MIN_SERVER_VERSION = 140000


@dataclass(frozen=True)
class PageRange:
    """Heap pages ``[first_page, end_page)`` of a table; ``end_page`` None: to the table's end."""

    index: int
    first_page: int
    end_page: int | None

    def where(self) -> sql.Composable:
        """The range's condition on ``ctid``, for the copy's ``WHERE``."""
        from psycopg import sql

        start = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({self.first_page},0)"))
        if self.end_page is None:
            return start
        return sql.SQL("{} AND ctid < {}::tid").format(start, sql.Literal(f"({self.end_page},0)"))

    def describe(self) -> str:
        return f"pages {self.first_page:,}–{'end' if self.end_page is None else f'{self.end_page:,}'}"


def heap_pages(conn: psycopg.Connection, schema: str, table: str) -> int:
    """The table's heap size in pages now (its main fork; not the planner's estimate)."""
    from psycopg import sql

    query = sql.SQL(
        "SELECT pg_catalog.pg_relation_size({}::regclass, 'main') / pg_catalog.current_setting('block_size')::int8"
    ).format(sql.Literal(sql.Identifier(schema, table).as_string(conn)))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def plan_page_ranges(pages: int, *, range_pages: int = RANGE_PAGES) -> list[PageRange]:
    """Cut ``pages`` heap pages into ranges of ``range_pages``; the last one open-ended."""
    if range_pages < 1:
        raise ValueError(f"range_pages must be at least 1, not {range_pages}")
    starts = list(range(0, max(pages, 1), range_pages))
    return [PageRange(i, first, starts[i + 1] if i + 1 < len(starts) else None) for i, first in enumerate(starts)]


def ranges_for(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    *,
    min_ranged_pages: int = MIN_RANGED_PAGES,
    range_pages: int = RANGE_PAGES,
) -> list[PageRange] | None:
    """The table's page ranges, or None to read it in one stream (small, or a server without TID range scans)."""
    if conn.info.server_version < MIN_SERVER_VERSION:
        return None
    pages = heap_pages(conn, schema, table)
    if pages < min_ranged_pages:
        return None
    return plan_page_ranges(pages, range_pages=range_pages)


def default_parallelism(cpus: int | None = None) -> int:
    """Connections reading ranges at once when the registry does not say: half the machine's CPUs, 1 to 4.

    The destination's one writer and the source's backends share the machine with the readers.
    """
    import os

    n = cpus if cpus is not None else (os.cpu_count() or 2)
    return max(1, min(4, n // 2))
