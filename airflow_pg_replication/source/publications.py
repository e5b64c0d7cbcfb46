"""A slot group's publication: which tables it publishes, and adding or removing one.

Adding a table to a publication needs its owner's rights (or a superuser's); when the role may
not, the error gives the statement for the owner to run, once. Every name is quoted through
``psycopg.sql``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_pg_replication.errors import NeedsAttentionError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_OPTIONS = "WITH (publish_via_partition_root = true)"


def published_tables(conn: psycopg.Connection, publication: str) -> set[tuple[str, str]] | None:
    """(schema, table) of every table the publication publishes; None when it does not exist."""
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone() is None:
        return None
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def add_table(conn: psycopg.Connection, publication: str, schema: str, table: str) -> bool:
    """Make the publication publish ``schema.table`` (creating the publication if need be); True when it changed.

    The change commits at once: only transactions that start after it are decoded with the table
    in the publication (see ``sync/group_join.py`` for how a snapshot covers the others).
    """
    from psycopg import sql

    members = published_tables(conn, publication)
    if members is not None and (schema, table) in members:
        return False
    if members is None:
        stmt = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}.{} " + _OPTIONS)
    else:
        stmt = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}.{}")
    change = stmt.format(sql.Identifier(publication), sql.Identifier(schema), sql.Identifier(table))
    fix = change.as_string(conn) + ";"  # the very statement, for the owner to run
    try:
        conn.execute(change)
    except Exception as exc:  # psycopg.errors.InsufficientPrivilege and friends
        raise NeedsAttentionError(
            f"cannot add {schema}.{table} to publication {publication!r}: {exc}. Fix: let the table's owner (or "
            f"a superuser) run once: {fix}"
        ) from exc
    log.info("publication %s now publishes %s.%s", publication, schema, table)
    return True


def remove_table(conn: psycopg.Connection, publication: str, schema: str, table: str) -> bool:
    """Stop publishing ``schema.table``; True when it was removed, False when it was not a member.

    When the role may not, it logs the owner's statement and returns False (nothing is lost: its
    changes are captured and then dropped).
    """
    from psycopg import sql

    members = published_tables(conn, publication)
    if not members or (schema, table) not in members:
        return False
    try:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}.{}").format(
                sql.Identifier(publication), sql.Identifier(schema), sql.Identifier(table)
            )
        )
    except Exception as exc:
        log.warning(
            "%s.%s left the registry but stays in publication %s (%s); its changes are captured and dropped. "
            "Fix: let the publication's owner run: ALTER PUBLICATION %s DROP TABLE %s.%s;",
            schema,
            table,
            publication,
            exc,
            publication,
            schema,
            table,
        )
        return False
    log.info("publication %s no longer publishes %s.%s (left the registry)", publication, schema, table)
    return True
