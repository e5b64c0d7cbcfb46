import cProfile, pstats
from airflow_pg_replication import PgFullRefreshOperator, PgReconcileOperator

def test_prof(pg_db, duck):
    pg_db.execute("CREATE TABLE b (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, doc jsonb)")
    pg_db.execute("INSERT INTO b SELECT g, 'name ' || g, g * 1.01, now(), jsonb_build_object('a', g) FROM generate_series(1, 100000) g")
    PgFullRefreshOperator(task_id="f", table="public.b", destination=duck.spec, mode="full_refresh").execute({})
    op = PgReconcileOperator(task_id="r", table="public.b", destination=duck.spec)
    pr = cProfile.Profile(); pr.enable(); op.execute({}); pr.disable()
    pstats.Stats(pr, stream=open("/tmp/rc/prof.txt", "w")).sort_stats("tottime").print_stats(25)
