"""Split a batch of pgoutput v1 messages of many tables into one stream per table, vectorised.

A table group's capture peeks whole transactions from one slot whose publication holds all the
group's tables, and writes each table's part of the stream to its change log. A table's part is what
a slot of its own would have given: for every transaction that touches the table, its Begin, the
table's Relation messages and row changes (and Truncates naming it) in their original order, and its
Commit. Folding a table's part (``fold_columnar`` / ``fold_changes`` with
``relation_names={(namespace, name)}``) gives the same rows as folding the whole batch for it.

The work is done column-wise with numpy over the joined message bytes (as in
:mod:`~airflow_pg_replication.changes.columnar_fold`): per message its type, transaction and
relation OID; per table the positions of its messages, then one Arrow ``take``. Only Relation and
Truncate messages, which are rare, are decoded one by one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
import pyarrow as pa

from airflow_pg_replication.changes.columnar_fold import _be, _joined
from airflow_pg_replication.source.pgoutput import PgOutputError, Relation, Truncate, decode

__all__ = ["SplitBatch", "StreamSplitError", "TableStream", "split_by_table"]

_B, _C, _R, _I, _U, _D, _T = (ord(c) for c in "BCRIUDT")
_NAMES = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "logical decoding message",
}
_KNOWN = np.zeros(256, dtype=bool)
_KNOWN[list(_NAMES)] = True
_IN_TRANSACTION = np.zeros(256, dtype=bool)  # sent only between a Begin and its Commit
_IN_TRANSACTION[[ord(c) for c in "ORYIUDT"]] = True
_STREAMING = frozenset(b"SEcA")
_BEGIN_LEN, _COMMIT_LEN = 21, 26
_M = TypeVar("_M", Relation, Truncate)
_OFFSET_LIMIT = 2**31 - 1  # largest data size of a pa.binary() array (32-bit offsets)


class StreamSplitError(PgOutputError):
    """The batch is not a whole peek result of pgoutput v1 messages (malformed, misordered or streaming)."""


@dataclass(frozen=True)
class TableStream:
    """One table's part of a batch: its transactions' Begin/Commit, its Relation and row messages."""

    namespace: str
    name: str
    messages: pa.Array  # binary (large_binary for a large_binary batch): the table's stream, in batch order
    commit_lsn: pa.Array  # int64 per message: Begin.final_lsn of the message's transaction
    relation_oids: tuple[int, ...]  # OIDs the table had in the batch (a dropped and re-created table has two)
    message_count: int
    byte_count: int
    changes: int  # Insert, Update and Delete messages, and Truncates naming the table
    transactions: int
    first_commit_lsn: int
    last_commit_lsn: int
    last_end_lsn: int  # end LSN of the Commit of the table's last transaction


@dataclass(frozen=True)
class SplitBatch:
    """A batch split by table; ``tables`` holds only tables with a row change or Truncate in the batch."""

    tables: dict[tuple[str, str], TableStream]  # by (namespace, name), in order of first Relation message
    transactions: int  # whole transactions (Commits) in the batch
    first_commit_lsn: int | None
    last_commit_lsn: int | None
    last_end_lsn: int | None  # end LSN of the batch's last Commit: where the slot may advance to
    message_count: int
    byte_count: int
    incomplete_messages: int = 0  # messages of an unfinished last transaction, left out (allow_incomplete)


def split_by_table(
    messages: pa.Array | pa.ChunkedArray | Sequence[bytes],
    *,
    allow_incomplete: bool = False,
) -> SplitBatch:
    """Split raw pgoutput v1 messages (an Arrow binary array, as a slot peek returns them) by table.

    A table is known by the (namespace, name) of its Relation messages; it owns the messages of a
    relation OID from that OID's first Relation message under its name on, as ``fold_changes`` with
    ``relation_names={(namespace, name)}`` reads them. Origin, Type and logical decoding messages
    are dropped, so are transactions with none of the table's messages. (A transaction with only a
    Relation message of the table stays in its stream: pgoutput sends one only with a change of the
    table, but should one come alone, the fold needs it for the table's later changes.)

    The batch must be whole transactions (a peek's ``upto_nchanges`` and ``upto_lsn`` only stop at a
    commit). With ``allow_incomplete`` an unfinished last transaction is left out instead, and its
    messages counted in ``incomplete_messages``: the slot advances no further than ``last_end_lsn``,
    so the next peek returns it again.

    Raises :class:`StreamSplitError` for null, empty, unknown, streaming (proto 2+) or malformed
    messages, for Begin/Commit out of order, for a change outside a transaction and for a change of
    a relation OID with no Relation message before it in the batch.
    """
    arr = _binary_array(messages)
    n = len(arr)
    if n == 0:
        return SplitBatch({}, 0, None, None, None, 0, 0)
    joined, lens = _joined(arr)
    empty = np.flatnonzero(lens == 0)
    if len(empty):
        raise StreamSplitError(f"empty pgoutput message at index {empty[0]}")
    buf = np.frombuffer(joined, dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    types = buf[starts]
    _check_types(types)

    # -- transactions: Begin and Commit alternate, row messages only inside -----------------------
    is_begin, is_commit = types == _B, types == _C
    bidx, cidx = np.flatnonzero(is_begin), np.flatnonzero(is_commit)
    _check_lengths(bidx, types, lens, _BEGIN_LEN)
    _check_lengths(cidx, types, lens, _COMMIT_LEN)
    _check_alternation(types, np.flatnonzero(is_begin | is_commit))
    outside = _between_transactions(bidx, cidx, n)
    outside = outside[_IN_TRANSACTION[types[outside]]]
    if len(outside):
        i = int(outside[0])
        raise StreamSplitError(f"{_NAMES[types[i]]} message at index {i} outside any transaction")
    limit = n
    if len(bidx) > len(cidx):  # the batch ends inside a transaction
        limit = int(bidx[-1])
        if not allow_incomplete:
            raise StreamSplitError(
                f"the batch ends inside a transaction (Begin at index {limit}, no Commit): a slot peek "
                "returns whole transactions; pass allow_incomplete=True to leave it out"
            )
        bidx = bidx[: len(cidx)]
    final_lsn = _be(joined, starts[bidx] + 1, 8)
    commit_lsn = _be(joined, starts[cidx] + 2, 8)
    end_lsn = _be(joined, starts[cidx] + 10, 8)
    mismatch = np.flatnonzero(final_lsn != commit_lsn)
    if len(mismatch):
        k = int(mismatch[0])
        raise StreamSplitError(
            f"Commit at index {cidx[k]} has commit LSN {commit_lsn[k]:#x}, its Begin at index {bidx[k]} "
            f"final LSN {final_lsn[k]:#x}"
        )
    txn = np.cumsum(is_begin[:limit], dtype=np.int32) - 1  # transaction of each message (Begin, Commit too)
    types, lens, starts = types[:limit], lens[:limit], starts[:limit]

    # -- relation OIDs: Relation (decoded, few) and row messages ------------------------------------
    with_oid = (types == _R) | (types == _I) | (types == _U) | (types == _D)
    short = np.flatnonzero(lens < 5)  # few if any: test those only
    _check_lengths(short[with_oid[short]], types, lens, 5, at_least=True)
    has_oid = np.flatnonzero(with_oid)
    oids = _be(joined, starts[has_oid] + 1, 4)
    relations = [(i, _decode(buf, starts, lens, i, Relation)) for i in np.flatnonzero(types == _R).tolist()]
    truncates = [(i, _decode(buf, starts, lens, i, Truncate)) for i in np.flatnonzero(types == _T).tolist()]

    known = np.unique(np.array([rel.oid for _, rel in relations], dtype=np.int64))
    first_relation = np.full(len(known), limit, dtype=np.int64)  # first Relation message of each OID
    for i, rel in reversed(relations):
        first_relation[np.searchsorted(known, rel.oid)] = i
    code = np.searchsorted(known, oids)
    if len(known):
        code = np.minimum(code, len(known) - 1)
        unrelated = (known[code] != oids) | (has_oid < first_relation[code])
    else:
        unrelated = np.ones(len(oids), dtype=bool)
    if unrelated.any():
        k = int(np.flatnonzero(unrelated)[0])
        _no_relation(int(has_oid[k]), int(oids[k]), _NAMES[types[has_oid[k]]])
    for i, trunc in truncates:
        for oid in trunc.relation_oids:
            j = int(np.searchsorted(known, oid))
            if j == len(known) or known[j] != oid or first_relation[j] > i:
                _no_relation(i, oid, "Truncate")

    # -- the messages of each OID, in batch order (a stable sort by OID) ---------------------------
    order = np.argsort(code.astype(np.uint16 if len(known) <= 2**16 else np.int64), kind="stable")
    by_oid = has_oid[order]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(code, minlength=len(known)))))

    # a table owns an OID's messages from the OID's first Relation message under the table's name on
    owned: dict[tuple[str, str], dict[int, int]] = {}
    relations_of: dict[int, list[int]] = {}  # Relation message indices of each OID
    for i, rel in relations:
        owned.setdefault((rel.namespace, rel.name), {}).setdefault(rel.oid, i)
        relations_of.setdefault(rel.oid, []).append(i)

    chosen: list[tuple[tuple[str, str], tuple[int, ...], int, np.ndarray]] = []  # key, OIDs, changes, positions
    for key, since in owned.items():
        pieces, n_relations = [], 0
        for oid, start in since.items():
            j = int(np.searchsorted(known, oid))
            pos = by_oid[bounds[j] : bounds[j + 1]]
            pieces.append(pos[np.searchsorted(pos, start) :])
            n_relations += len(relations_of[oid]) - bisect_left(relations_of[oid], start)
        trunc_pos = [i for i, t in truncates if any(since.get(o, limit) <= i for o in t.relation_oids)]
        if trunc_pos:
            pieces.append(np.array(trunc_pos, dtype=np.int64))
        pos = np.sort(np.concatenate(pieces), kind="stable") if len(pieces) > 1 else pieces[0]
        if len(pos) > n_relations:  # a row change or Truncate
            chosen.append((key, tuple(since), len(pos) - n_relations, pos))
    tables: dict[tuple[str, str], TableStream] = {}
    if chosen:
        streams = _frame([pos for *_, pos in chosen], txn, bidx, cidx)
        streams.take(arr, lens)
        lsn = pa.array(np.repeat(final_lsn[streams.tx], streams.per_tx), type=pa.int64())
        for k, (key, rel_oids, changes, _) in enumerate(chosen):
            start, size = int(streams.out_start[k]), int(streams.out_size[k])
            first, last = streams.tx[streams.tx_start[k]], streams.tx[streams.tx_start[k + 1] - 1]
            messages = streams.messages[k]
            tables[key] = TableStream(
                namespace=key[0],
                name=key[1],
                messages=messages,
                commit_lsn=lsn.slice(start, size),
                relation_oids=rel_oids,
                message_count=size,
                byte_count=_byte_count(messages),
                changes=changes,
                transactions=int(streams.tx_start[k + 1] - streams.tx_start[k]),
                first_commit_lsn=int(final_lsn[first]),
                last_commit_lsn=int(final_lsn[last]),
                last_end_lsn=int(end_lsn[last]),
            )

    return SplitBatch(
        tables,
        transactions=len(cidx),
        first_commit_lsn=int(commit_lsn[0]) if len(cidx) else None,
        last_commit_lsn=int(commit_lsn[-1]) if len(cidx) else None,
        last_end_lsn=int(end_lsn[-1]) if len(cidx) else None,
        message_count=n,
        byte_count=int(ends[-1]),
        incomplete_messages=n - limit,
    )


@dataclass
class _Framed:
    """The streams of all tables back to back: message indices, and where each table's part is."""

    out: np.ndarray  # message indices into the batch
    out_start: np.ndarray  # per table: where its stream starts in ``out`` (and its size)
    out_size: np.ndarray
    tx: np.ndarray  # per transaction of a stream (a batch transaction once per table it touches)
    per_tx: np.ndarray  # its messages in the stream
    tx_start: np.ndarray  # per table, and one past the last: its first entry in ``tx``
    messages: list[pa.Array] = field(default_factory=list)  # per table, after take()

    def take(self, arr: pa.Array, lens: np.ndarray) -> None:
        """The streams' messages: one take, each table's a zero-copy slice of it, unless all streams
        together overflow 32-bit offsets (a Begin, Commit or Truncate may be in several streams)."""
        ends = self.out_start + self.out_size
        if pa.types.is_large_binary(arr.type) or int(lens[self.out].sum()) <= _OFFSET_LIMIT:
            every = arr.take(pa.array(self.out, type=pa.int64()))
            self.messages = [every.slice(a, b - a) for a, b in zip(self.out_start.tolist(), ends.tolist())]
        else:  # a table's stream is at most the batch: no message is twice in it
            self.messages = [
                arr.take(pa.array(self.out[a:b], type=pa.int64()))
                for a, b in zip(self.out_start.tolist(), ends.tolist())
            ]


def _frame(positions: list[np.ndarray], txn: np.ndarray, bidx: np.ndarray, cidx: np.ndarray) -> _Framed:
    """Each table's messages (ascending ``positions``) framed by the Begin and Commit of their transactions."""
    sizes = np.array([len(p) for p in positions], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    pos = np.concatenate(positions)
    t = txn[pos]
    first = np.ones(len(pos), dtype=bool)  # the first message of a table's transaction
    first[1:] = t[1:] != t[:-1]
    first[starts] = True
    group = np.cumsum(first) - 1
    heads = np.flatnonzero(first)
    tails = np.append(heads[1:], len(pos)) - 1
    tx = t[heads]
    out = np.empty(len(pos) + 2 * len(tx), dtype=np.int64)
    out[np.arange(len(pos)) + 2 * group + 1] = pos
    out[heads + 2 * np.arange(len(tx))] = bidx[tx]
    out[tails + 2 * np.arange(len(tx)) + 2] = cidx[tx]
    tx_start = np.append(group[starts], len(tx))
    return _Framed(
        out=out,
        out_start=starts + 2 * tx_start[:-1],
        out_size=sizes + 2 * np.diff(tx_start),
        tx=tx,
        per_tx=tails - heads + 3,
        tx_start=tx_start,
    )


def _byte_count(messages: pa.Array) -> int:
    width = np.int64 if pa.types.is_large_binary(messages.type) else np.int32
    offsets = np.frombuffer(messages.buffers()[1], dtype=width)[messages.offset :]
    return int(offsets[len(messages)] - offsets[0])


def _binary_array(messages: pa.Array | pa.ChunkedArray | Sequence[bytes]) -> pa.Array:
    if isinstance(messages, pa.ChunkedArray):
        arr = messages.combine_chunks()
    elif isinstance(messages, pa.Array):
        arr = messages
    else:
        try:
            arr = pa.array(messages, type=pa.binary())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StreamSplitError(f"pgoutput messages must be bytes: {exc}") from None
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise StreamSplitError(f"pgoutput messages must be an Arrow binary array, got {arr.type}")
    if arr.null_count:
        raise StreamSplitError(f"null pgoutput message at index {arr.is_null().index(True).as_py()}")
    return arr


def _check_types(types: np.ndarray) -> None:
    bad = np.flatnonzero(~_KNOWN[types])
    if not len(bad):
        return
    i, tag = int(bad[0]), int(types[bad[0]])
    if tag in _STREAMING:
        raise StreamSplitError(
            f"streaming pgoutput message type {chr(tag)!r} at index {i}: the slot must be read with "
            "proto_version 1 and without streaming"
        )
    raise StreamSplitError(f"unknown pgoutput message type {bytes((tag,))!r} at index {i}")


def _check_lengths(idx: np.ndarray, types: np.ndarray, lens: np.ndarray, size: int, *, at_least: bool = False) -> None:
    got = lens[idx]
    bad = np.flatnonzero(got < size if at_least else got != size)
    if len(bad):
        i = int(idx[bad[0]])
        raise StreamSplitError(
            f"malformed {_NAMES[types[i]]} message at index {i}: {got[bad[0]]} bytes, "
            f"expected {'at least ' * at_least}{size}"
        )


def _between_transactions(bidx: np.ndarray, cidx: np.ndarray, n: int) -> np.ndarray:
    """Indices of the messages outside every transaction (few: non-transactional logical messages)."""
    gap_starts = np.concatenate(([0], cidx + 1))
    gap_ends = np.concatenate((bidx, [n]))[: len(gap_starts)]  # an unfinished last transaction: no gap after
    sizes = gap_ends - gap_starts
    total = int(sizes.sum())
    return np.repeat(gap_starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)


def _check_alternation(types: np.ndarray, framing: np.ndarray) -> None:
    """Begin, Commit, Begin, Commit, ... (the last Begin may lack its Commit)."""
    tags = types[framing]
    expected = np.where(np.arange(len(tags)) % 2 == 0, _B, _C)
    bad = np.flatnonzero(tags != expected)
    if not len(bad):
        return
    k = int(bad[0])
    i = int(framing[k])
    if tags[k] == _C:
        raise StreamSplitError(f"Commit at index {i} without a Begin: the batch must start at a transaction")
    raise StreamSplitError(f"Begin at index {i} inside the transaction begun at index {framing[k - 1]} (no Commit)")


def _decode(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, i: int, kind: type[_M]) -> _M:
    """Message ``i``, a Relation or Truncate (its first byte says which), decoded."""
    try:
        msg = decode(buf[starts[i] : starts[i] + lens[i]].tobytes())
    except PgOutputError as exc:
        raise StreamSplitError(f"message at index {i}: {exc}") from None
    return cast(_M, msg)


def _no_relation(i: int, oid: int, what: str) -> None:
    raise StreamSplitError(
        f"{what} message at index {i} of relation OID {oid} with no Relation message for it earlier in the "
        "batch: a slot peek is a decoding session of its own and sends a table's Relation message before "
        "its first change, so the messages are not a whole peek result"
    )
