"""Errors say whether a retry helps; a DAG whose runs keep failing backs off instead of spinning."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_pg_replication.errors import NeedsAttentionError, SlotLostError, TransientError
from airflow_pg_replication.operators.base import failing_fast_when_a_person_must_act
from airflow_pg_replication.operators.failed_run_backoff import (
    MAX_DELAY,
    XCOM_KEY,
    backoff_delay,
    run_not_before,
)

T0 = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)


def test_delay_doubles_from_one_minute_up_to_an_hour() -> None:
    assert backoff_delay(0) == datetime.timedelta(0)
    assert [backoff_delay(n).total_seconds() for n in range(1, 8)] == [60, 120, 240, 480, 960, 1920, 3600]
    assert backoff_delay(500) == MAX_DELAY


@dataclass
class _Run:
    run_id: str
    state: str
    run_type: str = "scheduled"
    end_date: datetime.datetime | None = None
    run_after: datetime.datetime = T0


@dataclass
class _TaskInstance:
    """The part of Airflow's RuntimeTaskInstance the backoff reads and writes."""

    previous: _Run | None
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)
    pushed: dict[str, Any] = field(default_factory=dict)

    def get_previous_dagrun(self) -> _Run | None:
        return self.previous

    def xcom_pull(self, *, task_ids: str, key: str, run_id: str, default: Any = None) -> Any:
        return self.xcoms.get((run_id, key), default)

    def xcom_push(self, *, key: str, value: Any) -> None:
        self.pushed[key] = value


def _context(ti: _TaskInstance, run_type: str = "scheduled") -> dict[str, Any]:
    return {"ti": ti, "dag_run": _Run("now", "running", run_type=run_type)}


def test_no_wait_after_a_successful_run_or_in_a_script() -> None:
    ti = _TaskInstance(_Run("prev", "success", end_date=T0))
    assert run_not_before(_context(ti), "plan") == (None, 0)
    assert ti.pushed == {XCOM_KEY: 0}
    assert run_not_before({}, "plan") == (None, 0)


def test_failed_runs_in_a_row_are_counted_and_waited_out() -> None:
    ti = _TaskInstance(_Run("prev", "failed", end_date=T0), xcoms={("prev", XCOM_KEY): 2})
    moment, failed = run_not_before(_context(ti), "plan")
    assert failed == 3 and ti.pushed == {XCOM_KEY: 3}
    assert moment == T0 + datetime.timedelta(minutes=4)


def test_a_manual_run_does_not_wait() -> None:
    ti = _TaskInstance(_Run("prev", "failed", end_date=T0))
    assert run_not_before(_context(ti, run_type="manual"), "plan") == (None, 1)


def test_a_person_must_act_fails_without_retries_and_keeps_its_type() -> None:
    with pytest.raises(AirflowFailException) as failed, failing_fast_when_a_person_must_act():
        raise SlotLostError("slot pgrepl_x was invalidated; resync")
    assert isinstance(failed.value, SlotLostError) and isinstance(failed.value, NeedsAttentionError)
    assert "resync" in str(failed.value)


def test_transient_errors_keep_their_retries() -> None:
    with pytest.raises(TransientError) as raised, failing_fast_when_a_person_must_act():
        raise TransientError("lock busy")
    assert not isinstance(raised.value, AirflowFailException)
