"""Running it in production: deferrable slot-lag sensor, slot-loss policy on a really invalidated slot,
and a least-privilege role (LOGIN REPLICATION + SELECT + a pre-created publication)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator, PgSlotLagSensor
from airflow_pg_replication.errors import ReplicationError, SlotLostError
from airflow_pg_replication.operators.plan import choose_next_task
from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster
from airflow_pg_replication.triggers.slot_lag import SlotLagTrigger
from tests.integration.conftest import source_rows

SLOT = "pgrepl_public_customers"


def make_table(db_or_dsn) -> None:
    dsn = getattr(db_or_dsn, "dsn", db_or_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers SELECT g, 'n' || g FROM generate_series(1, 100) g")


def snapshot(duck, **kw):
    op = PgFullRefreshOperator(task_id="full_refresh", table="customers", destination=duck.spec, **kw)
    return op.execute({})


def run_trigger(trigger: SlotLagTrigger) -> dict:
    async def first_event():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first_event(), timeout=30))


def test_deferrable_sensor_defers_and_trigger_fires_on_lag(pg_db, duck):
    make_table(pg_db)
    snapshot(duck)
    sensor = PgSlotLagSensor(
        task_id="wait_for_changes", table="customers", deferrable=True, poke_interval=1, timeout=60, min_lag_bytes=1
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # nothing to apply: hands the wait to the triggerer
    trigger = deferred.value.trigger
    assert isinstance(trigger, SlotLagTrigger)
    path, kwargs = trigger.serialize()
    assert path == "airflow_pg_replication.triggers.slot_lag.SlotLagTrigger"
    trigger = SlotLagTrigger(**kwargs)  # round trip, as the triggerer does
    pg_db.execute("UPDATE customers SET name = 'x' WHERE customer_id = 1")
    event = run_trigger(trigger)
    assert event["status"] == "ready" and "lag" in event["message"]
    sensor.execute_complete({}, event)  # resumes as success
    # poking mode agrees
    assert PgSlotLagSensor(task_id="w", table="customers").poke({}) is True


def test_trigger_and_sensor_fail_on_missing_slot(pg_db):
    make_table(pg_db)
    trigger = SlotLagTrigger(
        source_conn_id="pg_source",
        slot=SLOT,
        table="public.customers",
        min_lag_bytes=1,
        max_lag_bytes=10**9,
        poke_interval=1,
    )
    event = run_trigger(trigger)
    assert event["status"] == "error" and "does not exist" in event["message"]
    sensor = PgSlotLagSensor(task_id="w", table="customers", deferrable=True)
    with pytest.raises(ReplicationError, match="does not exist"):
        sensor.execute_complete({}, event)
    with pytest.raises(SlotLostError, match="full_refresh=true"):
        PgSlotLagSensor(task_id="w", table="customers").poke({})


def test_sensor_fails_past_max_lag(pg_db, duck):
    make_table(pg_db)
    snapshot(duck)
    pg_db.execute("UPDATE customers SET name = name || repeat('x', 1000)")
    with pytest.raises(ReplicationError, match="max_lag_bytes"):
        PgSlotLagSensor(task_id="w", table="customers", max_lag_bytes=1000).poke({})


@pytest.fixture
def small_wal_cluster(monkeypatch):
    with ThrowawayCluster(
        settings={"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0", "max_wal_size": "32MB", "min_wal_size": "32MB"}
    ) as cluster:
        cluster.create_database("src")
        monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", cluster.conn_uri("src"))
        yield cluster


def invalidate_slot(dsn: str) -> None:
    """Write WAL well past max_slot_wal_keep_size and checkpoint until PostgreSQL invalidates the slot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (v text)")
        for _ in range(30):
            conn.execute("INSERT INTO filler SELECT repeat('w', 1000) FROM generate_series(1, 3000)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            status = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
            ).fetchone()[0]
            if status == "lost":
                return
    raise AssertionError(f"slot not invalidated (wal_status={status})")


def test_invalidated_slot_fail_policy(small_wal_cluster, duck):
    from airflow_pg_replication.source.catalog import read_slot_info
    from airflow_pg_replication.source.slot_health import judge_slot

    dsn = small_wal_cluster.dsn("src")
    make_table(dsn)
    snapshot(duck, slot=SLOT)
    with psycopg.connect(dsn, autocommit=True) as conn:  # max_slot_wal_keep_size is set: the log says when
        verdict = judge_slot(
            read_slot_info(conn, SLOT), slot_name=SLOT, table="public.customers", min_lag_bytes=1, max_lag_bytes=10**12
        )
    assert "safe_wal_size" in verdict.message and "invalidated in about" in verdict.message
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = 'lost change' WHERE customer_id = 1")
    invalidate_slot(dsn)
    with pytest.raises(SlotLostError, match=r"invalidated.*full_refresh=true"):
        choose_next_task(
            table="customers", source_conn_id="pg_source", destination=duck.spec, slot=SLOT, on_slot_lost="fail"
        )
    with pytest.raises(SlotLostError, match="wal_status=lost"):
        PgSlotLagSensor(task_id="w", table="customers", slot=SLOT).poke({})
    event = run_trigger(
        SlotLagTrigger(
            source_conn_id="pg_source",
            slot=SLOT,
            table="public.customers",
            min_lag_bytes=1,
            max_lag_bytes=10**12,
            poke_interval=1,
        )
    )
    assert event["status"] == "error" and "invalidated" in event["message"]  # the deferrable path fails too
    with pytest.raises(SlotLostError, match="invalidated"):
        PgCdcApplyOperator(task_id="a", table="customers", slot=SLOT, destination=duck.spec).execute({})
    # the documented fix: a run with full_refresh=true
    assert (
        choose_next_task(
            table="customers",
            source_conn_id="pg_source",
            destination=duck.spec,
            slot=SLOT,
            params={"full_refresh": True},
        )
        == "full_refresh"
    )


def test_invalidated_slot_resync_policy(small_wal_cluster, duck):
    dsn = small_wal_cluster.dsn("src")
    make_table(dsn)
    snapshot(duck, slot=SLOT)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = 'lost change' WHERE customer_id = 1")
    invalidate_slot(dsn)
    assert (
        choose_next_task(
            table="customers", source_conn_id="pg_source", destination=duck.spec, slot=SLOT, on_slot_lost="resync"
        )
        == "full_refresh"
    )
    snapshot(duck, slot=SLOT)  # drops the dead slot, takes a fresh snapshot
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM customers WHERE customer_id = 2")
        want = conn.execute("SELECT customer_id, name FROM customers ORDER BY 1").fetchall()
    PgCdcApplyOperator(task_id="a", table="customers", slot=SLOT, destination=duck.spec).execute({})
    assert duck.rows("customers", ["customer_id", "name"], ["customer_id"]) == want
    assert want[0] == (1, "lost change")


def test_least_privilege_role_runs_full_refresh_and_cdc(pg_db, duck, monkeypatch):
    make_table(pg_db)
    pg_db.execute("CREATE ROLE replicator LOGIN REPLICATION")
    pg_db.execute("GRANT SELECT ON customers TO replicator")
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", pg_db.conn_uri.replace("postgres@", "replicator@"))
    # without a pre-created publication the role cannot create its slot group's (it does not own the table)
    with pytest.raises(
        ReplicationError,
        match=r'CREATE PUBLICATION "pgrepl_default" FOR TABLE "public"\."customers" WITH \(publish_via_partition_root',
    ):
        snapshot(duck)
    pg_db.execute("CREATE PUBLICATION pgrepl_default FOR TABLE customers WITH (publish_via_partition_root = true)")
    assert snapshot(duck)["rows"] == 100
    pg_db.execute("UPDATE customers SET name = 'least privilege' WHERE customer_id < 10")
    pg_db.execute("DELETE FROM customers WHERE customer_id > 95")
    assert PgCdcApplyOperator(task_id="a", table="customers", destination=duck.spec).execute({})["changes"] == 14
    assert duck.rows("customers", ["customer_id", "name"], ["customer_id"]) == source_rows(
        pg_db, "public.customers", ["customer_id", "name"], ["customer_id"]
    )
    is_super = pg_db.query("SELECT rolsuper FROM pg_roles WHERE rolname = 'replicator'")[0][0]
    assert is_super is False
    pg_db.execute("DROP PUBLICATION pgrepl_default")
    pg_db.cluster.drop_replication_slots(pg_db.name)
    pg_db.execute("DROP OWNED BY replicator")
    pg_db.execute("DROP ROLE replicator")


def test_hook_creates_and_drops_publication_and_slot(pg_db):
    from airflow_pg_replication import PgReplicationHook

    make_table(pg_db)
    hook = PgReplicationHook(postgres_conn_id="pg_source")
    with hook.connect() as conn:
        hook.check_wal_level(conn)
        hook.ensure_publication(conn, SLOT, "public", "customers")
        hook.ensure_publication(conn, SLOT, "public", "customers")  # idempotent
        lsn = hook.create_slot(conn, SLOT)
        info = hook.slot_info(conn, SLOT)
        assert info.plugin == "pgoutput" and info.wal_status == "reserved" and info.lag_bytes >= 0 and lsn > 0
        assert hook.drop_slot(conn, SLOT) and hook.slot_info(conn, SLOT) is None
        assert hook.drop_publication(conn, SLOT) and not hook.drop_publication(conn, SLOT)
