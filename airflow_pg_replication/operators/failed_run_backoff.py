"""Back off after failed runs: a DAG whose last runs failed waits before it tries again.

A table that fails for a reason only a person can fix (no publication rights, no primary key,
a lost slot with ``on_slot_lost: fail``) fails at once, without retries; but under
``@continuous`` (or a short cron) the scheduler would start the next run at once and fail again,
forever. So the first task of a table's DAG counts the failed runs in a row before it (carried
from run to run in an XCom) and, when the previous run failed, defers until
``previous end + delay`` with the delay doubling per failure (1 min, 2 min, ... up to 1 h).
Deferring holds no worker slot. A run a person triggers by hand does not wait.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

FIRST_DELAY = datetime.timedelta(minutes=1)
MAX_DELAY = datetime.timedelta(hours=1)
XCOM_KEY = "failed_runs_in_a_row"


def backoff_delay(failed_in_a_row: int) -> datetime.timedelta:
    """How long to wait after the last of ``failed_in_a_row`` failed runs (0: no wait)."""
    if failed_in_a_row <= 0:
        return datetime.timedelta(0)
    return min(FIRST_DELAY * 2 ** min(failed_in_a_row - 1, 20), MAX_DELAY)


def run_not_before(context: Mapping[str, Any], task_id: str) -> tuple[datetime.datetime | None, int]:
    """When this run may start its work (None: now), and the failed runs in a row before it.

    Reads the previous run of the DAG through the task instance in ``context`` (nothing to read
    in an empty context, a manual run, or a DAG's first run); records the count in an XCom for
    the next run.
    """
    ti = context.get("ti") if isinstance(context, Mapping) else None
    dag_run = context.get("dag_run") if isinstance(context, Mapping) else None
    if ti is None or dag_run is None or not hasattr(ti, "get_previous_dagrun"):
        return None, 0
    previous = ti.get_previous_dagrun()
    failed = 0
    if previous is not None and str(getattr(previous.state, "value", previous.state)) == "failed":
        before = ti.xcom_pull(task_ids=task_id, key=XCOM_KEY, run_id=previous.run_id, default=0) or 0
        failed = int(before) + 1
    ti.xcom_push(key=XCOM_KEY, value=failed)
    if not failed or str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "manual":
        return None, failed
    ended = previous.end_date or previous.run_after
    return ended + backoff_delay(failed), failed
