"""What every table operator shares: the table's names, its source hook and its destination."""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.registry import names as naming
from airflow_pg_replication.registry.models import DEFAULT_GROUP, default_change_log
from airflow_pg_replication.sync.replicated_table import ReplicatedTable

if TYPE_CHECKING:
    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.hooks.replication import PgReplicationHook


def replicated_table(
    table: str,
    *,
    slot: str | None = None,
    destination_table: str | None = None,
    destination: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    primary_key: Sequence[str] | None = None,
    deletes: str = "hard",
    slot_group: str | None = None,
    group_slot: str | None = None,
    change_log: str | None = None,
    change_log_conn_id: str | None = None,
    in_a_group: bool = False,
) -> ReplicatedTable:
    """The :class:`ReplicatedTable` of an operator's keyword arguments, its names derived by the registry's rules.

    ``in_a_group`` (CDC): without a dedicated ``slot`` the table is in ``slot_group`` (default
    ``default``), whose slot is ``group_slot`` (default ``pgrepl_<group>``) and whose change log is
    ``change_log`` (default ``$AIRFLOW_HOME/pg_replication/changes``). ``destination`` gets its
    ``conn_id`` resolved into credentials here (see :func:`resolved_destination`).
    """
    group = (slot_group or DEFAULT_GROUP) if in_a_group and slot is None else None
    if group is not None:
        slot = group_slot or naming.group_slot_name(group)
    names = naming.table_names(table, slot=slot, destination_table=destination_table)
    return ReplicatedTable(
        schema=names.schema,
        name=names.table,
        slot=names.slot,
        publication=names.publication,
        destination_table=names.destination_table,
        pipeline_name=names.dag_id,
        destination=resolved_destination(destination) if destination is not None else {},
        columns=tuple(columns) if columns else None,
        primary_key=tuple(primary_key) if primary_key else None,
        soft_deletes=deletes == "soft",
        group=group,
        change_log=_open_change_log(change_log, group, change_log_conn_id) if group is not None else None,
    )


def _open_change_log(change_log: str | None, group: str, conn_id: str | None) -> Any:
    from airflow_pg_replication.operators.change_log_storage import open_change_log

    return open_change_log(change_log or default_change_log(), group, conn_id)


#: Registry keys an operator accepts and ignores when they are not its own, so that a table's whole
#: registry entry can be passed to any operator (``PgFullRefreshOperator(**table_knobs)``).
REGISTRY_KNOBS = frozenset(
    {
        "mode",
        "schedule",
        "max_batch_changes",
        "min_lag_bytes",
        "wait_timeout",
        "max_lag_bytes",
        "on_slot_lost",
        "verify",
        "poke_interval",
        "deferrable",
        "cursor_column",
        "cursor_lookback",
    }
)


def resolved_destination(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``destination`` mapping with a ``conn_id`` turned into the credentials of that Airflow connection.

    The layers below the Airflow shells never look up a connection themselves.
    """
    spec = dict(spec or {})
    conn_id = spec.pop("conn_id", None)
    if conn_id:
        from airflow.sdk import BaseHook

        if spec.get("type") == "filesystem":  # credentials is the lake's URL; the connection holds its keys
            from airflow_pg_replication.destination.filesystem.object_storage import with_connection

            return with_connection(spec, conn_id, BaseHook.get_connection)
        spec["credentials"] = BaseHook.get_connection(conn_id).get_uri()
    return spec


@contextlib.contextmanager
def failing_fast_when_a_person_must_act() -> Iterator[None]:
    """Raise a :class:`NeedsAttentionError` as Airflow's AirflowFailException too: no retries, the fix in the log.

    The error raised is both (see :func:`_failing_without_retries`), so a script calling
    ``execute({})`` still catches the package's own exception types. Other errors keep the
    task's retries (exponential backoff): a dropped connection or a busy lock may pass on its own.
    """
    try:
        yield
    except NeedsAttentionError as exc:
        # A class is hashable; mypy matches the instances' unbound __hash__ against Hashable instead.
        both = _failing_without_retries(type(exc))  # type: ignore[arg-type]
        failure = both.__new__(both)  # the same error (its own __init__ may take other arguments)
        failure.args = exc.args
        failure.__dict__.update(exc.__dict__)
        raise failure from exc


@functools.cache
def _failing_without_retries(kind: type[NeedsAttentionError]) -> type[Exception]:
    """``kind`` that Airflow also reads as AirflowFailException (fail at once, no retries)."""
    from airflow.sdk.exceptions import AirflowFailException

    both = type(kind.__name__, (AirflowFailException, kind), {"__module__": kind.__module__})
    both.__qualname__ = kind.__qualname__
    return both


class BacksOffAfterFailedRuns:
    """For the first task of a table's DAG: defer while the DAG backs off after failed runs.

    See :mod:`.failed_run_backoff`. :func:`table_task` calls :meth:`wait_out_failed_runs` before
    the work; when the task comes back from the wait, ``execute`` runs again and goes on.
    """

    back_off_after_failed_runs: bool = False

    def wait_out_failed_runs(self, context: Any) -> None:
        if not self.back_off_after_failed_runs:
            return
        from airflow_pg_replication.operators.failed_run_backoff import run_not_before

        moment, failed = run_not_before(context, self.task_id)  # type: ignore[attr-defined]
        now = datetime.datetime.now(datetime.timezone.utc)
        if moment is None or moment <= now + datetime.timedelta(seconds=1):
            return
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.log.warning(  # type: ignore[attr-defined]
            "the last %d run(s) of this DAG failed: backing off until %s (%.0f s) before trying again; "
            "trigger the DAG by hand to try at once",
            failed,
            moment.isoformat(),
            (moment - now).total_seconds(),
        )
        self.defer(trigger=DateTimeTrigger(moment=moment), method_name="resume_after_backoff")  # type: ignore[attr-defined]

    def resume_after_backoff(self, context: Any, event: Any = None) -> Any:
        """Back from the backoff wait: run the task."""
        return self.execute(context)  # type: ignore[attr-defined]


def table_task(execute: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap an operator's ``execute``: back off after failed runs (first task of a DAG), then do the
    work, failing at once (no retries) when a person must act."""

    @functools.wraps(execute)
    def wrapper(self: Any, context: Any) -> Any:
        self.wait_out_failed_runs(context)
        with failing_fast_when_a_person_must_act():
            return execute(self, context)

    return wrapper


class PgTableOperator(BacksOffAfterFailedRuns, BaseOperator):
    """Base of the table operators: takes the registry's per-table knobs as keyword arguments."""

    template_fields: Sequence[str] = ("table", "source_conn_id", "destination", "destination_table", "slot")
    ui_color = "#dbe9f6"
    #: True for the operators of CDC tables: without a dedicated ``slot`` they are in a slot group.
    uses_a_slot = True

    def __init__(
        self,
        *,
        table: str,
        source_conn_id: str = "pg_source",
        destination: Mapping[str, Any] | None = None,
        primary_key: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        destination_table: str | None = None,
        slot: str | None = None,
        deletes: str = "hard",
        slot_group: str | None = None,
        group_slot: str | None = None,
        change_log: str | None = None,
        change_log_conn_id: str | None = None,
        back_off_after_failed_runs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{k: v for k, v in kwargs.items() if k not in REGISTRY_KNOBS})
        self.back_off_after_failed_runs = back_off_after_failed_runs
        self.table = table
        self.source_conn_id = source_conn_id
        self.destination = dict(destination or {})
        self.primary_key = list(primary_key) if primary_key else None
        self.columns = list(columns) if columns else None
        self.destination_table = destination_table
        self.slot = slot
        if deletes not in ("hard", "soft"):
            raise ValueError(f"deletes must be 'hard' or 'soft', not {deletes!r}")
        self.deletes = deletes
        if slot is not None and slot_group is not None:
            raise ValueError(f"{table}: give either slot (a dedicated slot) or slot_group, not both")
        self.slot_group = slot_group
        self.group_slot = group_slot
        self.change_log = change_log
        self.change_log_conn_id = change_log_conn_id

    @property
    def target(self) -> ReplicatedTable:
        """The table this operator replicates, its names derived and its destination's connection resolved."""
        return replicated_table(
            self.table,
            slot=self.slot,
            destination_table=self.destination_table,
            destination=self.destination,
            columns=self.columns,
            primary_key=self.primary_key,
            deletes=self.deletes,
            slot_group=self.slot_group,
            group_slot=self.group_slot,
            change_log=self.change_log,
            change_log_conn_id=self.change_log_conn_id,
            in_a_group=self.uses_a_slot,
        )

    def source_hook(self) -> PgReplicationHook:
        from airflow_pg_replication.hooks.replication import PgReplicationHook

        return PgReplicationHook(postgres_conn_id=self.source_conn_id)

    def table_destination(self) -> TableDestination:
        return self.target.open_destination()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input: the source table; output: the destination table (OpenLineage, imported lazily)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:  # OpenLineage provider not installed
            return None
        hook = self.source_hook()
        params = hook.connect_params()
        t = self.target
        spec = self.destination or {}
        return OperatorLineage(
            inputs=[
                Dataset(
                    namespace=f"postgres://{params['host']}:{params['port']}",
                    name=f"{params['dbname']}.{t.schema}.{t.name}",
                )
            ],
            outputs=[
                Dataset(
                    namespace=f"{spec.get('type', 'duckdb')}://{spec.get('credentials') or 'default'}",
                    name=f"{spec.get('dataset', 'replica')}.{t.destination_table}",
                )
            ],
        )
