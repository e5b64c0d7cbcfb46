"""Does a table's slot hold changes of that table? The one poke of the slot-lag sensor and its trigger.

A poke (:func:`poke_sync` for the sensor, :func:`poke_async` for the triggerer) runs the same
steps, written once in :func:`_poke_steps` as a generator of SQL statements that the two drivers
execute over a psycopg ``Connection`` or ``AsyncConnection``:

1. Read the slot and the server's WAL flush position ``X`` in one statement; a missing, lost or
   overfull slot fails loudly (:func:`~airflow_pg_replication.source.slot_health.judge_slot`). No WAL past
   the slot's confirmed point: not ready, nothing decoded. The slot in use by another backend
   (``apply_changes``): busy, look again next poke.
2. Peek the slot with the table's publication up to ``X`` (nothing is consumed), at most
   :func:`peek_bound` messages, and count the bytes of the table's row-change messages with the
   pure :class:`TableChangeCounter`. PostgreSQL 15's pgoutput skips transactions that touched no
   published table, so WAL of other tables and of PostgreSQL itself returns no row at all.
3. Fire when the table's change bytes reach ``min_lag_bytes``. When the peek read everything up
   to ``X`` and found no change of the table, advance the slot to ``X`` (see
   :func:`_poke_steps` for why nothing is lost), so the next poke counts only newer WAL.

What a poke costs: PostgreSQL decodes from the slot's ``restart_lsn``, which it moves up to the
confirmed point at its next running-transactions record (the bgwriter writes one every 15 s on
a busy server). So with the advance a poke decodes about 15 s plus one poke interval of WAL,
however long the table stays quiet; without it, everything since the table's last change
(``bench/sensor_poke.py`` measures both).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from airflow_pg_replication.errors import NeedsAttentionError, ReplicationError
from airflow_pg_replication.source.catalog import SLOT_SQL, SlotInfo, slot_info_from_row
from airflow_pg_replication.source.pgoutput import Commit, Relation, Truncate, decode, format_lsn, parse_lsn
from airflow_pg_replication.source.slot_health import judge_slot

if TYPE_CHECKING:
    import psycopg

#: Message types of row changes (Insert, Update, Delete, Truncate): the first byte of a pgoutput message.
ROW_CHANGE_TYPES = frozenset(b"IUDT")
#: The smallest row-change message: a Truncate of one relation (type, count, options, oid) is 10 bytes.
SMALLEST_CHANGE_BYTES = 10
#: The peek's message bound (``upto_nchanges``) with the default ``min_lag_bytes``, and its ceiling.
MIN_PEEK_MESSAGES = 64
MAX_PEEK_MESSAGES = 100_000

# The peek ships Insert/Update/Delete messages as their first 5 bytes (type and relation oid) plus
# their length: the counter needs no more, and a poke never pulls row data over the network. The
# other messages (Begin, Commit, Relation, Truncate, ...) are small and come whole. LIMIT: at most
# the bound's rows even when the last transaction read is larger than the bound.
_PEEK_SQL = (
    "SELECT CASE WHEN get_byte(data, 0) IN (73, 85, 68) THEN substring(data FROM 1 FOR 5) ELSE data END, "
    "length(data) "
    "FROM pg_logical_slot_peek_binary_changes(%s::name, %s::pg_lsn, %s::int, 'proto_version', '1', "
    "'publication_names', %s::text) LIMIT %s::int"
)
_ADVANCE_SQL = "SELECT end_lsn::text FROM pg_replication_slot_advance(%s::name, %s::pg_lsn)"

#: One message for the counter: its bytes (or at least its first 5 for Insert/Update/Delete) and its length.
MessageHead = Union[bytes, bytearray, memoryview, "tuple[bytes, int]"]


# -- counting the table's change bytes (pure) ----------------------------------------------------


@dataclass
class TableChangeCount:
    """What a peek held: the table's row changes and their bytes, and where it was clear of them."""

    changes: int = 0  # Insert/Update/Delete/Truncate messages of the table
    change_bytes: int = 0  # their pgoutput bytes
    messages: int = 0  # every message read (Begin, Commit, Relation, other tables' changes, ...)
    transactions: int = 0  # whole transactions read (Commit messages)
    #: End LSN of the last whole transaction read before the table's first change (None: no such
    #: transaction). Every transaction committed before it was read and changed nothing of the table.
    clear_upto: int | None = None
    last_end_lsn: int | None = None  # end LSN of the last whole transaction read


class TableChangeCounter:
    """Feed a peek's messages in order; counts the row changes of the table ``(schema, name)``.

    Changes name their relation by oid; the oid is the table's when a Relation message of that
    oid names the table (pgoutput sends one before a relation's first change in each peek).
    """

    def __init__(self, schema: str, name: str) -> None:
        self._name = (schema, name)
        self._oids: set[int] = set()
        self.count = TableChangeCount()

    def feed(self, message: MessageHead) -> None:
        head: bytes | bytearray | memoryview
        if isinstance(message, tuple):
            head, size = message
        else:
            head, size = message, len(message)
        c = self.count
        c.messages += 1
        kind = head[0]
        if kind in ROW_CHANGE_TYPES:
            if kind == 0x54:  # 'T': a Truncate names every relation it empties
                mine = any(oid in self._oids for oid in _decode(head, Truncate).relation_oids)
            else:  # 'I', 'U', 'D': the relation oid follows the type byte
                mine = int.from_bytes(head[1:5], "big") in self._oids
            if mine:
                c.changes += 1
                c.change_bytes += size
        elif kind == 0x52:  # 'R'
            rel = _decode(head, Relation)
            if (rel.namespace, rel.name) == self._name:
                self._oids.add(rel.oid)
            else:
                self._oids.discard(rel.oid)
        elif kind == 0x43:  # 'C'
            c.transactions += 1
            c.last_end_lsn = _decode(head, Commit).end_lsn
            if c.changes == 0:
                c.clear_upto = c.last_end_lsn


def count_table_changes(messages: Iterable[MessageHead], schema: str, name: str) -> TableChangeCount:
    """Count the row changes of ``schema.name`` and their bytes in a peek's messages (in peek order)."""
    counter = TableChangeCounter(schema, name)
    for message in messages:
        counter.feed(message)
    return counter.count


_M = TypeVar("_M")


def _decode(head: bytes | bytearray | memoryview, kind: type[_M]) -> _M:
    msg = decode(bytes(head))
    if not isinstance(msg, kind):  # pragma: no cover - the first byte said so
        raise ReplicationError(f"expected a pgoutput {kind.__name__} message, got {type(msg).__name__}")
    return msg


def peek_bound(min_lag_bytes: int) -> int:
    """The peek's ``upto_nchanges``: enough messages to hold ``min_lag_bytes`` of the smallest changes.

    A transaction of one change is 3 messages (Begin, change, Commit), so a peek cut at this bound
    that found changes of the table found about ``min_lag_bytes`` of them or more (unless the
    publication also publishes other tables). PostgreSQL stops decoding after the transaction in
    which the bound was reached, so a large backlog of the table's changes is not decoded whole.
    """
    want = MIN_PEEK_MESSAGES + 3 * -(-max(min_lag_bytes, 0) // SMALLEST_CHANGE_BYTES)
    return min(want, MAX_PEEK_MESSAGES)


# -- one poke ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PokeTarget:
    """The table a poke looks at, its slot and publication, and the sensor's thresholds."""

    schema: str
    table: str
    slot: str
    publication: str
    min_lag_bytes: int
    max_lag_bytes: int
    #: False for a slot group's slot: the capture is its only reader and the only one to move it.
    may_advance: bool = True

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class PokeResult:
    """What one poke saw; ``message`` says it for the log, including why it did not fire."""

    ready: bool
    message: str
    warn: bool = False
    busy: bool = False  # another backend held the slot: nothing decoded or advanced this time
    slot_lag_bytes: int = 0  # pg_current_wal_lsn() - confirmed_flush_lsn when the poke started
    decoded_from: int | None = None  # the slot's confirmed point: changes are counted from here ...
    decoded_to: int | None = None  # ... up to here (the WAL flush position at the poke's start)
    wal_read_bytes: int = 0  # WAL the peek had to read: from the slot's restart_lsn to decoded_to
    changes: int = 0  # changes of the table found (a lower bound when cut)
    change_bytes: int = 0
    transactions: int = 0
    cut: bool = False  # the peek stopped at its message bound before decoded_to
    advanced_to: int | None = None  # where this poke moved the slot's confirmed point (None: not moved)
    advanced_bytes: int = 0
    peek_seconds: float = 0.0
    advance_seconds: float = 0.0


@dataclass(frozen=True)
class _Step:
    """One statement for a driver to run: ``fetch`` one row or all rows."""

    query: str
    params: tuple
    fetch: str = "one"
    binary: bool = False


_Steps = Generator[_Step, Any, PokeResult]


def _poke_steps(t: PokeTarget) -> _Steps:
    """The poke, as statements for a driver; see the module docstring. Errors of a statement come back in."""
    import psycopg
    import psycopg.errors as pe

    def read_slot() -> Generator[_Step, Any, tuple[SlotInfo, Any]]:
        slot = slot_info_from_row((yield _Step(SLOT_SQL, (t.slot,))))
        verdict = judge_slot(
            slot, slot_name=t.slot, table=t.qualified_name, min_lag_bytes=1, max_lag_bytes=t.max_lag_bytes
        )  # raises on a missing, lost or overfull slot
        return slot, verdict  # type: ignore[return-value]

    slot, verdict = yield from read_slot()
    if not slot.in_this_database:
        raise NeedsAttentionError(
            f"replication slot {t.slot} of {t.qualified_name} belongs to database {slot.database}, not this one; "
            "set a distinct `slot` name for this table in the registry"
        )
    head, warn, lag = verdict.message, verdict.warn, slot.lag_bytes or 0

    def result(ready: bool, why: str, **kw: Any) -> PokeResult:
        return PokeResult(ready=ready, message=f"{head}; {why}", warn=warn, slot_lag_bytes=lag, **kw)

    if t.min_lag_bytes <= 0:
        return result(True, "firing: min_lag_bytes=0 fires on every poke")
    if not verdict.ready:
        return result(False, "not firing: no WAL past the slot's confirmed point, nothing to decode")
    if slot.active:
        return result(
            False,
            f"not firing: the slot is in use by PID {slot.active_pid} (apply_changes or another "
            "reader): nothing decoded, looking again next poke",
            busy=True,
        )
    start = parse_lsn(slot.confirmed_flush_lsn)  # type: ignore[arg-type]
    upto = parse_lsn(slot.wal_flush_lsn)  # type: ignore[arg-type]
    restart = parse_lsn(slot.restart_lsn)  # type: ignore[arg-type]
    if upto <= start:
        return result(False, f"not firing: no WAL flushed past the slot's confirmed point {format_lsn(start)} yet")
    span = f"{format_lsn(start)}..{format_lsn(upto)}"
    bound = peek_bound(t.min_lag_bytes)

    peek_started = time.monotonic()
    try:
        rows = yield _Step(_PEEK_SQL, (t.slot, format_lsn(upto), bound, t.publication, bound), "all", binary=True)
    except pe.ObjectInUse as exc:  # "replication slot ... is active for PID ...": apply_changes reads it
        return result(
            False,
            f"not firing: the slot is busy ({_first_line(exc)}): nothing decoded, looking again next poke",
            busy=True,
        )
    except pe.UndefinedObject as exc:
        if "publication" in str(exc):
            raise NeedsAttentionError(
                f"cannot peek slot {t.slot} of {t.qualified_name}: {_first_line(exc)}. The table's publication "
                f"{t.publication} is gone: take a new snapshot (trigger the DAG with full_refresh=true), which "
                "creates it again."
            ) from exc
        yield from read_slot()  # the slot disappeared meanwhile: SlotLostError with the fix
        raise exc
    except psycopg.Error as exc:
        yield from read_slot()  # invalidated meanwhile ("This slot has been invalidated ..."): SlotLostError
        raise ReplicationError(
            f"cannot peek slot {t.slot} of {t.qualified_name} up to {format_lsn(upto)}: {_first_line(exc)}"
        ) from exc
    peek_seconds = time.monotonic() - peek_started
    count = count_table_changes(rows, t.schema, t.table)
    cut = count.messages >= bound
    seen = dict(
        decoded_from=start,
        decoded_to=upto,
        wal_read_bytes=max(upto - restart, 0),
        changes=count.changes,
        change_bytes=count.change_bytes,
        transactions=count.transactions,
        cut=cut,
        peek_seconds=peek_seconds,
    )
    found = (
        f"peeked {span} ({upto - start:,} bytes of WAL past the confirmed point; {upto - restart:,} read "
        f"from restart_lsn {slot.restart_lsn}) in {peek_seconds:.3f} s: {count.changes:,} change(s) of "
        f"{t.qualified_name} pending ({count.change_bytes:,} bytes) in {count.transactions:,} transaction(s)"
        + (f", peek stopped at its bound of {bound:,} messages" if cut else "")
    )
    if count.change_bytes >= t.min_lag_bytes:
        return result(True, f"{found}; firing: the table's changes reach min_lag_bytes={t.min_lag_bytes:,}", **seen)
    if cut and count.changes:
        # Each peek starts at the confirmed point, so a cut peek would see these same messages on
        # every poke and never reach min_lag_bytes: at least a bound's worth of the table's work waits.
        return result(True, f"{found}; firing: more of the table's changes wait than one peek reads", **seen)

    # Advance the slot past WAL that holds no change of the table, so later pokes do not decode it
    # again. Why nothing is lost:
    # - ``upto`` (X) is the WAL *flush* position read before the peek (not pg_current_wal_lsn(),
    #   the write position, which may be ahead: the peek reads only up to the flush position at
    #   its own start). Every record starting before X existed when the peek began, and a peek
    #   with upto_lsn X processes every record starting before X. Not cut by upto_nchanges (fewer
    #   rows than the bound), it therefore saw every transaction whose commit record lies in
    #   [confirmed point, X): pgoutput returns each that touched a published table, and none was
    #   the table's. When cut, ``clear_upto`` is the end of the last whole transaction returned
    #   before the table's first change: everything committed before it was seen the same way.
    #   Past the table's first change we never advance, so changes below min_lag_bytes stay.
    # - Transactions in progress at X commit at or after X. PostgreSQL decodes every transaction
    #   whose commit record starts at or after the confirmed point, from its first change: it
    #   keeps the slot's restart_lsn at or before the start of the oldest transaction still
    #   running. apply_changes relies on the same when it advances to the LSN read at its start.
    # - The slot is the table's own, so no other reader loses anything; the destination's applied
    #   LSN is untouched (apply_changes skips transactions at or below it, before or after this).
    # - A concurrent apply_changes holding the slot makes the advance fail with "is active for
    #   PID": busy, look again next poke. One that advanced further meanwhile makes it fail with
    #   "cannot advance ... minimum is": nothing to do. A slot dropped meanwhile: SlotLostError.
    # - pg_replication_slot_advance persists the new position at the next checkpoint; after a
    #   crash the slot may move back, which only means decoding that WAL again.
    target = upto if not cut and count.changes == 0 else count.clear_upto
    if count.changes:
        why = (
            f"not firing: {count.change_bytes:,} of min_lag_bytes={t.min_lag_bytes:,} bytes of the table's changes wait"
        )
    elif cut:
        why = (
            "not firing: no change of the table in the transactions read, but the peek stopped at its bound: "
            f"publication {t.publication} publishes other tables too"
        )
    else:
        why = "not firing: no change of the table pending (only other tables' or PostgreSQL's own WAL)"
    if not t.may_advance:
        return result(False, f"{found}; {why}; the slot is the slot group's: its capture moves it", **seen)
    if target is None or target <= start:
        return result(
            False,
            f"{found}; {why}; the slot stays at {format_lsn(start)}"
            + (" (not past the table's changes)" if count.changes else ""),
            **seen,
        )
    advance_started = time.monotonic()
    try:
        row = yield _Step(_ADVANCE_SQL, (t.slot, format_lsn(target)))
    except pe.ObjectInUse as exc:
        return result(
            False,
            f"{found}; {why}; the slot was not advanced: busy ({_first_line(exc)}), looking again next poke",
            busy=True,
            **seen,
        )
    except pe.ObjectNotInPrerequisiteState as exc:
        if "minimum is" not in str(exc):
            yield from read_slot()  # invalidated meanwhile: SlotLostError
            raise exc
        return result(
            False,
            f"{found}; {why}; the slot was not advanced: another reader moved it further ({_first_line(exc)})",
            **seen,
        )
    except pe.UndefinedObject as exc:
        yield from read_slot()  # dropped meanwhile: SlotLostError
        raise exc
    advance_seconds = time.monotonic() - advance_started
    moved_to = parse_lsn(row[0])
    return result(
        False,
        f"{found}; advanced the slot {moved_to - start:,} bytes past other tables' WAL, "
        f"{format_lsn(start)} -> {format_lsn(moved_to)} in {advance_seconds:.3f} s; {why}",
        advanced_to=moved_to,
        advanced_bytes=moved_to - start,
        advance_seconds=advance_seconds,
        **seen,
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# -- drivers: the same steps over a sync or an async connection -----------------------------------


def poke_sync(conn: psycopg.Connection, target: PokeTarget) -> PokeResult:
    """One poke over an autocommit psycopg connection (the sensor)."""
    import psycopg

    steps = _poke_steps(target)
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as done:
            return done.value
        error = None
        try:
            cur = conn.execute(step.query, step.params, binary=step.binary)
            reply = cur.fetchall() if step.fetch == "all" else cur.fetchone()
        except psycopg.Error as exc:
            error = exc


async def poke_async(conn: psycopg.AsyncConnection, target: PokeTarget) -> PokeResult:
    """One poke over an autocommit psycopg async connection (the triggerer)."""
    import psycopg

    steps = _poke_steps(target)
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as done:
            return done.value
        error = None
        try:
            cur = await conn.execute(step.query, step.params, binary=step.binary)
            reply = await cur.fetchall() if step.fetch == "all" else await cur.fetchone()
        except psycopg.Error as exc:
            error = exc
