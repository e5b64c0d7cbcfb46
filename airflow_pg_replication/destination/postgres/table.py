"""PostgreSQL: one table's copy in a PostgreSQL database, through psycopg, in the source's own column types.

* **Types.** A replica column gets the source column's own type (:mod:`.types`): numeric stays
  ``numeric(p,s)``, timestamptz ``timestamptz``, jsonb ``jsonb``, an array the same array, bytea
  ``bytea``, uuid ``uuid``; enums and extension types become ``text``. Numeric, time and arrays
  travel as the source's text output (:func:`.type_map.text_transport`), so NaN, ±Infinity, any
  precision, ``24:00:00`` and any array arrive as they are; ±infinity dates and timestamps too.
* **One transaction per load.** A snapshot (``DELETE`` of the old rows, ``COPY`` of the new ones),
  a CDC batch (truncate, deletes, upserts through a temporary table: a ``MERGE`` where it can, see
  :mod:`.upsert`) or an incremental merge commits together with its state row: a crash leaves both
  or neither, and readers see the table before or after, never half of it. New columns are added
  and changed types altered in the same transaction.
* **No dlt.** Credentials are a libpq URI or mapping, with or without a password
  (:mod:`.connection`); names are always quoted by :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.postgres import connection
from airflow_pg_replication.destination.postgres.types import hint_type
from airflow_pg_replication.destination.postgres.upsert import (
    FILLFACTOR,
    Columns,
    KeyedTable,
    copy_rows,
    staged,
)
from airflow_pg_replication.destination.state_table import STATE_TABLE, ReplicationState
from airflow_pg_replication.phase_timing import phase
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN
from airflow_pg_replication.table_state import STATE_COLUMNS

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    from psycopg import sql

log = logging.getLogger(__name__)

_COLUMNS_SQL = """
SELECT a.attname::text, a.atttypid::int8, a.atttypmod, COALESCE(e.typname, t.typname)::text
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND e.typarray = t.oid
 WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_DELETED_AT_HINT = {"name": DELETED_AT_COLUMN, "data_type": "timestamp", "timezone": True}

#: Whether the table has an index on exactly these columns, in this order, of all rows (the key index made with it).
_KEY_INDEX_SQL = """
SELECT EXISTS (
  SELECT 1
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = %s AND c.relname = %s AND i.indpred IS NULL
     AND ARRAY(SELECT a.attname::text
                 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                ORDER BY k.ord) = %s::text[]
)
"""


class PostgresTableDestination(TableDestination):
    """One table's copy in a PostgreSQL database: ``<dataset>.<destination_table>`` and its state row.

    A unit of work holds one autocommit connection from the first use to ``__exit__``; each load
    is one explicit transaction on it.
    """

    keeps_postgres_types = True

    def __init__(self, spec: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self._conn: psycopg.Connection | None = None
        self._checked: set[tuple] = set()  # column sets already found in the table's shape, in this unit
        self._key_index: dict[tuple[str, ...], bool] = {}  # key columns -> indexed (see _keyed)

    def describe(self) -> str:
        return f"{self.spec['dataset']}.{self.destination_table} in {connection.describe(self.spec.get('credentials'))}"

    # -- the connection ----------------------------------------------------------------------------

    def __enter__(self) -> PostgresTableDestination:
        self.conn  # noqa: B018  connect now: a wrong address or password fails here, before any read
        return self

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            with phase("destination.connect"):
                self._conn = connection.connect(self.spec.get("credentials"), read_only=self.read_only)
            self._stack.callback(self._close)
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _name(self, table: str | None = None) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.spec["dataset"], table or self.destination_table)

    def _execute(self, statement: sql.Composed, params: Sequence[Any] | None = None) -> psycopg.Cursor:
        return self.conn.execute(statement, params)

    def _columns(self, table: str | None = None) -> Columns:
        """The table's columns ({} when it does not exist)."""
        rows = self.conn.execute(_COLUMNS_SQL, (self.spec["dataset"], table or self.destination_table)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _lock_dataset(self) -> None:
        """Serialise DDL in the dataset between tasks (two first loads would both create the state table)."""
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"airflow_pg_replication:{self.spec['dataset']}",)
        )

    def _create_schema(self) -> None:
        from psycopg import sql

        self._lock_dataset()
        self._execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.spec["dataset"])))

    # -- state -------------------------------------------------------------------------------------

    def read_state(self) -> ReplicationState | None:
        from psycopg import sql

        if not self._columns(STATE_TABLE):
            return None
        names = [c.name for c in STATE_COLUMNS]
        row = self._execute(
            sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), self._name(STATE_TABLE), sql.Identifier("table_name")
            ),
            (self.table_name,),
        ).fetchone()
        return ReplicationState.from_row(dict(zip(names, row))) if row else None

    def write_state(self, state: ReplicationState) -> None:
        with self.conn.transaction():
            self._write_state(state)

    def _write_state(self, state: ReplicationState) -> None:
        """Upsert the state row in the caller's transaction, creating the state table the first time."""
        from psycopg import sql

        if not self._columns(STATE_TABLE):
            self._create_schema()
            columns = [
                sql.SQL("{} {}{}").format(
                    sql.Identifier(c.name),
                    hint_type({"data_type": c.dlt_type, "timezone": True}),
                    sql.SQL("" if c.nullable else " NOT NULL"),
                )
                for c in STATE_COLUMNS
            ]
            keys = [sql.Identifier(c.name) for c in STATE_COLUMNS if c.primary_key]
            self._execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                    self._name(STATE_TABLE), sql.SQL(", ").join(columns), sql.SQL(", ").join(keys)
                )
            )
        row = state.as_row()
        table = self._name(STATE_TABLE)
        self._execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(table, sql.Identifier("table_name")), (state.table_name,)
        )
        self._execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                table,
                sql.SQL(", ").join(map(sql.Identifier, row)),
                sql.SQL(", ").join(sql.Placeholder() * len(row)),
            ),
            list(row.values()),
        )

    # -- the table's shape -------------------------------------------------------------------------

    def _shape(self, columns: Sequence[dict], primary_key: Sequence[str], *, replacing: bool) -> Columns:
        """Create the table, or add its missing columns and alter the ones whose type changed; its columns after.

        In the caller's transaction. ``replacing``: the rows are about to be replaced, so a changed
        column's old values are not converted.
        """
        from psycopg import sql

        wanted = [(c["name"], hint_type(c)) for c in columns]
        have = self._columns()
        if not have:
            self._create_schema()
            self._execute(
                sql.SQL("CREATE TABLE {} ({}) WITH (fillfactor = {})").format(
                    self._name(),
                    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), t) for n, t in wanted),
                    sql.Literal(FILLFACTOR),
                )
            )
            if primary_key:  # not unique: a registry's key is not checked by the source either
                self._execute(
                    sql.SQL("CREATE INDEX ON {} ({})").format(
                        self._name(), sql.SQL(", ").join(map(sql.Identifier, primary_key))
                    )
                )
            log.info("%s: created", self.describe())
            return self._columns()
        signature = tuple((n, t.as_string(self.conn)) for n, t in wanted)
        if signature in self._checked:
            return have
        missing = [(n, t) for n, t in wanted if n not in have]
        present = [(n, t) for n, t in wanted if n in have]
        changed = []
        if present:  # the types as PostgreSQL resolves them: (oid, typmod) of a typed NULL
            probe = self._execute(
                sql.SQL("SELECT {} WHERE false").format(
                    sql.SQL(", ").join(sql.SQL("NULL::{}").format(t) for _, t in present)
                )
            )
            res = probe.pgresult
            assert res is not None
            changed = [(n, t) for i, (n, t) in enumerate(present) if (res.ftype(i), res.fmod(i)) != tuple(have[n][:2])]
        if not missing and not changed:
            self._checked.add(signature)
            return have
        self._lock_dataset()
        for n, t in missing:
            log.info("%s: new column %s %s", self.describe(), n, t.as_string(self.conn))
            self._execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(self._name(), sql.Identifier(n), t))
        for n, t in changed:
            log.info("%s: column %s changed type in the source: now %s", self.describe(), n, t.as_string(self.conn))
            using = sql.SQL("NULL::{}").format(t) if replacing else sql.SQL("{}::{}").format(sql.Identifier(n), t)
            self._execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}").format(
                    self._name(), sql.Identifier(n), t, using
                )
            )
        return self._columns()

    # -- loads -------------------------------------------------------------------------------------

    def prepare_replace(
        self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict], primary_key: Sequence[str]
    ) -> None:
        self.write_state(state)

    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[dict],
        primary_key: Sequence[str],
        *,
        schema: pa.Schema,
        state: ReplicationState | None = None,
    ) -> None:
        """In one transaction: the table's shape, its old rows deleted, the new ones copied in, ``state``."""
        from psycopg import sql

        with phase("postgres.replace"), self.conn.transaction():
            self._shape(columns, primary_key, replacing=True)
            if self._has_rows():  # DELETE, not TRUNCATE: readers keep the old rows until the commit
                self._execute(sql.SQL("DELETE FROM {}").format(self._name()))
            copy_rows(self.conn, self._name(), schema.names, batches)
            if state is not None:
                self._write_state(state)

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
        """In one transaction: truncate (at, lsn, soft), hard deletes by key, upserts by key, then ``state``."""
        from psycopg import sql

        with phase("postgres.apply"), self.conn.transaction():
            with phase("postgres.shape"):
                have = self._columns()
                if upserts is not None and upserts.num_rows:
                    have = self._shape(columns, key_columns, replacing=False)
            if truncate is not None and have:
                at, lsn, soft = truncate
                if soft:
                    have = self._shape([_DELETED_AT_HINT], key_columns, replacing=False)
                    deleted = sql.Identifier(DELETED_AT_COLUMN)
                    self._execute(
                        sql.SQL("UPDATE {} SET {} = %s, {} = %s WHERE {} IS NULL").format(
                            self._name(), deleted, sql.Identifier(LSN_COLUMN), deleted
                        ),
                        (at, lsn),
                    )
                else:
                    self._execute(sql.SQL("DELETE FROM {}").format(self._name()))
            if have and delete_keys is not None and delete_keys.num_rows:
                self._keyed(key_columns, have).delete(delete_keys)
            if upserts is not None and upserts.num_rows:
                self._keyed(key_columns, have).upsert(upserts)
            if state is not None:
                with phase("postgres.state"):
                    self._write_state(state)

    def merge(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> None:
        """Upsert rows by key (incremental refresh), in one transaction."""
        with phase("postgres.merge"), self.conn.transaction():
            have = self._shape(columns, primary_key, replacing=False)
            names = [c["name"] for c in columns if c["name"] != DELETED_AT_COLUMN]
            keyed = self._keyed(primary_key, have)
            with staged(self.conn, self._name(), names, tables, in_memory=False) as (rows, _):  # keys may repeat
                if primary_key:
                    keyed.delete_matching(rows)
                keyed.insert(rows, names)

    def _keyed(self, key_columns: Sequence[str], have: Columns) -> KeyedTable:
        return KeyedTable(self.conn, self._name(), have, key_columns, bool(key_columns) and self._indexed(key_columns))

    def _indexed(self, key_columns: Sequence[str]) -> bool:
        """Whether the table has an index on ``key_columns`` (made with it from its key), read once per unit."""
        key = tuple(key_columns)
        if key not in self._key_index:
            row = self.conn.execute(
                _KEY_INDEX_SQL, (self.spec["dataset"], self.destination_table, list(key_columns))
            ).fetchone()
            self._key_index[key] = bool(row and row[0])
        return self._key_index[key]

    def _has_rows(self) -> bool:
        from psycopg import sql

        row = self._execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(self._name())).fetchone()
        return bool(row and row[0])

    def has_rows(self) -> bool:
        return bool(self._columns()) and self._has_rows()

    def fetch_rows(
        self, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, dict]:
        """The rows' current values as PostgreSQL text output (``_pg_lsn`` an int), keyed by the keys as given."""
        from psycopg import sql

        from airflow_pg_replication.destination.postgres.reading import text_cursor

        have = self._columns()
        if not have or not keys:
            return {}
        wanted = sql.Identifier("pg_replication_wanted")
        position = sql.Identifier("pg_replication_position")
        out: dict[tuple, dict] = {}
        with self.conn.transaction():
            self._execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT 0::int AS {}, {} FROM {} WITH NO DATA"
                ).format(wanted, position, sql.SQL(", ").join(map(sql.Identifier, key_columns)), self._name())
            )
            with self.conn.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN").format(wanted)) as copy:
                for i, key in enumerate(keys):
                    copy.write_row((i, *key))
            with text_cursor(self.conn) as cur:
                cur.execute(
                    sql.SQL("SELECT w.{}, {} FROM {} AS t JOIN {} AS w ON {}").format(
                        position,
                        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
                        self._name(),
                        wanted,
                        self._keyed(key_columns, have).match(sql.Identifier("w")),
                    )
                )
                for row in cur:
                    values = dict(zip(columns, row[1:]))
                    if values.get(LSN_COLUMN) is not None:
                        values[LSN_COLUMN] = int(values[LSN_COLUMN])
                    out[tuple(keys[int(row[0])])] = values
        return out

    def arrow_client(self) -> contextlib.AbstractContextManager[Any]:
        from airflow_pg_replication.destination.postgres.reading import PgArrowClient

        return PgArrowClient(self.conn, self.spec["dataset"])
