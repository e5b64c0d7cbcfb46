"""PgReplicationHook: the source PostgreSQL (see :class:`.SourceDatabase`) from an Airflow connection."""

from __future__ import annotations

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from airflow_pg_replication.source.database import SESSION_OPTIONS, CreatedSlot, SourceDatabase

__all__ = ["SESSION_OPTIONS", "CreatedSlot", "PgReplicationHook"]


class PgReplicationHook(SourceDatabase, PostgresHook):
    """Talks to the source PostgreSQL for replication: slots, publications, lag, snapshots, changes.

    Every operation is :class:`.SourceDatabase`'s; this hook takes its libpq parameters from the
    Airflow connection ``postgres_conn_id`` (host, port, login, password, schema = database, and
    ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``connect_timeout`` from the extra).
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "pg_source"
    conn_type = "postgres"
    hook_name = "PostgreSQL (logical replication)"

    def __init__(self, *args: Any, postgres_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        PostgresHook.__init__(self, *args, postgres_conn_id=postgres_conn_id, **kwargs)
        self.postgres_conn_id = postgres_conn_id

    def connect_params(self) -> dict[str, Any]:
        """libpq keyword parameters of the Airflow connection (never logged: may hold a password)."""
        conn = self.get_connection(self.postgres_conn_id)
        params: dict[str, Any] = {
            "host": conn.host or "localhost",
            "port": conn.port or 5432,
            "user": conn.login or None,
            "password": conn.password or None,
            "dbname": conn.schema or "postgres",
            "application_name": "airflow_pg_replication",
        }
        extra = conn.extra_dejson or {}
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"):
            if key in extra:
                params[key] = extra[key]
        return {k: v for k, v in params.items() if v is not None}

    def describe(self) -> str:
        """Where the source is, for logs and errors: conn id, host, port, database; no credentials."""
        p = self.connect_params()
        return f"conn {self.postgres_conn_id!r} ({p['host']}:{p['port']}/{p['dbname']})"
