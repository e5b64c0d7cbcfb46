"""Connections to a PostgreSQL destination from its credentials (a libpq URI or a mapping), with or without a password.

Every connection speaks the text the source is read in (UTC, ISO dates, ISO 8601 intervals, exact
floats, hex bytea), so values read back compare with the source's text output as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import psycopg

#: Session settings of every destination connection: the source's text output settings (see ``source/type_map``).
SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}

#: Settings for the work of a session: no JIT compilation (~0.1-0.2 s a statement to plan a batch's ``MERGE`` or
#: ``DELETE``, whose estimated cost is far past ``jit_above_cost`` without statistics, for nothing to
#: gain), and room for a batch's staged rows in memory (set before a session's first temporary table).
WORK = {"jit": "off", "temp_buffers": "64MB"}

_ALIASES = {"username": "user", "login": "user", "database": "dbname", "schema": "dbname"}


def _libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def connect_kwargs(credentials: Any) -> dict[str, Any]:
    """libpq keyword parameters from a ``postgres[ql]://user[:password]@host:port/db?opts`` URI or a mapping.

    A missing password is simply not passed (trust, peer, a ``.pgpass`` file or ``PGPASSWORD`` may
    answer). Query options that are not libpq's (an Airflow connection's extras) are left out.
    """
    if credentials is None:
        raise ValueError("a postgres destination needs credentials: a conn_id, or a postgresql:// URI")
    known = _libpq_keywords()
    out: dict[str, Any] = {}
    if isinstance(credentials, Mapping):
        items = dict(credentials)
        for key, value in items.items():
            key = _ALIASES.get(key, key)
            if key in known and value not in (None, ""):
                out[key] = value
        return out
    url = urlsplit(str(credentials))
    if url.scheme not in ("postgres", "postgresql") and not url.scheme.startswith("postgres"):
        raise ValueError(f"not a PostgreSQL URI (scheme {url.scheme!r}): give postgresql://user@host:port/db")
    if url.hostname:
        out["host"] = unquote(url.hostname)
    if url.port:
        out["port"] = url.port
    if url.username:
        out["user"] = unquote(url.username)
    if url.password:
        out["password"] = unquote(url.password)
    if url.path.strip("/"):
        out["dbname"] = unquote(url.path.lstrip("/"))
    for key, value in parse_qsl(url.query, keep_blank_values=False):
        key = _ALIASES.get(key, key)
        if key in known and key not in out:
            out[key] = value
    return out


def describe(credentials: Any) -> str:
    """Where the destination is, without the password: ``postgres://host:port/db``."""
    try:
        kw = connect_kwargs(credentials)
    except ValueError:
        return "postgres"
    return f"postgres://{kw.get('host', 'localhost')}:{kw.get('port', 5432)}/{kw.get('dbname', '')}"


def connect(credentials: Any, *, read_only: bool = False) -> psycopg.Connection:
    """An autocommit connection in the session settings of :data:`SESSION` (read only when asked)."""
    import psycopg
    from psycopg import sql

    kw = connect_kwargs(credentials)
    kw.setdefault("application_name", "airflow_pg_replication")
    conn = psycopg.connect(autocommit=True, **kw)
    try:
        settings = {**SESSION, **WORK, **({"default_transaction_read_only": "on"} if read_only else {})}
        calls = sql.SQL(", ").join([sql.SQL("set_config(%s, %s, false)")] * len(settings))
        conn.execute(sql.SQL("SELECT {}").format(calls), [v for item in settings.items() for v in item])
    except BaseException:
        conn.close()
        raise
    return conn
