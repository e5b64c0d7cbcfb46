"""Exceptions of airflow_pg_replication: each message says what is wrong and what to do."""

from __future__ import annotations


class ReplicationError(RuntimeError):
    """A replication step cannot go on; the message names the table, the cause and the fix."""


class SlotLostError(ReplicationError):
    """The table's replication slot is missing or invalidated: its changes since the last run are gone."""
