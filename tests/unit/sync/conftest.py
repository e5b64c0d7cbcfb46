"""The sync/ protocols driven on their own: a SourceDatabase from plain libpq parameters, a DuckDB file destination.

No Airflow hook, no Airflow connection: ``AIRFLOW_CONN_PG_SOURCE`` is unset while these tests run,
so a protocol that reached for Airflow's connection would fail here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from airflow_pg_replication.source.database import SourceDatabase
from airflow_pg_replication.sync.replicated_table import ReplicatedTable
from tests.conftest import PgDatabase
from tests.integration.conftest import DuckDest, duck, source_rows  # noqa: F401  (duck: the fixture)

ITEM_COLS = ["id", "name", "amount", "updated_at"]


@dataclass
class Source:
    """A test database and the :class:`SourceDatabase` that reaches it with libpq parameters only."""

    db: PgDatabase
    database: SourceDatabase
    params: dict[str, Any]

    def execute(self, sql: Any, params: Any = None) -> None:
        self.db.execute(sql, params)

    def query(self, sql: Any, params: Any = None) -> list[tuple]:
        return self.db.query(sql, params)

    def rows(self, table: str = "public.items", cols: list[str] = ITEM_COLS, key: tuple = ("id",)) -> list[tuple]:
        return source_rows(self.db, table, cols, key)

    def slot(self, name: str) -> tuple | None:
        """(wal_status, confirmed_flush_lsn as text) of a slot, or None when it does not exist."""
        got = self.query(
            "SELECT wal_status, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (name,)
        )
        return got[0] if got else None


def libpq_params(dsn: str) -> dict[str, Any]:
    """The libpq keyword parameters of a DSN (host, port, user, dbname)."""
    return conninfo_to_dict(dsn)


@pytest.fixture
def source(pg_db_factory: Callable[[], PgDatabase], monkeypatch: pytest.MonkeyPatch) -> Source:
    """A fresh database reached as ``SourceDatabase(params)``; no Airflow connection is defined meanwhile."""
    monkeypatch.delenv("AIRFLOW_CONN_PG_SOURCE", raising=False)
    db = pg_db_factory()
    params = libpq_params(db.dsn)
    return Source(db, SourceDatabase(params, description=f"test database {db.name}"), params)


def make_items(source: Source, rows: int = 50) -> None:
    source.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, amount numeric(10,2), updated_at timestamptz NOT NULL)"
    )
    source.execute(
        "INSERT INTO items SELECT g, 'item ' || g, g * 1.25, "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, %s) g",
        (rows,),
    )


def items_table(warehouse: DuckDest, *, name: str = "items", soft_deletes: bool = False, **kw: Any) -> ReplicatedTable:
    """The ReplicatedTable of ``public.<name>`` into ``warehouse``; its slot and publication unique to the
    test (slots are cluster-wide)."""
    tag = uuid.uuid4().hex[:8]
    return ReplicatedTable(
        schema="public",
        name=name,
        slot=f"sync_test_{name}_{tag}",
        publication=f"sync_test_{name}_{tag}",
        destination_table=name,
        pipeline_name=f"sync_test_{name}",
        destination=warehouse.spec,
        soft_deletes=soft_deletes,
        **kw,
    )
