"""Vectorised (numpy + pyarrow) decode and fold of a batch of pgoutput v1 messages for one table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pyarrow as pa

from airflow_pg_replication.source.pgoutput import PgOutputError, Relation, Truncate, decode

__all__ = ["ColumnarBatch", "fold_columnar"]

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_B, _C, _R, _T_MSG, _I, _U_MSG, _D = (ord(c) for c in "BCRTIUD")
_TEXT, _NULL, _TOAST = ord("t"), ord("n"), ord("u")
_KNOWN_TYPES = np.frombuffer(b"BCORYIUDTM", dtype=np.uint8)
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass
class ColumnarBatch:
    """One table's batch folded to its final row per key, column-wise (same meaning as ``ChangeBatch``).

    Rows are in the order of each key's last change. A deleted row keeps the values its key had
    earlier in the batch (like ``RowState``); with none, only its key columns are set.
    """

    relation: Relation  # the table's latest relation message in the batch
    key_columns: tuple[str, ...]
    values: dict[str, pa.Array]  # per relation column: final text value (null: SQL NULL or unknown)
    unchanged: dict[str, pa.Array]  # bool mask, only for columns with an unresolved unchanged TOAST
    deleted: pa.Array  # bool per row
    known: pa.Array  # bool per row: False for a delete whose key had no values earlier in the batch
    commit_lsn: pa.Array  # int64 per row: Begin.final_lsn of the transaction of the row's last change
    commit_time: pa.Array  # timestamp[us, UTC] per row
    changes: int  # row changes of the table seen (not skipped)
    transactions: int
    skipped: int
    first_commit_lsn: int | None
    last_commit_lsn: int | None
    last_end_lsn: int | None

    def __len__(self) -> int:
        return len(self.deleted)

    @property
    def is_empty(self) -> bool:  # FoldedBatch
        return len(self) == 0


class _Ineligible(Exception):
    """The batch needs the reference (per-message) path."""


def _need(cond: object) -> None:
    if not cond:
        raise _Ineligible


def _be(data: bytes, pos: np.ndarray, width: int, signed: bool = False) -> np.ndarray:
    """Big-endian integers of ``width`` bytes at each of ``pos`` -> int64 array (``pos`` in range)."""
    n = max(len(data) - width + 1, 0)
    dtype = f">{'i' if signed else 'u'}{width}"
    view = np.ndarray((n,), dtype=dtype, buffer=data, strides=(1,))  # unaligned, overlapping: zero-copy
    return view[pos].astype(np.int64)


def _column(data: pa.Buffer, pos: np.ndarray, text: np.ndarray, length: np.ndarray) -> pa.Array:
    """One column's values of all changes as a zero-copy binary view of the joined messages.

    Element ``2*i`` is change i's value (empty if not text), element ``2*i+1`` the bytes up to the
    next change's value: ranges ascend in stream order, so offsets into ``data`` are monotonic.
    """
    m = len(pos)
    big = data.size >= 2**31
    start = np.where(text, pos + 5, pos)
    offsets = np.empty(2 * m + 1, dtype=np.int64 if big else np.int32)
    offsets[0 : 2 * m : 2] = start
    offsets[1 : 2 * m : 2] = start + length
    offsets[-1] = offsets[-2] if m else 0
    kind = pa.large_binary() if big else pa.binary()
    return pa.Array.from_buffers(kind, 2 * m, [None, pa.py_buffer(offsets), data])


def _pick(column: pa.Array, src: np.ndarray, valid: np.ndarray, *, text: bool = True) -> pa.Array:
    """Values of changes ``src`` (null where not ``valid``) as a compact string (or binary) array."""
    picked = column.take(pa.array(2 * src, type=pa.int64(), mask=~valid))
    try:  # validates UTF-8 like the reference's decode (and fits the offsets to pa.string())
        return picked.cast(pa.string() if text else pa.binary())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise _Ineligible from None


def fold_columnar(
    messages: Sequence[bytes] | pa.Array | pa.ChunkedArray,
    key_columns: Sequence[str],
    *,
    applied_lsn: int | None,
    relation_names: set[tuple[str, str]],
) -> ColumnarBatch | None:
    """Fold raw pgoutput messages like ``fold_changes(map(decode, messages), ...)``, vectorised.

    ``messages``: a sequence of bytes, or an Arrow binary array of them (read without a Python
    object per message).

    Returns None when the batch is not eligible and the reference path must be used: a TRUNCATE of
    the table, a relation message of it with other columns (or a name now not matching), an UPDATE
    with an old tuple (key change, REPLICA IDENTITY FULL), a DELETE with a full old row, binary
    values, unchanged TOAST in a key column, a change of the table before its relation message or
    outside a transaction, no relation message of the table, an empty key list, a key column not
    in the relation, unknown or malformed messages, or invalid UTF-8 in a final value.
    """
    try:
        return _fold(messages, tuple(key_columns), applied_lsn or 0, relation_names)
    except _Ineligible:
        return None


def _joined(messages: Sequence[bytes] | pa.Array | pa.ChunkedArray) -> tuple[bytes | pa.Buffer, np.ndarray]:
    """All messages back to back in one buffer, and each message's length."""
    if isinstance(messages, (pa.Array, pa.ChunkedArray)):  # Arrow binary: its data buffer already is that
        arr = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
        _need(arr.null_count == 0 and (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)))
        width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2] if len(arr) else pa.py_buffer(b"")
        return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])), np.diff(offsets).astype(np.int64)
    return b"".join(messages), np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))


def _fold(
    messages: Sequence[bytes] | pa.Array | pa.ChunkedArray,
    key_columns: tuple[str, ...],
    applied_lsn: int,
    names: set[tuple[str, str]],
) -> ColumnarBatch:
    n = len(messages)
    _need(key_columns and n)
    joined, lens = _joined(messages)
    _need(lens.all())
    buf = np.frombuffer(joined, dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens

    def message(i: int) -> bytes:
        return bytes(buf[starts[i] : ends[i]])

    types = buf[starts]
    _need(np.isin(types, _KNOWN_TYPES).all())

    # -- transactions: Begin (final lsn, time) per message, skip flags, commit counters --------
    is_begin = types == _B
    bidx = np.flatnonzero(is_begin)
    _need((lens[bidx] == 21).all())
    final_lsn = _be(joined, starts[bidx] + 1, 8)
    begin_time = _be(joined, starts[bidx] + 9, 8, signed=True) + _PG_EPOCH_US
    skip = np.append(final_lsn <= applied_lsn, False)  # index -1 (before any Begin): not skipped
    txn = np.cumsum(is_begin) - 1
    cidx = np.flatnonzero(types == _C)
    _need((lens[cidx] == 26).all())
    transactions = len(cidx)
    skipped = int(np.count_nonzero(skip[txn[cidx]]))
    first_commit = last_commit = last_end = None
    if transactions:
        first_commit = int.from_bytes(message(cidx[0])[2:10], "big")
        last = message(cidx[-1])
        last_commit, last_end = int.from_bytes(last[2:10], "big"), int.from_bytes(last[10:18], "big")

    # -- relation messages (few: decoded one by one) -------------------------------------------
    ours: list[tuple[int, Relation]] = []
    other_oids: set[int] = set()
    try:
        for i in np.flatnonzero(types == _R).tolist():
            rel = cast(Relation, decode(message(i)))  # its tag byte is 'R': a Relation
            if (rel.namespace, rel.name) in names:
                ours.append((i, rel))
            else:
                other_oids.add(rel.oid)
        _need(ours)
        relation = ours[-1][1]
        _need(all(rel.columns == relation.columns for _, rel in ours))
        first_seen: dict[int, int] = {}
        for i, rel in ours:
            first_seen.setdefault(rel.oid, i)
        _need(not other_oids & first_seen.keys())
        for i in np.flatnonzero(types == _T_MSG).tolist():
            trunc = decode(message(i))
            ours_truncated = first_seen.keys() & set(getattr(trunc, "relation_oids", ()))
            _need(type(trunc) is Truncate and (skip[txn[i]] or not ours_truncated))
    except PgOutputError:
        raise _Ineligible from None
    col_names = [c.name for c in relation.columns]
    ncols = len(col_names)
    _need(all(k in col_names for k in key_columns))
    key_pos = [col_names.index(k) for k in key_columns]

    # -- the table's row changes: which messages --------------------------------------------------
    cand = np.flatnonzero((types == _I) | (types == _U_MSG) | (types == _D))
    _need((lens[cand] >= 8).all())
    oid = _be(joined, starts[cand] + 1, 4)
    mine = np.zeros(len(cand), dtype=bool)
    for o, first in first_seen.items():
        hit = oid == o
        _need(not (hit & (cand < first)).any())  # a change of the table before its relation message
        mine |= hit
    _need((txn[cand[mine]] >= 0).all())  # a change outside any transaction
    idx = cand[mine & ~skip[txn[cand]]]
    m = len(idx)
    mtype, ms, me = types[idx], starts[idx], ends[idx]
    is_del = mtype == _D
    _need((buf[ms + 5] == np.where(is_del, ord("K"), ord("N"))).all())  # no old tuple on U, 'K' on D
    _need((_be(joined, ms + 6, 2) == ncols).all())

    # -- walk the tuple data column by column, all messages at once -------------------------------
    last_byte = len(buf) - 1
    kinds, columns = [], []
    data = joined if isinstance(joined, pa.Buffer) else pa.py_buffer(joined)
    pos = ms + 8
    for _ in range(ncols):
        k = buf[np.minimum(pos, last_byte)]
        _need(((k == _TEXT) | (k == _NULL) | (k == _TOAST)).all())  # 'b' (binary) is not eligible
        text = k == _TEXT
        length = np.where(text, _be(joined, np.minimum(pos + 1, last_byte - 3), 4), 0)
        kinds.append(k)
        columns.append(_column(data, pos, text, length))
        pos = np.where(text, pos + 5 + length, pos + 1)
    _need((pos == me).all())  # every tuple ends exactly at its message's end

    # -- group by key: one code per key tuple -----------------------------------------------------
    code = np.zeros(m, dtype=np.int64)
    for n_key, j in enumerate(key_pos):
        _need(not (kinds[j] == _TOAST).any())
        arr = _pick(columns[j], np.arange(m), kinds[j] == _TEXT, text=False)
        c = arr.dictionary_encode(null_encoding="encode").indices.to_numpy().astype(np.int64)
        if n_key:  # combine with the codes so far, re-encoded to stay below m
            c = code * (int(c.max(initial=0)) + 1) + c
            c = pa.array(c).dictionary_encode().indices.to_numpy().astype(np.int64)
        code = c

    order = np.argsort(code, kind="stable")  # by (key, stream order)
    sc = code[order]
    seq = np.arange(m, dtype=np.int64)
    boundary = sc[1:] != sc[:-1]
    group_start = np.maximum.accumulate(np.where(np.concatenate(([True], boundary)), seq, 0)) if m else seq
    final = np.flatnonzero(np.concatenate((boundary, [True]))) if m else seq
    final = final[np.argsort(order[final])]  # rows in order of each key's last change
    fmsg = order[final]  # change index (into idx) of each row's last change

    # A row's values come from its last change, or for a delete from the last non-delete change of
    # the key before it (none: unknown). An unchanged TOAST value comes from the latest earlier
    # change of the key with a value for it, unless a delete lies in between (then it stays unchanged).
    del_s = is_del[order]
    last_nd = np.maximum.accumulate(np.where(del_s, -1, seq))
    last_del = np.maximum.accumulate(np.where(del_s, seq, -1))
    seg_start = np.maximum(group_start, last_del + 1)
    src_row = np.where(del_s[final], last_nd[final], final)
    has_src = src_row >= group_start[final]
    src_row = np.where(has_src, src_row, 0)

    values: dict[str, pa.Array] = {}
    unchanged: dict[str, pa.Array] = {}
    for j, name in enumerate(col_names):
        kj = kinds[j]
        if j in key_pos:  # the key, also for deletes with no earlier values
            src, ok = fmsg, np.ones(len(final), dtype=bool)
        elif (kj == _TOAST).any():
            have = np.where(~del_s & (kj[order] != _TOAST), seq, -1)
            latest = np.maximum.accumulate(have)[src_row]
            ok = has_src & (latest >= seg_start[src_row])
            src = order[np.where(ok, latest, 0)]
            if (has_src & ~ok).any():
                unchanged[name] = pa.array(has_src & ~ok, type=pa.bool_())
        else:
            src, ok = order[src_row], has_src
        values[name] = _pick(columns[j], src, ok & (kj[src] == _TEXT))

    row_txn = txn[idx[fmsg]]
    return ColumnarBatch(
        relation=relation,
        key_columns=key_columns,
        values=values,
        unchanged=unchanged,
        deleted=pa.array(is_del[fmsg], type=pa.bool_()),
        known=pa.array(has_src, type=pa.bool_()),
        commit_lsn=pa.array(final_lsn[row_txn], type=pa.int64()),
        commit_time=pa.array(begin_time[row_txn], type=pa.int64()).cast(_TIMESTAMP),
        changes=m,
        transactions=transactions,
        skipped=skipped,
        first_commit_lsn=first_commit,
        last_commit_lsn=last_commit,
        last_end_lsn=last_end,
    )
