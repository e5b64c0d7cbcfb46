"""Catalog reads on the source: a table's columns, key and replica identity; a slot's state and lag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.source.type_map import TYPE_CATALOG_SQL, PgColumn, PgType, resolve_types

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from airflow_pg_replication.source.pgoutput import Relation

_COLUMNS_SQL = """
SELECT c.oid, c.relkind, c.relreplident, a.attname, a.atttypid, a.atttypmod, a.attnotnull,
       coalesce(a.attnum = ANY (i.indkey), false) AS in_pk
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = %s AND c.relname = %s
ORDER BY a.attnum
"""

_PK_ORDER_SQL = """
SELECT a.attname
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""

#: One slot's state; its last column is the WAL flush position, read in the same statement.
SLOT_SQL = """
SELECT s.slot_name, s.plugin, s.slot_type, d.datname, s.active, s.wal_status,
       s.safe_wal_size, s.restart_lsn::text, s.confirmed_flush_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS lag_bytes,
       current_database() AS this_db,
       (SELECT w.wal_bytes / greatest(extract(epoch FROM now() - w.stats_reset), 1)
        FROM pg_stat_wal w)::float8 AS wal_bytes_per_second,
       s.active_pid, pg_current_wal_flush_lsn()::text AS wal_flush_lsn
FROM pg_replication_slots s
LEFT JOIN pg_database d ON d.oid = s.datoid
WHERE s.slot_name = %s
"""


@dataclass(frozen=True)
class TableInfo:
    """What replication needs to know of a source table."""

    schema: str
    name: str
    oid: int
    relkind: str  # r = table, p = partitioned table
    replica_identity: str  # d = default (primary key), f = full, n = nothing, i = index
    columns: tuple[PgColumn, ...]  # the replicated columns, in table order
    primary_key: tuple[str, ...]  # empty when the table has none and none was configured

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class SlotInfo:
    """A replication slot's health and how much WAL it holds back."""

    name: str
    plugin: str | None
    database: str | None
    active: bool
    wal_status: str | None  # reserved | extended | unreserved | lost
    safe_wal_size: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None
    lag_bytes: int | None
    in_this_database: bool
    wal_bytes_per_second: float | None = None  # the server's average WAL rate since its stats were reset
    active_pid: int | None = None  # the backend reading the slot right now, if any
    wal_flush_lsn: str | None = None  # the server's WAL flush position when the slot was read

    @property
    def seconds_until_invalidated(self) -> float | None:
        """At the WAL rate, when ``max_slot_wal_keep_size`` would invalidate the slot (None: no limit)."""
        if self.safe_wal_size is None or not self.wal_bytes_per_second:
            return None
        return max(self.safe_wal_size, 0) / self.wal_bytes_per_second

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost" or self.restart_lsn is None


def one_value(
    conn: psycopg.Connection, query: str | sql.SQL | sql.Composed, params: Sequence[Any] | None = None
) -> Any:
    """The value a query of one row and one column returns (``SHOW``, ``SELECT f()``, an aggregate)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from a query that always returns one: {query!r}")
    return row[0]


def resolve_column_types(conn: psycopg.Connection, type_oids: Sequence[int]) -> dict[int, PgType]:
    """Resolve type oids (domains, arrays, enums) to the descriptions the type map works from."""
    rows = conn.execute(TYPE_CATALOG_SQL, (list(set(type_oids)),)).fetchall()
    return resolve_types(rows)


def read_table_info(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    *,
    source: str = "the source",
    columns: Sequence[str] | None = None,
    primary_key: Sequence[str] | None = None,
) -> TableInfo:
    """Read a table's columns and key; a missing table or column is a clear error."""
    rows = conn.execute(_COLUMNS_SQL, (schema, table)).fetchall()
    if not rows:
        raise NeedsAttentionError(
            f"table {schema}.{table} does not exist in {source} (or this role cannot see it). "
            "Check the registry's table name (case matters: names are quoted) and GRANT SELECT on it."
        )
    oid, relkind, replident = rows[0][0], rows[0][1], rows[0][2]
    if relkind not in ("r", "p"):
        raise NeedsAttentionError(f"{schema}.{table} is not a table (relkind {relkind!r}); only tables replicate")
    by_name = {r[3]: r for r in rows}
    if columns:
        missing = [c for c in columns if c not in by_name]
        if missing:
            raise NeedsAttentionError(
                f"column(s) {', '.join(missing)} of the registry's columns list do not exist in {schema}.{table}; "
                f"its columns are: {', '.join(by_name)}"
            )
    wanted = [r for r in rows if not columns or r[3] in columns]
    types = resolve_column_types(conn, [r[4] for r in wanted])
    cols = tuple(PgColumn(r[3], types[r[4]], r[5]) for r in wanted)
    if primary_key:
        missing = [c for c in primary_key if c not in by_name]
        if missing:
            raise NeedsAttentionError(f"primary_key column(s) {', '.join(missing)} do not exist in {schema}.{table}")
        pk = tuple(primary_key)
    else:
        pk = tuple(r[0] for r in conn.execute(_PK_ORDER_SQL, (oid,)).fetchall())
    if columns and pk:
        outside = [c for c in pk if c not in columns]
        if outside:
            raise NeedsAttentionError(
                f"the key column(s) {', '.join(outside)} of {schema}.{table} must be in `columns`"
            )
    return TableInfo(schema, table, oid, relkind, replident, cols, pk)


_KEY_NEEDED_BY = {
    "cdc": "cdc cannot tell its rows apart",
    "incremental": "incremental mode cannot merge re-read and updated rows by key",
}


def require_key(info: TableInfo, *, mode: str) -> None:
    """Merging needs a key: fail with both fixes when the table has none."""
    if info.primary_key:
        return
    if mode == "cdc" and info.replica_identity == "f":
        return
    from psycopg import sql

    reason = _KEY_NEEDED_BY.get(mode, f"{mode} cannot tell its rows apart")
    full = sql.SQL("ALTER TABLE {}.{} REPLICA IDENTITY FULL").format(
        sql.Identifier(info.schema), sql.Identifier(info.name)
    )
    raise NeedsAttentionError(
        f"{info.qualified_name} has no primary key, so {reason}. Fix: add a "
        f"primary_key entry to the table in the registry (columns that identify a row), or add a primary key "
        f"to the table" + (f", or run {full.as_string(None)}" if mode == "cdc" else "") + "."
    )


def read_slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    """The slot's state, or None when there is no slot of that name."""
    return slot_info_from_row(conn.execute(SLOT_SQL, (slot,)).fetchone())


async def read_slot_info_async(conn: psycopg.AsyncConnection, slot: str) -> SlotInfo | None:
    """:func:`read_slot_info` over an async connection (for the triggerer)."""
    cur = await conn.execute(SLOT_SQL, (slot,))
    return slot_info_from_row(await cur.fetchone())


def slot_info_from_row(row: tuple | None) -> SlotInfo | None:
    """A :data:`SLOT_SQL` row as :class:`SlotInfo` (None: no such slot)."""
    if row is None:
        return None
    return SlotInfo(
        name=row[0],
        plugin=row[1],
        database=row[3],
        active=bool(row[4]),
        wal_status=row[5],
        safe_wal_size=row[6],
        restart_lsn=row[7],
        confirmed_flush_lsn=row[8],
        retained_bytes=row[9],
        lag_bytes=row[10],
        in_this_database=row[3] == row[11],
        wal_bytes_per_second=row[12],
        active_pid=row[13],
        wal_flush_lsn=row[14],
    )


def columns_of_relations(
    conn: psycopg.Connection, rels: Sequence[Relation], info: TableInfo, only: Sequence[str] | None = None
) -> dict[str, PgColumn]:
    """Types of every column the batch's relation messages carried (schema changes included).

    ``only``: the registry's ``columns`` list; the publication sends every column, the others are left out.
    """
    from airflow_pg_replication.source.type_map import PgColumn

    wanted = set(only) if only else None
    types = {c.type.oid: c.type for c in info.columns}  # read at the run's start: no query for these
    unknown = [
        c.type_oid
        for rel in rels
        for c in rel.columns
        if c.type_oid not in types and (wanted is None or c.name in wanted)
    ]
    if unknown:  # a column added or retyped since
        types.update(resolve_column_types(conn, unknown))
    cols = {c.name: c for c in info.columns}
    for rel in rels:
        for c in rel.columns:
            if wanted is None or c.name in wanted:
                cols[c.name] = PgColumn(c.name, types[c.type_oid], c.typmod)
    return cols
