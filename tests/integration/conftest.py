"""Fixtures for integration tests: a DuckDB destination and source/destination comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest


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
