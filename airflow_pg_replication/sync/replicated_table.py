"""A source table replicated into a destination: its names, what to copy, and where its copy, slot and publication
live.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.changelog.store import ChangeLog
    from airflow_pg_replication.destination.base import TableDestination
    from airflow_pg_replication.source.catalog import TableInfo
    from airflow_pg_replication.source.database import SourceDatabase


@dataclass(frozen=True)
class ReplicatedTable:
    """One registry table, every name already derived (the registry's rules live in ``registry/names.py``).

    ``destination`` is the registry's ``destination`` mapping with any Airflow connection already
    resolved into credentials; ``columns`` and ``primary_key`` are the registry's (None: all
    columns, the table's own key).
    """

    schema: str
    name: str
    slot: str
    publication: str
    destination_table: str
    pipeline_name: str
    destination: Mapping[str, Any] = field(default_factory=dict, compare=False)
    columns: tuple[str, ...] | None = None
    primary_key: tuple[str, ...] | None = None
    soft_deletes: bool = False
    #: The table's slot group (None: a dedicated slot of its own). Then ``slot`` and ``publication``
    #: are the group's, and its changes come from the group's change log.
    group: str | None = None
    change_log: ChangeLog | None = field(default=None, compare=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def open_destination(self, *, read_only: bool = False) -> TableDestination:
        """The table's destination, not yet entered (use it as a context manager)."""
        from airflow_pg_replication.destination.factory import table_destination

        return table_destination(
            self.destination,
            table_name=self.qualified_name,
            destination_table=self.destination_table,
            pipeline_name=self.pipeline_name,
            read_only=read_only,
        )

    def read_info(self, source: SourceDatabase, conn: psycopg.Connection) -> TableInfo:
        """The table's replicated columns and key, from the source catalog.

        For a destination that stores the source's own types (PostgreSQL), the types Arrow could
        lose values of travel as their text output (:func:`.type_map.text_transport`).
        """
        info = source.table_info(conn, self.schema, self.name, columns=self.columns, primary_key=self.primary_key)
        if not self.keeps_postgres_types:
            return info
        import dataclasses

        from airflow_pg_replication.source.type_map import text_transport

        columns = tuple(dataclasses.replace(c, type=text_transport(c.type)) for c in info.columns)
        return dataclasses.replace(info, columns=columns)

    @property
    def keeps_postgres_types(self) -> bool:
        """Whether the destination stores the source's own types (PostgreSQL)."""
        from airflow_pg_replication.destination.factory import destination_class

        return destination_class(self.destination).keeps_postgres_types
