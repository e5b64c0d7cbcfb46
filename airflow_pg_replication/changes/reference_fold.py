"""Fold decoded pgoutput messages into one final state per key for a batch, in commit order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from airflow_pg_replication.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    Update,
)


@dataclass(slots=True)
class RowState:
    """The last known state of one key in a batch: its values, or that it was deleted."""

    layout: tuple[str, ...]  # column names the values line up with (the relation at that change)
    values: tuple | None  # may hold UNCHANGED_TOAST (read from the destination, see source_key); None: unknown
    commit_lsn: int
    commit_time: datetime
    deleted: bool = False  # a deleted row keeps the values it had in this batch, if any (soft deletes)
    # When the row's key changed in this batch (once or in a chain): its key before the batch, where the
    # destination holds it as it was then and its UNCHANGED_TOAST cells are read; None: read under its own key.
    source_key: tuple | None = None
    source_lsn: int | None = None  # commit LSN of the change that moved the row off ``source_key``


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
    # A part after the first of a batch applied in parts (ChangeFolder.take_rows): the commit LSN of the
    # transaction the previous part was cut in; the destination may hold that transaction's earlier changes.
    continues_lsn: int | None = None
    last_commit_lsn: int | None = None  # commit LSN of the last transaction read
    last_end_lsn: int | None = None  # end LSN of that commit record: where the slot may advance to

    @property
    def empty(self) -> bool:
        return not self.rows and self.truncate is None

    @property
    def is_empty(self) -> bool:  # FoldedBatch
        return self.empty


class ChangeFolder:
    """Feeds messages in stream order; keeps, per key, only the final state of the batch.

    ``relation_oids`` are the oids whose changes belong to the table (the table itself, or a
    partitioned table's root when the publication publishes via the root). Transactions whose
    commit LSN is at or below ``applied_lsn`` were applied before and are skipped whole.
    """

    def __init__(
        self,
        key_columns: Sequence[str],
        *,
        applied_lsn: int | None = None,
        relation_names: set[tuple[str, str]] | None = None,
    ) -> None:
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
        transaction larger than memory is applied in bounded parts; the counters stay here. Source
        keys start afresh: the next part reads moved rows where this part leaves them.
        """
        part = ChangeBatch(
            self.batch.key_columns,
            rows=self.batch.rows,
            truncate=self.batch.truncate,
            relation=self.batch.relation,
            changes=self.batch.changes,
            continues_lsn=self.batch.continues_lsn,
        )
        self.batch.rows = {}
        self.batch.truncate = None
        self.batch.continues_lsn = self._commit_lsn  # the next part reads what this one writes
        self.flushed_parts += 1
        return part

    def _key(self, oid: int, values: tuple) -> tuple:
        return tuple(values[i] for i in self._key_idx[oid])

    # -- the fold -----------------------------------------------------------------------------

    def feed(self, msg: Message) -> None:
        """Apply one decoded message to the batch state."""
        if isinstance(msg, Begin):
            self._commit_lsn = msg.final_lsn
            self._commit_time = msg.commit_time
            self._skip = msg.final_lsn <= self._applied_lsn
            return
        if isinstance(msg, Commit):
            b = self.batch
            b.transactions += 1
            if self._skip:
                b.skipped += 1
            if b.first_commit_lsn is None:
                b.first_commit_lsn = msg.commit_lsn
            b.last_commit_lsn = msg.commit_lsn
            b.last_end_lsn = msg.end_lsn
            return
        if isinstance(msg, Relation):
            self._on_relation(msg)
            return
        if self._skip:
            return
        if isinstance(msg, Insert):
            if msg.relation_oid in self._relations:
                self._upsert(msg.relation_oid, msg.new, None)
        elif isinstance(msg, Update):
            if msg.relation_oid in self._relations:
                self._upsert(msg.relation_oid, msg.new, msg.old, msg.old_kind)
        elif isinstance(msg, Delete):
            oid = msg.relation_oid
            if oid in self._relations:
                self.batch.changes += 1
                key = self._key(oid, msg.old)
                self._delete(key, self._layout[oid])
        elif isinstance(msg, Truncate) and any(oid in self._relations for oid in msg.relation_oids):
            self.batch.changes += 1
            self.batch.rows.clear()  # everything before the truncate is gone
            self.batch.truncate = (self._commit_lsn, self._time())

    def _time(self) -> datetime:
        """The commit time of the transaction being read (a row change comes after its Begin)."""
        if self._commit_time is None:
            raise ValueError("a row change before any Begin message: the stream must start at a transaction")
        return self._commit_time

    def _upsert(self, oid: int, new: tuple, old: tuple | None, old_kind: str | None = None) -> None:
        b = self.batch
        b.changes += 1
        layout = self._layout[oid]
        key = self._key(oid, new)
        if UNCHANGED_TOAST in key:
            rel = self._relations[oid]
            raise ValueError(f"a key column of {rel.namespace}.{rel.name} came as unchanged TOAST")
        old_key = self._key(oid, old) if old is not None else key
        if old_key != key:  # the key itself changed: the old key's row is gone
            prev = self._delete(old_key, layout)
            b.rows.pop(key, None)  # the new key's state, if any, was a delete: replaced below
        else:
            prev = b.rows.pop(key, None)  # re-inserted below, so dict order follows the last change
        source_key, source_lsn = self._source(prev, old_key, key)
        if UNCHANGED_TOAST in new:
            new = self._fill_unchanged(new, layout, prev, old if old_kind == "O" else None)
        b.rows[key] = RowState(
            layout, new, self._commit_lsn, self._time(), source_key=source_key, source_lsn=source_lsn
        )

    def _source(self, prev: RowState | None, old_key: tuple, key: tuple) -> tuple[tuple | None, int | None]:
        """(source key, source LSN) of a row updated from ``old_key`` to ``key`` (see :class:`RowState`).

        ``prev`` is the row's state earlier in the batch. A row whose key changed earlier in the
        batch keeps where it came from (chains A -> B -> C read from A, even back at A); a row whose
        key changes now came from ``old_key``; a row whose key never changed has none.
        """
        if prev is not None and not prev.deleted and prev.source_key is not None:
            return prev.source_key, prev.source_lsn
        if old_key != key:
            return old_key, self._commit_lsn
        return None, None

    def _delete(self, key: tuple, layout: tuple[str, ...]) -> RowState | None:
        """Mark ``key`` deleted, keeping values known from earlier in the batch; returns that earlier state.

        The deleted state keeps the earlier state's source key too: a soft delete writes the row's
        last values, and those left UNCHANGED_TOAST are in the destination under that key.
        """
        prev = self.batch.rows.pop(key, None)
        values = prev.values if prev is not None else None
        layout = prev.layout if prev is not None else layout
        self.batch.rows[key] = RowState(
            layout,
            values,
            self._commit_lsn,
            self._time(),
            deleted=True,
            source_key=prev.source_key if prev is not None else None,
            source_lsn=prev.source_lsn if prev is not None else None,
        )
        return prev

    @staticmethod
    def _fill_unchanged(new: tuple, layout: tuple[str, ...], prev: RowState | None, old_full: tuple | None) -> tuple:
        """Unchanged TOAST values: take them from the full old row, or from earlier in this batch.

        What neither can give stays UNCHANGED_TOAST: the value the destination holds under the row's
        source key (:attr:`RowState.source_key`), read back when the batch is applied.
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


def fold_changes(
    messages: Iterable[Message],
    key_columns: Sequence[str],
    *,
    applied_lsn: int | None = None,
    relation_names: set[tuple[str, str]] | None = None,
) -> ChangeBatch:
    """Fold a stream of decoded messages into a :class:`ChangeBatch`."""
    folder = ChangeFolder(key_columns, applied_lsn=applied_lsn, relation_names=relation_names)
    for msg in messages:
        folder.feed(msg)
    return folder.batch
