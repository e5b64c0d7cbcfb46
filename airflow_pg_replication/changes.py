"""Fold decoded pgoutput messages into one final state per key for a batch, in commit order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Sequence

from airflow_pg_replication.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)


@dataclass(slots=True)
class RowState:
    """The last known state of one key in a batch: its values, or that it was deleted."""

    layout: tuple[str, ...]  # column names the values line up with (the relation at that change)
    values: tuple | None  # may hold UNCHANGED_TOAST (keep the destination's value); None: unknown
    commit_lsn: int
    commit_time: datetime
    deleted: bool = False  # a deleted row keeps the values it had in this batch, if any (soft deletes)


@dataclass
class ChangeBatch:
    """One batch of a table's changes, folded: apply ``truncate`` first, then ``rows`` by key."""

    key_columns: tuple[str, ...]
    rows: dict[tuple, RowState] = field(default_factory=dict)
    truncate: tuple[int, datetime] | None = None  # (commit lsn, commit time) of the last TRUNCATE
    relation: Relation | None = None  # the table's latest relation message in the batch
    changes: int = 0  # row changes seen for the table (inserts, updates, deletes, truncates)
    transactions: int = 0  # committed transactions read (any table of the publication)
    skipped: int = 0  # transactions at or below the already-applied LSN
    first_commit_lsn: int | None = None
    last_commit_lsn: int | None = None  # commit LSN of the last transaction read
    last_end_lsn: int | None = None  # end LSN of that commit record: where the slot may advance to

    @property
    def empty(self) -> bool:
        return not self.rows and self.truncate is None


class ChangeFolder:
    """Feeds messages in stream order; keeps, per key, only the final state of the batch.

    ``relation_oids`` are the oids whose changes belong to the table (the table itself, or a
    partitioned table's root when the publication publishes via the root). Transactions whose
    commit LSN is at or below ``applied_lsn`` were applied before and are skipped whole.
    """

    def __init__(self, key_columns: Sequence[str], *, applied_lsn: int | None = None,
                 relation_names: set[tuple[str, str]] | None = None) -> None:
        self.batch = ChangeBatch(tuple(key_columns))
        self._applied_lsn = applied_lsn or 0
        self._names = relation_names
        self._relations: dict[int, Relation] = {}
        self.relations_seen: list[Relation] = []  # every relation message of the table, in order
        self.flushed_parts = 0  # parts handed over by take_rows()
        self._key_idx: dict[int, list[int]] = {}
        self._layout: dict[int, tuple[str, ...]] = {}
        self._skip = False
        self._commit_lsn = 0
        self._commit_time: datetime | None = None

    # -- relation bookkeeping -----------------------------------------------------------------

    def _on_relation(self, rel: Relation) -> None:
        if self._names is not None and (rel.namespace, rel.name) not in self._names:
            return
        names = tuple(c.name for c in rel.columns)
        key_cols = self.batch.key_columns or names  # no key: identity is every column (REPLICA IDENTITY FULL)
        missing = [k for k in key_cols if k not in names]
        if missing:
            raise ValueError(
                f"key column(s) {', '.join(missing)} are not in the replicated columns of "
                f"{rel.namespace}.{rel.name} ({', '.join(names)})"
            )
        self._relations[rel.oid] = rel
        self.relations_seen.append(rel)
        self._layout[rel.oid] = names
        self._key_idx[rel.oid] = [names.index(k) for k in key_cols]
        self.batch.relation = rel

    def take_rows(self) -> ChangeBatch:
        """Hand over the rows folded so far (and a pending truncate) and start afresh.

        Applying the handed-over parts in order gives the same final state as one big batch, so a
        transaction larger than memory is applied in bounded parts; the counters stay here.
        """
        part = ChangeBatch(self.batch.key_columns, rows=self.batch.rows, truncate=self.batch.truncate,
                           relation=self.batch.relation, changes=self.batch.changes)
        self.batch.rows = {}
        self.batch.truncate = None
        self.flushed_parts += 1
        return part

    def _key(self, oid: int, values: tuple) -> tuple:
        return tuple(values[i] for i in self._key_idx[oid])

    # -- the fold -----------------------------------------------------------------------------

    def feed(self, msg: object) -> None:
        """Apply one decoded message to the batch state."""
        kind = type(msg)
        if kind is Begin:
            self._commit_lsn = msg.final_lsn
            self._commit_time = msg.commit_time
            self._skip = msg.final_lsn <= self._applied_lsn
            return
        if kind is Commit:
            b = self.batch
            b.transactions += 1
            if self._skip:
                b.skipped += 1
            if b.first_commit_lsn is None:
                b.first_commit_lsn = msg.commit_lsn
            b.last_commit_lsn = msg.commit_lsn
            b.last_end_lsn = msg.end_lsn
            return
        if kind is Relation:
            self._on_relation(msg)
            return
        if self._skip:
            return
        if kind is Insert:
            if msg.relation_oid in self._relations:
                self._upsert(msg.relation_oid, msg.new, None)
        elif kind is Update:
            if msg.relation_oid in self._relations:
                self._upsert(msg.relation_oid, msg.new, msg.old, msg.old_kind)
        elif kind is Delete:
            oid = msg.relation_oid
            if oid in self._relations:
                self.batch.changes += 1
                key = self._key(oid, msg.old)
                self._delete(key, self._layout[oid])
        elif kind is Truncate:
            if any(oid in self._relations for oid in msg.relation_oids):
                self.batch.changes += 1
                self.batch.rows.clear()  # everything before the truncate is gone
                self.batch.truncate = (self._commit_lsn, self._commit_time)

    def _upsert(self, oid: int, new: tuple, old: tuple | None, old_kind: str | None = None) -> None:
        b = self.batch
        b.changes += 1
        layout = self._layout[oid]
        key = self._key(oid, new)
        if UNCHANGED_TOAST in key:
            raise ValueError(f"a key column of {b.relation.namespace}.{b.relation.name} came as unchanged TOAST")
        if old is not None:
            old_key = self._key(oid, old)
            if old_key != key:  # the key itself changed: the old key's row is gone
                prev = self._delete(old_key, layout)
                if UNCHANGED_TOAST in new:
                    new = self._fill_unchanged(new, layout, prev, old if old_kind == "O" else None)
                b.rows[key] = RowState(layout, new, self._commit_lsn, self._commit_time)
                return
        if UNCHANGED_TOAST in new:
            new = self._fill_unchanged(new, layout, b.rows.get(key), old if old_kind == "O" else None)
        b.rows.pop(key, None)  # re-insert so dict order follows the last change
        b.rows[key] = RowState(layout, new, self._commit_lsn, self._commit_time)

    def _delete(self, key: tuple, layout: tuple[str, ...]) -> RowState | None:
        """Mark ``key`` deleted, keeping values known from earlier in the batch; returns that earlier state."""
        prev = self.batch.rows.pop(key, None)
        values = prev.values if prev is not None else None
        layout = prev.layout if prev is not None else layout
        self.batch.rows[key] = RowState(layout, values, self._commit_lsn, self._commit_time, deleted=True)
        return prev

    @staticmethod
    def _fill_unchanged(new: tuple, layout: tuple[str, ...], prev: RowState | None, old_full: tuple | None) -> tuple:
        """Unchanged TOAST values: take them from the full old row, or from earlier in this batch.

        What neither can give stays UNCHANGED_TOAST: the destination keeps its current value.
        """
        values = list(new)
        prev_vals = None
        if prev is not None and prev.values is not None and not prev.deleted:
            prev_vals = dict(zip(prev.layout, prev.values))
        for i, v in enumerate(values):
            if v is not UNCHANGED_TOAST:
                continue
            if old_full is not None and old_full[i] is not UNCHANGED_TOAST:
                values[i] = old_full[i]
            elif prev_vals is not None and layout[i] in prev_vals:
                values[i] = prev_vals[layout[i]]
        return tuple(values)


def fold_changes(messages: Iterable[object], key_columns: Sequence[str], *, applied_lsn: int | None = None,
                 relation_names: set[tuple[str, str]] | None = None) -> ChangeBatch:
    """Fold a stream of decoded messages into a :class:`ChangeBatch`."""
    folder = ChangeFolder(key_columns, applied_lsn=applied_lsn, relation_names=relation_names)
    for msg in messages:
        folder.feed(msg)
    return folder.batch
