"""Judge a slot's lag and health: fire, wait, or fail loudly with the fix (shared by sensor and trigger)."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_pg_replication.errors import ReplicationError, SlotLostError
from airflow_pg_replication.source.catalog import SlotInfo


@dataclass(frozen=True)
class SlotVerdict:
    """What a look at the slot says: ``ready`` (enough lag to run), ``message`` for the log."""

    ready: bool
    message: str
    warn: bool = False


def judge_slot(
    slot: SlotInfo | None, *, slot_name: str, table: str, min_lag_bytes: int, max_lag_bytes: int
) -> SlotVerdict:
    """Raise on a missing, invalidated or overfull slot; else say whether there is work."""
    if slot is None:
        raise SlotLostError(
            f"replication slot {slot_name} of {table} does not exist. Take a snapshot first: trigger the DAG "
            "with full_refresh=true (or run PgFullRefreshOperator)."
        )
    if slot.lost:
        raise SlotLostError(
            f"replication slot {slot_name} of {table} was invalidated (wal_status=lost): PostgreSQL removed WAL "
            "it still needed (max_slot_wal_keep_size). Its changes are gone; resync by triggering the DAG with "
            "full_refresh=true, or set on_slot_lost: resync in the registry."
        )
    lag = slot.lag_bytes or 0
    safe = f", safe_wal_size {slot.safe_wal_size:,} bytes" if slot.safe_wal_size is not None else ""
    until, rate = slot.seconds_until_invalidated, slot.wal_bytes_per_second  # until: None without a rate
    eta = (
        f", invalidated in about {_duration(until)} at {rate / 1e6:,.2f} MB/s of WAL (max_slot_wal_keep_size)"
        if until is not None and rate is not None
        else ""
    )
    msg = (
        f"slot {slot_name} of {table}: lag {lag:,} bytes, retained {slot.retained_bytes or 0:,} bytes, "
        f"wal_status {slot.wal_status}{safe}{eta}"
    )
    if lag > max_lag_bytes:
        raise ReplicationError(
            f"{msg}: past max_lag_bytes={max_lag_bytes:,}. The slot pins WAL on the source; apply changes more "
            "often (raise max_batch_changes, shorten the schedule) or resync with full_refresh=true."
        )
    warn = lag > max_lag_bytes // 2 or slot.wal_status == "unreserved"
    if warn:
        msg += f" (warning: past half of max_lag_bytes={max_lag_bytes:,} or WAL unreserved)"
    return SlotVerdict(ready=lag >= min_lag_bytes, message=msg, warn=warn)


def _duration(seconds: float) -> str:
    """3 d 4 h, 2 h 5 min, 7 min, 40 s."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min" if s >= 60 else f"{s} s"
