"""Decode real pgoutput (proto 1) bytes captured from PostgreSQL 15 (see data/capture_pgoutput.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_pg_replication.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    Truncate,
    TypeInfo,
    Update,
    decode,
    format_lsn,
    parse_lsn,
)

FIXTURE = json.loads((Path(__file__).parent / "data" / "pgoutput_v1_pg15.json").read_text(encoding="utf-8"))
OIDS = FIXTURE["oids"]
XIDS = FIXTURE["xids"]
STARTED = datetime.fromisoformat(FIXTURE["started_at"])
FINISHED = datetime.fromisoformat(FIXTURE["finished_at"])

# (peek lsn, peek xid, raw bytes, decoded message) per captured row, in peek order.
ROWS = [
    (parse_lsn(m["lsn"]), m["xid"], raw, decode(raw)) for m in FIXTURE["messages"] for raw in [bytes.fromhex(m["data"])]
]
BINARY_ROWS = [bytes.fromhex(m["data"]) for m in FIXTURE["binary_messages"]]

# Values written by capture_pgoutput.py
SCHEMA = "pgoutput_cap"
UNICODE_NOTE = "Grüße \"double\" 'single' \\ back ☃ 日本語 😀"
BIG_BODY = "".join(f"{i:05d}-lorem-ipsum|" for i in range(250))
ORDER_EU = (
    "eu",
    "1",
    UNICODE_NOTE,
    "1234.50",
    "t",
    '{"a": [1, 2], "b": null}',
    '{x,"y z","\\"q\\"",NULL}',
    "\\x00ff10",
    "2024-02-29 12:34:56.789+00",
    "happy",
)
ORDER_US = ("us", "2", "", None, None, None, None, None, None, None)
ORDERS_COLUMNS = [
    # name, type oid (None: the enum), typmod, is_key
    ("region", 25, -1, True),
    ("order_no", 23, -1, True),
    ("note", 25, -1, False),
    ("amount", 1700, ((12 << 16) | 2) + 4, False),  # numeric(12,2)
    ("paid", 16, -1, False),
    ("attrs", 3802, -1, False),
    ("tags", 1009, -1, False),
    ("blob", 17, -1, False),
    ("created_at", 1184, -1, False),
    ("mood", None, -1, False),
]


def txn(label: str) -> list:
    """Decoded messages of the transaction recorded under ``label``."""
    xid = XIDS[label]
    return [msg for _, x, _, msg in ROWS if x == xid]


def txn_rows(label: str) -> list[tuple]:
    xid = XIDS[label]
    return [row for row in ROWS if row[1] == xid]


def changes_raw(label: str) -> list[bytes]:
    """Raw bytes of the Insert/Update/Delete messages of a transaction."""
    return [raw for _, _, raw, msg in txn_rows(label) if isinstance(msg, (Insert, Update, Delete))]


def changes(label: str) -> list:
    """Messages of a transaction without Begin/Commit/Relation/TypeInfo."""
    return [m for m in txn(label) if not isinstance(m, (Begin, Commit, Relation, TypeInfo))]


def expected_orders_columns(extra: bool = False) -> tuple[RelationColumn, ...]:
    cols = [
        RelationColumn(name, OIDS["mood"] if oid is None else oid, typmod, key)
        for name, oid, typmod, key in ORDERS_COLUMNS
    ]
    if extra:
        cols.append(RelationColumn("extra", 23, -1, False))
    return tuple(cols)


# --------------------------------------------------------------------------- fixture sanity


def test_fixture_is_from_postgres_15() -> None:
    assert FIXTURE["server_version"].startswith("15.")
    assert len(ROWS) > 50


def test_every_message_type_present() -> None:
    assert {type(msg) for *_, msg in ROWS} == {
        Begin,
        Commit,
        Origin,
        Relation,
        TypeInfo,
        Insert,
        Update,
        Delete,
        Truncate,
        LogicalMessage,
    }


def test_accepts_memoryview_and_bytearray() -> None:
    for _, _, raw, msg in ROWS:
        assert decode(memoryview(raw)) == msg
        assert decode(bytearray(raw)) == msg
    # a slice of a larger buffer, as when reading from a shared buffer
    _, _, raw, msg = ROWS[3]
    assert decode(memoryview(b"xx" + raw + b"yy")[2:-2]) == msg


# --------------------------------------------------------------------------- Begin / Commit


def test_transaction_framing_matches_peek_columns() -> None:
    by_xid: dict[int, list[tuple]] = defaultdict(list)
    for row in ROWS:
        if row[1] != 0:
            by_xid[row[1]].append(row)
    assert sorted(by_xid) == sorted(XIDS.values())

    previous_end = 0
    previous_time = STARTED
    for xid, rows in sorted(by_xid.items()):
        (begin_lsn, _, _, begin), *middle, (commit_row_lsn, _, _, commit) = rows
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert not any(isinstance(r[3], (Begin, Commit)) for r in middle)
        assert begin.xid == xid
        assert begin.final_lsn == commit.commit_lsn
        assert commit.commit_time == begin.commit_time
        assert commit.flags == 0
        # The peek reports the end of the commit record on the Commit row ...
        assert commit.end_lsn == commit_row_lsn
        assert commit.commit_lsn < commit.end_lsn
        # ... and the transaction's first LSN on the Begin row; changes lie in between.
        change_lsns = [r[0] for r in middle]
        assert begin_lsn <= min(change_lsns)
        assert change_lsns == sorted(change_lsns)
        assert max(change_lsns) < commit.commit_lsn
        # Transactions are replayed in commit order.
        assert commit.end_lsn > previous_end
        assert commit.commit_time >= previous_time
        previous_end, previous_time = commit.end_lsn, commit.commit_time


def test_commit_times_are_utc_and_close_to_capture_time() -> None:
    slack = timedelta(seconds=1)
    for *_, msg in ROWS:
        if isinstance(msg, (Begin, Commit)):
            assert msg.commit_time.tzinfo is timezone.utc
            assert STARTED - slack <= msg.commit_time <= FINISHED + slack


def test_begin_and_commit_exact_bytes() -> None:
    raw = bytes.fromhex("420000000001549a40000303fb84b2db07000002e2")
    assert decode(raw) == Begin(
        final_lsn=0x1549A40,
        commit_time=datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=0x000303FB84B2DB07),
        xid=0x2E2,
    )
    commit = decode(bytes.fromhex("43000000000001549a400000000001549a700000000000000000"))
    assert commit == Commit(0, 0x1549A40, 0x1549A70, datetime(2000, 1, 1, tzinfo=timezone.utc))
    before_epoch = decode(bytes.fromhex("4300" + "00" * 16 + "ffffffffffffffff"))
    assert before_epoch.commit_time == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- Relation / Type


def test_type_message_for_enum_column() -> None:
    assert txn("t1_insert_orders")[1] == TypeInfo(OIDS["mood"], SCHEMA, "mood")


def test_relation_orders_columns_key_flags_and_typmods() -> None:
    rel = txn("t1_insert_orders")[2]
    assert rel == Relation(OIDS["orders"], SCHEMA, "orders", "d", expected_orders_columns())
    assert [c.name for c in rel.columns if c.is_key] == ["region", "order_no"]
    amount = rel.columns[3]
    assert ((amount.typmod - 4) >> 16, (amount.typmod - 4) & 0xFFFF) == (12, 2)


def test_relations_per_replica_identity() -> None:
    relations = {msg.name: msg for *_, msg in ROWS if isinstance(msg, Relation)}
    assert relations["docs"] == Relation(
        OIDS["docs"],
        SCHEMA,
        "docs",
        "d",
        (
            RelationColumn("id", 23, -1, True),
            RelationColumn("title", 25, -1, False),
            RelationColumn("body", 25, -1, False),
        ),
    )
    # REPLICA IDENTITY FULL: every column is part of the identity.
    assert relations["audit"] == Relation(
        OIDS["audit"],
        SCHEMA,
        "audit",
        "f",
        (RelationColumn("id", 23, -1, True), RelationColumn("msg", 25, -1, True)),
    )
    # REPLICA IDENTITY USING INDEX on a varchar(8) column (typmod 8 + 4).
    assert relations["by_index"] == Relation(
        OIDS["by_index"],
        SCHEMA,
        "by_index",
        "i",
        (RelationColumn("code", 1043, 12, True), RelationColumn("v", 23, -1, False)),
    )
    assert relations["child"].columns[1] == RelationColumn("parent_id", 23, -1, False)


def test_alter_table_add_column_sends_new_relation() -> None:
    msgs = txn("t8_add_column")
    assert [type(m) for m in msgs] == [Begin, TypeInfo, Relation, Insert, Commit]
    assert msgs[2] == Relation(OIDS["orders"], SCHEMA, "orders", "d", expected_orders_columns(extra=True))
    assert msgs[3] == Insert(OIDS["orders"], ("ap", "3", "after alter", None, None, None, None, None, None, None, "7"))


# --------------------------------------------------------------------------- Insert / Update / Delete


def test_insert_varied_types_unicode_and_null_vs_empty() -> None:
    msgs = txn("t1_insert_orders")
    assert [type(m) for m in msgs] == [Begin, TypeInfo, Relation, Insert, Insert, Commit]
    assert msgs[3] == Insert(OIDS["orders"], ORDER_EU)
    assert msgs[4] == Insert(OIDS["orders"], ORDER_US)
    assert msgs[3].new[2] == UNICODE_NOTE
    assert msgs[4].new[2] == "" and msgs[4].new[3] is None
    assert all(type(v) is str for v in msgs[3].new)


def test_toast_insert_then_unchanged_toast_update() -> None:
    (insert,) = changes("t2_insert_doc")
    assert insert == Insert(OIDS["docs"], ("1", "first", BIG_BODY))
    msgs = txn("t3_update_doc_title")
    assert [type(m) for m in msgs] == [Begin, Update, Commit]  # relation already sent
    update = msgs[1]
    assert update == Update(OIDS["docs"], ("1", "second", UNCHANGED_TOAST), None, None)
    assert update.new[2] is UNCHANGED_TOAST


def test_replica_identity_full_old_rows() -> None:
    assert changes("t4_audit_full") == [
        Insert(OIDS["audit"], ("1", "a")),
        Insert(OIDS["audit"], ("2", None)),
        Update(OIDS["audit"], new=("1", "b"), old=("1", "a"), old_kind="O"),
        Delete(OIDS["audit"], old=("2", None), old_kind="O"),
    ]


def test_primary_key_update_sends_old_key_tuple() -> None:
    (update,) = changes("t5_pk_update")
    assert update.old_kind == "K"
    assert update.old == ("eu", "1") + (None,) * 8  # only key columns are filled in
    assert update.new == ("eu", "10", *ORDER_EU[2:])


def test_non_key_update_has_no_old_tuple() -> None:
    (update,) = changes("t6_nonkey_update")
    assert update == Update(OIDS["orders"], ("us", "2", "", None, "f") + (None,) * 5)
    assert update.old is None and update.old_kind is None


def test_delete_sends_old_key_tuple() -> None:
    (delete,) = changes("t7_delete")
    assert delete == Delete(OIDS["orders"], ("us", "2") + (None,) * 8, "K")


def test_multi_statement_transaction() -> None:
    msgs = txn("t10_multi")
    assert [type(m) for m in msgs] == [
        Begin,
        Relation,
        Insert,
        Relation,
        Insert,
        Relation,
        Insert,
        Update,
        Delete,
        Commit,
    ]
    assert [m.oid for m in msgs if isinstance(m, Relation)] == [
        OIDS["parent"],
        OIDS["child"],
        OIDS["by_index"],
    ]
    assert changes("t10_multi") == [
        Insert(OIDS["parent"], ("1", "p1")),
        Insert(OIDS["child"], ("1", "1")),
        Insert(OIDS["by_index"], ("k1", "1")),
        Update(OIDS["orders"], ("eu", "10", "multi", *ORDER_EU[3:], "7")),
        Delete(OIDS["by_index"], ("k1", None), "K"),
    ]


def test_binary_tuple_values() -> None:
    # Same transaction as t1, peeked with 'binary' 'true': values arrive as kind 'b'.
    msgs = [decode(raw) for raw in BINARY_ROWS]
    assert [type(m) for m in msgs] == [Begin, TypeInfo, Relation, Insert, Insert, Commit]
    eu, us = msgs[3].new, msgs[4].new
    assert all(type(v) is bytes for v in eu)
    assert eu[:3] == (b"eu", (1).to_bytes(4, "big"), UNICODE_NOTE.encode())
    assert eu[4] == b"\x01" and eu[9] == b"happy"
    assert us == (b"us", (2).to_bytes(4, "big"), b"") + (None,) * 7


# --------------------------------------------------------------------------- Message / Origin / Truncate


def test_transactional_logical_message() -> None:
    rows = txn_rows("t9_message")
    (lsn, _, _, msg) = next(r for r in rows if isinstance(r[3], LogicalMessage))
    assert msg == LogicalMessage(True, lsn, "cap/tx", "hello ☃".encode())
    assert isinstance(rows[0][3], Begin) and rows[1][3] is msg


def test_non_transactional_logical_message() -> None:
    (row,) = [r for r in ROWS if r[1] == 0]
    lsn, _, _, msg = row
    assert msg == LogicalMessage(False, lsn, "cap/nontx", b"\x00\x01\xff")
    index = ROWS.index(row)
    assert isinstance(ROWS[index - 1][3], Commit) and isinstance(ROWS[index + 1][3], Begin)


def test_origin_message_follows_begin() -> None:
    msgs = txn("t11_origin")
    assert [type(m) for m in msgs] == [Begin, Origin, Insert, Commit]
    assert msgs[1] == Origin(parse_lsn(FIXTURE["origin"]["lsn"]), FIXTURE["origin"]["name"])
    assert msgs[1].lsn == 0xABCDEF01


def test_truncate_with_cascade_and_restart_identity() -> None:
    msgs = txn("t12_truncate")
    assert [type(m) for m in msgs] == [Begin, Relation, Relation, Relation, Truncate, Commit]
    truncate = msgs[4]
    assert truncate.cascade is True and truncate.restart_identity is True
    # parent and audit as named, child through CASCADE
    assert sorted(truncate.relation_oids) == sorted([OIDS["parent"], OIDS["audit"], OIDS["child"]])
    assert [m.oid for m in msgs[1:4]] == list(truncate.relation_oids)


def test_truncate_option_bits() -> None:
    head = bytes.fromhex("5400000002")
    oids = bytes.fromhex("0000000100000002")
    assert decode(head + b"\x00" + oids) == Truncate((1, 2), False, False)
    assert decode(head + b"\x01" + oids) == Truncate((1, 2), True, False)
    assert decode(head + b"\x02" + oids) == Truncate((1, 2), False, True)
    assert decode(bytes.fromhex("540000000000")) == Truncate((), False, False)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_every_truncated_prefix_raises(index: int) -> None:
    raw = ROWS[index][2]
    tag = repr(chr(raw[0]))
    for cut in range(1, len(raw)):
        with pytest.raises(PgOutputError, match="offset") as info:
            decode(raw[:cut])
        assert tag in str(info.value)


@pytest.mark.parametrize("index", range(len(ROWS)))
def test_trailing_bytes_raise(index: int) -> None:
    with pytest.raises(PgOutputError, match="trailing bytes at offset"):
        decode(ROWS[index][2] + b"\x00")


def test_empty_input() -> None:
    with pytest.raises(PgOutputError, match="empty"):
        decode(b"")


def test_unknown_message_type() -> None:
    with pytest.raises(PgOutputError, match=r"unknown pgoutput message type b'Z' at offset 0"):
        decode(b"Z\x00\x00")


@pytest.mark.parametrize("tag", [b"S", b"E", b"c", b"A"])
def test_streaming_messages_are_rejected(tag: bytes) -> None:
    with pytest.raises(PgOutputError, match="streaming is not enabled"):
        decode(tag + b"\x00" * 20)


def test_unknown_column_kind() -> None:
    raw = bytearray(txn_rows("t1_insert_orders")[4][2])  # Insert ('us', '2', '', NULL...)
    assert raw[8] == ord("t")
    raw[8] = ord("x")
    with pytest.raises(PgOutputError, match=r"unknown column value kind b'x' at offset 8"):
        decode(bytes(raw))


def test_bad_tuple_markers() -> None:
    insert = bytearray(txn_rows("t1_insert_orders")[4][2])
    insert[5] = ord("K")
    with pytest.raises(PgOutputError, match="expected new tuple marker b'N' at offset 5"):
        decode(bytes(insert))
    delete = bytearray(changes_raw("t7_delete")[0])
    delete[5] = ord("N")
    with pytest.raises(PgOutputError, match="expected old tuple marker"):
        decode(bytes(delete))
    update = bytearray(changes_raw("t5_pk_update")[0])
    update[5] = ord("X")
    with pytest.raises(PgOutputError, match="expected tuple marker"):
        decode(bytes(update))


def test_invalid_utf8() -> None:
    raw = b"I" + bytes.fromhex("00000001") + b"N" + bytes.fromhex("00017400000002") + b"\xc3\x28"
    with pytest.raises(PgOutputError, match="invalid UTF-8"):
        decode(raw)


def test_error_is_value_error() -> None:
    assert issubclass(PgOutputError, ValueError)


# --------------------------------------------------------------------------- values and API


def test_unchanged_toast_sentinel() -> None:
    assert repr(UNCHANGED_TOAST) == "<unchanged toast>"
    assert copy.copy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert UNCHANGED_TOAST != "u" and UNCHANGED_TOAST is not None


def test_messages_are_frozen_slotted_dataclasses() -> None:
    for *_, msg in ROWS:
        assert dataclasses.is_dataclass(msg)
        assert not hasattr(msg, "__dict__")
        first_field = dataclasses.fields(msg)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, first_field, None)
    assert hash(ROWS[0][3]) == hash(decode(ROWS[0][2]))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("16/B374D848", 0x16B374D848),
        ("0/ABCDEF01", 0xABCDEF01),
        ("1/0", 1 << 32),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text
    assert parse_lsn(text.lower()) == value


def test_lsn_text_matches_postgres_for_all_captured_rows() -> None:
    for m in FIXTURE["messages"]:
        assert format_lsn(parse_lsn(m["lsn"])) == m["lsn"]


@pytest.mark.parametrize(
    "text",
    [
        *("", "16", "16/", "/1", "0x1/2", "1/0x2", "1/2/3", "123456789/0"),
        *(" 1/2", "1/2 ", "-1/2", "+1/2", "G/0", "1_0/2", "16\\B374D848"),
    ],
)
def test_parse_lsn_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_format_lsn_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        format_lsn(value)
