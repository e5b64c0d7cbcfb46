"""The per-message fold's source keys (where a re-keyed row's unchanged TOAST values are read from),
and how ``write_change_batch`` reads them back from the destination, or fails when they are nowhere."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_pg_replication.changes.reference_fold import ChangeFolder, fold_changes
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.source.pgoutput import UNCHANGED_TOAST, decode
from airflow_pg_replication.source.type_map import PgColumn, PgType
from airflow_pg_replication.sync.batch_write import write_change_batch
from tests.unit.changes.test_columnar_fold import begin, commit, delete, insert, relation, update

U = UNCHANGED_TOAST
OID = 700
COLS = ("id", "title", "body")
NAMES = {("public", "docs")}


def tx(*changes: bytes, lsn: int = 0x100) -> list[bytes]:
    """One transaction of changes to ``public.docs`` (id, title, body), with its relation message."""
    return [begin(lsn, 0, 1), relation(OID, "docs", COLS, ("id",)), *changes, commit(lsn, 0)]


def rekey(old: str, new: str, title: str = "t", body=U) -> bytes:
    """UPDATE of the primary key: the old key only ('K'), the new row with ``body`` (unchanged TOAST by default)."""
    return update(OID, [new, title, body], [old, None, None])


def fold(raw: list[bytes], keys=("id",)):
    return fold_changes((decode(m) for m in raw), keys, relation_names=NAMES)


def states(raw: list[bytes], keys=("id",)) -> dict[tuple, tuple]:
    """key -> (values, deleted, source_key) of the folded batch."""
    return {k: (r.values, r.deleted, r.source_key) for k, r in fold(raw, keys).rows.items()}


# -- the fold -------------------------------------------------------------------------------------


def test_key_change_alone_reads_from_the_old_key() -> None:
    assert states(tx(rekey("1", "2"))) == {
        ("1",): (None, True, None),
        ("2",): (("2", "t", U), False, ("1",)),
    }


def test_key_change_after_insert_in_batch_has_the_value() -> None:
    got = states(tx(insert(OID, ["1", "a", "big"]), rekey("1", "2")))
    assert got[("2",)][0] == ("2", "t", "big")
    assert got[("1",)] == (("1", "a", "big"), True, None)


def test_row_updated_earlier_then_rekeyed_reads_from_its_original_key() -> None:
    got = states(tx(update(OID, ["1", "x", U]), rekey("1", "2", "y")))
    assert got[("2",)] == (("2", "y", U), False, ("1",))
    assert got[("1",)] == (("1", "x", U), True, None)  # a soft delete of 1 reads its own row


def test_chain_reads_from_the_first_key() -> None:
    got = states(tx(rekey("1", "2"), rekey("2", "3"), lsn=0x100) + tx(rekey("3", "4"), lsn=0x200))
    assert got[("4",)] == (("4", "t", U), False, ("1",))
    assert got[("2",)][1:] == (True, ("1",)) and got[("3",)][1:] == (True, ("1",))
    assert got[("1",)] == (None, True, None)


def test_swap_through_a_temporary_key_reads_each_from_the_other() -> None:
    got = states(tx(rekey("1", "9"), rekey("2", "1"), rekey("9", "2")))
    assert got[("1",)] == (("1", "t", U), False, ("2",))
    assert got[("2",)] == (("2", "t", U), False, ("1",))
    assert got[("9",)][1] is True


def test_key_reused_after_delete_does_not_read_the_deleted_row() -> None:
    got = states(tx(delete(OID, ["2", None, None]), rekey("1", "2")))
    assert got[("2",)] == (("2", "t", U), False, ("1",))


def test_update_after_key_change_keeps_the_source_key() -> None:
    got = states(tx(rekey("1", "2"), update(OID, ["2", "again", U])))
    assert got[("2",)] == (("2", "again", U), False, ("1",))


def test_soft_delete_of_a_rekeyed_row_keeps_its_source_key() -> None:
    got = states(tx(rekey("1", "2"), delete(OID, ["2", None, None])))
    assert got[("2",)] == (("2", "t", U), True, ("1",))


def test_insert_after_delete_reads_nothing_elsewhere() -> None:
    got = states(tx(rekey("1", "2"), delete(OID, ["2", None, None]), insert(OID, ["2", "n", "fresh"])))
    assert got[("2",)] == (("2", "n", "fresh"), False, None)


def test_rekey_back_to_the_own_key_keeps_its_source_key() -> None:
    """Key 1 held another row in between, as far as the batch can tell: it is read like any moved row."""
    got = states(tx(rekey("1", "2"), rekey("2", "1")))
    assert got[("1",)] == (("1", "t", U), False, ("1",))


def test_source_lsn_is_the_commit_of_the_first_move() -> None:
    raw = tx(update(OID, ["1", "x", U]), lsn=0x100) + tx(rekey("1", "2"), lsn=0x200) + tx(rekey("2", "3"), lsn=0x300)
    rows = fold(raw).rows
    assert (rows[("3",)].source_key, rows[("3",)].source_lsn, rows[("3",)].commit_lsn) == (("1",), 0x200, 0x300)
    assert (rows[("2",)].source_key, rows[("2",)].source_lsn) == (("1",), 0x200)  # deleted, keeps them
    assert (rows[("1",)].source_key, rows[("1",)].source_lsn) == (None, None)


def test_replica_identity_full_fills_from_the_old_row() -> None:
    raw = [
        begin(0x100, 0, 1),
        relation(OID, "docs", COLS, ("id",), ident=b"f"),
        update(OID, ["2", "t", U], ["1", "old", "big"], b"O"),
        commit(0x100, 0),
    ]
    assert states(raw)[("2",)] == (("2", "t", "big"), False, ("1",))


def test_composite_key() -> None:
    raw = [
        begin(0x100, 0, 1),
        relation(OID, "docs", ("region", "id", "body"), ("region", "id")),
        update(OID, ["eu", "2", U], ["eu", "1", None]),
        update(OID, ["us", "2", U], ["eu", "2", None]),
        commit(0x100, 0),
    ]
    got = states(raw, ("region", "id"))
    assert got[("us", "2")] == (("us", "2", U), False, ("eu", "1"))
    assert got[("eu", "1")][1] is True and got[("eu", "2")][1] is True


def test_take_rows_starts_source_keys_afresh() -> None:
    """A part applied earlier leaves the row under its new key: the next part reads it from there."""
    folder = ChangeFolder(["id"], relation_names=NAMES)
    raw = tx(rekey("1", "2"), rekey("2", "3"))
    for m in raw[:3]:
        folder.feed(decode(m))
    first = folder.take_rows()
    for m in raw[3:]:
        folder.feed(decode(m))
    assert first.rows[("2",)].source_key == ("1",) and first.continues_lsn is None
    assert folder.batch.rows[("3",)].source_key == ("2",)
    assert folder.batch.continues_lsn == 0x100  # the transaction the first part was cut in
    assert fold(raw).continues_lsn is None


# -- write_change_batch against a destination held in memory -------------------------------------------------

TYPES = {
    "id": PgColumn("id", PgType(23, "int4")),
    "title": PgColumn("title", PgType(25, "text")),
    "body": PgColumn("body", PgType(25, "text")),
}


class FakeDestination:
    """Rows by typed key (with ``_pg_lsn``: 1 unless given); records what write_change_batch asked to write."""

    table_name = "public.docs"
    keeps_postgres_types = False  # fetch_rows returns typed values, as DuckDB does

    def __init__(self, rows: dict[tuple, dict]) -> None:
        self.rows = {k: {"_pg_lsn": 1, **r} for k, r in rows.items()}
        self.fetched: list[tuple] = []
        self.written: dict | None = None

    def describe(self) -> str:
        return "replica.docs in memory"

    def fetch_rows(self, key_columns, keys, columns):
        self.fetched += keys
        return {k: {c: self.rows[k][c] for c in columns} for k in keys if k in self.rows}

    def apply_batch(self, **kw) -> None:
        self.written = kw


def applied(raw: list[bytes], dest: FakeDestination, *, soft: bool, batch=None) -> dict[int, dict]:
    write_change_batch(dest, batch if batch is not None else fold(raw), TYPES, soft_deletes=soft)
    table: pa.Table = dest.written["upserts"]
    return {r["id"]: r for r in table.to_pylist()}


@pytest.mark.parametrize("soft", [False, True])
def test_apply_reads_kept_values_under_the_source_key(soft: bool) -> None:
    dest = FakeDestination({(1,): {"title": "a", "body": "A" * 9}, (2,): {"title": "b", "body": "B" * 9}})
    got = applied(tx(rekey("1", "9"), rekey("2", "1"), rekey("9", "2")), dest, soft=soft)
    assert got[1]["body"] == "B" * 9 and got[2]["body"] == "A" * 9
    assert set(dest.fetched) == {(1,), (2,)}  # the soft-deleted temporary key 9 held row 1's values
    if soft:
        assert got[9]["body"] == "A" * 9 and got[9]["_pg_deleted_at"] is not None


@pytest.mark.parametrize("soft", [False, True])
def test_apply_fails_before_writing_when_the_value_is_nowhere(soft: bool) -> None:
    dest = FakeDestination({(2,): {"title": "b", "body": "B" * 9}})
    with pytest.raises(NeedsAttentionError) as err:
        applied(tx(rekey("1", "3"), lsn=0x1A2B), dest, soft=soft)
    msg = str(err.value)
    for part in ("public.docs", "(id) = (3,)", "(id) = (1,)", "column(s) body", "0/1A2B", "full_refresh=true"):
        assert part in msg
    assert dest.written is None


def test_soft_delete_of_an_unknown_row_missing_in_destination_still_applies() -> None:
    dest = FakeDestination({})
    got = applied(tx(delete(OID, ["5", None, None])), dest, soft=True)
    assert got[5]["body"] is None and got[5]["_pg_deleted_at"] is not None


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("written", [0x100, 0x200])
def test_apply_fails_when_the_source_row_was_rewritten_since_the_move(soft: bool, written: int) -> None:
    """An interrupted earlier attempt of the batch swapped bodies already: key 2 holds row 1's body now."""
    dest = FakeDestination(
        {
            (1,): {"title": "b", "body": "B" * 9, "_pg_lsn": written},
            (2,): {"title": "a", "body": "A" * 9, "_pg_lsn": written},
        }
    )
    with pytest.raises(NeedsAttentionError, match="interrupted earlier attempt"):
        applied(tx(rekey("1", "9"), rekey("2", "1"), rekey("9", "2"), lsn=0x100), dest, soft=soft)
    assert dest.written is None


def test_apply_reads_what_the_previous_part_wrote_in_the_same_transaction() -> None:
    dest = FakeDestination({(2,): {"title": "b", "body": "B" * 9, "_pg_lsn": 0x100}})
    batch = fold(tx(rekey("2", "3"), lsn=0x100))
    with pytest.raises(NeedsAttentionError):  # a whole batch: key 2 was written by this transaction already
        applied([], dest, soft=False, batch=batch)
    batch.continues_lsn = 0x100  # a later part: the previous part, cut in this transaction, wrote key 2
    assert applied([], dest, soft=False, batch=batch)[3]["body"] == "B" * 9


def test_soft_deleted_moved_row_not_found_gets_nulls() -> None:
    dest = FakeDestination({})
    got = applied(tx(rekey("1", "2"), delete(OID, ["2", None, None])), dest, soft=True)
    assert got[2]["body"] is None and got[1]["body"] is None
