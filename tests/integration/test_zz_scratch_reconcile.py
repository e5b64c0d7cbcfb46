import time, pytest
from airflow_pg_replication import PgFullRefreshOperator, PgReconcileOperator
from airflow_pg_replication.errors import ReplicationError
from tests.integration.test_reconcile import tamper

@pytest.mark.parametrize("ktype,expr", [("timestamptz", "timestamptz '2024-01-01 00:00:00+03' + g * interval '1 second'"),
    ("uuid", "md5(g::text)::uuid"), ("numeric(12,3)", "g / 7.0"), ("date", "date '2000-01-01' + g"), ("bytea", "decode(lpad(to_hex(g*37), 6, '0'), 'hex')"),
    ("float8", "g / 3.0"), ("interval", "g * interval '7 minutes'")])
def test_key_types(pg_db, duck, ktype, expr):
    pg_db.execute(f"CREATE TABLE k (id {ktype} PRIMARY KEY, v int)")
    pg_db.execute(f"INSERT INTO k SELECT {expr}, g FROM generate_series(1, 300) g")
    PgFullRefreshOperator(task_id="f", table="public.k", destination=duck.spec, mode="full_refresh").execute({})
    op = PgReconcileOperator(task_id="r", table="public.k", destination=duck.spec, ranges=7)
    out = op.execute({})
    assert out["ok"] and out["ranges"] == 7, out
    tamper(duck, "UPDATE replica.k SET v = -1 WHERE v = 100")
    out = PgReconcileOperator(task_id="r", table="public.k", destination=duck.spec, ranges=7, fail_on_mismatch=False).execute({})
    print(out["mismatched_ranges"])
    assert len(out["mismatched_ranges"]) == 1 and len(out["mismatched_ranges"][0]["changed"]) == 1

def test_nokey_and_nullable(pg_db, duck):
    pg_db.execute("CREATE TABLE n (code text, v int)")
    pg_db.execute("INSERT INTO n SELECT CASE WHEN g % 10 = 0 THEN NULL ELSE 'c' || g END, g % 3 FROM generate_series(1, 100) g")
    pg_db.execute("INSERT INTO n VALUES ('dup', 1), ('dup', 1)")
    PgFullRefreshOperator(task_id="f", table="public.n", destination=duck.spec, mode="full_refresh").execute({})
    out = PgReconcileOperator(task_id="r", table="public.n", destination=duck.spec, ranges=4).execute({})
    assert out["ok"] and out["ranges"] == 1, out
    out = PgReconcileOperator(task_id="r", table="public.n", destination=duck.spec, ranges=4, primary_key=["code"]).execute({})
    assert out["ok"] and out["ranges"] == 5 and out["rows"] == 102, out
    tamper(duck, "DELETE FROM replica.n WHERE code IS NULL AND v = 1")
    tamper(duck, "INSERT INTO replica.n (code, v) VALUES ('dup', 1)")
    with pytest.raises(ReplicationError) as e:
        PgReconcileOperator(task_id="r", table="public.n", destination=duck.spec, ranges=4).execute({})
    print(e.value)
    with pytest.raises(ReplicationError) as e:
        PgReconcileOperator(task_id="r", table="public.n", destination=duck.spec, ranges=4, primary_key=["code"]).execute({})
    print(e.value)

def test_bench(pg_db, duck):
    pg_db.execute("CREATE TABLE b (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, doc jsonb)")
    pg_db.execute("INSERT INTO b SELECT g, 'name ' || g, g * 1.01, now(), jsonb_build_object('a', g) FROM generate_series(1, 200000) g")
    t = time.monotonic()
    PgFullRefreshOperator(task_id="f", table="public.b", destination=duck.spec, mode="full_refresh").execute({})
    print("load", time.monotonic() - t)
    t = time.monotonic()
    out = PgReconcileOperator(task_id="r", table="public.b", destination=duck.spec).execute({})
    print("reconcile", time.monotonic() - t, out["seconds"])
