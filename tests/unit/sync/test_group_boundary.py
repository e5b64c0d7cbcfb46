"""The exact boundary of a table that joins its slot group at consistent point X (no database).

A join copies the table under a snapshot holding exactly the transactions that committed before X
and records applied LSN X - 1; from then on the table reads its changes from the group's change log
with ``after_lsn`` = its applied LSN and folds them at that applied LSN. So a transaction whose
commit LSN is X - 1 must be skipped and one at X applied, through a real :class:`ChangeLog` on disk
and by both folds (column-wise and reference). Segments written twice (a capture that crashed after
its log write and before its slot advance captures the same transactions again) must fold to the
same result as the transactions written once.

The streams are what a slot peek gives: a peek is a decoding session of its own, and pgoutput sends
a table's Relation message once per session, before the table's first change in it, so a later
transaction of the same peek has row changes without a Relation message of its own.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.changes.columnar_fold import fold_columnar
from airflow_pg_replication.changes.reference_fold import ChangeFolder
from airflow_pg_replication.source.pgoutput import decode
from tests.unit.changes.test_columnar_fold import columnar_rows, delete, insert, reference_rows, relation, update

T = "public.t"
NAMES = {("public", "t")}
KEY = ("id",)
OID = 16_500
COLS = ("id", "name", "note")
X = 0x3_0000_1000  # the join's consistent point (past 32 bits, as real LSNs are)
TS = 760_000_000_000_000

# Regression: ChangeLog.read once dropped the Relation message with the transaction that carried it
# (at or below ``after_lsn``, or a duplicate), so the later transactions of a segment read in part lost
# their changes (test_log_read_after_x_minus_1_inside_one_peek, test_overlapping_segment_after_the_first_was_applied).


def begin(lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", lsn, TS + lsn, xid)


def commit(lsn: int, end: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, lsn, end, TS + lsn)


REL = relation(OID, "t", COLS, KEY)


def tx(lsn: int, xid: int, changes: list[bytes], *, with_relation: bool) -> list[bytes]:
    """One whole transaction committing at ``lsn`` (Begin's final_lsn); its Commit ends 40 bytes on."""
    return [begin(lsn, xid), *([REL] if with_relation else []), *changes, commit(lsn, lsn + 40)]


# Before the boundary: rows 1..4 inserted, row 5 too (then deleted at X), committing at X - 1.
BEFORE = [insert(OID, [str(i), f"before {i}", None]) for i in range(1, 6)]
# At the boundary (commit X): an update, a delete, an insert of a new key, an update of a row
# inserted in the skipped transaction (the copy holds it).
AT_X = [
    update(OID, ["1", "at X", "n1"]),
    delete(OID, ["5", None, None]),
    insert(OID, ["6", "new at X", None]),
    update(OID, ["3", "at X", None]),
]
# After: one more transaction (X + 0x100) for the overlap tests.
AFTER = [update(OID, ["6", "after X", "n6"]), delete(OID, ["2", None, None]), insert(OID, ["7", "after", None])]
LSN_AFTER = X + 0x100

#: What a table at applied LSN X - 1 must end up with: key -> (values, deleted).
EXPECTED_AT_X = {
    ("1",): (("1", "at X", "n1"), False),
    ("5",): (None, True),  # deleted; its values were not in this batch
    ("6",): (("6", "new at X", None), False),
    ("3",): (("3", "at X", None), False),
}
EXPECTED_AFTER = {
    **EXPECTED_AT_X,
    ("6",): (("6", "after X", "n6"), False),
    ("2",): (None, True),
    ("7",): (("7", "after", None), False),
}


def one_peek(*transactions: tuple[int, list[bytes]]) -> list[bytes]:
    """Transactions as one peek gives them: the table's Relation message only in the first."""
    out: list[bytes] = []
    for n, (lsn, changes) in enumerate(transactions):
        out += tx(lsn, 900 + n, changes, with_relation=n == 0)
    return out


def write(log: ChangeLog, messages: list[bytes], changes: int) -> None:
    """Write ``messages`` (whole transactions) as one segment, each tagged with its Begin's final_lsn."""
    lsns, current = [], None
    for m in messages:
        if m[:1] == b"B":
            current = struct.unpack("!Q", m[1:9])[0]
        lsns.append(current)
    end = struct.unpack("!Q", messages[-1][10:18])[0]
    log.write_segment(T, pa.array(lsns, pa.int64()), pa.array(messages, pa.binary()), last_end_lsn=end, changes=changes)


def fold_both(messages: pa.ChunkedArray | list[bytes], applied_lsn: int) -> dict:
    """Fold with both folds at ``applied_lsn``; they must agree. Returns key -> (values, deleted)."""
    raw = messages.to_pylist() if isinstance(messages, pa.ChunkedArray) else list(messages)
    folder = ChangeFolder(KEY, applied_lsn=applied_lsn, relation_names=NAMES)
    for m in raw:
        folder.feed(decode(m))
    reference = {k: (r.values, r.deleted) for k, r in folder.batch.rows.items()}
    arrow = messages if isinstance(messages, pa.ChunkedArray) else pa.array(raw, pa.binary())
    columnar = fold_columnar(arrow, KEY, applied_lsn=applied_lsn, relation_names=NAMES)
    assert columnar is not None, "the column-wise fold found the batch ineligible (no Relation message of t?)"
    assert columnar_rows(columnar)[0] == reference_rows(raw, KEY, applied_lsn, NAMES)[0]
    return reference


def row_changes(read) -> list[tuple[int, bytes]]:
    """(commit LSN, message) of the row changes a read gave (Begin, Relation and Commit messages left out)."""
    return [
        (lsn, m)
        for lsn, m in zip(read.commit_lsn.to_pylist(), read.messages.to_pylist())
        if m[:1] in (b"I", b"U", b"D", b"T")
    ]


def rows_only(folded: dict) -> dict:
    """Deleted rows' values do not matter to the destination (a hard delete): compare (values or None, deleted)."""
    return {k: (None if deleted else values, deleted) for k, (values, deleted) in folded.items()}


@pytest.fixture
def log(tmp_path: Path) -> ChangeLog:
    return ChangeLog(str(tmp_path / "changes"), "default")


# -- the folds alone: a peek's stream folded at applied LSN X - 1 ---------------------------------------


def test_both_folds_skip_the_commit_at_x_minus_1_and_apply_the_one_at_x() -> None:
    stream = one_peek((X - 1, BEFORE), (X, AT_X))
    assert rows_only(fold_both(stream, X - 1)) == EXPECTED_AT_X
    folder = ChangeFolder(KEY, applied_lsn=X - 1, relation_names=NAMES)
    for m in stream:
        folder.feed(decode(m))
    assert (folder.batch.transactions, folder.batch.skipped, folder.batch.changes) == (2, 1, len(AT_X))
    assert {r.commit_lsn for r in folder.batch.rows.values()} == {X}
    # one LSN lower and the X - 1 transaction is applied too; at X nothing is
    assert ("4",) in fold_both(stream, X - 2)
    assert fold_both(stream, X) == {}


# -- through the change log: written, read back with after_lsn = X - 1, folded ---------------------------


def test_log_read_after_x_minus_1_each_transaction_its_own_segment(log: ChangeLog) -> None:
    """Two captures (two peeks): each segment opens with its own Relation message."""
    write(log, one_peek((X - 1, BEFORE)), len(BEFORE))
    write(log, one_peek((X, AT_X)), len(AT_X))
    got = log.read(T, after_lsn=X - 1, max_messages=10**6)
    assert got.last_commit_lsn == X and not got.more
    assert [s.last_commit_lsn for s in got.segments] == [X]  # the X - 1 segment is not even read
    assert {lsn for lsn, _ in row_changes(got)} == {X}
    assert rows_only(fold_both(got.messages, X - 1)) == EXPECTED_AT_X


def test_log_read_after_x_minus_1_relation_in_every_transaction(log: ChangeLog) -> None:
    """One segment, every transaction with its Relation message: the one at X - 1 is dropped by the read."""
    stream = tx(X - 1, 1, BEFORE, with_relation=True) + tx(X, 2, AT_X, with_relation=True)
    write(log, stream, len(BEFORE) + len(AT_X))
    got = log.read(T, after_lsn=X - 1, max_messages=10**6)
    assert [lsn for lsn, _ in row_changes(got)] == [X] * len(AT_X)
    assert rows_only(fold_both(got.messages, X - 1)) == EXPECTED_AT_X


def test_log_read_after_x_minus_1_inside_one_peek(log: ChangeLog) -> None:
    """One capture batch spans X: its segment holds the X - 1 transaction (with the table's only Relation
    message) and the one at X. This is what a join under concurrent writes produces."""
    write(log, one_peek((X - 1, BEFORE), (X, AT_X)), len(BEFORE) + len(AT_X))
    got = log.read(T, after_lsn=X - 1, max_messages=10**6)
    assert got.last_commit_lsn == X
    assert rows_only(fold_both(got.messages, X - 1)) == EXPECTED_AT_X


# -- overlapping segments (a capture crashed after its log write, before its slot advance) ---------------


def test_overlapping_segments_read_in_one_go_fold_as_written_once(log: ChangeLog) -> None:
    first = one_peek((X - 1, BEFORE), (X, AT_X))  # written, then the capture died before advancing
    again = one_peek((X - 1, BEFORE), (X, AT_X), (LSN_AFTER, AFTER))  # the rerun peeks from the same place
    write(log, first, len(BEFORE) + len(AT_X))
    write(log, again, len(BEFORE) + len(AT_X) + len(AFTER))
    write(log, again, len(BEFORE) + len(AT_X) + len(AFTER))  # and once more: the same segment name, rewritten
    assert len(log.segments(T)) == 2
    from_start = log.read(T, after_lsn=None, max_messages=10**6)
    assert from_start.duplicates_dropped > 0
    # each row change once, in commit order
    assert [m for _, m in row_changes(from_start)] == [m for m in again if m[:1] in (b"I", b"U", b"D")]
    once = rows_only(fold_both(again, X - 1))
    assert once == EXPECTED_AFTER
    assert rows_only(fold_both(from_start.messages, X - 1)) == once
    # the read after X - 1 (the joined table's) gives the row changes of X and after, once each
    after_join = log.read(T, after_lsn=X - 1, max_messages=10**6)
    assert [lsn for lsn, _ in row_changes(after_join)] == [X] * len(AT_X) + [LSN_AFTER] * len(AFTER)


def test_overlapping_segments_in_other_bounds_fold_once(log: ChangeLog) -> None:
    """Overlaps in other bounds: (X - 1, X) then (X, after), each peek with its Relation message first;
    a table at applied LSN X - 2 reads both segments, the second past its duplicate."""
    write(log, one_peek((X - 1, BEFORE), (X, AT_X)), len(BEFORE) + len(AT_X))
    write(log, one_peek((X, AT_X), (LSN_AFTER, AFTER)), len(AT_X) + len(AFTER))
    got = log.read(T, after_lsn=X - 2, max_messages=10**6)
    lsns = [lsn for lsn, _ in row_changes(got)]
    assert lsns == [X - 1] * len(BEFORE) + [X] * len(AT_X) + [LSN_AFTER] * len(AFTER)
    assert got.duplicates_dropped > 0 and got.last_commit_lsn == LSN_AFTER
    written_once = one_peek((X - 1, BEFORE), (X, AT_X), (LSN_AFTER, AFTER))
    assert rows_only(fold_both(got.messages, X - 2)) == rows_only(fold_both(written_once, X - 2))
    assert rows_only(fold_both(got.messages, X - 2)) == {
        ("4",): (("4", "before 4", None), False),
        **{k: v for k, v in EXPECTED_AFTER.items()},
    }


def test_overlapping_segment_after_the_first_was_applied(log: ChangeLog) -> None:
    """The apply ran between the crashed capture and its rerun: it applied and deleted the first segment;
    the rerun's segment repeats those transactions (the Relation message in the first) and adds one."""
    write(log, one_peek((X - 1, BEFORE), (X, AT_X)), len(BEFORE) + len(AT_X))
    first = log.read(T, after_lsn=X - 1, max_messages=10**6)
    assert first.last_commit_lsn == X
    assert log.delete_applied(T, X) == 1
    write(log, one_peek((X - 1, BEFORE), (X, AT_X), (LSN_AFTER, AFTER)), len(BEFORE) + len(AT_X) + len(AFTER))
    got = log.read(T, after_lsn=X, max_messages=10**6)
    assert [lsn for lsn, _ in row_changes(got)] == [LSN_AFTER] * len(AFTER)
    applied = rows_only(fold_both(got.messages, X))
    assert applied == {k: v for k, v in EXPECTED_AFTER.items() if k in {("6",), ("2",), ("7",)}}
