"""A throwaway Airflow deployment: scheduler, dag-processor, triggerer and api-server as separate processes.

LocalExecutor, SQLite metadata DB, everything under one temp directory (``AIRFLOW_HOME``, DAGs folder,
component logs, bundle storage), free ports, the simple auth manager. For tests, the demo and benchmarks:

>>> with AirflowDeployment(root, dag_files=[...], env={"AIRFLOW_CONN_PG_SOURCE": uri}) as af:
...     af.start()                      # `airflow db migrate` first, then the four components
...     af.wait_for_dags(["my_dag"])    # parsed, serialized, no import error
...     af.unpause("my_dag")
...     run = af.wait_for(lambda: af.latest_run("my_dag", state="success"), 120, "a successful run")

Every wait has a deadline and fails with :class:`DeploymentError`, whose message ends with the tails of the
components' logs. :meth:`stop` (also on ``__exit__`` and at interpreter exit) ends every process the
deployment started: each component runs in its own process group (session), and the group and every
descendant seen are sent SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
#: The shipped DAG files in this project's checkout (``dags/``), for callers that run them from the checkout.
REPO_DAGS = Path(__file__).resolve().parents[2] / "dags"
PG_REPLICATION_DAG_FILES = (REPO_DAGS / "pg_replication.py", REPO_DAGS / "pg_replication_registry_errors.py")
#: The scheduler's log line when it fails a task whose executor event came late: a reschedule-mode sensor's
#: poke reported after its next poke was queued (Airflow 3.3 bug apache/airflow#71172, fix proposed in #71194).
STALE_EVENT_RACE = "finished with state success, but the task instance's state attribute is"
_RACE_TI = re.compile(r"<TaskInstance: (?P<dag>\S+?)\.(?P<task>[^\s.]+) (?P<run>\S+) \[")


class DeploymentError(RuntimeError):
    """A component died, a CLI call or REST call failed, or a wait ran past its deadline (logs attached)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Component:
    """One running Airflow component: its process (leader of its own process group) and log file."""

    name: str
    proc: subprocess.Popen
    log: Path
    seen: dict[int, float] = field(default_factory=dict)  # descendant pid -> its start time (psutil)

    def alive(self) -> bool:
        return self.proc.poll() is None


class AirflowDeployment:
    """A private Airflow under ``root``; use as a context manager (it always stops what it started).

    ``dag_files`` are copied into ``root/dags``; ``env`` is added to every component's environment (e.g.
    ``AIRFLOW_CONN_PG_SOURCE``, ``PG_REPLICATION_REGISTRY``); ``config`` holds Airflow options as
    ``{"section.key": value}``, applied over this class's defaults. With ``all_admins`` (the default)
    the UI and REST API need no login; otherwise ``username``/``password`` log in (simple auth manager).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        dag_files: Iterable[str | os.PathLike] = (),
        env: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
        all_admins: bool = True,
        username: str = "admin",
        password: str | None = None,
        port: int | None = None,
        parallelism: int = 4,
    ) -> None:
        self.root = Path(root).resolve()
        self.home = self.root / "home"
        self.dags_folder = self.root / "dags"
        self.logs = self.root / "component-logs"
        self.db_path = self.home / "airflow.db"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.all_admins = all_admins
        self.username = username
        self.password = password or ("" if all_admins else secrets.token_urlsafe(9))
        for d in (self.home, self.dags_folder, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        for f in dag_files:
            shutil.copy(f, self.dags_folder / Path(f).name)
        settings: dict[str, object] = {
            "core.executor": "LocalExecutor",
            "core.dags_folder": self.dags_folder,
            "core.load_examples": False,
            "core.parallelism": parallelism,
            "core.execution_api_server_url": f"{self.url}/execution/",
            "core.auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "core.simple_auth_manager_all_admins": all_admins,
            "core.simple_auth_manager_users": f"{username}:admin",
            "core.simple_auth_manager_passwords_file": self.home / "simple_auth_manager_passwords.json",
            "database.sql_alchemy_conn": f"sqlite:///{self.db_path}",
            "api.host": "127.0.0.1",
            "api.port": self.port,
            "api.base_url": self.url,
            "api.workers": 1,
            "api.secret_key": secrets.token_hex(16),
            "api_auth.jwt_secret": secrets.token_hex(32),
            # several deployments (other test sessions, the demo) may run on one machine at once
            "logging.worker_log_server_port": free_port(),
            "logging.trigger_log_server_port": free_port(),
            "logging.base_log_folder": self.home / "logs",
            "dag_processor.dag_bundle_storage_path": self.root / "bundles",
            "dag_processor.refresh_interval": 5,
            "dag_processor.min_file_process_interval": 10,
            "dag_processor.parsing_processes": 1,
            "dag_processor.print_stats_interval": 300,
            "scheduler.enable_health_check": False,
            "triggerer.job_heartbeat_sec": 2,
        }
        settings.update(config or {})
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        self.env: dict[str, str] = {
            **base,
            "AIRFLOW_HOME": str(self.home),
            "NO_COLOR": "1",
            **{_env_name(k): _env_value(v) for k, v in settings.items()},
            **(env or {}),
        }
        self.components: dict[str, Component] = {}
        self._token: str | None = None
        self._client: Any = None
        self._migrated = False
        if not all_admins:
            (self.home / "simple_auth_manager_passwords.json").write_text(json.dumps({username: self.password}) + "\n")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> AirflowDeployment:
        atexit.register(self.stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def migrate(self) -> None:
        """``airflow db migrate``: create the SQLite metadata DB (once)."""
        if not self._migrated:
            self.cli("db", "migrate", timeout=600)
            self._migrated = True

    def start(self, components: Sequence[str] = COMPONENTS, *, wait: bool = True, timeout: float = 240) -> None:
        """Migrate the DB if needed, start ``components`` (each in its own session) and, with ``wait``,
        wait until the REST API answers and the scheduler, triggerer and dag-processor report healthy."""
        atexit.register(self.stop)
        self.migrate()
        for name in components:
            if name in self.components and self.components[name].alive():
                continue
            cmd = [sys.executable, "-m", "airflow", name]
            if name == "api-server":
                cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
            log = self.logs / f"{name}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.components[name] = Component(name, proc, log)
        if wait:
            self.wait_healthy(timeout=timeout, components=components)

    def stop(self, timeout: float = 30) -> None:
        """Stop every component this deployment started: SIGTERM to each process group (and to every
        descendant seen), then SIGKILL what is left after ``timeout`` seconds. Safe to call twice.
        What took long or needed SIGKILL is written to ``component-logs/stop.log``."""
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stop(list(self.components.values()), timeout)
        self.components.clear()

    def stop_component(self, name: str, timeout: float = 30) -> None:
        """Stop one component (say the scheduler, so no task writes the destination while it is read)."""
        comp = self.components.pop(name, None)
        if comp is not None:
            self._stop([comp], timeout)

    def _stop(self, comps: list[Component], timeout: float) -> None:
        if not comps:
            return
        t0 = time.monotonic()
        notes = [f"{time.strftime('%H:%M:%S')} SIGTERM to {', '.join(c.name for c in comps)} (process groups)"]
        for comp in comps:
            self._remember_descendants(comp)
            _signal_group(comp, signal.SIGTERM)
        deadline = t0 + timeout
        pending = list(comps)
        while pending and time.monotonic() < deadline:
            for comp in list(pending):
                if not _any_alive(comp):
                    pending.remove(comp)
                    notes.append(f"  {comp.name}: all processes gone after {time.monotonic() - t0:.1f}s")
            time.sleep(0.1)
        for comp in pending:
            left = ", ".join(_describe(pid) for pid in _group_members(comp.proc.pid) + _live_descendants(comp))
            notes.append(f"  {comp.name}: still running after {timeout:.0f}s, SIGKILL: {left or '(none)'}")
            _signal_group(comp, signal.SIGKILL)
        for comp in comps:
            try:
                comp.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                notes.append(f"  {comp.name}: pid {comp.proc.pid} did not exit after SIGKILL")
        with open(self.logs / "stop.log", "a") as out:
            out.write("\n".join(notes) + "\n")

    def _remember_descendants(self, comp: Component) -> None:
        try:
            import psutil

            for child in psutil.Process(comp.proc.pid).children(recursive=True):
                comp.seen[child.pid] = child.create_time()
        except Exception:  # gone already, or psutil missing: the process group still covers them
            pass

    # -- CLI -------------------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` against this deployment; output in ``component-logs/cli.log`` too."""
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        with open(self.logs / "cli.log", "a") as out:
            out.write(f"$ airflow {' '.join(args)}  (exit {proc.returncode})\n{proc.stdout}{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise DeploymentError(
                f"`airflow {' '.join(args)}` failed (exit {proc.returncode}):\n"
                f"{_tail_text(proc.stdout + proc.stderr, 60)}"
            )
        return proc

    # -- waiting and diagnostics ---------------------------------------------------------------------------
    def check_alive(self) -> None:
        """Raise if a started component has exited."""
        dead = [c for c in self.components.values() if not c.alive()]
        if dead:
            names = ", ".join(f"{c.name} (exit {c.proc.returncode})" for c in dead)
            raise DeploymentError(f"Airflow component(s) exited: {names}{self.log_tails()}")

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float,
        what: str,
        *,
        interval: float = 1.0,
        describe: Callable[[], str] | None = None,
    ) -> T:
        """Call ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass.

        On timeout raises :class:`DeploymentError` naming ``what``, ``describe()`` (the state seen) and the
        components' log tails. Components that die meanwhile fail the wait at once.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            self.check_alive()
            try:
                value = predicate()
                if value:
                    return value
            except DeploymentError:
                raise
            except Exception as exc:  # e.g. the API not up yet; reported if the deadline passes
                last_error = exc
            if time.monotonic() > deadline:
                seen = ""
                if describe is not None:
                    try:
                        seen = f"\nstate seen: {describe()}"
                    except Exception as exc:
                        seen = f"\nstate unavailable: {exc!r}"
                if last_error is not None:
                    seen += f"\nlast error: {last_error!r}"
                raise DeploymentError(f"timed out after {timeout:.0f}s waiting for {what}{seen}{self.log_tails()}")
            time.sleep(interval)

    def wait_healthy(self, timeout: float = 240, components: Sequence[str] = COMPONENTS) -> dict[str, Any]:
        """Wait until the REST API answers and the started scheduler/triggerer/dag-processor are healthy."""
        wanted = [n.replace("-", "_") for n in components if n != "api-server"]
        last: dict[str, Any] = {}

        def healthy() -> dict[str, Any] | None:
            nonlocal last
            last = self.api("GET", "/api/v2/monitor/health")
            return last if all((last.get(n) or {}).get("status") == "healthy" for n in wanted) else None

        return self.wait_for(
            healthy,
            timeout,
            f"a healthy Airflow at {self.url} ({', '.join(components)})",
            interval=2,
            describe=lambda: json.dumps(last),
        )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        try:
            return _tail_text(path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each component's log, for failure messages."""
        names = [p.stem for p in sorted(self.logs.glob("*.log"))]
        return "".join(f"\n--- {self.logs / n}.log (last {lines} lines) ---\n{self.log_tail(n, lines)}" for n in names)

    def task_log(self, dag_id: str, run_id: str, task_id: str, lines: int = 30) -> str:
        """The tails of a task's log files (every attempt), read from the logs folder, as readable lines."""
        run_dir = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={glob.escape(run_id)}"
        parts = []
        for path in sorted(glob.glob(str(run_dir / f"task_id={task_id}" / "*.log"))):
            text = "\n".join(_readable_log_line(line) for line in Path(path).read_text(errors="replace").splitlines())
            parts.append(f"--- {path} ---\n{_tail_text(text, lines)}")
        return "\n".join(parts) or f"(no task log for {dag_id}/{run_id}/{task_id})"

    def stale_event_failures(self) -> set[tuple[str, str, str]]:
        """``(dag_id, task_id, run_id)`` of the task instances the scheduler failed on a late executor event
        (:data:`STALE_EVENT_RACE`, Airflow's race, not the task's doing), from the scheduler's log."""
        try:
            text = (self.logs / "scheduler.log").read_text(errors="replace")
        except OSError:
            return set()
        found = set()
        for line in text.splitlines():
            if STALE_EVENT_RACE in line and (m := _RACE_TI.search(line)):
                found.add((m["dag"], m["task"], m["run"]))
        return found

    # -- REST API --------------------------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT for the REST API (simple auth manager): all-admins, or the configured user's password."""
        if self._token is None:
            import httpx

            if self.all_admins:
                resp = httpx.get(f"{self.url}/auth/token", timeout=30)
            else:
                resp = httpx.post(
                    f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=30
                )
            if resp.status_code not in (200, 201):
                raise DeploymentError(
                    f"getting a token from {self.url}/auth/token: HTTP {resp.status_code} {resp.text[:500]}"
                )
            self._token = resp.json()["access_token"]
        return self._token

    def api(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (200, 201),
    ) -> Any:
        """One REST call (``/api/v2/...``) with a bearer token; the decoded JSON, or DeploymentError."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30)
        headers = {"Authorization": f"Bearer {self.token()}"}
        resp = self._client.request(method, path, json=json_body, params=params, headers=headers)
        if resp.status_code == 401:  # token expired: once more with a new one
            self._token = None
            headers = {"Authorization": f"Bearer {self.token()}"}
            resp = self._client.request(method, path, json=json_body, params=params, headers=headers)
        if resp.status_code not in tuple(ok):
            raise DeploymentError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:1000]}")
        return resp.json() if resp.content else None

    def dags(self) -> dict[str, dict[str, Any]]:
        """``{dag_id: DAG as the REST API shows it}``."""
        return {d["dag_id"]: d for d in self.api("GET", "/api/v2/dags", params={"limit": 1000})["dags"]}

    def import_errors(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/v2/importErrors", params={"limit": 1000})["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json_body={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json_body={"is_paused": True})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /api/v2/dags/{dag_id}/dagRuns`` (a manual run, no logical date); the new run."""
        return self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json_body={"logical_date": None, "conf": dict(conf or {})}
        )

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first (by ``run_after``)."""
        runs = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 1000})["dag_runs"]
        return sorted(runs, key=lambda r: (r.get("run_after") or "", r.get("start_date") or ""))

    def latest_run(
        self, dag_id: str, *, run_type: str | None = None, state: str | None = None, after: str | None = None
    ) -> dict[str, Any] | None:
        """The newest run matching ``run_type``/``state`` whose ``run_after`` is past ``after``, or None."""
        for run in reversed(self.runs(dag_id)):
            if run_type and run["run_type"] != run_type:
                continue
            if state and run["state"] != state:
                continue
            if after and (run.get("run_after") or "") <= after:
                continue
            return run
        return None

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """``{task_id: task instance}`` of one run."""
        from urllib.parse import quote

        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return {ti["task_id"]: ti for ti in self.api("GET", path, params={"limit": 1000})["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {t: ti["state"] for t, ti in self.task_instances(dag_id, run_id).items()}

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float, states: Iterable[str] = ("success", "failed")
    ) -> dict[str, Any]:
        """Wait until the run reaches one of ``states``; the run. The failure message shows its tasks."""
        states = set(states)

        def done() -> dict[str, Any] | None:
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}")
            return run if run["state"] in states else None

        return self.wait_for(
            done,
            timeout,
            f"run {dag_id}/{run_id} to reach {sorted(states)}",
            describe=lambda: self.describe_run(dag_id, run_id),
        )

    def describe_run(self, dag_id: str, run_id: str, *, with_logs: bool = True) -> str:
        """A run's state and its tasks' states (and failed tasks' log tails), for failure messages."""
        run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}")
        tis = self.task_instances(dag_id, run_id)
        text = f"{dag_id}/{run_id} ({run['run_type']}): {run['state']}; " + ", ".join(
            f"{t}={ti['state']}" for t, ti in tis.items()
        )
        if with_logs:
            for t, ti in tis.items():
                if ti["state"] in ("failed", "up_for_retry"):
                    text += "\n" + self.task_log(dag_id, run_id, t)
        return text

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> dict[str, dict[str, Any]]:
        """Wait until every DAG in ``dag_ids`` is parsed (REST API) and serialized (``serialized_dag``);
        fails at once, with the errors, if the DAG folder has import errors."""
        wanted = set(dag_ids)

        def loaded() -> dict[str, dict[str, Any]] | None:
            errors = self.import_errors()
            if errors:
                raise DeploymentError(
                    "import errors in the DAGs folder:\n"
                    + "\n".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors)
                    + self.log_tails()
                )
            dags = self.dags()
            return dags if wanted <= set(dags) and wanted <= set(self.serialized_dag_ids()) else None

        return self.wait_for(
            loaded,
            timeout,
            f"DAGs {sorted(wanted)} to be parsed and serialized",
            interval=2,
            describe=lambda: f"DAGs known: {sorted(self.dags())}; serialized: {sorted(self.serialized_dag_ids())}",
        )

    # -- metadata DB (read only) -----------------------------------------------------------------------------
    def metadata(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        """A read-only query on the SQLite metadata DB (retried while the DB is locked)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10) as db:
                    return db.execute(query, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def serialized_dag_ids(self) -> list[str]:
        return [r[0] for r in self.metadata("SELECT DISTINCT dag_id FROM serialized_dag")]


def _quote(run_id: str) -> str:
    from urllib.parse import quote

    return quote(run_id, safe="")


def _env_name(key: str) -> str:
    section, option = key.split(".", 1)
    return f"AIRFLOW__{section.upper()}__{option.upper()}"


def _env_value(value: object) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def _readable_log_line(line: str) -> str:
    """A task log line (Airflow 3 writes JSON lines) as ``time level event``, exceptions with their frames."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    text = f"{str(record.get('timestamp', ''))[11:23]} {record.get('level', '')} {record.get('event', '')}"
    for exc in record.get("error_detail") or []:
        frames = exc.get("frames") or []
        where = " <- ".join(f"{Path(f['filename']).name}:{f['lineno']} {f['name']}" for f in reversed(frames[-4:]))
        text += f"\n    {exc.get('exc_type')}: {exc.get('exc_value')}\n      at {where}"
    return text


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(comp: Component, sig: int) -> None:
    """Send ``sig`` to the component's process group and to every descendant seen (which may have left it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(comp.proc.pid, sig)  # start_new_session: the group id is the component's pid
    for pid in _live_descendants(comp):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _live_descendants(comp: Component) -> list[int]:
    """The descendants seen earlier that still run: same pid *and* start time (never a reused pid)."""
    try:
        import psutil
    except ImportError:
        return []
    live = []
    for pid, created in list(comp.seen.items()):
        try:
            if psutil.Process(pid).create_time() == created:
                live.append(pid)
                continue
        except psutil.Error:
            pass
        del comp.seen[pid]
    return live


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(entry))
    return members


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid} ({args[:80]})"
    except OSError:
        return str(pid)


def _any_alive(comp: Component) -> bool:
    if comp.alive():
        return True
    return bool(_group_members(comp.proc.pid) or _live_descendants(comp))
