"""Count a table's own change bytes in captured pgoutput messages (the slot-lag sensor's measure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_pg_replication.source.pgoutput import parse_lsn
from airflow_pg_replication.source.table_changes import (
    MAX_PEEK_MESSAGES,
    MIN_PEEK_MESSAGES,
    SMALLEST_CHANGE_BYTES,
    TableChangeCounter,
    count_table_changes,
    peek_bound,
)

FIXTURE = json.loads((Path(__file__).parent / "data" / "pgoutput_v1_pg15.json").read_text(encoding="utf-8"))
SCHEMA = "pgoutput_cap"
MESSAGES = [bytes.fromhex(m["data"]) for m in FIXTURE["messages"]]
XIDS = FIXTURE["xids"]


def heads(messages):
    """What the sensor's peek ships: Insert/Update/Delete cut to type + relation oid, with their length."""
    return [(m[:5] if m[:1] in (b"I", b"U", b"D") else m, len(m)) for m in messages]


def end_of(label: str) -> int:
    """End LSN of a captured transaction: the peek's lsn column of its Commit row."""
    xid = XIDS[label]
    return parse_lsn([m for m in FIXTURE["messages"] if m["xid"] == xid][-1]["lsn"])


# table -> (changes, change bytes, end LSN of the last transaction before its first change)
EXPECTED = {
    # t1: 2 inserts (205 + 33), t5/t6 updates (230, 38), t7 delete (29), t8/t9 inserts after the
    # column was added (50, 35), t10 update (166); Begin/Commit/Relation/Type never count
    "orders": (8, 205 + 33 + 230 + 38 + 29 + 50 + 35 + 166, None),
    "docs": (2, 4529 + 26, "t1_insert_orders"),  # the TOASTed insert counts whole
    # t4: insert, insert, update, delete; t11 (origin) insert; t12 truncate of parent, audit, child
    "audit": (6, 20 + 15 + 35 + 15 + 30 + 18, "t3_update_doc_title"),
    "parent": (2, 21 + 18, "t9_message"),
    "child": (2, 20 + 18, "t9_message"),
    "by_index": (2, 21 + 16, "t9_message"),
}


@pytest.mark.parametrize("table", sorted(EXPECTED))
@pytest.mark.parametrize("shape", ["whole messages", "heads as the peek ships them"])
def test_counts_only_the_tables_row_changes(table: str, shape: str) -> None:
    messages = MESSAGES if shape == "whole messages" else heads(MESSAGES)
    count = count_table_changes(messages, SCHEMA, table)
    changes, change_bytes, clear_after = EXPECTED[table]
    assert (count.changes, count.change_bytes) == (changes, change_bytes)
    assert count.clear_upto == (end_of(clear_after) if clear_after else None)
    assert count.messages == len(MESSAGES)
    assert count.transactions == len(XIDS)
    assert count.last_end_lsn == end_of("t12_truncate")


def test_other_tables_only_counts_nothing_and_is_clear_to_the_end() -> None:
    count = count_table_changes(heads(MESSAGES), SCHEMA, "not_published")
    assert (count.changes, count.change_bytes) == (0, 0)
    assert count.clear_upto == count.last_end_lsn == end_of("t12_truncate")
    # same name in another schema is another table
    assert count_table_changes(MESSAGES, "public", "orders").changes == 0


def test_a_truncate_counts_for_each_table_it_empties() -> None:
    xid = XIDS["t12_truncate"]
    only_t12 = [bytes.fromhex(m["data"]) for m in FIXTURE["messages"] if m["xid"] == xid]
    for table in ("parent", "audit", "child"):
        count = count_table_changes(only_t12, SCHEMA, table)
        assert (count.changes, count.change_bytes, count.clear_upto) == (1, 18, None)
    assert count_table_changes(only_t12, SCHEMA, "orders").changes == 0


def test_changes_count_by_the_relation_message_of_the_same_peek() -> None:
    # A change names its relation by oid; pgoutput sends the Relation message before the
    # relation's first change in each peek, so a stream starting without it counts nothing.
    xids = {XIDS[k] for k in ("t5_pk_update", "t6_nonkey_update", "t7_delete")}
    without_relation = [bytes.fromhex(m["data"]) for m in FIXTURE["messages"] if m["xid"] in xids]
    assert count_table_changes(without_relation, SCHEMA, "orders").changes == 0
    relation = next(m for m in MESSAGES if m[:1] == b"R" and b"orders\x00" in m)
    count = count_table_changes([relation, *without_relation], SCHEMA, "orders")
    assert (count.changes, count.change_bytes) == (3, 230 + 38 + 29)


def test_a_relation_renamed_away_stops_counting() -> None:
    counter = TableChangeCounter(SCHEMA, "orders")
    for m in MESSAGES[:6]:  # t1: Relation orders, 2 inserts
        counter.feed(m)
    assert counter.count.changes == 2
    orders_rel = MESSAGES[2]
    renamed = orders_rel.replace(b"orders\x00", b"orderz\x00")  # same oid, another name
    counter.feed(renamed)
    counter.feed(MESSAGES[3])  # an insert of that oid
    assert counter.count.changes == 2


def test_clear_upto_stops_at_the_first_change_of_the_table() -> None:
    # docs' first change is in t2: only t1 (orders) lies before it, so the slot may go to t1's end
    count = count_table_changes(heads(MESSAGES), SCHEMA, "docs")
    assert count.clear_upto == end_of("t1_insert_orders") < end_of("t2_insert_doc")


def test_empty_peek() -> None:
    count = count_table_changes([], SCHEMA, "orders")
    assert (count.changes, count.change_bytes, count.messages, count.transactions) == (0, 0, 0, 0)
    assert count.clear_upto is None and count.last_end_lsn is None


def test_peek_bound_holds_min_lag_bytes_of_the_smallest_changes() -> None:
    assert peek_bound(0) == MIN_PEEK_MESSAGES
    assert peek_bound(1) == MIN_PEEK_MESSAGES + 3
    for min_lag in (1, 10, 11, 1000, 12_345):
        bound = peek_bound(min_lag)
        # transactions of one smallest change each (Begin, change, Commit) up to the bound hold min_lag bytes
        assert (bound - MIN_PEEK_MESSAGES) // 3 * SMALLEST_CHANGE_BYTES >= min_lag
    assert peek_bound(10**12) == MAX_PEEK_MESSAGES
