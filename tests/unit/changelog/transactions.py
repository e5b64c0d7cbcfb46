"""Whole pgoutput v1 transactions of one table, tagged with their commit LSNs, for the change-log tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

OID = 16390
RELATION = (
    b"R"
    + struct.pack("!I", OID)
    + b"public\0customers\0d"
    + struct.pack("!H", 2)
    + b"\x01id\0"
    + struct.pack("!Ii", 20, -1)
    + b"\x00name\0"
    + struct.pack("!Ii", 25, -1)
)


def _insert(row_id: int) -> bytes:
    values = [str(row_id).encode(), f"customer {row_id} élan".encode()]
    return (
        b"I"
        + struct.pack("!I", OID)
        + b"N"
        + struct.pack("!H", 2)
        + b"".join(b"t" + struct.pack("!I", len(v)) + v for v in values)
    )


@dataclass(frozen=True)
class Transactions:
    """Messages of whole transactions, as a capture hands them to ``write_segment``."""

    commit_lsn: pa.Array  # int64, one per message
    data: pa.Array  # binary, one pgoutput message each
    commit_lsns: tuple[int, ...]  # one per transaction, ascending
    last_end_lsn: int
    changes: int

    def __add__(self, other: Transactions) -> Transactions:
        return Transactions(
            pa.concat_arrays([self.commit_lsn, other.commit_lsn]),
            pa.concat_arrays([self.data, other.data]),
            self.commit_lsns + other.commit_lsns,
            other.last_end_lsn,
            self.changes + other.changes,
        )

    def kwargs(self) -> dict:
        """``write_segment``'s arguments after the table."""
        return {
            "commit_lsn": self.commit_lsn,
            "data": self.data,
            "last_end_lsn": self.last_end_lsn,
            "changes": self.changes,
        }


def tx_lsn(n: int) -> int:
    """The commit LSN of transaction ``n`` (0, 1, 2, …): far apart, and past 32 bits for n >= 1."""
    return 0x1_0000_0000 * (n + 1) + 0x100


def transactions(first: int, count: int, rows: int = 2) -> Transactions:
    """Transactions ``first`` .. ``first + count - 1``: each Begin, Relation, ``rows`` inserts, Commit."""
    lsns: list[int] = []
    msgs: list[bytes] = []
    for n in range(first, first + count):
        commit = tx_lsn(n)
        tx = [b"B" + struct.pack("!QqI", commit, 1_000_000 + n, 700 + n), RELATION]
        tx += [_insert(n * 1000 + r) for r in range(rows)]
        tx.append(b"C" + struct.pack("!BQQq", 0, commit, commit + 48, 1_000_000 + n))
        msgs += tx
        lsns += [commit] * len(tx)
    return Transactions(
        pa.array(lsns, pa.int64()),
        pa.array(msgs, pa.binary()),
        tuple(tx_lsn(n) for n in range(first, first + count)),
        tx_lsn(first + count - 1) + 48,
        count * rows,
    )


def commit_lsns_of(commit_lsn: pa.Array | pa.ChunkedArray, data: pa.Array | pa.ChunkedArray | None = None) -> list[int]:
    """The commit LSNs of the transactions read, in order: one per Begin message (with ``data``), or
    one per run of equal LSNs. A read keeps the Relation messages of the transactions it drops
    (later transactions of their segment need them): with ``data`` those do not count."""
    lsns = commit_lsn.to_pylist()
    if data is not None:
        return [lsn for lsn, msg in zip(lsns, data.to_pylist()) if msg[:1] == b"B"]
    out: list[int] = []
    for lsn in lsns:
        if not out or out[-1] != lsn:
            out.append(lsn)
    return out
