from airflow_pg_replication import PgFullRefreshOperator

def P(*a):
    print(*a, file=open("/tmp/rc/out.txt","a"))

def test_explore(pg_db, duck):
    pg_db.execute("CREATE TYPE mood AS ENUM ('sad','ok','happy')")
    pg_db.execute("""CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), nu numeric, f4 real, f8 float8,
      ts timestamp, tstz timestamptz, d date, tm time, j jsonb, js json, ia int[], na numeric(6,2)[], tsa timestamptz[], ta text[],
      b bytea, u uuid, iv interval, m mood, bp char(4), bo bool, ja jsonb[])""")
    pg_db.execute("""INSERT INTO t VALUES (1, 1.50, 3.14159, 1.1, 2.2, '2024-01-01 01:02:03.456', '2024-01-01 01:02:03+02', '2024-02-03', '23:00:00',
      '{"b": 1.50, "a": [1, null, "x"]}', '{"z":1, "a":2}', '{1,2,NULL}', '{1.5,2.25}', '{"2024-01-01 00:00:00+00"}', '{"a","b c",NULL}',
      '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 2 hours', 'ok', 'ab', true, ARRAY['{"a":1}'::jsonb]),
      (2, NULL, NULL, 'NaN', '-Infinity', '2020-01-01', '2020-01-01', '2020-01-01', NULL, 'null', NULL, '{}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""")
    PgFullRefreshOperator(task_id="x", table="public.t", destination=duck.spec, mode="full_refresh").execute({})
    from airflow_pg_replication.operators.base import TableTarget
    from airflow_pg_replication.loading import TableDestination
    with TableDestination(duck.spec, table_name="public.t", destination_table="t", pipeline_name="p") as dest:
        with dest.pipeline.sql_client() as c:
            with c.execute_query(f"SELECT * FROM {c.make_qualified_table_name('t')} ORDER BY id") as cur:
                for tb in cur.iter_arrow(1000):
                    P(tb.schema)
                    for col in tb.columns:
                        try:
                            P(col.type, col.to_pylist())
                        except Exception as e:
                            P(col.type, "ERR", e, col.cast(__import__('pyarrow').int64()) if 'time' in str(col.type) or 'date' in str(col.type) else '')
            with c.execute_query(f"SELECT * FROM {c.make_qualified_table_name('t')} ORDER BY id") as cur:
                P(cur.fetchall())
    from airflow_pg_replication.hooks.replication import PgReplicationHook
    from airflow_pg_replication.snapshot import copy_batches, begin_snapshot
    h = PgReplicationHook(postgres_conn_id="pg_source")
    with h.connect(autocommit=False) as conn:
        info = h.table_info(conn, "public", "t")
        conn.rollback()
        begin_snapshot(conn, None)
        for b in copy_batches(conn, info, lsn=None):
            P(b.schema)
            for col in b.columns:
                try:
                    P(col.type, col.to_pylist())
                except Exception as e:
                    P(col.type, "ERR", e)
    assert 0
