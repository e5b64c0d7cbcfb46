"""PgReconcileOperator against real PostgreSQL and DuckDB: matches, tampering found by range and key, CDC lag."""

from __future__ import annotations

import duckdb
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator, PgReconcileOperator
from airflow_pg_replication.errors import ReplicationError


def make_items(pg_db, rows: int = 200) -> None:
    """A table with the types whose values PostgreSQL and DuckDB render differently."""
    pg_db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), ratio float8, "
        "created_at timestamptz, day date, doc jsonb, tags int[], stamps timestamptz[], raw bytea, "
        "ok bool, ref uuid, span interval)"
    )
    pg_db.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g * 1.25, g / 3.0, "
        "timestamptz '2024-01-01 00:00:00+02' + g * interval '1 minute', date '2024-01-01' + g, "
        "jsonb_build_object('z', g, 'a', jsonb_build_array(g, 1.50, null, 'x')), ARRAY[g, g + 1, NULL], "
        "ARRAY[timestamptz '2024-01-01 00:00:00+05' + g * interval '1 second'], "
        "decode(lpad(to_hex(g), 4, '0'), 'hex'), g %% 2 = 0, md5(g::text)::uuid, g * interval '90 minutes' "
        "FROM generate_series(1, %s) g",
        (rows,),
    )
    pg_db.execute("UPDATE items SET name = NULL, doc = 'null', tags = '{}' WHERE id = 7")


def reconcile(duck, table="public.items", **kw):
    return PgReconcileOperator(task_id="verify", table=table, source_conn_id="pg_source", destination=duck.spec, **kw)


def tamper(duck, sql: str) -> None:
    with duckdb.connect(str(duck.path)) as con:
        con.execute(sql)


def test_full_refresh_reconciles_and_tampering_is_found(pg_db, duck):
    make_items(pg_db)
    PgFullRefreshOperator(
        task_id="full_refresh", table="public.items", destination=duck.spec, mode="full_refresh"
    ).execute({})
    op = reconcile(duck, ranges=4)
    out = op.execute({})
    assert out["ok"] and out["rows"] == 200 and out["destination_rows"] == 200
    assert out["ranges"] == 4 and out["mismatched_ranges"] == [] and out["mode"] == "loaded"
    assert out["lsn"].count("/") == 1

    # 200 rows in 4 ranges: bounds at ids 51, 101 and 151
    tamper(duck, "UPDATE replica.items SET price = price + 0.01 WHERE id = 17")
    with pytest.raises(ReplicationError) as err:
        op.execute({})
    msg = str(err.value)
    assert "1 of 4 range(s) differ" in msg
    assert "range 1/4 [start .. id=51)" in msg and "changed: id=17" in msg

    tamper(duck, "DELETE FROM replica.items WHERE id = 150")
    with pytest.raises(ReplicationError) as err:
        op.execute({})
    msg = str(err.value)
    assert "2 of 4 range(s) differ" in msg
    assert "range 3/4 [id=101 .. id=151): source 50 rows, destination 49 rows; missing in destination: id=150" in msg

    tamper(duck, "INSERT INTO replica.items (id, name) VALUES (1000, 'intruder')")
    with pytest.raises(ReplicationError) as err:
        op.execute({})
    msg = str(err.value)
    assert "3 of 4 range(s) differ" in msg
    assert "range 4/4 [id=151 .. end): source 50 rows, destination 51 rows; extra in destination: id=1000" in msg

    # without failing: the result names the ranges and keys; above detail_rows only the ranges
    out = reconcile(duck, ranges=4, fail_on_mismatch=False).execute({})
    assert not out["ok"]
    bad = {r["range"]: r for r in out["mismatched_ranges"]}
    assert sorted(bad) == [1, 3, 4]
    assert bad[1]["changed"] == [17] and bad[1]["upper"] == 51 and bad[1]["lower"] is None
    assert bad[3]["missing"] == [150] and (bad[3]["lower"], bad[3]["upper"]) == (101, 151)
    assert bad[4]["extra"] == [1000] and bad[4]["missing"] == [] and bad[4]["changed"] == []
    out = reconcile(duck, ranges=1, detail_rows=10, fail_on_mismatch=False).execute({})
    assert not out["ok"] and out["mismatched_ranges"][0]["detail"] is False
    assert "missing" not in out["mismatched_ranges"][0]


def _non_c_collation(pg_db) -> str | None:
    rows = pg_db.query(
        "SELECT collname FROM pg_collation WHERE collname IN ('en-x-icu', 'en_US.utf8', 'en_US') "
        "AND collencoding IN (-1, 6) ORDER BY collname"
    )
    return rows[0][0] if rows else None


def test_composite_text_key(pg_db, duck):
    coll = _non_c_collation(pg_db)  # where available, the source sorts text differently from DuckDB
    collate = f' COLLATE "{coll}"' if coll else ""
    pg_db.execute(
        f"CREATE TABLE stock (region text{collate}, code varchar(10){collate}, qty int, PRIMARY KEY (region, code))"
    )
    regions = ["eu", "EU", "us", "Zeta", "ápac", "_x"]
    pg_db.execute(
        "INSERT INTO stock SELECT r, 'k' || lpad(g::text, 2, '0'), g FROM unnest(%s::text[]) r, "
        "generate_series(1, 20) g",
        (regions,),
    )
    PgFullRefreshOperator(
        task_id="full_refresh", table="public.stock", destination=duck.spec, mode="full_refresh"
    ).execute({})
    op = reconcile(duck, table="public.stock", ranges=5)
    out = op.execute({})
    assert out["ok"] and out["rows"] == 120 and out["ranges"] == 5

    tamper(duck, "UPDATE replica.stock SET qty = -1 WHERE region = 'ápac' AND code = 'k07'")
    tamper(duck, "DELETE FROM replica.stock WHERE region = 'EU' AND code = 'k20'")
    with pytest.raises(ReplicationError) as err:
        op.execute({})
    msg = str(err.value)
    assert "changed: (region='ápac', code='k07')" in msg
    assert "missing in destination: (region='EU', code='k20')" in msg
    out = reconcile(duck, table="public.stock", ranges=5, fail_on_mismatch=False).execute({})
    changed = [k for r in out["mismatched_ranges"] for k in r["changed"]]
    assert changed == [["ápac", "k07"]]
    assert sum(r["source_rows"] for r in out["mismatched_ranges"]) <= 2 * 24  # only the ranges holding the keys


def test_cdc_reconciles_only_when_caught_up(pg_db, duck):
    make_items(pg_db, rows=100)
    # soft deletes keep a deleted row's values from the destination, which apply cannot yet do for list columns
    pg_db.execute("ALTER TABLE items DROP COLUMN tags, DROP COLUMN stamps")
    common = dict(table="public.items", source_conn_id="pg_source", destination=duck.spec, deletes="soft")
    PgFullRefreshOperator(task_id="full_refresh", **common).execute({})
    apply = PgCdcApplyOperator(task_id="apply_changes", **common)
    verify = reconcile(duck, ranges=3, deletes="soft")
    assert verify.execute({})["ok"]

    pg_db.execute("UPDATE items SET price = 0, doc = '{\"b\": [1, 2]}' WHERE id <= 5")
    pg_db.execute("DELETE FROM items WHERE id BETWEEN 50 AND 52")
    pg_db.execute("INSERT INTO items (id, name) VALUES (500, 'new')")
    # changes not applied yet: the comparison would be meaningless, so it is skipped (or fails)
    behind = r"destination is behind: 9 changes pending; run apply_changes first"
    with pytest.raises(AirflowSkipException, match=behind):
        verify.execute({})
    with pytest.raises(ReplicationError, match="destination is behind: 9 changes pending"):
        reconcile(duck, ranges=3, when_behind="fail").execute({})

    assert apply.execute({})["changes"] == 9
    out = verify.execute({})
    assert out["ok"] and out["mode"] == "cdc" and out["rows"] == 98 and out["destination_rows"] == 98
    # soft-deleted rows stay in the destination but are not compared
    assert duck.query("SELECT count(*) FROM replica.items WHERE _pg_deleted_at IS NOT NULL") == [(3,)]
    # an applied change that the source does not have is a real difference
    tamper(duck, "UPDATE replica.items SET ok = NOT ok WHERE id = 60")
    with pytest.raises(ReplicationError, match=r"changed: id=60"):
        verify.execute({})
