"""Every DAG the factory builds serializes as Airflow's dag-processor serializes it, and round-trips.

`airflow dags test` never serializes a DAG, so a DAG that runs there can still fail to load in a
real deployment (a `datetime.timezone.utc` start date did). Here each DAG goes through
`DagSerialization.to_dict` (JSON-schema validated, what the dag-processor stores), then back
through `from_dict` (what the scheduler runs), for each mode, schedule kind, verify on/off,
deferrable on/off/unset, and a broken registry entry.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pendulum
import pytest
from airflow.serialization.serialized_objects import DagSerialization, LazyDeserializedDAG

from airflow_pg_replication import build_dags

SCHEDULES = [
    "*/5 * * * *",
    "17 3 * * 1-5",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@once",
    "@continuous",
    None,
]

REGISTRY = textwrap.dedent("""
    source: {conn_id: pg_source}
    destination: {type: duckdb, credentials: /tmp/never_opened.duckdb, dataset: replica}
    tables:
""")


def _table_entries() -> list[str]:
    entries = []
    for i, schedule in enumerate(SCHEDULES):
        sched = "null" if schedule is None else json.dumps(schedule)
        entries.append(
            f"  - {{table: public.cdc_{i}, schedule: {sched}, verify: {str(i % 2 == 0).lower()}, "
            f"deferrable: {['true', 'false', 'null'][i % 3]}}}"
        )
        entries.append(f"  - {{table: sales.full_{i}, mode: full_refresh, schedule: {sched}}}")
        entries.append(
            f"  - {{table: public.inc_{i}, mode: incremental, cursor_column: updated_at, "
            f"cursor_lookback: 5 minutes, schedule: {sched}, deletes: soft}}"
        )
    entries.append("  - {table: public.broken, mode: incremental}")  # no cursor_column: a broken entry
    return entries


@pytest.fixture(scope="module")
def dags(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = Path(tmp_path_factory.mktemp("registry")) / "tables.yaml"
    path.write_text(REGISTRY + "\n".join(_table_entries()) + "\n")
    return build_dags(path)


def test_factory_builds_every_kind(dags: dict) -> None:
    assert len(dags) == 3 * len(SCHEDULES) + 1 + 1  # and slot group default's capture
    assert "pg_replication__capture__default" in dags
    assert "pg_replication__public__broken" in dags


def test_every_dag_serializes_and_round_trips(dags: dict) -> None:
    for dag_id, dag in dags.items():
        data = DagSerialization.to_dict(dag)  # validates against Airflow's JSON schema
        json.dumps(data)  # what the metadata DB stores
        lazy = LazyDeserializedDAG(data=data)
        assert lazy.hash
        back = DagSerialization.from_dict(data)
        assert back.dag_id == dag_id
        assert sorted(back.task_dict) == sorted(dag.task_dict)
        assert back.timezone.name == "UTC" and isinstance(back.timezone, pendulum.tz.Timezone)
        assert back.max_active_runs == 1 and back.catchup is False
        assert type(back.timetable).__name__ == type(dag.timetable).__name__
        assert back.timetable.summary == _summary(dag.timetable)
        assert set(back.tags) == set(dag.tags)
        for task_id, task in dag.task_dict.items():
            assert back.task_dict[task_id].downstream_task_ids == task.downstream_task_ids
            assert [_asset_id(a) for a in back.task_dict[task_id].outlets] == [_asset_id(a) for a in task.outlets]


def _asset_id(outlet) -> str:
    """An Asset's URI, or an AssetAlias's name (a capture's outlet: its events name their Assets at run time)."""
    return getattr(outlet, "uri", None) or outlet.name


def test_cron_schedules_are_public_timetables_in_utc(dags: dict) -> None:
    from airflow.sdk import CronTriggerTimetable

    dag = dags["pg_replication__public__cdc_0"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    back = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    now = pendulum.now("UTC")
    info = back.timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=_restriction(pendulum.datetime(2024, 1, 1, tz="UTC"))
    )
    # catchup=False: the next run is the next */5 tick from now, in UTC
    assert info is not None and info.run_after.minute % 5 == 0 and info.run_after.second == 0
    assert now.subtract(minutes=5) <= info.run_after <= now.add(minutes=5)


def _summary(timetable) -> str:
    """The summary the scheduler's timetable shows, from the DAG file's (SDK) timetable."""
    expression = getattr(timetable, "expression", None)
    if expression is not None:
        return expression
    return {"NullTimetable": "None", "OnceTimetable": "@once", "ContinuousTimetable": "@continuous"}[
        type(timetable).__name__
    ]


def _restriction(earliest: pendulum.DateTime):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=earliest, latest=None, catchup=False)


def test_deferrable_key_reaches_the_sensor(dags: dict) -> None:
    from airflow.sdk.configuration import conf

    airflow_default = conf.getboolean("operators", "default_deferrable", fallback=False)
    for i in range(len(SCHEDULES)):
        dag = dags[f"pg_replication__public__cdc_{i}"]
        expected = [True, False, airflow_default][i % 3]
        assert dag.task_dict["wait_for_changes"].deferrable is expected


def test_task_shapes_survive_serialization(dags: dict) -> None:
    back = {dag_id: DagSerialization.from_dict(DagSerialization.to_dict(dag)) for dag_id, dag in dags.items()}
    assert sorted(back["pg_replication__public__cdc_0"].task_dict) == [
        "apply_changes",
        "full_refresh",
        "plan",
        "verify",
        "wait_for_changes",
    ]
    assert sorted(back["pg_replication__public__cdc_1"].task_dict) == [
        "apply_changes",
        "full_refresh",
        "plan",
        "wait_for_changes",
    ]
    assert list(back["pg_replication__sales__full_0"].task_dict) == ["full_refresh"]
    assert list(back["pg_replication__public__inc_0"].task_dict) == ["incremental_refresh"]
    assert list(back["pg_replication__public__broken"].task_dict) == ["registry_error"]
    params = back["pg_replication__public__cdc_0"].params
    assert params["full_refresh"] is False


def _dlt_destination_types() -> list[str]:
    """Every destination dlt ships (its factories in ``dlt.destinations``)."""
    import dlt.destinations

    return sorted(set(dlt.destinations.__all__) - {"destination"})  # ``destination``: dlt's custom-sink decorator


@pytest.mark.parametrize("kind", _dlt_destination_types())
def test_dags_of_every_dlt_destination_type_load_and_serialize(kind: str, tmp_path: Path) -> None:
    """Asset URIs are ours (``pg-replication://``) for every type: a provider's scheme (``postgres://``,
    ``s3://``, ...) would be validated by its rules and take every DAG of the file down."""
    path = tmp_path / "tables.yaml"
    extra = ", table_format: delta" if kind == "filesystem" else ""  # filesystem: Delta tables or Parquet files
    path.write_text(
        textwrap.dedent(f"""
            source: {{conn_id: pg_source}}
            destination: {{type: {kind}, conn_id: warehouse, dataset: replica{extra}}}
            tables:
              - {{table: public.customers, schedule: "*/5 * * * *"}}
              - {{table: public.orders, mode: full_refresh, schedule: "@daily"}}
              - {{table: sales.events, mode: incremental, cursor_column: updated_at}}
        """)
    )
    dags = build_dags(path)
    assert sorted(dags) == [
        "pg_replication__capture__default",
        "pg_replication__public__customers",
        "pg_replication__public__orders",
        "pg_replication__sales__events",
    ]
    for dag_id, dag in dags.items():
        assert not any(t.task_id == "registry_error" for t in dag.tasks), (dag_id, [t.task_id for t in dag.tasks])
        data = DagSerialization.to_dict(dag)
        back = DagSerialization.from_dict(json.loads(json.dumps(data)))
        outlets = [_asset_id(a) for t in back.tasks for a in t.outlets]
        assert outlets, dag_id
        for uri in outlets:
            assert uri.startswith("pg-replication://") or uri.startswith("pg_replication."), uri
    customers = dags["pg_replication__public__customers"]
    uris = {a.uri for t in customers.tasks for a in t.outlets}
    assert uris == {f"pg-replication://{kind}/replica/customers"}


def test_a_dag_that_cannot_be_built_takes_no_other_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while building one table's DAG (here: its Asset refused) leaves a stand-in DAG with the reason."""
    from airflow_pg_replication import dag_factory

    real = dag_factory.destination_asset

    def refuse_orders(destination: dict, table: str):
        if table == "orders":
            raise ValueError("URI format postgres:// must contain database, schema, and table names")
        return real(destination, table)

    monkeypatch.setattr(dag_factory, "destination_asset", refuse_orders)
    path = tmp_path / "tables.yaml"
    path.write_text(REGISTRY + "  - {table: public.customers}\n  - {table: public.orders}\n  - {table: public.items}\n")
    dags = build_dags(path)
    assert sorted(dags) == [
        "pg_replication__capture__default",
        "pg_replication__public__customers",
        "pg_replication__public__items",
        "pg_replication__public__orders",
    ]
    broken = dags["pg_replication__public__orders"]
    assert [t.task_id for t in broken.tasks] == ["registry_error"]
    assert "must contain database, schema, and table names" in broken.doc_md
    assert "tables[1]" in broken.doc_md and str(path) in broken.doc_md
    for dag in dags.values():
        DagSerialization.from_dict(DagSerialization.to_dict(dag))
