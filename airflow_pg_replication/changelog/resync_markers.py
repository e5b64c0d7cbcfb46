"""A table's resync marker: the capture dropped its changes up to an LSN, so the table must be snapshotted again.

    capture, table too far behind:  write RESYNC-<dropped_upto_lsn:016X>.json ─▶ then delete its segments
    apply:                          a marker above its applied LSN ─▶ resync, never skip the gap silently

Each marking writes a new file named by its LSN and none is ever rewritten, so clearing the markers
a snapshot covers cannot remove one a capture wrote meanwhile for later changes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.source.pgoutput import format_lsn

__all__ = ["ResyncMarker", "ResyncRequiredError", "marker_name"]

_NAME_RE = re.compile(r"RESYNC-([0-9A-F]{16})\.json")


@dataclass(frozen=True)
class ResyncMarker:
    """The table's changes with commit LSN <= ``dropped_upto_lsn`` were dropped from the change log."""

    dropped_upto_lsn: int
    reason: str
    marked_at: datetime

    @property
    def name(self) -> str:
        return marker_name(self.dropped_upto_lsn)

    def leaves_gap_after(self, applied_lsn: int | None) -> bool:
        """True when a table that has applied up to ``applied_lsn`` lacks some of the dropped changes."""
        return applied_lsn is None or self.dropped_upto_lsn > applied_lsn

    def to_json(self) -> bytes:
        body = {
            "dropped_upto_lsn": self.dropped_upto_lsn,
            "reason": self.reason,
            "marked_at": self.marked_at.isoformat(),
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ResyncMarker:
        try:
            body = json.loads(data)
            return cls(int(body["dropped_upto_lsn"]), str(body["reason"]), datetime.fromisoformat(body["marked_at"]))
        except (ValueError, KeyError, TypeError) as e:
            raise NeedsAttentionError(
                f"{where}: unreadable resync marker ({e}); resync the table, then delete the file"
            ) from None

    @staticmethod
    def lsn_from_name(name: str) -> int | None:
        """The LSN a marker file's name holds; None for any other file."""
        m = _NAME_RE.fullmatch(name)
        return int(m.group(1), 16) if m else None


def marker_name(dropped_upto_lsn: int) -> str:
    return f"RESYNC-{dropped_upto_lsn:016X}.json"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class ResyncRequiredError(NeedsAttentionError):
    """The change log no longer holds all of a table's changes above its applied LSN: snapshot it again."""

    def __init__(self, table: str, where: str, marker: ResyncMarker) -> None:
        self.table = table
        self.marker = marker
        super().__init__(
            f"{table}: the {where} dropped its changes up to LSN {format_lsn(marker.dropped_upto_lsn)} "
            f"at {marker.marked_at:%Y-%m-%d %H:%M:%S} UTC ({marker.reason}); its applied LSN is below that, "
            "so applying the log would skip them: run the table's full_refresh to snapshot it again"
        )
