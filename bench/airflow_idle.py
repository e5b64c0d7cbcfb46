#!/usr/bin/env python
"""Benchmark: task executions per hour of an idle CDC table in a real Airflow, deferrable vs reschedule mode.

Starts a throwaway PostgreSQL with four idle tables (no writes after their snapshot) and a real Airflow
(scheduler, dag-processor, triggerer, api-server; LocalExecutor, SQLite; ``AirflowDeployment``), one DAG
per table:

    wait_for_changes deferrable: true  | false (reschedule mode)   x   schedule @continuous | "* * * * *"

The sensor's shipped settings (poke_interval 30 s, wait_timeout 240 s) are divided by ``--scale``
(default 5: 6 s and 48 s), and so is the scheduler's trigger-timeout check (15 s -> 3 s), so a few
minutes hold several whole runs. After the snapshots, it measures for ``--minutes``, then lets the runs
in flight finish (a paused DAG's running run would not). Counted, per DAG, over the whole runs that
started in the window:

- task executions, from the metadata DB: first tries (``log`` events ``running`` per task and try),
  reschedules (``task_reschedule`` rows: a sensor poke that found nothing, in reschedule mode) and
  deferral resumes (``log`` events ``deferred``: each is resumed later by a new task process, on the
  trigger's event or its timeout); checked against all ``running`` events (one per task process start);
- worker-process starts: the LocalExecutor's ``Workload finished`` lines in the scheduler's log whose
  workload is one of the DAG's task instances (one supervised task process each).

Per hour = executions per run x runs per hour, runs per hour = 3600 / the mean time from one run's
start to the next's. "At the shipped settings" re-scales that with a model stated in the output: the
same run structure with the sensor's times x ``--scale`` and the measured fixed overheads unscaled.

Usage: ``.venv/bin/python bench/airflow_idle.py [--minutes 8] [--scale 5]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import env  # noqa: F401  (puts the checkout on sys.path: the package imports below need it)
from report import machine_note, package_state

from airflow_pg_replication.testing.airflow_deployment import (
    PG_REPLICATION_DAG_FILES,
    AirflowDeployment,
)
from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster

SHIPPED_POKE, SHIPPED_WAIT, SHIPPED_TRIGGER_CHECK = 30.0, 240.0, 15.0
CONFIGS = [  # (table, deferrable, schedule)
    ("idle_deferrable_continuous", True, "@continuous"),
    ("idle_reschedule_continuous", False, "@continuous"),
    ("idle_deferrable_minutely", True, "* * * * *"),
    ("idle_reschedule_minutely", False, "* * * * *"),
]
DB_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how Airflow stores UTC timestamps in SQLite
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def dag_id(table: str) -> str:
    return f"pg_replication__public__{table}"


def db_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value[:26].ljust(26, "0") if "." in value else value + ".000000", DB_TIME)


@dataclass
class Measured:
    table: str
    deferrable: bool
    schedule: str
    runs: int = 0
    failed_runs: int = 0  # e.g. Airflow's reschedule race (apache/airflow#71172); counted like the others
    tries: int = 0
    reschedules: int = 0
    deferrals: int = 0
    running_events: int = 0
    worker_starts: int = 0
    cycle_s: float = 0.0  # mean seconds from one run's start to the next's
    run_s: float = 0.0  # mean run duration
    poke_gap_s: float = 0.0  # reschedule mode: mean seconds between two pokes' task starts

    @property
    def executions(self) -> int:
        return self.tries + self.reschedules + self.deferrals

    def per_run(self, value: float) -> float:
        return value / self.runs if self.runs else float("nan")

    def per_hour(self, value: float) -> float:
        return self.per_run(value) * 3600 / self.cycle_s if self.cycle_s else float("nan")


def registry_text(duckdb: Path, scale: float) -> str:
    lines = [
        "source:",
        "  conn_id: pg_source",
        "destination:",
        "  type: duckdb",
        f"  credentials: {duckdb}",
        "  dataset: replica",
        "defaults:",
        "  mode: cdc",
        f"  poke_interval: {SHIPPED_POKE / scale:g}",
        f"  wait_timeout: {SHIPPED_WAIT / scale:g}",
        "tables:",
    ]
    for table, deferrable, schedule in CONFIGS:
        lines += [
            f"  - table: public.{table}",
            f'    schedule: "{schedule}"',
            f"    deferrable: {str(deferrable).lower()}",
        ]
    return "\n".join(lines) + "\n"


def measure(
    af: AirflowDeployment, cfg: tuple[str, bool, str], start: str, end: str, workloads: dict[str, int]
) -> Measured:
    """Counts over the whole runs of one DAG that started in [start, end)."""
    table, deferrable, schedule = cfg
    d = dag_id(table)
    m = Measured(table, deferrable, schedule)
    rows = af.metadata(
        "SELECT run_id, start_date, end_date, state FROM dag_run WHERE dag_id = ? AND start_date >= ? "
        "AND start_date < ? AND end_date IS NOT NULL ORDER BY start_date",
        (d, start, end),
    )
    runs = [r[:3] for r in rows]
    starts = [db_time(r[1]) for r in runs]
    m.runs = len(runs)
    m.failed_runs = sum(r[3] == "failed" for r in rows)
    if len(starts) > 1:
        m.cycle_s = statistics.mean((b - a).total_seconds() for a, b in itertools.pairwise(starts))
    if runs:
        m.run_s = statistics.mean((db_time(r[2]) - db_time(r[1])).total_seconds() for r in runs)
    gaps: list[float] = []
    for run_id, _, _ in runs:
        events = af.metadata(
            "SELECT task_id, event, try_number, dttm FROM log WHERE dag_id = ? AND run_id = ? ORDER BY id", (d, run_id)
        )
        if any(task == "full_refresh" and event == "running" for task, event, _, _ in events):
            raise SystemExit(f"{d} run {run_id} took a snapshot during the window: the table was not idle")
        m.running_events += sum(event == "running" for _, event, _, _ in events)
        m.tries += len({(task, tn) for task, event, tn, _ in events if event == "running"})
        m.deferrals += sum(event == "deferred" for _, event, _, _ in events)
        m.reschedules += af.metadata(
            "SELECT count(*) FROM task_reschedule r JOIN task_instance ti ON r.ti_id = ti.id "
            "WHERE ti.dag_id = ? AND ti.run_id = ?",
            (d, run_id),
        )[0][0]
        poke_starts = [db_time(t) for task, event, _, t in events if task == "wait_for_changes" and event == "running"]
        gaps += [(b - a).total_seconds() for a, b in itertools.pairwise(poke_starts)]
        ids = [
            r[0]
            for r in af.metadata(
                "SELECT id FROM task_instance WHERE dag_id = ? AND run_id = ? UNION "
                "SELECT task_instance_id FROM task_instance_history WHERE dag_id = ? AND run_id = ?",
                (d, run_id, d, run_id),
            )
        ]
        m.worker_starts += sum(workloads.get(str(i).replace("-", ""), 0) for i in ids)
    if gaps and not deferrable:
        m.poke_gap_s = statistics.mean(gaps)
    return m


def shipped_model(m: Measured, scale: float, gap_s: float) -> tuple[float, float, str]:
    """(executions per run, runs per hour, how) at the shipped sensor settings, from the measured overheads.

    ``gap_s``: the scheduler's measured gap from one run's end to the next's start, back to back (@continuous).
    """
    run_overhead = max(0.0, m.run_s - SHIPPED_WAIT / scale)  # plan, task starts, timeout detection: not scaled
    run_s = SHIPPED_WAIT + run_overhead
    tries = m.per_run(m.tries + m.deferrals)  # plan + the sensor's first try (+ its resume when deferred)
    if m.deferrable:
        per_run = tries  # no more at any wait_timeout
    else:
        # pokes start every poke_interval + overhead; the first past wait_timeout skips the sensor
        poke_gap = SHIPPED_POKE + max(0.0, m.poke_gap_s - SHIPPED_POKE / scale)
        per_run = tries + math.floor(SHIPPED_WAIT / poke_gap) + 1
    if m.schedule == "@continuous" or run_s > 60:
        # a cron run longer than the 60 s tick is followed at once by a run for the latest tick
        # (CronTriggerTimetable.next_dagrun_info, catchup=False): back to back, as @continuous
        cycle, how = run_s + gap_s, f"back to back, {run_s:.0f} s runs"
    else:
        cycle, how = 60.0, "one run a minute"
    return per_run, 3600.0 / cycle, how


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8, help="measurement window after the snapshots (default 8)")
    parser.add_argument(
        "--scale",
        type=float,
        default=5,
        help="divide the sensor's shipped poke_interval (30 s) and wait_timeout (240 s) by this (default 5)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (Airflow home, logs, metadata DB)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pgrepl-bench-airflow-idle-"))
    cluster = ThrowawayCluster()
    af: AirflowDeployment | None = None
    ok = False
    try:
        cluster.start()
        dsn = cluster.create_database("shop")
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for table, _, _ in CONFIGS:
                conn.execute(f"CREATE TABLE public.{table} (id bigint PRIMARY KEY, note text)")
                conn.execute(f"INSERT INTO public.{table} SELECT g, 'row ' || g FROM generate_series(1, 100) g")
        registry = workdir / "tables.yaml"
        registry.write_text(registry_text(workdir / "warehouse.duckdb", args.scale))
        poke, wait = SHIPPED_POKE / args.scale, SHIPPED_WAIT / args.scale
        trigger_check = max(1.0, SHIPPED_TRIGGER_CHECK / args.scale)
        af = AirflowDeployment(
            workdir / "airflow",
            dag_files=PG_REPLICATION_DAG_FILES,
            env={"AIRFLOW_CONN_PG_SOURCE": cluster.conn_uri("shop"), "PG_REPLICATION_REGISTRY": str(registry)},
            config={"scheduler.trigger_timeout_check_interval": trigger_check},
        )
        say(
            f"workdir {workdir}; sensor poke_interval {poke:g} s, wait_timeout {wait:g} s "
            f"(shipped / {args.scale:g}); trigger timeout check every {trigger_check:g} s"
        )
        say(f"{package_state()}; {machine_note()}")
        af.start()
        dag_ids = [dag_id(t) for t, _, _ in CONFIGS]
        af.wait_for_dags(dag_ids)
        for d in dag_ids:
            af.unpause(d)
        say("DAGs unpaused; waiting for the snapshots")
        for d in dag_ids:
            af.wait_for(lambda d=d: any(r["state"] == "success" for r in af.runs(d)), 300, f"the snapshot run of {d}")
        start = dt.datetime.now(dt.timezone.utc).strftime(DB_TIME)
        say(f"snapshots done; measuring idle runs for {args.minutes:g} min")
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(60.0, max(0.0, deadline - time.monotonic())))
            af.check_alive()
            say("runs so far: " + ", ".join(f"{t}={len(af.runs(dag_id(t))) - 1}" for t, _, _ in CONFIGS))
        end = dt.datetime.now(dt.timezone.utc).strftime(DB_TIME)
        say("window over; letting the runs that started in it finish (later runs are not counted)")
        af.wait_for(
            lambda: (
                not af.metadata(
                    "SELECT run_id FROM dag_run WHERE start_date < ? AND end_date IS NULL "
                    "AND state IN ('running', 'queued')",
                    (end,),
                )
            ),
            wait + 180,
            "the runs started in the window to finish",
        )
        af.stop()
        workloads: dict[str, int] = {}
        for line in (af.logs / "scheduler.log").read_text(errors="replace").splitlines():
            if "Workload finished" in line and "workload_type=ExecuteTask" in line:
                found = re.search(r"workload_id=([0-9a-f-]{36})", line)
                if found:  # the metadata DB keeps task instance ids as hex without dashes
                    key = found.group(1).replace("-", "")
                    workloads[key] = workloads.get(key, 0) + 1
        results = [measure(af, cfg, start, end, workloads) for cfg in CONFIGS]
        report(results, args.scale, args.minutes)
        ok = True
    finally:
        if af is not None:
            af.stop()
        cluster.stop()
        if args.keep or not ok:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def report(results: list[Measured], scale: float, minutes: float) -> None:
    poke, wait = SHIPPED_POKE / scale, SHIPPED_WAIT / scale
    print(
        f"\nIdle CDC table, {minutes:g} min window; sensor poke_interval {poke:g} s, wait_timeout {wait:g} s "
        f"(shipped / {scale:g}); whole runs that started in the window\n"
    )
    head = (
        "wait_for_changes",
        "schedule",
        "runs",
        "failed",
        "run s",
        "cycle s",
        "tries",
        "resched.",
        "deferrals",
        "executions",
        "(running ev.)",
        "worker starts",
        "exec/run",
        "exec/hour",
    )
    rows = []
    for m in results:
        rows.append(
            (
                "deferrable" if m.deferrable else "reschedule",
                m.schedule,
                str(m.runs),
                str(m.failed_runs),
                f"{m.run_s:.1f}",
                f"{m.cycle_s:.1f}",
                str(m.tries),
                str(m.reschedules),
                str(m.deferrals),
                str(m.executions),
                f"({m.running_events})",
                str(m.worker_starts),
                f"{m.per_run(m.executions):.1f}",
                f"{m.per_hour(m.executions):.0f}",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(
        f"\nAt the shipped sensor settings (poke_interval {SHIPPED_POKE:g} s, wait_timeout {SHIPPED_WAIT:g} s), "
        "same schedules; model: the measured fixed overheads (run minus wait_timeout; poke gap minus "
        "poke_interval; the scheduler's gap between runs) stay, the sensor's times grow:\n"
    )
    gaps = {m.deferrable: m.cycle_s - m.run_s for m in results if m.schedule == "@continuous"}
    for m in results:
        per_run, runs_hour, how = shipped_model(m, scale, gaps.get(m.deferrable, 0.0))
        mode = "deferrable" if m.deferrable else "reschedule"
        print(
            f"  {mode:10}  {m.schedule:11}  {per_run:4.1f} executions/run x {runs_hour:5.1f} runs/h = "
            f"{per_run * runs_hour:5.0f} executions/h  ({how})"
        )
    if scale == int(scale) and 60 % int(scale) == 0:
        shipped = " (the shipped schedule)" if scale == 5 else ""
        print(
            f"\n  '*/{scale:g} * * * *'{shipped} at the shipped settings is the '* * * * *' row measured above with "
            f"every time x {scale:g}: its executions/hour / {scale:g}."
        )


if __name__ == "__main__":
    sys.exit(main())
