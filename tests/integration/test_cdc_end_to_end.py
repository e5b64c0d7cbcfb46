"""Full refresh, then CDC: the destination equals the source row for row (real PostgreSQL, real DuckDB)."""

from __future__ import annotations

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from tests.integration.conftest import source_rows

COLS = ["customer_id", "first_name", "last_name", "email", "created_at"]


def make_customers(pg_db, rows: int = 50) -> None:
    pg_db.execute(
        "CREATE TABLE customers (customer_id bigint PRIMARY KEY, first_name text NOT NULL, "
        "last_name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now())"
    )
    pg_db.execute(
        "INSERT INTO customers SELECT g, 'first' || g, 'last' || g, 'c' || g || '@example.com', "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour' FROM generate_series(1, %s) g",
        (rows,),
    )


#: A dedicated slot of the table's own, as tables had before slot groups (without it, a CDC table is in group default).
DEDICATED = {"slot": "pgrepl_public_customers"}


def ops(duck, **kw):
    common = dict(table="public.customers", source_conn_id="pg_source", destination=duck.spec, **kw)
    return (
        PgFullRefreshOperator(task_id="full_refresh", **common),
        PgCdcApplyOperator(task_id="apply_changes", **common),
    )


def assert_same(pg_db, duck, table="customers", dest_table="customers", cols=COLS, key=("customer_id",)):
    assert duck.rows(dest_table, cols, key) == source_rows(pg_db, f"public.{table}", cols, key)


def test_full_refresh_then_cdc_matches_source(pg_db, duck):
    make_customers(pg_db)
    full, apply = ops(duck)
    out = full.execute({})
    assert out["rows"] == 50 and out["table"] == "public.customers"
    assert_same(pg_db, duck)
    # inserts, updates, deletes; a row inserted and deleted in the same batch; a primary key update
    pg_db.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (100, 'new', 'row')")
    pg_db.execute("UPDATE customers SET email = NULL, first_name = 'Zoë' WHERE customer_id <= 5")
    pg_db.execute("DELETE FROM customers WHERE customer_id BETWEEN 10 AND 12")
    pg_db.execute("INSERT INTO customers (customer_id, first_name, last_name) VALUES (200, 'brief', 'life')")
    pg_db.execute("DELETE FROM customers WHERE customer_id = 200")
    pg_db.execute("UPDATE customers SET customer_id = 1000 WHERE customer_id = 20")
    res = apply.execute({})
    assert res["changes"] == 1 + 5 + 3 + 2 + 1
    assert_same(pg_db, duck)
    assert duck.query("SELECT count(*) FROM replica.customers WHERE customer_id IN (20, 200)") == [(0,)]
    # _pg_lsn: snapshot rows carry the snapshot LSN, changed rows a later commit LSN
    lsns = dict(duck.query("SELECT customer_id, _pg_lsn FROM replica.customers WHERE customer_id IN (1, 30)"))
    assert lsns[1] > lsns[30] > 0
    # nothing new: a run with no changes applies nothing and says so
    assert apply.execute({})["changes"] == 0
    assert_same(pg_db, duck)
