"""PostgreSQL as the destination, end to end (a second throwaway cluster): snapshot and CDC of every kind of
change into ``destination: {type: postgres, conn_id: warehouse}``, checked value by value against the source
as each side's text output, with the source's own column types; soft deletes and truncates; a connection
with and without a password; a crash between the data and the state row; reconciliation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_pg_replication import (
    PgCdcApplyOperator,
    PgFullRefreshOperator,
    PgIncrementalOperator,
    PgReconcileOperator,
)
from airflow_pg_replication.destination.postgres.table import PostgresTableDestination
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.source.pgoutput import format_lsn, parse_lsn
from tests.integration.conftest import column_types, text_rows

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE things (
  id int PRIMARY KEY,
  amount numeric(12,2), free numeric, ratio float8, small real, big bigint,
  at timestamptz, naive timestamp, day date, tod time,
  tags text[], nums int[], prices numeric(6,2)[], stamps timestamptz[],
  doc jsonb, raw json, blob bytea, uid uuid, span interval, addr inet, feeling mood,
  flag bool, code varchar(10), fixed char(5), body text
)
"""

PLAIN = (
    "1234567890.12, 1.5, 0.1, 1.5, 9223372036854775807, '2024-06-01 10:00:00.5+02', '2024-01-01 12:34:56.789', "
    "'2024-02-29', '23:59:59.999999', '{a,\"b c\"}', '{1,2,3}', '{1.50,2.25}', '{\"2024-01-01 00:00:00+00\"}', "
    '\'{"nested": {"k": "v"}, "n": 1.50}\', \'{"b": 1,  "a": [true, null]}\', \'\\x00ff10\', '
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 year 2 months 3 days 04:05:06.7', '192.168.0.1/24', 'happy', "
    "true, 'ten chars!', 'ab', {body}"
)
#: Values an Arrow round trip cannot hold (or DuckDB, or dlt's writers), all of which PostgreSQL holds.
SPECIAL = (
    "NULL, 'NaN', 'NaN', '-Infinity', NULL, 'infinity', '-infinity', 'infinity', '24:00:00', "
    '\'{"a,b","c\\"d",NULL,"NULL",""}\', \'{{1,2},{3,4}}\', \'{1.50,NULL}\', \'{infinity,"2024-01-01 00:00:00+00"}\', '
    "'null', '[1, 2.50]', '\\x', '00000000-0000-0000-0000-000000000000', '-1 days +00:00:01', '::1', 'sad', "
    "false, '', 'abcde', {body}"
)
EXTREME = (
    "-0.01, '12345678901234567890.123456789012345678901234567890', 'Infinity', '-0', -9223372036854775808, "
    "'0044-03-15 12:00:00+00 BC', '12345-06-07 00:00:00', '0044-03-15 BC', '00:00:00', "
    "'{}', '[0:1]={7,8}', '{}', '{-infinity}', '[]', '\"text\"', NULL, NULL, NULL, NULL, 'ok', NULL, NULL, NULL, NULL"
)
BIG = "repeat(md5({id}::text), 400)"  # ~12.8 kB, stored out of line (TOAST)
COLS = [
    "id",
    "amount",
    "free",
    "ratio",
    "small",
    "big",
    "at",
    "naive",
    "day",
    "tod",
    "tags",
    "nums",
    "prices",
    "stamps",
    "doc",
    "raw",
    "blob",
    "uid",
    "span",
    "addr",
    "feeling",
    "flag",
    "code",
    "fixed",
    "body",
]


def insert(pg_db, id_: int, values: str, *, big: bool = True) -> None:
    body = BIG.format(id=id_) if big else "'short'"
    pg_db.execute(f"INSERT INTO things VALUES ({id_}, {values.replace('{body}', body)})")


def ops(pg_warehouse, table: str, **kw):
    common = dict(table=table, source_conn_id="pg_source", destination=pg_warehouse.spec, **kw)
    return (
        PgFullRefreshOperator(task_id="full_refresh", **common),
        PgCdcApplyOperator(task_id="apply_changes", **common),
        PgReconcileOperator(task_id="verify", when_behind="fail", ranges=3, **common),
    )


def assert_same(pg_db, wh, table: str, cols, key=("id",), where_live: bool = False):
    """Every value of every row equal, as each side's text output (so NaN, ±infinity, '24:00', padding count)."""
    dest = text_rows(
        wh.connect, f"{wh.dataset}.{table}", cols, key, "WHERE _pg_deleted_at IS NULL" if where_live else ""
    )
    src = text_rows(pg_db.connect, f"public.{table}", cols, key)
    assert dest == src
    return dest


def state_row(wh, table: str) -> dict:
    rows = wh.query(
        "SELECT table_name, status, slot, snapshot_lsn, applied_lsn FROM replica._pg_replication_state "
        "WHERE table_name = %s",
        (f"public.{table}",),
    )
    assert len(rows) == 1
    return dict(zip(["table_name", "status", "slot", "snapshot_lsn", "applied_lsn"], rows[0]))


def test_snapshot_and_cdc_keep_every_value_and_type(pg_db, pg_warehouse):
    """No password; a dedicated slot. Every kind of change; every column compared; verify at the end."""
    wh = pg_warehouse
    pg_db.execute(DDL)
    for i in range(1, 6):
        insert(pg_db, i, PLAIN)
    insert(pg_db, 6, SPECIAL)
    insert(pg_db, 7, EXTREME, big=False)
    full, apply, verify = ops(wh, "things", slot="pgrepl_things")

    out = full.execute({})
    assert out["rows"] == 7
    assert_same(pg_db, wh, "things", COLS)
    # the source's own types (an enum, which the warehouse does not have, becomes text), then the replica's
    source_types = column_types(pg_db.connect, "public", "things")
    want = {**source_types, "feeling": "text", "_pg_lsn": "bigint"}
    assert wh.columns("things") == want
    state = state_row(wh, "things")
    assert state["status"] == "ready" and state["slot"] == "pgrepl_things"
    assert {r[0] for r in wh.query("SELECT _pg_lsn FROM replica.things")} == {state["snapshot_lsn"]}
    assert format_lsn(state["snapshot_lsn"]) == out["lsn"]

    # inserts, updates, deletes, a key change, unchanged TOAST values, an added column (of a type new to the table)
    insert(pg_db, 8, SPECIAL)
    pg_db.execute("UPDATE things SET amount = -1.25, tags = '{x}', at = '-infinity', free = 'NaN' WHERE id = 1")
    pg_db.execute("UPDATE things SET flag = NOT flag WHERE id IN (2, 6)")  # body: unchanged TOAST
    pg_db.execute("DELETE FROM things WHERE id = 3")
    pg_db.execute("UPDATE things SET id = 50 WHERE id = 5")  # key change, body unchanged TOAST
    pg_db.execute(
        "ALTER TABLE things ADD COLUMN note text, ADD COLUMN ranks int8[], ADD COLUMN mac macaddr, "
        "ADD COLUMN score numeric(7,3)"
    )
    # types new to the table, in the batch that adds them: an array with its own bounds, a numeric NaN
    pg_db.execute(
        "UPDATE things SET note = 'noted', ranks = '[0:2]={1,NULL,-3}', mac = '08:00:2b:01:02:03', score = 'NaN' "
        "WHERE id = 4"
    )
    insert(pg_db, 9, PLAIN)
    res = apply.execute({})
    assert res["changes"] == 8
    cols = [*COLS, "note", "ranks", "mac", "score"]
    assert_same(pg_db, wh, "things", cols)
    assert wh.columns("things")["ranks"] == "bigint[]" and wh.columns("things")["mac"] == "macaddr"
    assert len(wh.query("SELECT body FROM replica.things WHERE id = 50")[0][0]) == 12800
    state = state_row(wh, "things")
    assert state["snapshot_lsn"] < state["applied_lsn"] <= parse_lsn(res["lsn"])
    lsns = dict(wh.query("SELECT id, _pg_lsn FROM replica.things"))
    assert lsns[1] > lsns[7] == state["snapshot_lsn"]
    # plain updates leaving TOAST values unchanged (the column-wise fold's kept values)
    pg_db.execute("UPDATE things SET code = 'again', at = 'infinity' WHERE id IN (2, 4, 6)")
    assert apply.execute({})["changes"] == 3
    assert_same(pg_db, wh, "things", cols)
    assert verify.execute({})["ok"]

    # a truncate and rows after it, in one batch; then nothing to apply
    pg_db.execute("TRUNCATE things")
    insert(pg_db, 2, SPECIAL)
    insert(pg_db, 10, PLAIN, big=False)
    apply.execute({})
    assert_same(pg_db, wh, "things", cols)
    assert apply.execute({})["changes"] == 0
    assert verify.execute({})["ok"]

    # verify finds a value changed behind our back, naming its key
    with wh.connect() as conn:
        conn.execute("UPDATE replica.things SET free = 'NaN' WHERE id = 10")
    with pytest.raises(NeedsAttentionError, match="changed: id=10"):
        verify.execute({})


def test_soft_deletes_and_truncate_with_a_password(pg_db, pg_warehouse):
    """The connection logs in with a password (a URI with characters to quote); deletes: soft; slot group default."""
    wh = pg_warehouse
    wh.use_password_role()
    pg_db.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(10,2), tags text[])")
    pg_db.execute("INSERT INTO accounts SELECT g, 'o' || g, g * 1.5, ARRAY['t' || g] FROM generate_series(1, 10) g")
    full, apply, verify = ops(wh, "accounts", deletes="soft")
    cols = ["id", "owner", "balance", "tags"]
    full.execute({})
    assert_same(pg_db, wh, "accounts", cols)
    assert wh.query("SELECT tableowner FROM pg_tables WHERE schemaname = 'replica' AND tablename = 'accounts'") == [
        ("pgrepl_writer",)
    ]

    pg_db.execute("DELETE FROM accounts WHERE id IN (1, 2)")
    pg_db.execute("INSERT INTO accounts VALUES (20, 'brief', 1, '{}')")
    pg_db.execute("DELETE FROM accounts WHERE id = 20")
    pg_db.execute("UPDATE accounts SET balance = 'NaN' WHERE id = 3")
    apply.execute({})
    gone = dict(wh.query("SELECT id, _pg_deleted_at IS NOT NULL FROM replica.accounts"))
    assert gone[1] and gone[2] and gone[20] and not gone[3]
    kept = wh.query("SELECT owner, tags FROM replica.accounts WHERE id IN (1, 20) ORDER BY id")
    assert kept == [("o1", ["t1"]), ("brief", [])]  # a soft-deleted row keeps its values
    assert_same(pg_db, wh, "accounts", cols, where_live=True)
    assert verify.execute({})["ok"]  # soft-deleted rows are left out

    pg_db.execute("TRUNCATE accounts")
    pg_db.execute("INSERT INTO accounts VALUES (1, 'back again', 2, '{a}')")
    apply.execute({})
    assert wh.query("SELECT count(*) FROM replica.accounts WHERE _pg_deleted_at IS NULL") == [(1,)]
    assert wh.query("SELECT count(*) FROM replica.accounts") == [(11,)]  # 10 truncated and marked, 20 deleted before
    assert_same(pg_db, wh, "accounts", cols, where_live=True)

    wh.use_uri(wh.password_uri("wrong"))  # the password is really asked for
    with pytest.raises(Exception, match="password authentication failed"):
        apply.execute({})


def test_crash_between_data_and_state_reruns_to_the_same_table(pg_db, pg_warehouse, monkeypatch):
    """The data and its state row commit in one transaction: a failure at the state write leaves neither, and
    the re-run gives the same table, nothing doubled (snapshot and CDC batch)."""
    wh = pg_warehouse
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2), items text[], placed timestamptz)")
    pg_db.execute(
        "INSERT INTO orders SELECT g, g * 2.5, ARRAY['i' || g, NULL], timestamptz '2024-01-01' + g * interval '1 day' "
        "FROM generate_series(1, 30) g"
    )
    full, apply, verify = ops(wh, "orders", slot="pgrepl_orders")
    cols = ["id", "total", "items", "placed"]
    real = PostgresTableDestination._write_state
    crashes: list = []

    def crash_once_at(status):
        def write_state(self, state):
            if str(state.status) == status and not crashes:
                crashes.append(state)
                raise RuntimeError("crash between the data and the state row")
            return real(self, state)

        monkeypatch.setattr(PostgresTableDestination, "_write_state", write_state)

    crash_once_at("ready")  # the snapshot's rows are copied, then its state write fails
    with pytest.raises(RuntimeError, match="crash between"):
        full.execute({})
    assert state_row(wh, "orders")["status"] == "snapshotting"  # recorded before the copy: not usable
    assert wh.query("SELECT to_regclass('replica.orders')") == [(None,)]  # the copy went with its transaction
    full.execute({})
    assert_same(pg_db, wh, "orders", cols)
    before = state_row(wh, "orders")

    pg_db.execute("INSERT INTO orders VALUES (100, 1, '{new}', now())")
    pg_db.execute("UPDATE orders SET total = total + 1, items = '{changed}' WHERE id <= 10")
    pg_db.execute("DELETE FROM orders WHERE id BETWEEN 20 AND 25")
    pg_db.execute("UPDATE orders SET id = 200 WHERE id = 30")
    crashes.clear()
    with pytest.raises(RuntimeError, match="crash between"):
        apply.execute({})
    assert state_row(wh, "orders") == before  # nothing of the batch, state included
    assert wh.query("SELECT count(*), sum(total), max(items::text) FROM replica.orders") == [
        (30, Decimal("1162.50"), "{i9,NULL}")  # the snapshot's rows, as they were
    ]
    apply.execute({})
    assert_same(pg_db, wh, "orders", cols)
    assert wh.query("SELECT count(*), count(DISTINCT id) FROM replica.orders") == [(25, 25)]
    assert state_row(wh, "orders")["applied_lsn"] > before["snapshot_lsn"]
    assert verify.execute({})["ok"]


def test_full_refresh_and_incremental_modes(pg_db, pg_warehouse):
    """Tables without CDC: a full refresh replaces the rows (state loaded), an incremental run merges by key."""
    wh = pg_warehouse
    pg_db.execute("CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL, v numeric, tags int[])")
    pg_db.execute(
        "INSERT INTO events SELECT g, timestamptz '2024-01-01' + g * interval '1 minute', g / 3.0, ARRAY[g, -g] "
        "FROM generate_series(1, 20) g"
    )
    cols = ["id", "updated_at", "v", "tags"]
    common = dict(source_conn_id="pg_source", destination=wh.spec)
    snap = PgFullRefreshOperator(task_id="full_refresh", table="public.events", mode="full_refresh", **common)
    assert snap.execute({})["rows"] == 20
    pg_db.execute("UPDATE events SET v = 'NaN' WHERE id = 1")
    assert snap.execute({})["rows"] == 20  # a second full refresh replaces every row
    assert_same(pg_db, wh, "events", cols)
    assert state_row(wh, "events")["status"] == "loaded"

    inc = PgIncrementalOperator(
        task_id="incremental_refresh",
        table="public.events",
        cursor_column="updated_at",
        source_conn_id="pg_source",
        destination={**wh.spec, "dataset": "incremental"},
    )
    inc.execute({})
    pg_db.execute("UPDATE events SET v = 'Infinity', tags = '{}', updated_at = '2025-01-01' WHERE id IN (2, 3)")
    pg_db.execute("INSERT INTO events VALUES (21, '2025-01-02', 7, NULL)")
    inc.execute({})
    dest = text_rows(wh.connect, "incremental.events", cols, ["id"])
    assert dest == text_rows(pg_db.connect, "public.events", cols, ["id"])
    assert wh.query("SELECT count(*), count(DISTINCT id) FROM incremental.events") == [(21, 21)]
    assert wh.query("SELECT status, cursor_value FROM incremental._pg_replication_state") == [
        ("loaded", "2025-01-02 00:00:00+00")
    ]


def test_schema_changes_and_a_table_without_a_key(pg_db, pg_warehouse):
    """Columns added, dropped and widened mid-stream; a table without a key (REPLICA IDENTITY FULL) whose rows
    hold NULLs and json (no equality operator) is matched whole."""
    wh = pg_warehouse
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, qty int, name varchar(10), price numeric(6,2), gone text)")
    pg_db.execute("INSERT INTO items SELECT g, g, 'n' || g, g * 1.5, 'x' FROM generate_series(1, 10) g")
    pg_db.execute("CREATE TABLE log (at date, what json, n int)")
    pg_db.execute("ALTER TABLE log REPLICA IDENTITY FULL")
    pg_db.execute("INSERT INTO log VALUES ('2024-01-01', '{\"a\": 1}', NULL), (NULL, NULL, 2), ('infinity', '[]', 3)")
    full, apply, verify = ops(wh, "items")
    lfull, lapply, _ = ops(wh, "log")
    full.execute({})
    lfull.execute({})

    pg_db.execute("ALTER TABLE items ADD COLUMN color text")
    pg_db.execute("INSERT INTO items (id, qty, name, price, color) VALUES (11, 1, 'new', 2.5, 'red')")
    pg_db.execute("ALTER TABLE items DROP COLUMN gone")
    pg_db.execute(
        "ALTER TABLE items ALTER COLUMN qty TYPE bigint, ALTER COLUMN name TYPE text, "
        "ALTER COLUMN price TYPE numeric(14,2)"
    )
    pg_db.execute("INSERT INTO items VALUES (12, 9000000000, 'a name longer than ten', 123456789012.34, NULL)")
    pg_db.execute("UPDATE items SET price = price * 2 WHERE id <= 3")
    apply.execute({})
    cols = ["id", "qty", "name", "price", "color"]
    assert_same(pg_db, wh, "items", cols)
    types = wh.columns("items")
    assert (types["qty"], types["name"], types["price"]) == ("bigint", "text", "numeric(14,2)")
    # a dropped column stays, NULL in the rows written since
    assert wh.query("SELECT id FROM replica.items WHERE gone IS NULL ORDER BY id") == [(1,), (2,), (3,), (11,), (12,)]
    assert verify.execute({})["ok"]

    pg_db.execute("DELETE FROM log WHERE n IS NULL OR at IS NULL")  # rows found by all their values, NULLs too
    pg_db.execute("UPDATE log SET what = '{\"b\": 2}' WHERE n = 3")
    lapply.execute({})
    assert_same(pg_db, wh, "log", ["at", "what", "n"], key=("n",))
    assert wh.query("SELECT count(*) FROM replica.log") == [(1,)]


def _table_stats(conn) -> tuple[int, int, int, int]:
    """(inserted, updated, HOT-updated, deleted) rows of replica.t so far, this session's included (not
    necessarily another's yet)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables "
        "WHERE schemaname = 'replica' AND relname = 't'"
    ).fetchone()
    return tuple(row)


def test_upserts_update_rows_in_place_and_a_repeated_key_ends_as_one_row(pg_warehouse):
    """A CDC batch's upserts into a replica keyed by its index: one MERGE updates the rows there (HOT, on pages
    with room: the table's fill factor) and inserts the others, deleting nothing; a column the rows do not carry
    gets its default, as an insert gives it. A key the replica holds twice, or the batch, (a key the source does
    not enforce) is written as a delete and an insert always wrote it."""
    import pyarrow as pa

    from airflow_pg_replication.replica_columns import LSN_COLUMN

    wh = pg_warehouse
    spec = {"type": "postgres", "credentials": wh.cluster.conn_uri(wh.dbname), "dataset": "replica"}
    columns = [
        {"name": "id", "data_type": "bigint"},
        {"name": "v", "data_type": "text"},
        {"name": LSN_COLUMN, "data_type": "bigint"},
    ]

    def apply(dest, ids, v, lsn, deleted=()):
        upserts = pa.table({"id": pa.array(ids, pa.int64()), "v": [v] * len(ids), LSN_COLUMN: [lsn] * len(ids)})
        keys = pa.table({"id": pa.array(deleted, pa.int64())}) if deleted else None
        dest.apply_batch(
            upserts=upserts, delete_keys=keys, truncate=None, columns=columns, key_columns=["id"], state=None
        )

    def rows():
        return wh.query("SELECT id, v, extra, _pg_lsn FROM replica.t ORDER BY id, v")

    with PostgresTableDestination(spec, table_name="public.t", destination_table="t", pipeline_name="p") as dest:
        apply(dest, [1, 2, 3], "a", 1)
        assert wh.query("SELECT reloptions FROM pg_class WHERE oid = 'replica.t'::regclass") == [(["fillfactor=90"],)]
        dest.conn.execute("ALTER TABLE replica.t ADD COLUMN extra text DEFAULT 'dflt'")
        dest.conn.execute("UPDATE replica.t SET extra = 'old'")  # on this session: its statistics are flushed next
        before = _table_stats(dest.conn)
        apply(dest, [2, 4, 1], "b", 2, deleted=[3])
        after = _table_stats(dest.conn)
        assert [a - b for a, b in zip(after, before)] == [1, 2, 2, 1]  # 4 inserted, 1 and 2 updated (HOT), 3 deleted
        assert rows() == [(1, "b", "dflt", 2), (2, "b", "dflt", 2), (4, "b", "dflt", 2)]

        with wh.connect() as conn:
            conn.execute("INSERT INTO replica.t (id, v, extra, _pg_lsn) VALUES (1, 'twice', 'x', 0)")
        apply(dest, [1, 5], "c", 3)
        assert rows() == [(1, "c", "dflt", 3), (2, "b", "dflt", 2), (4, "b", "dflt", 2), (5, "c", "dflt", 3)]
        apply(dest, [2, 2], "d", 4)  # never from the fold, which keeps one row per key
        assert rows() == [
            (1, "c", "dflt", 3),
            (2, "d", "dflt", 4),
            (2, "d", "dflt", 4),
            (4, "b", "dflt", 2),
            (5, "c", "dflt", 3),
        ]
