"""A slot group's change log in use (issue 13): on object storage (a real S3-compatible server, an Airflow
connection from the environment), and as the group table's sensor and trigger see it.

Every scenario ends with the destination equal to the source row for row and no row doubled.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_pg_replication import PgSlotLagSensor
from airflow_pg_replication.testing.s3_server import ThrowawayS3Server
from airflow_pg_replication.triggers.slot_lag import SlotLagTrigger
from tests.conftest import PgDatabase
from tests.integration.conftest import DuckDest
from tests.integration.test_slot_groups import Group, create_table, write_mix

# -- 6. the change log on object storage ---------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[ThrowawayS3Server]:
    with ThrowawayS3Server() as server:
        yield server


@pytest.fixture
def s3_group(s3_server: ThrowawayS3Server, duck: DuckDest, monkeypatch: pytest.MonkeyPatch) -> Group:
    """Group ``objstore`` whose change log is ``s3://<fresh bucket>/changes``, reached through the Airflow
    connection ``aws_changes`` given as ``AIRFLOW_CONN_AWS_CHANGES`` (its extra holds the endpoint_url)."""
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)  # only the connection may configure the client
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CHANGES", s3_server.airflow_connection_json())
    bucket = s3_server.create_bucket(f"pgrepl-{uuid.uuid4().hex[:12]}")
    return Group(duck, f"s3://{bucket}/changes", "objstore", change_log_conn_id="aws_changes")


def bucket_keys(server: ThrowawayS3Server, url: str) -> list[str]:
    bucket = url.removeprefix("s3://").split("/", 1)[0]
    listed = server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_a_group_runs_on_a_change_log_in_object_storage(
    pg_db: PgDatabase, s3_group: Group, s3_server: ThrowawayS3Server
) -> None:
    db, g = pg_db, s3_group
    for name in ("a", "b"):
        create_table(db, name)
        assert g.join(name)["slot_group"] == "objstore"
    written = {name: write_mix(db, name) for name in ("a", "b")}
    assert g.capture(["a", "b"])["tables"] == {"public.a": written["a"], "public.b": written["b"]}
    keys = bucket_keys(s3_server, str(g.change_log))
    for name in ("a", "b"):
        assert [k for k in keys if k.startswith(f"changes/objstore/public.{name}/") and k.endswith(".arrow")]
    assert g.log().compression == "zstd" and not g.log().is_local

    for name in ("a", "b"):
        assert g.apply(name)["changes"] == written[name]
        g.assert_exact(db, name)
    assert not [k for k in bucket_keys(s3_server, str(g.change_log)) if k.endswith(".arrow")]

    # an apply on its own captures first (its own and the other table's changes land in the bucket)
    more = {name: write_mix(db, name, salt=1) for name in ("a", "b")}
    assert g.apply("a")["changes"] == more["a"]
    g.assert_exact(db, "a")
    waiting = [k for k in bucket_keys(s3_server, str(g.change_log)) if k.endswith(".arrow")]
    assert waiting and all(k.startswith("changes/objstore/public.b/") for k in waiting)
    assert g.apply("b")["changes"] == more["b"]
    g.assert_exact(db, "b")
    assert not [k for k in bucket_keys(s3_server, str(g.change_log)) if k.endswith(".arrow")]
    assert db.query("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()") == [
        ("pgrepl_objstore",)
    ]


# -- 7. the sensor and trigger of a group table --------------------------------------------------


def confirmed_flush(db: PgDatabase, slot: str) -> str:
    return db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))[0][0]


def rebuilt(trigger: SlotLagTrigger) -> SlotLagTrigger:
    """The trigger as the triggerer makes it: from its ``serialize()`` (class path, keyword arguments)."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


async def _first_event(trigger: SlotLagTrigger, timeout: float) -> dict[str, Any] | None:
    events = trigger.run()
    try:
        event = await asyncio.wait_for(events.__anext__(), timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        await events.aclose()
    return event.payload


def first_event(trigger: SlotLagTrigger, timeout: float = 30.0) -> dict[str, Any] | None:
    """Run the trigger under asyncio; its first event's payload, or None if none came within ``timeout``."""
    return asyncio.run(_first_event(trigger, timeout))


def test_the_sensor_and_trigger_of_a_group_table(pg_db: PgDatabase, duck: DuckDest, tmp_path: Path) -> None:
    db = pg_db
    g = Group(duck, tmp_path / "changes", "watched")
    for name in ("a", "o"):
        create_table(db, name)
        g.join(name)
    sensor_kw = {
        "table": "public.a",
        "slot_group": "watched",
        "change_log": str(g.change_log),
        "poke_interval": 0.1,
        "timeout": 60,
    }
    sensor = PgSlotLagSensor(task_id="wait_for_changes", deferrable=False, **sensor_kw)
    assert sensor.slot_name == g.slot

    def poke() -> bool:
        before = confirmed_flush(db, g.slot)
        fired = sensor.poke({})
        assert confirmed_flush(db, g.slot) == before, "a poke moved the group's slot"
        return fired

    assert poke() is False  # nothing pending
    write_mix(db, "o")
    assert poke() is False  # another table's changes never count
    a_written = write_mix(db, "a")
    assert g.log().segments("public.a") == []
    assert poke() is True  # not captured yet: found in the group's slot by a peek
    g.capture(["a", "o"])
    assert g.log().segments("public.a")
    assert poke() is True  # captured: segments of the table in the log
    assert g.apply("a")["changes"] == a_written
    assert poke() is False  # applied; o's segments wait, but they are not this table's

    # deferrable: nothing pending, so the sensor defers; the triggerer rebuilds the trigger from serialize()
    with pytest.raises(TaskDeferred) as deferred:
        PgSlotLagSensor(task_id="wait_for_changes", deferrable=True, **sensor_kw).execute({})
    trigger = rebuilt(deferred.value.trigger)
    assert (trigger.slot_group, trigger.slot, trigger.change_log) == ("watched", g.slot, str(g.change_log))
    slot_before = confirmed_flush(db, g.slot)
    assert first_event(trigger, timeout=1.0) is None  # nothing of the table: it keeps waiting
    more = write_mix(db, "a", salt=1)
    g.capture(["a", "o"])
    slot_captured = confirmed_flush(db, g.slot)
    assert slot_captured != slot_before
    event = first_event(rebuilt(trigger))
    assert event is not None and event["status"] == "ready", event
    assert "change log" in event["message"] and "segment" in event["message"]
    assert confirmed_flush(db, g.slot) == slot_captured

    assert g.apply("a")["changes"] == more
    # a write not captured yet: the trigger finds it in the group's slot, and does not move the slot
    again = write_mix(db, "a", salt=2)
    event = first_event(rebuilt(trigger))
    assert event is not None and event["status"] == "ready", event
    assert "segment" not in event["message"]
    assert confirmed_flush(db, g.slot) == slot_captured

    assert g.apply("a")["changes"] == again
    assert g.apply("o")["changes"] > 0
    for name in ("a", "o"):
        g.assert_exact(db, name)


def test_a_capture_waits_while_a_poke_holds_the_group_slot(pg_db: PgDatabase, duck: DuckDest, tmp_path: Path) -> None:
    """A poke peeks the group's slot and holds it while PostgreSQL decodes; a capture at that moment waits for it.

    The poke's hold is stood in for by a walsender that holds the slot for one second (a real poke's
    hold is as long as its decoding, too short to hit on purpose)."""
    import threading

    from airflow_pg_replication import PgReplicationHook

    db = pg_db
    g = Group(duck, tmp_path / "changes", "contended")
    create_table(db, "a")
    g.join("a")
    written = write_mix(db, "a")
    holder = PgReplicationHook(postgres_conn_id="pg_source").replication_connection()
    try:
        holder.cursor().start_replication(
            slot_name=g.slot, decode=False, options={"proto_version": "1", "publication_names": g.slot}
        )
        for _ in range(100):
            if db.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (g.slot,))[0][0]:
                break
            time.sleep(0.02)
        threading.Timer(1.0, holder.close).start()
        captured = g.capture(["a"])
    finally:
        holder.close()
    assert captured["tables"] == {"public.a": written}
    assert g.apply("a")["changes"] == written
    g.assert_exact(db, "a")
