"""Shared pytest fixtures: a lazily started throwaway PostgreSQL cluster and per-test databases."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration/`` with ``pytest.mark.integration``."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class PgDatabase:
    """A fresh database on the session's throwaway cluster."""

    name: str
    dsn: str
    conn_uri: str
    cluster: ThrowawayCluster

    def connect(self, **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)

    def execute(self, sql: Any, params: Any = None) -> None:
        """Run one statement in autocommit mode."""
        with self.connect() as conn:
            conn.execute(sql, params)

    def query(self, sql: Any, params: Any = None) -> list[tuple]:
        """Run one statement in autocommit mode and return all rows."""
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(autouse=True)
def _airflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets an AIRFLOW_HOME of its own: the default DuckDB file and change log land there, not in the
    checkout (a test that sets its own keeps it)."""
    import os

    if "AIRFLOW_HOME" not in os.environ:
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """One throwaway cluster (wal_level=logical) per session, started on first use."""
    with ThrowawayCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db_factory(pg_cluster: ThrowawayCluster, request: pytest.FixtureRequest) -> Iterator[Callable[[], PgDatabase]]:
    """Create fresh databases on demand; their replication slots and the databases are dropped afterwards."""
    created: list[PgDatabase] = []
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]

    def make() -> PgDatabase:
        name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
        pg_cluster.create_database(name)
        db = PgDatabase(name, pg_cluster.dsn(name), pg_cluster.conn_uri(name), pg_cluster)
        created.append(db)
        return db

    yield make
    for db in reversed(created):
        pg_cluster.drop_replication_slots(db.name)
        pg_cluster.drop_database(db.name)


@pytest.fixture
def pg_db(pg_db_factory: Callable[[], PgDatabase], monkeypatch: pytest.MonkeyPatch) -> PgDatabase:
    """A fresh database for this test; ``AIRFLOW_CONN_PG_SOURCE`` points at it meanwhile."""
    db = pg_db_factory()
    monkeypatch.setenv("AIRFLOW_CONN_PG_SOURCE", db.conn_uri)
    return db
