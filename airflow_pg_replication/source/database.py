"""The source PostgreSQL, reached with plain libpq parameters: connections, catalog, publications, slots, change reads.

:class:`SourceDatabase` is what the protocols in ``sync/`` talk to; Airflow's
``PgReplicationHook`` is one, with its parameters taken from an Airflow connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import NeedsAttentionError, ReplicationError, TransientError
from airflow_pg_replication.source.catalog import SlotInfo, TableInfo, one_value, read_slot_info, read_table_info

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

log = logging.getLogger(__name__)

#: Session settings that make every value's text form the one our type map parses.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=iso_8601 "
    "-c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8"
)


@dataclass(frozen=True)
class CreatedSlot:
    """A slot created with an exported snapshot; the snapshot lives while the creating connection does."""

    name: str
    consistent_lsn: int
    snapshot_name: str


class SourceDatabase:
    """Talks to the source PostgreSQL for replication: connections, slots, publications, lag, snapshots, changes.

    ``params`` are libpq keyword parameters (host, port, user, password, dbname, sslmode, ...);
    they are never logged. ``description`` names the source in logs and errors.
    """

    def __init__(self, params: Mapping[str, Any], description: str | None = None) -> None:
        self._params = {k: v for k, v in params.items() if v is not None}
        self._description = description

    # -- connections -------------------------------------------------------------------------

    def connect_params(self) -> dict[str, Any]:
        """libpq keyword parameters (never logged: may hold a password)."""
        return dict(self._params)

    def describe(self) -> str:
        """Where the source is, for logs and errors: host, port, database; no credentials."""
        if self._description:
            return self._description
        p = self.connect_params()
        return f"{p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', 'postgres')}"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        """A psycopg 3 connection with the session settings our text parsing relies on."""
        import psycopg

        try:
            return psycopg.connect(**self.connect_params(), options=SESSION_OPTIONS, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            raise _connect_error(f"cannot connect to the source, {self.describe()}: {exc}".strip()) from exc

    def replication_connection(self):
        """A psycopg2 logical replication connection (the walsender protocol psycopg 3 lacks)."""
        import psycopg2
        import psycopg2.extras

        try:
            return psycopg2.connect(
                **self.connect_params(),
                options=SESSION_OPTIONS,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
            )
        except psycopg2.OperationalError as exc:
            hint = ""
            if "replication" in str(exc):
                hint = (
                    " The role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)"
                    " and pg_hba.conf must allow it."
                )
            raise _connect_error(f"cannot open a replication connection, {self.describe()}: {exc}{hint}") from exc

    # -- checks and catalog ------------------------------------------------------------------

    def check_wal_level(self, conn: psycopg.Connection) -> None:
        """Fail with the fix when the server cannot do logical decoding."""
        level = one_value(conn, "SHOW wal_level")
        if level != "logical":
            raise NeedsAttentionError(
                f"the source has wal_level={level}, but change data capture needs wal_level=logical "
                f"({self.describe()}). Fix: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL "
                "(on RDS/Aurora: set rds.logical_replication = 1 in the parameter group; on Cloud SQL: "
                "cloudsql.logical_decoding = on). Or use mode: full_refresh / incremental for this table."
            )

    def table_info(self, conn: psycopg.Connection, schema: str, table: str, **kwargs: Any) -> TableInfo:
        """Columns, key and replica identity of ``schema.table`` (see :func:`read_table_info`)."""
        return read_table_info(conn, schema, table, source=self.describe(), **kwargs)

    def slot_info(self, conn: psycopg.Connection, slot: str) -> SlotInfo | None:
        """The slot's state and lag, or None when it does not exist."""
        return read_slot_info(conn, slot)

    # -- publications and slots --------------------------------------------------------------

    def ensure_publication(self, conn: psycopg.Connection, publication: str, schema: str, table: str) -> None:
        """Create the table's publication unless it exists (a pre-created one is used as it is)."""
        from psycopg import sql

        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
        if exists:
            in_pub = conn.execute(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s",
                (publication, schema, table),
            ).fetchone()
            if not in_pub:
                add = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}.{};").format(
                    sql.Identifier(publication), sql.Identifier(schema), sql.Identifier(table)
                )
                raise NeedsAttentionError(
                    f"publication {publication!r} exists but does not publish {schema}.{table}. Fix: "
                    f"{add.as_string(conn)} or drop the publication."
                )
            return
        stmt = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}.{} WITH (publish_via_partition_root = true)").format(
            sql.Identifier(publication), sql.Identifier(schema), sql.Identifier(table)
        )
        try:
            conn.execute(stmt)
        except Exception as exc:  # psycopg.errors.InsufficientPrivilege and friends
            raise NeedsAttentionError(
                f"cannot create publication {publication!r} for {schema}.{table}: {exc}. Fix: let the table's "
                f"owner run: {stmt.as_string(conn)};"
            ) from exc
        log.info("created publication %s for %s.%s", publication, schema, table)

    def drop_publication(self, conn: psycopg.Connection, publication: str) -> bool:
        """Drop the publication if it exists (its owner or a superuser may). True when one was dropped."""
        from psycopg import sql

        if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
            return False
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
        log.info("dropped publication %s", publication)
        return True

    def drop_slot(self, conn: psycopg.Connection, slot: str) -> bool:
        """Drop the slot if it exists (ending a walsender still using it). True when one was dropped."""
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        for _ in range(50):
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                log.info("dropped replication slot %s", slot)
                return True
            except Exception as exc:  # still active for a moment after the terminate
                if "is active" not in str(exc):
                    raise
                import time

                time.sleep(0.1)
        raise TransientError(f"replication slot {slot!r} stays active; stop its consumer and retry")

    @contextlib.contextmanager
    def create_slot_with_snapshot(self, slot: str, *, temporary: bool = False) -> Iterator[CreatedSlot]:
        """Create a pgoutput slot exporting its snapshot; the snapshot is usable inside the ``with``.

        ``temporary``: the slot lives only as long as this ``with`` (PostgreSQL drops it with the
        replication connection), e.g. to snapshot one table of a slot group at a consistent point.
        """
        from psycopg2 import sql as sql2

        from airflow_pg_replication.source.pgoutput import parse_lsn

        rconn = self.replication_connection()
        try:
            cur = rconn.cursor()
            kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
            try:
                cur.execute(
                    sql2.SQL("CREATE_REPLICATION_SLOT {} " + kind + " pgoutput EXPORT_SNAPSHOT").format(
                        sql2.Identifier(slot)
                    )
                )
            except Exception as exc:  # psycopg2.errors.ConfigurationLimitExceeded and friends
                raise _slot_error(slot, exc, self.describe()) from exc
            name, consistent_point, snapshot_name, _plugin = cur.fetchone()
            created = CreatedSlot(name, parse_lsn(consistent_point), snapshot_name)
            log.info(
                "created %sslot %s at consistent point %s, snapshot %s",
                "temporary " if temporary else "",
                name,
                consistent_point,
                snapshot_name,
            )
            yield created
        finally:
            rconn.close()

    def consistent_point_now(self, slot: str) -> int:
        """An LSN after every transaction in progress now has ended: a temporary slot's consistent point.

        PostgreSQL reaches a new slot's consistent point only once every transaction running when
        the slot was asked for has committed or aborted. The slot (named ``slot``) is dropped at once.
        """
        from psycopg2 import sql as sql2

        from airflow_pg_replication.source.pgoutput import parse_lsn

        rconn = self.replication_connection()
        try:
            cur = rconn.cursor()
            try:
                cur.execute(
                    sql2.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT").format(
                        sql2.Identifier(slot)
                    )
                )
            except Exception as exc:
                raise _slot_error(slot, exc, self.describe()) from exc
            return parse_lsn(cur.fetchone()[1])
        finally:
            rconn.close()

    def create_slot(self, conn: psycopg.Connection, slot: str) -> int:
        """Create a pgoutput slot without a snapshot; returns its consistent LSN."""
        from airflow_pg_replication.source.pgoutput import parse_lsn

        lsn = one_value(conn, "SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        return parse_lsn(str(lsn))

    # -- changes -----------------------------------------------------------------------------

    def current_wal_lsn(self, conn: psycopg.Connection) -> int:
        """The server's current WAL insert position."""
        from airflow_pg_replication.source.pgoutput import parse_lsn

        return parse_lsn(str(one_value(conn, "SELECT pg_current_wal_lsn()")))

    def current_wal_flush_lsn(self, conn: psycopg.Connection) -> int:
        """The server's WAL flush position: every record before it is on disk and readable by a peek.

        A peek reads WAL only up to the flush position at its start; ``pg_current_wal_lsn()``
        (the write position) may be ahead of it, so an upper bound a slot is advanced to after a
        peek should be this one.
        """
        from airflow_pg_replication.source.pgoutput import parse_lsn

        return parse_lsn(str(one_value(conn, "SELECT pg_current_wal_flush_lsn()")))

    def wait_for_flush(self, conn: psycopg.Connection, lsn: int, timeout: float = 30.0) -> None:
        """Wait until the WAL is flushed up to ``lsn`` (so a peek up to ``lsn`` reads all of it)."""
        import time

        from airflow_pg_replication.source.pgoutput import format_lsn

        deadline = time.monotonic() + timeout
        while self.current_wal_flush_lsn(conn) < lsn:
            if time.monotonic() > deadline:
                raise TransientError(
                    f"the source's WAL was not flushed up to {format_lsn(lsn)} within {timeout:g} s "
                    f"({self.describe()}); try again"
                )
            time.sleep(0.01)

    def arrow_connection_params(self) -> dict[str, Any]:
        """libpq parameters for an ADBC (Arrow) connection, with our session settings."""
        return {**self.connect_params(), "options": SESSION_OPTIONS}

    def peek_changes_query(
        self, conn: psycopg.Connection, slot: str, publication: str, *, upto_lsn: int, max_changes: int
    ) -> str:
        """The SQL that peeks the slot's pgoutput messages up to ``upto_lsn``, without consuming them.

        Whole transactions only: PostgreSQL stops after the transaction in which ``max_changes``
        messages were reached. ``conn`` renders the literals (the query runs over ADBC).
        """
        from psycopg import sql

        from airflow_pg_replication.source.pgoutput import format_lsn

        return (
            sql.SQL(
                "SELECT data FROM pg_logical_slot_peek_binary_changes("
                "{}, {}::pg_lsn, {}, 'proto_version', '1', 'publication_names', {})"
            )
            .format(
                sql.Literal(slot), sql.Literal(format_lsn(upto_lsn)), sql.Literal(max_changes), sql.Literal(publication)
            )
            .as_string(conn)
        )

    def peek_change_chunks(
        self,
        conn: psycopg.Connection,
        slot: str,
        publication: str,
        *,
        upto_lsn: int,
        max_changes: int,
        arrow_conn: Any = None,
    ) -> Iterator[pa.Array]:
        """Stream the slot's messages (see :meth:`peek_changes_query`) as Arrow binary arrays.

        Read over ADBC's binary COPY, many messages an array: no Python object per message.
        ``arrow_conn``: an open autocommit ADBC connection to use (the caller closes it); by
        default one is opened and closed here.
        """
        from airflow_pg_replication.source.binary_copy import adbc_connect

        query = self.peek_changes_query(conn, slot, publication, upto_lsn=upto_lsn, max_changes=max_changes)
        with contextlib.ExitStack() as stack:
            if arrow_conn is None:
                arrow_conn = stack.enter_context(
                    contextlib.closing(adbc_connect(self.arrow_connection_params(), autocommit=True))
                )
            cur = stack.enter_context(contextlib.closing(arrow_conn.cursor()))
            cur.execute(query)
            for batch in cur.fetch_record_batch():
                yield batch.column(0)

    def advance_slot(self, conn: psycopg.Connection, slot: str, lsn: int) -> None:
        """Confirm everything up to ``lsn`` as consumed, so the server may recycle that WAL."""
        from airflow_pg_replication.source.pgoutput import format_lsn

        conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))


_NEEDS_A_PERSON = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "must be superuser or replication role",
    "permission denied",
    "must have replication",
)


def _connect_error(message: str) -> ReplicationError:
    """A failed connection: a person must act on credentials, pg_hba.conf, rights or a missing
    database; anything else (refused, timed out, too many clients) may pass on its own."""
    if any(cause in message for cause in _NEEDS_A_PERSON):
        return NeedsAttentionError(message)
    return TransientError(message)


def _slot_error(slot: str, exc: Exception, source: str) -> ReplicationError:
    """Creating a slot failed: too many slots is transient (a snapshot ends, a slot frees up); the rest is not."""
    text = str(exc).strip()
    if "all replication slots are in use" in text or "max_replication_slots" in text:
        return TransientError(
            f"cannot create replication slot {slot} on {source}: {text}. Every slot of the server is in use; "
            "the task retries. Fix for good: raise max_replication_slots (restart), drop unused slots, or put "
            "tables in slot groups (one slot per group)"
        )
    if "already exists" in text:
        return TransientError(f"cannot create replication slot {slot} on {source}: {text}; the task retries")
    return NeedsAttentionError(
        f"cannot create replication slot {slot} on {source}: {text}. The role needs the "
        "REPLICATION attribute (or rds_replication) and wal_level = logical"
    )
