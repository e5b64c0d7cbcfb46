"""Splitting a group slot's batch by table: each table's stream folds exactly like the whole batch for it."""

from __future__ import annotations

import random
import struct

import numpy as np
import pyarrow as pa
import pytest

from airflow_pg_replication.changes import stream_split
from airflow_pg_replication.changes.columnar_fold import fold_columnar
from airflow_pg_replication.changes.reference_fold import fold_changes
from airflow_pg_replication.changes.stream_split import SplitBatch, StreamSplitError, split_by_table
from airflow_pg_replication.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Relation,
    Truncate,
    decode,
)
from tests.unit.changes.test_columnar_fold import (
    BINARY_RAW,
    FIXTURE,
    FIXTURE_KEYS,
    NONTX_MESSAGE,
    ORIGIN,
    RAW,
    SCHEMA,
    TYPE,
    begin,
    columnar_rows,
    commit,
    delete,
    insert,
    relation,
    truncate,
    update,
)

TX_MESSAGE = b"M" + struct.pack("!BQ", 1, 5) + b"p\0" + struct.pack("!I", 2) + b"hi"  # transactional


# -- oracles ----------------------------------------------------------------------------------------


def python_split(raw: list[bytes]) -> dict[tuple[str, str], list[bytes]]:
    """The split, message by message: a table owns an OID's messages from its first Relation under its name."""
    owned: dict[tuple[str, str], dict[int, int]] = {}
    out: dict[tuple[str, str], list[bytes]] = {}
    changed: set[tuple[str, str]] = set()
    tx_begin, tx_msgs = b"", {}
    for i, m in enumerate(raw):
        if m[:1] == b"B":
            tx_begin, tx_msgs = m, {}
            continue
        if m[:1] == b"C":
            for key, msgs in tx_msgs.items():
                out.setdefault(key, []).extend([tx_begin, *msgs, m])
            continue
        if m[:1] not in b"RIUDT":
            continue
        msg = decode(m)
        if isinstance(msg, Relation):
            owned.setdefault((msg.namespace, msg.name), {}).setdefault(msg.oid, i)
            oids: tuple[int, ...] = (msg.oid,)
        elif isinstance(msg, Truncate):
            oids = msg.relation_oids
        else:
            oids = (msg.relation_oid,)
        for key, since in owned.items():
            if any(o in since for o in oids):
                tx_msgs.setdefault(key, []).append(m)
                if m[:1] != b"R":
                    changed.add(key)
    return {key: msgs for key, msgs in out.items() if key in changed}


def reference_state(raw: list[bytes], keys, applied, name):
    batch = fold_changes((decode(m) for m in raw), keys, applied_lsn=applied, relation_names={name})
    return list(batch.rows.items()), batch.truncate, batch.relation, batch.changes, batch


def check_split(raw: list[bytes], keys_by_table: dict[tuple[str, str], tuple[str, ...]], applied=(None,)) -> SplitBatch:
    """Split ``raw`` and check every table against the folds of the whole batch (and the message-wise split)."""
    split = split_by_table(pa.array(raw, pa.binary()))
    check_figures(raw, split)
    for arrow in as_arrow(raw):  # the same streams from any form of the batch
        assert streams(split_by_table(arrow)) == streams(split)
    for name, keys in keys_by_table.items():
        table = split.tables.get(name)
        stream = table.messages.to_pylist() if table is not None else []
        for applied_lsn in applied:
            whole = reference_state(raw, keys, applied_lsn, name)
            if table is None:  # no row change of the table in the batch
                assert whole[0] == [] and whole[1] is None and whole[3] == 0
                continue
            part = reference_state(stream, keys, applied_lsn, name)
            assert part[:4] == whole[:4], name
            folded = part[4]  # the stream's own counters: the table's transactions
            assert folded.transactions == table.transactions
            assert folded.first_commit_lsn == table.first_commit_lsn
            assert folded.last_commit_lsn == table.last_commit_lsn
            assert folded.last_end_lsn == table.last_end_lsn
            cb_whole = fold_columnar(raw, keys, applied_lsn=applied_lsn, relation_names={name})
            cb_part = fold_columnar(table.messages, keys, applied_lsn=applied_lsn, relation_names={name})
            assert (cb_part is None) == (cb_whole is None), name
            if cb_part is not None:
                rows_whole, counters_whole = columnar_rows(cb_whole)
                rows_part, counters_part = columnar_rows(cb_part)
                assert rows_part == rows_whole
                assert counters_part[:2] == counters_whole[:2]  # relation, changes
    return split


def check_figures(raw: list[bytes], split: SplitBatch) -> None:
    """Streams as the message-wise split has them; the figures add up."""
    expected = python_split(raw)
    assert set(split.tables) == set(expected)
    commits = [decode(m) for m in raw if m[:1] == b"C"]
    assert split.transactions == len(commits)
    assert split.message_count == len(raw) and split.byte_count == sum(map(len, raw))
    assert split.last_end_lsn == (commits[-1].end_lsn if commits else None)
    assert split.first_commit_lsn == (commits[0].commit_lsn if commits else None)
    for key, table in split.tables.items():
        msgs = table.messages.to_pylist()
        assert msgs == expected[key], key
        assert (table.namespace, table.name) == key
        assert table.messages.type == pa.binary() and table.commit_lsn.type == pa.int64()
        assert table.message_count == len(msgs) == len(table.commit_lsn)
        assert table.byte_count == sum(map(len, msgs))
        assert table.changes == sum(m[:1] in b"IUDT" for m in msgs)
        decoded = [decode(m) for m in msgs]
        lsns, lsn = [], None
        for msg in decoded:
            lsn = msg.final_lsn if isinstance(msg, Begin) else lsn
            lsns.append(lsn)
        assert table.commit_lsn.to_pylist() == lsns
        tx_commits = [msg for msg in decoded if isinstance(msg, Commit)]
        assert table.transactions == len(tx_commits)
        assert table.first_commit_lsn == tx_commits[0].commit_lsn
        assert table.last_commit_lsn == tx_commits[-1].commit_lsn
        assert table.last_end_lsn == tx_commits[-1].end_lsn
        assert {m[:1] for m in msgs} <= {b"B", b"C", b"R", b"I", b"U", b"D", b"T"}


def streams(split: SplitBatch):
    return {
        key: (t.messages.cast(pa.binary()).to_pylist(), t.commit_lsn.to_pylist(), t.changes, t.byte_count)
        for key, t in split.tables.items()
    }


def as_arrow(raw: list[bytes]):
    """``raw`` as a list, chunked (also with an empty chunk), a slice with an offset, large_binary."""
    half = len(raw) // 2
    yield raw
    yield pa.chunked_array([pa.array(raw[:half], pa.binary()), pa.array([], pa.binary()), pa.array(raw[half:])])
    yield pa.array([b"junk", *raw, b"junk"], pa.binary()).slice(1, len(raw))
    yield pa.array(raw, pa.large_binary())


def tx_types(msgs: list[bytes]) -> list[str]:
    return "".join(chr(m[0]) for m in msgs).replace("C", "C ").split()


# -- synthetic group batches --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_synthetic_group_batches_fold_like_the_whole_batch(seed: int) -> None:
    raw, keys, lsns = group_batch(seed, plain=seed % 2 == 1)
    rng = random.Random(seed)
    split = check_split(raw, keys, applied=(None, rng.choice(lsns), lsns[len(lsns) // 2]))
    assert split.tables  # every batch has changes
    for table in split.tables.values():  # every transaction of a stream has a change of its table
        assert all(set(tx[1:-1]) - {"R"} for tx in tx_types(table.messages.to_pylist()))


COLUMNS = ("region", "id", "a", "body")


def group_batch(seed: int, *, n_tx: int = 30, plain: bool = False):
    """Transactions over 3-5 tables as pgoutput sends them in one decoding session; returns
    (messages, keys by table, Begin final LSNs). ``plain``: nothing the columnar fold turns down (no
    key changes, truncates, schema changes, REPLICA IDENTITY FULL), so both folds are compared."""
    rng = random.Random(seed)
    n_tables = rng.randrange(3, 6)
    names = [("public", f"t{i}") if i % 3 else ("other", f"t{i}") for i in range(n_tables)]
    keys = {name: ("region", "id") if i % 2 else ("id",) for i, name in enumerate(names)}
    full = {names[0]} if rng.random() < 0.5 and not plain else set()  # REPLICA IDENTITY FULL: old rows on update/delete
    oid = {name: 7000 + 10 * i for i, name in enumerate(names)}
    cols = {name: COLUMNS for name in names}
    state: dict[tuple[str, str], dict[tuple, list]] = {name: {} for name in names}  # what the table holds
    sent: set[int] = set()
    out = [NONTX_MESSAGE]
    lsns, lsn, ts = [], 0x5000, 750_000_000_000_000

    def schema(name, *, force=False) -> list[bytes]:
        if oid[name] in sent and not force:
            return []
        sent.add(oid[name])
        ident = b"f" if name in full else b"d"
        return [TYPE, relation(oid[name], name[1], cols[name], keys[name], ident=ident, ns=name[0])]

    def row(name, key) -> list:
        values = [None if rng.random() < 0.2 else rng.choice(["v", "wörd", "x" * 50]) + str(rng.randrange(9))]
        values.append(rng.choice(["body", None, "Grüße ☃"]))
        return [key[0], key[1], *values] + [str(rng.randrange(5)) for _ in cols[name][4:]]

    def key_only(name, key) -> list:
        return [key[0], key[1]] + [None] * (len(cols[name]) - 2)

    for t in range(n_tx):
        lsn += rng.randrange(1, 400)
        ts += rng.randrange(10**6)
        kind = rng.random()
        if kind < 0.05:  # an empty transaction, or one with only its origin
            lsns.append(lsn)
            out += [begin(lsn, ts, t), *([ORIGIN] if rng.random() < 0.5 else []), commit(lsn, ts)]
            continue
        lsns.append(lsn)
        out.append(begin(lsn, ts, t))
        if rng.random() < 0.2:
            out.append(ORIGIN)
        touched = rng.sample(names, rng.randrange(1, min(4, n_tables) + 1))
        for _ in range(rng.randrange(1, 9)):
            name = rng.choice(touched)
            rows = state[name]
            op = rng.random()
            key = (rng.choice(["eu", "us"]), str(rng.randrange(5)))
            if plain and (op < 0.07 or 0.6 <= op < 0.75):
                op = rng.choice([0.2, 0.5, 0.8])  # an insert, delete or update instead
            if op < 0.04:  # a schema change: a new relation message in place, before the next change
                cols[name] = COLUMNS if len(cols[name]) > len(COLUMNS) else (*COLUMNS, "e")
                out += schema(name, force=True)
                rows.clear()
                rows[key] = row(name, key)
                out.append(insert(oid[name], rows[key]))
                continue
            if op < 0.07:  # a truncate of one or several tables
                victims = rng.sample(names, rng.randrange(1, 4))
                for v in victims:
                    out += schema(v)
                    state[v].clear()
                out.append(truncate(*(oid[v] for v in victims)))
                continue
            if op < 0.09 and name not in full:  # the table dropped and created again: a new OID, same name
                oid[name] += 1
                rows.clear()
                out += schema(name)
                rows[key] = row(name, key)
                out.append(insert(oid[name], rows[key]))
                continue
            if op < 0.12:
                out.append(TX_MESSAGE)
                continue
            out += schema(name)
            oid_ = oid[name]
            if op < 0.45 or not rows:
                rows[key] = row(name, key)
                out.append(insert(oid_, rows[key]))
            elif op < 0.6:  # a delete (also of a key never seen)
                old = rng.choice([*rows, key])
                prev = rows.pop(old, None)
                out.append(
                    delete(
                        oid_,
                        prev if name in full and prev else key_only(name, old),
                        b"O" if name in full and prev else b"K",
                    )
                )
            elif op < 0.75:  # a key change
                old = rng.choice(list(rows))
                new = row(name, key)
                prev = rows.pop(old)
                rows[key] = new
                out.append(
                    update(oid_, new, prev if name in full else key_only(name, old), b"O" if name in full else b"K")
                )
            else:  # an update of the same key, maybe leaving TOASTed values unchanged
                old = rng.choice(list(rows))
                new = row(name, old)
                sent_new = [UNCHANGED_TOAST if i in (2, 3) and rng.random() < 0.3 else v for i, v in enumerate(new)]
                prev = rows[old]
                rows[old] = [p if s is UNCHANGED_TOAST else s for p, s in zip(prev, sent_new)]
                out.append(update(oid_, sent_new, prev if name in full else None, b"O"))
        out.append(commit(lsn, ts))
        if rng.random() < 0.1:
            out.append(NONTX_MESSAGE)
    return out, keys, lsns


# -- the captured PostgreSQL 15 stream --------------------------------------------------------------


def _transactions(raw):
    txs: list[list[bytes]] = []
    for m in raw:
        if m[:1] == b"B" or not txs:
            txs.append([])
        txs[-1].append(m)
    return txs


FIXTURE_TABLES = {(SCHEMA, t): keys for t, keys in FIXTURE_KEYS.items()}


def test_captured_pg15_stream() -> None:
    begins = [decode(tx[0]).final_lsn for tx in _transactions(RAW)]
    split = check_split(RAW, FIXTURE_TABLES, applied=(None, begins[0], begins[5], begins[-2]))
    assert list(split.tables) == list(FIXTURE_TABLES)
    assert split.transactions == 12 and split.last_end_lsn == decode(RAW[-1]).end_lsn
    oids = FIXTURE["oids"]
    types = {name: tx_types(t.messages.to_pylist()) for (_, name), t in split.tables.items()}
    # orders: three relation messages (the second and third after ALTER TABLE), in place; type messages dropped
    assert types["orders"] == ["BRIIC", "BUC", "BUC", "BDC", "BRIC", "BRIC", "BUC"]
    assert types["docs"] == ["BRIC", "BUC"]
    assert types["audit"] == ["BRIIUDC", "BIC", "BRTC"]  # its origin message dropped; the truncate of 3 tables
    assert types["parent"] == types["child"] == ["BRIC", "BRTC"]
    assert types["by_index"] == ["BRIDC"]
    for name in ("parent", "child", "audit"):
        assert split.tables[(SCHEMA, name)].relation_oids == (oids[name],)
        assert split.tables[(SCHEMA, name)].last_end_lsn == split.last_end_lsn
    assert split.tables[(SCHEMA, "orders")].changes == 8


def test_captured_prefixes() -> None:
    """A peek may stop after any transaction."""
    txs = _transactions(RAW)
    for j in range(1, len(txs) + 1):
        check_split([m for tx in txs[:j] for m in tx], FIXTURE_TABLES)


def test_captured_binary_values() -> None:
    split = check_split(BINARY_RAW, {(SCHEMA, "orders"): FIXTURE_KEYS["orders"]})
    assert tx_types(split.tables[(SCHEMA, "orders")].messages.to_pylist()) == ["BRIIC"]


# -- edge cases -------------------------------------------------------------------------------------

A, B_, C_ = 100, 200, 300
KEYS = {("public", "a"): ("id",), ("public", "b"): ("id",), ("public", "c"): ("id",)}


def rel(oid: int, name: str, cols=("id", "v")) -> bytes:
    return relation(oid, name, cols, ("id",))


def test_schema_change_mid_batch() -> None:
    raw = [
        begin(10, 0, 1),
        rel(A, "a"),
        insert(A, ["1", "x"]),
        rel(B_, "b"),
        insert(B_, ["1", "y"]),
        commit(10, 0),
        begin(20, 0, 2),
        insert(B_, ["2", "y"]),
        rel(A, "a", ("id", "v", "w")),
        insert(A, ["2", "x", "w"]),
        update(A, ["1", "x2", "w2"]),
        commit(20, 0),
    ]
    split = check_split(raw, KEYS)
    a = split.tables[("public", "a")].messages.to_pylist()
    assert a == [*raw[:3], raw[5], raw[6], *raw[8:]]
    assert split.tables[("public", "b")].messages.to_pylist() == [raw[0], *raw[3:5], raw[5], raw[6], raw[7], raw[11]]


def test_truncate_of_several_tables() -> None:
    raw = [
        begin(10, 0, 1),
        rel(A, "a"),
        insert(A, ["1", "x"]),
        rel(B_, "b"),
        insert(B_, ["1", "x"]),
        commit(10, 0),
        begin(20, 0, 2),
        rel(C_, "c"),
        truncate(A, C_, B_),
        insert(A, ["2", "x"]),
        commit(20, 0),
        begin(30, 0, 3),
        truncate(C_),
        commit(30, 0),
    ]
    split = check_split(raw, KEYS, applied=(None, 10, 20))
    tables = split.tables
    assert tx_types(tables[("public", "a")].messages.to_pylist()) == ["BRIC", "BTIC"]
    assert tx_types(tables[("public", "b")].messages.to_pylist()) == ["BRIC", "BTC"]
    assert tx_types(tables[("public", "c")].messages.to_pylist()) == ["BRTC", "BTC"]
    assert [tables[k].changes for k in KEYS] == [3, 2, 2]
    assert fold_changes(map(decode, tables[("public", "c")].messages.to_pylist()), ["id"]).truncate is not None


def test_tables_without_changes_and_transactions_not_touching_a_table() -> None:
    raw = [
        NONTX_MESSAGE,
        begin(10, 0, 1),
        rel(A, "a"),
        rel(C_, "c"),  # a relation message with no change (a partition sent with its root): no stream
        insert(A, ["1", "x"]),
        commit(10, 0),
        begin(15, 0, 9),  # an empty transaction
        commit(15, 0),
        begin(20, 0, 2),
        ORIGIN,
        rel(B_, "b"),
        insert(B_, ["1", "x"]),
        commit(20, 0),
        begin(30, 0, 3),
        update(A, ["1", "y"]),
        commit(30, 0),
    ]
    split = check_split(raw, KEYS)
    assert set(split.tables) == {("public", "a"), ("public", "b")}
    assert tx_types(split.tables[("public", "a")].messages.to_pylist()) == ["BRIC", "BUC"]
    assert split.tables[("public", "a")].commit_lsn.to_pylist() == [10] * 4 + [30] * 3
    assert tx_types(split.tables[("public", "b")].messages.to_pylist()) == ["BRIC"]
    assert split.transactions == 4 and split.last_end_lsn == 30 + 48
    assert split.tables[("public", "b")].last_end_lsn == 20 + 48


def test_relation_message_in_a_transaction_without_changes_of_the_table_is_kept() -> None:
    """pgoutput sends a Relation message with a change of the table; should one come alone, the fold
    still needs it for the table's later changes: its transaction stays in the stream (Begin, Relation, Commit)."""
    raw = [
        begin(10, 0, 1),
        rel(A, "a"),
        rel(B_, "b"),
        insert(B_, ["1", "x"]),
        commit(10, 0),
        begin(20, 0, 2),
        insert(A, ["1", "x"]),
        commit(20, 0),
    ]
    split = check_split(raw, KEYS)
    assert split.tables[("public", "a")].messages.to_pylist() == [raw[0], raw[1], raw[4], *raw[5:]]
    assert split.tables[("public", "a")].transactions == 2 and split.tables[("public", "a")].changes == 1


def test_origin_type_and_logical_messages_are_dropped() -> None:
    raw = [
        NONTX_MESSAGE,
        begin(10, 0, 1),
        ORIGIN,
        TX_MESSAGE,
        TYPE,
        rel(A, "a"),
        TX_MESSAGE,
        insert(A, ["1", "x"]),
        NONTX_MESSAGE,  # non-transactional messages are sent as decoded, even between a transaction's changes
        commit(10, 0),
        NONTX_MESSAGE,
    ]
    split = check_split(raw, KEYS)
    assert split.tables[("public", "a")].messages.to_pylist() == [raw[1], raw[5], raw[7], raw[9]]
    assert split.message_count == len(raw) and split.byte_count == sum(map(len, raw))


def test_dropped_and_recreated_table_keeps_one_stream() -> None:
    raw = [
        begin(10, 0, 1),
        rel(A, "a"),
        insert(A, ["1", "x"]),
        commit(10, 0),
        begin(20, 0, 2),
        rel(A + 1, "a"),
        insert(A + 1, ["2", "x"]),
        commit(20, 0),
    ]
    split = check_split(raw, KEYS)
    assert split.tables[("public", "a")].relation_oids == (A, A + 1)
    assert split.tables[("public", "a")].messages.to_pylist() == raw


def test_renamed_table_follows_the_reference_fold() -> None:
    """After a rename the OID's changes belong to the old name too: the fold for it keeps reading them."""
    raw = [
        begin(10, 0, 1),
        rel(A, "a"),
        insert(A, ["1", "x"]),
        commit(10, 0),
        begin(20, 0, 2),
        rel(A, "renamed"),
        insert(A, ["2", "x"]),
        commit(20, 0),
    ]
    split = split_by_table(raw)
    check_figures(raw, split)
    assert split.tables[("public", "a")].messages.to_pylist() == raw
    assert split.tables[("public", "renamed")].messages.to_pylist() == raw[4:]
    for name in (("public", "a"), ("public", "renamed")):
        stream = split.tables[name].messages.to_pylist()
        assert reference_state(stream, ("id",), None, name)[:4] == reference_state(raw, ("id",), None, name)[:4]
    assert (
        fold_columnar(
            split.tables[("public", "a")].messages, ["id"], applied_lsn=None, relation_names={("public", "a")}
        )
        is None
    )


def test_empty_batch() -> None:
    for empty in ([], pa.array([], pa.binary()), pa.chunked_array([], pa.binary())):
        split = split_by_table(empty)
        assert split == SplitBatch({}, 0, None, None, None, 0, 0)
    split = split_by_table([NONTX_MESSAGE, begin(10, 0, 1), commit(10, 0)])
    assert not split.tables and split.transactions == 1 and split.last_end_lsn == 58


def test_incomplete_last_transaction() -> None:
    whole = [begin(10, 0, 1), rel(A, "a"), insert(A, ["1", "x"]), commit(10, 0)]
    tail = [begin(20, 0, 2), rel(B_, "b"), insert(B_, ["1", "x"]), insert(A, ["2", "x"])]
    with pytest.raises(StreamSplitError, match=r"ends inside a transaction \(Begin at index 4"):
        split_by_table(whole + tail)
    split = split_by_table(whole + tail, allow_incomplete=True)
    assert split.incomplete_messages == 4 and split.message_count == 8 and split.transactions == 1
    assert list(split.tables) == [("public", "a")] and split.tables[("public", "a")].messages.to_pylist() == whole
    assert split_by_table([NONTX_MESSAGE, *tail], allow_incomplete=True).tables == {}


def test_large_batches_fall_back_to_a_take_per_table(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _, _ = group_batch(1)
    expected = streams(split_by_table(raw))
    monkeypatch.setattr(stream_split, "_OFFSET_LIMIT", 0)
    assert streams(split_by_table(raw)) == expected
    assert streams(split_by_table(pa.array(raw, pa.large_binary()))) == expected


def test_only_relation_and_truncate_messages_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _, _ = group_batch(2)
    decoded: list[bytes] = []

    def counting(data):
        decoded.append(bytes(data))
        return decode(data)

    monkeypatch.setattr(stream_split, "decode", counting)
    split_by_table(pa.array(raw, pa.binary()))
    assert sorted(decoded) == sorted(m for m in raw if m[:1] in b"RT")


def test_streams_make_change_log_segments() -> None:
    segments = pytest.importorskip("airflow_pg_replication.changelog.segments")
    split = split_by_table(RAW)
    for table in split.tables.values():
        data, _ = segments.encode_segment(
            table.commit_lsn, table.messages, last_end_lsn=table.last_end_lsn, changes=table.changes
        )
        read, meta2 = segments.decode_segment(data)
        assert read.column("data").to_pylist() == table.messages.to_pylist()
        assert (meta2.first_commit_lsn, meta2.last_commit_lsn) == (table.first_commit_lsn, table.last_commit_lsn)


# -- bad input --------------------------------------------------------------------------------------


def _ok(*changes: bytes) -> list[bytes]:
    return [begin(10, 0, 1), rel(A, "a"), *changes, commit(10, 0)]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(_ok(b"S" + bytes(8)), r"streaming pgoutput message type 'S' at index 2", id="stream-start"),
        pytest.param(_ok(b"E"), r"streaming .* type 'E'", id="stream-stop"),
        pytest.param(_ok(b"c" + bytes(29)), r"streaming .* type 'c'.*proto_version 1", id="stream-commit"),
        pytest.param(_ok(b"A" + bytes(8)), r"streaming .* type 'A'", id="stream-abort"),
        pytest.param(_ok(b"P" + bytes(8)), r"unknown pgoutput message type b'P' at index 2", id="unknown"),
        pytest.param(_ok(b""), r"empty pgoutput message at index 2", id="empty"),
        pytest.param(
            [begin(10, 0, 1), insert(A, ["1", "x"]), rel(A, "a"), commit(10, 0)],
            r"Insert message at index 1 of relation OID 100 with no Relation message for it earlier",
            id="change-before-relation",
        ),
        pytest.param(_ok(update(B_, ["1", "x"])), r"Update message at index 2 of relation OID 200", id="no-relation"),
        pytest.param(
            [begin(10, 0, 1), delete(A, ["1", None]), commit(10, 0)], r"Delete .* OID 100", id="no-relation-at-all"
        ),
        pytest.param(_ok(truncate(A, B_)), r"Truncate message at index 2 of relation OID 200", id="truncate-unknown"),
        pytest.param(
            [rel(A, "a"), begin(10, 0, 1), insert(A, ["1", "x"]), commit(10, 0)],
            r"Relation message at index 0 outside any transaction",
            id="relation-before-begin",
        ),
        pytest.param(
            [*_ok(), insert(A, ["1", "x"])], r"Insert message at index 3 outside any transaction", id="change-after"
        ),
        pytest.param(
            [*_ok(), ORIGIN, *_ok()], r"Origin message at index 3 outside any transaction", id="origin-between"
        ),
        pytest.param([commit(10, 0), *_ok()], r"Commit at index 0 without a Begin", id="commit-first"),
        pytest.param(
            [begin(10, 0, 1), rel(A, "a"), begin(20, 0, 2), commit(20, 0)],
            r"Begin at index 2 inside the transaction begun at index 0",
            id="nested-begin",
        ),
        pytest.param(_ok()[:-1], r"ends inside a transaction", id="no-commit"),
        pytest.param(
            [begin(10, 0, 1), rel(A, "a"), commit(11, 0)],
            r"commit LSN 0xb, its Begin at index 0 final LSN 0xa",
            id="lsn",
        ),
        pytest.param(
            [begin(10, 0, 1)[:-1], commit(10, 0)], r"malformed Begin message at index 0: 20 bytes", id="begin"
        ),
        pytest.param(
            [begin(10, 0, 1), commit(10, 0) + b"\0"], r"malformed Commit .* 27 bytes, expected 26", id="commit"
        ),
        pytest.param(_ok(b"I\0\0\0"), r"malformed Insert message at index 2: 4 bytes, expected at least 5", id="short"),
        pytest.param(_ok(rel(B_, "b")[:-3]), r"message at index 2: truncated pgoutput 'R' message", id="relation"),
        pytest.param(_ok(truncate(A) + b"\0"), r"message at index 2: .*trailing bytes", id="truncate"),
    ],
)
def test_bad_batches_raise(raw: list[bytes], error: str) -> None:
    with pytest.raises(StreamSplitError, match=error):
        split_by_table(pa.array(raw, pa.binary()))


def test_bad_arrays_raise() -> None:
    with pytest.raises(StreamSplitError, match=r"null pgoutput message at index 1"):
        split_by_table(pa.array([begin(10, 0, 1), None, commit(10, 0)], pa.binary()))
    with pytest.raises(StreamSplitError, match=r"must be an Arrow binary array, got string"):
        split_by_table(pa.array(["B"]))
    with pytest.raises(StreamSplitError, match=r"must be bytes"):
        split_by_table([begin(10, 0, 1), 3])
    assert issubclass(StreamSplitError, ValueError)


def test_many_messages_over_many_tables() -> None:
    msgs = []
    for t in range(10):
        msgs.append(rel(A + t, f"t{t}"))
    body = [insert(A + t % 10, [str(t), "v"]) for t in range(50)]
    raw = []
    for i in range(2000):
        raw += [begin(100 + i, 0, i), *(msgs if i == 0 else []), *body, commit(100 + i, 0)]
    arr = pa.array(raw, pa.binary())
    split = split_by_table(arr)
    assert len(split.tables) == 10 and split.message_count == len(raw) > 100_000
    assert all(t.changes == 10_000 and t.transactions == 2000 for t in split.tables.values())
    first = split.tables[("public", "t0")].commit_lsn.to_numpy()
    assert np.all(np.diff(first) >= 0)
