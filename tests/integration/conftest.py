"""Fixtures for integration tests: a DuckDB destination, a PostgreSQL one (a second throwaway cluster) and
source/destination comparisons."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster


@dataclass
class DuckDest:
    """A DuckDB file destination for one test, with ways to read what landed."""

    path: Path
    dataset: str = "replica"

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "duckdb", "credentials": str(self.path), "dataset": self.dataset}

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        with duckdb.connect(str(self.path), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def rows(self, table: str, columns: Sequence[str], order_by: Sequence[str]) -> list[tuple]:
        cols = ", ".join(f'"{c}"' for c in columns)
        order = ", ".join(f'"{c}"' for c in order_by)
        return self.query(f'SELECT {cols} FROM "{self.dataset}"."{table}" ORDER BY {order}')

    def columns(self, table: str) -> dict[str, str]:
        rows = self.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [self.dataset, table],
        )
        return dict(rows)


@pytest.fixture
def duck(tmp_path: Path) -> DuckDest:
    return DuckDest(tmp_path / "warehouse.duckdb")


def source_rows(pg_db: Any, table: str, columns: Sequence[str], order_by: Sequence[str]) -> list[tuple]:
    """The source table's rows as Python values (psycopg's types), ordered."""
    from psycopg import sql

    q = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.Identifier(*table.split(".")),
        sql.SQL(", ").join(map(sql.Identifier, order_by)),
    )
    with pg_db.connect() as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(q).fetchall()


# -- a PostgreSQL destination: a second throwaway cluster -----------------------------------------------

#: A role that must give its password (scram-sha-256) on the warehouse cluster; every other role is trusted.
PASSWORD_ROLE = "pgrepl_writer"
PASSWORD = "p@ss:w/rd %x"  # characters a URI must quote


@pytest.fixture(scope="session")
def warehouse_cluster() -> Iterator[ThrowawayCluster]:
    """A second throwaway cluster, the destination of the PostgreSQL-destination tests (started on first use,
    stopped at the session's end). ``PASSWORD_ROLE`` logs in with ``PASSWORD`` only."""
    from psycopg import sql

    with ThrowawayCluster() as cluster:
        hba = cluster.datadir / "pg_hba.conf"
        rule = f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text())  # before initdb's trust rules: the first match wins
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(PASSWORD_ROLE), sql.Literal(PASSWORD))
            )
            conn.execute("SELECT pg_reload_conf()")
        yield cluster


@dataclass
class PgWarehouse:
    """A fresh database on the warehouse cluster, the destination of connection ``warehouse``."""

    cluster: ThrowawayCluster
    dbname: str
    monkeypatch: pytest.MonkeyPatch
    dataset: str = "replica"
    conn_id: str = "warehouse"

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "postgres", "conn_id": self.conn_id, "dataset": self.dataset}

    def use_uri(self, uri: str) -> None:
        """Point ``AIRFLOW_CONN_WAREHOUSE`` at ``uri``."""
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{self.conn_id.upper()}", uri)

    def password_uri(self, password: str = PASSWORD) -> str:
        from urllib.parse import quote

        return (
            f"postgresql://{PASSWORD_ROLE}:{quote(password, safe='')}@{self.cluster.host}:{self.cluster.port}/"
            f"{self.dbname}"
        )

    def use_password_role(self) -> None:
        """The database becomes ``PASSWORD_ROLE``'s and the connection logs in as it, with its password."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(*map(sql.Identifier, (self.dbname, PASSWORD_ROLE)))
            )
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(PASSWORD_ROLE)))
        self.use_uri(self.password_uri())

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.cluster.dsn(self.dbname), autocommit=True)
        conn.execute("SET TimeZone = 'UTC'; SET IntervalStyle = iso_8601; SET extra_float_digits = 3")
        return conn

    def query(self, query: Any, params: Any = None) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()

    def columns(self, table: str) -> dict[str, str]:
        """The table's columns and their types as PostgreSQL writes them (``numeric(12,2)``, ``text[]``)."""
        return column_types(self.connect, self.dataset, table)


def column_types(connect: Any, schema: str, table: str) -> dict[str, str]:
    with connect() as conn:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, table),
        ).fetchall()
    return dict(rows)


def text_rows(
    connect: Any, table: str, columns: Sequence[str], order_by: Sequence[str], where: str = ""
) -> list[tuple]:
    """Rows of ``schema.table`` as every value's text output (the type's own, also for ±infinity, NaN, '24:00')."""
    from psycopg import sql

    from airflow_pg_replication.destination.postgres.reading import text_cursor

    q = sql.SQL("SELECT {} FROM {} {} ORDER BY {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.Identifier(*table.split(".")),
        sql.SQL(where),
        sql.SQL(", ").join(map(sql.Identifier, order_by)),
    )
    with connect() as conn:
        conn.execute("SET TimeZone = 'UTC'; SET IntervalStyle = iso_8601; SET extra_float_digits = 3")
        with text_cursor(conn) as cur:
            return cur.execute(q).fetchall()


@pytest.fixture
def pg_warehouse(
    warehouse_cluster: ThrowawayCluster, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[PgWarehouse]:
    """A fresh warehouse database; ``AIRFLOW_CONN_WAREHOUSE`` points at it (as postgres, no password)."""
    import re
    import uuid

    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]
    name = f"w_{stem}_{uuid.uuid4().hex[:8]}"
    warehouse_cluster.create_database(name)
    wh = PgWarehouse(warehouse_cluster, name, monkeypatch)
    wh.use_uri(warehouse_cluster.conn_uri(name))
    yield wh
    warehouse_cluster.drop_database(name)
