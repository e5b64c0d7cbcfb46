"""Exceptions of airflow_pg_replication: each message says what is wrong and what to do.

Every error also says whether a retry can help: a :class:`TransientError` (connection dropped,
lock busy) may pass on its own, so the task retries with backoff; a :class:`NeedsAttentionError`
(no publication rights, no primary key, a lost slot) needs a person, so the task fails at once,
without retries, with the fix in its message.
"""

from __future__ import annotations


class ReplicationError(RuntimeError):
    """A replication step cannot go on; the message names the table, the cause and the fix."""


class NeedsAttentionError(ReplicationError):
    """Retrying cannot help: a person must act (grant rights, add a key, resync); the message says how."""


class TransientError(ReplicationError):
    """May pass on its own (connection dropped, lock busy): retrying later can help."""


class SlotLostError(NeedsAttentionError):
    """The table's replication slot is missing or invalidated: its changes since the last run are gone."""
