"""What both folds give: one table's batch of changes, folded to one final state per key.

The reference fold (:class:`.reference_fold.ChangeBatch`, message by message) and the column-wise
fold (:class:`.columnar_fold.ColumnarBatch`, numpy over the whole batch) keep the same meaning;
the column-wise one is checked against the reference in the tests. Callers that only need a
batch's extent and figures use this protocol.
"""

from __future__ import annotations

from typing import Protocol


class FoldedBatch(Protocol):
    """A folded batch: its key, its figures, and the LSNs it spans."""

    key_columns: tuple[str, ...]
    changes: int  # row changes of the table seen (not skipped)
    transactions: int  # committed transactions read (any table of the publication)
    skipped: int  # transactions at or below the already-applied LSN
    first_commit_lsn: int | None
    last_commit_lsn: int | None  # commit LSN of the last transaction read
    last_end_lsn: int | None  # end LSN of that commit record: where the slot may advance to

    @property
    def is_empty(self) -> bool:
        """True when the batch changes nothing in the table."""
        ...
