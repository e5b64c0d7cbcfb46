"""A slot group's change log: per table, segments of captured pgoutput messages waiting to be applied.

    capture ─ write_segment ─▶ <root>/<group>/<schema>.<table>/<first>-<last>.arrow ─ read(after_lsn) ─▶ apply
                                                                          ◀─ delete_applied(lsn) ─ apply
    capture, a table too far behind ─ drop_for_resync ─▶ RESYNC-<lsn>.json, then its segments deleted

The capture is the only writer of a group's log and advances the slot only after ``write_segment``
returned. A crash in between makes it write the same transactions again, maybe in other batch
bounds, so segments can overlap: ``read`` keeps each transaction once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_pg_replication.changelog.files import LocalFiles, change_log_files
from airflow_pg_replication.changelog.resync_markers import (
    ResyncMarker,
    ResyncRequiredError,
    marker_name,
    now_utc,
)
from airflow_pg_replication.changelog.segments import (
    COMPRESSIONS,
    SegmentFormatError,
    SegmentInfo,
    decode_segment,
    encode_segment,
)
from airflow_pg_replication.errors import TransientError
from airflow_pg_replication.source.pgoutput import format_lsn

__all__ = ["ChangeLog", "ChangeLogRead"]

_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")
_GROUP_RE = re.compile(r"[A-Za-z0-9_]{1,63}")
#: Local disk writes faster than zstd or lz4 compress, and an uncompressed segment is read by a
#: memory map without a copy; over a network the bytes cost more than the CPU (bench/change_log.py).
DEFAULT_COMPRESSION = {"local": None, "object_storage": "zstd"}


@dataclass(frozen=True)
class ChangeLogRead:
    """What one ``read`` gave: whole transactions in commit order, each once."""

    messages: pa.ChunkedArray  # binary: pgoutput messages, Begin … Commit per transaction
    commit_lsn: pa.ChunkedArray  # int64: the commit LSN of each message's transaction
    segments: tuple[SegmentInfo, ...]  # the segments read (wholly or, past duplicates, in part)
    last_commit_lsn: int | None  # the highest commit LSN read: what the table has once this is applied
    last_end_lsn: int | None  # the end LSN of that transaction's Commit record
    more: bool  # segments above ``last_commit_lsn`` remain
    duplicates_dropped: int  # messages of transactions already read (overlapping segments)

    @property
    def is_empty(self) -> bool:
        return len(self.messages) == 0


class ChangeLog:
    """The change log of one slot group under ``root``: a local directory, or a URL/path on ``filesystem``.

    ``filesystem``: an fsspec ``AbstractFileSystem`` for object storage (in Airflow,
    ``ObjectStoragePath(url, conn_id=...).fs``); None for a local directory. ``compression``:
    None, ``"lz4"``, ``"zstd"`` or ``"auto"`` (none locally, zstd on object storage).
    Tables are named ``"schema.table"``.
    """

    def __init__(self, root: str, group: str, *, filesystem: Any = None, compression: str | None = "auto") -> None:
        if not _GROUP_RE.fullmatch(group):
            raise ValueError(f"slot group {group!r}: use 1 to 63 of [A-Za-z0-9_], as the registry does")
        self._files = change_log_files(root, filesystem)
        self.group = group
        self.is_local = isinstance(self._files, LocalFiles)
        if compression == "auto":
            compression = DEFAULT_COMPRESSION["local" if self.is_local else "object_storage"]
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r}: use one of {(*COMPRESSIONS, 'auto')}")
        self.compression = compression
        self._group_dir = self._files.join(self._files.root, group)

    def describe(self) -> str:
        """Where the log is, for task logs (never credentials)."""
        kind = "local" if self.is_local else "object storage"
        return (
            f"change log of slot group {self.group!r} at {self._files.describe()} "
            f"({kind}, {self.compression or 'uncompressed'})"
        )

    # -- capture ------------------------------------------------------------------------------------

    def write_segment(
        self,
        table: str,
        commit_lsn: pa.Array | pa.ChunkedArray,
        data: pa.Array | pa.ChunkedArray,
        *,
        last_end_lsn: int,
        changes: int,
    ) -> SegmentInfo:
        """Write one segment of ``table``'s messages; it is durable when this returns.

        ``data``: the table's pgoutput messages of whole transactions in commit order (Begin, the
        table's Relation and row messages, Commit each); ``commit_lsn``: per message, its
        transaction's commit LSN; ``last_end_lsn``: the end LSN of the last Commit record;
        ``changes``: the row changes among the messages. Writing the same transactions again
        (after a crash before the slot advanced) is harmless: ``read`` keeps them once.
        """
        body, meta = encode_segment(
            commit_lsn, data, last_end_lsn=last_end_lsn, changes=changes, compression=self.compression
        )
        info = SegmentInfo(meta.first_commit_lsn, meta.last_commit_lsn, body.size)
        self._files.write(self._files.join(self._table_dir(table), info.name), body)
        return info

    def drop_for_resync(self, table: str, reason: str, *, dropped_upto_lsn: int | None = None) -> ResyncMarker:
        """Give up on ``table``'s pending changes: mark it for resync, then delete its segments.

        The marker is durable before the first segment goes, so an apply never finds a gap unmarked.
        It covers the segments' last commit LSN, or ``dropped_upto_lsn`` if higher (changes the
        capture will not write).
        """
        segments = self.segments(table)
        upto = max([s.last_commit_lsn for s in segments] + [dropped_upto_lsn if dropped_upto_lsn is not None else -1])
        if upto < 0:
            raise ValueError(f"{table}: no segments to drop and no dropped_upto_lsn: nothing to mark")
        marker = self.mark_resync(table, reason, upto)
        self._files.delete([self._files.join(self._table_dir(table), s.name) for s in segments])
        return marker

    def mark_resync(self, table: str, reason: str, dropped_upto_lsn: int) -> ResyncMarker:
        """Record, durably, that ``table``'s changes up to ``dropped_upto_lsn`` are gone from the log.

        Returns the marker in force: an existing one that covers as much already stays.
        """
        existing = self._marker_lsns(table)
        if existing and max(existing) >= dropped_upto_lsn:
            marker = self.resync_marker(table)
            if marker is not None:
                return marker
        marker = ResyncMarker(dropped_upto_lsn, reason, now_utc())
        directory = self._table_dir(table)
        self._files.write(self._files.join(directory, marker.name), marker.to_json())
        self._files.delete(
            [self._files.join(directory, marker_name(lsn)) for lsn in existing if lsn < dropped_upto_lsn]
        )
        return marker

    # -- apply --------------------------------------------------------------------------------------

    def segments(self, table: str) -> list[SegmentInfo]:
        """``table``'s segments, in LSN order (overlapping ones included)."""
        listed = self._files.list_files(self._table_dir(table))
        return sorted(s for name, size in listed.items() if (s := SegmentInfo.from_name(name, size)) is not None)

    def read(self, table: str, *, after_lsn: int | None, max_messages: int) -> ChangeLogRead:
        """``table``'s transactions with commit LSN above ``after_lsn``, from whole segments in order.

        Reads segments until ``max_messages`` messages are in (at least one segment, so at most
        ``max_messages`` plus one segment). Each transaction comes once: a row is kept only if its
        commit LSN is above ``after_lsn`` and above every commit LSN read before it, so a segment
        written again after a crash (same transactions, other bounds) adds nothing twice.
        Raises ResyncRequiredError when the capture dropped changes above ``after_lsn``.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, not {max_messages}")
        directory = self._table_dir(table)
        segments = self.segments(table)
        high = after_lsn if after_lsn is not None else -1
        lsn_chunks: list[pa.Array] = []
        data_chunks: list[pa.Array] = []
        read: list[SegmentInfo] = []
        messages = dropped = 0
        last_end_lsn = None
        more = False
        relations_read: set[bytes] = set()  # the Relation messages this read gives, as they are
        for segment in segments:
            if segment.last_commit_lsn <= high:
                continue  # wholly applied before, or a duplicate of what this read has
            if messages >= max_messages:
                more = True
                break
            rows, end_lsn = self._read_segment(table, directory, segment, after_lsn)
            if segment.first_commit_lsn <= high:  # overlaps what is read: keep the later transactions ...
                kept = _later_transactions(rows, high, relations_read)
                dropped += len(rows) - len(kept)
                rows = kept
            relations_read.update(_relations_in(rows))
            lsn_chunks += rows.column("commit_lsn").chunks
            data_chunks += rows.column("data").chunks
            read.append(segment)
            messages += len(rows)
            high, last_end_lsn = segment.last_commit_lsn, end_lsn
        # After listing: a capture marks before it deletes, so a drop that hid segments from this read shows here.
        self._raise_if_gap(table, after_lsn)
        return ChangeLogRead(
            messages=pa.chunked_array(data_chunks, pa.binary()),
            commit_lsn=pa.chunked_array(lsn_chunks, pa.int64()),
            segments=tuple(read),
            last_commit_lsn=high if read else None,
            last_end_lsn=last_end_lsn,
            more=more,
            duplicates_dropped=dropped,
        )

    def delete_applied(self, table: str, applied_lsn: int) -> int:
        """Delete ``table``'s segments whose every transaction is at or below ``applied_lsn``; how many."""
        directory = self._table_dir(table)
        done = [s for s in self.segments(table) if s.last_commit_lsn <= applied_lsn]
        self._files.delete([self._files.join(directory, s.name) for s in done])
        if isinstance(self._files, LocalFiles):
            self._files.remove_stale_temp_files(directory)
        return len(done)

    def resync_marker(self, table: str) -> ResyncMarker | None:
        """The table's resync marker in force (the one covering the most), or None."""
        directory = self._table_dir(table)
        for _ in range(3):  # a marker superseded or cleared between listing and reading: look again
            lsns = self._marker_lsns(table)
            if not lsns:
                return None
            path = self._files.join(directory, marker_name(max(lsns)))
            try:
                return ResyncMarker.from_json(_as_bytes(self._files.read(path)), path)
            except FileNotFoundError:
                continue
        raise TransientError(f"{self.describe()}: {table}'s resync markers keep changing; retry")

    def clear_resync(self, table: str, *, snapshot_lsn: int | None) -> int:
        """Delete the markers a snapshot at consistent point ``snapshot_lsn`` covers; how many.

        A marker is covered when every dropped commit is in the snapshot (``dropped_upto_lsn <
        snapshot_lsn``); one written meanwhile for later changes stays. None deletes them all.
        """
        lsns = [lsn for lsn in self._marker_lsns(table) if snapshot_lsn is None or lsn < snapshot_lsn]
        self._files.delete([self._files.join(self._table_dir(table), marker_name(lsn)) for lsn in lsns])
        return len(lsns)

    # -- housekeeping -------------------------------------------------------------------------------

    def pending_bytes(self, table: str) -> int:
        """Bytes of ``table``'s segments in the log."""
        return sum(s.size for s in self.segments(table))

    def tables(self) -> list[str]:
        """The tables (``schema.table``) that have segments or a resync marker in the log."""
        return sorted(d for d in self._files.list_dirs(self._group_dir) if _TABLE_RE.fullmatch(d))

    def drop_table(self, table: str) -> None:
        """Delete everything of ``table`` in the log (it left the group)."""
        self._files.remove_tree(self._table_dir(table))

    # -- inside -------------------------------------------------------------------------------------

    def _table_dir(self, table: str) -> str:
        if not _TABLE_RE.fullmatch(table):
            raise ValueError(f"table {table!r}: name it schema-qualified, as 'public.customers'")
        return self._files.join(self._group_dir, table)

    def _marker_lsns(self, table: str) -> list[int]:
        listed = self._files.list_files(self._table_dir(table))
        return [lsn for name in listed if (lsn := ResyncMarker.lsn_from_name(name)) is not None]

    def _read_segment(
        self, table: str, directory: str, segment: SegmentInfo, after_lsn: int | None
    ) -> tuple[pa.Table, int]:
        path = self._files.join(directory, segment.name)
        try:
            rows, meta = decode_segment(self._files.read(path), path)
        except FileNotFoundError:
            self._raise_if_gap(table, after_lsn)
            raise TransientError(
                f"{self.describe()}: {path} was deleted while {table} read it; is another apply of "
                f"{table} running? Retry"
            ) from None
        if (meta.first_commit_lsn, meta.last_commit_lsn) != (segment.first_commit_lsn, segment.last_commit_lsn):
            raise SegmentFormatError(
                f"{path}: holds commit LSNs {format_lsn(meta.first_commit_lsn)}..{format_lsn(meta.last_commit_lsn)}, "
                "not its name's: it was renamed by hand; move it out of the change log"
            )
        return rows, meta.last_end_lsn

    def _raise_if_gap(self, table: str, after_lsn: int | None) -> None:
        lsns = self._marker_lsns(table)
        if lsns and max(lsns) > (after_lsn if after_lsn is not None else -1):
            marker = self.resync_marker(table)
            if marker is not None and marker.leaves_gap_after(after_lsn):
                raise ResyncRequiredError(table, self.describe(), marker)


def _relations_in(rows: pa.Table) -> list[bytes]:
    """The Relation messages among ``rows`` (few: one per table and decoding session, or schema change)."""
    is_relation = pc.equal(pc.binary_slice(rows.column("data"), 0, 1), pa.scalar(b"R", pa.binary()))
    return rows.column("data").filter(is_relation).to_pylist()


def _later_transactions(rows: pa.Table, high: int, relations_read: set[bytes]) -> pa.Table:
    """The rows of transactions committed after ``high``, and the Relation messages they may need.

    pgoutput sends a table's Relation message once per decoding session (and again after a
    schema change), before its first change, so a segment's later transactions rely on a Relation
    message that an earlier, dropped transaction carried. Such a message is kept, in place, unless
    this read gave the same one already (the folds take a Relation message between transactions).
    """
    later = pc.greater(rows.column("commit_lsn"), pa.scalar(high, pa.int64())).to_numpy(zero_copy_only=False)
    data = rows.column("data")
    is_relation = pc.equal(pc.binary_slice(data, 0, 1), pa.scalar(b"R", pa.binary())).to_numpy(zero_copy_only=False)
    keep = later.copy()
    for i in (is_relation & ~later).nonzero()[0].tolist():
        message = data[i].as_py()
        if message not in relations_read:
            relations_read.add(message)
            keep[i] = True
    return rows.filter(pa.array(keep))


def _as_bytes(source: pa.Buffer | pa.NativeFile) -> bytes:
    return source.to_pybytes() if isinstance(source, pa.Buffer) else source.read()
