"""What every table operator shares: the table's names, its source hook and its destination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from airflow.sdk import BaseOperator

from airflow_pg_replication import naming


@dataclass(frozen=True)
class TableTarget:
    """A source table and where its copy, slot and publication live (names per the registry contract)."""

    schema: str
    name: str
    slot: str
    publication: str
    destination_table: str

    @classmethod
    def build(cls, table: str, *, slot: str | None = None, destination_table: str | None = None) -> TableTarget:
        schema, name = naming.parse_table_name(table)
        return cls(
            schema=schema,
            name=name,
            slot=slot or naming.slot_name(schema, name),
            publication=slot or naming.publication_name(schema, name),
            destination_table=destination_table or naming.default_destination_table(schema, name),
        )

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def pipeline_name(self) -> str:
        return naming.dag_id(self.schema, self.name)


#: Registry keys an operator accepts and ignores when they are not its own, so that a table's whole
#: registry entry can be passed to any operator (``PgFullRefreshOperator(**table_knobs)``).
REGISTRY_KNOBS = frozenset({
    "mode", "schedule", "max_batch_changes", "min_lag_bytes", "wait_timeout", "max_lag_bytes", "on_slot_lost",
    "verify", "poke_interval", "deferrable", "cursor_column", "cursor_lookback",
})


class PgTableOperator(BaseOperator):
    """Base of the table operators: takes the registry's per-table knobs as keyword arguments."""

    template_fields: Sequence[str] = ("table", "source_conn_id", "destination", "destination_table", "slot")
    ui_color = "#dbe9f6"

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**{k: v for k, v in kwargs.items() if k not in REGISTRY_KNOBS})
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

    @property
    def target(self) -> TableTarget:
        return TableTarget.build(self.table, slot=self.slot, destination_table=self.destination_table)

    def source_hook(self):
        from airflow_pg_replication.hooks.replication import PgReplicationHook

        return PgReplicationHook(postgres_conn_id=self.source_conn_id)

    def table_destination(self):
        from airflow_pg_replication.loading import TableDestination

        t = self.target
        return TableDestination(
            self.destination, table_name=t.qualified_name, destination_table=t.destination_table,
            pipeline_name=t.pipeline_name,
        )

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
            inputs=[Dataset(namespace=f"postgres://{params['host']}:{params['port']}",
                            name=f"{params['dbname']}.{t.schema}.{t.name}")],
            outputs=[Dataset(namespace=f"{spec.get('type', 'duckdb')}://{spec.get('credentials') or 'default'}",
                             name=f"{spec.get('dataset', 'replica')}.{t.destination_table}")],
        )
