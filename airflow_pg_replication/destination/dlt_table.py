"""Every dlt destination: a snapshot is a dlt replace, a batch is its steps in order, the state a row of ours.

A dlt load commits data first and our state row after it; every step is idempotent, so a crash
between the two re-applies the batch to the same result. dlt keeps a column's first type, so a
source column that was widened (int -> bigint, a larger numeric) is altered here first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.destination import sql as destination_sql
from airflow_pg_replication.destination.base import TableDestination
from airflow_pg_replication.destination.columns import dlt_hints
from airflow_pg_replication.destination.sql import compose
from airflow_pg_replication.destination.state_table import ReplicationState, read_state, write_state
from airflow_pg_replication.phase_timing import phase
from airflow_pg_replication.replica_columns import DELETED_AT_COLUMN, LSN_COLUMN

if TYPE_CHECKING:
    import dlt
    import pyarrow as pa

log = logging.getLogger(__name__)


def configure_dlt() -> None:
    """dlt settings every load of ours needs (names kept as written, one-transaction replaces, no telemetry)."""
    # We hand dlt its credentials; probing Airflow Variables for dlt secrets costs seconds per run.
    os.environ.setdefault("PROVIDERS__ENABLE_AIRFLOW_SECRETS", "false")
    import dlt

    dlt.config["schema.naming"] = "direct"  # keep source names as written (case, $)
    dlt.config["destination.replace_strategy"] = "insert-from-staging"  # replace swaps in one transaction
    dlt.config["runtime.dlthub_telemetry"] = False


class DltTableDestination(TableDestination):
    """One table's copy in any dlt destination, through its dlt pipeline (a fresh working dir per unit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline: dlt.Pipeline | None = None
        self._sql: Any = None

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._pipeline = self._sql = None

    def dlt_destination(self) -> Any:
        """The dlt destination the pipeline loads into."""
        from dlt.common.destination import Destination

        return Destination.from_reference(self.spec["type"], credentials=self.spec.get("credentials"))

    @property
    def pipeline(self) -> dlt.Pipeline:
        """The table's dlt pipeline, created on first use."""
        if self._pipeline is None:
            import dlt

            configure_dlt()
            workdir = tempfile.mkdtemp(prefix="pg_replication_dlt_")
            self._stack.callback(shutil.rmtree, workdir, True)
            self._pipeline = dlt.pipeline(
                pipeline_name=self.pipeline_name,
                pipelines_dir=workdir,
                destination=self.dlt_destination(),
                dataset_name=self.spec["dataset"],
            )
        return self._pipeline

    @contextlib.contextmanager
    def sql_client(self) -> Iterator[Any]:
        """dlt's SQL client of the destination, opened once per unit of work (resolving it costs tens of ms)."""
        if self._sql is None:
            client = self.pipeline.sql_client()
            client.open_connection()
            self._stack.callback(client.close_connection)
            self._sql = client
        yield self._sql

    def arrow_client(self) -> Any:
        return self.pipeline.sql_client()

    def run(self, resource: Any) -> None:
        """Run the pipeline; an error raised by our own data generator surfaces as itself, not wrapped by dlt."""
        from dlt.common.exceptions import DltException
        from dlt.pipeline.exceptions import PipelineStepFailed

        try:
            with phase("dlt.run"):  # creating or evolving a table, and every load of another destination
                self.pipeline.run(resource)
        except PipelineStepFailed as exc:
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            if root is not exc and not isinstance(root, DltException):
                raise root from exc
            raise

    # -- state ---------------------------------------------------------------------------------

    def read_state(self) -> ReplicationState | None:
        return read_state(self.sql_client, self.table_name)

    def write_state(self, state: ReplicationState) -> None:
        write_state(self.sql_client, state, run=self.run)

    # -- loads ---------------------------------------------------------------------------------

    def prepare_replace(
        self, state: ReplicationState, *, schema: pa.Schema, columns: list[dict], primary_key: Sequence[str]
    ) -> None:
        self.write_state(state)

    def replace(
        self,
        batches: Iterable[pa.RecordBatch],
        columns: list[dict],
        primary_key: Sequence[str],
        *,
        schema: pa.Schema,
        state: ReplicationState | None = None,
    ) -> None:
        """dlt stages the rows and swaps the table; the state is written after it."""
        import dlt

        self.run(
            dlt.resource(  # type: ignore[call-overload]  # see merge_resource
                batches,
                name=self.destination_table,
                columns=dlt_hints(columns),
                primary_key=list(primary_key) or None,
                write_disposition="replace",
            )
        )
        if state is not None:
            self.write_state(state)

    def apply_batch(
        self,
        *,
        upserts: pa.Table | None,
        delete_keys: pa.Table | None,
        truncate: tuple[datetime, int, bool] | None,
        columns: list[dict],
        key_columns: Sequence[str],
        state: ReplicationState | None,
    ) -> None:
        """The steps in order: truncate, deletes, dlt for the upserts (which also adds new columns and
        widens changed ones), the state last."""
        if truncate is not None:
            at, lsn, soft = truncate
            self.truncate(soft_at=at if soft else None, lsn=lsn)
        if delete_keys is not None and delete_keys.num_rows:
            self.delete_keys(key_columns, list(zip(*[c.to_pylist() for c in delete_keys.columns])))
        if upserts is not None and upserts.num_rows:
            self.merge([upserts], columns, key_columns)
        if state is not None:
            self.write_state(state)

    def merge(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> None:
        """Upsert rows by key; columns whose source type was widened are widened in the destination first."""
        self.widen_columns(columns)
        self.run(self.merge_resource(tables, columns, primary_key))

    def merge_resource(self, tables: Iterable[pa.Table], columns: list[dict], primary_key: Sequence[str]) -> Any:
        """A dlt resource that upserts ``tables`` into the destination table by key (delete-insert)."""
        import dlt

        # dlt's overloads ask for an Iterator or list, TypedDict column hints and a key that is not None;
        # at run time it takes any iterable, plain dicts and None (its default).
        return dlt.resource(  # type: ignore[call-overload]
            tables,
            name=self.destination_table,
            columns=dlt_hints(columns),
            primary_key=list(primary_key) or None,
            write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        )

    def widen_columns(self, columns: list[dict]) -> list[str]:
        """ALTER destination columns whose source type grew (int -> bigint, numeric precision, ...).

        dlt keeps a column's first type; without this, a widened source column would fail to load.
        Returns the widened column names.
        """
        self.pipeline.sync_destination()
        if not self.pipeline.default_schema_name:  # nothing loaded yet: nothing to widen
            return []
        columns = dlt_hints(columns)
        schema = self.pipeline.default_schema
        table = schema.tables.get(self.destination_table)
        if not table:
            return []
        changed = [
            col
            for col in columns
            if (old := table["columns"].get(col["name"]))
            and any(
                old.get(k) != col.get(k)
                for k in ("data_type", "precision", "scale", "timezone")
                if col.get(k) is not None or k in ("precision", "scale")
            )
        ]
        if not changed:
            return []
        with self.pipeline.destination_client() as job_client:
            prepared = schema.tables[self.destination_table]
            mapper = job_client.capabilities.get_type_mapper()
            with self.pipeline.sql_client() as client:  # dlt's: it knows the staging dataset
                target = client.make_qualified_table_name(self.destination_table)
                for col in changed:
                    old = table["columns"][col["name"]]
                    merged = {**{k: v for k, v in old.items() if k not in ("precision", "scale")}, **col}
                    dest_type = mapper.to_destination_type(merged, prepared)
                    log.info(
                        "%s: column %s changed type in the source: %s -> %s",
                        self.describe(),
                        col["name"],
                        _type_text(old),
                        dest_type,
                    )
                    client.execute_sql(
                        compose(
                            "ALTER TABLE",
                            target,
                            "ALTER COLUMN",
                            client.escape_column_name(col["name"]),
                            "TYPE",
                            dest_type,
                        )
                    )
                    table["columns"][col["name"]] = merged
                with client.with_staging_dataset():  # dlt re-creates its staging table with the new types
                    client.execute_sql(
                        compose("DROP TABLE IF EXISTS", client.make_qualified_table_name(self.destination_table))
                    )
        return [c["name"] for c in changed]

    def has_rows(self) -> bool:
        with self.sql_client() as client:
            return destination_sql.has_rows(client, self.destination_table)

    def delete_keys(self, key_columns: Sequence[str], keys: Sequence[tuple]) -> None:
        """Hard-delete the rows with these keys (typed values), in chunks."""
        with self.sql_client() as client:
            destination_sql.delete_keys(client, self.destination_table, key_columns, keys)

    def truncate(self, *, soft_at: datetime | None = None, lsn: int | None = None) -> None:
        """Empty the table; with ``soft_at``, mark every live row deleted at that time instead."""
        with self.sql_client() as client:
            destination_sql.truncate(
                client,
                self.destination_table,
                soft_at=soft_at,
                lsn=lsn,
                deleted_column=DELETED_AT_COLUMN,
                lsn_column=LSN_COLUMN,
            )

    def fetch_rows(
        self, key_columns: Sequence[str], keys: Sequence[tuple], columns: Sequence[str]
    ) -> dict[tuple, dict]:
        with self.sql_client() as client:
            return destination_sql.fetch_rows(client, self.destination_table, key_columns, keys, columns)


def _type_text(col: dict) -> str:
    extra = ",".join(str(col[k]) for k in ("precision", "scale") if col.get(k) is not None)
    return f"{col.get('data_type')}({extra})" if extra else str(col.get("data_type"))
