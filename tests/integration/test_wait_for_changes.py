"""wait_for_changes fires only for changes of its own table, advances past other tables' WAL, and
never loses a change (issue 11, item 4): PgSlotLagSensor and SlotLagTrigger on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import TaskDeferred
from psycopg import sql

from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator, PgSlotLagSensor
from airflow_pg_replication.errors import SlotLostError
from airflow_pg_replication.source.pgoutput import parse_lsn
from airflow_pg_replication.source.table_changes import PokeResult, _poke_steps, poke_sync
from airflow_pg_replication.triggers.slot_lag import SlotLagTrigger, poke_target
from tests.integration.conftest import source_rows

SLOT = "pgrepl_public_customers"
COLUMNS = ["customer_id", "name"]


@pytest.fixture
def snapshotted(pg_db, duck):
    """customers (100 rows) snapshotted with its slot and publication; ``other`` is not replicated."""
    pg_db.execute("CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text)")
    pg_db.execute("INSERT INTO customers SELECT g, 'n' || g FROM generate_series(1, 100) g")
    pg_db.execute("CREATE TABLE other (id bigserial PRIMARY KEY, v text)")
    PgFullRefreshOperator(task_id="full_refresh", table="customers", slot=SLOT, destination=duck.spec).execute({})
    return pg_db


def write_other(db, rows: int = 2000) -> int:
    """Insert into the other table; returns the WAL flush position after it."""
    with db.connect() as conn:
        conn.execute("INSERT INTO other (v) SELECT repeat('o', 200) FROM generate_series(1, %s)", (rows,))
        return parse_lsn(str(conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]))


def confirmed(db) -> int:
    return parse_lsn(
        db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))[0][0]
    )


def drop_slot(db) -> None:
    """Drop the slot as soon as no poke holds it (without ending anyone's connection)."""
    for _ in range(200):
        try:
            db.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.02)
    raise AssertionError(f"slot {SLOT} stayed in use")


def sensor(**kw: Any) -> PgSlotLagSensor:
    return PgSlotLagSensor(task_id="wait_for_changes", table="customers", slot=SLOT, **kw)


def poke(db, min_lag_bytes: int = 1, between: Callable[[int], None] | None = None) -> PokeResult:
    """One poke as the sensor does it, returning what it saw; ``between(i)`` runs before statement i > 0."""
    target = poke_target("customers", slot=SLOT, publication=SLOT, min_lag_bytes=min_lag_bytes, max_lag_bytes=10**12)
    with db.connect() as conn:
        if between is None:
            return poke_sync(conn, target)
        steps, reply, error, i = _poke_steps(target), None, None, 0
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as done:
                return done.value
            if i:
                between(i)
            i, error = i + 1, None
            try:
                cur = conn.execute(step.query, step.params, binary=step.binary)
                reply = cur.fetchall() if step.fetch == "all" else cur.fetchone()
            except psycopg.Error as exc:
                error = exc


def apply_and_compare(db, duck) -> dict:
    out = PgCdcApplyOperator(task_id="apply_changes", table="customers", slot=SLOT, destination=duck.spec).execute({})
    assert duck.rows("customers", COLUMNS, ["customer_id"]) == source_rows(
        db, "public.customers", COLUMNS, ["customer_id"]
    )
    return out


@contextlib.contextmanager
def slot_held_by_a_walsender(db) -> Iterator[int]:
    """Stream the slot over a replication connection, as a reader holding it: yields the walsender's PID."""
    import psycopg2.errors

    from airflow_pg_replication import PgReplicationHook

    deadline = time.monotonic() + 30
    while True:  # a poke may hold the slot for a moment: take it once the poke is done
        rconn = PgReplicationHook(postgres_conn_id="pg_source").replication_connection()
        try:
            cur = rconn.cursor()
            cur.start_replication(
                slot_name=SLOT, decode=False, options={"proto_version": "1", "publication_names": SLOT}
            )
            break
        except psycopg2.errors.ObjectInUse:
            rconn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        for _ in range(100):
            row = db.query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))[0]
            if row[0] is not None:
                break
            time.sleep(0.05)
        yield row[0]
    finally:
        rconn.close()
    for _ in range(100):  # the walsender exits a moment after the connection closes
        if db.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))[0][0] is False:
            return
        time.sleep(0.05)


def test_other_tables_wal_does_not_fire_and_is_advanced_past(snapshotted, duck):
    db = snapshotted
    before = confirmed(db)
    after_other = write_other(db)
    assert sensor().poke({}) is False
    assert confirmed(db) >= after_other > before  # the next poke decodes only newer WAL

    after_other = write_other(db)
    seen = poke(db)
    assert not seen.ready and not seen.busy
    assert (seen.changes, seen.change_bytes) == (0, 0)
    assert seen.slot_lag_bytes >= after_other - seen.decoded_from > 0
    assert seen.advanced_to == seen.decoded_to >= after_other and seen.advanced_bytes > 0
    assert confirmed(db) == seen.advanced_to
    for words in (
        "lag",
        "0 change(s) of public.customers pending",
        "advanced the slot",
        "past other tables' WAL",
        "not firing: no change of the table pending",
    ):
        assert words in seen.message

    db.execute("UPDATE customers SET name = 'changed' WHERE customer_id = 7")
    assert sensor().poke({}) is True
    seen = poke(db)
    assert seen.ready and seen.changes == 1 and seen.change_bytes > 0 and seen.advanced_to is None
    assert "firing" in seen.message
    assert apply_and_compare(db, duck)["changes"] == 1
    write_other(db)
    assert sensor().poke({}) is False  # the applied change is consumed; other WAL again does not count


def test_min_lag_bytes_waits_for_enough_of_the_tables_own_changes(snapshotted, duck):
    db = snapshotted
    write_other(db)
    assert poke(db).advanced_to is not None
    start = confirmed(db)
    db.execute("UPDATE customers SET name = 'a' WHERE customer_id = 1")
    one = poke(db, min_lag_bytes=10**6)
    assert not one.ready and one.changes == 1 and one.change_bytes > 0
    min_lag = 3 * one.change_bytes  # three changes' worth
    write_other(db)  # other tables' WAL after the table's change: the slot must not pass the change
    seen = poke(db, min_lag_bytes=min_lag)
    assert not seen.ready and seen.changes == 1 and seen.advanced_to is None
    assert f"{one.change_bytes:,} of min_lag_bytes={min_lag:,} bytes" in seen.message
    assert confirmed(db) == start
    assert sensor(min_lag_bytes=min_lag).poke({}) is False
    db.execute("UPDATE customers SET name = 'b' WHERE customer_id = 2")
    assert sensor(min_lag_bytes=min_lag).poke({}) is False
    db.execute("UPDATE customers SET name = 'c' WHERE customer_id = 3")
    assert sensor(min_lag_bytes=min_lag).poke({}) is True
    seen = poke(db, min_lag_bytes=min_lag)
    assert seen.ready and seen.changes == 3 and seen.change_bytes >= min_lag
    assert confirmed(db) == start
    assert apply_and_compare(db, duck)["changes"] == 3


def test_transaction_in_progress_at_the_advance_is_not_lost(snapshotted, duck):
    db = snapshotted
    with db.connect() as open_tx:
        open_tx.autocommit = False
        open_tx.execute("INSERT INTO customers VALUES (1001, 'begun before the advance')")
        open_tx.execute("UPDATE customers SET name = 'in flight' WHERE customer_id = 5")
        after_other = write_other(db)
        seen = poke(db)  # the open transaction has not committed: nothing of the table to see yet
        assert not seen.ready and seen.advanced_to is not None and seen.advanced_to >= after_other
        open_tx.execute("DELETE FROM customers WHERE customer_id = 6")
        open_tx.commit()
    seen = poke(db)
    assert seen.ready and seen.changes == 3
    assert apply_and_compare(db, duck)["changes"] == 3
    assert db.query("SELECT name FROM customers WHERE customer_id = 1001") == [("begun before the advance",)]


def test_busy_slot_is_looked_at_again_next_poke(snapshotted, duck):
    db = snapshotted
    write_other(db)
    with slot_held_by_a_walsender(db) as pid:
        assert pid is not None
        assert sensor().poke({}) is False  # does not raise
        seen = poke(db)
        assert seen.busy and not seen.ready and f"in use by PID {pid}" in seen.message
    # the slot taken between the poke's slot read and its peek: "is active for PID" is busy, too
    holder = contextlib.ExitStack()
    try:
        seen = poke(db, between=lambda i: holder.enter_context(slot_held_by_a_walsender(db)) if i == 1 else None)
    finally:
        holder.close()
    assert seen.busy and not seen.ready and "is active for PID" in seen.message
    # ... and between its peek and its advance
    holder = contextlib.ExitStack()
    try:
        seen = poke(db, between=lambda i: holder.enter_context(slot_held_by_a_walsender(db)) if i == 2 else None)
    finally:
        holder.close()
    assert seen.busy and not seen.ready and seen.advanced_to is None and "not advanced" in seen.message
    seen = poke(db)  # free again: the next poke advances
    assert not seen.busy and seen.advanced_to is not None
    db.execute("UPDATE customers SET name = 'after busy' WHERE customer_id = 9")
    assert sensor().poke({}) is True
    assert apply_and_compare(db, duck)["changes"] == 1


def test_slot_peeked_in_a_loop_by_another_backend_never_fails_a_poke(snapshotted):
    db = snapshotted
    write_other(db, rows=20_000)
    stop = threading.Event()

    def peek_forever() -> None:
        with db.connect() as conn:
            while not stop.is_set():
                with contextlib.suppress(psycopg.errors.ObjectInUse):
                    conn.execute(
                        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                        "'proto_version', '1', 'publication_names', %s)",
                        (SLOT, SLOT),
                    ).fetchone()

    thread = threading.Thread(target=peek_forever)
    thread.start()
    try:
        results = [sensor().poke({}) for _ in range(20)]
    finally:
        stop.set()
        thread.join()
    assert results == [False] * 20


def test_another_reader_advanced_further_meanwhile(snapshotted):
    db = snapshotted
    write_other(db)

    def reader_goes_further(i: int) -> None:
        if i == 2:  # after the peek, before the advance
            write_other(db, rows=100)
            db.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", (SLOT,))

    seen = poke(db, between=reader_goes_further)
    assert not seen.ready and seen.advanced_to is None and "moved it further" in seen.message


def test_missing_slot_raises_slot_lost(snapshotted):
    db = snapshotted
    write_other(db)  # WAL to decode: the poke goes on to peek
    # dropped between the poke's slot read and its peek
    with pytest.raises(SlotLostError, match=r"does not exist.*full_refresh=true"):
        poke(db, between=lambda i: drop_slot(db) if i == 1 else None)
    with pytest.raises(SlotLostError, match="does not exist"):
        sensor().poke({})


def run_first_event(trigger: SlotLagTrigger, during: Callable[[], None] | None = None, timeout: float = 60) -> dict:
    """The trigger's first event; ``during`` runs in a thread meanwhile (the writes the trigger waits for)."""

    async def first_event() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    thread = threading.Thread(target=during) if during else None
    if thread:
        thread.start()
    try:
        return asyncio.run(asyncio.wait_for(first_event(), timeout=timeout))
    finally:
        if thread:
            thread.join()


def trigger(**kw: Any) -> SlotLagTrigger:
    sensor_kw = dict(deferrable=True, poke_interval=0.2, timeout=60, **kw)
    with pytest.raises(TaskDeferred) as deferred:  # nothing of the table waits yet: defers
        sensor(**sensor_kw).execute({})
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "airflow_pg_replication.triggers.slot_lag.SlotLagTrigger"
    assert kwargs["publication"] == SLOT and kwargs["poke_interval"] == 0.2
    return SlotLagTrigger(**kwargs)  # rebuilt from its serialized form, as the triggerer does


def test_trigger_waits_past_other_tables_then_fires_on_the_tables_change(snapshotted, duck):
    db = snapshotted
    write_other(db)
    waiting = trigger()
    start = confirmed(db)
    marks: dict[str, int] = {}

    def writes() -> None:
        for _ in range(3):
            marks["other"] = write_other(db, rows=500)
            time.sleep(0.5)
        deadline = time.monotonic() + 20
        while confirmed(db) < marks["other"] and time.monotonic() < deadline:  # the trigger advanced past it
            time.sleep(0.1)
        marks["advanced"] = confirmed(db)
        db.execute("UPDATE customers SET name = 'seen by the trigger' WHERE customer_id = 3")

    event = run_first_event(waiting, writes)
    assert event["status"] == "ready", event
    assert "1 change(s) of public.customers pending" in event["message"] and "lag" in event["message"]
    assert marks["advanced"] >= marks["other"] > start
    sensor(deferrable=True).execute_complete({}, event)
    assert apply_and_compare(db, duck)["changes"] == 1


def test_trigger_reports_a_lost_slot(snapshotted):
    db = snapshotted
    waiting = trigger()

    def drop() -> None:
        write_other(db, rows=200)
        time.sleep(0.6)
        drop_slot(db)

    event = run_first_event(waiting, drop)
    assert event["status"] == "error"
    assert "does not exist" in event["message"] and "full_refresh=true" in event["message"]
    with pytest.raises(SlotLostError):
        sensor().poke({})


def test_trigger_waits_while_the_slot_is_busy(snapshotted, duck):
    db = snapshotted
    waiting = trigger()
    write_other(db)

    def busy_then_change() -> None:
        with slot_held_by_a_walsender(db):
            db.execute("UPDATE customers SET name = 'while busy' WHERE customer_id = 4")
            time.sleep(1.0)  # several pokes see the slot in use: none fails
        db.execute("UPDATE customers SET name = 'after busy' WHERE customer_id = 5")

    event = run_first_event(waiting, busy_then_change)
    assert event["status"] == "ready", event
    assert apply_and_compare(db, duck)["changes"] == 2


def test_missing_publication_needs_attention_sync_and_async(snapshotted):
    from airflow_pg_replication.errors import NeedsAttentionError
    from airflow_pg_replication.source.table_changes import poke_async

    db = snapshotted
    db.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(SLOT)))
    write_other(db, rows=10)
    with pytest.raises(NeedsAttentionError, match=r"publication .* is gone.*full_refresh=true"):
        sensor().poke({})
    target = poke_target("customers", slot=SLOT, publication=SLOT, min_lag_bytes=1, max_lag_bytes=10**12)

    async def async_poke() -> PokeResult:
        async with await psycopg.AsyncConnection.connect(db.dsn, autocommit=True) as conn:
            return await poke_async(conn, target)

    with pytest.raises(NeedsAttentionError, match=r"publication .* is gone"):
        asyncio.run(async_poke())
