"""CDC hard cases, each checked as destination-equals-source: TOAST, truncate, schema changes, soft deletes,
quiet tables, tables without a key, partitioned tables, transactions larger than a batch."""

from __future__ import annotations

import pytest

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from airflow_pg_replication.errors import ReplicationError
from tests.integration.conftest import source_rows


def run_ops(duck, table, **kw):
    common = dict(table=table, source_conn_id="pg_source", destination=duck.spec, **kw)
    return (
        PgFullRefreshOperator(task_id="full_refresh", **common),
        PgCdcApplyOperator(task_id="apply_changes", **common),
    )


def same(pg_db, duck, table, dest, cols, key):
    got, want = duck.rows(dest, cols, key), source_rows(pg_db, table, cols, key)
    assert got == want
    return got


BIG = "repeat(md5(g::text), 400)"  # ~12.8 kB, stored out of line (TOAST)


def make_docs(pg_db, identity="DEFAULT"):
    pg_db.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    pg_db.execute(f"ALTER TABLE docs REPLICA IDENTITY {identity}")
    pg_db.execute(f"INSERT INTO docs SELECT g, 't' || g, {BIG} FROM generate_series(1, 20) g")


DOC_COLS = ["id", "title", "body"]


def test_unchanged_toast_keeps_destination_value(pg_db, duck):
    make_docs(pg_db)
    full, apply = run_ops(duck, "docs")
    full.execute({})
    pg_db.execute("UPDATE docs SET title = 'renamed' WHERE id <= 5")  # body comes as unchanged TOAST
    apply.execute({})
    rows = same(pg_db, duck, "public.docs", "docs", DOC_COLS, ["id"])
    assert len(rows[0][2]) == 12800


def test_unchanged_toast_after_insert_in_same_batch(pg_db, duck):
    make_docs(pg_db)
    full, apply = run_ops(duck, "docs")
    full.execute({})
    pg_db.execute(f"INSERT INTO docs SELECT g, 'new', {BIG} FROM generate_series(100, 105) g")
    pg_db.execute("UPDATE docs SET title = 'changed' WHERE id >= 100")
    pg_db.execute("UPDATE docs SET body = 'short now' WHERE id = 3")
    pg_db.execute("UPDATE docs SET title = 'again' WHERE id = 3")
    apply.execute({})
    same(pg_db, duck, "public.docs", "docs", DOC_COLS, ["id"])


def test_unchanged_toast_across_batches(pg_db, duck):
    make_docs(pg_db)
    full, apply = run_ops(duck, "docs")
    full.execute({})
    pg_db.execute(f"UPDATE docs SET body = {BIG.replace('g::text', 'id::text || $$x$$')} WHERE id = 1")
    apply.execute({})
    for i in range(3):
        pg_db.execute("UPDATE docs SET title = %s WHERE id = 1", (f"v{i}",))
        apply.execute({})
        same(pg_db, duck, "public.docs", "docs", DOC_COLS, ["id"])


def test_unchanged_toast_with_replica_identity_full(pg_db, duck):
    make_docs(pg_db, identity="FULL")
    full, apply = run_ops(duck, "docs")
    full.execute({})
    pg_db.execute("UPDATE docs SET title = 'full identity' WHERE id <= 3")
    pg_db.execute("DELETE FROM docs WHERE id = 4")
    apply.execute({})
    same(pg_db, duck, "public.docs", "docs", DOC_COLS, ["id"])


def test_truncate_applied_at_its_position(pg_db, duck):
    pg_db.execute("CREATE TABLE parent (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v text)")
    pg_db.execute("INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g")
    pg_db.execute("INSERT INTO child SELECT g, g, 'c' || g FROM generate_series(1, 10) g")
    pfull, papply = run_ops(duck, "parent")
    cfull, capply = run_ops(duck, "child")
    pfull.execute({})
    cfull.execute({})
    pg_db.execute("INSERT INTO parent VALUES (11, 'before truncate')")
    pg_db.execute("TRUNCATE parent, child RESTART IDENTITY CASCADE")  # one message for several tables
    pg_db.execute("INSERT INTO parent VALUES (1, 'after truncate')")
    pg_db.execute("INSERT INTO child VALUES (7, 1, 'after')")
    assert papply.execute({})["changes"] == 3
    capply.execute({})
    same(pg_db, duck, "public.parent", "parent", ["id", "v"], ["id"])
    same(pg_db, duck, "public.child", "child", ["id", "parent_id", "v"], ["id"])
    pg_db.execute("TRUNCATE child")
    capply.execute({})
    assert duck.query("SELECT count(*) FROM replica.child") == [(0,)]


def test_schema_changes_mid_stream(pg_db, duck):
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, qty int, name varchar(10), price numeric(6,2), gone text)")
    pg_db.execute("INSERT INTO items SELECT g, g, 'n' || g, g * 1.5, 'x' FROM generate_series(1, 10) g")
    full, apply = run_ops(duck, "items")
    full.execute({})
    pg_db.execute("UPDATE items SET qty = qty + 1 WHERE id = 1")
    pg_db.execute("ALTER TABLE items ADD COLUMN color text")
    pg_db.execute("INSERT INTO items (id, qty, name, price, color) VALUES (11, 1, 'new', 2.5, 'red')")
    pg_db.execute("ALTER TABLE items DROP COLUMN gone")
    pg_db.execute("UPDATE items SET name = 'after drop' WHERE id = 2")
    apply.execute({})
    cols = ["id", "qty", "name", "price", "color"]
    same(pg_db, duck, "public.items", "items", cols, ["id"])
    # widen types: int -> bigint, varchar(10) -> text, numeric(6,2) -> numeric(14,2)
    pg_db.execute(
        "ALTER TABLE items ALTER COLUMN qty TYPE bigint, ALTER COLUMN name TYPE text, "
        "ALTER COLUMN price TYPE numeric(14,2)"
    )
    pg_db.execute(
        "INSERT INTO items (id, qty, name, price) VALUES (12, 9000000000, 'a name longer than ten', 123456789012.34)"
    )
    apply.execute({})
    same(pg_db, duck, "public.items", "items", cols, ["id"])


def test_soft_deletes_and_reinsert(pg_db, duck):
    pg_db.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
    pg_db.execute("INSERT INTO accounts SELECT g, 'o' || g FROM generate_series(1, 10) g")
    full, apply = run_ops(duck, "accounts", deletes="soft")
    full.execute({})
    pg_db.execute("DELETE FROM accounts WHERE id IN (1, 2)")
    pg_db.execute("INSERT INTO accounts VALUES (20, 'brief')")
    pg_db.execute("DELETE FROM accounts WHERE id = 20")
    apply.execute({})
    rows = dict(duck.query("SELECT id, _pg_deleted_at IS NOT NULL FROM replica.accounts"))
    assert rows[1] and rows[2] and rows[20] and not rows[3]
    kept = duck.query("SELECT owner FROM replica.accounts WHERE id IN (1, 20) ORDER BY id")
    assert kept == [("o1",), ("brief",)]  # a soft-deleted row keeps its values
    pg_db.execute("INSERT INTO accounts VALUES (1, 'back again')")
    apply.execute({})
    assert duck.query("SELECT owner, _pg_deleted_at FROM replica.accounts WHERE id = 1") == [("back again", None)]
    live = duck.query("SELECT id, owner FROM replica.accounts WHERE _pg_deleted_at IS NULL ORDER BY id")
    assert live == source_rows(pg_db, "public.accounts", ["id", "owner"], ["id"])


def test_quiet_table_slot_advances(pg_db, duck):
    pg_db.execute("CREATE TABLE quiet (id int PRIMARY KEY)")
    pg_db.execute("CREATE TABLE busy (id int PRIMARY KEY, pad text)")
    full, apply = run_ops(duck, "quiet", slot="pgrepl_public_quiet")  # a dedicated slot: its retained WAL
    full.execute({})
    retained = []
    for run in range(3):
        pg_db.execute(
            "INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(%s::int, %s::int) g",
            (run * 20000, run * 20000 + 19999),
        )
        assert apply.execute({})["changes"] == 0
        retained.append(
            pg_db.query(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots "
                "WHERE slot_name = 'pgrepl_public_quiet'"
            )[0][0]
        )
    assert all(r < 1_000_000 for r in retained), retained  # ~10 MB of WAL written each run, none held back


def test_no_primary_key_with_and_without_full_identity(pg_db, duck):
    pg_db.execute("CREATE TABLE events (kind text, at int)")
    pg_db.execute("INSERT INTO events SELECT 'k' || g, g FROM generate_series(1, 5) g")
    full, apply = run_ops(duck, "events")
    with pytest.raises(ReplicationError, match="REPLICA IDENTITY FULL"):
        full.execute({})
    pg_db.execute("ALTER TABLE events REPLICA IDENTITY FULL")
    full.execute({})
    pg_db.execute("UPDATE events SET at = 100 WHERE kind = 'k1'")
    pg_db.execute("DELETE FROM events WHERE kind = 'k2'")
    pg_db.execute("INSERT INTO events VALUES ('k9', 9)")
    apply.execute({})
    same(pg_db, duck, "public.events", "events", ["kind", "at"], ["kind", "at"])


def test_partitioned_table_replicates_as_root(pg_db, duck):
    pg_db.execute("CREATE TABLE measurements (id int, day date, v int, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)")
    pg_db.execute("CREATE TABLE m2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    pg_db.execute("CREATE TABLE m2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
    pg_db.execute("INSERT INTO measurements SELECT g, date '2024-06-01' + g, g FROM generate_series(1, 300) g")
    full, apply = run_ops(duck, "measurements")
    assert full.execute({})["rows"] == 300
    pg_db.execute("UPDATE measurements SET v = -1 WHERE id % 10 = 0")
    pg_db.execute("UPDATE measurements SET day = day + 200 WHERE id = 1")  # moves across partitions
    pg_db.execute("DELETE FROM measurements WHERE id > 290")
    apply.execute({})
    same(pg_db, duck, "public.measurements", "measurements", ["id", "day", "v"], ["id", "day"])


def test_transaction_larger_than_batch(pg_db, duck):
    pg_db.execute("CREATE TABLE big (id int PRIMARY KEY, v int)")
    pg_db.execute("INSERT INTO big SELECT g, 0 FROM generate_series(1, 1000) g")
    full, apply = run_ops(duck, "big", max_batch_changes=10_000)
    apply.max_rows_in_memory = 50_000  # the 200k-row transaction is folded and applied in 4 parts
    apply.max_run_seconds = 0  # one batch per run: the first run is the big transaction alone
    full.execute({})
    pg_db.execute("INSERT INTO big SELECT g, 1 FROM generate_series(1001, 201000) g")  # 200k rows, one transaction
    pg_db.execute("UPDATE big SET v = 2 WHERE id <= 10")
    first = apply.execute({})
    assert first["changes"] == 200_000 and first["transactions"] == 1  # applied whole
    apply.execute({})
    same(pg_db, duck, "public.big", "big", ["id", "v"], ["id"])


def test_kept_values_of_array_and_json_columns(pg_db, duck):
    pg_db.execute("CREATE TABLE tagged (id int PRIMARY KEY, tags text[], nums int[], attrs jsonb, body text)")
    pg_db.execute(
        f"INSERT INTO tagged SELECT g, ARRAY['a b', 'c\"d'], ARRAY[g, NULL], '{{\"k\": [1, null]}}', "
        f"{BIG} FROM generate_series(1, 5) g"
    )
    full, apply = run_ops(duck, "tagged", deletes="soft")
    full.execute({})
    pg_db.execute("UPDATE tagged SET tags = '{}' WHERE id = 1")  # body: unchanged TOAST
    pg_db.execute("DELETE FROM tagged WHERE id = 2")  # soft delete keeps every value
    apply.execute({})
    cols = ["id", "body"]
    live = duck.query("SELECT id, body FROM replica.tagged WHERE _pg_deleted_at IS NULL ORDER BY id")
    assert live == source_rows(pg_db, "public.tagged", cols, ["id"])
    kept = duck.query("SELECT tags, nums, attrs, body IS NOT NULL FROM replica.tagged WHERE id = 2")[0]
    other = duck.query("SELECT tags, attrs FROM replica.tagged WHERE id = 3")[0]
    assert (kept[0], kept[2]) == other and str(kept[1]).replace(" ", "") == "[2,null]" and kept[3]
