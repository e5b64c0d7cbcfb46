"""Registry -> one Airflow DAG per table (Contract 3); nothing else."""

from __future__ import annotations

import datetime
import functools
import logging
import os
from typing import Any, cast

import pendulum
from airflow.sdk import DAG, Asset, CronTriggerTimetable, Param

from airflow_pg_replication.registry.models import Registry, TableConfig, TableError, load_registry_tolerant

log = logging.getLogger(__name__)

#: Airflow serializes a DAG's timezone only as pendulum's (``datetime.timezone.utc`` fails the dag-processor).
START_DATE = pendulum.datetime(2024, 1, 1, tz="UTC")
#: Every task but the sensor: transient errors retry with exponential backoff (30 s, 60 s, ...).
RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay": datetime.timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
}


def destination_asset(destination: dict[str, Any], destination_table: str) -> Asset:
    """The Asset a loading task updates, for data-aware scheduling: ``pg-replication://<type>/<dataset>/<table>``.

    The scheme is ours for every destination type: a provider's own scheme (``postgres://``,
    ``s3://``, ...) would be validated by that provider's rules, which our names do not follow.
    """
    kind = destination.get("type", "duckdb")
    dataset = destination.get("dataset", "replica")
    return Asset(
        name=f"pg_replication.{kind}.{dataset}.{destination_table}",
        uri=f"pg-replication://{kind}/{dataset}/{destination_table}",
    )


def build_dags(path_or_registry: str | os.PathLike | Registry, *, only_dag_id: str | None = None) -> dict[str, DAG]:
    """Build one DAG per registry table, and one capture DAG per slot group that has a table: ``{dag_id: DAG}``.

    A broken table entry (file path given) becomes a DAG whose single task fails with the
    registry error, so the other tables' DAGs still load and the error shows in the UI.
    During task execution only the DAG being run is built (Airflow's parsing context).
    """
    errors: list[TableError] = []
    file = "<registry>" if isinstance(path_or_registry, Registry) else os.fspath(path_or_registry)
    if isinstance(path_or_registry, Registry):
        registry = path_or_registry
    else:
        registry, errors = load_registry_tolerant(path_or_registry)
    wanted = only_dag_id or _parsing_dag_id()
    dags: dict[str, DAG] = {}
    for index, cfg in enumerate(registry.tables):
        if wanted and cfg.dag_id != wanted:
            continue
        try:
            dags[cfg.dag_id] = table_dag(registry, cfg)
        except Exception as exc:  # one table's DAG that cannot be built (say an Asset) takes no other down
            errors.append(_unbuildable(file, index, cfg.qualified_name, cfg.dag_id, exc))
    for group, tables in registry.groups_in_use().values():
        if not wanted or group.dag_id == wanted:
            try:
                dags[group.dag_id] = capture_dag(registry, group.name, tables)
            except Exception as exc:
                errors.append(_unbuildable(file, -1, f"slot group {group.name}", group.dag_id, exc))
    for err in errors:
        if err.dag_id and (not wanted or err.dag_id == wanted) and err.dag_id not in dags:
            log.error("registry entry tables[%d] is broken: %s", err.index, err)
            dags[err.dag_id] = _broken_table_dag(err, err.dag_id)
        elif not err.dag_id:
            log.error("registry entry tables[%d] is broken and has no usable table name: %s", err.index, err)
    return dags


def registry_path(dag_folder: str | os.PathLike) -> str:
    """The registry a DAG file reads: ``$PG_REPLICATION_REGISTRY``, else ``tables.yaml`` beside the file."""
    return os.environ.get("PG_REPLICATION_REGISTRY") or os.path.join(dag_folder, "tables.yaml")


def raise_registry_errors(path: str | os.PathLike) -> None:
    """Raise one error naming every broken table entry, so Airflow lists it among its import errors.

    Meant for a DAG file of its own (``dags/pg_replication_registry_errors.py``): the DAG file
    that builds the tables stays importable, so the other tables' DAGs keep loading.
    """
    from airflow_pg_replication.registry.models import RegistryError

    _, errors = load_registry_tolerant(path)
    if errors:
        raise RegistryError([issue for err in errors for issue in err.errors])


def _parsing_dag_id() -> str | None:
    try:
        from airflow.sdk import get_parsing_context
    except ImportError:  # pragma: no cover - older Airflow
        return None
    return get_parsing_context().dag_id


def table_dag(registry: Registry, cfg: TableConfig) -> DAG:
    """The DAG of one table, shaped by its mode."""
    from airflow_pg_replication.operators.full_refresh import PgFullRefreshOperator

    destination = registry.destination.as_dict()
    common: dict[str, Any] = {
        "table": cfg.qualified_name,
        "source_conn_id": registry.source.conn_id,
        "destination": destination,
        "primary_key": cfg.primary_key,
        "columns": cfg.columns,
        "destination_table": cfg.destination_table_name,
        "slot": cfg.slot,
        "deletes": cfg.deletes,
        **_group_kwargs(registry, cfg),
        **RETRIES,
    }
    asset = destination_asset(destination, cfg.destination_table_name)
    dag = DAG(
        dag_id=cfg.dag_id,
        schedule=_schedule(cfg.schedule),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["pg_replication", cfg.schema_name, cfg.mode],
        params={"full_refresh": Param(False, type="boolean", description="Take a new snapshot of the table")},
        doc_md=f"Replicates `{cfg.qualified_name}` ({cfg.mode}) into `{destination['dataset']}."
        f"{cfg.destination_table_name}`. Built from the pg_replication table registry.",
    )
    with dag:
        if cfg.mode == "full_refresh":
            PgFullRefreshOperator(
                task_id="full_refresh",
                mode="full_refresh",
                outlets=[asset],
                back_off_after_failed_runs=True,
                snapshot_parallelism=cfg.snapshot_parallelism,
                **common,
            )
        elif cfg.mode == "incremental":
            from airflow_pg_replication.operators.incremental import PgIncrementalOperator

            PgIncrementalOperator(
                task_id="incremental_refresh",
                cursor_column=cast(str, cfg.cursor_column),  # TableConfig requires one in mode incremental
                cursor_lookback=cfg.cursor_lookback,
                outlets=[asset],
                back_off_after_failed_runs=True,
                **common,
            )
        else:
            _cdc_tasks(registry, cfg, common, asset)
    return dag


@functools.cache
def _schedule(schedule: str | None) -> str | CronTriggerTimetable | None:
    """The DAG's ``schedule``: a cron expression or preset as Airflow's public ``CronTriggerTimetable``
    (what Airflow 3 makes of a cron string by default) in UTC; ``None``, ``@once`` and ``@continuous``
    as they are. One timetable per distinct schedule, shared by the DAGs that use it.
    """
    if schedule in (None, "@once", "@continuous"):
        return schedule
    return CronTriggerTimetable(schedule, timezone=pendulum.UTC)  # START_DATE's


def _cdc_tasks(registry: Registry, cfg: TableConfig, common: dict[str, Any], asset: Asset) -> None:
    from airflow_pg_replication.operators.cdc_apply import PgCdcApplyOperator
    from airflow_pg_replication.operators.full_refresh import PgFullRefreshOperator
    from airflow_pg_replication.operators.plan import PgPlanOperator
    from airflow_pg_replication.sensors.slot_lag import PgSlotLagSensor

    plan = PgPlanOperator(
        task_id="plan",
        table=cfg.qualified_name,
        source_conn_id=registry.source.conn_id,
        destination=common["destination"],
        slot=cfg.slot,
        destination_table=cfg.destination_table_name,
        on_slot_lost=cfg.on_slot_lost,
        **_group_kwargs(registry, cfg),
        **RETRIES,
    )
    full = PgFullRefreshOperator(
        task_id="full_refresh", mode="cdc", outlets=[asset], snapshot_parallelism=cfg.snapshot_parallelism, **common
    )
    # deferrable: waits in the triggerer, holding no worker slot; else reschedule mode (a task
    # process per poke). Unset in the registry: Airflow's [operators] default_deferrable.
    deferrable: dict[str, Any] = {} if cfg.deferrable is None else {"deferrable": cfg.deferrable}
    wait = PgSlotLagSensor(
        task_id="wait_for_changes",
        table=cfg.qualified_name,
        source_conn_id=registry.source.conn_id,
        slot=cfg.slot,
        min_lag_bytes=cfg.min_lag_bytes,
        max_lag_bytes=cfg.max_lag_bytes,
        poke_interval=cfg.poke_interval,
        timeout=cfg.wait_timeout,
        soft_fail=True,
        mode="reschedule",
        # One retry, a fresh poke loop: Airflow 3.3's scheduler can fail a rescheduled sensor on a late
        # executor event (apache/airflow#71172); a timeout still skips (soft_fail), a lost slot still fails.
        retries=1,
        retry_delay=datetime.timedelta(seconds=cfg.poke_interval),
        **_group_kwargs(registry, cfg),
        **deferrable,
    )
    apply = PgCdcApplyOperator(
        task_id="apply_changes",
        max_batch_changes=cfg.max_batch_changes,
        max_lag_bytes=cfg.max_lag_bytes,
        outlets=[asset],
        **common,
    )
    plan >> [full, wait]
    wait >> apply
    if cfg.verify:
        from airflow_pg_replication.operators.reconcile import PgReconcileOperator

        verify = PgReconcileOperator(task_id="verify", trigger_rule="none_failed_min_one_success", **common)
        [full, apply] >> verify


def _unbuildable(file: str, index: int, what: str, dag_id: str, exc: Exception) -> TableError:
    """A registry entry that validated but whose DAG could not be built, as a broken entry with the reason."""
    from airflow_pg_replication.registry.diagnostics import RegistryIssue

    where = f"tables[{index}]" if index >= 0 else "slot_groups"
    message = (
        f"the DAG of {what} could not be built: {type(exc).__name__}: {exc}. This is a bug of "
        "airflow-pg-replication unless the message names a registry value to change; the other DAGs load."
    )
    return TableError(index, what, dag_id, [RegistryIssue(file, None, where, message)])


def _broken_table_dag(err: TableError, dag_id: str) -> DAG:
    """A stand-in DAG for a broken registry entry: its one task fails with the registry error."""
    from airflow.providers.standard.operators.python import PythonOperator

    message = str(err)

    def fail() -> None:
        from airflow_pg_replication.registry.models import RegistryError

        raise RegistryError(err.errors)

    dag = DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["pg_replication", "registry_error"],
        doc_md=f"**This table's registry entry is broken:**\n\n```\n{message}\n```",
    )
    with dag:
        PythonOperator(task_id="registry_error", python_callable=fail)
    return dag


def _group_kwargs(registry: Registry, cfg: TableConfig) -> dict[str, Any]:
    """A CDC table's slot group, as operator keyword arguments ({} for a dedicated slot or no CDC)."""
    if cfg.group is None:
        return {}
    group = registry.slot_group(cfg.group)
    return {
        "slot_group": group.name,
        "group_slot": group.slot,
        "change_log": group.change_log,
        "change_log_conn_id": group.change_log_conn_id,
    }


def capture_dag(registry: Registry, group_name: str, tables: list[TableConfig]) -> DAG:
    """The capture DAG of a slot group: ``pg_replication__capture__<group>``, its one task ``capture_changes``."""
    from airflow_pg_replication.operators.capture import PgCaptureOperator

    group = registry.slot_group(group_name)
    names = [cfg.qualified_name for cfg in tables]
    dag = DAG(
        dag_id=group.dag_id,
        schedule=_schedule(group.schedule),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["pg_replication", "capture"],
        doc_md=f"Captures the changes of slot group `{group.name}` (slot `{group.slot}`: {len(names)} table(s)) "
        f"into its change log `{group.change_log}`, so a paused or failing table never pins WAL. Built from "
        "the pg_replication table registry.",
    )
    with dag:
        PgCaptureOperator(
            task_id="capture_changes",
            slot_group=group.name,
            tables=names,
            source_conn_id=registry.source.conn_id,
            slot=group.slot,
            change_log=group.change_log,
            change_log_conn_id=group.change_log_conn_id,
            max_batch_changes=max(cfg.max_batch_changes for cfg in tables),
            max_log_bytes=max(cfg.max_lag_bytes for cfg in tables),
            on_slot_lost="resync" if any(cfg.on_slot_lost == "resync" for cfg in tables) else "fail",
            **RETRIES,
        )
    return dag
