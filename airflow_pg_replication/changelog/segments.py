"""One change-log segment: a table's pgoutput messages of whole transactions, as an Arrow IPC file.

    capture: commit_lsn[int64] + data[binary] ──encode_segment──▶ IPC file bytes (+ metadata)
    apply:   IPC file (memory map or bytes) ──decode_segment──▶ pa.Table(commit_lsn, data)

Every message of a transaction carries the transaction's commit LSN (pgoutput Begin's
``final_lsn``), so a reader can drop whole transactions it has already read with one filter. The
schema metadata holds the segment's extent (``first_commit_lsn``, ``last_commit_lsn``,
``last_end_lsn``: the end of its last Commit record), its counts (``messages``, ``changes``) and
``format_version``. The file name holds the extent as fixed-width hex, so names sort by LSN:
``<first_commit_lsn:016X>-<last_commit_lsn:016X>.arrow``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from airflow_pg_replication.errors import NeedsAttentionError

__all__ = [
    "FORMAT_VERSION",
    "SEGMENT_SCHEMA",
    "SegmentFormatError",
    "SegmentInfo",
    "SegmentMetadata",
    "decode_segment",
    "encode_segment",
    "segment_name",
]

FORMAT_VERSION = 1
SEGMENT_SCHEMA = pa.schema(
    [pa.field("commit_lsn", pa.int64(), nullable=False), pa.field("data", pa.binary(), nullable=False)]
)
COMPRESSIONS = (None, "lz4", "zstd")
_NAME_RE = re.compile(r"([0-9A-F]{16})-([0-9A-F]{16})\.arrow")
_MAX_LSN = 2**63 - 1  # the commit_lsn column is int64; real LSNs stay far below


class SegmentFormatError(NeedsAttentionError):
    """A file in the change log is not a segment this version can read; the message says which and why."""


@dataclass(frozen=True, order=True)
class SegmentInfo:
    """A segment as listed: its commit-LSN extent (from its name) and its size in bytes."""

    first_commit_lsn: int
    last_commit_lsn: int
    size: int = field(default=0, compare=False)

    @property
    def name(self) -> str:
        return segment_name(self.first_commit_lsn, self.last_commit_lsn)

    @classmethod
    def from_name(cls, name: str, size: int = 0) -> SegmentInfo | None:
        """The segment a file name stands for; None for any other file (temp files, markers)."""
        m = _NAME_RE.fullmatch(name)
        if m is None:
            return None
        return cls(int(m.group(1), 16), int(m.group(2), 16), size)


@dataclass(frozen=True)
class SegmentMetadata:
    """What a segment's schema metadata says about it."""

    first_commit_lsn: int
    last_commit_lsn: int
    last_end_lsn: int
    messages: int
    changes: int
    format_version: int = FORMAT_VERSION

    def as_schema_metadata(self) -> dict[bytes, bytes]:
        return {k.encode(): str(v).encode() for k, v in self.__dict__.items()}

    @classmethod
    def from_schema_metadata(cls, meta: dict[bytes, bytes] | None, where: str) -> SegmentMetadata:
        meta = meta or {}
        try:
            values = {name: int(meta[name.encode()]) for name in cls.__dataclass_fields__}
        except (KeyError, ValueError):
            raise SegmentFormatError(
                f"{where}: not a change-log segment (its schema metadata lacks integer "
                f"{', '.join(cls.__dataclass_fields__)}); move the file out of the change log"
            ) from None
        if values["format_version"] > FORMAT_VERSION:
            raise SegmentFormatError(
                f"{where}: segment format {values['format_version']} was written by a newer "
                f"airflow-pg-replication (this one reads up to {FORMAT_VERSION}); upgrade this worker"
            )
        return cls(**values)


def segment_name(first_commit_lsn: int, last_commit_lsn: int) -> str:
    """``<first:016X>-<last:016X>.arrow``: names sort as their LSNs do."""
    return f"{first_commit_lsn:016X}-{last_commit_lsn:016X}.arrow"


def encode_segment(
    commit_lsn: pa.Array | pa.ChunkedArray,
    data: pa.Array | pa.ChunkedArray,
    *,
    last_end_lsn: int,
    changes: int,
    compression: str | None = None,
) -> tuple[pa.Buffer, SegmentMetadata]:
    """The IPC file bytes of one segment and its metadata.

    ``commit_lsn[i]`` is the commit LSN of the transaction of message ``data[i]``; the messages are
    whole transactions in commit order, so ``commit_lsn`` never decreases. ``compression``: None,
    ``"lz4"`` or ``"zstd"`` (Arrow IPC buffer compression; readers need not be told).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: use one of {COMPRESSIONS}")
    table = _segment_table(commit_lsn, data)
    lsns = table.column("commit_lsn").to_numpy()
    first, last = int(lsns[0]), int(lsns[-1])
    if len(lsns) > 1 and not bool(np.all(lsns[1:] >= lsns[:-1])):
        raise ValueError("commit_lsn decreases: a segment holds whole transactions in commit order")
    chunks = table.column("data").chunks  # combine_chunks would copy every message, even of one chunk
    _check_whole_transactions(lsns, chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks))
    if not 0 <= first <= last <= last_end_lsn <= _MAX_LSN:
        raise ValueError(
            f"LSNs out of order: first commit {first}, last commit {last}, last end {last_end_lsn} "
            "(need 0 <= first <= last <= last_end_lsn < 2**63)"
        )
    if changes < 0:
        raise ValueError(f"changes must be >= 0, not {changes}")
    meta = SegmentMetadata(first, last, last_end_lsn, len(table), changes)
    table = table.replace_schema_metadata(meta.as_schema_metadata())
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue(), meta


def decode_segment(source: pa.Buffer | pa.NativeFile, where: str = "segment") -> tuple[pa.Table, SegmentMetadata]:
    """A segment's rows (``commit_lsn``, ``data``) and metadata, from its bytes or an open (memory-mapped) file.

    ``where`` names the file in errors.
    """
    try:
        reader = ipc.open_file(source)
        schema = reader.schema
    except (pa.ArrowInvalid, OSError) as e:
        raise SegmentFormatError(
            f"{where}: not a readable Arrow IPC file ({e}); a segment is written whole or not at all, "
            "so this file was not written by the change log: move it out"
        ) from None
    if [(f.name, f.type) for f in schema] != [(f.name, f.type) for f in SEGMENT_SCHEMA]:
        raise SegmentFormatError(f"{where}: columns {schema.names} are not a segment's (commit_lsn int64, data binary)")
    meta = SegmentMetadata.from_schema_metadata(schema.metadata, where)
    table = reader.read_all()
    if len(table) != meta.messages:
        raise SegmentFormatError(f"{where}: {len(table)} messages, its metadata says {meta.messages}")
    return table, meta


def _check_whole_transactions(lsns: np.ndarray, data: pa.Array) -> None:
    """Each run of one commit LSN is a transaction: Begin (whose final_lsn is that LSN) … Commit."""
    offsets = np.frombuffer(data.buffers()[1], np.int32, len(data) + 1, data.offset * 4).astype(np.int64)
    body = np.frombuffer(data.buffers()[2] or b"", np.uint8)
    sizes = np.diff(offsets)
    if np.any(sizes == 0):
        raise ValueError("an empty message: every pgoutput message has at least its type byte")
    kinds = body[offsets[:-1]]
    later_starts = np.flatnonzero(np.diff(lsns)) + 1
    begins = np.concatenate(([0], later_starts))
    commits = np.concatenate((later_starts - 1, [len(lsns) - 1]))
    if np.any(kinds[begins] != ord("B")) or np.any(kinds[commits] != ord("C")) or np.any(sizes[begins] < 21):
        raise ValueError(
            "not whole transactions: the messages of each commit LSN must run from a Begin to a Commit; "
            "split batches between transactions only"
        )
    final_lsns = body[offsets[begins][:, None] + np.arange(1, 9)].copy().view(">u8").ravel()
    if np.any(final_lsns != lsns[begins].astype(np.uint64)):
        raise ValueError("commit_lsn differs from its transaction's Begin final_lsn: tag each message with that")


def _segment_table(commit_lsn: pa.Array | pa.ChunkedArray, data: pa.Array | pa.ChunkedArray) -> pa.Table:
    if len(commit_lsn) != len(data):
        raise ValueError(f"{len(commit_lsn)} commit LSNs for {len(data)} messages: give one per message")
    if len(data) == 0:
        raise ValueError("an empty segment: write a segment only for a table with messages")
    if commit_lsn.null_count or data.null_count:
        raise ValueError("null commit LSN or message: every message has bytes and its commit LSN")
    if not pa.types.is_integer(commit_lsn.type):
        raise TypeError(f"commit_lsn must be integers, not {commit_lsn.type}")
    if not (pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)):
        raise TypeError(f"data must be binary (one pgoutput message each), not {data.type}")
    return pa.Table.from_arrays([commit_lsn.cast(pa.int64()), data.cast(pa.binary())], schema=SEGMENT_SCHEMA)
