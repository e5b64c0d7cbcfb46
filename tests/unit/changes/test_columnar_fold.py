"""The columnar fold gives exactly the reference fold's final rows, or None when not eligible."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_pg_replication.changes.columnar_fold import ColumnarBatch, fold_columnar
from airflow_pg_replication.changes.reference_fold import fold_changes
from airflow_pg_replication.source.pgoutput import UNCHANGED_TOAST, decode

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "source" / "data" / "pgoutput_v1_pg15.json").read_text(encoding="utf-8")
)
RAW = [bytes.fromhex(m["data"]) for m in FIXTURE["messages"]]
BINARY_RAW = [bytes.fromhex(m["data"]) for m in FIXTURE["binary_messages"]]
SCHEMA = "pgoutput_cap"
FIXTURE_KEYS = {
    "orders": ("region", "order_no"),
    "docs": ("id",),
    "audit": ("id", "msg"),
    "parent": ("id",),
    "child": ("id",),
    "by_index": ("code",),
}


# -- a pgoutput v1 encoder for synthetic streams ----------------------------------------------------


def _tuple(values) -> bytes:
    out = [struct.pack("!H", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(v, bytes):
            out.append(b"b" + struct.pack("!I", len(v)) + v)
        else:
            data = v.encode()
            out.append(b"t" + struct.pack("!I", len(data)) + data)
    return b"".join(out)


def begin(lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", lsn, ts, xid)


def commit(lsn: int, ts: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, lsn, lsn + 48, ts)


def relation(oid: int, name: str, columns, keys=(), ident: bytes = b"d", ns: str = "public") -> bytes:
    out = [
        b"R",
        struct.pack("!I", oid),
        ns.encode(),
        b"\0",
        name.encode(),
        b"\0",
        ident,
        struct.pack("!H", len(columns)),
    ]
    for c in columns:
        out += [struct.pack("!B", c in keys), c.encode(), b"\0", struct.pack("!Ii", 25, -1)]
    return b"".join(out)


def insert(oid: int, values) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + _tuple(values)


def update(oid: int, values, old=None, old_kind: bytes = b"K") -> bytes:
    head = b"U" + struct.pack("!I", oid)
    if old is not None:
        head += old_kind + _tuple(old)
    return head + b"N" + _tuple(values)


def delete(oid: int, old, kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", oid) + kind + _tuple(old)


def truncate(*oids: int) -> bytes:
    return b"T" + struct.pack(f"!IB{len(oids)}I", len(oids), 0, *oids)


ORIGIN = b"O" + struct.pack("!Q", 77) + b"up\0"
TYPE = b"Y" + struct.pack("!I", 9000) + b"public\0mood\0"
NONTX_MESSAGE = b"M" + struct.pack("!BQ", 0, 5) + b"p\0" + struct.pack("!I", 3) + b"abc"


# -- comparison with the reference ------------------------------------------------------------------


def reference_rows(raw, keys, applied_lsn, names):
    batch = fold_changes((decode(m) for m in raw), keys, applied_lsn=applied_lsn, relation_names=names)
    layout = [c.name for c in batch.relation.columns]
    rows = []
    for key, r in batch.rows.items():
        assert r.layout == tuple(layout)
        vals = r.values
        if vals is None:  # unknown (delete without earlier values): the columnar batch has only the key
            vals = tuple(key[keys.index(c)] if c in keys else None for c in layout)
        rows.append((key, vals, r.deleted, r.commit_lsn, r.commit_time))
    counters = (
        batch.relation,
        batch.changes,
        batch.transactions,
        batch.skipped,
        batch.first_commit_lsn,
        batch.last_commit_lsn,
        batch.last_end_lsn,
    )
    return rows, counters


def columnar_rows(cb: ColumnarBatch):
    layout = [c.name for c in cb.relation.columns]
    assert list(cb.values) == layout
    n = len(cb.deleted)
    for arr in cb.values.values():
        assert arr.type == pa.string() and len(arr) == n
    for arr in cb.unchanged.values():
        assert arr.type == pa.bool_() and len(arr) == n and arr.null_count == 0 and any(arr.to_pylist())
    assert cb.deleted.type == pa.bool_() and cb.commit_lsn.type == pa.int64()
    assert cb.commit_time.type == pa.timestamp("us", tz="UTC")
    cols = {c: cb.values[c].to_pylist() for c in layout}
    unch = {c: cb.unchanged[c].to_pylist() if c in cb.unchanged else [False] * n for c in layout}
    lsns, times, deleted = cb.commit_lsn.to_pylist(), cb.commit_time.to_pylist(), cb.deleted.to_pylist()
    rows = []
    for i in range(n):
        vals = tuple(UNCHANGED_TOAST if unch[c][i] else cols[c][i] for c in layout)
        key = tuple(cols[k][i] for k in cb.key_columns)
        rows.append((key, vals, deleted[i], lsns[i], times[i]))
    counters = (
        cb.relation,
        cb.changes,
        cb.transactions,
        cb.skipped,
        cb.first_commit_lsn,
        cb.last_commit_lsn,
        cb.last_end_lsn,
    )
    return rows, counters


def check_same(raw, keys, applied_lsn, names) -> bool:
    """Assert equal results when eligible; returns whether it was."""
    cb = fold_columnar(raw, keys, applied_lsn=applied_lsn, relation_names=names)
    for arrow in _as_arrow(raw):  # the same messages as Arrow binary, as the change reader hands them over
        again = fold_columnar(arrow, keys, applied_lsn=applied_lsn, relation_names=names)
        assert (again is None) == (cb is None)
        if cb is not None:
            assert columnar_rows(again) == columnar_rows(cb)
    if cb is None:
        return False
    assert columnar_rows(cb) == reference_rows(raw, tuple(keys), applied_lsn, names)
    return True


def _as_arrow(raw: list[bytes]):
    """``raw`` as one binary array, as two chunks, and as a slice of a longer array (offset > 0)."""
    half = len(raw) // 2
    yield pa.array(raw, pa.binary())
    yield pa.chunked_array([pa.array(raw[:half], pa.binary()), pa.array(raw[half:], pa.binary())])
    yield pa.array([b"junk", *raw, b"junk"], pa.binary()).slice(1, len(raw))


# -- the captured fixture ---------------------------------------------------------------------------


def _transactions(raw):
    """Split the captured stream at Begin messages (a non-transactional message stays with its neighbour)."""
    txs: list[list[bytes]] = []
    for m in raw:
        if m[:1] == b"B" or not txs:
            txs.append([])
        txs[-1].append(m)
    return txs


TXS = _transactions(RAW)


@pytest.mark.parametrize("table", sorted(FIXTURE_KEYS))
def test_fixture_windows_match_reference(table: str) -> None:
    names = {(SCHEMA, table)}
    begins = [decode(tx[0]).final_lsn for tx in TXS]
    eligible = 0
    for i in range(len(TXS)):
        for j in range(i + 1, len(TXS) + 1):
            raw = [m for tx in TXS[i:j] for m in tx]
            for applied in (None, begins[i], begins[(i + j) // 2]):
                eligible += check_same(raw, FIXTURE_KEYS[table], applied, names)
    assert eligible


def test_fixture_eligibility() -> None:
    docs, orders = {(SCHEMA, "docs")}, {(SCHEMA, "orders")}
    # the whole capture for docs: insert of a TOASTed body, then an update leaving it unchanged
    cb = fold_columnar(RAW, ["id"], applied_lsn=None, relation_names=docs)
    assert cb is not None and cb.changes == 2 and cb.transactions == 12 and not cb.unchanged
    assert cb.values["title"].to_pylist() == ["second"]
    assert cb.values["body"].to_pylist()[0].startswith("00000-lorem-ipsum|")
    # the same update alone: the body stays unchanged TOAST
    cb = fold_columnar(TXS[2], ["id"], applied_lsn=None, relation_names=docs)
    assert cb is None  # no relation message for docs in that transaction
    cb = fold_columnar(TXS[1] + TXS[2], ["id"], applied_lsn=decode(TXS[1][0]).final_lsn, relation_names=docs)
    assert cb is not None and cb.unchanged["body"].to_pylist() == [True] and cb.skipped == 1
    # orders: primary-key update (old 'K' tuple), then a schema change
    assert fold_columnar(RAW, ["region", "order_no"], applied_lsn=None, relation_names=orders) is None
    assert fold_columnar(TXS[0] + TXS[4], ["region", "order_no"], applied_lsn=None, relation_names=orders) is None
    assert (
        fold_columnar(TXS[0] + TXS[5] + TXS[6], ["region", "order_no"], applied_lsn=None, relation_names=orders)
        is not None
    )
    assert fold_columnar(TXS[0] + TXS[7], ["region", "order_no"], applied_lsn=None, relation_names=orders) is None
    assert (
        fold_columnar(RAW[RAW.index(TXS[7][0]) :], ["region", "order_no"], applied_lsn=None, relation_names=orders)
        is not None
    )
    # REPLICA IDENTITY FULL (old 'O' tuples), truncate, binary values, no matching relation
    assert fold_columnar(TXS[3], ["id", "msg"], applied_lsn=None, relation_names={(SCHEMA, "audit")}) is None
    assert fold_columnar(TXS[9] + TXS[11], ["id"], applied_lsn=None, relation_names={(SCHEMA, "parent")}) is None
    assert fold_columnar(TXS[9], ["id"], applied_lsn=None, relation_names={(SCHEMA, "parent")}) is not None
    assert fold_columnar(BINARY_RAW, ["region", "order_no"], applied_lsn=None, relation_names=orders) is None
    assert fold_columnar(RAW, ["id"], applied_lsn=None, relation_names={("public", "docs")}) is None
    assert fold_columnar(RAW, [], applied_lsn=None, relation_names=docs) is None


# -- synthetic streams ------------------------------------------------------------------------------

COLS = ("region", "id", "a", "body", "c", "d")
OID, OTHER = 500, 600
TEXTS = ["", "x", "hello world", "Grüße ☃ 日本語 😀", "0" * 300, "a\tb\nc", "NULL", "'q'"]


def _value(rng: random.Random):
    return None if rng.random() < 0.2 else rng.choice(TEXTS) + str(rng.randrange(3))


def synthetic(seed: int, keys: tuple[str, ...], *, n_tx: int = 40, toast_inserts: bool = True):
    """Random transactions over a small key space; returns (messages, Begin final LSNs)."""
    rng = random.Random(seed)
    key_space = [(r, str(i)) for r in ("eu", "us", "ü") for i in range(4)]
    out = [NONTX_MESSAGE, relation(OTHER, "other", ("k", "v"), ("k",))]
    lsns, lsn, ts = [], 0x1000, 700_000_000_000_000
    rel_at = rng.randrange(3)  # our relation message in the first, second or third transaction
    for t in range(n_tx):
        lsn += rng.randrange(1, 500)
        ts += rng.randrange(0, 10**6)
        lsns.append(lsn)
        out.append(begin(lsn, ts, 1000 + t))
        if rng.random() < 0.2:
            out += [ORIGIN, TYPE]
        if t == rel_at or (t > rel_at and rng.random() < 0.1):  # repeated, identical relation message
            out.append(relation(OID, "t", COLS, keys))
        for _ in range(rng.randrange(0, 7) if t >= rel_at else 0):
            region, ident = rng.choice(key_space)
            op = rng.random()
            if op < 0.1:  # other relation's changes, including ones the columnar path rejects for its own
                out.append(
                    rng.choice(
                        [
                            insert(OTHER, ["1", "v"]),
                            update(OTHER, ["2", "w"], ["1", None]),
                            insert(OTHER, ["3", b"\x00bin"]),
                            delete(OTHER, ["2", None]),
                            truncate(OTHER),
                        ]
                    )
                )
                continue
            if op < 0.3:
                row = [region, ident] + [None] * 4 if "region" in keys else [None, ident] + [None] * 4
                out.append(delete(OID, row))
                continue
            row = [region, ident] + [_value(rng) for _ in range(4)]
            for c in (3, 4, 5):
                if rng.random() < 0.35 and (op >= 0.6 or toast_inserts):
                    row[c] = UNCHANGED_TOAST
            out.append(insert(OID, row) if op < 0.6 else update(OID, row))
        if rng.random() < 0.1:
            out.append(NONTX_MESSAGE)
        out.append(commit(lsn, ts))
    if rng.random() < 0.5:  # a batch may end inside a transaction
        out += [begin(lsn + 100, ts + 5, 9999), insert(OID, ["eu", "0", "tail", None, None, None])]
    return out, lsns


@pytest.mark.parametrize("keys", [("region", "id"), ("id",)])
@pytest.mark.parametrize("seed", range(60))
def test_synthetic_matches_reference(seed: int, keys: tuple[str, ...]) -> None:
    raw, lsns = synthetic(seed, keys, toast_inserts=seed % 2 == 0)
    rng = random.Random(-seed)
    names = {("public", "t")}
    for applied in (None, 0, rng.choice(lsns), lsns[len(lsns) // 2], lsns[-1]):
        assert check_same(raw, list(keys), applied, names)
    assert check_same(raw, list(keys), None, names | {("public", "unrelated")})


def test_empty_and_all_skipped() -> None:
    raw = [begin(10, 0, 1), relation(OID, "t", COLS, ("id",)), commit(10, 0)]
    cb = fold_columnar(raw, ["id"], applied_lsn=None, relation_names={("public", "t")})
    assert cb is not None and len(cb) == 0 and cb.changes == 0 and cb.transactions == 1
    assert all(len(a) == 0 for a in cb.values.values())
    raw, lsns = synthetic(3, ("id",))
    assert check_same(raw, ["id"], lsns[-1], {("public", "t")})
    cb = fold_columnar(raw, ["id"], applied_lsn=lsns[-1], relation_names={("public", "t")})
    assert cb.skipped == len(lsns)


def test_deletes_keep_earlier_values_and_break_toast_chain() -> None:
    row = ["eu", "1", "a", "body", "c", "d"]
    u = UNCHANGED_TOAST
    raw = [
        begin(10, 0, 1),
        relation(OID, "t", COLS, ("id",)),
        insert(OID, row),
        update(OID, ["eu", "1", "a2", u, u, "d2"]),
        delete(OID, [None, "1", None, None, None, None]),
        insert(OID, ["eu", "2", "x", "y", "z", "w"]),
        delete(OID, [None, "2", None, None, None, None]),
        update(OID, ["eu", "2", "x2", u, None, u]),
        delete(OID, [None, "3", None, None, None, None]),
        commit(10, 0),
    ]
    assert check_same(raw, ["id"], None, {("public", "t")})
    cb = fold_columnar(raw, ["id"], applied_lsn=None, relation_names={("public", "t")})
    assert cb.deleted.to_pylist() == [True, False, True]
    assert cb.values["body"].to_pylist() == ["body", None, None]
    assert cb.unchanged["body"].to_pylist() == [False, True, False]
    assert cb.values["id"].to_pylist() == ["1", "2", "3"]


def _base(*changes: bytes) -> list[bytes]:
    return [begin(10, 0, 1), relation(OID, "t", COLS, ("id",)), *changes, commit(10, 0)]


ROW = ["eu", "1", "a", "b", "c", "d"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_base(insert(OID, ROW), truncate(OID)), id="truncate"),
        pytest.param(
            _base(insert(OID, ROW), relation(OID, "t", (*COLS, "e")), insert(OID, [*ROW, "e"])), id="schema-change"
        ),
        pytest.param(_base(update(OID, ROW, ["eu", "2", None, None, None, None])), id="key-change"),
        pytest.param(_base(update(OID, ROW, ROW, b"O")), id="replica-identity-full-update"),
        pytest.param(_base(delete(OID, ROW, b"O")), id="replica-identity-full-delete"),
        pytest.param(_base(insert(OID, ["eu", "1", b"\x01", None, None, None])), id="binary"),
        pytest.param(_base(update(OID, ["eu", UNCHANGED_TOAST, "a", None, None, None])), id="toast-key"),
        pytest.param(
            [begin(10, 0, 1), insert(OID, ROW), relation(OID, "t", COLS, ("id",)), commit(10, 0)],
            id="change-before-relation",
        ),
        pytest.param([relation(OID, "t", COLS, ("id",)), insert(OID, ROW)], id="change-outside-transaction"),
        pytest.param(_base(relation(OID, "renamed", COLS), insert(OID, ROW)), id="renamed"),
        pytest.param(
            [begin(10, 0, 1), relation(OTHER, "x", COLS), insert(OTHER, ROW), commit(10, 0)], id="no-matching-relation"
        ),
        pytest.param(_base(insert(OID, ROW)[:-1]), id="truncated-message"),
        pytest.param(_base(insert(OID, ROW) + b"\0"), id="trailing-bytes"),
        pytest.param(_base(insert(OID, ROW[:5])), id="column-count"),
        pytest.param(_base(b"S" + bytes(8)), id="streaming-message"),
        pytest.param(_base(b""), id="empty-message"),
        pytest.param(
            _base(b"I" + struct.pack("!I", OID) + b"N" + struct.pack("!H", 6) + b"t\0\0\0\x01\xff" + b"n" * 5),
            id="invalid-utf8",
        ),
    ],
)
def test_ineligible_batches_return_none(raw: list[bytes]) -> None:
    assert fold_columnar(raw, ["id"], applied_lsn=None, relation_names={("public", "t")}) is None


def test_missing_or_empty_keys_return_none() -> None:
    raw = _base(insert(OID, ROW))
    names = {("public", "t")}
    assert fold_columnar(raw, ["id"], applied_lsn=None, relation_names=names) is not None
    assert fold_columnar(raw, [], applied_lsn=None, relation_names=names) is None
    assert fold_columnar(raw, ["nope"], applied_lsn=None, relation_names=names) is None
    assert fold_columnar([], ["id"], applied_lsn=None, relation_names=names) is None


def test_skipped_transactions_may_hold_what_is_otherwise_ineligible() -> None:
    names = {("public", "t")}
    raw = [
        begin(10, 0, 1),
        relation(OID, "t", COLS, ("id",)),
        truncate(OID),
        update(OID, ROW, ["eu", "9", None, None, None, None]),
        commit(10, 0),
        begin(20, 5, 2),
        insert(OID, ROW),
        commit(20, 5),
    ]
    assert fold_columnar(raw, ["id"], applied_lsn=None, relation_names=names) is None
    assert check_same(raw, ["id"], 10, names)
